"""Building and reading the payloads the supervisor and engines exchange.

pycapnp builds and reads the plain fields; capability fields are written and
read here as Cap'n Proto capability pointers (index into the payload's cap
table), which pycapnp cannot do without its own RPC system.  Flat structs
(numbers, bools, enums, Text and Data only: most host-call params and
results) are read and built here without pycapnp, to the same values (see
"flat structs" below).
"""
from __future__ import annotations

import itertools
import operator
import struct

import attrs
from capnp.lib.capnp import _StructModule

from . import engine as engine_schema, wire
from .protocol import Content
from .text import first_line, kj_text


def method_structs(iface, method: str) -> tuple:
    """(params, results) struct modules of one method of an interface module."""
    m = iface.schema.methods[method]
    return (_StructModule(m.param_type, method + "Params"),
            _StructModule(m.result_type, method + "Results"))


def _segments(message) -> list:
    """Every segment of a built message, writable.  pycapnp allocates a first
    segment of 1024 words (8 KiB) and goes on in more: content built from its
    first segment alone kept far pointers to segments it no longer had (a
    compartment of 60 grants with long names, or a mount of 9 KiB, never
    started: "Message contains far pointer to unknown segment")."""
    return [bytearray(s) for s in message.to_segments()]


def with_capability(message, field: int = 0, index: int = 0) -> Content:
    """A built struct message whose pointer field `field` is capability #`index`."""
    segs = _segments(message)
    loc = wire.struct_pointer_field(segs, (0, 0), field)
    wire.set_word(segs[loc[0]], loc[1], wire.cap_pointer(index))
    return Content.standalone(segs)


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
    segs = _segments(msg)
    loc = wire.struct_pointer_field(segs, (0, 0), 0)
    for i, (s, start, data, _ptrs) in enumerate(wire.struct_list_elements(segs, loc)):
        wire.set_word(segs[s], start + data + _GRANT_CAP, wire.cap_pointer(i))
    return Content.standalone(segs)


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
    flat = _FLATS.get(struct_module, False)
    if flat is False:
        flat = _flat(struct_module)
    if flat is not None and content.segments:
        try:
            return _read_flat(flat, content, max(max_words, 8))
        except DecodeError:         # pycapnp decides every refusal, and words it
            pass
    return _read_pycapnp(struct_module, content, max_words)


def _read_pycapnp(struct_module, content: Content, max_words: int) -> dict:
    try:
        reader = struct_module.from_segments(content.message(),
                                             traversal_limit_in_words=max(max_words, 8),
                                             nesting_limit=NESTING_LIMIT)
        return _struct_value(reader, reader.schema, "")
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - pycapnp raises KjException, ValueError, ...
        raise DecodeError(first_line(kj_text(e))) from None     # in words, not its C++


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
    flat = _FLATS.get(struct_module, False)
    if flat is False:
        flat = _flat(struct_module)
    if flat is not None:
        built = _build_flat(flat, values or {})
        if built is not None:
            return built, []
    else:
        lists = _LISTS.get(struct_module, False)
        if lists is False:
            lists = _lists(struct_module)
        if lists is not None:
            built = _build_lists(lists, values or {})
            if built is not None:
                return built, []
    return _build_pycapnp(struct_module, values)


def _build_pycapnp(struct_module, values: dict | None) -> tuple[Content, list]:
    values = dict(values or {})
    caps = []
    fields = struct_module.schema.fields
    cap_fields = [(name, values.pop(name)) for name in list(values)
                  if _is_capability(fields[name].proto.slot.type)]
    msg = struct_module.new_message()
    _fill(msg, values)
    if not cap_fields:
        return Content.standalone(msg.to_segments()), caps
    segs = _segments(msg)
    for name, obj in cap_fields:
        loc = wire.struct_pointer_field(segs, (0, 0), fields[name].proto.slot.offset)
        if obj is not None:
            wire.set_word(segs[loc[0]], loc[1], wire.cap_pointer(len(caps)))
            caps.append(obj)
    return Content.standalone(segs), caps


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


# ------------------------------------------------------------------ flat structs, without pycapnp

