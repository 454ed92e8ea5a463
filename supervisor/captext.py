"""Cap'n Proto text format for `wsuper call`'s parameters: `(a = 20, b = 22)`.

pycapnp prints messages in this format but does not parse it (Cap'n Proto's
C++ TextCodec is not exposed), so this is a small parser of our own: the
value grammar of the format (structs, lists, text, data, numbers, bools,
void, enumerants), read into plain Python values that the schema then
checks (`typed`), so that an error names the field and what was expected.

    value    = struct | list | text | data | number | "true" | "false" | "void"
             | enumerant
    struct   = "(" [ field { "," field } ] ")"      field = name "=" value
    list     = "[" [ value { "," value } ] "]"
    text     = '"' chars with \\n \\t \\" \\\\ \\xHH escapes '"'
    data     = 0x"hex digits"  (a text literal is taken as UTF-8 bytes)
"""
from __future__ import annotations

import re


class TextError(ValueError):
    """Text that is not a Cap'n Proto value, or not one the schema accepts."""


_TOKEN = re.compile(r"""
    \s*(?:
      (?P<punct>[()\[\],=])
    | (?P<data>0x"[0-9a-fA-F\s]*")
    | (?P<text>"(?:[^"\\]|\\.)*")
    | (?P<number>[-+]?(?:0x[0-9a-fA-F]+|inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.X)


class _Enumerant(str):
    """A bare name: an enumerant (or true/false/void)."""


MAX_DEPTH = 32            # nested structs and lists
MAX_TEXT = 1 << 20        # characters of parameters


def parse(text: str):
    """The Python value of one Cap'n Proto text value (a struct is a dict)."""
    if len(text) > MAX_TEXT:
        raise TextError(f"parameters longer than {MAX_TEXT} characters")
    tokens = _tokens(text)
    value, at = _value(tokens, 0)
    if at != len(tokens):
        raise TextError(f"unexpected {tokens[at][1]!r} after the value")
    return value


def _tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise TextError(f"cannot read {text[at:at + 20].strip()!r} (at character {at})")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        at = m.end()
    return out


def _value(tokens, at, depth=0):
    if at >= len(tokens):
        raise TextError("the text ends where a value was expected")
    kind, tok = tokens[at]
    if tok in "([" and kind == "punct" and depth >= MAX_DEPTH:
        raise TextError(f"nested deeper than {MAX_DEPTH}")
    if tok == "(" and kind == "punct":
        return _struct(tokens, at + 1, depth + 1)
    if tok == "[" and kind == "punct":
        return _list(tokens, at + 1, depth + 1)
    if kind == "text":
        return _unescape(tok[1:-1]), at + 1
    if kind == "data":
        digits = re.sub(r"\s", "", tok[3:-1])
        if len(digits) % 2:
            raise TextError(f"{tok[:40]}: an odd number of hex digits")
        return bytes.fromhex(digits), at + 1
    if kind == "number":
        low = tok.lower().lstrip("+-")
        if len(low) > 40:
            raise TextError(f"{tok[:20]}...: a number too long for any field")
        if low in ("inf", "nan") or "." in tok or ("e" in low and not low.startswith("0x")):
            return float(tok), at + 1
        try:
            return int(tok, 0), at + 1
        except ValueError:
            raise TextError(f"{tok!r} is not a number") from None
    if kind == "name":
        return {"true": True, "false": False, "void": None}.get(tok, _Enumerant(tok)), at + 1
    raise TextError(f"unexpected {tok!r}")


def _struct(tokens, at, depth):
    out = {}
    if at < len(tokens) and tokens[at][1] == ")":
        return out, at + 1
    while True:
        if at >= len(tokens) or tokens[at][0] != "name":
            raise TextError("expected a field name in a struct")
        name = tokens[at][1]
        if at + 1 >= len(tokens) or tokens[at + 1][1] != "=":
            raise TextError(f"expected '=' after field {name!r}")
        if name in out:
            raise TextError(f"field {name!r} given twice")
        out[name], at = _value(tokens, at + 2, depth)
        if at < len(tokens) and tokens[at][1] == ",":
            at += 1
            continue
        if at < len(tokens) and tokens[at][1] == ")":
            return out, at + 1
        raise TextError("expected ',' or ')' in a struct")


def _list(tokens, at, depth):
    out = []
    if at < len(tokens) and tokens[at][1] == "]":
        return out, at + 1
    while True:
        value, at = _value(tokens, at, depth)
        out.append(value)
        if at < len(tokens) and tokens[at][1] == ",":
            at += 1
            continue
        if at < len(tokens) and tokens[at][1] == "]":
            return out, at + 1
        raise TextError("expected ',' or ']' in a list")


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            try:
                out.append(chr(int(body[i + 2:i + 4], 16)))
            except ValueError:
                raise TextError(f"\\x needs two hex digits: {body[i:i + 4]!r}") from None
            i += 4
            continue
        out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "'": "'",
                    "\\": "\\"}.get(nxt, nxt))
        i += 2
    return "".join(out)


