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


def _builtin(path: str):
    module = capnp.load(path, imports=IMPORT_PATH)
    LOADED.append((path, tuple(IMPORT_PATH)))
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

#: Where a schema is parsed before it is loaded here: `parse_elsewhere(path,
#: imports, before)` -> (exit code, what the parser printed) of a process that
#: parsed the files `before` ([path, import path] pairs, as LOADED) and then it,
#: or None (then a new interpreter does).  `wsuper up` points it at the zygote,
#: which parses it in a child of its own (supervisor/launch.py): ~5 ms, against
#: ~100 ms for a new interpreter.
parse_elsewhere = None


def load(path: str, extra_imports=()):
    """Load a user schema file (import path: its own directory, then ours).

    pycapnp's parser *aborts the process* on some errors (a syntax error, a file
    without an @0x... id, an id a file loaded before declared too): so a schema
    is first parsed in a child process, after the files this process loaded
    before it (LOADED), and a failure there becomes a SchemaError naming the
    file and line.  Once a file (with its size and time, after the same files)
    has parsed, it is loaded here directly."""
    path = os.path.abspath(path)
    imports = [os.path.dirname(path), *extra_imports, *IMPORT_PATH]
    try:
        st = os.stat(path)
    except OSError as e:
        raise SchemaError(path, None, e.strerror or str(e)) from None
    key = (path, st.st_mtime_ns, st.st_size, tuple(imports), tuple(LOADED))
    if key not in _CHECKED:
        before = [[p, list(i)] for p, i in LOADED]
        parsed = parse_elsewhere(path, imports, before) if parse_elsewhere is not None \
            else None
        _check_parsed(path, *(parsed if parsed is not None
                              else _parse_in_child(path, imports, before)))
        _CHECKED[key] = None
    module = capnp.load(path, imports=imports)
    if (path, tuple(imports)) not in LOADED:
        LOADED.append((path, tuple(imports)))
    return module


#: What a child that checks a schema runs: the files loaded before it, then it.
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
    code = PARSE_AFTER + "\nimport json, sys\nparse(*json.loads(sys.argv[1]))\n"
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
    import re
    if returncode == 0:
        return
    m = re.search(r"what\(\):\s*(.*?):(\d+)(?::\d+)?: (?:failed|error): (.*)", text) \
        or re.search(r"(\S+\.capnp):(\d+)(?::\d+)?: (?:failed|error): (.*)", text)
    if m:
        where = m.group(1)
        if not os.path.isabs(where):
            where = os.path.join(os.path.dirname(path), where)
        raise SchemaError(os.path.normpath(where), int(m.group(2)) or None,
                          m.group(3).strip().splitlines()[0])
    last = [l for l in text.strip().splitlines() if l.strip()]
    raise SchemaError(path, None, last[-1] if last else
                      f"the schema parser failed (exit {returncode})")


def interfaces(module) -> dict:
    """Every top-level interface declared in a loaded schema module, by name."""
    found = {}
    for node in module.schema.node.nestedNodes:
        child = getattr(module, node.name, None)
        if child is not None and hasattr(child, "schema") \
                and child.schema.node.which() == "interface":
            found[node.name] = child
    return found
