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
