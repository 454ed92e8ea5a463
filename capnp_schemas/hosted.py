"""The host capabilities, as one table derived from host.capnp.

A *host capability* is an object the supervisor serves itself (a log, a
clock, a directory ...).  The system file grants them by kind
(`{ host = "directory" }`); the router needs each kind's interface id, the
host layer each method's param and result structs, the WASI layer and the
audit each method's name.  All of that comes from here, and all of it from
the schema: adding a method to host.capnp adds it everywhere.

Pure data; no I/O.
"""
from __future__ import annotations

import attrs

from . import HOST_KINDS as KINDS, host, probe     # KINDS: the table's rows
from .payloads import method_structs


@attrs.frozen
class Method:
    name: str
    ordinal: int
    params: object            # pycapnp struct module
    results: object


@attrs.frozen
class Interface:
    kind: str                 # "log", "directory", ...
    name: str                 # "Log", "Directory", ...
    id: int
    methods: tuple            # of Method, by ordinal

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"{self.name} has no method {name!r}")


def _interface(kind: str, name: str) -> Interface:
    module = getattr(host, name, None) or getattr(probe, name)   # probe.capnp: Probe
    methods = tuple(Method(m.name, i, *method_structs(module, m.name))
                    for i, m in enumerate(module.schema.node.interface.methods))
    return Interface(kind, name, module.schema.node.id, methods)


BY_KIND: dict[str, Interface] = {kind: _interface(kind, name) for kind, name in KINDS.items()}
BY_ID: dict[int, Interface] = {i.id: i for i in BY_KIND.values()}
BY_NAME: dict[str, Interface] = {i.name: i for i in BY_KIND.values()}

GATEWAY = _interface("gateway", "Gateway")     # the external endpoint's bootstrap object
