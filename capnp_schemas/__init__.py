"""Cap'n Proto schemas and the code that speaks them.

Layout:
  engine.capnp, host.capnp  the project's own interfaces (engine control, host
                            capabilities, the external gateway)
  probe.capnp               the Probe host capability (analysis compartments)
  wire.py                   framing and pointer surgery on raw messages (pure)
  rpcwire.py                the Call, Return and Finish headers, by hand (pure)
  protocol.py               the sans-IO Cap'n Proto RPC connection (pure)
  payloads.py               building and eagerly reading payloads by their schema
  hosted.py                 the host capabilities, as one table from host.capnp
  text.py                   one-line errors; guest text made safe to print

`rpc` is pycapnp's bundled `rpc.capnp` (Cap'n Proto 1.x), loaded here once.
Both the supervisor and the engine import this package; it imports neither.
"""
from __future__ import annotations

import os
import re

import capnp

capnp.remove_import_hook()

HERE = os.path.dirname(os.path.abspath(__file__))
_CAPNP_DIR = os.path.dirname(capnp.__file__)
# rpc.capnp imports "/capnp/c++.capnp": the package's parent must be on the path.
IMPORT_PATH = [os.path.dirname(_CAPNP_DIR), HERE]

#: The schema files loaded in this process, in order, as (path, import path).
#: pycapnp keeps every file it loads in one table per process and *aborts* on a
#: file that declares an id one of them declared already (the same file copied,
#: an interface written with another's id): so a file is parsed elsewhere after
#: the same files, in the same order (load()).
LOADED: list[tuple[str, tuple]] = []


#: sha256 of each of our own schema files' bytes -> the module loaded from it.  A
#: copy of one (probe.capnp in the project of an analysis compartment, or the
#: checkout's beside a wsuper installed with `pip install .`, or one reached
#: through a symbolic link) declares the ids of the file loaded here already, and
#: the parser refused it ("Duplicate ID"): load() gives the copy this module.
_BUILTIN_COPIES: dict[bytes, object] = {}
#: sha256 of each of our own schema files' bytes -> its file: a copy that a user
#: schema *imports* is parsed as a file of its own (the parser knows a file by its
#: name), declaring that file's ids again: load() refuses it, naming both.
_BUILTIN_FILES: dict[bytes, str] = {}

#: file -> the module loaded from it in this process (ours and the user's): who
#: declared an id first, when the parser says only "Duplicate ID" of the second.
_MODULES: dict[str, object] = {}

#: (device, inode) -> the name each schema file loaded in this process (and every
#: file it imports) was read under: pycapnp knows a file by its name, and one file
#: under two names (a symbolic or hard link) is two files to it, declaring the
#: same ids ("Duplicate ID @0x..."): load() refuses a second name, naming the first.
_NAMES: dict[tuple, str] = {}


#: file name -> (its stat signature, sha256 of its bytes, the ids written in it
#: (`@0x...`)) as this process's parser read it.  The parser keeps what it read
#: under that name for good (a file changed since is never read again here), but
#: the child that checks a schema first (load()) reads the files loaded before it
#: as they are *now*: a file changed since, whose old text declared an id that a
#: new schema declares too, passed the check and aborted this process ("Duplicate
#: ID" is an abort here).  load() refuses that (_diverged).
_PARSED: dict[str, tuple] = {}

_ID = re.compile(rb"@0x([0-9a-fA-F]{1,16})\b")


def _signature(file: str) -> tuple | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _snapshot(file: str) -> tuple | None:
    """(signature, sha256, ids written in it) of `file` now, None if it cannot be read."""
    import hashlib
    seen: list = []
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES, seen=seen)
    except FileProblem:
        return None
    st = seen[0]
    return ((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            hashlib.sha256(data).digest(), frozenset(int(m, 16) for m in _ID.findall(data)))


def _diverged(new: dict, stale: dict | None = None) -> tuple | None:
    """(a file of `new`, an id, a file parsed here before) if `new` (file -> its
    snapshot, each file the parser is about to read for the first time here)
    writes an id that the earlier file declared as this process read it, and
    that no file read here declares as it is now: the check's child, which reads
    them as they are now, would pass what this process's parser aborts on.
    `stale`, if given, gets every file read here before that changed since."""
    stale, now_ids = ({} if stale is None else stale), set()
    for file, (sig, digest, ids) in list(_PARSED.items()):
        if _signature(file) == sig:
            now_ids |= ids
            continue
        snap = _snapshot(file)
        if snap is not None and snap[1] == digest:
            _PARSED[file] = (snap[0], digest, ids)      # touched, not changed
            now_ids |= ids
            continue
        stale[file] = ids
        if snap is not None:
            now_ids |= snap[2]
    for old, ids in stale.items():
        for file, snap in new.items():
            both = (ids & snap[2]) - now_ids
            if both:
                return file, min(both), old
    return None


def _id_line(file: str, id_: int) -> int | None:
    """The line of `file` where `@0x<id_>` is written (None if it is no longer)."""
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES)
    except FileProblem:
        return None
    m = next((m for m in _ID.finditer(data) if int(m.group(1), 16) == id_), None)
    return None if m is None else data.count(b"\n", 0, m.start()) + 1


