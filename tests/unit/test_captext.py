"""`wsuper call`'s parameters in Cap'n Proto text (supervisor/captext.py), read
as hostile: every error names where, every value means what the format says."""
import math
import re

import pytest

import capnp_schemas
from supervisor import captext

SCHEMA = """@0xd1e0a5b5c0f0e1a1;
struct U {
  union {
    a @0 :Int32;
    b @1 :Text;
  }
  f @2 :Float32;
  g :group { x @3 :Int32; y @4 :Int32; }
  l @5 :List(List(Int8));
  level @6 :Level;
  d @7 :Data;
  t @8 :Text;
  named :union { p @9 :Int8; q @10 :Int8; }
  d64 @11 :Float64;
}
enum Level { info @0; nanny @1; infinite @2; }
"""


@pytest.fixture(scope="module")
def u(tmp_path_factory):
    path = tmp_path_factory.mktemp("captext") / "u.capnp"
    path.write_text(SCHEMA)
    return capnp_schemas.load(str(path)).U


def _typed(u, text):
    value = captext.typed(captext.parse(text), u.schema)
    message = u.new_message()
    message.from_dict(value)
    return message


@pytest.mark.parametrize("text, at", [
    ("(a = 1", 6), ("(a = 1,,)", 7), ("[", 1), ("(a 1)", 3), ("(= 1)", 1),
    ("(a = 1) (", 8), ("[1 2]", 3), ("(a = )", 5), ("  [1,", 5), ("(a = 1]", 6),
    ("(a = 1, a = 2)", 8), ('(b = "\\q")', 6), ("(a = 010)", 5), ("(a = ٣)", 5),
    ("(d64 = 1e999)", 7), ("[" * 40, 32), ("(a = @)", 5)])
def test_every_malformed_text_names_where(text, at):
    """A parse error said 'expected ',' or ')' in a struct', not where: in a
    long struct that is no help."""
    with pytest.raises(captext.TextError) as e:
        captext.parse(text)
    assert str(e.value).endswith(f"(at character {at})"), str(e.value)


def test_a_long_value_is_read_in_linear_time():
    """The tokenizer copied the rest of the text at each token: 1 MiB of `[1,1,...]`
    took 15 s.  (Guarded by the suite's timeout.)"""
    for item in ("1", '"a"', "x"):
        n = (captext.MAX_TEXT - 2) // (len(item) + 1)
        text = "[" + ",".join([item] * n) + "]"
        text += " " * (captext.MAX_TEXT - len(text))
        assert len(captext.parse(text)) == n


@pytest.mark.parametrize("escape, byte", [
    ("\\a", 7), ("\\b", 8), ("\\f", 12), ("\\n", 10), ("\\r", 13), ("\\t", 9), ("\\v", 11),
    ("\\'", 39), ('\\"', 34), ("\\\\", 92), ("\\?", 63), ("\\x41", 0x41), ("\\xff", 0xff),
    ("\\0", 0), ("\\12", 10), ("\\012", 10), ("\\177", 127), ("\\377", 255)])
def test_each_escape_is_the_one_byte_the_format_says(u, escape, byte):
    """\\a was 'a', \\012 was NUL then '12', and \\xff in Data was two bytes
    (U+00FF in UTF-8)."""
    assert _typed(u, f'(d = "<{escape}>")').d == bytes([60, byte, 62])


@pytest.mark.parametrize("escape", ["\\q", "\\x4", "\\x 4", "\\x+4", "\\xg0", "\\8", "\\u0041"])
def test_an_escape_the_format_does_not_have_is_refused(escape):
    with pytest.raises(captext.TextError, match="is no escape of the text format"):
        captext.parse(f'"{escape}"')