# Most host-call params and results are *flat*: numbers, bools, enums, Text and
# Data, no union, no nesting, every default zero.  Reading and building those
# through pycapnp costs more than the rest of a host call (about 12 µs to read
# Log.write's params, 20 µs to build File.read's 4 KiB results), so they are
# read and built here, on the wire helpers, to the same values:
# tests/unit/test_payloads_flat.py compares both ways with pycapnp, on every
# flat struct of host.capnp and on mutated messages.  Anything else goes to
# pycapnp: a message this reader would refuse (pycapnp then reads it or
# refuses it, with its own words), and a value this builder does not take as
# it is.

_NUMBERS = {"int8": "<b", "int16": "<h", "int32": "<i", "int64": "<q", "uint8": "<B",
            "uint16": "<H", "uint32": "<I", "uint64": "<Q", "float32": "<f", "float64": "<d",
            "enum": "<H"}
_STRUCTS = {k: struct.Struct(v) for k, v in _NUMBERS.items()}
_FLATS: dict = {}            # struct module -> its layout, or None when it is not flat
_MAX_BLOB = (1 << 29) - 1    # elements of one list
_BYTES = 2                   # a list pointer's element size: one byte


@attrs.frozen
class _Field:
    name: str
    kind: str          # a _NUMBERS key, "bool", "void", "text" or "data"
    offset: int        # bytes into the data section (bool: bits); pointer index
    codec: object = None          # struct.Struct of a number
    names: dict | None = None     # an enum's {value: name}
    values: dict | None = None    # an enum's {name: value}
    zero: object = 0              # what a number reads as outside the data section


def _flat(struct_module):
    try:
        return _FLATS[struct_module]
    except KeyError:
        pass
    schema = struct_module.schema
    layout = None
    if not schema.node.struct.discriminantCount:
        fields = []
        for field in schema.fields_list:
            made = _flat_field(field)
            if made is None:
                break
            fields.append(made)
        else:
            layout = _Layout((schema.node.struct.dataWordCount, schema.node.struct.pointerCount,
                              tuple(fields), {f.name: f for f in fields}))
            layout.numbers = _numbers(fields)
            layout.native = _native_fields(fields)
    _FLATS[struct_module] = layout
    return layout


class _Layout(tuple):
    """(data words, pointers, fields, {name: field}); `numbers`: see _numbers;
    `native`: see _native_fields."""
    numbers = None
    native = None


def _numbers(fields):
    """For a struct of numbers only (no enum, bool or pointer), in the order of their
    offsets: (one struct.Struct that unpacks them all from the data section's start,
    the bytes it needs, their names), so that a data section that holds them all is
    read in one call, to the values the field-by-field loop gives.  Else None."""
    fmt, at = "<", 0
    for f in fields:
        if f.kind not in _NUMBERS or f.names is not None or f.offset < at:
            return None
        fmt += f"{f.offset - at}x" if f.offset > at else ""
        fmt += f.codec.format[1:]
        at = f.offset + f.codec.size
    if not fields:
        return None
    codec = struct.Struct(fmt)
    return codec, codec.size, tuple(f.name for f in fields)


#: a field's kind -> its code in _fastwire.c's read_flat (enums are not read there)
_NATIVE_CODES = {"void": 0, "bool": 1, "int8": 2, "int16": 2, "int32": 2, "int64": 2,
                 "uint8": 3, "uint16": 3, "uint32": 3, "uint64": 3, "float32": 4,
                 "float64": 4, "text": 5, "data": 6}


def _native_fields(fields):
    """The fields as the native reader takes them ((name, code, offset, size) each),
    or None when it cannot read them all (an enum) or there is no native reader."""
    if getattr(wire._native, "read_flat", None) is None:
        return None
    out = []
    for f in fields:
        code = _NATIVE_CODES.get(f.kind)
        if code is None or f.names is not None:
            return None
        out.append((f.name, code, f.offset, f.codec.size if f.codec is not None else 0))
    return tuple(out)