def _remember(files) -> None:
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            continue
        other = _NAMES.setdefault((st.st_dev, st.st_ino), file)
        if other != file and not _same_file(other, st):
            _NAMES[(st.st_dev, st.st_ino)] = file


def _same_file(path: str, st) -> bool:
    """Whether `path` is still the file `st` describes (a file loaded long ago may
    have been removed, and its inode number given to another)."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _builtin(path: str):
    import hashlib
    module = capnp.load(path, imports=IMPORT_PATH)
    LOADED.append((path, tuple(IMPORT_PATH)))
    with open(path, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    digest = hashlib.sha256(data).digest()
    _BUILTIN_COPIES[digest] = module
    _BUILTIN_FILES[digest] = os.path.normpath(path)
    _MODULES[os.path.normpath(path)] = module
    _remember([os.path.normpath(path)])
    _PARSED[os.path.normpath(path)] = (
        (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), digest,
        frozenset(int(m, 16) for m in _ID.findall(data)))
    return module


rpc = _builtin(os.path.join(_CAPNP_DIR, "rpc.capnp"))
engine = _builtin(os.path.join(HERE, "engine.capnp"))
host = _builtin(os.path.join(HERE, "host.capnp"))
probe = _builtin(os.path.join(HERE, "probe.capnp"))


class SchemaError(Exception):
    """A schema file that does not parse.  `path` and `line` say where (line may be None)."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


_CHECKED: dict[tuple, None] = {}

#: bytes of one schema file, or of a file a schema imports or embeds
MAX_SCHEMA_BYTES = 16 << 20
#: files in one schema's closure (it, and all it imports and embeds)
MAX_SCHEMA_FILES = 1000

# `import "x"` and `embed "x"`, outside comments; a string is "..." with \ escapes
# (a string never closed ends at the end of its line: no scan is tried again
# from the next character, which was quadratic).  Between the keyword and its
# string the parser takes what it takes between any two tokens, comments
# included (`import # why\n "x"`): a scan that took only spaces there missed
# that file, which was then neither checked (a FIFO hung the parse) nor kept out
# of writable grants.  Possessive (*+), so that a comment is never cut short
# to find a string inside it.
_REFERENCE = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.?)*(?:"|(?=\n)|\Z)'
                        r'|\b(import|embed)(?:\s++|#[^\n]*+)*+"((?:[^"\\\n]|\\.)*)"')


