"""WebAssembly binaries, read and rewritten for memory protection (compartments/protect.py).

Owns: reading what protection needs from a module's bytes (its memory, its
data segments, the `.rodata` name wasm-ld writes in the name section, the
`wsuper.protect` custom section `wsuper build` writes), writing that custom
section, and inserting a check before every bulk-memory instruction
(`memory.fill`, `memory.copy`, `memory.init`) on memory 0.

Must not: import wasmtime, the engine or the supervisor.  Pure: bytes in,
facts or bytes out.

Why the checks: wasmtime runs bulk-memory instructions in native code of its
own (a "libcall"), not in the guest's compiled code.  Its signal handler only
turns faults of compiled code into traps, so a `memory.fill` into a page
protected with mprotect kills the engine with SIGSEGV.  Each such instruction
gets a call in front of it to a function added to the module: it returns its
three operands unchanged, unless the range would touch a protected page; then
it makes the one faulting access of its own (a 1-byte load or store at the
first protected address of the range), which wasmtime turns into an ordinary
trap naming that address, and never reaches the instruction.  Every other
access (loads, stores, SIMD, atomics) faults in compiled code and traps as it
is.  The protected extents are constants in the functions, so a module is
rewritten for one set of regions (the zygote compiles it once per set); the
module's own code cannot call them (see `add_bulk_checks`).  The checks only
turn a crash into a trap: the pages stay protected by the MMU either way.

Every input is hostile: a module's bytes are walked with bounds checks, and
anything unexpected is `BinaryError` (malformed) or `Unsupported` (valid, but
not something this module handles).  `add_bulk_checks` must only be given a
module wasmtime has validated; the custom sections wasmtime does not check
are read so that a malformed one is reported, never trusted.
"""
from __future__ import annotations

import array
import re

import attrs

MAGIC = b"\0asm\x01\0\0\0"
CUSTOM_SECTION = "wsuper.protect"       # what `wsuper build` declares (see `declaration`)
CUSTOM_VERSION = 1
#: The functions a rewritten module gets are named from this (in its name section).
CHECK_FUNCTION = "wsuper.protect.check"
WASM_PAGE = 65536
MAX_SEGMENTS = 100_000          # wasmtime's own limit on data segments
#: Linear memories a compartment's module may have (the engine's store allows no more:
#: wasmtime applies limits.memory to each memory, so more would multiply it)
MAX_MEMORIES = 1

# section ids, and the order the binary format requires for the non-custom ones
_CUSTOM, _TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _GLOBAL, _EXPORT, _START, _ELEMENT, \
    _CODE, _DATA, _DATACOUNT, _TAG = range(14)
_ORDER = {s: i for i, s in enumerate((_TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _TAG, _GLOBAL,
                                      _EXPORT, _START, _ELEMENT, _DATACOUNT, _CODE, _DATA))}


class BinaryError(ValueError):
    """The bytes are not a well-formed module (or a custom section is malformed)."""


class Unsupported(ValueError):
    """A valid module that this module does not handle; str() says what."""


# ---------------------------------------------------------------- reading


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def done(self) -> bool:
        return self.pos >= self.end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise BinaryError("unexpected end")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
            if shift >= bits + 7:
                raise BinaryError("integer too long")
        if result >> bits:
            raise BinaryError("integer too large")
        return result

    def sleb(self, bits: int = 32) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
            if shift >= bits + 7:
                raise BinaryError("integer too long")
        if b & 0x40:
            result -= 1 << shift
        if not -(1 << (bits - 1)) <= result < 1 << (bits - 1):
            raise BinaryError("integer too large")
        return result

    def skip_leb(self):
        for _ in range(10):
            if not self.byte() & 0x80:
                return
        raise BinaryError("integer too long")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise BinaryError("unexpected end")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int):
        if n < 0 or self.pos + n > self.end:
            raise BinaryError("unexpected end")
        self.pos += n

    def name(self) -> bytes:
        return self.take(self.uleb())

    def count(self, least_bytes: int = 1) -> int:
        """A vector's length, refused if the bytes left cannot hold that many."""
        n = self.uleb()
        if n * least_bytes > self.end - self.pos:
            raise BinaryError(f"vector of {n} entries in {self.end - self.pos} bytes")
        return n


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@attrs.frozen
class Section:
    id: int
    start: int          # first byte of the payload
    end: int            # one past its last byte
    header: int         # first byte of the section (its id)
    name: str | None = None     # custom sections: the name (None if not UTF-8)


def sections(data: bytes) -> list[Section]:
    if not data.startswith(MAGIC):
        raise BinaryError("not a WebAssembly binary module (version 1)")
    out = []
    r = _Reader(data, len(MAGIC))
    while not r.done():
        header = r.pos
        sid = r.byte()
        size = r.uleb()
        start = r.pos
        if start + size > len(data):
            raise BinaryError(f"section {sid} runs past the end of the module")
        name = None
        if sid == _CUSTOM:
            try:
                name = _Reader(data, start, start + size).name().decode("utf-8")
            except (BinaryError, UnicodeDecodeError):
                name = None
        out.append(Section(sid, start, start + size, header, name))
        r.pos = start + size
    return out


def _limits(r: _Reader) -> tuple[int, int, int | None]:
    """(flags, min, max or None) of a table or memory type."""
    flags = r.byte()
    if flags & ~0x0F:
        raise Unsupported(f"limits flags {flags:#x}")
    bits = 64 if flags & 4 else 32
    low = r.uleb(bits)
    high = r.uleb(bits) if flags & 1 else None
    if flags & 8:
        r.uleb()                # custom page size (log2)
    return flags, low, high