def _flat_field(field) -> _Field | None:
    proto = field.proto
    if proto.which() != "slot":
        return None
    kind = proto.slot.type.which()
    default = proto.slot.defaultValue
    value = getattr(default, default.which()) if default.which() != "void" else None
    if kind in ("text", "data", "bool", "void"):
        return _Field(proto.name, kind, proto.slot.offset) if not value else None
    if kind not in _NUMBERS or value:
        return None
    codec = _STRUCTS[kind]
    if kind.startswith("float") and codec.pack(value) != bytes(codec.size):
        return None                                  # -0.0
    names = values = None
    if kind == "enum":
        names = {v: k for k, v in field.schema.enumerants.items()}
        values = dict(field.schema.enumerants)
    return _Field(proto.name, kind, proto.slot.offset * codec.size, codec, names, values,
                  0.0 if kind.startswith("float") else 0)


def _read_flat(layout, content, max_words: int) -> dict:
    """The struct's fields, or DecodeError where pycapnp might read it otherwise (it
    then decides): what pycapnp would refuse, and also content that reaches word 0
    of segment 0, as an object there or as a far pointer's landing pad (pycapnp reads
    a copy whose root word is replaced, as the content is handed over), an empty segment (which it takes for a missing one), and more
    words than `max_words` (pycapnp's traversal limit, counted as it counts)."""
    _data, _ptrs, fields, _by_name = layout
    segs = content.segments
    native = layout.native if type(layout) is _Layout else None
    if native is not None and len(segs) == 1:
        # the usual case, in one call: what the code below reads, or None where it
        # does not settle it alone (and then the code below decides)
        root, loc = content.root, content.loc
        if root and root[1] == 0 and loc[0] == 0:
            got = wire._native.read_flat(segs[0], loc[1], root[2], root[3], native, max_words)
            if got is not None:
                return got
    if not all(segs):
        raise DecodeError("an empty segment")
    root = content.root                 # resolved already by the protocol core, or False
    if root is False:
        try:
            root = wire.resolve(segs, content.loc)
        except wire.WireError as e:
            raise DecodeError(str(e)) from None
    if root is None:
        s = start = data = ptrs = 0
        seg = b""
    else:
        ls, lp = content.loc
        if _U64.unpack_from(segs[ls], 8 * lp)[0] in _FAR_TO_ROOT:
            raise DecodeError("a far pointer whose landing pad is the message's root word")
        kind, s, start, w = root
        if kind != wire.STRUCT:
            raise DecodeError("the message's root is not a struct")
        data, ptrs = (w >> 32) & 0xFFFF, w >> 48
        if s == 0 and start == 0 and data + ptrs:       # it holds the root word
            raise DecodeError("an object that holds the message's root word")
        seg = segs[s]
    budget = [max_words - data - ptrs]
    if budget[0] < 0:
        raise DecodeError("the message's root is larger than the traversal limit")
    base, end = 8 * start, 8 * (start + data)
    numbers = layout.numbers if type(layout) is _Layout else None
    if numbers is not None and numbers[1] <= end - base:
        return dict(zip(numbers[2], numbers[0].unpack_from(seg, base)))
    out = {}
    for f in fields:
        kind = f.kind
        if kind == "text" or kind == "data":
            out[f.name] = _blob(segs, (s, start + data + f.offset), f, budget) \
                if f.offset < ptrs else ("" if kind == "text" else b"")
        elif kind == "bool":
            at = base + (f.offset >> 3)
            out[f.name] = at < end and bool(seg[at] >> (f.offset & 7) & 1)
        elif kind == "void":
            out[f.name] = None
        else:
            at = base + f.offset
            value = f.codec.unpack_from(seg, at)[0] if at + f.codec.size <= end else f.zero
            if f.names is not None:
                name = f.names.get(value)
                if name is None:
                    raise DecodeError(f"{f.name}: {value} is not a value of the enum "
                                      f"({', '.join(f.names.values())})")
                value = name
            out[f.name] = value
    return out


def _blob(segs, loc, f: _Field, budget: list):
    try:
        r = wire.resolve(segs, loc)
    except wire.WireError as e:
        raise DecodeError(f"{f.name}: {e}") from None
    text = f.kind == "text"
    if r is None:
        return "" if text else b""
    if _U64.unpack_from(segs[loc[0]], 8 * loc[1])[0] in _FAR_TO_ROOT:
        raise DecodeError("a far pointer whose landing pad is the message's root word")
    kind, s, start, w = r
    if kind != wire.LIST or (w >> 32) & 7 != _BYTES:
        raise DecodeError(f"{f.name}: expected {'text' if text else 'data'} (a list of bytes)")
    n = w >> 35
    words = (n + 7) // 8
    if s == 0 and start == 0 and words:                  # it holds the root word
        raise DecodeError("an object that holds the message's root word")
    budget[0] -= words
    if budget[0] < 0:
        raise DecodeError(f"{f.name}: past the traversal limit")
    raw = bytes(segs[s][8 * start:8 * start + n])
    if not text:
        return raw
    if not raw or raw[-1] != 0:
        raise DecodeError(f"{f.name}: text that is not NUL-terminated")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{f.name}: text that is not valid UTF-8") from None


