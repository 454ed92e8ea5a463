"""Static memory protection: a no-access and a read-only region in a compartment's memory.

Owns: what the system file may say (`Setting`), what a module says about its
own layout (`Layout`, found where it is compiled), the regions an engine
enforces (`Regions`, from both), the one check every host access to guest
memory passes (`Regions.check`), the words of a protection trap (`explain`)
and the page protection itself (`enforce`: mprotect on the linear memory).

Must not: import the engine, trio or the supervisor; import wasmtime at
module level (the supervisor's policy code and the spec read `Setting`).

How it holds (docs/memory-protection.md says more):

* The regions lie at the start of linear memory: no-access [0, A), then
  read-only [R0, R1) with A <= R0 <= R1, all whole host pages.  The engine
  mprotects them (PROT_NONE, PROT_READ) after instantiation and data
  initialisation, and again for each per_call instance.
* Loads, stores, SIMD and atomics that hit them fault in wasmtime's compiled
  code, and wasmtime turns the fault into a trap naming the address
  ("memory fault at wasm address 0x..."); `explain` names the region.
* Bulk-memory instructions run in wasmtime's own code, where a fault is a
  crash: `wasmbin.add_bulk_checks` puts a check in front of each.
* wasmtime keeps a memory in place while it grows within its static
  reservation (STATIC_MEMORY); past it, the memory moves to new pages without
  their protection.  So a protected compartment's memory limit may not
  exceed it; `resolve` refuses, and the engine checks the base never moved.
* The host never touches a protected page on the guest's behalf: every guest
  pointer passes `Regions.check` (the engine's `_span`).
"""
from __future__ import annotations

import ctypes
import mmap
import re

import attrs

from . import wasmbin

AUTO = "auto"
NONE = "none"
#: wasmtime's static reservation in compartments/wasm.py (engine_config's
#: memory_reservation): memory up to this size never moves.
#: tests/unit/test_protect.py checks it against the real configuration.
STATIC_MEMORY = 64 << 20
MAX_NO_ACCESS = STATIC_MEMORY
PAGE = mmap.PAGESIZE
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2


class ProtectError(ValueError):
    """A protection that cannot be set up.  `key`: which setting is at fault, under
    the compartment ("protect", "protect.no_access", "protect.read_only",
    "limits.memory"); str() is the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key
        self.reason = reason


class Fault(Exception):
    """A host access to guest memory that protection forbids.  The wsuper ABI
    traps the guest with it; WASI returns EFAULT."""


# ---------------------------------------------------------------- the setting


@attrs.frozen
class Setting:
    """What the system file asks for one compartment."""
    no_access: int | str = 0        # bytes (rounded up to whole pages), or AUTO
    read_only: str = NONE           # AUTO: the module's read-only data; NONE
    #: False: the default, "what the module declares (wsuper build), if it can be
    #: enforced": nothing it lacks is an error, it is simply not protected.
    required: bool = True

    def to_json(self) -> dict:
        return {"no_access": self.no_access, "read_only": self.read_only,
                "required": self.required}

    @classmethod
    def from_json(cls, obj) -> "Setting":
        """The spec's form back; ValueError naming what is wrong."""
        if not isinstance(obj, dict) or set(obj) != {"no_access", "read_only", "required"}:
            raise ValueError("expected {no_access, read_only, required}")
        na, ro, req = obj["no_access"], obj["read_only"], obj["required"]
        if not (na == AUTO or (isinstance(na, int) and not isinstance(na, bool)
                               and 0 <= na <= MAX_NO_ACCESS)):
            raise ValueError(f"no_access: expected \"auto\" or 0..{MAX_NO_ACCESS}, got {na!r}")
        if ro not in (AUTO, NONE):
            raise ValueError(f"read_only: expected \"auto\" or \"none\", got {ro!r}")
        if not isinstance(req, bool):
            raise ValueError(f"required: expected true or false, got {req!r}")
        return cls(na, ro, req)


#: A compartment whose system file says nothing: what its module declares.
DEFAULT = Setting(AUTO, AUTO, required=False)

_SIZE = re.compile(r"\s*([0-9]{1,12})\s*(B|KiB|MiB|GiB)?\s*\Z")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
EXAMPLE = '{ no_access = "4 KiB", read_only = "auto" }'


