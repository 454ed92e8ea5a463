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
import time
from importlib.util import find_spec

HERE = os.path.dirname(os.path.abspath(__file__))
#: pycapnp's own directory (its rpc.capnp, c++.capnp), found without importing it:
#: pycapnp (and the asyncio it imports) is imported, and wsuper's own schemas
#: loaded, when first needed (__getattr__ below), so that a command that only
#: reads a system file or talks to a running system (`status`, `stop`, `logs`)
#: does not take ~0.15 s to start for them
_CAPNP_DIR = find_spec("capnp").submodule_search_locations[0]
# rpc.capnp imports "/capnp/c++.capnp": the package's parent must be on the path.
IMPORT_PATH = [os.path.dirname(_CAPNP_DIR), HERE]


def parser_imports(dirs) -> list[bytes]:
    """Import directories as every pycapnp parser here must be given them: as bytes.
    Given text, pycapnp hands the C++ parser the UTF-8 bytes of each with a length
    counted in *characters*: a directory whose name is not ASCII (`/home/josé`) was
    cut short by a byte for each such letter, and an absolute import looked for
    there failed, for wsuper's own schemas (installed beneath such a directory)
    with an abort of the process as it imported this module."""
    return [os.fsencode(d) for d in dirs]

#: pycapnp's parser keeps every file it parsed, by name, and *aborts the process*
#: (SIGABRT, no exception) on some files: a syntax error, a file without an id,
#: an id two of its files declare.  So no parser here ever reads a schema the
#: operator's files hold: load() copies what a schema reads (it, and all it
#: imports and embeds) into a private directory of this process, as it read them
#: once; a child parses that copy first (an abort there is an answer); then a
#: parser of its own, new for that copy, parses the same bytes here.  What was
#: checked is what is parsed (a file rewritten meanwhile is not read again), and
#: no file this process parsed before, as it was then, is in that parser's table.
_MIRROR: list = []              # [the private directory, the pid that made it,
#                                  the descriptor of its lock]
_PARSERS: list = []             # each parser that parsed a copy: its modules need it

#: id -> the file that declares it, for every schema file loaded in this process:
#: the ids written in each file read (`@0x...`), and those of every declaration of
#: a file loaded (written, or derived from its parent's).  An id is one
#: declaration: load() refuses a file declaring one another file declares.
_IDS: dict[int, str] = {}
#: file -> (sha256 of its bytes as read, the ids it declares): _IDS the other way.
_DECLARED: dict[str, tuple[bytes, frozenset]] = {}


#: sha256 of each of our own schema files' bytes -> the module loaded from it.  A
#: copy of one (probe.capnp in the project of an analysis compartment, or the
#: checkout's beside a wsuper installed with `pip install .`, or one reached
#: through a symbolic link) declares the ids of the file loaded here already:
#: load() gives the copy this module.
_BUILTIN_COPIES: dict[bytes, object] = {}
#: sha256 of each of our own schema files' bytes -> its file: a copy that a user
#: schema *imports* would be a file of its own declaring that file's ids again:
#: load() refuses it, naming both.
_BUILTIN_FILES: dict[bytes, str] = {}

#: (device, inode) -> the name each schema file loaded in this process (and every
#: file it imports) was read under: one file under two names (a symbolic or hard
#: link) would be two files declaring the same ids: load() refuses a second
#: name, naming the first.
_NAMES: dict[tuple, str] = {}

# an id written in schema text, outside comments and strings (`@0x...`); what is
# below 2**63 is no id (the parser refuses such ids) but an ordinal (`@0x1`)
_WRITTEN = re.compile(rb'#[^\n]*|"(?:[^"\\\n]|\\.?)*(?:"|(?=\n)|\Z)|@0x([0-9a-fA-F]{1,16})\b')


def _written_ids(data: bytes) -> dict[int, int]:
    """id -> the line it is first written on, of each id written in schema text."""
    out, line, counted = {}, 1, 0
    for m in _WRITTEN.finditer(data):
        if m.group(1) is None:
            continue
        id_ = int(m.group(1), 16)
        if id_ >> 63:
            line, counted = line + data.count(b"\n", counted, m.start()), m.start()
            out.setdefault(id_, line)
    return out


def _derived_ids(module) -> set[int]:
    """The ids of a loaded module's file and of every declaration in it, at any
    depth (walked on a stack of its own, as nested_interfaces)."""
    ids, stack = {module.schema.node.id}, [module]
    while stack:
        obj = stack.pop()
        schema = getattr(obj, "schema", None)
        if schema is None:
            continue
        for nested in schema.node.nestedNodes:
            ids.add(nested.id)
            stack.append(getattr(obj, nested.name, None))
    return ids


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


def _capnp():
    """pycapnp, imported (and its import hook, which would load `x_capnp` modules
    from any `x.capnp` on sys.path, removed) when first needed."""
    import capnp
    if not _HOOK_REMOVED:
        capnp.remove_import_hook()
        _HOOK_REMOVED.append(True)
    return capnp


_HOOK_REMOVED: list = []


