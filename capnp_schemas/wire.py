"""Cap'n Proto wire format: stream framing and pointer surgery.

Owns: the stream framing of messages (one segment-table parser, used by the
incremental `Framer` and the one-shot `unframe`), the bounds-checked reading of
pointers (`resolve`, with the one routine that sizes an object from its
pointer, `object_words`), and the pointer surgery that splices payload content
into new messages or copies it into one segment (`single_segment_copy`).

Must not: do I/O, import pycapnp, or trust a byte.  Every read is
bounds-checked against its segment, and malformed input (or input past a
limit) raises `WireError`, never anything else.

The RPC core uses these to move payload *content* without re-encoding it: it
is spliced into the next message with far pointers, byte for byte (the
reference monitor never interprets a payload it only forwards), which is also
the only way to move content that holds capability pointers, which pycapnp
refuses to copy without an RPC cap table.

Pointer encoding (little-endian 64-bit words), from the Cap'n Proto spec:
  kind = w & 3:  0 struct, 1 list, 2 far, 3 other (capability)
  struct/list: bits 2..31 signed word offset from the end of the pointer
  struct: bits 32..47 data words, 48..63 pointer count
  list: bits 32..34 element size, 35..63 element count (for a list of structs,
        size 7, the count is the number of words after the tag word; the tag
        is laid out like a struct pointer whose offset is the element count)
  far: bit 2 double-far flag, bits 3..31 landing-pad offset, 32..63 segment id
  capability: bits 2..31 zero, 32..63 index into the cap table
"""
from __future__ import annotations

import mmap
import struct

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_u64 = _U64.unpack_from

STRUCT, LIST, FAR, OTHER = 0, 1, 2, 3
COMPOSITE = 7                                # list element size: a list of structs

#: Defaults for messages from engines and external peers.
MAX_SEGMENTS = 512
MAX_MESSAGE_WORDS = 8 * 1024 * 1024 // 8  # 8 MiB
MAX_PATH_DEPTH = 64
#: Pointer nesting a single-segment copy follows; Cap'n Proto's default
#: nesting limit (ReaderOptions.nestingLimit), so the copy refuses exactly the
#: depths a stock reader would refuse.
MAX_NESTING = 64
#: A list of structs has at most 2^29 - 1 elements (the list count field's width).
MAX_LIST_ELEMENTS = (1 << 29) - 1


try:        # native versions of the hot paths below (setup.py builds them; optional)
    from . import _fastwire as _native
except ImportError:
    _native = None


class WireError(ValueError):
    """Bytes that are not a well-formed Cap'n Proto message (or exceed a limit)."""


# ---------------------------------------------------------------- framing


def _segment_table(buf, pos: int, max_segments: int, max_words: int):
    """Parse the stream segment table of the message starting at `buf[pos]`.

    Returns None while the table itself is incomplete, else (first byte of
    the segments, segment sizes in words, end of the message in bytes); the
    message body may not be complete yet.  Raises WireError past a limit.
    The one parser of segment tables: Framer and unframe both use it.
    """
    have = len(buf) - pos
    if have < 4:
        return None
    nseg = _U32.unpack_from(buf, pos)[0] + 1
    if nseg > max_segments:
        raise WireError(f"message has {nseg} segments (limit {max_segments})")
    table = 4 + 4 * nseg
    table += table & 4                       # padded to a whole word
    if have < table:
        return None
    if nseg == 1:
        sizes = (_U32.unpack_from(buf, pos + 4)[0],)
    else:
        sizes = struct.unpack_from(f"<{nseg}I", buf, pos + 4)
    total = sum(sizes)
    if total > max_words:
        raise WireError(
            f"message of {total * 8} bytes exceeds the limit of {max_words * 8} bytes")
    return pos + table, sizes, pos + table + 8 * total


def _segments(view: memoryview, start: int, sizes) -> list[memoryview]:
    if len(sizes) == 1:
        return [view[start:start + 8 * sizes[0]]]
    segs = []
    for n in sizes:
        segs.append(view[start:start + 8 * n])
        start += 8 * n
    return segs