def _valtype(r: _Reader):
    b = r.byte()
    if b in (0x63, 0x64):       # (ref null? heaptype)
        r.sleb(33)


@attrs.frozen
class Facts:
    """What protection needs to know of a module, read without running it."""
    memory_problem: str | None = None    # why memory 0 cannot be protected (None: it can)
    min_pages: int = 0                   # memory 0's initial size in 64 KiB pages
    #: (start, end, name) of each active data segment of memory 0 with a constant offset
    segments: tuple = ()
    unknown_segments: int = 0            # active segments whose offset is computed
    rodata: tuple | None = None          # (start, end) of the segment named .rodata
    declared: tuple | None = None        # (no_access_end, read_only_start, read_only_end)
    declared_problem: str | None = None  # why the wsuper.protect section was not read
    bulk: bool = False                   # it may use bulk memory (add_bulk_checks will say)


def _read_globals(r: _Reader, globals_: list):
    """A global section: the value of each i32 or i64 global known before
    instantiation, as (bits, value) (None: not known, or another type), is
    appended to `globals_`.  A constant expression may only read immutable
    globals."""
    for _ in range(r.count(3)):
        bits = {_I32: 32, _I64: 64}.get(r.data[r.pos]) if r.pos < r.end else None
        _valtype(r)
        mutable = r.byte()
        value = _const(r, globals_, bits or 32)
        globals_.append((bits, value) if bits and value is not None and not mutable
                        else None)


def _active_data(r: _Reader, globals_: list, wide=()):
    """A data section's active segments: (index, memory, offset or None if
    computed, size).  `wide`: the indices of the 64-bit memories (memory64), whose
    offsets are i64 expressions."""
    for i in range(r.count()):
        flags = r.uleb()
        if flags == 1:                  # passive
            r.skip(r.uleb())
            continue
        if flags not in (0, 2):
            raise BinaryError(f"data segment flags {flags}")
        mem = r.uleb() if flags == 2 else 0
        offset = _const(r, globals_, 64 if mem in wide else 32)
        size = r.uleb()
        r.skip(size)
        yield i, mem, offset, size


def facts(data: bytes) -> Facts:
    """What `data` (a module binary) says about its memory and data.
    Raises BinaryError if the sections cannot be walked at all."""
    secs = sections(data)
    memory_imported = False
    memories = []
    exported_memory = None
    segments, unknown = [], 0
    data_names: dict[int, bytes] = {}
    declared = declared_problem = None
    declarations = 0            # wsuper.protect sections seen
    seg_index = {}
    bulk = False
    globals_: list = []         # the value of each i32 global known before instantiation
    for s in secs:
        r = _Reader(data, s.start, s.end)
        if s.id == _IMPORT:
            for kind, limits in _imports(r):
                if kind == 0x02:
                    memory_imported = True
                    memories.append(limits)
                elif kind == 0x03:
                    globals_.append(None)       # its value comes from outside
        elif s.id == _GLOBAL:
            _read_globals(r, globals_)
        elif s.id == _MEMORY:
            for _ in range(r.count()):
                memories.append(_limits(r))
        elif s.id == _EXPORT:
            for _ in range(r.count(3)):
                name = r.name()
                kind = r.byte()
                index = r.uleb()
                if kind == 0x02 and name == b"memory":
                    exported_memory = index
        elif s.id == _DATA:
            for i, mem, offset, size in _active_data(r, globals_):
                if mem != 0:
                    continue
                if offset is None:
                    unknown += 1
                else:
                    seg_index[i] = len(segments)
                    segments.append([offset, offset + size, ""])
        elif s.id == _CODE:
            bulk = _BULK_BYTES.search(data, s.start, s.end) is not None
        elif s.id == _CUSTOM and s.name == "name":
            try:
                data_names = _data_names(data, s)
            except BinaryError:
                data_names = {}         # a broken name section names nothing
        elif s.id == _CUSTOM and s.name == CUSTOM_SECTION:
            declarations += 1
            if declarations > 1:
                # the last one was taken, silently: a module with two that say different
                # things was protected as the second says, while a reader of the first
                # (wasm-objdump lists both) saw another layout; a malformed first and a
                # good second was protected, a good first and a malformed second was
                # "the module declares no layout" (an outside review, r266)
                declared = None
                declared_problem = f"it has {declarations} {CUSTOM_SECTION} sections (a " \
                                   f"module declares its layout once)"
                continue
            try:
                declared = declaration(data[s.start:s.end])
            except BinaryError as e:
                declared = None
                declared_problem = f"its {CUSTOM_SECTION} section is malformed: {e}"
    rodata = None
    for i, name in data_names.items():
        j = seg_index.get(i)
        if j is not None:
            segments[j][2] = _printable(name)
            if name == b".rodata":
                rodata = (segments[j][0], segments[j][1])
    problem = None
    if not memories:
        problem = "it has no memory"
    elif exported_memory != 0:
        problem = "its memory 0 is not exported as 'memory'"
    elif memory_imported:
        problem = "its memory is imported"
    else:
        flags = memories[0][0]
        if flags & 2:
            problem = "its memory is shared"
        elif flags & 4:
            problem = "its memory is 64-bit (memory64)"
        elif flags & 8:
            problem = "its memory has a custom page size"
    return Facts(problem, memories[0][1] if memories and not memories[0][0] & 4 else 0,
                 tuple(tuple(s) for s in segments), unknown, rodata, declared,
                 declared_problem, bulk)


