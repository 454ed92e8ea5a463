"""Cap'n Proto text format for `wsuper call`'s parameters: `(a = 20, b = 22)`.

pycapnp prints messages in this format but does not parse it (Cap'n Proto's
C++ TextCodec is not exposed), so this is a small parser of our own: the
value grammar of the format (structs, lists, text, data, numbers, bools,
void, enumerants), read into plain Python values that the schema then
checks (`typed`), so that an error names the field and what was expected.

    value    = struct | list | text | data | number | name
    struct   = "(" [ field { "," field } ] ")"      field = name "=" value
    list     = "[" [ value { "," value } ] "]"
    text     = '"' chars and escapes '"'   (each escape one byte: \\a \\b \\f \\n
               \\r \\t \\v \\' \\" \\\\ \\?, \\xHH, \\NNN octal; no others); adjacent
               literals are one ("a" "b" is "ab")
    data     = 0x"hex digits"  (a text literal is taken as its bytes)
    number   = decimal or 0x hex integer (no leading 0), or a float (-inf, -nan)
    name     = an enumerant, or true, false (Bool), void (Void), inf, nan (floats):
               a bare name means what the field's type says (an enumerant, or a
               field, may itself be called inf, nan, true or void)

A Text field takes a text literal's bytes as UTF-8 (refusing any that are
not); two members of one union are refused, as is a number a Float32 cannot
hold (it would be inf).  Every error names where: the field, or the
character (from 0) at which the text goes wrong.
"""
from __future__ import annotations

import math
import re
import struct


class TextError(ValueError):
    """Text that is not a Cap'n Proto value, or not one the schema accepts."""


_TOKEN = re.compile(r"""
    (?P<punct>[()\[\],=])
    | (?P<data>0x"[0-9a-fA-F\s]*")
    | (?P<text>"(?:[^"\\]|\\.)*")
    | (?P<number>[-+]?(?:0x[0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
                 |[-+](?:inf|nan)(?![A-Za-z0-9_]))
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """, re.X | re.S)
_SPACE = re.compile(r"\s*")


class _Enumerant(str):
    """A bare name: an enumerant, or true/false/void/inf/nan, as the field's type
    takes it (read by the type, never before: an enumerant may be called nan)."""


class _Literal(bytes):
    """A text literal ("..."): bytes, as the format's escapes (\\xHH, octal) give
    bytes.  A Text field takes it as UTF-8, a Data field as it is."""


MAX_DEPTH = 32            # nested structs and lists
MAX_TEXT = 1 << 20        # characters of parameters


def parse(text: str):
    """The Python value of one Cap'n Proto text value (a struct is a dict).
    TextError names where the text goes wrong (at character N, from 0)."""
    if len(text) > MAX_TEXT:
        raise TextError(f"parameters longer than {MAX_TEXT} characters")
    tokens = _tokens(text)
    tokens.append(("end", "", len(text)))
    value, at = _value(tokens, 0)
    if tokens[at][0] != "end":
        raise TextError(f"unexpected {_found(tokens[at])} after the value "
                        f"(at character {tokens[at][2]})")
    return value


def _found(token) -> str:
    kind, tok, _ = token
    return "the end of the text" if kind == "end" else \
        repr(tok if len(tok) <= 40 else tok[:40] + "...")


