"""Flat structs (payloads.py) are read and built without pycapnp: to the same
values as pycapnp, both ways, on every flat struct of host.capnp, and on
mutated messages: what the flat reader accepts reads as pycapnp reads it, and
what it refuses goes to pycapnp, so `read` answers exactly as pycapnp does."""
import math
import random
import struct

import pytest

from capnp_schemas import hosted, payloads, wire
from capnp_schemas.protocol import Content

FLAT = [(f"{iface.name}.{m.name} {side}", sm)
        for iface in hosted.BY_KIND.values() for m in iface.methods
        for side, sm in (("params", m.params), ("results", m.results))
        if payloads._flat(sm) is not None]
RANGES = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


def test_the_hot_host_calls_are_flat_and_nested_ones_are_not():
    names = {name for name, _sm in FLAT}
    assert {"Log.write params", "File.read params", "File.read results",
            "File.write params", "Directory.open params", "Clock.wall results"} <= names
    assert "Directory.list results" not in names        # a list of structs: pycapnp's
    assert "Directory.open results" not in names        # a capability: pycapnp's


def _value(f, rng):
    kind = f.kind
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "void":
        return None
    if kind == "text":
        return "".join(rng.choice("ab\u00e9\u4e2d\U0001f600\x00 ") for _ in range(rng.randrange(12)))
    if kind == "data":
        return rng.randbytes(rng.choice((0, 1, 7, 8, 9, 4096)))
    if kind == "enum":
        return rng.choice(list(f.values))
    if kind.startswith("float"):
        return rng.choice((0.0, 1.5, -2.25, 1e30 if kind == "float64" else 3.0))
    if kind in RANGES:
        b = RANGES[kind]
        return rng.choice((0, -1, 1, -(1 << (b - 1)), (1 << (b - 1)) - 1))
    b = 8 * f.codec.size
    return rng.choice((0, 1, (1 << b) - 1, rng.randrange(1 << b)))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), k
        else:
            assert x == y and type(x) is type(y), (k, x, y)


@pytest.mark.parametrize("name, sm", FLAT, ids=[n for n, _ in FLAT])
def test_built_here_reads_the_same_in_pycapnp_and_the_other_way(name, sm):
    rng = random.Random(name)
    _d, _p, fields, _by = payloads._flat(sm)
    for _ in range(30):
        values = {f.name: _value(f, rng) for f in fields if rng.random() < 0.8}
        ours = payloads._build_flat(payloads._flat(sm), values)
        theirs, _caps = payloads._build_pycapnp(sm, values)
        _same(payloads._read_pycapnp(sm, ours, 1 << 20), payloads._read_flat(payloads._flat(sm), theirs))
        _same(payloads._read_pycapnp(sm, ours, 1 << 20), payloads._read_pycapnp(sm, theirs, 1 << 20))


def _both(sm, segs, loc=(0, 0), flat_only=False):
    """(what pycapnp reads, what we read): a dict, or 'refused'."""
    out = []
    for reader in (lambda c: payloads._read_pycapnp(sm, c, 1 << 20),
                   (lambda c: payloads._read_flat(payloads._flat(sm), c)) if flat_only else
                   (lambda c: payloads.read(sm, c, 1 << 20))):
        try:
            out.append(reader(Content(tuple(segs), loc)))
        except payloads.DecodeError:
            out.append("refused")
    return out


@pytest.mark.parametrize("name, sm", FLAT, ids=[n for n, _ in FLAT])
def test_mutated_messages_read_the_same_or_are_refused_by_both(name, sm):
    rng = random.Random("mutate " + name)
    _d, _p, fields, _by = payloads._flat(sm)
    accepted = [0]
    for _ in range(150):
        values = {f.name: _value(f, rng) for f in fields}
        seg = bytearray(payloads._build_pycapnp(sm, values)[0].segments[0])
        for _ in range(rng.randrange(1, 4)):
            what = rng.random()
            if what < 0.4:              # a byte anywhere
                seg[rng.randrange(len(seg))] = rng.randrange(256)
            elif what < 0.7:            # a pointer word's fields
                w = rng.randrange(len(seg) // 8)
                word = struct.unpack_from("<Q", seg, 8 * w)[0]
                word ^= 1 << rng.choice((0, 1, 2, 3, 32, 33, 34, 35, 36, 40, 48, 50, 63))
                struct.pack_into("<Q", seg, 8 * w, word)
            else:                       # shorter or longer
                seg = seg[:8 * rng.randrange(1, len(seg) // 8 + 1)] if rng.random() < 0.5 \
                    else seg + bytes(8 * rng.randrange(1, 3))
        theirs, ours = _both(sm, [bytes(seg)])
        if theirs == "refused" or ours == "refused":
            assert theirs == ours, (bytes(seg).hex(), theirs, ours)
        else:
            _same(theirs, ours)
        theirs, flat = _both(sm, [bytes(seg)], flat_only=True)
        if flat != "refused":           # what it accepts, it reads as pycapnp does
            assert theirs != "refused", bytes(seg).hex()
            _same(theirs, flat)
            accepted[0] += 1
    assert accepted[0] > 20             # the mutants are not all refused


def test_far_pointers_and_a_content_pointer_away_from_the_root_read_the_same():
    sm = hosted.BY_KIND["log"].methods[0].params          # Log.write(text)
    text = b"hello\x00\x00\x00"
    # segment 0: root far pointer -> segment 1 word 0 (landing pad) -> struct in segment 1
    seg0 = struct.pack("<Q", wire.FAR | (0 << 3) | (1 << 32))
    pad = struct.pack("<Q", (0 << 2) | (0 << 32) | (1 << 48))          # struct, 0 data, 1 ptr
    ptr = struct.pack("<Q", wire.LIST | (0 << 2) | (2 << 32) | (6 << 35))
    seg1 = pad + ptr + text
    theirs, ours = _both(sm, [seg0, seg1])
    assert theirs == ours == {"text": "hello"}
    # the same struct, its pointer at word 1 of one segment (not the root)
    seg = struct.pack("<Q", 0) + struct.pack("<Q", (0 << 2) | (1 << 48)) + ptr + text
    assert payloads._read_flat(payloads._flat(sm), Content((seg,), (0, 1))) == {"text": "hello"}


@pytest.mark.parametrize("values", [{"text": "\udc00"}, {"text": b"bytes"}, {"nope": 1}])
def test_what_the_flat_builder_does_not_take_goes_to_pycapnp(values):
    sm = hosted.BY_KIND["log"].methods[0].params
    assert payloads._build_flat(payloads._flat(sm), values) is None

    def outcome(build):
        try:
            return build(sm, values)[0].segments
        except Exception as e:  # noqa: BLE001 - whatever pycapnp raises
            return type(e)
    assert outcome(payloads.build) == outcome(payloads._build_pycapnp)
