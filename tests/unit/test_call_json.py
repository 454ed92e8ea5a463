"""`wsuper call --json`: the results as JSON (supervisor/client.py), read from a
reader as pycapnp gives it, without a running system."""
import json
import math

import pytest

import capnp_schemas
from supervisor import client

SCHEMA = """@0xd0a1b2c3d4e5f6c1;
struct Inner { f @0 :Float32; }
struct Results {
  x @0 :Float64;
  y @1 :Float32;
  xs @2 :List(Float64);
  inner @3 :Inner;
  g :group { z @4 :Float64; }
  u :union { a @5 :Float64; b @6 :Int32; }
  n @7 :Int32;
}
"""


def _strict(text):
    """json.loads refusing the NaN/Infinity literals, which are not JSON."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "results.capnp"
    path.write_text(SCHEMA)
    return capnp_schemas.load(str(path))


@pytest.mark.parametrize("value, text", [(math.nan, "NaN"), (math.inf, "Infinity"),
                                         (-math.inf, "-Infinity")])
def test_non_finite_floats_anywhere_in_results_are_written_as_json(schema, value, text):
    """A compartment's Float64/Float32 results of NaN or an infinity came out as
    the literals NaN, Infinity, -Infinity, which JSON does not have: a strict
    reader (JavaScript's JSON.parse, Go's encoding/json) refused the whole
    answer.  Wherever one is (a field, a list, a nested struct, a group, a union),
    it is the string protobuf's JSON mapping uses; finite numbers stay numbers."""
    msg = schema.Results.new_message()
    msg.x = value
    msg.y = value
    xs = msg.init("xs", 3)
    xs[0], xs[1], xs[2] = 1.5, value, -2.0
    msg.inner.f = value
    msg.g.z = value
    msg.u.a = value
    msg.n = 7
    out = _strict(client.to_json(msg.as_reader()))
    assert out == {"x": text, "y": text, "xs": [1.5, text, -2.0], "inner": {"f": text},
                   "g": {"z": text}, "u": {"a": text}, "n": 7}


def test_finite_results_are_unchanged(schema):
    msg = schema.Results.new_message()
    msg.x = 0.25
    msg.u.b = -3
    out = _strict(client.to_json(msg.as_reader()))
    assert out["x"] == 0.25 and out["y"] == 0.0 and out["u"] == {"b": -3} and out["xs"] == []


NESTED = """@0xd0a1b2c3d4e5f6c2;
enum Color { red @0; green @1; }
struct Item { c @0 :Color; d @1 :Data; }
struct Nested {
  ints @0 :List(List(Int32));
  floats @1 :List(List(List(Float32)));
  colors @2 :List(List(Color));
  data @3 :List(List(Data));
  items @4 :List(List(Item));
  texts @5 :List(Text);
}
"""


def test_lists_of_lists_are_json_arrays_of_their_values(tmp_path):
    """A list of lists was written as a list of *strings* ("[1, 2]"), and the
    floats, data and enums inside as pycapnp prints them (nan, not "NaN")."""
    (tmp_path / "nested.capnp").write_text(NESTED)
    message = capnp_schemas.load(str(tmp_path / "nested.capnp")).Nested.new_message()
    message.ints = [[1, 2], [], [3]]
    message.floats = [[[math.nan, 1.5]], []]
    message.colors = [["green", "red"]]
    message.data = [[b"\x00\xff"]]
    message.items = [[{"c": "green", "d": b"a"}]]
    message.texts = ["x", ""]
    assert _strict(client.to_json(message.as_reader())) == {
        "ints": [[1, 2], [], [3]], "floats": [[["NaN", 1.5]], []], "colors": [["green", "red"]],
        "data": [["AP8="]], "items": [[{"c": "green", "d": "YQ=="}]], "texts": ["x", ""]}