def _fail(token, expected: str):
    raise TextError(f"expected {expected}, not {_found(token)} (at character {token[2]})")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) of each token.  Linear: the spaces before each token
    are skipped by a match, never by copying the rest of the text (which made a
    list of 500,000 numbers take 15 s)."""
    out, at = [], _SPACE.match(text).end()
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None:
            raise TextError(f"cannot read {text[at:at + 20]!r} (at character {at})")
        kind = m.lastgroup
        out.append((kind, m.group(kind), at))
        at = _SPACE.match(text, m.end()).end()
    return out


def _value(tokens, at, depth=0):
    kind, tok, pos = tokens[at]
    if kind == "end":
        _fail(tokens[at], "a value")
    if tok in "([" and kind == "punct" and depth >= MAX_DEPTH:
        raise TextError(f"nested deeper than {MAX_DEPTH} (at character {pos})")
    if tok == "(" and kind == "punct":
        return _struct(tokens, at + 1, depth + 1)
    if tok == "[" and kind == "punct":
        return _list(tokens, at + 1, depth + 1)
    if kind == "text":
        # adjacent literals are one ("a" "b" is "ab"), as the format has it
        parts = []
        while tokens[at][0] == "text":
            parts.append(_unescape(tokens[at][1][1:-1], tokens[at][2] + 1))
            at += 1
        return _Literal(b"".join(parts)), at
    if kind == "data":
        digits = re.sub(r"\s", "", tok[3:-1])
        if len(digits) % 2:
            raise TextError(f"{tok[:40]}: an odd number of hex digits (at character {pos})")
        return bytes.fromhex(digits), at + 1
    if kind == "number":
        return _number(tok, pos), at + 1
    if kind == "name":
        # true, false, void, inf and nan too: what a bare name means is the field's
        # type's to say (an enumerant, or a field, may be called inf or true)
        return _Enumerant(tok), at + 1
    _fail(tokens[at], "a value")


#: Significant digits of an integer literal past which no field can hold it (a
#: Float64 holds below 1.8e308); its digits are not converted (int() of
#: thousands of digits is refused, and slow).
MAX_DIGITS = 400


def _number(tok: str, pos: int):
    """The int or float a number token means (a float only if it is written as
    one: a point, an exponent, or a signed inf or nan)."""
    low = tok.lower().lstrip("+-")
    if low in ("inf", "nan") or "." in tok or ("e" in low and not low.startswith("0x")):
        value = float(tok)
        if low not in ("inf", "nan") and math.isinf(value):
            raise TextError(f"{_cut(tok)} is too large for any float field; write inf if "
                            f"that is meant (at character {pos})")
        return value
    if len((low[2:] if low.startswith("0x") else low).lstrip("0")) > MAX_DIGITS:
        raise TextError(f"{_cut(tok)}: a number too long for any field (at character {pos})")
    try:
        return int(tok, 0)
    except ValueError:       # 010: octal to Cap'n Proto, decimal to others
        raise TextError(f"{_cut(tok)} is not a number (a leading 0 is not allowed) "
                        f"(at character {pos})") from None


def _cut(tok: str) -> str:
    return repr(tok if len(tok) <= 40 else tok[:20] + "...")


def _struct(tokens, at, depth):
    out = {}
    if tokens[at][1] == ")" and tokens[at][0] == "punct":
        return out, at + 1
    while True:
        if tokens[at][0] != "name":
            _fail(tokens[at], "a field name in a struct")
        name = tokens[at][1]
        if tokens[at + 1][1] != "=" or tokens[at + 1][0] != "punct":
            _fail(tokens[at + 1], f"'=' after field {name!r}")
        if name in out:
            raise TextError(f"field {name!r} given twice (at character {tokens[at][2]})")
        out[name], at = _value(tokens, at + 2, depth)
        if tokens[at][0] == "punct" and tokens[at][1] == ",":
            at += 1
            continue
        if tokens[at][0] == "punct" and tokens[at][1] == ")":
            return out, at + 1
        _fail(tokens[at], "',' or ')' in a struct")


def _list(tokens, at, depth):
    out = []
    if tokens[at][1] == "]" and tokens[at][0] == "punct":
        return out, at + 1
    while True:
        value, at = _value(tokens, at, depth)
        out.append(value)
        if tokens[at][0] == "punct" and tokens[at][1] == ",":
            at += 1
            continue
        if tokens[at][0] == "punct" and tokens[at][1] == "]":
            return out, at + 1
        _fail(tokens[at], "',' or ']' in a list")


#: The format's escapes (as Cap'n Proto's lexer reads them): these, \xHH (two hex
#: digits) and \NNN (one to three octal digits), each one byte.
_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "'": 39, '"': 34,
            "\\": 92, "?": 63}
_HEX = re.compile(r"[0-9a-fA-F]{2}")
_OCTAL = re.compile(r"[0-7]{1,3}")


def _unescape(body: str, pos: int) -> _Literal:
    """The bytes of a text literal's inside (`pos`: where it begins in the text); an
    escape the format does not have is an error naming it, never a guess."""
    out, i = bytearray(), 0
    while i < len(body):
        j = body.find("\\", i)
        out += _utf8(body[i:] if j < 0 else body[i:j], pos + i)
        if j < 0:
            break
        nxt = body[j + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i = j + 2
        elif nxt == "x" and _HEX.match(body, j + 2):
            out.append(int(body[j + 2:j + 4], 16))
            i = j + 4
        elif (m := _OCTAL.match(body, j + 1)) and int(m.group(), 8) < 256:
            out.append(int(m.group(), 8))
            i = m.end()
        else:
            raise TextError(f"{body[j:j + 4]!r} is no escape of the text format (\\n, \\t, "
                            f"\\\", \\\\, \\xHH, \\NNN, ...) (at character {pos + j})")
    return _Literal(out)


def _utf8(chars: str, pos: int) -> bytes:
    """Characters as the bytes they came as (a command line that is not UTF-8 is
    read with surrogate escapes: its bytes come back as they were)."""
    try:
        return chars.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise TextError(f"a character that is no character ({chars[e.start]!r}) "
                        f"(at character {pos + e.start})") from None


def method(interface_schema, name: str):
    """The pycapnp method `name` of an interface: its own, or one it inherits (a
    call of an inherited method is made on the interface as it is; `wsuper call`
    looked at the interface's own methods only and refused every inherited one).
    KeyError names them all if there is none."""
    return find(interface_schema, name)[1]


def find(interface_schema, name: str):
    """(the interface that declares it, the method) for the method `name` of an
    interface, found as Cap'n Proto finds a method by its name: its own, then
    each interface it extends in order, depth first (C extends(A, B), A
    extends(D): D's before B's).  A search breadth first took B's, while
    pycapnp called D's with the parameters typed for B's.  The call is made on
    the interface found (its id and the method's ordinal, as any call of an
    inherited method is), never by the name again: Cap'n Proto's own search
    gives up after 64 interfaces visited, counting each of a diamond's as often
    as it is reached.  KeyError names them all if there is none."""
    seen, todo = set(), [interface_schema]
    while todo:
        s = todo.pop()
        if s.node.id in seen:
            continue
        seen.add(s.node.id)
        methods = s.methods
        if name in methods:
            return s, methods[name]
        todo += reversed(list(s.superclasses))
    raise KeyError(f"has no method {name!r} (methods: "
                   f"{', '.join(_method_names(interface_schema)) or 'none'})")


def _method_names(interface_schema) -> list:
    """Every method name of an interface and those it extends, nearest first."""
    seen, todo, names = set(), [interface_schema], []
    while todo:
        s = todo.pop(0)
        if s.node.id in seen:
            continue
        seen.add(s.node.id)
        names += [m for m in s.methods if m not in names]
        todo += list(s.superclasses)
    return names


def typed(value, struct_schema, where: str = "") -> dict:
    """`value` (a parsed struct) checked against a pycapnp struct schema, converted
    where the text allows two readings (a text literal for Data, a number for a
    float); TextError names the field that does not fit."""
    if not isinstance(value, dict):
        # `where` ends in the dot before a field's name: "u.: expected a struct"
        raise TextError(f"{where.removesuffix('.') or 'the parameters'}: expected a struct "
                        f"such as (a = 1), not {_shown(value)}")
    fields = struct_schema.fields
    out = {}
    member = None              # the union's member given, if any
    for name, v in value.items():
        if name not in fields:
            raise TextError(f"{where}{name}: no such field (fields: "
                            f"{', '.join(f.proto.name for f in struct_schema.fields_list)})")
        field = fields[name]
        if field.proto.discriminantValue != 0xFFFF:
            # members of one union share their place: the second given replaced the
            # first without a word
            if member is not None:
                raise TextError(f"{where}{name}: {member} and {name} are members of one "
                                "union: give one of them")
            member = name
        if field.proto.which() == "group":
            out[name] = typed(v, field.schema, f"{where}{name}.")
            continue
        out[name] = _typed(v, field.proto.slot.type, field, f"{where}{name}")
    return out


def _fits_float32(v: float) -> bool:
    """Whether a finite number stays finite as a float32 (rounded to nearest)."""
    try:
        struct.pack("<f", v)
    except OverflowError:
        return False
    return True


_INTS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_UINTS = {"uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}


def _typed(v, type_, field, where):
    kind = type_.which()
    if kind in _INTS or kind in _UINTS:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TextError(f"{where}: expected an integer ({kind}), not {_shown(v)}")
        bits = _INTS.get(kind) or _UINTS[kind]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind in _INTS \
            else (0, (1 << bits) - 1)
        if not lo <= v <= hi:
            raise TextError(f"{where}: {v} is out of range for {kind}")
        return v
    if kind in ("float32", "float64"):
        if isinstance(v, _Enumerant) and v in ("inf", "nan"):
            return float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TextError(f"{where}: expected a number, not {_shown(v)}")
        try:
            number = float(v)
        except OverflowError:          # an integer of hundreds of digits
            number = math.inf
        if math.isinf(number) and not (isinstance(v, float) and math.isinf(v)):
            raise TextError(f"{where}: {_shown(v)[:40]} is too large for any float field; "
                            "write inf if that is meant")
        if kind == "float32" and math.isfinite(number) and not _fits_float32(number):
            raise TextError(f"{where}: {v} is out of range for float32 (it would be "
                            "infinite; write inf if that is meant)")
        return number
    if kind == "bool":
        if not (isinstance(v, _Enumerant) and v in ("true", "false")):
            raise TextError(f"{where}: expected true or false, not {_shown(v)}")
        return v == "true"
    if kind == "text":
        if not isinstance(v, _Literal):
            raise TextError(f"{where}: expected text in double quotes, not {_shown(v)}")
        try:
            text = bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise TextError(f"{where}: Text must be UTF-8; byte {e.start} of this one "
                            f"(0x{v[e.start]:02x}) is not (Data takes any bytes)") from None
        return text
    if kind == "data":
        if isinstance(v, bytes):
            return bytes(v)
        raise TextError(f'{where}: expected data (0x"0a0b" or "text"), not {_shown(v)}')
    if kind == "enum":
        names = list(field.schema.enumerants)
        if not isinstance(v, _Enumerant) or v not in names:
            raise TextError(f"{where}: expected one of {', '.join(names)}, not {_shown(v)}")
        return str(v)
    if kind == "struct":
        return typed(v, field.schema, where + ".")
    if kind == "void":
        if not (isinstance(v, _Enumerant) and v == "void"):
            raise TextError(f"{where}: expected void, not {_shown(v)}")
        return None
    if kind == "list":
        if not isinstance(v, list):
            raise TextError(f"{where}: expected a list [ ... ]")
        element = type_.list.elementType
        schema = field.schema.elementType if element.which() in ("enum", "struct", "list") \
            else None
        return [_typed_element(x, element, schema, f"{where}[{i}]") for i, x in enumerate(v)]
    if kind == "anyPointer" and type_.anyPointer.which() in ("parameter",
                                                             "implicitMethodParameter"):
        # `v :T` of a `Box(Text)`: the schema says Text where it is used, but what a
        # brand binds a parameter to is not in the field's type (pycapnp gives none):
        # "anyPointer fields" named a type nobody wrote
        raise TextError(f"{where}: a field whose type is a generic parameter (as `v :T` "
                        "of a `Box(Text)`) cannot be given on the command line: what a brand "
                        "binds it to is not known here")
    if kind == "interface" or (kind == "anyPointer"
                               and type_.anyPointer.which() == "unconstrained"
                               and type_.anyPointer.unconstrained.which() == "capability"):
        raise TextError(f"{where}: a capability cannot be given on the command line")
    raise TextError(f"{where}: {_KINDS.get(kind, kind)} fields cannot be given on the "
                    "command line")


#: Cap'n Proto's names of the kinds a field cannot be given as
_KINDS = {"anyPointer": "AnyPointer"}


def _typed_element(v, element, schema, where):
    class _Field:          # what _typed needs of a field: its schema
        pass
    f = _Field()
    f.schema = schema
    return _typed(v, element, f, where)


def _shown(v) -> str:
    """A parsed value as the text format writes it (cut short), for an error."""
    if isinstance(v, dict):
        return "a struct (...)"
    if isinstance(v, list):
        return "a list [...]"
    if isinstance(v, _Literal):
        return repr(bytes(v[:40]).decode("utf-8", "replace"))
    if isinstance(v, bytes):
        return f'data 0x"{v[:40].hex()}"'
    return str(v)