def _build_flat(layout, values: dict) -> Content | None:
    """The message, or None to let pycapnp build it (and raise what it raises)."""
    data, ptrs, _fields, by_name = layout
    head = 1 + data + ptrs
    seg = bytearray(8 * head)
    # root: the struct at word 1; an empty one is pointed at as pycapnp does (offset
    # -1), never with a null pointer, which a guest would read as "no results"
    _U64.pack_into(seg, 0, (data << 32) | (ptrs << 48) if data or ptrs else 0xFFFFFFFC)
    if len(values) == 1:
        # one Data value (File.read's, Random.bytes' results): what the loops below
        # make of it
        for name, value in values.items():
            f = by_name.get(name)
            if f is not None and f.kind == "data" and type(value) is bytes \
                    and len(value) <= _MAX_BLOB:
                at = 1 + data + f.offset
                _U64.pack_into(seg, 8 * at, wire.LIST | ((head - at - 1) << 2) | (_BYTES << 32)
                               | (len(value) << 35))
                return Content((b"".join((seg, value, _ZEROS[:-len(value) % 8])),), (0, 0))
    blobs = []
    for name, value in values.items():
        f = by_name.get(name)
        if f is None:
            return None
        kind = f.kind
        if kind == "text" or kind == "data":
            if kind == "text":
                if type(value) is not str:
                    return None
                try:
                    raw = value.encode("utf-8") + b"\0"
                except UnicodeEncodeError:
                    return None
            elif type(value) is bytes:
                raw = value
            else:
                return None
            if len(raw) > _MAX_BLOB:
                return None
            blobs.append((1 + data + f.offset, raw))
        elif kind == "bool":
            if type(value) is not bool:
                return None
            if value:
                seg[8 + (f.offset >> 3)] |= 1 << (f.offset & 7)
        elif kind == "void":
            if value is not None:
                return None
        else:
            if f.values is not None:
                value = f.values.get(value) if type(value) is str else None
            elif kind.startswith("float"):
                value = float(value) if type(value) in (int, float) else None
            elif type(value) is not int:
                value = None
            if value is None:
                return None
            try:
                f.codec.pack_into(seg, 8 + f.offset, value)
            except (struct.error, OverflowError):    # pycapnp's own answer, whatever it is
                return None
    if not blobs:
        return Content((bytes(seg),), (0, 0))
    # the blobs follow the struct, each padded to a whole word: one copy of each
    parts = [seg]
    start = head
    for at, raw in blobs:
        _U64.pack_into(seg, 8 * at, wire.LIST | ((start - at - 1) << 2) | (_BYTES << 32)
                       | (len(raw) << 35))
        parts.append(raw)
        pad = -len(raw) % 8
        if pad:
            parts.append(_ZEROS[:pad])
        start += (len(raw) + pad) >> 3
    return Content((b"".join(parts),), (0, 0))


_ZEROS = bytes(8)
_U64 = struct.Struct("<Q")
#: The far pointers whose landing pad is word 0 of segment 0 (single and double far):
#: pycapnp reads content as a message whose root word is replaced (Content.message),
#: so a pad there reads otherwise in it; the flat reader leaves such content to it.
_FAR_TO_ROOT = frozenset((wire.far_pointer(0, 0), wire.far_pointer(0, 0, double=True)))


# ------------------------------------------------------------------ lists of flat structs, without pycapnp

