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

rpc = capnp.load(os.path.join(_CAPNP_DIR, "rpc.capnp"), imports=IMPORT_PATH)
engine = capnp.load(os.path.join(HERE, "engine.capnp"), imports=IMPORT_PATH)
host = capnp.load(os.path.join(HERE, "host.capnp"), imports=IMPORT_PATH)
probe = capnp.load(os.path.join(HERE, "probe.capnp"), imports=IMPORT_PATH)


class SchemaError(Exception):
    """A schema file that does not parse.  `path` and `line` say where (line may be None)."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


_CHECKED: dict[tuple, None] = {}

#: Where a schema is parsed before it is loaded here: `parse_elsewhere(path,
#: imports)` -> (exit code, what the parser printed) of a process that parsed it,
#: or None (then a new interpreter does).  `wsuper up` points it at the zygote,
#: which parses it in a child of its own (supervisor/launch.py): ~5 ms, against
#: ~100 ms for a new interpreter.
parse_elsewhere = None


def load(path: str, extra_imports=()):
    """Load a user schema file (import path: its own directory, then ours).

    pycapnp's parser *aborts the process* on some errors (a syntax error, a file
    without an @0x... id): so a schema is first parsed in a child process, and a
    failure there becomes a SchemaError naming the file and line.  Once a file
    (with its size and time) has parsed, it is loaded here directly."""
    path = os.path.abspath(path)
    imports = [os.path.dirname(path), *extra_imports, *IMPORT_PATH]
    try:
        st = os.stat(path)
    except OSError as e:
        raise SchemaError(path, None, e.strerror or str(e)) from None
    key = (path, st.st_mtime_ns, st.st_size, tuple(imports))
    if key not in _CHECKED:
        parsed = parse_elsewhere(path, imports) if parse_elsewhere is not None else None
        _check_parsed(path, *(parsed if parsed is not None else _parse_in_child(path, imports)))
        _CHECKED[key] = None
    return capnp.load(path, imports=imports)


def _parse_in_child(path: str, imports: list) -> tuple[int, str]:
    """(exit code, stderr) of a new interpreter that parsed the file."""
    import subprocess
    import sys
    code = ("import sys, capnp; capnp.remove_import_hook(); "
            "capnp.load(sys.argv[1], imports=sys.argv[2:])")
    try:
        r = subprocess.run([sys.executable, "-I", "-c", code, path, *imports],
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
