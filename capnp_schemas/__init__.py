"""Cap'n Proto schemas and the code that speaks them.

Layout:
  engine.capnp, host.capnp  the project's own interfaces (engine control, host
                            capabilities, the external gateway)
  wire.py                   framing and pointer surgery on raw messages (pure)
  protocol.py               the sans-IO Cap'n Proto RPC connection (pure)
  payloads.py               payloads with capability fields (Engine.start grants, ...)

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


def load(path: str, extra_imports=()):
    """Load a user schema file (import path: its own directory, then ours)."""
    path = os.path.abspath(path)
    return capnp.load(path, imports=[os.path.dirname(path), *extra_imports, *IMPORT_PATH])


def interfaces(module) -> dict:
    """Every top-level interface declared in a loaded schema module, by name."""
    found = {}
    for node in module.schema.node.nestedNodes:
        child = getattr(module, node.name, None)
        if child is not None and hasattr(child, "schema") \
                and child.schema.node.which() == "interface":
            found[node.name] = child
    return found