def parse_setting(value) -> Setting | None:
    """The system file's `protect` value -> Setting, or None for `false`.
    Raises ProtectError with the key under the compartment."""
    if value is False:
        return None
    if value is True:
        return Setting(AUTO, AUTO)
    if not isinstance(value, dict):
        raise ProtectError("protect", f"must be false, true or a table such as {EXAMPLE}, "
                           f"not {value!r}")
    extra = sorted(set(value) - {"no_access", "read_only"})
    if extra:
        raise ProtectError(f"protect.{extra[0]}", f"unknown key {extra[0]!r} (allowed here: "
                           f"no_access, read_only)")
    if not value:
        raise ProtectError("protect", "names neither no_access nor read_only; write "
                           "protect = false to turn protection off")
    na = value.get("no_access", 0)
    if na in (AUTO, NONE):
        na = 0 if na == NONE else AUTO
    else:
        m = _SIZE.match(na) if isinstance(na, str) else None
        if m:
            na = int(m.group(1)) * _UNITS[m.group(2)]
        if isinstance(na, bool) or not isinstance(na, int) or not 0 <= na <= MAX_NO_ACCESS:
            raise ProtectError("protect.no_access", f"must be \"auto\", \"none\" or a size "
                               f"from 0 to {MAX_NO_ACCESS >> 20} MiB such as \"4 KiB\", "
                               f"not {value.get('no_access')!r}")
    ro = value.get("read_only", NONE)
    if ro not in (AUTO, NONE):
        raise ProtectError("protect.read_only", f"must be \"auto\" (the module's read-only "
                           f"data) or \"none\", not {ro!r}")
    return Setting(na, ro)


# ---------------------------------------------------------------- the module's layout


@attrs.frozen
class Layout:
    """What a module says about its memory, read from its bytes where it is compiled."""
    problem: str | None = None      # why it cannot be protected at all
    memory: int = 0                 # its initial memory, bytes
    segments: tuple = ()            # (start, end, name) of its data segments
    rodata: tuple | None = None     # (start, end) of the segment named .rodata
    declared: tuple | None = None   # wsuper.protect: (no_access_end, ro_start, ro_end)
    declared_problem: str | None = None
    #: what `prepare` resolved: (no_access_end, ro_start, ro_end), None: not protected
    regions: tuple | None = None
    error: tuple | None = None      # (key, reason): the ProtectError of a required setting
    checks: bool = False            # bulk-memory checks for `regions` were inserted
    #: active data segments of memory 0 whose address is known only at instantiation
    unknown_segments: int = 0
    #: the function index of the first check inserted (`checks`): every function from
    #: it on is one, whatever the name section (the module's own text) calls it
    first_check: int | None = None

    def to_json(self) -> dict:
        return {"problem": self.problem, "memory": self.memory,
                "segments": [list(s) for s in self.segments],
                "rodata": list(self.rodata) if self.rodata is not None else None,
                "declared": list(self.declared) if self.declared is not None else None,
                "declared_problem": self.declared_problem,
                "regions": list(self.regions) if self.regions is not None else None,
                "error": list(self.error) if self.error is not None else None,
                "checks": self.checks, "unknown_segments": self.unknown_segments,
                "first_check": self.first_check}

    @classmethod
    def from_json(cls, obj) -> "Layout":
        if not isinstance(obj, dict) or set(obj) != set(attrs.fields_dict(cls)):
            raise ValueError("not a protection layout")

        def extent(v, n):
            if v is None:
                return None
            if not (isinstance(v, list) and len(v) == n and all(
                    isinstance(x, int) and 0 <= x <= 1 << 32 for x in v)):
                raise ValueError(f"bad extent {v!r}")
            return tuple(v)
        segs = obj["segments"]
        if not isinstance(segs, list) or not all(
                isinstance(s, list) and len(s) == 3 and isinstance(s[2], str) for s in segs):
            raise ValueError("bad segments")
        first_check = obj["first_check"]
        if first_check is not None and not (isinstance(first_check, int) and
                                            not isinstance(first_check, bool) and
                                            0 <= first_check <= 1 << 32):
            raise ValueError(f"bad first_check {first_check!r}")
        error = obj["error"]
        if error is not None and not (isinstance(error, list) and len(error) == 2
                                      and all(isinstance(x, str) for x in error)):
            raise ValueError(f"bad error {error!r}")
        return cls(obj["problem"], int(obj["memory"]),
                   tuple((*extent(s[:2], 2), s[2]) for s in segs),
                   extent(obj["rodata"], 2), extent(obj["declared"], 3),
                   obj["declared_problem"], extent(obj["regions"], 3),
                   tuple(error) if error is not None else None, bool(obj["checks"]),
                   int(obj["unknown_segments"]), first_check)