def closure(path: str, import_path=(), parsed: list | None = None
            ) -> list[tuple[str, str | None, int | None]]:
    """Every file `path` (a schema) reads when it is parsed: [(file, the schema that
    names it, line)], itself first.  A reference is `import "NAME"` or `embed
    "NAME"`: relative to the naming file's directory, or, with a leading "/",
    beneath each directory of `import_path` (the first that has it), as the
    Cap'n Proto compiler resolves them.  Each file must be a regular file of at
    most MAX_SCHEMA_BYTES (the parser would wait for ever on a FIFO and read
    /dev/zero to the end): SchemaError names the one that is not, and where it
    is named.  A name found nowhere is left to the parser, which says so.

    A relative name may not lead above the directory its file was found beneath
    (the schema's own, or the import path's directory an absolute name was found
    in): the parser refuses that, and said only "expected parts.size() > 0 [0 >
    0]; can't use ".." to break out of starting directory", naming the schema
    and not the file or line; SchemaError names them.

    `parsed`, if given, is appended the (file, by, line) of each file the parser
    parses (the schema and what it imports, each time it is imported, under each
    name; not what it embeds)."""
    path = os.path.abspath(path)
    out, seen, todo = [], set(), [(path, None, None, os.path.dirname(path))]
    while todo:
        file, by, line, root = todo.pop(0)
        if parsed is not None:
            parsed.append((file, by, line))     # each name it is imported by
        if os.path.realpath(file) in seen:
            continue
        seen.add(os.path.realpath(file))
        if len(seen) > MAX_SCHEMA_FILES:
            raise SchemaError(by, line, f"reads more than {MAX_SCHEMA_FILES} schema files")
        text = _read_schema_file(file, by, line)
        out.append((file, by, line))
        at, counted = 1, 0
        for m in _REFERENCE.finditer(text):
            if m.group(1) is None:
                continue
            name = m.group(2)
            at, counted = at + text.count("\n", counted, m.start()), m.start()
            if "\\" in name or "\0" in name or not name:
                raise SchemaError(file, at, f"{m.group(1)} {_shown(name)}: a file name "
                                  f"with escapes is not supported")
            if name.startswith("/"):
                # beneath each directory of the import path: one that leads above it
                # (`/../x.capnp`) is refused by the parser as for a relative name, and
                # was read here from beside that directory
                if os.path.normpath(name.lstrip("/")).split("/")[0] == "..":
                    raise SchemaError(file, at, f"{m.group(1)} {_shown(name)} leads above "
                                      "the import path's directories, which the parser "
                                      "reads it beneath: it reads nothing outside them")
                found, base = next(((c, d) for c, d in (
                    (os.path.normpath(os.path.join(d, name.lstrip("/"))), d)
                    for d in import_path) if os.path.lexists(c)), (None, None))
            else:
                found, base = os.path.normpath(os.path.join(os.path.dirname(file), name)), root
                if os.path.commonpath([found, root]) != root:
                    raise SchemaError(file, at, f"{m.group(1)} {_shown(name)} leads above "
                                      f"{root}, the directory the parser reads it beneath: "
                                      "it reads nothing outside that directory")
            if found is None or not os.path.lexists(found):
                continue                        # the parser's error names it
            # a symbolic link on the way (the file, or a directory: lib -> /elsewhere)
            # leads where no `..` shows: the parser followed it (check read what it
            # pointed at), but up's parser may read only beneath these directories
            # (Landlock) and failed with "openat(fd, path, O_RDONLY): Permission
            # denied; path = NAME", no line, no reason.  One rule for both.
            real, limit = os.path.realpath(found), os.path.realpath(base)
            if os.path.commonpath([real, limit]) != limit:
                # what it is first (a FIFO, a device): said as for any file
                _read_schema_file(found, file, at, embedded=m.group(1) == "embed",
                                  kind_only=True)
                raise SchemaError(file, at, f"{m.group(1)} {_shown(name)} leads outside "
                                  f"{_shown(os.path.normpath(base))} through a symbolic link "
                                  f"(to {_shown(real)}): the parser reads nothing outside "
                                  "that directory")
            if m.group(1) == "import":
                todo.append((found, file, at, os.path.normpath(base)))
            elif os.path.realpath(found) not in seen:
                seen.add(os.path.realpath(found))
                _read_schema_file(found, file, at, embedded=True)
                out.append((found, file, at))
    return out


def _shown(name: str) -> str:
    from .text import printable
    return printable(name[:200])


def _read_schema_file(file, by, line, embedded=False, kind_only=False) -> str | None:
    """A schema file's text (None if `embedded` or `kind_only`: only its kind and
    size are checked);
    SchemaError (at `by`:`line`, where it is named) if it is no regular file
    of at most MAX_SCHEMA_BYTES, or cannot be read."""
    what = "embeds" if embedded else "imports"
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES, read=not (embedded or kind_only))
    except FileProblem as e:
        if by is None:
            raise SchemaError(file, None, f"cannot read it: {e.strerror}" if e.strerror
                              else f"{file} {e}") from None
        raise SchemaError(by, line, f"{what} {file}, which " + (
            f"cannot be read: {e.strerror}" if e.strerror else str(e))) from None
    return None if data is None else data.decode("utf-8", "replace")


