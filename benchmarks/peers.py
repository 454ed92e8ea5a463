"""pycapnp's own RPC, as the alternative a user would pick instead of wsuper.

    python benchmarks/peers.py server SOCKET            serve Calc (examples/calc)
    python benchmarks/peers.py relay SOCKET UPSTREAM    serve a Gateway whose get()
                                                        returns UPSTREAM's Calc: the
                                                        C++ RPC forwards every call
    python benchmarks/peers.py client SOCKET N M [gw]   N sequential calls, then M calls
                                                        100 at a time; prints JSON

The client is the same for every target: a pycapnp Calc directly, through the
pycapnp relay, or through wsuper's external endpoint (both `gw`).
"""
import asyncio
import json
import os
import sys
import time

import capnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import capnp_schemas  # noqa: E402

CALC = capnp_schemas.load(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples", "calc", "calc.capnp"))
IN_FLIGHT = 100


class Calc(CALC.Calc.Server):
    async def add(self, a, b, **_kw):
        return a + b


async def _serve(path, bootstrap):
    async def handle(stream):
        await capnp.TwoPartyServer(stream, bootstrap=bootstrap).on_disconnect()
    server = await capnp.AsyncIoStream.create_unix_server(handle, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _relay(path, upstream_path):
    stream = await capnp.AsyncIoStream.create_unix_connection(upstream_path)
    upstream = capnp.TwoPartyClient(stream).bootstrap().cast_as(CALC.Calc)

    class Gateway(capnp_schemas.host.Gateway.Server):
        async def get(self, name, _context, **_kw):
            _context.results.cap = upstream
    await _serve(path, Gateway())


async def _client(path, n, m, via_gateway):
    stream = await capnp.AsyncIoStream.create_unix_connection(path)
    boot = capnp.TwoPartyClient(stream).bootstrap()
    if via_gateway:
        calc = (await boot.cast_as(capnp_schemas.host.Gateway).get("calc")).cap \
            .as_interface(CALC.Calc)
    else:
        calc = boot.cast_as(CALC.Calc)
    for i in range(100):                                   # warm up
        await calc.add(i, 1)
    times = []
    for i in range(n):
        t = time.perf_counter()
        if (await calc.add(i, 1)).sum != i + 1:
            raise SystemExit("wrong answer")
        times.append((time.perf_counter() - t) * 1e6)
    t = time.perf_counter()
    for _ in range(m // IN_FLIGHT):
        await asyncio.gather(*[calc.add(i, 1) for i in range(IN_FLIGHT)])
    rate = (m // IN_FLIGHT * IN_FLIGHT) / (time.perf_counter() - t)
    times.sort()
    print(json.dumps({"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * .99)],
                      "mean_us": sum(times) / len(times), "calls_per_s": rate}))


async def main(argv):
    async with capnp.kj_loop():
        if argv[0] == "server":
            await _serve(argv[1], Calc())
        elif argv[0] == "relay":
            await _relay(argv[1], argv[2])
        else:
            await _client(argv[1], int(argv[2]), int(argv[3]), argv[4:] == ["gw"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
