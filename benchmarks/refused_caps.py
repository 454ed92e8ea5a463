"""What refusing a Call past the capability limit costs the supervisor's loop.

A Call whose params carry more than MAX_CAPS_PER_MESSAGE (256) capabilities
fails alone, and each reference it gave is released (docs/security.md, "The
wire").  This times the protocol core receiving one such Call (decoding it,
checking what it names, making its Releases), best of 3, for tables of
senderHosted descriptors and of senderHosted and receiverHosted mixed, and
says how many bytes of Releases it makes.  A plain 256-capability Call is the
baseline, measured in the same run.

    .venv/bin/python -m benchmarks.refused_caps
"""
from __future__ import annotations

import time

from capnp_schemas import protocol, rpc, wire


def _call(n: int, mixed: bool) -> bytes:
    m = rpc.Message.new_message()
    c = m.init("call")
    c.questionId, c.interfaceId = 1, 1
    c.target.importedCap = 0
    table = c.params.init("capTable", n)
    for i in range(n):
        if mixed and i % 2:
            table[i].receiverHosted = 0
        else:
            table[i].senderHosted = i
    return wire.frame(m.to_segments())


def _receive(data: bytes) -> tuple[float, int]:
    best, out = 1e9, 0
    for _ in range(3):
        conn = protocol.Connection("bench")
        conn.exports[0] = protocol._Export(object(), 1)
        t = time.perf_counter()
        events = conn.receive(data)
        best = min(best, time.perf_counter() - t)
        out = sum(len(e.data) for e in events if isinstance(e, protocol.RefsReleased))
    return best, out


def main():
    base, _ = _receive(_call(256, False))
    print(f"baseline: 256 capabilities, accepted: {base * 1e3:.2f} ms")
    for mixed in (False, True):
        for n in (257, 4096, 20000, 32767):
            t, out = _receive(_call(n, mixed))
            print(f"{'mixed ' if mixed else 'sender'} {n:6d}: {t * 1e3:7.2f} ms "
                  f"({t / base:5.1f} x baseline), {out} bytes of Releases")


if __name__ == "__main__":
    main()