class FileProblem(Exception):
    """Why a file the operator names is not read.  str() follows the file's name
    ("is a FIFO, not a regular file", "has 20,000,000 bytes, more than ...");
    `strerror` is set instead when the system refused to open or read it."""

    def __init__(self, text: str = "", strerror: str | None = None):
        super().__init__(text)
        self.strerror = strerror


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words ("a FIFO")."""
    import stat
    return "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" \
        if stat.S_ISSOCK(mode) else "not a regular file"


def read_regular(path: str, limit: int, read: bool = True, seen: list | None = None
                 ) -> bytes | None:
    """The bytes of `path` (None if not `read`: only its kind and size are checked),
    if it is a regular file of at most `limit` bytes; FileProblem if not.  Opened
    without blocking (a FIFO would wait for a writer for ever) and read no
    further than `limit` (a file may grow meanwhile; /dev/zero never ends).
    The one reader of the files that decide what runs: system and policy files,
    schemas and what they import or embed.  `seen`: appended the os.stat_result
    of the file read, taken once it was read (what was read is that file's as
    it was then, unless its change time changed)."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise FileProblem(strerror=e.strerror or str(e)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = file_kind(info.st_mode)
            raise FileProblem(f"is {kind}, not a regular file" if kind != "not a regular file"
                              else "is not a regular file")
        if info.st_size > limit:
            raise FileProblem(f"has {info.st_size:,} bytes, more than {limit:,}")
        if not read:
            return None
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileProblem(f"grew past {limit:,} bytes")
        if seen is not None:
            seen.append(os.fstat(fd))
        return b"".join(chunks)
    except OSError as e:
        raise FileProblem(strerror=e.strerror or str(e)) from None
    finally:
        os.close(fd)


#: Where a schema is parsed before it is loaded here: `parse_elsewhere(path,
#: imports, before)` -> (exit code, what the parser printed) of a process that
#: parsed the files `before` ([path, import path] pairs, as LOADED) and then it,
#: or None (then a new interpreter does).  `wsuper up` points it at the zygote,
#: which parses it in a child of its own (supervisor/launch.py): ~5 ms, against
#: ~100 ms for a new interpreter.
parse_elsewhere = None


def import_path(path: str, extra_imports=()) -> list[str]:
    """Where an absolute import in the schema file `path` is looked for."""
    return [os.path.dirname(os.path.abspath(path)), *extra_imports, *IMPORT_PATH]


def load(path: str, extra_imports=()):
    """Load a user schema file (import path: its own directory, then ours).

    pycapnp's parser *aborts the process* on some errors (a syntax error, a file
    without an @0x... id, an id a file loaded before declared too): so a schema
    is first parsed in a child process, after the files this process loaded
    before it (LOADED), and a failure there becomes a SchemaError naming the
    file and line.  Once a file (its inode, size and times, after the same files)
    has parsed, it is loaded here directly."""
    path = os.path.abspath(path)
    imports = import_path(path, extra_imports)
    read: list = []
    closure(path, imports, read)    # no FIFO, device or huge file among what it reads
    copy = _builtin_copy(path)
    if copy is not None:
        return copy
    names = dict(_NAMES)
    for file, by, line in read:
        try:
            st = os.stat(file)
        except OSError:
            continue                        # the parser says why
        other = names.setdefault((st.st_dev, st.st_ino), file)
        if other != file and not _same_file(other, st):
            other = names[(st.st_dev, st.st_ino)] = file
        if other != file:
            what = (f"is {other}" if by is None else f"imports {file}, which is {other}")
            raise SchemaError(by or file, line, f"{what} (the same file through a symbolic "
                              "or hard link), read already under that name: the parser "
                              "would read it as a second file declaring the same ids; "
                              "name it one way")
        if by is not None:
            _not_a_builtin_copy(file, st, by, line)
    try:
        st = os.stat(path)
    except OSError as e:
        raise SchemaError(path, None, e.strerror or str(e)) from None
    key = (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size,
           tuple(imports), tuple(LOADED))
    # what this process's parser reads for the first time, as it is before the check
    new = {}
    for file, _, _ in read:
        if file not in _PARSED and file not in new:
            snap = _snapshot(file)
            if snap is not None:
                new[file] = snap
    stale: dict = {}
    found = _diverged(new, stale)
    if found is not None:
        file, id_, old = found
        raise SchemaError(file, _id_line(file, id_), f"declares @0x{id_:016x}, an id of {old} as this "
                          f"process read it earlier: {old} has changed or is gone since, and "
                          "this process's parser keeps what it read: it would take this for "
                          "a second declaration of that id; run the command again")
    if key not in _CHECKED:
        before = [[p, list(i)] for p, i in LOADED]
        parsed = parse_elsewhere(path, imports, before) if parse_elsewhere is not None \
            else None
        try:
            _check_parsed(path, *(parsed if parsed is not None
                                  else _parse_in_child(path, imports, before)))
        except SchemaError as e:
            e = _with_first_declaration(e, new)
            if stale and os.path.normpath(e.path) not in {os.path.normpath(f) for f in new}:
                # what failed is a file read before, as the child reads it now
                changed = next(iter(stale))
                e = SchemaError(e.path, e.line, f"{e.reason} (read again before {path}: "
                                f"{changed}, which this process read earlier, has changed "
                                "or is gone since; run the command again)")
            raise e from None
        _CHECKED[key] = None
    # a file changed while the child checked it is not what the child checked
    for file, snap in new.items():
        if _signature(file) != snap[0]:
            raise SchemaError(file, None, "changed while it was being checked (the parser "
                              "checks a schema, and what it imports, before this process "
                              "reads it); run the command again")
    module = capnp.load(path, imports=imports)
    _PARSED.update(new)
    _MODULES.setdefault(path, module)
    if (path, tuple(imports)) not in LOADED:
        LOADED.append((path, tuple(imports)))
    _remember(file for file, _, _ in read)
    return module


