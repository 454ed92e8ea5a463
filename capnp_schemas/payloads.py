"""Building and reading the payloads the supervisor and engines exchange.

pycapnp builds and reads the plain fields; capability fields are written and
read here as Cap'n Proto capability pointers (index into the payload's cap
table), which pycapnp cannot do without its own RPC system.
"""
from __future__ import annotations

from capnp.lib.capnp import _StructModule

from . import engine as engine_schema, wire
from .protocol import Content


def method_structs(iface, method: str) -> tuple:
    """(params, results) struct modules of one method of an interface module."""
    m = iface.schema.methods[method]
    return (_StructModule(m.param_type, method + "Params"),
            _StructModule(m.result_type, method + "Results"))


def with_capability(message, field: int = 0, index: int = 0) -> Content:
    """A built struct message whose pointer field `field` is capability #`index`."""
    seg = bytearray(message.to_segments()[0])
    loc = wire.struct_pointer_field([seg], (0, 0), field)
    wire.set_word(seg, loc[1], wire.cap_pointer(index))
    return Content.standalone([seg])


StartParams, StartResults = method_structs(engine_schema.Engine, "start")
_GRANT_CAP = 1       # engine.capnp: Grant.cap is pointer field 1 (after name)


def grants_content(grants) -> Content:
    """Engine.start params: grant i is capability #i.

    `grants` holds (name, kind, mount) triples: kind is "compartment" or the
    host capability ("log", "directory", ...); mount is where a WASI program
    sees a directory grant ("" for others).
    """
    msg = StartParams.new_message()
    lst = msg.init("grants", len(grants))
    for i, (name, kind, mount) in enumerate(grants):
        lst[i].name, lst[i].kind, lst[i].mount = name, kind, mount
    seg = bytearray(msg.to_segments()[0])
    loc = wire.struct_pointer_field([seg], (0, 0), 0)
    for i, (_s, start, data, _ptrs) in enumerate(wire.struct_list_elements([seg], loc)):
        wire.set_word(seg, start + data + _GRANT_CAP, wire.cap_pointer(i))
    return Content.standalone([seg])


def read_grants(content: Content) -> list[tuple[str, int | None, str, str]]:
    """Engine.start params -> [(name, cap-table index or None, kind, mount)]."""
    segs = content.message()
    params = StartParams.from_segments(segs)
    grants = [(g.name, g.kind, g.mount) for g in params.grants]
    loc = wire.struct_pointer_field(segs, (0, 0), 0)
    elements = wire.struct_list_elements(segs, loc) if loc else []
    return [(name, wire.capability_index(segs, (s, start + data + _GRANT_CAP))
             if ptrs > _GRANT_CAP else None, kind, mount)
            for (name, kind, mount), (s, start, data, ptrs) in zip(grants, elements)]