NEWER = """@0xd0a1b2c3d4e5f6c7;
enum Color { red @0; green @1; }
struct Answer { c @0 :Color; u :union { a @1 :Int32; b @2 :Text; } n @3 :Int32;
                cs @4 :List(Color); }
"""


def test_an_enum_value_or_union_member_the_schema_does_not_know_is_json_too(tmp_path):
    """A review of the operator's commands: a compartment whose results hold an enum
    value or a union member its schema does not name (a newer schema's: legal
    Cap'n Proto, which the text form prints as `c = (99)`, `u = ()`) failed
    `wsuper call --json` whole: "its results cannot be read: Member was null."
    An unknown enum value is its number; an unknown union member is left out, as
    the text form leaves it."""
    (tmp_path / "answer.capnp").write_text(NEWER)
    module = capnp_schemas.load(str(tmp_path / "answer.capnp"))
    message = module.Answer.new_message()
    message.c = "green"
    message.u.a = 5
    message.n = 7
    message.cs = ["red", "green"]
    raw = bytearray(message.to_bytes())
    # after the segment table (8 bytes) and the root pointer (8), the struct's data:
    # c (16 bits), the union's discriminant (16 bits: 0 is a), a, n
    assert raw[16:20] == bytes.fromhex("01000000")
    raw[16:20] = bytes.fromhex("63000900")             # c = 99, discriminant = 9
    with module.Answer.from_bytes(bytes(raw)) as reader:
        text = str(reader)
        assert "c = (99)" in text, text
        got = _strict(client.to_json(reader))
    assert got == {"c": 99, "u": {}, "n": 7, "cs": ["red", "green"]}, got


NAMED = """@0xd0a1b2c3d4e5f6c8;
struct S { which @0 :Int32; schema @1 :Text; }
struct Answer { which @0 :Int32; schema @1 :S; g :group { which @2 :List(Int32); }
                u :union { which @3 :Int32; other @4 :Text; } }
"""


def test_fields_named_which_or_schema_are_json_too(tmp_path):
    """A field may be called `which` or `schema` (Cap'n Proto has no word against
    it), but read by getattr from pycapnp's reader, it was the reader's method
    `which` or its schema: `wsuper call --json` failed whole, "its results cannot
    be read: Object of type method is not JSON serializable" (a struct `schema`
    was a StructSchema without fields_list).  Each field is read by its name."""
    (tmp_path / "named.capnp").write_text(NAMED)
    message = capnp_schemas.load(str(tmp_path / "named.capnp")).Answer.new_message()
    message._set("which", 5)
    message.init("schema")._set("which", 6)
    message._get("schema")._set("schema", "t")
    message._get("g")._set("which", [7, 8])
    message._get("u")._set("which", 9)
    got = _strict(client.to_json(message.as_reader()))
    assert got == {"which": 5, "schema": {"which": 6, "schema": "t"}, "g": {"which": [7, 8]},
                   "u": {"which": 9}}, got


POINTERS = """@0xd0a1b2c3d4e5f6c9;
interface I { f @0 () -> (); }
struct R { i @0 :I; a @1 :AnyPointer; c @2 :Capability; n @3 :Int32; }
"""


def test_a_null_capability_is_null_and_an_any_pointer_no_capability(tmp_path):
    """Every interface or AnyPointer field was "<capability>" in `call --json`: a
    null one too (no capability was returned; the text form leaves it out), and an
    AnyPointer holding text or a struct.  A null pointer is null; an AnyPointer
    that is not is "<pointer>" (what it holds is not asked)."""
    (tmp_path / "r.capnp").write_text(POINTERS)
    message = capnp_schemas.load(str(tmp_path / "r.capnp")).R.new_message()
    message.n = 1
    assert _strict(client.to_json(message.as_reader())) == \
        {"i": None, "a": None, "c": None, "n": 1}
    message.a.set_as_text("not a capability")
    assert _strict(client.to_json(message.as_reader()))["a"] == "<pointer>"
