"""The native params_read and results_set (compartments/_fastcall.c, Guest): an
engine whose plain host calls are done in C must behave byte for byte like one
whose host calls all go to Python (compartments/engine.py's _host_params_read
and _host_results_set, the definition), whatever the guest hands them.

Two real Engines with real wasmtime serve tests/integration/guests/memio.wat,
which passes the host functions whatever arguments the test wrote into its
memory; one has its Guest's memory unset, which sends every host call to
Python.  Both get the same calls after the same memory writes; their answers
(every byte they write) and their memories must be the same, and the native
one must really have done most of the plain ones itself."""
from __future__ import annotations

import os
import random
import struct

import pytest

from capnp_schemas import wire
from capnp_schemas.protocol import Content
from compartments import unchecked
from compartments.abi import E_MESSAGE, E_STATE

from compartments.engine import Engine
from compartments.spec import EngineSpec

from .test_engine_answers import GUESTS, Recorded, started

pytestmark = pytest.mark.skipif(unchecked._native is None,
                                reason="the native path is not built (compartments._fastcall)")

IFACE = 0x1234
ARGS = 120000                    # memio.wat reads A, B, C, D here
MEMORY = 2 * 65536
LIMIT = 4096                     # message_size: the engines' message limit


def framed(words: list[int], nseg: int = 0, size: int | None = None) -> bytes:
    """A segment table (nseg + 1 segments, the first of `size` words) and words."""
    table = struct.pack("<II", nseg, len(words) if size is None else size)
    if nseg:
        table += struct.pack("<I", 1) + b"\0" * (4 if nseg % 2 else 0)
    return table + b"".join(struct.pack("<Q", w & (2**64 - 1)) for w in words)


def struct_ptr(offset: int, data: int, ptrs: int) -> int:
    return ((offset & 0x3FFFFFFF) << 2) | (data << 32) | (ptrs << 48)


def messages(rng: random.Random) -> bytes:
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
        return framed([1 | (0 << 2) | (4 << 32) | (2 * n << 35)] + body)
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))