def typed(value, struct_schema, where: str = "") -> dict:
    """`value` (a parsed struct) checked against a pycapnp struct schema, converted
    where the text allows two readings (a text literal for Data, a number for a
    float); TextError names the field that does not fit."""
    if not isinstance(value, dict):
        raise TextError(f"{where or 'the parameters'}: expected a struct such as (a = 1)")
    fields = struct_schema.fields
    out = {}
    for name, v in value.items():
        if name not in fields:
            raise TextError(f"{where}{name}: no such field (fields: "
                            f"{', '.join(f.proto.name for f in struct_schema.fields_list)})")
        field = fields[name]
        if field.proto.which() == "group":
            out[name] = typed(v, field.schema, f"{where}{name}.")
            continue
        out[name] = _typed(v, field.proto.slot.type, field, f"{where}{name}")
    return out


_INTS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_UINTS = {"uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}


def _typed(v, type_, field, where):
    kind = type_.which()
    if kind in _INTS or kind in _UINTS:
        if not isinstance(v, int) or isinstance(v, bool):
            raise TextError(f"{where}: expected an integer ({kind}), not {v!r}")
        bits = _INTS.get(kind) or _UINTS[kind]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind in _INTS \
            else (0, (1 << bits) - 1)
        if not lo <= v <= hi:
            raise TextError(f"{where}: {v} is out of range for {kind}")
        return v
    if kind in ("float32", "float64"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TextError(f"{where}: expected a number, not {v!r}")
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise TextError(f"{where}: expected true or false, not {v!r}")
        return v
    if kind == "text":
        if not isinstance(v, str) or isinstance(v, _Enumerant):
            raise TextError(f"{where}: expected text in double quotes, not {v!r}")
        return str(v)
    if kind == "data":
        if isinstance(v, bytes):
            return v
        if isinstance(v, str) and not isinstance(v, _Enumerant):
            return v.encode()
        raise TextError(f'{where}: expected data (0x"0a0b" or "text"), not {v!r}')
    if kind == "enum":
        names = list(field.schema.enumerants)
        if not isinstance(v, _Enumerant) or v not in names:
            raise TextError(f"{where}: expected one of {', '.join(names)}, not {v!r}")
        return str(v)
    if kind == "struct":
        return typed(v, field.schema, where + ".")
    if kind == "void":
        if v is not None:
            raise TextError(f"{where}: expected void")
        return None
    if kind == "list":
        if not isinstance(v, list):
            raise TextError(f"{where}: expected a list [ ... ]")
        element = type_.list.elementType
        schema = field.schema.elementType if element.which() in ("enum", "struct", "list") \
            else None
        return [_typed_element(x, element, schema, f"{where}[{i}]") for i, x in enumerate(v)]
    raise TextError(f"{where}: {kind} fields cannot be given on the command line")


def _typed_element(v, element, schema, where):
    class _Field:          # what _typed needs of a field: its schema
        pass
    f = _Field()
    f.schema = schema
    return _typed(v, element, f, where)