def instantiation_problem(data: bytes) -> str | None:
    """Why wasmtime, configured as the engines are, would compile this module but
    refuse to instantiate it, for what can be seen in its bytes (None: nothing
    seen): a shared memory (shared memories are off), more than MAX_MEMORIES
    memories (the engine's store limit), or an active data (element) segment at a
    constant address past the initial size of its memory (table).  Raises
    BinaryError or Unsupported as `facts`."""
    memories: list = []
    tables: list = []
    globals_: list = []
    for s in sections(data):
        r = _Reader(data, s.start, s.end)
        if s.id == _IMPORT:
            for kind, limits in _imports(r):
                if kind == 0x02:
                    memories.append(limits)
                elif kind == 0x01:
                    tables.append(limits)
                elif kind == 0x03:
                    globals_.append(None)
        elif s.id == _TABLE:
            tables.extend(_table_limits(r) for _ in range(r.count(2)))
        elif s.id == _ELEMENT:
            for i in range(r.count()):
                flags = r.uleb()
                if flags > 7:
                    raise BinaryError(f"element segment flags {flags}")
                table = r.uleb() if flags in (2, 6) else 0
                wide = table < len(tables) and tables[table][0] & 4     # table64
                offset = _const(r, globals_, 64 if wide else 32) if not flags & 1 else None
                if flags & 3 in (1, 2, 3):
                    if flags & 4:
                        _valtype(r)             # the reference type of its expressions
                    else:
                        r.byte()                # elemkind (0: funcref)
                count = r.count()
                for _ in range(count):
                    if flags & 4:
                        _skip_expr(r)
                    else:
                        r.uleb()
                if offset is None or table >= len(tables):
                    continue            # passive, declared or computed: not read
                if offset + count > tables[table][1]:
                    return (f"its element segment {i} at [{offset}, {offset + count}) lies "
                            f"past the end of table {table} ({tables[table][1]} elements "
                            f"when it starts)")
        elif s.id == _MEMORY:
            for _ in range(r.count()):
                memories.append(_limits(r))
        elif s.id == _GLOBAL:
            _read_globals(r, globals_)
        elif s.id == _DATA:
            wide = {k for k, (flags, _low, _high) in enumerate(memories) if flags & 4}
            for i, mem, offset, size in _active_data(r, globals_, wide):
                if offset is None or mem >= len(memories) or memories[mem][0] & 8:
                    continue            # custom pages: not read here
                end = memories[mem][1] * WASM_PAGE
                if offset + size > end:
                    return (f"its data segment {i} at [{offset:#x}, {offset + size:#x}) lies "
                            f"past the end of memory {mem} ({end} bytes when it starts)")
    for i, (flags, _low, _high) in enumerate(memories):
        if flags & 2:
            return f"its memory {i} is shared (wsuper's engines run without shared memory)"
    if len(memories) > MAX_MEMORIES:
        return (f"it has {len(memories)} memories: a compartment's limits.memory bounds each "
                f"linear memory, so its module may have at most {MAX_MEMORIES}")
    return None


def exported_functions(data: bytes) -> list[str]:
    """The names of the functions `data` (a module binary) exports."""
    names = []
    for s in sections(data):
        if s.id == _EXPORT:
            r = _Reader(data, s.start, s.end)
            for _ in range(r.count(3)):
                name = r.name()
                kind = r.byte()
                r.uleb()
                if kind == 0x00:
                    names.append(name.decode("utf-8", "replace"))
    return names


#: The value types whose names the host can be given (wasmtime's own words)
_NUMBERS = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x70: "funcref",
            0x6F: "externref"}  # (which wasmtime's Python API shows as "anyref")


def _valtype_name(r: _Reader) -> str:
    """One value type, named: a number (or funcref, externref) as wasmtime says it,
    anything else (v128, exnref, a GC reference) as what it is."""
    b = r.data[r.pos] if r.pos < r.end else -1
    _valtype(r)
    if b in _NUMBERS:
        return _NUMBERS[b]
    return "v128" if b == 0x7B else "a reference type"