def _with_first_declaration(e: SchemaError, new: dict) -> SchemaError:
    """`e`, if the parser's "Duplicate ID @0x...", told which file declared that id
    first (the parser names only the second: a copy of wsuper's own probe.capnp
    differing by a byte was "x.capnp:1: Duplicate ID @0xc6a1d2b3e4f50617.")."""
    m = re.fullmatch(r"Duplicate ID @0x([0-9a-fA-F]{1,16})\.?", e.reason)
    if m is None:
        return e
    id_ = int(m.group(1), 16)
    here = os.path.normpath(e.path)
    first = next((f for f, snap in (*_PARSED.items(), *new.items())
                  if id_ in snap[2] and os.path.normpath(f) != here), None)
    if first is None:
        for file, module in _MODULES.items():
            if file != here and _declares(module, id_):
                first = file
                break
    if first is None:
        return e
    own = " (one of wsuper's own schemas)" if first in _BUILTIN_FILES.values() else ""
    return SchemaError(e.path, e.line, f"{e.reason} {first}{own} declares that id "
                       "already: an id is one declaration, and a copy of a schema keeps its "
                       "ids (give it new ones: `capnp id` makes one)")


def _declares(module, id_: int) -> bool:
    """Whether the loaded schema `module` declares a node of id `id_` (at any depth;
    walked on a stack of its own, as nested_interfaces)."""
    if module.schema.node.id == id_:
        return True
    stack = [module]
    while stack:
        obj = stack.pop()
        schema = getattr(obj, "schema", None)
        if schema is None:
            continue
        for nested in schema.node.nestedNodes:
            if nested.id == id_:
                return True
            stack.append(getattr(obj, nested.name, None))
    return False


def _not_a_builtin_copy(file: str, st, by: str, line) -> None:
    """SchemaError at `by`:`line` if the file it imports, `file` (`st` its stat), is a
    copy of one of our own schemas (other than that file itself): every process
    loaded ours first, and the parser would read the copy as a second file
    declaring its ids ("Duplicate ID @0x...", naming neither).  A copy *listed* is
    that schema (_builtin_copy); an imported one cannot be: the parser reads it."""
    import hashlib
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES)
    except FileProblem:
        return                              # the parser says why
    original = _BUILTIN_FILES.get(hashlib.sha256(data).digest())
    if original is None or _same_file(original, st):
        return
    base = next(d for d in IMPORT_PATH
                if os.path.commonpath([original, os.path.normpath(d)]) == os.path.normpath(d))
    name = "/" + os.path.relpath(original, base)
    raise SchemaError(by, line, f"imports {file}, a copy of wsuper's own "
                      f"{os.path.basename(original)} ({original}), read already: the parser "
                      "would read the copy as a second file declaring the same ids; import "
                      f"wsuper's own as \"{name}\" (with no file of that name in the "
                      "schema's directory, which is looked in first)")


def _builtin_copy(path: str):
    """Our own schema's module if the file `path` holds exactly its bytes, else None."""
    import hashlib
    try:
        data = read_regular(path, MAX_SCHEMA_BYTES)
    except FileProblem:
        return None     # what load() does next says why
    return _BUILTIN_COPIES.get(hashlib.sha256(data).digest())


#: Bytes of address space a child that checks a schema may map beyond what it had
#: when it began (its interpreter): a schema file is small, but what the parser
#: makes of it need not be, and the check runs so that what loads the schema after
#: it (the supervisor) does not have to find out.
PARSE_MEMORY = 2 << 30