def framed_size(buf, pos: int) -> int | None:
    """Bytes of the framed message that begins at `buf[pos]`, its segment table
    included, read from that table alone (the body need not be there); None while
    the table is not all in `buf`, or past MAX_SEGMENTS segments.  It only
    measures: the Framer that reads the message judges it, against its own limits."""
    try:
        t = _segment_table(buf, pos, MAX_SEGMENTS, 1 << 62)
    except WireError:
        return None
    return None if t is None else t[2] - pos


#: Bytes of a message past the Framer's limit that are kept while the rest is
#: skipped, over its segments: the small ones whole, the first bytes of the large
#: ones (each segment's share, the smallest first).  There the peer put the
#: message's header (its root, Call or Return, target and cap table): Cap'n
#: Proto's C++ RPC puts the Call at the head of the first segment, a large Data
#: in a segment of its own, and what it allocates after that (a pipelined
#: target's transform, the cap table) in a small segment at the end; the call it
#: makes can then be named and failed alone (Oversized).  A header is at most
#: this (router.HEADER_WORDS).
OVERSIZED_KEPT_BYTES = 64 * 1024
#: A message past the limit is skipped only up to this size of its segments (or
#: twice the limit, if that is more; its segment table aside): past it, no stock
#: Cap'n Proto reader takes it (its default traversal limit is 8 Mi words, which
#: it compares with the segments' words), so no conforming peer sends it, and it is still
#: a framing error at its segment table (a table saying 2 GiB and then silence is
#: cut off at once, not at its message_timeout).
MAX_SKIPPED_BYTES = 64 << 20


