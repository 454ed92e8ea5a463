"""Cap'n Proto wire format: stream framing and pointer surgery.

Pure functions over bytes; no I/O, no pycapnp.  The RPC core uses pycapnp to
encode and decode message *headers* (Call, Return, capTable ...), but payload
*content* is never copied or re-encoded: it is spliced into the next message
with far pointers.  That keeps content byte-for-byte untouched (the reference
monitor never interprets a payload it only forwards) and it is the only way to
move content that contains capability pointers, which pycapnp refuses to copy
without an RPC cap table.

Pointer encoding (little-endian 64-bit words), from the Cap'n Proto spec:
  kind = w & 3:  0 struct, 1 list, 2 far, 3 other (capability)
  struct/list: bits 2..31 signed word offset from the end of the pointer
  struct: bits 32..47 data words, 48..63 pointer count
  far: bit 2 double-far flag, bits 3..31 landing-pad offset, 32..63 segment id
  capability: bits 2..31 zero, 32..63 index into the cap table

Every read is bounds-checked; malformed input raises WireError.
"""
from __future__ import annotations

import struct

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

STRUCT, LIST, FAR, OTHER = 0, 1, 2, 3

#: Defaults for messages from engines and external peers.
MAX_SEGMENTS = 512
MAX_MESSAGE_WORDS = 8 * 1024 * 1024 // 8  # 8 MiB
MAX_PATH_DEPTH = 64


class WireError(ValueError):
    """Bytes that are not a well-formed Cap'n Proto message (or exceed a limit)."""


# ---------------------------------------------------------------- framing


