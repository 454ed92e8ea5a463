"""wire.py alone: object sizes at the segment's end, framing, the single-segment copy.

pycapnp is the oracle: where resolve() accepts an object that ends exactly at
its segment's end, pycapnp reads it too; one word further, both refuse."""
import struct

import pytest

import capnp_schemas
from capnp_schemas import wire

Q = struct.Struct("<Q")


def struct_ptr(offset, data, ptrs):
    return ((offset << 2) & 0xFFFFFFFF) | (data << 32) | (ptrs << 48)


def list_ptr(offset, esz, count):
    return ((offset << 2) & 0xFFFFFFFF) | 1 | ((esz | (count << 3)) << 32)


def far_ptr(seg, pad, double=False):
    return wire.far_pointer(seg, pad, double)


def seg(*words):
    return b"".join(Q.pack(w) for w in words)


# (name, pointer word at word 0 pointing at word 1, words its object takes)
KINDS = [
    ("struct data", struct_ptr(0, 2, 0), 2),
    ("struct pointers", struct_ptr(0, 0, 2), 2),
    ("struct both", struct_ptr(0, 1, 1), 2),
    ("void list", list_ptr(0, 0, 1000), 0),
    ("bit list", list_ptr(0, 1, 65), 2),
    ("byte list", list_ptr(0, 2, 9), 2),
    ("u16 list", list_ptr(0, 3, 5), 2),
    ("u32 list", list_ptr(0, 4, 3), 2),
    ("u64 list", list_ptr(0, 5, 2), 2),
    ("pointer list", list_ptr(0, 6, 2), 2),
    ("struct list (tag + 2 words)", list_ptr(0, 7, 2), 3),
    ("empty struct list (a tag only)", list_ptr(0, 7, 0), 1),
]


def body(name, words):
    """`words` words of object content that read as a valid object of that kind."""
    if name.startswith("struct list"):
        n = words - 1
        return [struct_ptr(n, 1, 0)] + [7] * n          # n elements of one data word
    return [0] * words


@pytest.mark.parametrize("name,ptr,words", KINDS, ids=[k[0] for k in KINDS])
def test_an_object_that_ends_at_the_segment_end_is_read_one_word_past_is_refused(name, ptr, words):
    exact = seg(ptr, *body(name, words))
    assert wire.resolve([exact], (0, 0))[2] == 1
    if words:
        short = exact[:-8]
        with pytest.raises(wire.WireError, match="outside its segment"):
            wire.resolve([short], (0, 0))
        with pytest.raises(wire.WireError):
            wire.single_segment_copy([short], (0, 0))


@pytest.mark.parametrize("name,ptr,words", KINDS, ids=[k[0] for k in KINDS])
def test_through_a_far_pointer_too(name, ptr, words):
    # segment 0: a far pointer to a landing pad at word 0 of segment 1
    landing = ptr                          # offset 0: the object follows the pad
    exact = [seg(far_ptr(1, 0)), seg(landing, *body(name, words))]
    assert wire.resolve(exact, (0, 0))[1:3] == (1, 1)
    # a double-far: pad (far to segment 2, word 0) + tag, object alone in segment 2
    tag = ptr & ~0xFFFFFFFC
    double = [seg(far_ptr(1, 0, True)), seg(far_ptr(2, 0), tag), seg(*body(name, words))]
    assert wire.resolve(double, (0, 0))[1:3] == (2, 0)
    if words:
        for segs in ([exact[0], exact[1][:-8]], double[:2] + [double[2][:-8]]):
            with pytest.raises(wire.WireError, match="outside its segment"):
                wire.resolve(segs, (0, 0))


def test_landing_pads_past_the_segment_end_are_refused():
    with pytest.raises(wire.WireError, match="out of range"):
        wire.resolve([seg(far_ptr(1, 1)), seg(struct_ptr(0, 0, 0))], (0, 0))
    with pytest.raises(wire.WireError, match="out of range"):      # the tag is missing
        wire.resolve([seg(far_ptr(1, 0, True)), seg(far_ptr(2, 0))], (0, 0))
    with pytest.raises(wire.WireError, match="far or capability"):
        wire.resolve([seg(far_ptr(1, 0)), seg(wire.cap_pointer(0))], (0, 0))