# A flat struct but for lists of Text or of flat structs (Directory.list's results:
# 1,169 entries a 64 KiB page; Environment.args and vars) is built here too:
# pycapnp's builder cost ~2.3 µs an entry (a page: 2.6 ms of a worker thread's
# Python, holding the GIL against the event loop that serves every other
# compartment; here 1.0 µs, docs/performance.md).  The message is one segment: the root, the struct and its own
# blobs as _build_flat lays them, then each list (a composite list's tag and
# elements, or a list of pointers), then the list's blobs in order.
# tests/unit/test_payloads_lists.py reads what is built here back with pycapnp,
# to the values pycapnp's own builder gives.  Only built, never read: results
# go to guests; a value this builder does not take as it is goes to pycapnp.

_LISTS: dict = {}           # struct module -> its _ListsLayout, or None


@attrs.frozen
class _ListField:
    name: str
    index: int                  # pointer index in the struct
    element: object = None      # the element's _Element; None: a list of Text


@attrs.frozen
class _Element:
    """How one element of a list of flat structs is written: its words, its data
    words, its fields' `names` in the order of their offsets, `codec` (a
    struct.Struct of the data and pointer sections at once, those values in that
    order), and for each its role:
    ("n", None) a number, ("e", {name: value}) an enum, ("t", pointer index) a
    Text."""
    words: int
    data: int
    names: tuple
    roles: tuple
    codec: object


@attrs.frozen
class _ListsLayout:
    head: object            # _Layout of the struct's other fields (for _build_flat)
    lists: dict             # name -> _ListField


def _lists(struct_module):
    """The struct's layout when it is flat but for lists of Text or of flat structs
    (numbers, enums and Text only, byte-aligned); else None."""
    try:
        return _LISTS[struct_module]
    except KeyError:
        pass
    layout = None
    schema = struct_module.schema
    if not schema.node.struct.discriminantCount:
        flat, lists = [], {}
        for field in schema.fields_list:
            made = _flat_field(field)
            if made is None:
                made = _list_field(field)
                if made is None:
                    flat = None
                    break
                lists[made.name] = made
            else:
                flat.append(made)
        if flat is not None and lists:
            head = _Layout((schema.node.struct.dataWordCount, schema.node.struct.pointerCount,
                            tuple(flat), {f.name: f for f in flat}))
            layout = _ListsLayout(head, lists)
    _LISTS[struct_module] = layout
    return layout


def _list_field(field) -> _ListField | None:
    proto = field.proto
    if proto.which() != "slot" or proto.slot.type.which() != "list" \
            or proto.slot.hadExplicitDefault:
        return None
    kind = proto.slot.type.list.elementType.which()
    if kind == "text":
        return _ListField(proto.name, proto.slot.offset)
    if kind != "struct":
        return None
    element = _element(_StructModule(field.schema.elementType, proto.name))
    return None if element is None else _ListField(proto.name, proto.slot.offset, element)


def _element(struct_module) -> _Element | None:
    layout = _flat(struct_module)
    if layout is None:
        return None
    data, ptrs, fields, _by = layout
    slots = []                      # (byte offset, format, field) in the element's words
    for f in fields:
        if f.kind == "text":
            slots.append((8 * (data + f.offset), "Q", f))
        elif f.kind in _NUMBERS:
            slots.append((f.offset, f.codec.format[1:], f))
        else:
            return None             # bool, void, data: pycapnp builds it
    slots.sort(key=lambda x: x[0])
    fmt, at = "<", 0
    for offset, code, f in slots:
        if offset < at:
            return None
        fmt += f"{offset - at}x" if offset > at else ""
        fmt += code
        at = offset + struct.calcsize("<" + code)
    fmt += f"{8 * (data + ptrs) - at}x" if 8 * (data + ptrs) > at else ""
    names = tuple(f.name for _o, _c, f in slots)
    roles = tuple(("t", f.offset) if f.kind == "text" else
                  ("e", f.values) if f.values is not None else ("n", None)
                  for _o, _c, f in slots)
    return _Element(data + ptrs, data, names, roles, struct.Struct(fmt))