def function_types(data: bytes) -> tuple[dict, dict]:
    """({(module, name): (params, results)} of each function imported, {name:
    (params, results)} of each function exported), read from the binary alone, the
    types named as wasmtime names them (`_valtype_name`), None for one that is no
    function type.  Asking wasmtime instead for a function type holding a v128,
    exnref or GC reference aborts the process that asks (its C API: `support for
    v128 is not implemented`): an entry point, or an ABI import, of such a type
    had the module refused with its compiler killed by SIGABRT, naming neither.
    A (module, name) imported more than once (the binary format allows it) has
    the type of one of them that wasmtime cannot show, if any: the caller asks
    wasmtime for each import's type only when its name's is shown.

    Time and memory stay a small multiple of the module's size: each type is
    only walked (a vector of plain value types skipped at once), and named only
    if a function imported or exported has it, once however many do (naming
    every type made a module of 28 MB of types of 1,000 parameters, which
    wasmtime compiles in 0.2 s and 40 MB, take 7 s and 230 MB here)."""
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)                  # a memoryview: _skip_valtypes finds in it
    starts, ends = array.array("q"), array.array("q")   # where each type is
    funcs = array.array("q")                # the type index of each function
    named: dict = {}                        # type index -> (params, results) or None
    imports: dict = {}
    exports: dict = {}

    def sig(index: int):
        if index not in named:
            named[index] = _named_subtype(_Reader(data, starts[index], ends[index])) \
                if 0 <= index < len(starts) else None
        return named[index]

    for s in sections(data):
        r = _Reader(data, s.start, s.end)
        if s.id == _TYPE:
            for _ in range(r.count()):
                group = 1
                if r.pos < r.end and r.data[r.pos] == 0x4E:      # rec
                    r.pos += 1
                    group = r.count()
                for _ in range(group):
                    starts.append(r.pos)
                    _skip_subtype(r)
                    ends.append(r.pos)
        elif s.id == _IMPORT:
            for _ in range(r.count(4)):
                module, name = r.name(), r.name()
                kind = r.byte()
                if kind == 0x00:
                    index = r.uleb()
                    funcs.append(index)
                    key = (module.decode("utf-8", "replace"), name.decode("utf-8", "replace"))
                    # a name may be imported more than once (each of its own type):
                    # it is given one wasmtime cannot show if any of them is of one,
                    # as describe_imports asks wasmtime of each only by its name
                    if not unshown(imports.get(key)):
                        imports[key] = sig(index)
                elif kind == 0x01:
                    _valtype(r)
                    _limits(r)
                elif kind == 0x02:
                    _limits(r)
                elif kind == 0x03:
                    _valtype(r)
                    r.byte()
                elif kind == 0x04:
                    r.byte()
                    r.uleb()
                else:
                    raise Unsupported(f"import kind {kind:#x}")
        elif s.id == _FUNCTION:
            for _ in range(r.count()):
                funcs.append(r.uleb())
        elif s.id == _EXPORT:
            for _ in range(r.count(3)):
                name = r.name()
                kind = r.byte()
                index = r.uleb()
                if kind == 0x00:
                    exports[name.decode("utf-8", "replace")] = \
                        sig(funcs[index]) if index < len(funcs) else None
    return imports, exports


def _skip_valtypes(r: _Reader, n: int):
    """Past `n` value types: at once if none is a (ref null? heaptype), whose heap
    type follows it (one byte each, then)."""
    end = r.pos + n
    if end <= r.end and r.data.find(b"\x63", r.pos, end) < 0 \
            and r.data.find(b"\x64", r.pos, end) < 0:
        r.pos = end
        return
    for _ in range(n):
        _valtype(r)


def _at_function_type(r: _Reader) -> bool:
    """Past one type's `sub` prefix (its supertypes), if any: True at a function
    type's value types; else the whole type, which is not a function's, is read
    (as _subtype) and False."""
    start = r.pos
    b = r.byte()
    if b in (0x50, 0x4F):          # sub, sub final: supertypes, then the type
        for _ in range(r.count()):
            r.uleb()
        b = r.byte()
    if b != 0x60:
        r.pos = start
        _subtype(r)
        return False
    return True


def _skip_subtype(r: _Reader):
    """Past one type of the type section (as _subtype, a function type's value
    types skipped at once where they can be)."""
    if _at_function_type(r):
        for _ in range(2):
            _skip_valtypes(r, r.count())


def _named_subtype(r: _Reader):
    """One type of the type section: (params, results) named, if a function type
    (`sub` or not), else None."""
    if not _at_function_type(r):
        return None
    params = tuple(_valtype_name(r) for _ in range(r.count()))
    results = tuple(_valtype_name(r) for _ in range(r.count()))
    return params, results


def unshown(sig) -> bool:
    """Whether the (params, results) `sig` (function_types') holds a type wasmtime
    aborts the process to show (anything but numbers, funcref and externref)."""
    return sig is not None and any(t not in _NUMBERS.values() for t in (*sig[0], *sig[1]))


def _imports(r: _Reader):
    """The import section's entries: (kind, the limits of a table or memory, else
    None)."""
    for _ in range(r.count(4)):
        r.name()
        r.name()
        kind = r.byte()
        limits = None
        if kind == 0x00:
            r.uleb()
        elif kind == 0x01:
            _valtype(r)
            limits = _limits(r)
        elif kind == 0x02:
            limits = _limits(r)
        elif kind == 0x03:
            _valtype(r)
            r.byte()
        elif kind == 0x04:
            r.byte()
            r.uleb()
        else:
            raise Unsupported(f"import kind {kind:#x}")
        yield kind, limits


def _table_limits(r: _Reader) -> tuple:
    """One entry of a table section: its limits (an initializer, if any, skipped)."""
    init = r.data[r.pos:r.pos + 2] == b"\x40\x00"   # with an initializer
    if init:
        r.skip(2)
    _valtype(r)
    limits = _limits(r)
    if init:
        _skip_expr(r)
    return limits


def _minimums(data: bytes, kind: int) -> tuple[int, ...]:
    """The initial size of each memory (`kind` 0x02) or table (0x01) of the module:
    imported ones first, then its own, in index order."""
    mins = []
    for s in sections(data):
        r = _Reader(data, s.start, s.end)
        if s.id == _IMPORT:
            mins.extend(limits[1] for k, limits in _imports(r) if k == kind)
        elif s.id == _MEMORY and kind == 0x02:
            mins.extend(_limits(r)[1] for _ in range(r.count()))
        elif s.id == _TABLE and kind == 0x01:
            mins.extend(_table_limits(r)[1] for _ in range(r.count(2)))
    return tuple(mins)


def memory_minimums(data: bytes) -> tuple[int, ...]:
    """The initial size (64 KiB pages) of each memory of the module, exported or not:
    imported ones first, then its own.  Raises BinaryError or Unsupported as `facts`."""
    return _minimums(data, 0x02)


