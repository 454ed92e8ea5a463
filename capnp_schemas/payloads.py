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


def grants_content(names: list[str]) -> Content:
    """Engine.start params: grant i is named names[i] and is capability #i."""
    msg = StartParams.new_message()
    lst = msg.init("grants", len(names))
    for i, n in enumerate(names):
        lst[i].name = n
    seg = bytearray(msg.to_segments()[0])
    loc = wire.struct_pointer_field([seg], (0, 0), 0)
    for i, (_s, start, data, _ptrs) in enumerate(wire.struct_list_elements([seg], loc)):
        wire.set_word(seg, start + data + _GRANT_CAP, wire.cap_pointer(i))
    return Content.standalone([seg])


def read_grants(content: Content) -> list[tuple[str, int | None]]:
    """Engine.start params -> [(name, cap-table index or None)]."""
    segs = content.message()
    params = StartParams.from_segments(segs)
    names = [g.name for g in params.grants]
    loc = wire.struct_pointer_field(segs, (0, 0), 0)
    elements = wire.struct_list_elements(segs, loc) if loc else []
    return [(name, wire.capability_index(segs, (s, start + data + _GRANT_CAP))
             if ptrs > _GRANT_CAP else None)
            for name, (s, start, data, ptrs) in zip(names, elements)]