def _build_lists(layout: _ListsLayout, values: dict) -> Content | None:
    """The message, or None to let pycapnp build it (and raise what it raises)."""
    flat_values = {k: v for k, v in values.items() if k not in layout.lists}
    head = _build_flat(layout.head, flat_values)
    if head is None:
        return None
    seg = bytearray(head.segments[0])
    data = layout.head[0]
    parts = [seg]
    start = len(seg) >> 3           # the word the next list begins at
    for name, value in values.items():
        lf = layout.lists.get(name)
        if lf is None:
            continue
        if type(value) is not list or len(value) > MAX_LIST_ELEMENTS_BUILT:
            return None
        at = 1 + data + lf.index
        words = _list_of_texts(value, start, parts) if lf.element is None else \
            _list_of_structs(lf.element, value, start, parts)
        if words is None:
            return None
        size = wire.COMPOSITE if lf.element is not None else 6
        count = len(value) * lf.element.words if lf.element is not None else len(value)
        _U64.pack_into(seg, 8 * at, wire.LIST | ((start - at - 1) << 2) | (size << 32)
                       | (count << 35))
        start += words
    return Content((b"".join(parts),), (0, 0))


#: elements of one list built here at most (a composite list counts words, 2^29 - 1)
MAX_LIST_ELEMENTS_BUILT = 1 << 20


def _list_of_texts(items: list, start: int, parts: list) -> int | None:
    """A list of pointers at word `start`, then its Text blobs; the words written."""
    n = len(items)
    ptrs = bytearray(8 * n)
    blobs = []
    blob = start + n                # the word the next blob begins at
    pack = _U64.pack_into
    try:
        for i, item in enumerate(items):
            if type(item) is not str:
                return None
            raw = item.encode("utf-8") + b"\0"
            k = len(raw)
            pack(ptrs, 8 * i, wire.LIST | ((blob - start - i - 1) << 2) | (_BYTES << 32)
                 | (k << 35))
            blobs.append(raw)
            pad = -k % 8
            if pad:
                blobs.append(_ZEROS[:pad])
            blob += (k + pad) >> 3
    except UnicodeEncodeError:
        return None
    parts.append(ptrs)
    parts.extend(blobs)
    return blob - start


def _list_of_structs(el: _Element, items: list, start: int, parts: list) -> int | None:
    """A composite list at word `start` (its tag, then the elements), then the
    elements' Text blobs, element by element and in each by pointer index (as
    pycapnp lays them out when each dict names its fields in that order: then
    the same bytes as its builder's with one segment); the
    words written.  Column by column, in comprehensions and a map of the
    element's struct.Struct: a loop over the fields of each element cost more
    than pycapnp's builder."""
    n = len(items)
    stride = el.words
    nfields = len(el.names)
    if any(type(item) is not dict or len(item) != nfields for item in items):
        return None
    columns, texts = [], []         # texts: (column index, pointer index, raws, padded)
    nul = b"\0"
    try:
        for name, (role, detail) in zip(el.names, el.roles):
            column = [item[name] for item in items]
            if role == "t":
                if any(type(v) is not str for v in column):
                    return None
                raws = [v.encode("utf-8") + nul for v in column]
                texts.append((len(columns), detail, raws,
                              [r.ljust(len(r) + 7 & ~7, nul) for r in raws]))
            elif role == "e":
                column = [detail[v] if type(v) is str else None for v in column]
            elif any(type(v) is not int for v in column):
                return None
            columns.append(column)
        # the blobs in pycapnp's order: element 0's texts in field order, element 1's...
        texts.sort(key=lambda t: t[1])
        order = list(itertools.chain.from_iterable(zip(*(t[3] for t in texts))))
        blob = start + 1 + n * stride   # the word the first blob begins at
        at = list(itertools.accumulate([len(p) >> 3 for p in order], initial=blob))
        end = at.pop()
        kinds = wire.LIST | (_BYTES << 32)
        for k, (c, index, raws, _padded) in enumerate(texts):
            # element i's pointer `index` is at word `first + i * stride`; its blob
            # at at[i * len(texts) + k]
            first = start + 1 + el.data + index
            offsets = map(operator.sub, at[k::len(texts)],
                          range(first + 1, first + 1 + n * stride, stride))
            columns[c] = [kinds | (o << 2) | (len(r) << 35) for o, r in zip(offsets, raws)]
        body = b"".join(itertools.chain(
            (_U64.pack((n << 2) | (el.data << 32) | ((stride - el.data) << 48)),),
            map(el.codec.pack, *columns)))
    except (KeyError, TypeError, UnicodeEncodeError, struct.error, OverflowError):
        return None
    parts.append(body)
    parts.extend(order)
    return end - start