def prepare(data: bytes, setting: Setting, memory_limit: int, validate=None,
            page: int = PAGE) -> tuple[bytes, Layout]:
    """The bytes to compile for a compartment protected as `setting` says, and the
    module's Layout with the regions resolved (`resolve`).  `validate(data)`:
    raises unless wasmtime accepts the module (called before any rewriting,
    which needs a valid module; None: it is known valid).  Nothing else here
    raises: a required setting that cannot be met is Layout.error; the default
    one is simply not applied (Layout.regions is None)."""
    layout, bulk = plan(data, setting, memory_limit, page)
    if layout.regions is None or not bulk:
        return data, layout
    return add_checks(data, layout, setting, validate)


def plan(data: bytes, setting: Setting, memory_limit: int,
         page: int = PAGE) -> tuple[Layout, bool]:
    """The module's Layout with the regions resolved (none if they cannot be, with
    why), and whether it may have bulk-memory instructions (which need
    `add_checks` once the regions are known).  Raises nothing."""
    bulk = False
    try:
        f = wasmbin.facts(data)
    except Exception as e:  # noqa: BLE001 - a module we cannot read is one we do not protect
        layout = Layout(problem=f"its binary cannot be read for protection: {e}")
    else:
        layout = Layout(f.memory_problem, f.min_pages * wasmbin.WASM_PAGE, f.segments,
                        f.rodata, f.declared, f.declared_problem,
                        unknown_segments=f.unknown_segments)
        bulk = f.bulk
    try:
        regions = resolve(setting, layout, memory_limit, page)
    except ProtectError as e:
        return attrs.evolve(layout, error=(e.key, e.reason)), False
    if regions is None:
        return attrs.evolve(layout, problem=layout.problem or _unmet(
            setting, layout, memory_limit, page)), False
    extents = (regions.no_access_end, regions.read_only_start, regions.read_only_end)
    return attrs.evolve(layout, regions=extents), bulk


def add_checks(data: bytes, layout: Layout, setting: Setting,
               validate=None) -> tuple[bytes, Layout]:
    """`data` with a check before each of its bulk-memory instructions on memory 0
    against `layout.regions` (wasmbin.add_bulk_checks), and the Layout that says
    so.  `data` may differ from the module `plan` read (probe sites compiled in),
    as long as its memory 0 and data are the same.  A module the checks cannot be
    inserted into is not protected (or an error, if `setting` is required)."""
    if validate is not None:
        validate(data)
    try:
        checked = wasmbin.add_bulk_checks(data, *layout.regions)
        first_check = wasmbin.function_count(data)     # the checks come after these
    except Exception as e:  # noqa: BLE001 - Unsupported, BinaryError; or a bug: never trusted
        why = f"wsuper cannot insert the checks its bulk-memory instructions need: {e}"
        if setting.required:
            return data, attrs.evolve(layout, regions=None, error=(
                "protect", f"this module cannot be protected: {why}"))
        return data, attrs.evolve(layout, regions=None, problem=why)
    if checked is None:
        return data, layout
    return checked, attrs.evolve(layout, checks=True, first_check=first_check)


def compile_module(wasm_engine, path: str, setting: Setting, memory_limit: int):
    """(wasmtime.Module, Layout): the module file at `path`, prepared and compiled
    for protection as `setting` and the compartment's memory limit call for.
    Raises what wasm.compile_module raises."""
    import wasmtime
    data, layout = prepare(read_module(path), setting, memory_limit,
                           lambda d: wasmtime.Module.validate(wasm_engine, d))
    return wasmtime.Module(wasm_engine, data), layout


def read_module(path: str) -> bytes:
    """The module file at `path` as binary (wasm.read_module: a .wat is translated
    unless it is binary).  Raises OSError, UnicodeDecodeError,
    wasmtime.WasmtimeError."""
    from . import wasm
    return wasm.read_module(path)


def check_file(wasm_engine, path: str, setting: Setting, memory_limit: int) -> Layout:
    """What an engine will make of the module file at `path` (the supervisor's check
    before any engine starts: it also compiles the module as rewritten).
    Raises ProtectError."""
    import wasmtime
    try:
        _module, layout = compile_module(wasm_engine, path, setting, memory_limit)
    except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as e:
        raise ProtectError("module", f"cannot be prepared for protection: {e}") from None
    if layout.error is not None:
        raise ProtectError(*layout.error)
    return layout