def table_minimums(data: bytes) -> tuple[int, ...]:
    """The initial size (elements) of each table of the module: imported ones first,
    then its own, in index order.  Raises BinaryError or Unsupported as `facts`."""
    return _minimums(data, 0x01)


def _const_i32(r: _Reader, globals_: list = ()) -> int | None:
    """A constant expression of type i32: see `_const`."""
    return _const(r, globals_, 32)


#: (const, add, sub, mul) opcodes of i32 and of i64
_CONST_OPS = {32: (0x41, 0x6A, 0x6B, 0x6C), 64: (0x42, 0x7C, 0x7D, 0x7E)}


def _const(r: _Reader, globals_: list = (), bits: int = 32) -> int | None:
    """A constant expression of type i32 or i64 (`bits`: an offset, a global's
    value): its value, unsigned, or None if it cannot be known before
    instantiation (it reads an imported global) or is not of that form; the
    expression is read to its `end` either way.  Evaluated as wasmtime does:
    `iNN.const`, `global.get` of an immutable global of that type whose value is
    known (`globals_`, index -> (bits, value) or None), and extended-const's
    `add`, `sub` and `mul`, wrapping at 2^bits.  (A 64-bit memory's or table's
    offsets are i64: read as i32, they were unknown, and a data segment past
    the end of a memory64 passed every check and failed every start.)"""
    const, *arith = _CONST_OPS[bits]
    mask = (1 << bits) - 1
    start = r.pos
    stack: list = []
    try:
        while True:
            op = r.byte()
            if op == 0x0B:
                if len(stack) == 1 and stack[0] is not None:
                    return stack[0] & ((1 << bits) - 1)
                return None
            if op == const:
                stack.append(r.sleb(bits))
            elif op == 0x23:
                index = r.uleb()
                known = globals_[index] if index < len(globals_) else None
                stack.append(known[1] if known is not None and known[0] == bits else None)
            elif op in arith and len(stack) >= 2:
                # wrapped at each step, as wasmtime does: unwrapped, a chain of
                # multiplications grew a number of millions of bits, each step
                # slower than the last (a module of a few MB took hours to read)
                b, a = stack.pop(), stack.pop()
                stack.append(None if a is None or b is None else
                             (a + b if op == arith[0] else a - b if op == arith[1] else a * b)
                             & mask)
            else:
                break
    except BinaryError:
        pass
    r.pos = start                       # another form: skipped, its value unknown
    _skip_expr(r)
    return None


def _data_names(data: bytes, s: Section) -> dict[int, bytes]:
    """Data segment index -> name, from the name section's subsection 9."""
    r = _Reader(data, s.start, s.end)
    r.name()
    out = {}
    while not r.done():
        sub = r.byte()
        size = r.uleb()
        end = r.pos + size
        if end > s.end:
            raise BinaryError("name subsection runs past its section")
        if sub == 9:
            sr = _Reader(data, r.pos, end)
            for _ in range(sr.count(2)):
                index = sr.uleb()
                out[index] = sr.name()
        r.pos = end
    return out


def _printable(name: bytes) -> str:
    """A name from the module, safe to show: printable ASCII, at most 64 characters."""
    text = name.decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in text[:64])


def declaration(payload: bytes) -> tuple[int, int, int]:
    """(no_access_end, read_only_start, read_only_end) from a wsuper.protect section's
    payload (its name included).  Raises BinaryError unless it is exactly that."""
    r = _Reader(payload)
    if r.name() != CUSTOM_SECTION.encode():
        raise BinaryError("not a wsuper.protect section")
    version = r.byte()
    if version != CUSTOM_VERSION:
        raise BinaryError(f"version {version} (this wsuper reads version {CUSTOM_VERSION})")
    no_access, ro_start, ro_end = r.uleb(), r.uleb(), r.uleb()
    if not r.done():
        raise BinaryError("bytes after its three numbers")
    if not no_access <= ro_start <= ro_end:
        raise BinaryError(f"extents out of order ({no_access}, {ro_start}, {ro_end})")
    return no_access, ro_start, ro_end


def custom_section(no_access: int, ro_start: int, ro_end: int) -> bytes:
    """A whole wsuper.protect custom section, to append to a module."""
    name = CUSTOM_SECTION.encode()
    payload = _uleb(len(name)) + name + bytes([CUSTOM_VERSION]) + _uleb(no_access) + \
        _uleb(ro_start) + _uleb(ro_end)
    return bytes([_CUSTOM]) + _uleb(len(payload)) + payload


def with_declaration(data: bytes, no_access: int, ro_start: int, ro_end: int) -> bytes:
    """`data` with its wsuper.protect section (any old one dropped) at the end."""
    out = bytearray(data[:len(MAGIC)])
    for s in sections(data):
        if not (s.id == _CUSTOM and s.name == CUSTOM_SECTION):
            out += data[s.header:s.end]
    return bytes(out) + custom_section(no_access, ro_start, ro_end)


# ---------------------------------------------------------------- instructions

# Immediate kinds of one-byte opcodes.
(_NONE, _IDX, _IDX2, _BLOCK, _MEMARG, _BRTABLE, _SELECT_T, _F32, _F64, _TRY_TABLE,
 _PREFIX) = range(11)
_KIND = [None] * 256
for _op in (0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4,
            *range(0x45, 0xC5)):
    _KIND[_op] = _NONE
for _op in (0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x20, 0x21, 0x22,
            0x23, 0x24, 0x25, 0x26, 0x3F, 0x40, 0x41, 0x42, 0xD0, 0xD2, 0xD5, 0xD6):
    _KIND[_op] = _IDX           # one LEB (an index, a constant, a heap type)