def _builtin(path: str):
    import hashlib
    module = _capnp().load(path, imports=parser_imports(IMPORT_PATH))
    read, contents = [], {}
    closure(path, IMPORT_PATH, read, contents)
    digests = {f: hashlib.sha256(d).digest() for f, d in contents.items()}
    _BUILTIN_COPIES[digests[path]] = module
    _BUILTIN_FILES[digests[path]] = os.path.normpath(path)
    _remember([os.path.normpath(path)])
    _BUILTIN_READS.update(f for f, _, _ in read)
    _claim(path, read, contents, digests, module)
    return module





class SchemaError(Exception):
    """A schema file that does not parse.  `path` and `line` say where (line may be None)."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


#: (schema, import path, (file, sha256) of each file it reads) -> (the module
#: loaded from exactly those bytes, {file it imports: its module}): each is
#: checked and parsed once.
_CHECKED: dict[tuple, object] = {}

#: schema path -> {file it imports: that file's module}, as its last load() parsed
#: them (imported(): the interfaces declared there are reached through grants too)
_IMPORTED: dict[str, dict] = {}
#: schema path -> the files of the import path it imports (imported() loads them)
_IMPORTED_OWN: dict[str, list] = {}

#: bytes of one schema file, or of a file a schema imports or embeds
MAX_SCHEMA_BYTES = 16 << 20
#: files in one schema's closure (it, and all it imports and embeds)
MAX_SCHEMA_FILES = 1000
#: bytes of all the files in one schema's closure together: load() holds them all
#: at once (and copies them to disk, _parse_copy), and 1,000 files of 16 MiB each
#: (sparse files cost their maker nothing) would be 16 GiB of the supervisor's
#: memory and of its temporary directory's
MAX_SCHEMA_TOTAL_BYTES = 64 << 20

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


def closure(path: str, import_path=(), parsed: list | None = None,
            contents: dict | None = None) -> list[tuple[str, str | None, int | None]]:
    """Every file `path` (a schema) reads when it is parsed: [(file, the schema that
    names it, line)], itself first.  A reference is `import "NAME"` or `embed
    "NAME"`: relative to the naming file's directory, or, with a leading "/",
    beneath each directory of `import_path` (the first that has it), as the
    Cap'n Proto compiler resolves them.  Each file must be a regular file of at
    most MAX_SCHEMA_BYTES (the parser would wait for ever on a FIFO and read
    /dev/zero to the end): SchemaError names the one that is not, and where it
    is named.  The files read hold at most MAX_SCHEMA_TOTAL_BYTES together:
    SchemaError names the one that goes past that, and where it is named.  A
    name found nowhere is left to the parser, which says so.

    A relative name may not lead above the directory its file was found beneath
    (the schema's own, or the import path's directory an absolute name was found
    in): the parser refuses that, and said only "expected parts.size() > 0 [0 >
    0]; can't use ".." to break out of starting directory", naming the schema
    and not the file or line; SchemaError names them.

    `parsed`, if given, is appended the (file, by, line) of each file the parser
    parses (the schema and what it imports, each time it is imported, under each
    name; not what it embeds).  `contents`, if given, gets file -> the bytes read
    of each file (what it embeds too): what was scanned is what load() parses."""
    from collections import deque
    path = os.path.abspath(path)
    out, seen, todo = [], set(), deque([(path, None, None, os.path.dirname(path))])
    # a file may name one file a million times (and an absolute name is looked
    # for in each import directory): each (kind, file, directory) is looked at
    # once, with where it is named first (it was a second a thousand names)
    done, absolute = set(), {}
    total = [0]

    def spent(data, by, line, file, kind="imports"):
        total[0] += len(data or b"")
        if total[0] > MAX_SCHEMA_TOTAL_BYTES:
            raise SchemaError(by or file, line, f"{kind} {file}, which brings the files {path} "
                              f"reads past {MAX_SCHEMA_TOTAL_BYTES:,} bytes together "
                              "(the most one schema may read)")
        return data

    while todo:
        file, by, line, root = todo.popleft()
        if parsed is not None:
            parsed.append((file, by, line))     # each name it is imported by
        if os.path.realpath(file) in seen:
            continue
        seen.add(os.path.realpath(file))
        if len(seen) > MAX_SCHEMA_FILES:
            raise SchemaError(by, line, f"reads more than {MAX_SCHEMA_FILES} schema files")
        data = spent(_read_schema_file(file, by, line), by, line, file)
        if contents is not None:
            contents[file] = data
        text = data.decode("utf-8", "replace")
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
                key = os.path.normpath(name.lstrip("/"))
                if key not in absolute:
                    absolute[key] = next(((c, d) for c, d in (
                        (os.path.normpath(os.path.join(d, key)), d)
                        for d in import_path) if os.path.lexists(c)), (None, None))
                found, base = absolute[key]
            else:
                found, base = os.path.normpath(os.path.join(os.path.dirname(file), name)), root
                if os.path.commonpath([found, root]) != root:
                    raise SchemaError(file, at, f"{m.group(1)} {_shown(name)} leads above "
                                      f"{root}, the directory the parser reads it beneath: "
                                      "it reads nothing outside that directory")
            if (m.group(1), found, base) in done:
                continue
            done.add((m.group(1), found, base))
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
                data = spent(_read_schema_file(found, file, at, embedded=True,
                                               kind_only=contents is None), file, at, found,
                             "embeds")
                if contents is not None:
                    contents[found] = data
                out.append((found, file, at))
    return out


def _shown(name: str) -> str:
    from .text import printable
    return printable(name[:200])


def _read_schema_file(file, by, line, embedded=False, kind_only=False) -> bytes | None:
    """A schema file's bytes (None if `kind_only`: only its kind and size are
    checked); `embedded` says it is named by `embed`;
    SchemaError (at `by`:`line`, where it is named) if it is no regular file
    of at most MAX_SCHEMA_BYTES, or cannot be read."""
    what = "embeds" if embedded else "imports"
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES, read=not kind_only)
    except FileProblem as e:
        if by is None:
            raise SchemaError(file, None, f"cannot read it: {e.strerror}" if e.strerror
                              else f"{file} {e}") from None
        raise SchemaError(by, line, f"{what} {file}, which " + (
            f"cannot be read: {e.strerror}" if e.strerror else str(e))) from None
    return data


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
#: imports, before)` -> (exit code, what the parser printed) of a process whose
#: new parser parsed the files `before` ([path, import path] pairs; load() gives
#: none: its parser is new for each copy) and then it, or None (then a new
#: interpreter does).  `wsuper up` points it at the zygote,
#: which parses it in a child of its own (supervisor/launch.py): ~5 ms, against
#: ~100 ms for a new interpreter.
parse_elsewhere = None


def import_path(path: str, extra_imports=()) -> list[str]:
    """Where an absolute import in the schema file `path` is looked for."""
    return [os.path.dirname(os.path.abspath(path)), *extra_imports, *IMPORT_PATH]


#: schema path -> fingerprint of what this process last loaded from it (load)
_FINGERPRINTS: dict[str, str] = {}


def fingerprint(path: str) -> str | None:
    """A digest of the bytes of the schema at `path` and of every file it reads
    (imports, embeds), as this process last loaded them (None: never loaded).  The
    same digest, the same declarations: `wsuper call` compares the running system's
    (taken at `wsuper up`) with the one it loaded, and a schema changed since up
    would have its parameters written in a layout the running system does not read."""
    return _FINGERPRINTS.get(os.path.abspath(path))


def load(path: str, extra_imports=()):
    """Load a user schema file (import path: its own directory, then ours).

    pycapnp's parser *aborts the process* on some errors (a syntax error, a file
    without an @0x... id, an id two of its files declare): so what the schema
    reads is copied, as read once, into a private directory (_mirror), a child
    parses that copy first, and a failure there becomes a SchemaError naming the
    file and line; then a parser of its own parses the same copy here.  The same
    bytes (the schema and all it reads) are checked and parsed once."""
    import hashlib
    _builtins()                 # theirs are the first ids claimed
    path = os.path.abspath(path)
    if not path.endswith(".capnp"):
        # the parser's own refusal was a Python exception's text, after a child
        raise SchemaError(path, None, "a schema file's name must end in .capnp (the Cap'n "
                          "Proto parser takes no other; a file it imports may have any name)")
    imports = import_path(path, extra_imports)
    read: list = []
    contents: dict = {}
    closure(path, imports, read, contents)  # no FIFO, device or huge file among them
    for file, by, line in read:
        # the parser takes a file's name as UTF-8 text: one that is not (a directory
        # named in another encoding) failed in the child parser as "UnicodeEncodeError:
        # 'utf-8' codec can't encode character '\udcff' in position 51: surrogates not
        # allowed", which said neither what nor what to do
        try:
            file.encode("utf-8")
        except UnicodeEncodeError:
            from .text import quoted
            what = f"it reads {quoted(file)}, whose path" if by else "its path"
            raise SchemaError(by or file, line if by else None,
                              f"{what} is not UTF-8, which the Cap'n Proto parser needs: "
                              f"rename the directory (or file) whose name is not") from None
    # each file's bytes hashed once: what is a copy of ours, what is checked
    # already, what a generation holds, what a file declared as read
    digests = {f: hashlib.sha256(d).digest() for f, d in contents.items()}
    # what was parsed, as one value (fingerprint): the bytes of the schema and of all
    # it reads, in the order read
    _FINGERPRINTS[path] = hashlib.sha256(b"".join(digests.values())).hexdigest()
    copy = _BUILTIN_COPIES.get(digests[path])
    if copy is not None:
        _IMPORTED[path] = {}
        _IMPORTED_OWN[path] = []
        return copy
    _one_name_each(read, contents, digests)
    key = (path, tuple(imports), tuple(digests.items()))
    # each file it imports is loaded whole too (a parser compiles of an imported
    # file only what the schema uses): the ids of all its declarations, written
    # or derived, are its (an id is one declaration); not our own files
    imported = list(dict.fromkeys(
        f for f, by, _ in read if by is not None and f in contents and f != path
        and not any(os.path.commonpath([f, d]) == d for d in IMPORT_PATH)))
    checked = _CHECKED.get(key)
    if checked is None:
        checked = _parse_copy(path, imports, contents, digests, imported)
    module, modules = checked
    _claim(path, read, contents, digests, module, modules)
    _CHECKED[key] = checked
    _IMPORTED[path] = dict(modules)
    # the files it imports from the import path (capnp's persistent.capnp, our own
    # engine.capnp ...): not loaded whole above, and so, but for imported(), never
    # named to an allow list
    _IMPORTED_OWN[path] = list(dict.fromkeys(
        f for f, by, _ in read if by is not None and f in contents and f != path
        and f not in modules))
    _remember(file for file, _, _ in read)
    return module


def imported(path: str) -> dict:
    """{file: its module} of each file the schema at `path` imports, directly or
    not, as its last load() parsed them: what they declare is reached through a
    grant of the schema's interfaces like anything the schema declares (a method
    returning `import "lib.capnp".Counter`).  The files of the import path among
    them too (`import "/capnp/persistent.capnp".Persistent`, our own
    `"/engine.capnp".Engine`), each loaded whole as load() loads a schema (ours
    as the copies this process holds): SchemaError if one cannot be."""
    path = os.path.abspath(path)
    found = dict(_IMPORTED.get(path, {}))
    for file in _IMPORTED_OWN.get(path, ()):
        if file.endswith(".capnp"):     # the only name the parser loads whole
            found[file] = load(file)
    return found


def _one_name_each(read: list, contents: dict, digests: dict) -> None:
    """SchemaError if a file the schema reads is one this process read under
    another name (a symbolic or hard link), or a copy of one of our own schemas."""
    names, stats, copies = dict(_NAMES), {}, set()
    for file, by, line in read:
        if file not in stats:
            try:
                stats[file] = os.stat(file)
            except OSError:
                stats[file] = None          # the parser says why
        st = stats[file]
        if st is None:
            continue
        other = names.setdefault((st.st_dev, st.st_ino), file)
        if other != file and not _same_file(other, st):
            other = names[(st.st_dev, st.st_ino)] = file
        if other != file:
            what = (f"is {other}" if by is None else f"imports {file}, which is {other}")
            raise SchemaError(by or file, line, f"{what} (the same file through a symbolic "
                              "or hard link), read already under that name: the parser "
                              "would read it as a second file declaring the same ids; "
                              "name it one way")
        if by is not None and file in contents and file not in copies:
            copies.add(file)                # each file once, however often imported
            _not_a_builtin_copy(file, digests[file], st, by, line)


def _mirror() -> str:
    """This process's private directory for the copies the parsers read (made on
    first use, 0700, removed at exit by the process that made it).  Made anew if
    it is no longer a directory of this user's that only it may enter (a cleaner
    of the temporary directory removed it, or another put something there):
    OSError if none can be made.  Beneath directories no other user may rename
    or replace an entry of (the temporary directory writable by others without
    the sticky bit, or another's: they could put a tree of their own in its
    place between the check and the parse): OSError if not.

    A process that ends without its exit handlers (SIGKILL, the zygote's and its
    children's os._exit) left its directory, with copies of the schemas, in the
    temporary directory: each holds a lock on a file in it while a process that
    made it, or a fork of one, lives, and making a directory removes this user's
    others that no process holds (_sweep_mirrors)."""
    if not _MIRROR or _MIRROR[1] != os.getpid() or not _private_dir(_MIRROR[0]):
        import atexit
        import shutil
        import tempfile
        made, pid = os.path.realpath(tempfile.mkdtemp(prefix=MIRROR_PREFIX)), os.getpid()
        other = _open_to_others(os.path.dirname(made))
        if other is not None:
            shutil.rmtree(made, ignore_errors=True)
            import errno
            raise OSError(errno.EPERM, f"{other} (above the private directory it is copied "
                          "to, in TMPDIR) may be changed by another user: set TMPDIR to a "
                          "directory only you, or root, may change")
        if len(_MIRROR) > 2 and _MIRROR[1] == pid:
            os.close(_MIRROR[2])       # this process's, of one removed meanwhile
        # (a fork that makes its own keeps its parent's descriptor, if it did not close
        # it: its number may be another's now; the parent's then stays until both end)
        _MIRROR[:] = [made, pid, _hold(made)]
        _GENERATION.clear()
        atexit.register(lambda: os.getpid() == pid and shutil.rmtree(made, ignore_errors=True))
        _sweep_mirrors(os.path.dirname(made), made)
    return _MIRROR[0]


#: The names of the private directories the parsers' copies lie in.
MIRROR_PREFIX = "wsuper-schemas-"
#: The file each holds a lock on (flock) while a process that made it lives.
MIRROR_HELD = ".held"
#: Seconds a directory is left after its last change though no lock is held on it
#: (one just made, whose maker has not taken the lock yet).
MIRROR_GRACE = 60


def _hold(made: str) -> int:
    """The descriptor of the lock held on `made` for as long as this process, or a
    fork that keeps the descriptor, lives (close-on-exec: a program run is not it)."""
    import fcntl
    fd = os.open(os.path.join(made, MIRROR_HELD), os.O_RDONLY | os.O_CREAT | os.O_EXCL
                 | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _sweep_mirrors(top: str, mine: str):
    """Remove, from the directory `top`, the parsers' directories of this user's
    that no process holds any more (their makers ended without their exit
    handlers) and that have not changed for MIRROR_GRACE seconds.  Never one of
    another user's, a link, one another may enter, nor one whose lock is held;
    nothing it cannot look at stops anything."""
    import fcntl
    import shutil
    now = time.time()
    try:
        entries = [e for e in os.scandir(top) if e.name.startswith(MIRROR_PREFIX)]
    except OSError:
        return
    for entry in entries:
        path = os.path.join(top, entry.name)
        if path == mine:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not _private(st) or now - st.st_mtime < MIRROR_GRACE:
            continue
        try:
            fd = os.open(os.path.join(path, MIRROR_HELD), os.O_RDONLY | os.O_NOFOLLOW
                         | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:      # one of a wsuper before the locks: a day old
            if now - st.st_mtime < 86400:
                continue
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held: alive
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)


def _open_to_others(path: str) -> str | None:
    """The first of `path` (a real path) and the directories above it in which
    another user may rename or replace an entry: one of another's (not root's),
    or writable by its group or others without the sticky bit; None if none."""
    import stat
    while True:
        st = os.stat(path)
        if st.st_uid not in (0, os.geteuid()) or (
                st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            return path
        if path == os.path.dirname(path):
            return None
        path = os.path.dirname(path)


def _private_dir(path: str) -> bool:
    """Whether `path` is a directory (not a link to one) of this user's that no
    other may enter or change."""
    try:
        return _private(os.lstat(path))
    except OSError:
        return False


def _private(st: os.stat_result) -> bool:
    """_private_dir of what lstat() said of a path."""
    import stat
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


#: Schemas one parser parses at most: the child that checks a schema parses the
#: ones its parser parsed before first (what a parser holds is part of what it
#: would abort on), so this bounds each check's work.
GENERATION_SCHEMAS = 64


class _Generation:
    """One parser of this process and the private directory its copies lie in:
    each file at its own path beneath `top`, written once, never changed.  A
    schema joins a generation if every file it reads is either not there yet or
    there with the same bytes; a parser reads each of its files once, so the
    files many schemas share cost it one read and one descriptor."""

    def __init__(self):
        import tempfile
        self.mirror = _mirror()
        self.top = tempfile.mkdtemp(dir=self.mirror)
        self.parser = None
        self.dirs: list = []                   # the import path of the last copy
        self.files: dict[str, bytes] = {}      # file -> sha256 of the bytes copied
        self.roots: list[list] = []            # [copy, import path] parsed, in order

    def fits(self, digests: dict) -> bool:
        return self.mirror == _mirror() and len(self.roots) < GENERATION_SCHEMAS and all(
            self.files.get(f, d) == d for f, d in digests.items())

    def copy(self, contents: dict, digests: dict, imports: list) -> list:
        """Write what is not here yet; the copy's import path for `imports`."""
        for file, data in contents.items():
            if file in self.files:
                continue
            copy = self.top + file
            os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o400)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self.files[file] = digests[file]
        # our own directories are read where they are (wsuper's own files, as its
        # code; a method `-> stream` imports /capnp/stream.capnp without naming it)
        dirs = [d if d in IMPORT_PATH else self.top + d for d in imports]
        for d in dirs:
            os.makedirs(d, mode=0o700, exist_ok=True)
        return dirs

    def check(self, path: str, where: str, dirs: list, after: list) -> tuple[int, str]:
        """(exit code, what it printed, this generation's directory taken out) of a
        child that parsed this generation's schemas, then `where`, then the files
        `after` (what it imports, loaded whole), in one parser."""
        before = [list(r) for r in self.roots]
        parsed = parse_elsewhere(where, dirs, before, after) \
            if parse_elsewhere is not None else None
        returncode, text = parsed if parsed is not None else \
            _parse_in_child(where, dirs, before, after, shown=path)
        return returncode, text.replace(self.top, "")

    def remove(self) -> None:
        import shutil
        shutil.rmtree(self.top, ignore_errors=True)