def _kept(sizes) -> list[int]:
    """Bytes kept of each segment (of `sizes` words) of a skipped message: a share
    of OVERSIZED_KEPT_BYTES each, in whole words, a smaller segment's unused
    share going to the larger ones."""
    kept = [0] * len(sizes)
    left = OVERSIZED_KEPT_BYTES // 8
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for k, i in enumerate(order):
        kept[i] = min(sizes[i], left // (len(order) - k))
        left -= kept[i]
    return [8 * w for w in kept]


def _kept_tails(sizes, heads) -> list[int]:
    """Bytes kept of the end of each segment (of `sizes` words) of a skipped
    message, beyond its first bytes (`heads`, _kept's): as many again, shared the
    same way over what the heads leave.  There a peer that builds the content
    before the header (an orphan adopted into the params, a hand-made message)
    puts its header: after the content, at the end of a segment."""
    rest = [n - h // 8 for n, h in zip(sizes, heads)]
    return _kept(rest)


class Oversized:
    """A message the Framer skipped, past its limit of words: `segments`, what was
    kept of each of its segments (its first bytes, _kept), `size` its bytes
    framed, `limit` the Framer's bytes; `tails`, what was kept of the end of each
    segment (_kept_tails: bytes, empty where the first bytes reach its end), and
    `words`, each segment's size in words.  What Framer.feed gives in its
    place, in order with the messages around it."""
    __slots__ = ("segments", "size", "limit", "tails", "words")

    def __init__(self, segments: list, size: int, limit: int, tails: list | None = None,
                 words: tuple | None = None):
        self.segments, self.size, self.limit = segments, size, limit
        self.tails = tails if tails is not None else [b""] * len(segments)
        self.words = words if words is not None else tuple(len(k) // 8 for k in segments)

    def has_tails(self) -> bool:
        return any(self.tails)

    def sparse(self) -> list:
        """The segments at their full size, what was kept in place: a segment with
        a kept end is an anonymous mapping (what lies between is never written, so
        never takes memory, and reads as zeros: `inside` says what was kept)."""
        out = []
        for head, tail, n in zip(self.segments, self.tails, self.words):
            if not tail:
                out.append(memoryview(head))
                continue
            m = mmap.mmap(-1, 8 * n)
            m[:len(head)] = head
            m[8 * n - len(tail):] = tail
            out.append(memoryview(m))
        return out

    def inside(self, s: int, start: int, words: int) -> bool:
        """Whether words [start, start + words) of segment `s` were kept (all
        in its first bytes, or all in its last)."""
        if s < 0 or s >= len(self.words) or start < 0 or words < 0:
            return False
        lo, hi = 8 * start, 8 * (start + words)
        if hi <= len(self.segments[s]):
            return True
        tail = len(self.tails[s])
        return bool(tail) and lo >= 8 * self.words[s] - tail and hi <= 8 * self.words[s]


class Framer:
    """Incremental stream framing: bytes in, whole messages (segment lists) out.

    `pending` is the number of bytes of an incomplete message buffered, and
    `partial` tells whether a message has begun and not ended, so that the
    owner can put a deadline on a peer that sends half a message and stops.
    `messages` counts the messages framed so far: together with `partial` it
    tells a new half message from the same one.

    A message larger than `max_words` (its segment table says so) is skipped,
    not buffered, and given as an `Oversized` with the beginning of its first
    segment, once its last byte has passed: a conforming peer may send one (a
    large call), and the owner may fail that call alone.  Until r236 it was a
    WireError, and the connection's end.  A segment table past `max_segments`,
    or one past MAX_SKIPPED_BYTES, is still one: no stock Cap'n Proto reader
    takes it.
    """

    def __init__(self, max_segments: int = MAX_SEGMENTS, max_words: int = MAX_MESSAGE_WORDS):
        self._buf = bytearray()
        self._need = 0                  # bytes the buffered message needs, once known
        self.max_segments = max_segments
        self.max_words = max_words
        self.messages = 0
        #: the WireError met after the messages `feed` returned last (None: none):
        #: the stream is unusable from there, and the next `feed` raises it
        self.failed: WireError | None = None
        # a message past max_words being skipped: bytes of it still to come, the
        # bytes of its body passed so far, and of each segment: where it begins in
        # the body, what is kept of it, and how much to keep
        self._skip = 0
        self._passed = 0
        self._kept: list = []
        self._over: tuple = ()
        # of _kept: the first segment still keeping bytes (those before it are done:
        # a chunk's cost is the segments it touches, not all of them), and the bytes
        # kept so far
        self._keeping = 0
        self._kept_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered."""
        return len(self._buf) + self._kept_bytes

    @property
    def partial(self) -> bool:
        """True while a message is partly received (or skipped)."""
        return bool(self._buf) or self._skip > 0

    def _skipping(self, view, pos: int, size: int, out: list) -> int:
        """Skip what `view[pos:size]` has of the message being skipped, keeping the
        first bytes of each of its segments (_kept); the Oversized into `out` once
        it is all past.  Returns the new pos."""
        take = min(self._skip, size - pos)
        lo, hi = self._passed, self._passed + take
        segs, i = self._kept, self._keeping
        # (a range's last byte kept, start + want, grows with its start: those
        # done are all before the first one not done)
        while i < len(segs) and segs[i][0] + segs[i][2] <= lo:
            i += 1
        self._keeping = i
        for i in range(i, len(segs)):
            start, kept, want, _tail = segs[i]
            if start >= hi:
                break
            have = len(kept)
            if have < want and start + have < hi and lo < start + want:
                a = max(lo, start + have)
                b = min(hi, start + want)
                kept += view[pos + a - lo:pos + b - lo]
                self._kept_bytes += b - a
        self._passed = hi
        self._skip -= take
        if not self._skip:
            out.append(Oversized([bytes(k[1]) for k in self._kept if k[3] is False],
                                 self._over[0], 8 * self.max_words,
                                 [bytes(k[1]) if k[3] else b"" for k in self._kept
                                  if k[3] is not False], self._over[1]))
            self._kept, self._over = [], ()
            self._keeping = self._kept_bytes = 0
        return pos + take

    def feed(self, data) -> list[list[memoryview]]:
        """Feed bytes from the stream; returns the messages they complete.

        Raises WireError when a segment table exceeds a limit (the stream is
        then unusable: the owner must drop the connection).  The messages whole
        before that table are returned first (as the fast lane frames them, one
        by one), with the error in `failed`; the next call raises it."""
        if self.failed is not None:
            raise self.failed
        if type(data) is not bytes:
            data = bytes(data)               # segments must not change under us
        buf = self._buf
        out = []
        if self._skip:
            pos = self._skipping(memoryview(data), 0, len(data), out)
            if self._skip:
                return out
            data = data[pos:]
            self.messages += len(out)
            if not data:
                return out
        if not buf and not out and len(data) >= 8:
            # the common case: exactly one whole one-segment message (what the lane
            # hands over); the same as the loop below, which handles everything else
            nseg, words = _TABLE_ONE.unpack_from(data)
            if not nseg and 8 + 8 * words == len(data) and words <= self.max_words \
                    and self.max_segments >= 1:
                self._need = 0
                self.messages += 1
                return [[memoryview(data)[8:]]]
        done = len(out)                      # an Oversized that ended above: counted
        if buf:
            if self._need and len(buf) + len(data) < self._need:
                buf += data                      # still short of the known end
                return out
            buf += data
            data = bytes(buf)
            buf.clear()
        self._need = 0
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size:
            try:
                t = _segment_table(data, pos, self.max_segments, self.max_words)
            except WireError:
                try:
                    t = self._oversized(data, pos)
                except WireError as e:
                    if not out:
                        raise
                    self.failed = e              # after the messages before it
                    break
                pos = self._skipping(view, t, size, out)
                if self._skip:
                    break
                continue
            if t is None or t[2] > size:
                buf += view[pos:]                # the rest of the stream: later
                if t is not None:
                    self._need = t[2] - pos
                break
            start, sizes, end = t
            if pos == 0 and end == size:
                out.append(_segments(view, start, sizes))     # the chunk is this message
            else:
                # its own bytes: a message kept for long (a returned answer's
                # content) must not keep the rest of the chunk alive
                out.append(_segments(memoryview(data[start:end]), 0, sizes))
            pos = end
        self.messages += len(out) - done
        return out

    def _oversized(self, data, pos: int) -> int:
        """The message at `data[pos]` passes max_words: from here it is skipped
        (returns where its segments begin).  A WireError if it passes another
        limit, naming that limit: past the bytes skipped (MAX_SKIPPED_BYTES, or
        twice the limit), the error named the limit of max_words, which a
        message that passes it alone is skipped at (r243)."""
        start, sizes, end = _segment_table(data, pos, self.max_segments, 1 << 62)
        # its segments' bytes, as a stock reader counts them against its traversal
        # limit (its segment table is not counted: a body of exactly 8 Mi words is
        # read there, and was cut off here as a framing error)
        bound = max(MAX_SKIPPED_BYTES, 16 * self.max_words)
        if end - start > bound:
            raise WireError(f"message of {end - start} bytes exceeds the limit of {bound} "
                            f"bytes (a message past {8 * self.max_words} bytes is skipped "
                            f"and fails alone up to that size, MAX_SKIPPED_BYTES: no "
                            f"stock Cap'n Proto reader takes more)")
        self._skip = end - start
        self._passed = 0
        # ranges kept, in order: each segment's first bytes (tail False), then its
        # last ones (True; None where nothing is left for them)
        self._kept, at = [], 0
        heads = _kept(sizes)
        for n, keep, tail in zip(sizes, heads, _kept_tails(sizes, heads)):
            self._kept.append((at, bytearray(), keep, False))
            self._kept.append((at + 8 * n - tail, bytearray(), tail, True if tail else None))
            at += 8 * n
        self._over = (end - pos, tuple(sizes))
        return start


_TABLE_ONE = struct.Struct("<II")        # the segment table of a one-segment message


def frame(segments, tail=b"") -> bytes:
    """Serialize a segment list with the standard stream segment table.  `tail`
    (whole words) is the end of the last segment, after `segments[-1]`."""
    n = len(segments)
    if n == 1 and not tail:              # nearly every message: no format to build
        return b"".join((_TABLE_ONE.pack(0, len(segments[0]) // 8), segments[0]))
    sizes = [len(s) // 8 for s in segments]
    sizes[-1] += len(tail) // 8
    head = struct.pack(f"<{n + 1}I", n - 1, *sizes)
    if len(head) % 8:
        head += b"\0\0\0\0"
    return b"".join((head, *segments, tail))


def unframe(data, max_segments: int = MAX_SEGMENTS,
            max_words: int = MAX_MESSAGE_WORDS) -> list[memoryview]:
    """Parse exactly one framed message; trailing or missing bytes are an error.
    The segments are views of `data` (no copy)."""
    t = _segment_table(data, 0, max_segments, max_words)
    if t is None or t[2] != len(data):
        have = len(data)
        want = "a longer segment table" if t is None else f"{t[2]} bytes"
        raise WireError(f"expected exactly one complete Cap'n Proto message: "
                        f"got {have} bytes, the framing says {want}")
    return _segments(memoryview(data), t[0], t[1])


# ---------------------------------------------------------------- pointers

Loc = tuple  # (segment index, word index): where a pointer lives

_ELEM_BITS = (0, 1, 8, 16, 32, 64, 64, None)


def object_words(w: int) -> int:
    """Words occupied by the object that struct or list pointer `w` (or a
    landing pad's tag) describes: a struct's data and pointer sections; a
    list's elements rounded up to whole words; a list of structs' element
    words *and its tag word*.  The one place that sizes an object."""
    if not w & 1:                                   # STRUCT
        return ((w >> 32) & 0xFFFF) + (w >> 48)
    esz = (w >> 32) & 7
    if esz == COMPOSITE:
        return (w >> 35) + 1
    return ((w >> 35) * _ELEM_BITS[esz] + 63) >> 6


def _word(segs, s: int, p: int) -> int:
    if not 0 <= s < len(segs):
        raise WireError(f"segment {s} out of range (the message has {len(segs)})")
    seg = segs[s]
    if p < 0 or 8 * p + 8 > len(seg):
        raise WireError(f"word {p} out of range in segment {s} of {len(seg) // 8} words")
    return _U64.unpack_from(seg, 8 * p)[0]


def _signed30(w: int) -> int:
    off = (w >> 2) & 0x3FFFFFFF
    return off - (1 << 30) if off & (1 << 29) else off


def _object(segs, kind: int, s: int, start: int, w: int):
    """(kind, s, start, w) once the object lies wholly inside segment s."""
    if not 0 <= s < len(segs):
        raise WireError(f"segment {s} out of range (the message has {len(segs)})")
    if start < 0 or 8 * (start + object_words(w)) > len(segs[s]):
        raise WireError(f"pointer points outside its segment ({object_words(w)} words "
                        f"at word {start} of segment {s}, which has {len(segs[s]) // 8})")
    return (kind, s, start, w)


def resolve(segs, loc: Loc):
    """Follow the pointer at `loc`, through far pointers.

    Returns (kind, segment, start_word, word) where `word` is the pointer (or
    landing-pad tag) describing the object and start_word its first word (for
    a list of structs, its tag word); or None for a null pointer.  The whole
    object lies inside its segment.  Capabilities return (OTHER, s, p, word).
    """
    s, p = loc
    try:
        if s < 0 or p < 0:
            raise IndexError
        seg = segs[s]
        w = _u64(seg, 8 * p)[0]
    except (IndexError, struct.error):
        _word(segs, s, p)                   # raises the precise WireError
        raise WireError(f"pointer at {loc} cannot be read") from None
    if w == 0:
        return None
    kind = w & 3
    if kind <= LIST:                 # a near pointer: the common case
        off = (w >> 2) & 0x3FFFFFFF
        start = p + 1 + (off - (1 << 30) if off & (1 << 29) else off)
        if start < 0 or 8 * (start + object_words(w)) > len(seg):
            raise WireError(f"pointer points outside its segment ({object_words(w)} words "
                            f"at word {start} of segment {s}, which has {len(seg) // 8})")
        return (kind, s, start, w)
    if kind == FAR:
        pad = (w >> 3) & 0x1FFFFFFF
        ts = w >> 32
        if not (w >> 2) & 1:
            tag = _word(segs, ts, pad)
            if tag & 3 > LIST:
                raise WireError("far pointer lands on a far or capability pointer")
            return _object(segs, tag & 3, ts, pad + 1 + _signed30(tag), tag)
        far2 = _word(segs, ts, pad)
        tag = _word(segs, ts, pad + 1)
        if far2 & 7 != FAR:  # must be a single far pointer
            raise WireError("double-far landing pad is not a single far pointer")
        if _signed30(tag) != 0 or tag & 3 > LIST:
            raise WireError("double-far tag is not a struct or list tag of offset 0")
        return _object(segs, tag & 3, far2 >> 32, (far2 >> 3) & 0x1FFFFFFF, tag)
    return (OTHER, s, p, w)


def composite_tag(segs, r) -> tuple[int, int, int]:
    """(element count, data words, pointer count) of the list of structs `r`
    (a resolve() result), checked against the list's size."""
    kind, s, start, w = r
    if kind != LIST or (w >> 32) & 7 != COMPOSITE:
        raise WireError("expected a list of structs")
    tag = _u64(segs[s], 8 * start)[0]      # inside: resolve counted the tag word
    n = (tag >> 2) & 0x3FFFFFFF
    data, ptrs = (tag >> 32) & 0xFFFF, tag >> 48
    if tag & 3 != STRUCT or n > MAX_LIST_ELEMENTS:
        raise WireError("struct list tag is malformed")
    if n * (data + ptrs) > w >> 35:
        raise WireError(f"struct list of {n} elements of {data + ptrs} words "
                        f"overruns its {w >> 35} words")
    return n, data, ptrs


def struct_pointer_field(segs, loc: Loc, index: int) -> Loc | None:
    """Location of pointer field `index` of the struct pointed to from `loc`.

    None when the struct pointer is null or the struct is too old to have the field.
    """
    r = resolve(segs, loc)
    if r is None:
        return None
    kind, s, start, w = r
    if kind != STRUCT:
        raise WireError("expected a struct pointer")
    data, ptrs = (w >> 32) & 0xFFFF, w >> 48
    if index >= ptrs:
        return None
    return (s, start + data + index)


def follow_path(segs, loc: Loc, path) -> Loc | None:
    """Walk pointer fields `path` (indices) from `loc`; None if a step is null."""
    if len(path) > MAX_PATH_DEPTH:
        raise WireError(f"pointer path deeper than {MAX_PATH_DEPTH}")
    for index in path:
        loc = struct_pointer_field(segs, loc, index)
        if loc is None:
            return None
    return loc


def struct_list_elements(segs, loc: Loc) -> list[tuple]:
    """(segment, start, data_words, ptr_count) of each element of a struct list."""
    r = resolve(segs, loc)
    if r is None:
        return []
    n, data, ptrs = composite_tag(segs, r)
    _kind, s, start, _w = r
    return [(s, start + 1 + i * (data + ptrs), data, ptrs) for i in range(n)]


def pointer_list(segs, loc: Loc) -> list[Loc]:
    """Locations of the elements of a list of pointers."""
    r = resolve(segs, loc)
    if r is None:
        return []
    kind, s, start, w = r
    if kind != LIST or (w >> 32) & 7 != 6:
        raise WireError("expected a list of pointers")
    return [(s, start + i) for i in range(w >> 35)]


def capability_index(segs, loc: Loc | None) -> int | None:
    """Cap-table index of the capability pointer at `loc` (None if null)."""
    if loc is None:
        return None
    r = resolve(segs, loc)
    if r is None:
        return None
    kind, _s, _p, w = r
    if kind != OTHER or w & 0xFFFFFFFC:
        raise WireError("expected a capability pointer")
    return w >> 32


def cap_pointer(index: int) -> int:
    return OTHER | (index << 32)


def near_pointer(at: int, target: int, w: int) -> int:
    """The pointer word at word `at` to an object at word `target` of the same
    segment, described by `w` (a struct or list pointer, or a tag).  A struct
    with no words gets offset -1, never a word of zeros: that is null."""
    if not w & 0xFFFFFFFF00000001:                  # a struct of no data, no pointers
        return 0xFFFFFFFC
    return (w & 0xFFFFFFFF00000003) | ((target - at - 1) & 0x3FFFFFFF) << 2


def far_pointer(seg: int, word: int, double: bool = False) -> int:
    return FAR | (int(double) << 2) | (word << 3) | (seg << 32)


def portable_pointer(segs, loc: Loc) -> int:
    """A pointer word, valid anywhere in the message, that means what `loc` means.

    Far, capability and null pointers are position-independent and are copied;
    a near pointer becomes a single-far pointer whose landing pad is the original
    pointer itself (a near pointer is a valid landing pad).
    """
    s, p = loc
    w = _word(segs, s, p)
    if w == 0 or w & 3 in (FAR, OTHER):
        return w
    return far_pointer(s, p)


def set_word(seg: bytearray, p: int, value: int) -> None:
    _U64.pack_into(seg, 8 * p, value)


def with_root_at(segs, loc: Loc | None) -> list:
    """A copy of the segment list whose root pointer means what `loc` means.

    Used to hand payload content to a guest as a standalone message without
    copying it: only word 0 of segment 0 changes.
    """
    out = list(segs)
    if loc == (0, 0):               # already the root (a standalone message)
        return out
    first = bytearray(out[0])
    set_word(first, 0, 0 if loc is None else portable_pointer(segs, loc))
    out[0] = first
    return out


# ---------------------------------------------------------------- single-segment copy


def _copy_refused(segs, refused: tuple, max_words: int):
    """Raise the WireError single_segment_copy's walk raises, from where the native
    copy refused: (why, segment, word of the pointer), _fastwire.c's FW_FAIL_*."""
    why, s, p = refused
    if why == 1:
        resolve(segs, (s, p))
    elif why == 2:
        raise WireError(f"message nested deeper than {MAX_NESTING}")
    elif why == 3:
        raise WireError("unknown 'other' pointer")
    elif why == 4:
        raise WireError(f"message exceeds the traversal limit of {max_words} words")
    elif why == 5:
        composite_tag(segs, resolve(segs, (s, p)))
    # (never reached: what the native copy refuses, the checks above refuse too)
    raise WireError(f"message rejected at the pointer at word {p} of segment {s}")


def single_segment_copy(segs, loc: Loc | None, max_words: int = MAX_MESSAGE_WORDS) -> bytes:
    """Copy the object at `loc` into a new single-segment message (framed bytes).

    Not Cap'n Proto's canonical form (which also truncates trailing zero
    words of data sections, and which this copy does not promise): objects
    are laid out in pre-order right after their pointers, so a guest finds
    the root struct at a fixed place (word 1) and never meets a far pointer.
    Every pointer of the copy points inside its one segment; a list of
    structs keeps exactly its elements' words.  Capability pointers are
    copied as they are (their index still refers to the payload's cap list).

    The copy is bounded: at most `max_words` words are read (every list
    element counts at least one word, so lists of empty structs cannot
    amplify), and pointers nest at most MAX_NESTING deep.  Raises WireError
    for anything malformed and for anything past a bound.
    """
    if _native is not None and len(segs) == 1 and (loc is None or loc[0] == 0):
        copied = _native.copy(segs[0], -1 if loc is None else loc[1], max_words)
        if copied is not None:              # the same bytes; None: the copy below decides
            return copied
    several = getattr(_native, "copy_segments", None)
    if several is not None and loc is not None:
        # through far pointers, in any number of segments: the same bytes, or where
        # the walk below would raise, the pointer it would raise at, named here as it
        # names it.  The walk ran in Python whenever the one-segment copy declined: a
        # client's params of 400,000 pointers (3.2 MB), refused for their last one or
        # sent in two segments (as pycapnp sends large params), held the engine that
        # received them 0.77 s a call before its guest ran (native: 6 ms), and every
        # other caller of the compartment waited (an outside review, reviewer 207)
        copied = several(segs, loc[0], loc[1], max_words)
        if isinstance(copied, bytes):
            return copied
        if copied is not None:
            _copy_refused(segs, copied, max_words)
    out = bytearray(8)
    budget = [max_words]

    def charge(n):
        budget[0] -= max(n, 1)
        if budget[0] < 0:
            raise WireError(f"message exceeds the traversal limit of {max_words} words")

    def alloc(nwords) -> int:
        at = len(out) // 8
        out.extend(bytes(8 * nwords))
        return at

    def copy_data(seg, src: int, dst: int, words: int):
        # resolve() proved [src, src + words) lies inside seg: lengths match
        out[8 * dst:8 * (dst + words)] = seg[8 * src:8 * (src + words)]

    def copy(src: Loc, dst: int, depth: int):
        r = resolve(segs, src)
        if r is None:
            return
        if depth >= MAX_NESTING:
            raise WireError(f"message nested deeper than {MAX_NESTING}")
        kind, s, start, w = r
        if kind == OTHER:
            if w & 0xFFFFFFFC:
                raise WireError("unknown 'other' pointer")
            set_word(out, dst, w)
            return
        seg = segs[s]
        if kind == STRUCT:
            data, ptrs = (w >> 32) & 0xFFFF, w >> 48
            charge(data + ptrs)
            at = alloc(data + ptrs)
            copy_data(seg, start, at, data)
            set_word(out, dst, near_pointer(dst, at, w))
            for i in range(ptrs):
                copy((s, start + data + i), at + data + i, depth + 1)
            return
        esz, count = (w >> 32) & 7, w >> 35
        if esz == COMPOSITE:
            n, data, ptrs = composite_tag(segs, r)
            words = n * (data + ptrs)
            # the tag and the elements, each at least a word (pycapnp's charge:
            # their words and the tag, or their count if they are empty).  It was
            # n + words: a list of one-word structs cost twice its size, and
            # content of 800 KB was refused at a message_size of 1 MiB by the
            # engine that received it, where the one that sent it (and pycapnp)
            # took it (an outside review, reviewer 204)
            charge(1 + max(n, words))
            at = alloc(1 + words)
            set_word(out, at, _U64.unpack_from(seg, 8 * start)[0])
            if not ptrs:
                # their data, in one piece: a list of empty structs is charged a word
                # per element but holds none, and a walk of a million of them named
                # in 32 bytes cost the engine most of a second with nothing to copy
                copy_data(seg, start + 1, at + 1, words)
            for i in range(n if ptrs else 0):
                e_src = start + 1 + i * (data + ptrs)
                e_dst = at + 1 + i * (data + ptrs)
                copy_data(seg, e_src, e_dst, data)
                for j in range(ptrs):
                    copy((s, e_src + data + j), e_dst + data + j, depth + 1)
            # the copy's word count is what it holds, not what the original claimed
            size = (COMPOSITE | words << 3) << 32
        elif esz == 6:
            charge(count)
            at = alloc(count)
            for i in range(count):
                copy((s, start + i), at + i, depth + 1)
            size = w & ~0xFFFFFFFF
        else:
            words = object_words(w)
            # a word an element for a list of Void (pycapnp's amplified read), its
            # words for any other; a Void list of a million cost 15,625 words, a
            # 64th of what pycapnp charges (an outside review, reviewer 207)
            charge(words if esz else count)
            at = alloc(words)
            copy_data(seg, start, at, words)
            size = w & ~0xFFFFFFFF
        set_word(out, dst, near_pointer(dst, at, LIST | size))

    if loc is not None:
        copy(loc, 0, 0)
    return struct.pack("<II", 0, len(out) // 8) + bytes(out)