def test_text_is_utf8_and_data_any_bytes(u):
    assert _typed(u, '(t = "é\\xc3\\xa9", d = "é")').t == "éé"
    assert _typed(u, '(d = "é")').d == "é".encode()
    with pytest.raises(captext.TextError, match=r"t: Text must be UTF-8; byte 1 .*0xff"):
        _typed(u, '(t = "a\\xff")')
    with pytest.raises(captext.TextError, match='t: expected text in double quotes, '
                                                'not data 0x"0a"'):
        _typed(u, '(t = 0x"0a")')


@pytest.mark.parametrize("text", ["(a = 1, b = \"x\")", "(b = \"x\", a = 1)",
                                  "(named = (p = 1, q = 2))"])
def test_two_members_of_one_union_are_refused(u, text):
    """The second replaced the first without a word."""
    with pytest.raises(captext.TextError, match="are members of one union: give one"):
        _typed(u, text)
    assert _typed(u, "(b = \"x\", g = (x = 1, y = 2), named = (q = 2))").b == "x"


@pytest.mark.parametrize("name", ["info", "nanny", "infinite"])
def test_an_enumerant_may_begin_like_a_number(u, name):
    """`info` was read as the number inf followed by a name o."""
    assert _typed(u, f"(level = {name})").level == name


@pytest.mark.parametrize("value", ["1e300", "-3.5e38", "1e39"])
def test_a_number_too_large_for_float32_is_refused(u, value):
    """It became inf without a word."""
    with pytest.raises(captext.TextError, match="f: .* is out of range for float32"):
        _typed(u, f"(f = {value})")
    assert _typed(u, f"(d64 = {value})").d64 == float(value)
    assert _typed(u, "(f = -inf)").f == float("-inf")
    assert _typed(u, "(f = 3.4028234e38)").f == pytest.approx(3.4028234e38)


def test_a_command_line_that_is_not_utf8_keeps_its_bytes(u):
    raw = b'(d = "\xff\xfe", t = "ok")'.decode("utf-8", "surrogateescape")
    assert _typed(u, raw).d == b"\xff\xfe"
    with pytest.raises(captext.TextError, match="Text must be UTF-8"):
        _typed(u, b'(t = "\xff")'.decode("utf-8", "surrogateescape"))


INHERITS = """@0xd1e0a5b5c0f0e1a2;
interface Base { stash @0 (x :Int32) -> (); shared @1 (s :Text) -> (); }
interface Middle extends(Base) { mid @0 (m :Bool) -> (); }
interface Loop extends(Loop) { spin @0 () -> (); }
interface Plain extends(Middle, Loop) { add @0 (a :Int32) -> (b :Int32);
                                        shared @1 (n :Int8) -> (); }
"""


def test_call_finds_inherited_methods(tmp_path):
    """`wsuper call` looked at the interface's own methods only: every inherited
    method was 'no method'.  The interface's own comes first; a cycle of extends
    ends."""
    (tmp_path / "inh.capnp").write_text(INHERITS)
    plain = capnp_schemas.load(str(tmp_path / "inh.capnp")).Plain.schema
    assert captext.typed(captext.parse("(x = 3)"), captext.method(plain, "stash").param_type) \
        == {"x": 3}
    assert captext.typed(captext.parse("(m = true)"), captext.method(plain, "mid").param_type) \
        == {"m": True}
    assert list(captext.method(plain, "shared").param_type.fields) == ["n"]
    assert captext.method(plain, "spin") is not None
    with pytest.raises(KeyError) as e:
        captext.method(plain, "nope")
    assert e.value.args[0] == "has no method 'nope' (methods: add, shared, mid, spin, stash)"


WORDS = """@0xd1e0a5b5c0f0e1a3;
enum Word { inf @0; nan @1; true @2; false @3; void @4; }
struct W {
  inf @0 :Int32; nan @1 :Float64; true @2 :Bool; void @3 :Void;
  word @4 :Word; words @5 :List(Word); f @6 :Float32; b @7 :Bool; v @8 :Void;
  fs @9 :List(Float64); bs @10 :List(Bool); t @11 :Text; ts @12 :List(Text);
}
"""


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    path = tmp_path_factory.mktemp("captext") / "w.capnp"
    path.write_text(WORDS)
    return capnp_schemas.load(str(path)).W