#: What a child that checks a schema runs first, before it reads any file: its
#: memory bounded (never above a hard limit in force).
PARSE_BOUND = """if True:
    import resource
    with open("/proc/self/statm", "rb") as f:
        _mapped = int(f.read().split()[0]) * resource.getpagesize()
    _soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    _want = _mapped + %d
    if _hard != resource.RLIM_INFINITY:
        _want = min(_want, _hard)
    resource.setrlimit(resource.RLIMIT_AS, (_want, _hard))
""" % PARSE_MEMORY

#: What it runs then: the files loaded before it, then it.
PARSE_AFTER = """if True:
    import capnp
    capnp.remove_import_hook()
    def parse(path, imports, before):
        for p, i in before:
            capnp.load(p, imports=i)
        capnp.load(path, imports=imports)
"""


def _parse_in_child(path: str, imports: list, before=()) -> tuple[int, str]:
    """(exit code, stderr) of a new interpreter that parsed the files `before`,
    then this one."""
    import json
    import subprocess
    import sys
    code = PARSE_BOUND + PARSE_AFTER + "\nimport json, sys\nparse(*json.loads(sys.argv[1]))\n"
    try:
        r = subprocess.run([sys.executable, "-I", "-c", code,
                            json.dumps([path, list(imports), [list(b) for b in before]])],
                           capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SchemaError(path, None, f"cannot check the schema: {e}") from None
    return r.returncode, r.stderr


def _check_parsed(path: str, returncode: int, text: str):
    """Nothing if the parser ended well (`returncode` 0), else SchemaError from what
    it printed."""
    if returncode == 0:
        return
    # "FILE:LINE[:COL]: failed: REASON", after "what():" or on a line of its own; a
    # file imported need not end in .capnp (`import "b.schema"`: its error was shown
    # as the parser printed it, its line counted from 0); the library's own sources
    # (kj/...c++) are no place in a schema
    found = [m for m in (_PARSER_ERROR.search(line) for line in text.splitlines()) if m]
    m = next((m for m in found if not _library_source(m.group(1))), found[0] if found else None)
    if m:
        where, reason = m.group(1), m.group(3).strip()[:500]
        if _library_source(where):
            # an error of the library itself ("kj/filesystem-disk-unix.c++:NNN"):
            # its source line means nothing to whoever wrote the schema
            raise SchemaError(path, None, reason)
        if not os.path.isabs(where):
            where = os.path.join(os.path.dirname(path), where)
        # the parser counts lines from 0
        raise SchemaError(os.path.normpath(where), int(m.group(2)) + 1, reason)
    if returncode < 0:
        # killed by a signal, having printed nothing that says where: the parser
        # recurses on what a schema nests (3,000 List(List(...)) overflow its stack)
        import signal
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if "std::bad_alloc" in text or "Cannot allocate memory" in text:
            raise SchemaError(path, None, f"the schema parser ran out of memory reading it, "
                              f"or a file it reads (it may map {PARSE_MEMORY >> 20} MiB)")
        raise SchemaError(path, None, f"the schema parser crashed ({name}) reading it, or a "
                          "file it reads: a type nested thousands deep (List(List(...))) "
                          "does that")
    last = [l for l in text.strip().splitlines() if l.strip()]
    raise SchemaError(path, None, last[-1] if last else
                      f"the schema parser failed (exit {returncode})")


_PARSER_ERROR = re.compile(r"(?:what\(\):\s*)?(\S.*?):(\d+)(?::\d+)?: (?:failed|error): (.*)")


def _library_source(where: str) -> bool:
    """Whether a parser's error names a source file of the library itself."""
    return where.endswith((".c++", ".h", ".cc", ".cpp"))


def interfaces(module) -> dict:
    """Every top-level interface declared in a loaded schema module, by name."""
    found = {}
    for node in module.schema.node.nestedNodes:
        child = getattr(module, node.name, None)
        if child is not None and hasattr(child, "schema") \
                and child.schema.node.which() == "interface":
            found[node.name] = child
    return found


def nested_interfaces(module) -> dict:
    """Every interface declared inside another declaration of a loaded schema module
    (`Calc.Inner`, `S.Callback`, at any depth), by its qualified name: an allow
    list names them so.  Walked on a stack of its own (a schema may nest deep)."""
    found = {}
    stack = [(node.name, getattr(module, node.name, None))
             for node in reversed(module.schema.node.nestedNodes)]
    while stack:
        name, child = stack.pop()
        schema = getattr(child, "schema", None)
        if schema is None:
            continue
        if "." in name and schema.node.which() == "interface":
            found[name] = child
        for node in reversed(schema.node.nestedNodes):
            stack.append((f"{name}.{node.name}", getattr(child, node.name, None)))
    return found