def scenario(rng: random.Random):
    """(method, memory writes, the arguments A B C D, params, caps) of one call."""
    data = messages(rng)
    where = rng.choice((0, 64, 8192, 60000, MEMORY - len(data), MEMORY - len(data) + 8))
    length = rng.choice((len(data),) * 14 + (0, 8, len(data) - 8, len(data) + 8, -1, LIMIT + 8))
    count = rng.choice((0,) * 12 + (1, -1, 300))
    method = rng.choice((0,) * 6 + (1, 1, 2, 3))
    writes = []
    if 0 <= where <= MEMORY - len(data):
        writes.append((where, data))
    if length == LIMIT + 8:                        # one past the limit, well framed
        big = framed([struct_ptr(0, LIMIT // 8, 0)] + [1] * (LIMIT // 8))
        writes.append((0, big))
        where, length = 0, len(big)
    params, caps = Content.standalone([struct.pack("<QQ", 1 << 32, rng.getrandbits(64))]), []
    if method == 1:
        where = rng.choice((0, 5, MEMORY - 16, MEMORY - 8, -8))
        caps = rng.choice(([], [], [object()], [None, object()]))
        arg_b = rng.choice((4096, MEMORY - 4, MEMORY + 4, -4))
    else:
        arg_b = length
    arg_c = rng.choice((8192 + 1000, MEMORY - 2, -4)) if method == 3 else rng.choice((4096, -4))
    return method, writes, (where, arg_b, arg_c, 1 if method == 3 else count), params, caps


def run(native: bool, seed: int, calls: int):
    engine, sock, sup, main = started(module="memio.wat", message_size=LIMIT)
    if not native:
        engine._native.memory = None          # every host call goes to Python
    rng = random.Random(seed)
    answers, memories = [], []
    for _ in range(calls):
        method, writes, args, params, caps = scenario(rng)
        for at, data in writes:
            engine.memory.write(engine.store, data, at)
        engine.memory.write(engine.store, struct.pack("<4i", *args), ARGS)
        _q, msg = sup.send_call(main, IFACE, method, params, caps)
        sock.batches.append(msg)
        engine._pump()
        engine._flush()
        answers.append(b"".join(sock.writes))
        sock.writes.clear()
        memories.append(bytes(engine.memory.read(engine.store, 0, MEMORY)))
    return answers, memories, engine._native.handled, sup


def test_native_host_calls_answer_exactly_as_python_ones():
    for seed in range(4):
        native, nat_mem, handled, _ = run(True, seed, 150)
        python, py_mem, none, _ = run(False, seed, 150)
        for i, (a, b) in enumerate(zip(native, python)):
            assert a == b, f"seed {seed}, call {i}: the answers differ"
            assert nat_mem[i] == py_mem[i], f"seed {seed}, call {i}: the memories differ"
        assert none == 0
        assert handled > 25, "the native path did (almost) nothing"


def results_of(args, writes=(), method=0):
    engine, sock, sup, main = started(module="memio.wat", message_size=LIMIT)
    for at, data in writes:
        engine.memory.write(engine.store, data, at)
    engine.memory.write(engine.store, struct.pack("<4i", *args), ARGS)
    _q, msg = sup.send_call(main, IFACE, method, Content.standalone([bytes(16)]))
    sock.batches.append(msg)
    engine._pump()
    engine._flush()
    [ev] = sup.receive(sock.writes[0])
    return ev, engine._native.handled


def test_a_plain_message_is_taken_natively_and_arrives_whole():
    msg = framed([struct_ptr(0, 2, 0), 41, 42])
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert handled == 1
    assert bytes(ev.payload.content.segments[0])[8:24] == struct.pack("<QQ", 41, 42)
    assert wire.resolve(ev.payload.content.segments, ev.payload.content.loc) is not None


@pytest.mark.parametrize("msg, status", [
    (framed([struct_ptr(5, 1, 0), 1]), E_MESSAGE),      # outside the segment
    (framed([struct_ptr(0, 1, 0), 1], size=7), E_MESSAGE),   # the table lies
])
def test_a_bad_message_is_left_to_python_which_says_why(msg, status):
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert handled == 0
    assert ev.payload is None and f"dispatch returned {status}" in ev.error


def test_results_set_twice_is_refused_the_second_time():
    msg = framed([struct_ptr(0, 1, 0), 1])
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)], method=2)
    assert handled == 1                                  # the first
    assert ev.payload is None and f"dispatch returned {E_STATE}" in ev.error


def test_an_out_of_range_message_traps_with_python_s_words():
    ev, handled = results_of((MEMORY - 8, 24, 0, 0))
    assert handled == 0
    assert "trapped" in ev.error and "out-of-range memory" in ev.error


def test_host_call_probes_and_per_call_instances_keep_to_python():
    engine, sock, sup, main = started(module="memio.wat", message_size=LIMIT)
    msg = framed([struct_ptr(0, 1, 0), 9])
    engine.memory.write(engine.store, msg, 64)
    engine.memory.write(engine.store, struct.pack("<4i", 64, len(msg), 0, 0), ARGS)
    engine.probes.hostcalls = True          # timing host calls is Python's
    _q, call = sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))
    sock.batches.append(call)
    engine._pump()
    assert engine._native.handled == 0
    assert engine.probes.events, "the host call was not timed"
    engine.probes.hostcalls = False
    sock.batches.append(sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))[1])
    engine._pump()
    assert engine._native.handled == 1
    # a per_call engine has a memory per call: never the native path
    per_call = Engine(Recorded(), EngineSpec(name="p", module=os.path.join(GUESTS, "memio.wat"),
                                             exports=True, per_call=True))
    assert per_call._native.memory is None