def _w(w, text):
    message = w.new_message()
    message.from_dict(captext.typed(captext.parse(text), w.schema))
    return message


@pytest.mark.parametrize("text, field, expected", [
    ("(word = inf)", "word", "inf"), ("(word = nan)", "word", "nan"),
    ("(word = true)", "word", "true"), ("(word = false)", "word", "false"),
    ("(word = void)", "word", "void"), ("(words = [void, inf, true, nan, false])", "words",
                                        ["void", "inf", "true", "nan", "false"]),
    ("(inf = 3)", "inf", 3), ("(true = true)", "true", True), ("(void = void)", "void", None),
    ("(nan = -inf)", "nan", float("-inf")), ("(f = inf)", "f", float("inf")),
    ("(b = false)", "b", False), ("(v = void)", "v", None), ("(bs = [true, false])", "bs",
                                                             [True, False]),
    ("(fs = [inf, -inf, 0.5])", "fs", [float("inf"), float("-inf"), 0.5])])
def test_a_bare_name_means_what_the_fields_type_says(w, text, field, expected):
    """inf, nan, true, false and void were read before the field's type was known:
    an enumerant so named (enum Word { nan @0; true @1; }) was refused as 'not nan'
    and a field named inf or nan could not be given at all ('expected a field
    name'), though Cap'n Proto's own parser reads them as the schema says."""
    value = getattr(_w(w, text), field)
    assert (list(value) if field in ("words", "bs", "fs") else value) == \
        ([str(x) for x in expected] if field == "words" else expected)
    assert math.isnan(_w(w, "(nan = nan)").nan) and math.isnan(_w(w, "(f = -nan)").f)


@pytest.mark.parametrize("text, message", [
    ("(b = 1)", "b: expected true or false, not 1"), ("(v = 0)", "v: expected void, not 0"),
    ("(f = true)", "f: expected a number, not true"), ("(word = 0)", "word: expected one of"),
    ("(inf = inf)", "inf: expected an integer"), ("(b = inf)", "b: expected true or false"),
    ("(t = nan)", "t: expected text"), ("(v = nan)", "v: expected void, not nan")])
def test_a_bare_name_another_type_does_not_take_is_refused(w, text, message):
    with pytest.raises(captext.TextError, match=re.escape(message)):
        _w(w, text)


def test_adjacent_text_literals_are_one(w):
    """Cap'n Proto's parser joins "a" "b" into "ab"; it was refused."""
    assert _w(w, '(t = "a" "\\x62"  "c")').t == "abc"
    assert list(_w(w, '(ts = ["a" "b", "c"])').ts) == ["ab", "c"]
    with pytest.raises(captext.TextError, match="Text must be UTF-8"):
        _w(w, '(t = "\\xc3" "x")')          # one literal: checked as a whole
    assert _w(w, '(t = "\\xc3" "\\xa9")').t == "é"


def test_a_number_is_not_refused_for_its_length_alone(w):
    """Any number longer than 40 characters was 'too long for any field', though a
    float may be written with as many digits as one likes."""
    assert _w(w, "(nan = 0.1" + "0" * 100 + "1)").nan == 0.1
    assert _w(w, "(nan = " + "1" * 300 + ")").nan == float("1" * 300)
    assert _w(w, "(inf = 0x" + "0" * 100 + "7)").inf == 7
    for text, message in [("(nan = " + "9" * 350 + ")", "nan: 999.* is too large for any float"),
                          ("(f = " + "9" * 50 + ")", "f: .* is out of range for float32"),
                          ("(inf = " + "9" * 50 + ")", "inf: .* is out of range for int32"),
                          ("(inf = " + "9" * 5000 + ")", "a number too long for any field")]:
        with pytest.raises(captext.TextError, match=message):
            _w(w, text)


