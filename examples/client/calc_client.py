"""An external client of a running wsuper system, in Python with pycapnp.

    wsuper up examples/client/system.toml            # in one terminal
    python examples/client/calc_client.py examples/client/run/calc.sock

The external socket speaks plain Cap'n Proto RPC.  Its bootstrap capability is
a Gateway (capnp_schemas/host.capnp in the wsuper source): `list()` names the
compartments marked `external = true`, and `get(name)` returns one of them as
a capability.  From there it is ordinary Cap'n Proto: calls, capabilities in
results, promise pipelining, and capabilities you pass in, which the
compartment may call back (all of it through the supervisor, which checks
every call against the compartment's grants).
"""
import asyncio
import os
import sys

import capnp

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "..", "capnp_schemas")
capnp.remove_import_hook()
host = capnp.load(os.path.join(SCHEMAS, "host.capnp"))
calc = capnp.load(os.path.join(HERE, "..", "calc", "calc.capnp"))


class Observer(calc.Observer.Server):
    """A capability this client hosts: calc calls it back with each partial sum."""

    def __init__(self):
        self.steps = []

    async def step(self, i, partial, **kwargs):
        self.steps.append((i, partial))


async def main(socket_path: str):
    async with capnp.kj_loop():
        stream = await capnp.AsyncIoStream.create_unix_connection(socket_path)
        client = capnp.TwoPartyClient(stream)
        gateway = client.bootstrap().cast_as(host.Gateway)

        names = (await gateway.list()).names
        print("exported:", ", ".join(names))

        c = (await gateway.get("calc")).cap.as_interface(calc.Calc)
        print("20 + 22 =", (await c.add(20, 22)).sum)

        # Pipelining: call the counter before newCounter's answer has arrived.
        counter = c.newCounter().counter
        await counter.inc(5)
        print("counter =", (await counter.inc(7)).value)

        # A callback: pass a capability we host; calc calls it for each step.
        observer = Observer()
        total = (await c.sumTo(4, observer)).total
        print("sum 1..4 =", total, "with steps", observer.steps)

        try:                                     # errors arrive as exceptions
            await gateway.get("nonexistent")
        except capnp.KjException as e:
            reason = str(e).split("remote exception: ")[-1].splitlines()[0]
            print("get('nonexistent') failed:", reason)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1
                     else os.path.join(HERE, "run", "calc.sock")))