def regions_of(layout: Layout, page: int = PAGE) -> Regions | None:
    """The regions an engine enforces, from what `prepare` resolved where the module
    was compiled (checked again: whole pages, in order, inside the memory).
    Raises ProtectError for a required setting that could not be met."""
    if layout.error is not None:
        raise ProtectError(*layout.error)
    if layout.regions is None:
        return None
    na, r0, r1 = layout.regions
    if any(v % page for v in layout.regions) or not 0 <= na <= r0 <= r1 <= layout.memory:
        raise ValueError(f"regions {layout.regions} do not fit this host's pages "
                         f"({page} bytes) and memory")
    return Regions(na, r0, r1, page=page, first_check=layout.first_check)


# ---------------------------------------------------------------- the regions


def _up(n: int, page: int) -> int:
    return -(-n // page) * page


def _down(n: int, page: int) -> int:
    return n // page * page


@attrs.frozen
class Regions:
    """What one compartment's memory enforces: no-access [0, no_access_end),
    read-only [read_only_start, read_only_end); whole pages, in that order."""
    no_access_end: int
    read_only_start: int
    read_only_end: int
    read_only_name: str = ".rodata"
    page: int = PAGE
    #: Layout.first_check: functions from this index on are checks, not the guest's
    #: (which functions trapped, not what is enforced: no part of equality)
    first_check: int | None = attrs.field(default=None, eq=False)

    def check(self, ptr: int, length: int, write: bool) -> str | None:
        """Why the host may not access guest memory [ptr, ptr+length) on the guest's
        behalf (None: it may).  `ptr` and `length` are already known to be inside
        memory.  The rule a native copy must mirror: nothing if length is 0; a
        read needs ptr >= no_access_end; a write needs that, and the range to
        miss [read_only_start, read_only_end)."""
        if length <= 0:
            return None
        if ptr < self.no_access_end:
            return f"[{ptr:#x}, {ptr + length:#x}) starts in the {self.describe(ptr)}"
        if write and ptr < self.read_only_end and ptr + length > self.read_only_start:
            at = max(ptr, self.read_only_start)
            return f"[{ptr:#x}, {ptr + length:#x}) is written at {at:#x}, in the " \
                   f"{self.describe(at)}"
        return None

    def region_of(self, addr: int) -> str | None:
        if addr < self.no_access_end:
            return "no-access"
        if self.read_only_start <= addr < self.read_only_end:
            return "read-only"
        return None

    def describe(self, addr: int) -> str:
        if addr < self.no_access_end:
            return f"no-access region [0x0, {self.no_access_end:#x})" + \
                (" (the null page)" if self.no_access_end <= self.page else "")
        return f"read-only region [{self.read_only_start:#x}, {self.read_only_end:#x}) " \
               f"({self.read_only_name})"


def resolve(setting: Setting | None, layout: Layout | None, memory_limit: int,
            page: int = PAGE) -> Regions | None:
    """The regions to enforce, or None.  Raises ProtectError if `setting` is required
    and cannot be met; the default setting is met or quietly not applied."""
    if setting is None:
        return None
    if not setting.required and (layout is None or layout.declared is None):
        return None
    try:
        return _resolve(setting, layout, memory_limit, page)
    except ProtectError:
        if setting.required:
            raise
        return None


def rodata_extent(segments, rodata: tuple, page: int, unknown: int = 0) -> tuple[int, int]:
    """.rodata's extent, with the padding after it up to the end of its last page
    when the next data starts at or past that end: what wasm-ld leaves before a
    .data that starts a page (toolchain.LAYOUT_SOURCE: wsuper build's layout, or the
    same by hand), where nothing lies.  Without data after it, its last page stays
    as it is: .bss, the stack or the heap may follow.  `segments`: (start, end, ...)
    of the module's data segments.  wsuper build declares this extent
    (toolchain.declared_layout); `read_only = "auto"` takes it from the name section
    of a module built by hand, where it took .rodata alone, rounded inward: the
    recipe of docs/plugins.md ended on a partial page and got no read-only page.
    Only if no segment lies in that padding, even in part, and none has an address
    known only at instantiation (`unknown` of them), which may lie there."""
    start, end = rodata
    padded = _up(end, page)
    if unknown:
        return start, end               # one of them may lie in the padding
    # every segment that reaches past .rodata's end, wherever it starts: one that
    # starts inside .rodata and runs on into the padding is data written there too
    # (it was passed over, as it starts before .rodata's end, and its bytes past
    # that end made read-only: the module trapped writing its own writable data)
    later = [s for s in segments if s[1] > s[0] and s[1] > end]
    if later and all(s[0] >= padded for s in later):
        end = padded
    return start, end


def _unmet(setting: Setting | None, layout: Layout, memory_limit: int,
           page: int) -> str | None:
    """Why the default setting leaves a module that declares a layout unprotected
    (None: it declares none, or nothing was asked): `wsuper check` says it, where it
    said "the module declares no layout" of a wsuper build plugin whose memory
    limit was above 64 MiB."""
    if setting is None or setting.required:
        return None
    if layout.declared is None:
        # a declaration that cannot be read (malformed, or more than one) is not "no
        # layout": `check` said "the module declares no layout" of a module whose
        # wsuper.protect section was malformed, and nothing said why the layout it
        # was built with was not enforced (an outside review, r266)
        return (f"its declared layout cannot be used: {layout.declared_problem}"
                if layout.declared_problem else None)
    try:
        if _resolve(setting, layout, memory_limit, page) is None:
            return (f"its declared layout cannot be enforced: it holds no whole "
                    f"{page}-byte page of this host")
    except ProtectError as e:
        return f"its declared layout cannot be enforced: {e.key}: {e.reason}"
    return None


def _resolve(setting: Setting, layout: Layout | None, memory_limit: int, page: int):
    if layout is None:
        raise ProtectError("protect", "the module was not prepared for protection")
    if layout.problem:
        raise ProtectError("protect", f"this module cannot be protected: {layout.problem}")
    if memory_limit > STATIC_MEMORY:
        raise ProtectError("limits.memory", f"a protected memory must stay where it is, so "
                           f"its limit is at most {STATIC_MEMORY >> 20} MiB (the engine's "
                           f"static reservation; past it memory moves and loses its "
                           f"protection), not {memory_limit} bytes")
    declared = layout.declared
    why_none = f" ({layout.declared_problem})" if layout.declared_problem else ""
    if setting.no_access == AUTO:
        if declared is None:
            raise ProtectError("protect.no_access", f"\"auto\": the module declares no "
                               f"null page{why_none} (wsuper build declares one); give a "
                               f"size such as \"4 KiB\"")
        na = _down(declared[0], page)
        if not na and setting.required:
            # a null page of no whole page is none: asked for, it is not met (it
            # resolved to no protection at all, said nowhere)
            what = "declares no null page" if not declared[0] else \
                f"declares a null page [0x0, {declared[0]:#x}) that holds no whole " \
                f"{page}-byte page of this host"
            raise ProtectError("protect.no_access", f"\"auto\": the module {what}; give "
                               f"a size such as \"4 KiB\" (or \"none\")")
    else:
        na = _up(setting.no_access, page)
    if na > layout.memory:
        raise ProtectError("protect.no_access", f"{na} bytes is more than the module's "
                           f"initial memory ({layout.memory} bytes)")
    if na and layout.unknown_segments:
        raise ProtectError("protect.no_access", f"{na} bytes: the module has "
                           f"{layout.unknown_segments} data segment(s) whose address is "
                           f"known only when it is instantiated, which the no-access "
                           f"region could cover; give their offsets as constants")
    for start, end, name in layout.segments:
        if end > start and start < na:
            raise ProtectError("protect.no_access", f"{na} bytes (whole {page}-byte pages) "
                               f"would cover the module's data {name or 'segment'} at "
                               f"[{start:#x}, {end:#x}); build it with wsuper build (it "
                               f"reserves a null page) or ask for less")
    r0 = r1 = na                        # an empty read-only region starts where no-access ends
    if setting.read_only == AUTO:
        if declared is not None:
            start, end = declared[1], declared[2]
        elif layout.rodata is not None:
            start, end = rodata_extent(layout.segments, layout.rodata, page,
                                       layout.unknown_segments)
        else:
            raise ProtectError("protect.read_only", f"\"auto\": the module does not say where "
                               f"its read-only data is{why_none}: it has no wsuper.protect "
                               f"section (wsuper build writes one) and no data segment named "
                               f".rodata in its name section (wasm-ld names it, unless the "
                               f"module was stripped)")
        r0, r1 = max(_up(start, page), na), _down(end, page)
        if r1 <= r0:
            if setting.required and end <= start:
                # nothing to make read-only is not read-only data protected: asked
                # for, it is not met (it resolved to nothing, said nowhere)
                raise ProtectError("protect.read_only", f"\"auto\": the module's read-only "
                                   f"data [{start:#x}, {end:#x}) is empty; give "
                                   f"read_only = \"none\"")
            if setting.required:
                raise ProtectError("protect.read_only", f"the module's read-only data "
                                   f"[{start:#x}, {end:#x}) holds no whole {page}-byte page "
                                   f"outside the no-access region; build it with wsuper "
                                   f"build, which page-aligns it")
            r0 = r1 = na
        if r1 > layout.memory:
            raise ProtectError("protect.read_only", f"the read-only data ends at {end:#x}, "
                               f"past the module's initial memory ({layout.memory} bytes)")
    if na == 0 and r1 == r0:
        return None
    return Regions(na, r0, r1, page=page)


# ---------------------------------------------------------------- enforcing


def enforce(regions: Regions, store, memory) -> int:
    """Protect one instance's memory (after instantiation and data initialisation);
    returns its base address, which must never change (see STATIC_MEMORY)."""
    base = ctypes.addressof(memory.data_ptr(store).contents)
    size = memory.data_len(store)
    if base % regions.page or max(regions.no_access_end, regions.read_only_end) > size:
        raise OSError(f"memory at {base:#x} of {size} bytes cannot hold these regions")
    if regions.no_access_end:
        _mprotect(base, regions.no_access_end, PROT_NONE)
    if regions.read_only_end > regions.read_only_start:
        _mprotect(base + regions.read_only_start,
                  regions.read_only_end - regions.read_only_start, PROT_READ)
    return base


def lift(regions: Regions, store, memory):
    """Undo `enforce` on one instance's memory (every page it may have protected
    readable and writable again, as wasmtime made them), before the instance is
    dropped and its memory's pool slot used again (engine.py, per_call).
    Harmless where enforce did nothing (it checks the size first, as here)."""
    base = ctypes.addressof(memory.data_ptr(store).contents)
    size = memory.data_len(store)
    if base % regions.page or max(regions.no_access_end, regions.read_only_end) > size:
        return
    if regions.no_access_end:
        _mprotect(base, regions.no_access_end, PROT_READ | PROT_WRITE)
    if regions.read_only_end > regions.read_only_start:
        _mprotect(base + regions.read_only_start,
                  regions.read_only_end - regions.read_only_start, PROT_READ | PROT_WRITE)


_libc = None


def _mprotect(addr: int, length: int, prot: int):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.mprotect.restype = ctypes.c_int
    if _libc.mprotect(addr, length, prot) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect: {__import__('os').strerror(err)}")


# ---------------------------------------------------------------- traps


def is_check(func_name: str | None) -> bool:
    """Whether a function name is one wasmbin.add_bulk_checks gives its checks (a
    module may give its own functions such names, or leave the checks unnamed: a
    trap's frames are told apart by index, `is_check_frame`)."""
    return bool(func_name) and func_name.startswith(wasmbin.CHECK_FUNCTION)


def is_check_frame(func_index: int | None, regions: Regions | None) -> bool:
    """Whether a trap's frame (its function index) is a check inserted for `regions`."""
    first = regions.first_check if regions is not None else None
    return first is not None and func_index is not None and func_index >= first

_FAULT = re.compile(r"memory fault at wasm address 0x([0-9a-f]{1,16}) in linear memory")


def explain(message: str, regions: Regions | None) -> str | None:
    """The cause of a trap, if it was a protected page: 'write to read-only memory at
    0x1004 (read-only region [0x1000, 0x2000) (.rodata))'.  wasmtime puts the
    faulting address in its message; None if it is not there or not protected."""
    if regions is None:
        return None
    m = _FAULT.search(message)
    if m is None:
        return None
    addr = int(m.group(1), 16)
    region = regions.region_of(addr)
    if region == "no-access":
        return f"access to no-access memory at {addr:#x} ({regions.describe(addr)})"
    if region == "read-only":
        return f"write to read-only memory at {addr:#x} ({regions.describe(addr)})"
    return None