#: [the generation new schemas join]; those before it stay (their modules need
#: their parsers) in _PARSERS.
_GENERATION: list = []


def _parse_copy(path: str, imports: list, contents: dict, digests: dict, imported=()):
    """(the module a parser of this process makes of `contents` (file -> bytes:
    `path` and all it reads), {file: its module} for each of `imported` (files
    `path` imports, loaded whole after it)), copied beneath a generation's
    directory at their own paths, once a child has parsed that copy, after what
    that parser parsed before, and those files: SchemaError if it failed there.
    `digests`: file -> sha256 of its bytes in `contents`."""

    def new() -> _Generation:
        gen = None
        try:
            gen = _Generation()
            gen.dirs = gen.copy(contents, digests, imports)
        except OSError as e:
            if gen is not None:
                gen.remove()
            raise SchemaError(path, None, f"cannot copy it to check it: {e.strerror or e}"
                              ) from None
        return gen
    try:
        gen = _GENERATION[0] if _GENERATION and _GENERATION[0].fits(digests) else None
    except OSError:
        gen = None                          # no private directory: new() says why
    fresh = gen is None
    if fresh:
        gen = new()
    else:
        try:
            gen.dirs = gen.copy(contents, digests, imports)
        except OSError as e:
            raise SchemaError(path, None, f"cannot copy it to check it: {e.strerror or e}"
                              ) from None
    where, dirs = gen.top + path, gen.dirs
    try:
        returncode, text = gen.check(path, where, dirs, [gen.top + f for f in imported])
        if returncode != 0 and not fresh:
            # what failed may be this parser's past (a file it read declares an id
            # of this one, as an older version of the same file does): a new parser
            gen, fresh = new(), True
            where, dirs = gen.top + path, gen.dirs
            returncode, text = gen.check(path, where, dirs, [gen.top + f for f in imported])
        _check_parsed(path, returncode, text, imports, contents)
    except SchemaError as e:
        if fresh:
            gen.remove()                    # no parser here reads it
        raise _with_first_declaration(e, contents) from None
    _fds_to_spare(path, len(contents) + len(dirs) + 4)
    if gen.parser is None:
        gen.parser = _capnp().SchemaParser()
        _PARSERS.append(gen.parser)
    module = load_whole(gen.parser, where, parser_imports(dirs))
    gen.roots.append([where, dirs])
    modules = {}
    for file in imported:
        modules[file] = load_whole(gen.parser, gen.top + file, parser_imports(dirs))
        if [gen.top + file, dirs] not in gen.roots:
            gen.roots.append([gen.top + file, dirs])
    if fresh:
        _GENERATION[:] = [gen]
    return module, modules