for _op in (0x11, 0x13):
    _KIND[_op] = _IDX2
for _op in (0x02, 0x03, 0x04, 0x06):
    _KIND[_op] = _BLOCK
for _op in range(0x28, 0x3F):
    _KIND[_op] = _MEMARG
_KIND[0x0E] = _BRTABLE
_KIND[0x1C] = _SELECT_T
_KIND[0x43] = _F32
_KIND[0x44] = _F64
_KIND[0x1F] = _TRY_TABLE
_DELEGATE = 11
_KIND[0x18] = _DELEGATE         # legacy exceptions: closes a `try` as `end` would
for _op in (0xFB, 0xFC, 0xFD, 0xFE):
    _KIND[_op] = _PREFIX

_OPENS = frozenset((0x02, 0x03, 0x04, 0x06, 0x1F))   # block, loop, if, try, try_table
# 0xFC sub-opcodes: number of LEB immediates
_FC = {**{i: 0 for i in range(8)}, 8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1,
       16: 1, 17: 1, 19: 0, 20: 0, 21: 0, 22: 0}
# 0xFB (GC) sub-opcodes: number of LEB immediates; "cast": the br_on_cast forms
_FB = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2, 6: 1, 7: 1, 8: 2, 9: 2, 10: 2, 11: 1, 12: 1, 13: 1,
       14: 1, 15: 0, 16: 1, 17: 2, 18: 2, 19: 2, 20: 1, 21: 1, 22: 1, 23: 1, 24: "cast",
       25: "cast", 26: 0, 27: 0, 28: 0, 29: 0, 30: 0}
MEMORY_INIT, MEMORY_COPY, MEMORY_FILL = 8, 10, 11


def _memarg(r: _Reader):
    align = r.uleb()
    if align & 0x40:            # multi-memory: a memory index follows
        r.skip_leb()
    r.skip_leb()                # offset


def _blocktype(r: _Reader):
    b = r.data[r.pos] if r.pos < r.end else -1
    if b in (0x63, 0x64):
        r.pos += 1
        r.sleb(33)
    else:
        r.sleb(33)              # 0x40, a one-byte value type, or a type index


def _scan(r: _Reader, found=None):
    """Walk instructions up to and including the `end` that closes depth 0.
    `found(position, sub-opcode, memory indices)` is told of each bulk-memory
    instruction (position: its 0xFC byte)."""
    data = r.data
    depth = 0
    kind_of = _KIND
    while True:
        if r.pos >= r.end:
            raise BinaryError("instructions run past their end")
        at = r.pos
        op = data[at]
        r.pos = at + 1
        kind = kind_of[op]
        if kind == _NONE:
            if op == 0x0B:
                if depth == 0:
                    return
                depth -= 1
        elif kind == _IDX:
            r.skip_leb()
        elif kind == _MEMARG:
            _memarg(r)
        elif kind == _BLOCK:
            _blocktype(r)
            depth += 1
        elif kind == _IDX2:
            r.skip_leb()
            r.skip_leb()
        elif kind == _BRTABLE:
            for _ in range(r.count() + 1):
                r.skip_leb()
        elif kind == _SELECT_T:
            for _ in range(r.count()):
                _valtype(r)
        elif kind == _F32:
            r.skip(4)
        elif kind == _F64:
            r.skip(8)
        elif kind == _TRY_TABLE:
            _blocktype(r)
            for _ in range(r.count()):
                catch = r.byte()
                if catch in (0, 1):
                    r.skip_leb()
                elif catch not in (2, 3):
                    raise BinaryError(f"catch kind {catch}")
                r.skip_leb()
            depth += 1
        elif kind == _DELEGATE:
            r.skip_leb()
            if depth == 0:
                raise BinaryError("delegate outside a try")
            depth -= 1
        elif kind == _PREFIX:
            sub = r.uleb()
            if op == 0xFC:
                n = _FC.get(sub)
                if n is None:
                    raise Unsupported(f"instruction 0xfc {sub}")
                if sub in (MEMORY_INIT, MEMORY_COPY, MEMORY_FILL):
                    imms = [r.uleb() for _ in range(n)]
                    if found is not None:
                        found(at, sub, imms[1:] if sub == MEMORY_INIT else imms)
                else:
                    for _ in range(n):
                        r.skip_leb()
            elif op == 0xFD:
                if sub <= 11 or sub in (92, 93):
                    _memarg(r)
                elif sub in (12, 13):
                    r.skip(16)
                elif 21 <= sub <= 34:
                    r.skip(1)
                elif 84 <= sub <= 91:
                    _memarg(r)
                    r.skip(1)
                elif sub > 0x113:
                    raise Unsupported(f"instruction 0xfd {sub}")
            elif op == 0xFE:
                if sub == 3:
                    r.skip(1)           # atomic.fence
                elif sub <= 2 or 0x10 <= sub <= 0x4E:
                    _memarg(r)
                else:
                    raise Unsupported(f"instruction 0xfe {sub}")
            else:                       # 0xFB
                n = _FB.get(sub)
                if n is None:
                    raise Unsupported(f"instruction 0xfb {sub}")
                if n == "cast":
                    r.take(1)
                    r.skip_leb()
                    r.sleb(33)
                    r.sleb(33)
                else:
                    for _ in range(n):
                        r.skip_leb()
        else:
            raise Unsupported(f"instruction {op:#04x}")


