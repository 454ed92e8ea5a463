"""Building and reading the payloads the supervisor and engines exchange.

pycapnp builds and reads the plain fields; capability fields are written and
read here as Cap'n Proto capability pointers (index into the payload's cap
table), which pycapnp cannot do without its own RPC system.
"""
from __future__ import annotations

from capnp.lib.capnp import _StructModule

from . import engine as engine_schema, wire
from .protocol import Content
from .text import first_line


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


# ------------------------------------------------------------------ eager, total decoding


class DecodeError(ValueError):
    """Content that does not read as the struct it should be; the text names the field."""


#: Nesting a host-call payload may have (pycapnp's own check, applied eagerly).
NESTING_LIMIT = 16


def read(struct_module, content: Content, max_words: int) -> dict:
    """Every field of `content`, read as `struct_module`, as plain Python values.

    Eager and total: the whole struct is read here, so a bad pointer, text that
    is not UTF-8, an enum value the schema does not define or anything else
    that cannot be read raises DecodeError now, naming the field, and never
    later from some lazy reader.  Text -> str, Data -> bytes, enum -> the
    enumerant's name, struct -> dict, list -> list; a capability field reads as
    None (its cap-table index is `Content.cap_index`), AnyPointer is refused.  `max_words` bounds the words read (pycapnp's
    traversal limit), so a message that fits the size limit can be read.
    """
    try:
        reader = struct_module.from_segments(content.message(),
                                             traversal_limit_in_words=max(max_words, 8),
                                             nesting_limit=NESTING_LIMIT)
        return _struct_value(reader, reader.schema, "")
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - pycapnp raises KjException, ValueError, ...
        raise DecodeError(first_line(e)) from None


_PLANS: dict[int, tuple] = {}


def _plan(schema) -> tuple:
    """(has a union, [(name, kind, discriminant, detail)]) for a struct schema, made once.
    detail: an enum's {value: name}, a struct's schema, or a list's (element kind, detail)."""
    plan = _PLANS.get(schema.node.id)
    if plan is None:
        fields = []
        for field in schema.fields_list:
            proto = field.proto
            if proto.which() == "group":
                fields.append((proto.name, "group", proto.discriminantValue, field.schema))
                continue
            type_ = proto.slot.type
            kind = "interface" if _is_capability(type_) else type_.which()
            detail = _detail(type_, field.schema) if kind in _NESTED else None
            fields.append((proto.name, kind, proto.discriminantValue, detail))
        plan = _PLANS[schema.node.id] = (bool(schema.node.struct.discriminantCount), fields)
    return plan


def _detail(type_, schema):
    kind = type_.which()
    if kind == "enum":
        return {v: k for k, v in schema.enumerants.items()}
    if kind == "struct":
        return schema
    if kind == "list":
        element = type_.list.elementType
        return (element.which(), _detail(element, schema.elementType)
                if element.which() in _NESTED else None)
    return None


_NESTED = {"enum", "struct", "list"}


def _is_capability(type_) -> bool:
    """An interface type, or the built-in `Capability` (an AnyPointer that is one)."""
    kind = type_.which()
    if kind == "interface":
        return True
    if kind == "anyPointer":
        ap = type_.anyPointer
        return ap.which() == "unconstrained" and ap.unconstrained.which() == "capability"
    return False


def _struct_value(reader, schema, where: str) -> dict:
    union, fields = _plan(schema)
    active = reader.which() if union else None
    out = {}
    for name, kind, discriminant, detail in fields:
        if discriminant != 0xFFFF and name != active:
            continue                                    # an inactive union member
        if kind == "group":
            out[name] = _struct_value(getattr(reader, name), detail, f"{where}{name}.")
            continue
        if kind == "interface":
            out[name] = None        # a capability: read its index with Content.cap_index
            continue
        try:
            value = reader._get(name)
        except UnicodeDecodeError:
            raise DecodeError(f"{where}{name}: text that is not valid UTF-8") from None
        out[name] = _convert(value, kind, detail, f"{where}{name}") \
            if kind in _CONVERTED else value
    return out


_CONVERTED = {"enum", "struct", "list", "data", "anyPointer"}


def _convert(value, kind, detail, where):
    if kind == "enum":
        name = detail.get(value.raw)
        if name is None:
            raise DecodeError(f"{where}: {value.raw} is not a value of the enum "
                              f"({', '.join(detail.values())})")
        return name
    if kind == "struct":
        return _struct_value(value, detail, where + ".")
    if kind == "data":
        return bytes(value)
    if kind == "list":
        element, inner = detail
        out = []
        for i in range(len(value)):
            try:
                item = value[i]
            except UnicodeDecodeError:
                raise DecodeError(f"{where}[{i}]: text that is not valid UTF-8") from None
            out.append(_convert(item, element, inner, f"{where}[{i}]")
                       if element in _CONVERTED else item)
        return out
    raise DecodeError(f"{where}: capability and AnyPointer fields are not accepted here")


def build(struct_module, values: dict | None) -> tuple[Content, list]:
    """A message of `struct_module` from plain values (as `read` returns them), and
    the capabilities it carries: a value for a capability field is any object;
    it goes into the returned list and the field points at its index."""
    values = dict(values or {})
    caps = []
    fields = struct_module.schema.fields
    cap_fields = [(name, values.pop(name)) for name in list(values)
                  if _is_capability(fields[name].proto.slot.type)]
    msg = struct_module.new_message()
    _fill(msg, values)
    if not cap_fields:
        return Content.standalone(msg.to_segments()), caps
    seg = bytearray(msg.to_segments()[0])
    for name, obj in cap_fields:
        loc = wire.struct_pointer_field([seg], (0, 0), fields[name].proto.slot.offset)
        if obj is not None:
            wire.set_word(seg, loc[1], wire.cap_pointer(len(caps)))
            caps.append(obj)
    return Content.standalone([seg]), caps


def _fill(builder, values: dict):
    """Set a struct builder's fields from plain values.  Lists of structs are made
    with init() and filled element by element: pycapnp converting a list of
    dicts at once costs ten times as much (a 2048-entry directory page)."""
    for name, value in values.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = builder.init(name, len(value))
            for i, item in enumerate(value):
                _fill(items[i], item)
        elif isinstance(value, dict):
            _fill(builder.init(name), value)
        else:
            setattr(builder, name, value)