def _fds_to_spare(path: str, needed: int) -> None:
    """SchemaError, not a parser that cannot open its files (it may abort the
    process then), when this process has no room for `needed` more open files
    (and some to spare) within its limit: a parser holds a descriptor for each
    directory and file it reads, for good.  The soft limit is raised first."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:               # a descriptor numbered past the limit takes none of its places
        used = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    def near(soft):      # room for the files a parse opens, and the process's own
        return soft != resource.RLIM_INFINITY and \
            sum(fd < soft for fd in used) + needed + min(64, soft // 8) > soft
    if near(soft):
        want = hard if hard == resource.RLIM_INFINITY else \
            min(hard, max(soft * 2, len(used) + needed + 1024))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if near(soft):
        raise SchemaError(path, None, f"this process has {len(used)} files open, near its limit "
                          f"of {soft}, and a schema parser holds the files it reads open: "
                          "run the command again, or raise the limit (ulimit -n)")


def _claim(path: str, read: list, contents: dict, digests: dict, module, modules=None
           ) -> None:
    """Record the ids the files `read` declare (each file's written ids; for `path`,
    `module`'s too, derived ones included, and for each file of `modules` (file ->
    its module), that module's) as theirs; SchemaError, naming the first
    declaration, if another file declares one of them (as it is now)."""
    files = list(dict.fromkeys(f for f, _, _ in read if f in contents))
    written = {f: _written_ids(contents[f]) for f in files}
    mine = {f: set(written[f]) for f in files}
    mine[path] |= _derived_ids(module)
    for file, loaded in (modules or {}).items():
        if file in mine:
            mine[file] |= _derived_ids(loaded)
    for file in files:
        for id_ in sorted(mine[file], key=lambda i: written[file].get(i, 1 << 62)):
            first = _IDS.get(id_)
            if first is None or first == file or not _still_declares(first, id_):
                continue
            own = " (one of wsuper's own schemas)" if first in _BUILTIN_READS else ""
            raise SchemaError(file, written[file].get(id_), f"Duplicate ID @0x{id_:016x}. "
                              f"{first}{own} declares that id already: an id is one "
                              "declaration, and a copy of a schema keeps its ids (give it "
                              "new ones: `capnp id` makes one)")
    for file in files:
        digest = digests[file]
        old = _DECLARED.get(file)
        if old is not None:
            if old[0] == digest:
                mine[file] |= old[1]
            for id_ in old[1]:
                if _IDS.get(id_) == file:
                    del _IDS[id_]
        _DECLARED[file] = (digest, frozenset(mine[file]))
        for id_ in mine[file]:
            _IDS[id_] = file


#: every file our own schemas read (rpc.capnp's c++.capnp among them)
_BUILTIN_READS: set = set()


def _still_declares(file: str, id_: int) -> bool:
    """Whether `file`, which declared `id_` as this process read it, still does: as
    read then (or one of ours), or with that id written in it now.  A file changed
    or removed since gives up the ids it no longer declares."""
    import hashlib
    if file in _BUILTIN_READS:
        return True
    try:
        data = read_regular(file, MAX_SCHEMA_BYTES)
    except FileProblem:
        data = None
    known = _DECLARED.get(file)
    if data is not None and known is not None and hashlib.sha256(data).digest() == known[0]:
        return True
    if data is not None and id_ in _written_ids(data):
        return True
    _DECLARED.pop(file, None)
    for i in [i for i, f in _IDS.items() if f == file]:
        del _IDS[i]
    return False


def _with_first_declaration(e: SchemaError, contents: dict) -> SchemaError:
    """`e`, if the parser's "Duplicate ID @0x...", told which file declared that id
    first (the parser names only the second)."""
    m = re.fullmatch(r"Duplicate ID @0x([0-9a-fA-F]{1,16})\.?", e.reason)
    if m is None:
        return e
    id_ = int(m.group(1), 16)
    here = os.path.normpath(e.path)
    first = next((f for f, data in contents.items()
                  if os.path.normpath(f) != here and id_ in _written_ids(data)), None)
    if first is None:
        return e
    return SchemaError(e.path, e.line, f"{e.reason} {first} declares that id already: an "
                       "id is one declaration, and a copy of a schema keeps its ids (give "
                       "it new ones: `capnp id` makes one)")


def _not_a_builtin_copy(file: str, digest: bytes, st, by: str, line) -> None:
    """SchemaError at `by`:`line` if the file it imports, `file` (`digest` the sha256 of its
    bytes, `st` its stat), is a copy of one of our own schemas (other than that file
    itself): its ids are that schema's, and a copy *listed* is that schema
    (load()); an imported one cannot be: the parser reads it as a file of its own."""
    original = _BUILTIN_FILES.get(digest)
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

#: How a file is loaded whole (a schema, or a file it imports), by this process
#: and by the child that checks it first: `load_whole(parser, path, imports)`.
#: pycapnp's SchemaParser.load refuses a name that does not end in ".capnp" (a
#: check of its own: the C++ parser reads any name, and a schema may import
#: `"b.schema"`), and a file a schema imports is loaded whole under its own name
#: (a second name would be a second file declaring the same ids): so its name is
#: given as text that answers that check.  load() refuses a schema so named itself.
LOAD_WHOLE = """if True:
    class _AnyName(str):
        def endswith(self, suffix, *args):
            return suffix == ".capnp" or str.endswith(self, suffix, *args)
    def load_whole(parser, path, imports):
        return parser.load(_AnyName(path), display_name=os.path.basename(path),
                           imports=imports)