DEPTH_FIRST = """@0xd1e0a5b5c0f0e1a4;
interface D { f @0 (d :Int32); g @1 (); }
interface A extends(D) { }
interface B { f @0 (b :Text); g @1 (x :Int8); h @2 (); }
interface E extends(B) { h @0 (e :Int8); }
interface C extends(A, E) { }
"""


@pytest.fixture(scope="module")
def depth_first(tmp_path_factory):
    path = tmp_path_factory.mktemp("captext") / "df.capnp"
    path.write_text(DEPTH_FIRST)
    return capnp_schemas.load(str(path)).C.schema


@pytest.mark.parametrize("name, declared_by, fields", [
    ("f", "D", ["d"]), ("g", "D", []), ("h", "E", ["e"])])
def test_an_inherited_method_is_found_as_cap_n_proto_finds_it(depth_first, name, declared_by,
                                                             fields):
    """Cap'n Proto finds a method by name in the interface, then in each it
    extends in order, depth first: C extends(A, E), A extends(D), so C's f is D's.
    captext searched breadth first and took B's f: the params were typed for B's
    while pycapnp, calling by name, sent D's."""
    c = depth_first
    found = captext.method(c, name)
    assert list(found.param_type.fields) == fields
    interface, method = captext.find(c, name)
    assert interface.node.displayName.endswith(f":{declared_by}")
    assert method.param_type.node.id == found.param_type.node.id


GENERIC = """@0xd1e0a5b5c0f0e1a9;
struct Box(T) { v @0 :T; n @1 :Int32; }
interface Store(K) {
  put @0 (k :K, b :Box(Text), a :AnyPointer, c :Capability, s :Store(Text)) -> ();
}
"""


@pytest.fixture(scope="module")
def put(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "g.capnp"
    path.write_text(GENERIC)
    return captext.method(capnp_schemas.load(str(path)).Store.schema, "put").param_type


@pytest.mark.parametrize("text, message", [
    ('(b = (v = "x"))', "b.v: a field whose type is a generic parameter (as `v :T` of a "
                        "`Box(Text)`) cannot be given on the command line"),
    ("(k = 1)", "k: a field whose type is a generic parameter"),
    ("(a = 1)", "a: AnyPointer fields cannot be given on the command line"),
    ("(c = 1)", "c: a capability cannot be given on the command line"),
    ("(s = 1)", "s: a capability cannot be given on the command line"),
])
def test_what_the_command_line_cannot_give_is_named_as_the_schema_writes_it(put, text,
                                                                             message):
    """`b :Box(Text)` holds a `v :T`, which the schema binds to Text: refused as
    "b.v: anyPointer fields cannot be given", a type nobody wrote (pycapnp's word for
    a generic parameter, a capability and AnyPointer alike); an interface field was
    "interface fields".  Each is named as the schema has it."""
    with pytest.raises(captext.TextError) as e:
        captext.typed(captext.parse(text), put)
    assert str(e.value).startswith(message), str(e.value)
    assert captext.typed(captext.parse("(b = (n = 1))"), put) == {"b": {"n": 1}}


@pytest.mark.parametrize("text, message", [
    ("(g = 1)", "g: expected a struct such as (a = 1), not 1"),
    ("(l = [[(x = 1)]])", "l[0][0]: expected an integer (int8), not a struct (...)"),
    ("[1]", "the parameters: expected a struct such as (a = 1), not a list [...]"),
])
def test_a_value_that_is_no_struct_is_named_without_a_stray_dot(u, text, message):
    """A group or struct given something else was refused as "g.: expected a struct
    such as (a = 1)": the dot before its fields' names, and not a word of what was
    given."""
    with pytest.raises(captext.TextError) as e:
        captext.typed(captext.parse(text), u.schema)
    assert str(e.value) == message