def test_pycapnp_agrees_on_the_struct_list_boundary():
    """The bug class: a list of structs whose last element ends one word past
    the segment (the tag word was not counted).  pycapnp refuses it; so must we."""
    Vars = _struct_module(capnp_schemas.host.Environment, "vars", results=True)
    # root -> struct (0 data, 1 ptr) -> list of 2 Variables (0 data, 2 ptrs each)
    exact = seg(struct_ptr(0, 0, 1), list_ptr(0, 7, 4), struct_ptr(2, 0, 2), 0, 0, 0, 0)
    assert len(Vars.from_segments([exact]).vars) == 2
    assert wire.unframe(wire.single_segment_copy([exact], (0, 0)))[0] == exact
    assert len(wire.struct_list_elements([exact], (0, 1))) == 2
    short = exact[:-8]
    with pytest.raises(Exception, match="out-of-bounds"):
        Vars.from_segments([short]).vars  # noqa: B018
    with pytest.raises(wire.WireError, match="outside its segment"):
        wire.resolve([short], (0, 1))
    with pytest.raises(wire.WireError):
        wire.struct_list_elements([short], (0, 1))
    with pytest.raises(wire.WireError):
        wire.single_segment_copy([short], (0, 0))


def test_a_copied_struct_list_claims_exactly_the_words_it_holds():
    # the pointer claims 5 words, the tag 1 element of 1 word: the copy says 1
    src = seg(list_ptr(0, 7, 5), struct_ptr(1, 1, 0), 42, 0, 0, 0, 0)
    out = wire.unframe(wire.single_segment_copy([src], (0, 0)))
    ptr = Q.unpack_from(out[0], 0)[0]
    assert ptr >> 35 == 1 and len(out[0]) == 8 * 3
    assert wire.struct_list_elements(out, (0, 0)) == [(0, 2, 1, 0)]


def test_the_copy_refuses_the_depth_a_stock_reader_refuses():
    def chain(depth):          # a struct with one pointer, `depth` times, then null
        return seg(*[struct_ptr(0, 0, 1)] * depth, 0)
    wire.single_segment_copy([chain(wire.MAX_NESTING)], (0, 0))
    with pytest.raises(wire.WireError, match="nested deeper"):
        wire.single_segment_copy([chain(wire.MAX_NESTING + 1)], (0, 0))


# ---------------------------------------------------------------- framing


def test_one_parser_frames_incrementally_and_at_once():
    msgs = [wire.frame([seg(struct_ptr(0, 1, 0), i)]) for i in range(3)]
    msgs.append(wire.frame([seg(far_ptr(1, 0)), seg(struct_ptr(0, 1, 0), 9)]))
    stream = b"".join(msgs)
    for cut in range(len(stream) + 1):
        f = wire.Framer()
        got = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert [[bytes(s) for s in m] for m in got] == \
            [[bytes(s) for s in wire.unframe(m)] for m in msgs]
        assert f.pending == 0 and not f.partial and f.messages == 4


def test_a_partial_message_is_visible_until_it_completes():
    m = wire.frame([seg(struct_ptr(0, 1, 0), 5)])
    f = wire.Framer()
    assert f.feed(m[:3]) == [] and f.partial and f.pending == 3 and f.messages == 0
    assert f.feed(m[3:12]) == [] and f.partial and f.pending == 12
    (got,) = f.feed(m[12:] + m[:9])
    assert bytes(got[0]) == bytes(wire.unframe(m)[0])
    assert f.partial and f.pending == 9 and f.messages == 1


def test_segments_do_not_change_when_the_callers_buffer_does():
    buf = bytearray(wire.frame([seg(struct_ptr(0, 1, 0), 5)]))
    (got,) = wire.Framer().feed(buf)
    buf[-1] = 0xFF
    assert bytes(got[0]) == seg(struct_ptr(0, 1, 0), 5)


@pytest.mark.parametrize("data,match", [
    (b"", "got 0 bytes"),
    (struct.pack("<II", 0, 2) + b"\0" * 8, "the framing says 24 bytes"),
    (struct.pack("<II", 0, 1) + b"\0" * 16, "got 24 bytes, the framing says 16"),
    (struct.pack("<I", 600) + b"\0" * 4, "601 segments"),
    (struct.pack("<II", 0, 1 << 28), "exceeds the limit"),
])
def test_unframe_says_what_is_wrong(data, match):
    with pytest.raises(wire.WireError, match=match):
        wire.unframe(data)