"""

#: What it runs then: a new parser (as load()'s), the files `before`, then it, then
#: each file of `after` (what it imports, loaded whole: load() takes the ids of
#: all their declarations, as this process does next).
PARSE_AFTER = """if True:
    import os
    import capnp
    capnp.remove_import_hook()
""" + LOAD_WHOLE + """if True:
    def parse(path, imports, before, after=()):
        # import directories as bytes (capnp_schemas.parser_imports: given as text,
        # one whose name is not ASCII is cut short)
        parser = capnp.SchemaParser()
        for p, i in before:
            load_whole(parser, p, [os.fsencode(d) for d in i])
        imports = [os.fsencode(d) for d in imports]
        load_whole(parser, path, imports)
        for p in after:
            load_whole(parser, p, imports)
"""

_WHOLE: dict = {"os": os}
exec(LOAD_WHOLE, _WHOLE)
load_whole = _WHOLE["load_whole"]


#: Seconds a child that checks a schema may take (wall clock).
PARSE_SECONDS = 60

#: Bytes of what it says (its stderr) kept; the rest is read and dropped.
PARSE_SAID = 1 << 20


def _parse_in_child(path: str, imports: list, before=(), after=(), shown: str | None = None
                    ) -> tuple[int, str]:
    """(exit code, stderr) of a child that parsed the files `before`, then this one,
    then the files `after` (`shown`: the name its error gives it, if not `path`):
    a fork of this process while it runs one thread (pycapnp is loaded here: a new
    interpreter's start and imports were ~0.12 s of each `wsuper check`), else a
    new interpreter.  Either way the parser, which aborts its process on some
    errors, never runs in this one."""
    args = [path, list(imports), [list(b) for b in before], *([list(after)] if after else [])]
    try:
        parsed = _parse_in_fork(args) if _one_thread() else None
        if parsed is not None:
            return parsed
        return _parse_in_interpreter(args)
    except (OSError, TimeoutError) as e:
        raise SchemaError(shown or path, None, f"cannot check the schema: "
                          f"{e.strerror if isinstance(e, OSError) and e.strerror else e}"
                          ) from None


def _one_thread() -> bool:
    """Whether this process runs one thread (any, not only Python's): only then may
    it fork a child that runs Python (a lock another thread held stays held)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _parse_in_interpreter(args: list) -> tuple[int, str]:
    import json
    import subprocess
    import sys
    code = PARSE_BOUND + PARSE_AFTER + "\nimport json, sys\nparse(*json.loads(sys.argv[1]))\n"
    try:
        r = subprocess.run([sys.executable, "-I", "-c", code, json.dumps(args)],
                           capture_output=True, text=True, timeout=PARSE_SECONDS, cwd="/")
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"it took more than {PARSE_SECONDS} s") from None
    return r.returncode, r.stderr


def _parse_in_fork(args: list) -> tuple[int, str] | None:
    """_parse_in_child in a fork: what a new interpreter would run (PARSE_BOUND,
    PARSE_AFTER), from "/", holding no descriptor but its stdin and stdout
    (/dev/null) and stderr (the answer), with no core file and no fault handler's
    dump.  None if there is no child to fork."""
    import select
    import signal
    import sys
    for stream in (sys.stdout, sys.stderr):      # not written twice, nor into the answer
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    r, w = os.pipe2(os.O_CLOEXEC)
    # no signal is taken from the fork until the child's dispositions are its own:
    # this process's Python handlers run there ran this process's code in the child
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(r)
        os.close(w)
        return None
    if pid == 0:                                  # pragma: no cover - the child
        code = 1
        try:
            import faulthandler
            import gc
            import resource
            import traceback
            # no collection of this process's garbage here: a finalizer of an object
            # of its (a file's, a socket's) would close a descriptor number the
            # parser has opened since, after the closerange below
            gc.disable()
            signal.set_wakeup_fd(-1)              # not this process's wake-ups
            faulthandler.disable()
            # each signal as a new interpreter has it (exec): a handler of this
            # process's (`up`'s StoppedAtStart for SIGTERM and SIGHUP, its wake-up
            # pipe's) is the default again, one ignored (`nohup`, SIGINT of a
            # script's background job) stays ignored
            for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    try:
                        signal.signal(sig, signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(r)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(w, 2)
            os.closerange(3, 1 << 30)       # it holds nothing of this process's, as a
            #                                 new interpreter would not (close_range(2))
            # what it says (a Python exception's traceback) goes to its descriptor 2,
            # as a new interpreter's does, not through this process's sys.stderr: a
            # StringIO of a program that loads schemas (pytest's capture), a stream
            # on a descriptor closed above, text of this process's not flushed yet.
            # Those streams are kept, never finalized here (their flush, their close)
            streams = (sys.stdout, sys.stderr)   # noqa: F841
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)
            _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
            os.chdir("/")
            exec(PARSE_BOUND, {})
            scope: dict = {}
            exec(PARSE_AFTER, scope)
            scope["parse"](*args)
            code = 0
        except BaseException:  # noqa: BLE001 - said, as an interpreter would say it
            try:
                traceback.print_exc()
            except BaseException:  # noqa: BLE001
                pass
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    said, kept, ended = [], 0, False
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        deadline = time.monotonic() + PARSE_SECONDS
        poller = select.poll()
        poller.register(r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError(f"it took more than {PARSE_SECONDS} s")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            if kept < PARSE_SAID:
                said.append(chunk[:PARSE_SAID - kept])
                kept += len(said[-1])
        ended = True
    finally:
        os.close(r)
        if not ended:
            # whatever ended the wait (its time up, Ctrl-C, `up`'s StoppedAtStart)
            # ends the child, as subprocess.run ends its: waited for as it was, the
            # command did not stop until the parse did (for ever, for one that hangs)
            os.kill(pid, signal.SIGKILL)
        _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(said).decode("utf-8", "replace")


def _check_parsed(path: str, returncode: int, text: str, roots=(), read=()):
    """Nothing if the parser ended well (`returncode` 0), else SchemaError from what
    it printed.  The parser names a file by its path beneath the directory it was
    found in: `path`'s own for `path` and what it imports by relative names, an
    import directory for a file imported by an absolute name (`/x/q.capnp` found
    in one of `roots`, the import path, is "x/q.capnp") and what that imports:
    the first of `roots` beneath which a file of `read` has that path is where
    it is; else `path`'s directory."""
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
            where = next((f for f in (os.path.normpath(os.path.join(r, where)) for r in roots)
                          if f in read), os.path.join(os.path.dirname(path), where))
        # the parser counts lines from 0
        where, line = os.path.normpath(where), int(m.group(2)) + 1
        if isinstance(read, dict) and isinstance(read.get(where), bytes):
            # a character past ASCII outside a string or a comment (a no-break or
            # zero-width space, a Cyrillic letter in a name) is named: "Parse
            # error." pointed at a line that looked right
            from .text import unseen_character
            # (a byte that is no UTF-8 kept as itself, as surrogateescape does: with
            # "replace" it was named U+FFFD, a character the file does not hold)
            lines = read[where].decode("utf-8", "surrogateescape").split("\n", line)
            if line <= len(lines):
                reason += unseen_character(lines[line - 1], None, "Cap'n Proto")
        raise SchemaError(where, line, reason)
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


#: The host capabilities: kind (as written in the system file) -> interface name in
#: host.capnp (probe.capnp's Probe).  hosted.py derives the rest from the schemas;
#: the kinds are here, so that reading a system file needs no schema loaded.
HOST_KINDS = {"log": "Log", "clock": "Clock", "random": "Random", "directory": "Directory",
              "file": "File", "environment": "Environment", "probe": "Probe"}

#: wsuper's own schemas, loaded (in this order) at the first use of any of them,
#: or at the first load(): `capnp_schemas.rpc`, `from capnp_schemas import host`.
BUILTINS = {"rpc": os.path.join(_CAPNP_DIR, "rpc.capnp"),
            "engine": os.path.join(HERE, "engine.capnp"),
            "host": os.path.join(HERE, "host.capnp"),
            "probe": os.path.join(HERE, "probe.capnp")}


def _builtins() -> None:
    if "probe" not in globals():
        for name, path in BUILTINS.items():
            if name not in globals():
                globals()[name] = _builtin(path)


def __getattr__(name: str):
    if name in BUILTINS:
        _builtins()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