def _skip_expr(r: _Reader):
    _scan(r)


# Candidates for a bulk-memory instruction: 0xFC then 8, 10 or 11 as a LEB of up to
# 5 bytes.  No match in the code section: the module has none, and needs no rewriting.
_BULK_BYTES = re.compile(rb"\xfc(?:[\x08\x0a\x0b]|[\x88\x8a\x8b]\x80{0,3}\x00)")


# ---------------------------------------------------------------- rewriting

_I32 = 0x7F
_I64 = 0x7E
_CHECK_TYPE = bytes([0x60, 3, _I32, _I32, _I32, 3, _I32, _I32, _I32])   # (i32 i32 i32) -> same


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _check_body(write: bool, read: bool, na: int, r0: int, r1: int) -> bytes:
    """A function (d, x, n) -> (d, x, n): if n != 0 and [d, d+n) would write a
    protected page (write) or [x, x+n) would read a no-access page (read), make
    the faulting 1-byte access there; else return its operands.  No-access is
    [0, na), read-only [r0, r1)."""
    def i32(v):
        return b"\x41" + _sleb(v - (1 << 32) if v >= 1 << 31 else v)
    load8, store8 = b"\x2d\x00\x00", b"\x3a\x00\x00"
    code = bytearray(b"\x02\x40" b"\x20\x02\x45\x0d\x00")        # block; n == 0: br 0
    if write and na:
        code += b"\x20\x00" + i32(na) + b"\x49\x04\x40"             # d <u na: if
        code += b"\x20\x00\x20\x00" + load8 + store8 + b"\x00\x0b"  # d[0] = d[0]; unreachable
    if write and r1 > r0:
        code += b"\x20\x00" + i32(r1) + b"\x49\x04\x40"             # d <u r1: if
        code += b"\x20\x00\xad\x20\x02\xad\x7c\x42" + _sleb(r0) + b"\x56\x04\x40"  # d+n >u r0
        code += b"\x20\x00" + i32(r0) + b"\x20\x00" + i32(r0) + b"\x4b\x1b"  # max(d, r0)
        code += b"\x22\x03\x20\x03" + load8 + store8 + b"\x00"      # a[0] = a[0]; unreachable
        code += b"\x0b\x0b"
    if read and na:
        code += b"\x20\x01" + i32(na) + b"\x49\x04\x40"             # x <u na: if
        code += b"\x20\x01" + load8 + b"\x1a\x00\x0b"               # x[0]; unreachable
    code += b"\x0b" b"\x20\x00\x20\x01\x20\x02\x0b"                  # end; d x n; end
    body = b"\x01\x01\x7f" + bytes(code)                             # one i32 local
    return _uleb(len(body)) + body


def _vector(data: bytes, s: Section | None) -> tuple[int, bytes]:
    """(count, the entries' bytes) of a vector section (0, b'' if absent)."""
    if s is None:
        return 0, b""
    r = _Reader(data, s.start, s.end)
    n = r.uleb()
    return n, data[r.pos:s.end]


def _section(sid: int, count: int, entries: bytes) -> bytes:
    payload = _uleb(count) + entries
    return bytes([sid]) + _uleb(len(payload)) + payload


def add_bulk_checks(data: bytes, no_access_end: int, read_only_start: int,
                    read_only_end: int) -> bytes | None:
    """`data` with a check before each bulk-memory instruction on memory 0 against
    these regions (no-access [0, no_access_end), read-only [read_only_start,
    read_only_end)), or None if it has none.  `data` must be a module wasmtime
    validated: the functions and the type added get the next free indices, which
    a valid module's code cannot already use.  Raises Unsupported (an
    instruction this decoder does not know) or BinaryError."""
    if not 0 <= no_access_end <= read_only_start <= read_only_end <= 1 << 32:
        raise ValueError("regions out of order")
    if no_access_end == 0 and read_only_end == read_only_start:
        return None                     # nothing is protected: nothing to check
    secs = sections(data)
    by_id = {}
    for s in secs:
        if s.id != _CUSTOM:
            if s.id in by_id:
                raise BinaryError(f"two sections with id {s.id}")
            by_id[s.id] = s
    code = by_id.get(_CODE)
    if code is None or _BULK_BYTES.search(data, code.start, code.end) is None:
        return None
    # where each body's bulk instructions are, and of which kind
    r = _Reader(data, code.start, code.end)
    bodies = []
    for _ in range(r.count()):
        size = r.uleb()
        start, end = r.pos, r.pos + size
        if end > code.end:
            raise BinaryError("function body runs past the code section")
        br = _Reader(data, start, end)
        for _ in range(br.count()):
            br.uleb()
            _valtype(br)
        sites = []

        def found(at, sub, mems, sites=sites):
            write = (mems[0] if sub == MEMORY_COPY else mems[-1]) == 0
            read = sub == MEMORY_COPY and mems[1] == 0
            if write or read:
                sites.append((at, (write, read)))
        _scan(br, found)
        if br.pos != end:
            raise BinaryError("function body has bytes after its end")
        bodies.append((start, end, sites))
        r.pos = end
    kinds = sorted({k for _s, _e, sites in bodies for _at, k in sites}, reverse=True)
    if not kinds:
        return None
    # the function index space: what is imported comes first
    n_funcs = 0
    if _IMPORT in by_id:
        ir = _Reader(data, by_id[_IMPORT].start, by_id[_IMPORT].end)
        n_funcs = sum(1 for kind, _limits_ in _imports(ir) if kind == 0x00)
    n_types = _count_types(data, by_id.get(_TYPE))
    f_count, f_entries = _vector(data, by_id.get(_FUNCTION))
    if len(bodies) != f_count:
        raise BinaryError("function and code sections disagree")
    helper = {k: n_funcs + f_count + i for i, k in enumerate(kinds)}
    t_count, t_entries = _vector(data, by_id.get(_TYPE))
    new = {
        _TYPE: _section(_TYPE, t_count + 1, t_entries + _CHECK_TYPE),
        _FUNCTION: _section(_FUNCTION, f_count + len(kinds),
                            f_entries + _uleb(n_types) * len(kinds)),
    }
    out_bodies = bytearray()
    for start, end, sites in bodies:
        body = bytearray()
        at = start
        for pos, k in sites:
            body += data[at:pos] + b"\x10" + _uleb(helper[k])
            at = pos
        body += data[at:end]
        out_bodies += _uleb(len(body)) + body
    for k in kinds:
        out_bodies += _check_body(*k, no_access_end, read_only_start, read_only_end)
    new[_CODE] = _section(_CODE, len(bodies) + len(kinds), bytes(out_bodies))
    names = {i: CHECK_FUNCTION + ("_write" if k[0] else "") + ("_read" if k[1] else "")
             for k, i in helper.items()}
    name_sec = next((s for s in secs if s.id == _CUSTOM and s.name == "name"), None)
    named = _with_function_names(data, name_sec, names)
    # reassemble: replaced sections in place, missing ones where the order wants them
    out = bytearray(MAGIC)
    pending = {sid: b for sid, b in new.items() if sid not in by_id}
    for s in secs:
        if s.id != _CUSTOM:
            for sid in sorted(pending, key=_ORDER.get):
                if _ORDER[sid] < _ORDER[s.id]:
                    out += pending.pop(sid)
            out += new.get(s.id, data[s.header:s.end])
        elif s is name_sec and named is not None:
            out += named
            named = None
        else:
            out += data[s.header:s.end]
    for sid in sorted(pending, key=_ORDER.get):
        out += pending[sid]
    if named is not None and name_sec is None:      # no name section: one of our own
        out += named
    return bytes(out)


