"""Fuzzing the engine's native params_read, results_set and reply_read against
Python's.

    python -m fuzz.hostmem --count 100000 --seed 1

Owns: the differential check of compartments/_fastcall.c's Guest (the two
host calls of every call and the reply of a call out, done in C when they
are plain) against compartments/engine.py's _host_params_read,
_host_results_set and _host_reply_read, which are the definition.  Must not: be imported by wsuper itself.

Two real Engines with real wasmtime serve memio.wat, which hands the host
functions whatever arguments were written into its memory; one of them has
its Guest's memory unset, which sends every host call to Python.  Each input
is one call: some bytes written somewhere in guest memory (a message that is
well formed in one of the shapes the native path takes, or wrong in one of
the ways a message can be), the arguments (pointers and lengths inside,
across the end of and outside memory, negative; capability counts; now and
then the memory grows by a page first, so that the bounds move), and the
method (results_set; params_read then results_set of what it read; results_set
twice; results_set with a new object's handle; reply_read of a reply left
pending, or of none).  Checks, after every input:
both engines wrote the same bytes (answers, errors, traps and their words)
and their memories are the same.  `handled` counts what the native path did
itself, so that a run that never reached it does not pass unnoticed.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time

from capnp_schemas import payloads, protocol
from capnp_schemas.protocol import Content
from compartments import unchecked
from compartments.engine import ENGINE_INTERFACE, Engine
from compartments.limits import Limits
from compartments.spec import EngineSpec

MEMIO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memio.wat")
IFACE = 0x1234
ARGS = 120000                    # memio.wat reads A, B, C, D here
MEMORY = 2 * 65536               # its memory
LIMIT = 4096                     # message_size: the engines' message limit


class Recorded:
    """An engine's socket: hands it the batches given, one per read, and keeps
    each write apart."""

    def __init__(self):
        self.batches: list[bytes] = []
        self.writes: list[bytes] = []

    def recv(self, _n, flags=0):
        if flags & socket.MSG_DONTWAIT and not self.batches:
            raise BlockingIOError        # nothing more now (the end is for a blocking read)
        return self.batches.pop(0) if self.batches else b""

    def sendall(self, data):
        self.writes.append(bytes(data))


def started(module: str = MEMIO, **limits):
    """(engine, its socket, the supervisor's Connection, the engine's main object's
    import id): an engine serving `module`, bootstrapped and started."""
    engine = Engine(Recorded(), EngineSpec(name=os.path.basename(module).split(".")[0],
                                           module=module, exports=True,
                                           limits=Limits(**limits)))
    sock = engine.sock
    sup = protocol.Connection("supervisor")

    def answer(msg):                  # the capability in the engine's answer to msg
        sock.batches.append(msg)
        engine._pump()
        engine._flush()
        [ev] = sup.receive(sock.writes.pop())
        return ev.payload.caps[0].import_id
    control = answer(sup.send_bootstrap()[1])
    cap = answer(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))[1])
    return engine, sock, sup, cap


def framed(words: list[int], nseg: int = 0, size: int | None = None) -> bytes:
    """A segment table (nseg + 1 segments, the first of `size` words) and words."""
    table = struct.pack("<II", nseg, len(words) if size is None else size)
    if nseg:
        table += struct.pack("<I", 1) + b"\0" * (4 if nseg % 2 else 0)
    return table + b"".join(struct.pack("<Q", w & (2**64 - 1)) for w in words)


def struct_ptr(offset: int, data: int, ptrs: int) -> int:
    return ((offset & 0x3FFFFFFF) << 2) | (data << 32) | (ptrs << 48)


def message(rng: random.Random) -> bytes:
    """Something a guest might pass results_set as a message: well-formed ones of
    every shape the native path takes, and the ways one can be wrong."""
    n = rng.randrange(1, 12)
    body = [rng.getrandbits(64) for _ in range(n)]
    pick = rng.randrange(14)
    if pick < 4:                                  # a struct inside the segment
        return framed([struct_ptr(0, n, 0)] + body)
    if pick == 4:                                 # a struct with pointers, and a text
        return framed([struct_ptr(0, 1, 1), 7, (1 << 2) | (2 << 32) | (5 << 35), 0x6f6c6c6568])
    if pick == 5:                                 # a null root
        return framed([0] + body)
    if pick == 6:                                 # a struct past the segment's end
        return framed([struct_ptr(rng.randrange(n, n + 5), rng.randrange(1, 4), 0)] + body)
    if pick == 7:                                 # a negative offset
        return framed([struct_ptr(-rng.randrange(1, 4), 1, 0)] + body)
    if pick == 8:                                 # a far pointer to a landing pad in it
        return framed([(1 << 3) | 2, struct_ptr(0, 1, 0), 99])
    if pick == 9:                                 # a capability pointer as the root
        return framed([3 | (rng.randrange(3) << 32)] + body)
    if pick == 10:                                # two segments
        return framed([struct_ptr(0, 1, 0), 5, 6], nseg=1, size=2)
    if pick == 11:                                # a table that lies about the size
        return framed([struct_ptr(0, n, 0)] + body, size=n + rng.choice((-1, 2, 1 << 20)))
    if pick == 12:                                # a list as the root
        return framed([1 | (4 << 32) | (2 * n << 35)] + body)
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))


def scenario(rng: random.Random):
    """(method, memory writes, the arguments A B C D, params, caps, the reply
    pending) of one call."""
    data = message(rng)
    where = rng.choice((0, 64, 8192, 60000, MEMORY - len(data), MEMORY - len(data) + 8))
    length = rng.choice((len(data),) * 14 + (0, 8, len(data) - 8, len(data) + 8, -1, LIMIT + 8))
    count = rng.choice((0,) * 12 + (1, -1, 300))
    method = rng.choice((0,) * 6 + (1, 1, 2, 3, 4, 4))
    writes = []
    if data and 0 <= where <= MEMORY - len(data):
        writes.append((where, data))
    if length == LIMIT + 8:                        # one past the limit, well framed
        big = framed([struct_ptr(0, LIMIT // 8, 0)] + [1] * (LIMIT // 8))
        writes.append((0, big))
        where, length = 0, len(big)
    params, caps = Content.standalone([struct.pack("<QQ", 1 << 32, rng.getrandbits(64))]), []
    reply = None
    if method == 4 and rng.randrange(6):
        reply = (bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 24, 300)))),
                 [rng.choice((0, 1, 7, 65535, -1, 2**31)) for _ in range(rng.choice((0, 1, 3)))])
    if method in (1, 4):
        where = rng.choice((0, 5, MEMORY - 16, MEMORY - 8, -8))
        caps = rng.choice(([], [], [object()], [None, object()]))
        arg_b = rng.choice((4096, MEMORY - 4, MEMORY + 4, -4))
    else:
        arg_b = length
    arg_c = rng.choice((8192 + 1000, MEMORY - 2, -4)) if method == 3 else rng.choice((4096, -4))
    return method, writes, (where, arg_b, arg_c, 1 if method == 3 else count), params, caps, \
        reply


def call(engine, sock, sup, main, method, writes, args, params=None, caps=(), reply=None):
    """One call after the memory writes, with `reply` pending: (every byte the
    engine wrote, its memory)."""
    engine.reply = reply
    for at, data in writes:
        engine.memory.write(engine.store, data, at)
    engine.memory.write(engine.store, struct.pack("<4i", *args), ARGS)
    _q, msg = sup.send_call(main, IFACE, method, params or Content.standalone([bytes(16)]),
                            list(caps))
    sock.batches.append(msg)
    engine._pump()
    engine._flush()
    out = b"".join(sock.writes)
    sock.writes.clear()
    return out, bytes(engine.memory.read(engine.store, 0, engine.memory.data_len(engine.store)))


def differ(seed: int, calls: int) -> tuple[list[str], int]:
    """(what differed, as 'seed S call I: ...'; calls the native path did itself)."""
    pair = [started(message_size=LIMIT), started(message_size=LIMIT)]
    pair[1][0]._native.memory = None                  # every host call to Python
    pair[1][0]._plain_serving = False                 # every read through the events
    rng = random.Random(seed)
    failures = []
    for i in range(calls):
        method, writes, args, params, caps, reply = scenario(rng)
        if not rng.randrange(100):             # the memory grows: bounds move
            for engine, *_ in pair:
                engine.memory.grow(engine.store, 1)
        native, python = (call(*p, method, writes, args, params, caps, reply) for p in pair)
        for what, a, b in (("answers", native[0], python[0]), ("memories", native[1], python[1])):
            if a != b:
                failures.append(f"seed {seed} call {i}: the {what} differ "
                                f"(method {method}, arguments {args})")
    if pair[1][0]._native.handled:
        failures.append(f"seed {seed}: the Python engine took the native path")
    return failures, pair[0][0]._native.handled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.hostmem")
    ap.add_argument("--count", type=int, default=100_000, help="calls in all")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if unchecked._native is None:
        print("the native path is not built or is turned off (WSUPER_NATIVE=0): "
              "nothing to compare")
        return 1
    t, failures, handled, per = time.monotonic(), [], 0, 1000
    for k in range(0, args.count, per):       # a fresh pair of engines every `per` calls
        f, h = differ(args.seed * 1_000_003 + k // per, min(per, args.count - k))
        failures += f
        handled += h
    print(f"{args.count} calls in {time.monotonic() - t:.1f} s, {handled} host calls done "
          f"natively: {'no differences' if not failures else f'{len(failures)} differences'}")
    for line in failures[:20]:
        print("  " + line)
    return 1 if failures or not handled else 0


if __name__ == "__main__":
    sys.exit(main())