class Framer:
    """Incremental stream framing: bytes in, whole messages (segment lists) out."""

    def __init__(self, max_segments: int = MAX_SEGMENTS, max_words: int = MAX_MESSAGE_WORDS):
        self._buf = bytearray()
        self.max_segments = max_segments
        self.max_words = max_words

    def feed(self, data: bytes) -> list[list[memoryview]]:
        self._buf += data
        out = []
        while True:
            msg = self._take_one()
            if msg is None:
                return out
            out.append(msg)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered."""
        return len(self._buf)

    def _take_one(self):
        buf = self._buf
        if len(buf) < 4:
            return None
        nseg = _U32.unpack_from(buf, 0)[0] + 1
        if nseg > self.max_segments:
            raise WireError(f"message has {nseg} segments (limit {self.max_segments})")
        table = 4 + 4 * nseg
        table += table % 8
        if len(buf) < table:
            return None
        sizes = struct.unpack_from(f"<{nseg}I", buf, 4)
        total = sum(sizes)
        if total > self.max_words:
            raise WireError(
                f"message of {total * 8} bytes exceeds the limit of {self.max_words * 8} bytes")
        end = table + 8 * total
        if len(buf) < end:
            return None
        whole = bytes(buf[table:end])
        del buf[:end]
        view = memoryview(whole)
        segs, pos = [], 0
        for n in sizes:
            segs.append(view[pos:pos + 8 * n])
            pos += 8 * n
        return segs


def frame(segments) -> bytes:
    """Serialize a segment list with the standard stream segment table."""
    n = len(segments)
    head = struct.pack(f"<{n + 1}I", n - 1, *(len(s) // 8 for s in segments))
    if len(head) % 8:
        head += b"\0\0\0\0"
    return b"".join((head, *segments))


def unframe(data: bytes, max_segments: int = MAX_SEGMENTS,
            max_words: int = MAX_MESSAGE_WORDS) -> list[memoryview]:
    """Parse exactly one framed message; trailing or missing bytes are an error.
    The segments are views of `data` (no copy)."""
    if len(data) < 8:
        raise WireError("expected exactly one complete Cap'n Proto message")
    nseg = _U32.unpack_from(data, 0)[0] + 1
    if nseg > max_segments:
        raise WireError(f"message has {nseg} segments (limit {max_segments})")
    table = 4 + 4 * nseg
    table += table % 8
    if len(data) < table:
        raise WireError("expected exactly one complete Cap'n Proto message")
    sizes = struct.unpack_from(f"<{nseg}I", data, 4)
    total = sum(sizes)
    if total > max_words:
        raise WireError(f"message of {total * 8} bytes exceeds the limit of {max_words * 8} bytes")
    if len(data) != table + 8 * total:
        raise WireError("expected exactly one complete Cap'n Proto message")
    view, segs, pos = memoryview(data), [], table
    for n in sizes:
        segs.append(view[pos:pos + 8 * n])
        pos += 8 * n
    return segs


# ---------------------------------------------------------------- pointers

Loc = tuple  # (segment index, word index): where a pointer lives


def _word(segs, s: int, p: int) -> int:
    if not 0 <= s < len(segs):
        raise WireError(f"segment {s} out of range")
    seg = segs[s]
    if not 0 <= p or 8 * p + 8 > len(seg):
        raise WireError(f"word {p} out of range in segment {s}")
    return _U64.unpack_from(seg, 8 * p)[0]


def _signed30(w: int) -> int:
    off = (w >> 2) & 0x3FFFFFFF
    return off - (1 << 30) if off & (1 << 29) else off


def _seg_words(segs, s):
    return len(segs[s]) // 8


def resolve(segs, loc: Loc):
    """Follow the pointer at `loc`, through far pointers.

    Returns (kind, segment, start_word, word) where `word` is the pointer (or
    landing-pad tag) describing the object and start_word its first word; or
    None for a null pointer.  Capabilities return (OTHER, s, p, word).
    """
    s, p = loc
    if not 0 <= s < len(segs):
        raise WireError(f"segment {s} out of range")
    seg = segs[s]
    if p < 0 or 8 * p + 8 > len(seg):
        raise WireError(f"word {p} out of range in segment {s}")
    w = _U64.unpack_from(seg, 8 * p)[0]
    if w == 0:
        return None
    kind = w & 3
    if kind <= LIST:                 # a near pointer: the common case, inline
        off = (w >> 2) & 0x3FFFFFFF
        start = p + 1 + (off - (1 << 30) if off & (1 << 29) else off)
        if kind == STRUCT:
            size = ((w >> 32) & 0xFFFF) + (w >> 48)
        else:
            esz, count = (w >> 32) & 7, w >> 35
            size = count if esz == 7 else (count * _ELEM_BITS[esz] + 63) // 64
        if start < 0 or 8 * (start + size) > len(seg):
            raise WireError("pointer points outside its segment")
        return (kind, s, start, w)
    if kind == FAR:
        double = (w >> 2) & 1
        pad = (w >> 3) & 0x1FFFFFFF
        ts = w >> 32
        if not double:
            tag = _word(segs, ts, pad)
            if tag & 3 == FAR:
                raise WireError("far pointer lands on another far pointer")
            if tag & 3 == OTHER:
                return (OTHER, ts, pad, tag)
            start = pad + 1 + _signed30(tag)
            return _checked(segs, tag & 3, ts, start, tag)
        far2 = _word(segs, ts, pad)
        tag = _word(segs, ts, pad + 1)
        if far2 & 7 != FAR:  # must be a single far pointer
            raise WireError("double-far landing pad is malformed")
        if _signed30(tag) != 0 or tag & 3 not in (STRUCT, LIST):
            raise WireError("double-far tag is malformed")
        return _checked(segs, tag & 3, far2 >> 32, (far2 >> 3) & 0x1FFFFFFF, tag)
    return (OTHER, s, p, w)


_ELEM_BITS = (0, 1, 8, 16, 32, 64, 64, None)


def _checked(segs, kind, s, start, w):
    if not 0 <= s < len(segs):
        raise WireError(f"segment {s} out of range")
    if kind == STRUCT:
        size = ((w >> 32) & 0xFFFF) + (w >> 48)
    else:
        esz, count = (w >> 32) & 7, w >> 35
        size = count if esz == 7 else (count * _ELEM_BITS[esz] + 63) // 64
    if start < 0 or start + size > _seg_words(segs, s):
        raise WireError("pointer points outside its segment")
    return (kind, s, start, w)


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
    kind, s, start, w = r
    if kind != LIST or (w >> 32) & 7 != 7:
        raise WireError("expected a list of structs")
    tag = _word(segs, s, start)
    if tag & 3 != STRUCT:
        raise WireError("struct list tag is malformed")
    count = _signed30(tag)
    data, ptrs = (tag >> 32) & 0xFFFF, tag >> 48
    if count < 0 or count * (data + ptrs) > (w >> 35):
        raise WireError("struct list is larger than its allocation")
    return [(s, start + 1 + i * (data + ptrs), data, ptrs) for i in range(count)]


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


# ---------------------------------------------------------------- canonical copy

MAX_NESTING = 64


def canonical(segs, loc: Loc | None, max_words: int = MAX_MESSAGE_WORDS) -> bytes:
    """Copy the object at `loc` into a new single-segment message (framed bytes).

    Objects are laid out in pre-order right after their pointers, so a guest
    finds the root struct at a fixed place (word 1) and never meets a far
    pointer.  Capability pointers are copied as they are (their index still
    refers to the payload's cap list).  The copy is bounded: at most
    `max_words` words are read (every list element counts at least one word,
    so lists of empty structs cannot amplify) and nesting is at most 64.
    """
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

    def copy(src: Loc, dst: int, depth: int):
        r = resolve(segs, src)
        if r is None:
            return
        if depth > MAX_NESTING:
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
            out[8 * at:8 * (at + data)] = seg[8 * start:8 * (start + data)]
            set_word(out, dst, STRUCT | ((at - dst - 1) & 0x3FFFFFFF) << 2 | (w & ~0xFFFFFFFF))
            for i in range(ptrs):
                copy((s, start + data + i), at + data + i, depth + 1)
            return
        esz, count = (w >> 32) & 7, w >> 35
        if esz == 7:
            tag = _word(segs, s, start)
            n = _signed30(tag)
            data, ptrs = (tag >> 32) & 0xFFFF, tag >> 48
            if tag & 3 != STRUCT or n < 0 or n * (data + ptrs) > count:
                raise WireError("struct list tag is malformed")
            charge(n + n * (data + ptrs))
            at = alloc(1 + n * (data + ptrs))
            set_word(out, at, tag)
            for i in range(n):
                e_src = start + 1 + i * (data + ptrs)
                e_dst = at + 1 + i * (data + ptrs)
                out[8 * e_dst:8 * (e_dst + data)] = seg[8 * e_src:8 * (e_src + data)]
                for j in range(ptrs):
                    copy((s, e_src + data + j), e_dst + data + j, depth + 1)
            words = n * (data + ptrs)
        elif esz == 6:
            charge(count)
            at = alloc(count)
            for i in range(count):
                copy((s, start + i), at + i, depth + 1)
            words = count
        else:
            words = (count * _ELEM_BITS[esz] + 63) // 64
            charge(max(words, count // 64))
            at = alloc(words)
            out[8 * at:8 * (at + words)] = seg[8 * start:8 * (start + words)]
        set_word(out, dst, LIST | ((at - dst - 1) & 0x3FFFFFFF) << 2 | (w & ~0xFFFFFFFF))

    if loc is not None:
        copy(loc, 0, 0)
    return struct.pack("<II", 0, len(out) // 8) + bytes(out)