def function_count(data: bytes) -> int:
    """Functions in the module's index space (imported and defined): the index
    add_bulk_checks gives its first check.  Raises BinaryError or Unsupported."""
    n = 0
    for s in sections(data):
        if s.id == _IMPORT:
            n += sum(1 for kind, _l in _imports(_Reader(data, s.start, s.end)) if kind == 0x00)
        elif s.id == _FUNCTION:
            n += _Reader(data, s.start, s.end).uleb()
    return n


def _with_function_names(data: bytes, s: Section | None, names: dict) -> bytes | None:
    """A name section that also names the functions in `names` (index -> name, each
    index above every function the module has): the module's own, with them
    added to its function names, or a new one.  None: the module's name section
    is malformed, and is left as it is."""
    entries = b"".join(_uleb(i) + _uleb(len(n)) + n.encode() for i, n in sorted(names.items()))
    subs = []
    if s is not None:
        r = _Reader(data, s.start, s.end)
        try:
            r.name()
            while not r.done():
                sub = r.byte()
                size = r.uleb()
                subs.append((sub, r.take(size)))
            if any(a[0] >= b[0] for a, b in zip(subs, subs[1:])):
                return None
        except BinaryError:
            return None
    out = bytearray()
    added = False
    for sub, payload in subs:
        if sub == 1:
            try:
                count, rest = _vector(payload, Section(1, 0, len(payload), 0))
            except BinaryError:
                return None
            payload = _uleb(count + len(names)) + rest + entries
            added = True
        elif sub > 1 and not added:
            out += b"\x01" + _uleb(len(entries) + len(_uleb(len(names)))) + \
                _uleb(len(names)) + entries
            added = True
        out += bytes([sub]) + _uleb(len(payload)) + payload
    if not added:
        out += b"\x01" + _uleb(len(entries) + len(_uleb(len(names)))) + _uleb(len(names)) + entries
    payload = _uleb(4) + b"name" + bytes(out)
    return bytes([_CUSTOM]) + _uleb(len(payload)) + payload


def _count_types(data: bytes, s: Section | None) -> int:
    """Types in the type section (a recursion group holds several)."""
    if s is None:
        return 0
    r = _Reader(data, s.start, s.end)
    total = 0
    for _ in range(r.count()):
        if r.pos < r.end and r.data[r.pos] == 0x4E:      # rec: a group of types
            r.pos += 1
            n = r.count()
            for _ in range(n):
                _subtype(r)
            total += n
        else:
            _subtype(r)
            total += 1
    if not r.done():
        raise BinaryError("type section has bytes after its types")
    return total


def _subtype(r: _Reader):
    b = r.byte()
    if b in (0x50, 0x4F):          # sub, sub final: supertypes, then the type
        for _ in range(r.count()):
            r.uleb()
        b = r.byte()
    if b == 0x60:                  # func
        for _ in range(2):
            for _ in range(r.count()):
                _valtype(r)
    elif b == 0x5F:                # struct
        for _ in range(r.count(2)):
            _fieldtype(r)
    elif b == 0x5E:                # array
        _fieldtype(r)
    else:
        raise Unsupported(f"type form {b:#x}")


def _fieldtype(r: _Reader):
    b = r.data[r.pos] if r.pos < r.end else -1
    if b in (0x78, 0x77):          # i8, i16
        r.pos += 1
    else:
        _valtype(r)
    r.byte()                       # mutability