def test_the_framer_skips_a_message_past_its_limit_without_buffering_it():
    """A message past the limit was a WireError (the connection's end); it is
    skipped (r236), keeping only the first bytes of its segments, and given as an
    Oversized in order with the messages around it, whatever the pieces it
    comes in.  Past the segments limit it is still an error."""
    before = wire.frame([seg(struct_ptr(0, 1, 0), 5)])
    body = [seg(struct_ptr(0, 1, 0), 7) + bytes(8 * 200_000), bytes(8 * 300_000), seg(9)]
    over = wire.frame(body)
    after = wire.frame([seg(struct_ptr(0, 1, 0), 6)])
    for piece in (len(before + over + after), 1 << 16, 4093, 3):
        f = wire.Framer(max_words=1000)
        data, got, most = before + over + after, [], 0
        for i in range(0, len(data), piece):
            got += f.feed(data[i:i + piece])
            most = max(most, f.pending)
        assert most <= 2 * wire.OVERSIZED_KEPT_BYTES + 8 * 2       # first bytes and last
        assert [bytes(g[0]) for g in (got[0], got[2])] == [before[8:], after[8:]]
        o = got[1]
        assert isinstance(o, wire.Oversized) and o.size == len(over) and o.limit == 8000
        assert [len(k) for k in o.segments] == [wire.OVERSIZED_KEPT_BYTES // 2 - 8,
                                                wire.OVERSIZED_KEPT_BYTES // 2, 8]
        assert o.segments[0] == body[0][:len(o.segments[0])] and o.segments[2] == body[2]
        # and the last bytes of each segment the first do not reach the end of (r243)
        assert o.tails == [body[0][-wire.OVERSIZED_KEPT_BYTES // 2:],
                           body[1][-wire.OVERSIZED_KEPT_BYTES // 2:], b""]
        assert o.words == tuple(len(b) // 8 for b in body)
        assert f.messages == 3 and not f.partial and f.pending == 0
    f = wire.Framer(max_words=4)
    assert f.feed(struct.pack("<II", 0, 5)) == [] and f.partial and f.pending == 0
    with pytest.raises(wire.WireError, match="601 segments"):
        wire.Framer(max_words=4).feed(struct.pack("<I", 600) + bytes(4))
    with pytest.raises(wire.WireError, match="exceeds the limit"):     # no reader takes it
        wire.Framer(max_words=4).feed(struct.pack("<II", 0, (wire.MAX_SKIPPED_BYTES >> 3) + 1))


@pytest.mark.parametrize("nseg", [1, 2, 5])
def test_a_message_a_stock_reader_takes_is_skipped_at_the_64_mib_edge(nseg):
    """A stock Cap'n Proto reader takes a message of up to 8 Mi words (its traversal
    limit), counting its segments' words and not its segment table; the Framer
    counted the table too, and cut off as a framing error a message of exactly 8
    Mi words, which a conforming peer may send.  It is skipped as any message past
    the limit is; one word more is still refused at its table."""
    words = wire.MAX_SKIPPED_BYTES >> 3
    sizes = [1] * (nseg - 1) + [words - (nseg - 1)]
    table = struct.pack(f"<I{nseg}I", nseg - 1, *sizes)
    table += bytes(len(table) % 8)
    f = wire.Framer(max_words=1000)
    assert f.feed(table) == [] and f.partial
    chunk, got = bytes(1 << 20), []
    for _ in range(wire.MAX_SKIPPED_BYTES >> 20):
        got += f.feed(chunk)
    (o,) = got
    assert isinstance(o, wire.Oversized) and o.size == len(table) + wire.MAX_SKIPPED_BYTES
    assert not f.partial and f.messages == 1
    sizes[-1] += 1
    # named by the bound it passes, 64 MiB: it named the limit of 8000 bytes, which
    # a message past it alone is skipped at (r243)
    with pytest.raises(wire.WireError, match=f"message of {wire.MAX_SKIPPED_BYTES + 8} bytes "
                                             f"exceeds the limit of {wire.MAX_SKIPPED_BYTES} "
                                             f"bytes \\(a message past 8000 bytes is skipped"):
        wire.Framer(max_words=1000).feed(struct.pack(f"<I{nseg}I", nseg - 1, *sizes) + bytes(4))
    # and after the messages whole before it in the same read
    f = wire.Framer(max_words=1000)
    got = f.feed(wire.frame([bytes(8)]) + struct.pack(f"<I{nseg}I", nseg - 1, *sizes) + bytes(4))
    assert len(got) == 1 and f"limit of {wire.MAX_SKIPPED_BYTES} bytes" in str(f.failed)


def _lines_run(run) -> int:
    """Lines of wire.py run while `run()` runs: the work done, counted, not timed."""
    import sys
    seen = [0]

    def trace(frame, event, _arg):
        if frame.f_code.co_filename != wire.__file__:
            return None
        if event == "line":
            seen[0] += 1
        return trace
    sys.settrace(trace)
    try:
        run()
    finally:
        sys.settrace(None)
    return seen[0]


@pytest.mark.parametrize("small", [0, 1])
def test_skipping_a_message_costs_per_chunk_the_segments_it_touches_not_all(small):
    """A message past the limit, of 511 small (or empty) segments and a large one
    last, sent in 1-byte pieces: each piece of the large segment walked all 511
    segments before it, already kept (and `pending` summed them), ~25 times the
    work of a piece of a one-segment message (~27 us a byte against ~2 us, for
    the peer's one write of a byte).  Now a piece costs what it touches."""
    def work(sizes):
        n = len(sizes)
        table = struct.pack(f"<I{n}I", n - 1, *sizes)
        data = table + bytes(len(table) % 8) + bytes(8 * sum(sizes))
        f = wire.Framer(max_words=1000)
        f.feed(data[:-4096])                       # the large segment's bulk
        got = []

        def feed():
            for i in range(len(data) - 4096, len(data)):
                got.extend(f.feed(data[i:i + 1]))
                f.pending
        lines = _lines_run(feed)
        (o,) = got
        assert isinstance(o, wire.Oversized) and o.size == len(data)
        return lines
    one = work([20_000])
    many = work([small] * 511 + [20_000])
    assert many < 1.5 * one, (many, one)


def _struct_module(iface, method, results=False):
    from capnp.lib.capnp import _StructModule
    m = iface.schema.methods[method]
    return _StructModule(m.result_type if results else m.param_type, method)


def test_a_struct_with_no_words_copies_as_a_struct_not_as_null():
    """Found by fuzzing: a zero-sized struct right after its pointer was written
    as offset 0, i.e. a word of zeros, which reads as null (pycapnp then read a
    text field that the original had as a struct as valid)."""
    src = seg(struct_ptr(0, 0, 1), 0xFFFFFFFC)          # offset -1: an empty struct
    (one,) = wire.unframe(wire.single_segment_copy([src], (0, 0)))
    assert Q.unpack_from(one, 8)[0] != 0
    assert wire.resolve([one], (0, 1))[0] == wire.STRUCT
    assert wire.near_pointer(5, 6, struct_ptr(0, 0, 0)) == 0xFFFFFFFC
    assert wire.near_pointer(5, 6, struct_ptr(9, 1, 0)) == struct_ptr(0, 1, 0)


def test_a_framed_message_keeps_only_its_own_bytes_alive():
    """Several messages in one read: each gets its own bytes, so a message
    kept for long does not pin the whole read (up to 64 KiB) in memory."""
    small = wire.frame([seg(struct_ptr(0, 1, 0), 5)])
    big = wire.frame([seg(*[0] * 1000)])
    first, second = wire.Framer().feed(small + big)
    assert len(first[0].obj) == len(small) - 8 and len(second[0].obj) == len(big) - 8
    (only,) = wire.Framer().feed(small)
    assert bytes(only[0]) == seg(struct_ptr(0, 1, 0), 5)


def _calls_of(name: str, run) -> int:
    """How many times a Python function named `name` is called while `run()` runs."""
    import sys
    seen = [0]

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_name == name:
            seen[0] += 1
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen[0]


@pytest.mark.parametrize("data", [0, 1])
def test_a_list_of_structs_without_pointers_is_copied_in_one_piece(data, monkeypatch):
    """Found by an outside review: the copy for a guest walked a list of structs
    element by element, pointers or not.  A list of empty structs takes no room
    in the message and is charged one word per element, so 32 bytes of content
    (two segments: the engine's Python copy) named a million of them at the
    default message_size (8 MiB): 0.74 s of the callee engine's CPU per call,
    with nothing to copy, while every other caller of that compartment waited
    (24 s at message_size = 256 MiB).  Elements without pointers are their
    data, copied at once; the copy is the same."""
    n = 100_000
    seg0 = struct.pack("<QQ", wire.far_pointer(1, 0), 0)       # the root: far, to segment 1
    seg1 = struct.pack("<QQ", 1 | (7 << 32) | ((n * data) << 35),   # n structs of `data` words
                       (n << 2) | (data << 32)) + bytes(8 * n * data)
    monkeypatch.setattr(wire, "_native", None)
    out = []
    calls = _calls_of("copy_data", lambda: out.append(
        wire.single_segment_copy([seg0, seg1], (0, 0), 4 * n)))
    assert calls <= 1
    [copy] = wire.unframe(out[0])
    assert bytes(copy[8:16]) == struct.pack("<Q", (n << 2) | (data << 32))    # the tag, as it was
    assert len(copy) == 8 * (2 + n * data)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("data", [0, 1, 3])
def test_a_list_of_structs_is_charged_its_words_as_pycapnp_charges_them(data, native,
                                                                       monkeypatch):
    """The copy charged a list of structs its words and its element count besides:
    a list of one-word structs cost twice its size, so content of 800 KB was
    refused ('exceeds the traversal limit of 131072 words') by the engine that
    received it at message_size = 1 MiB, where the guest that sent it framed it
    within the same limit and pycapnp reads it within its words.  It costs its
    tag and its words, each element at least one (empty structs still cost a
    word each: their count), both natively and in Python."""
    if native and wire._native is None:
        pytest.skip("the native copy is not built")
    if not native:
        monkeypatch.setattr(wire, "_native", None)
    n = 100_000
    words = n * data
    src = seg(struct_ptr(0, 0, 1), list_ptr(0, 7, words),
              (n << 2) | (data << 32)) + bytes(8 * words)
    need = 1 + 1 + max(words, n)          # the root struct's pointer, the tag, the elements
    copy = wire.single_segment_copy([src], (0, 0), need)
    assert len(copy) == 8 + len(src)
    with pytest.raises(wire.WireError, match="traversal limit"):
        wire.single_segment_copy([src], (0, 0), need - 1)


def test_the_native_copy_of_several_segments_is_the_python_copy(monkeypatch):
    """_fastwire.copy_segments (router.content_bytes's measure of content in
    several segments, far pointers followed; single_segment_copy's, where the
    one-segment copy declines) gives exactly what
    single_segment_copy's Python walk gives, or where it raises, the pointer it
    raises at (and what for), which wire._copy_refused names as the walk does:
    random words of 1 to 4 segments, far and double-far pointers among them."""
    import random
    if wire._native is None or not hasattr(wire._native, "copy_segments"):
        pytest.skip("the native module is not built")
    native = wire._native
    monkeypatch.setattr(wire, "_native", None)
    rnd = random.Random(207)

    def word(nsegs, k):
        r = rnd.random()
        if r < 0.15:
            return 0
        if r < 0.35:
            return wire.far_pointer(rnd.randint(0, nsegs), rnd.randint(0, k + 1),
                                    rnd.random() < 0.4)
        if r < 0.7:
            off = rnd.randint(-4, 8) & 0x3FFFFFFF
            if rnd.random() < 0.5:
                return rnd.randint(0, 3) << 32 | rnd.randint(0, 3) << 48 | off << 2
            return 1 | off << 2 | rnd.randint(0, 7) << 32 | rnd.randint(0, 20) << 35
        if r < 0.8:
            return 3 | rnd.randint(0, 2) << 32
        if r < 0.9:         # a struct list's tag
            return rnd.randint(0, 5) << 2 | rnd.randint(0, 2) << 32 | rnd.randint(0, 2) << 48
        return rnd.getrandbits(64)

    copied = refused = 0
    for _ in range(8000):
        nsegs = rnd.randint(1, 4)
        segs = []
        for _s in range(nsegs):
            k = rnd.randint(1, 14)
            segs.append(struct.pack(f"<{k}Q", *[word(nsegs, k) for _ in range(k)]))
        s = rnd.randint(0, nsegs - 1)
        p = rnd.randint(0, len(segs[s]) // 8 - 1)
        max_words = rnd.choice([1, 2, 5, 10, 40, 1000])
        try:
            expected = wire.single_segment_copy(segs, (s, p), max_words)
        except wire.WireError as e:
            expected = str(e)
        got = native.copy_segments([memoryview(x) for x in segs], s, p, max_words)
        if isinstance(expected, bytes):
            assert got == expected, (segs, s, p, max_words)
            copied += len(expected) > 16
            continue
        # refused where the walk raises, and named as it names it (from that pointer)
        assert isinstance(got, tuple), (segs, s, p, max_words, got)
        with pytest.raises(wire.WireError) as e:
            wire._copy_refused(segs, got, max_words)
        assert str(e.value) == expected, (segs, s, p, max_words, got)
        refused += 1
    assert copied > 200 and refused > 2000      # both reached, not only one
    assert native.copy_segments([b"\0" * 7], 0, 0, 10) is None       # not whole words


@pytest.mark.parametrize("case", ["two segments", "refused at its last pointer"])
def test_a_copy_the_one_segment_copy_declines_is_not_walked_in_python(monkeypatch, case):
    """An engine copies the params of every call it serves (and every reply) for
    its guest, before the guest runs.  Where the native one-segment copy declined
    (content in two segments, as pycapnp sends large params; or content it
    refuses), the Python walk ran, a few microseconds a pointer: params of 400,000
    pointers (3.2 MB, within the default message_size) held the engine 0.77 s a
    call (the native copy: 6 ms), and a client sending them with every call kept
    every other caller of that compartment waiting.  The native copy goes through
    far pointers into every segment, and a refusal is named from the one pointer
    it stopped at: the walk's wire.resolve runs once at most, not once a pointer."""
    if wire._native is None or not hasattr(wire._native, "copy_segments"):
        pytest.skip("the native module is not built")
    n = 10000
    pointers = [0xFFFFFFFC] * n                 # empty structs
    if case == "two segments":
        segs = [struct.pack("<Q", wire.far_pointer(1, 0)),
                struct.pack(f"<{n + 1}Q", 1 | 6 << 32 | n << 35, *pointers)]
    else:
        pointers[-1] = wire.far_pointer(5, 0)    # to a segment the message does not have
        segs = [struct.pack(f"<{n + 1}Q", 1 | 6 << 32 | n << 35, *pointers)]
    resolved = []
    real = wire.resolve
    monkeypatch.setattr(wire, "resolve", lambda s, loc: resolved.append(loc) or real(s, loc))
    if case == "two segments":
        out = wire.single_segment_copy(segs, (0, 0), 1 << 20)
        assert len(out) == 8 + 8 * (n + 1)
    else:
        with pytest.raises(wire.WireError, match=r"segment 5 out of range \(the message has 1\)"):
            wire.single_segment_copy(segs, (0, 0), 1 << 20)
    assert len(resolved) <= 1, len(resolved)


@pytest.mark.parametrize("segments", [1, 2])
@pytest.mark.parametrize("native", [True, False])
def test_a_list_of_void_is_charged_a_word_an_element_as_pycapnp_charges_it(native, segments,
                                                                          monkeypatch):
    """The copy charged a list of Void a word per 64 elements (its bits, as for a
    list of Bool), where pycapnp charges a word each (an amplified read): 16
    bytes naming a million Voids were handed to a guest at a bound of 20,000
    words, which pycapnp refuses below 1,000,001, though the docs said every
    element counts a word and the copy refuses what a stock reader refuses.
    Natively (one segment, several) and in Python alike."""
    if native and wire._native is None:
        pytest.skip("the native copy is not built")
    if not native:
        monkeypatch.setattr(wire, "_native", None)
    n = 1_000_000
    if segments == 1:
        segs = [seg(struct_ptr(0, 0, 1), list_ptr(0, 0, n))]
    else:
        segs = [seg(far_ptr(1, 0)), seg(struct_ptr(0, 0, 1), list_ptr(0, 0, n))]
    need = 1 + n                         # the root struct's pointer, an element a word
    assert wire.single_segment_copy(segs, (0, 0), need)
    with pytest.raises(wire.WireError, match="traversal limit"):
        wire.single_segment_copy(segs, (0, 0), need - 1)
    with pytest.raises(wire.WireError, match="traversal limit"):
        wire.single_segment_copy(segs, (0, 0), 20_000)
