"""C bindings from `wsuper bindgen`, checked against pycapnp on the other side.

A C plugin (guests/c/echo.c) serves Echo through the generated server
skeleton; a stock pycapnp client calls it through the supervisor.  `echo`
decodes into C structs and encodes again, `describe` prints what C decoded,
`make` encodes from C alone, `callPeer` calls a capability handed in at run
time through a generated client stub."""
import math
import os
import shutil
import time

import capnp
import pytest

import capnp_schemas
from tests.conftest import GUESTS_C, ROOT, external_client, run_wsuper

SCHEMA = os.path.join(GUESTS_C, "echo.capnp")


@pytest.fixture
def echo_system(tmp_path, wsuper, echo_plugin):
    sock = tmp_path / "ext.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{SCHEMA}"]
socket = "{sock}"
[compartments.echo]
module = "{echo_plugin}"
exports = "Echo"
external = true
[compartments.other]
module = "{echo_plugin}"
exports = "Echo"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready other")
    run.wait_for("ready echo")
    return str(sock)


def _call(sock, body):
    schema = capnp_schemas.load(SCHEMA)

    async def run(gateway):
        echo = (await gateway.get("echo")).cap.as_interface(schema.Echo)
        other = (await gateway.get("other")).cap.as_interface(schema.Echo)
        return await body(schema, echo, other)
    return external_client(sock, run)


FULL = dict(b=True, i8=-128, i16=-32768, i32=-2147483648, i64=-(1 << 63), u8=255, u16=65535,
            u32=(1 << 32) - 1, u64=(1 << 64) - 1, f32=1.5, f64=-2.25e300, text="héllo wörld",
            data=b"\x00\x01\xfe\xff", color="blue", inner={"n": 7, "label": "seven"},
            ints=[1, -1, 1 << 40], texts=["a", "", "ccc"],
            inners=[{"n": 1, "label": "one"}, {"n": 2}], flags=[True, False, True] * 5,
            colors=["green", "red", "blue"], withDefault=-5, flag=False)


def _plain(v):
    d = v.to_dict()
    d.pop("peer", None)
    return d


def test_every_field_type_round_trips_through_c(echo_system):
    async def body(schema, echo, _other):
        value = schema.Everything.new_message(**FULL)
        back = (await echo.echo(value)).value
        empty = (await echo.echo(schema.Everything.new_message())).value
        return _plain(back), _plain(empty), empty.withDefault, empty.flag
    back, empty, default_int, default_flag = _call(echo_system, body)
    # C does not tell a null Text from an empty one: the missing label comes back ""
    expected = dict(FULL, inners=[{"n": 1, "label": "one"}, {"n": 2, "label": ""}])
    assert {k: back[k] for k in expected} == expected
    # unset fields keep the schema's defaults on the way through C (XOR-encoded)
    assert (default_int, default_flag) == (42, True)
    assert "inner" not in empty and empty.get("ints", []) == []


def test_large_params_pycapnp_sends_in_several_segments_arrive_whole(echo_system):
    """pycapnp puts params that outgrow its first segment in a second one: such a
    message, larger than the slices the supervisor feeds its router (4 KiB), is
    handed to it whole (runtime._piece; it was cut in 4 KiB slices, ~60 ms of the
    loop for 8 MiB), and every byte of it reaches the plugin and comes back, call
    after call, with small ones between them."""
    blobs = [os.urandom(n) for n in (5000, 1 << 20, 3 << 20, 4097)]

    async def body(schema, echo, _other):
        value = schema.Everything.new_message(data=b"", texts=["x" * 3000] * 3)
        segments = []
        for blob in blobs:
            value.data = blob
            segments.append(len(value.to_segments()))
            back = (await echo.echo(value)).value
            small = (await echo.echo(schema.Everything.new_message(i32=len(blob)))).value
            assert (bytes(back.data), list(back.texts), small.i32) == \
                (blob, ["x" * 3000] * 3, len(blob)), len(blob)
        return segments
    segments = _call(echo_system, body)
    assert max(segments) > 1, segments         # the case at hand: several segments


def test_c_decodes_what_pycapnp_encodes(echo_system):
    async def body(schema, echo, _other):
        return (await echo.describe(schema.Everything.new_message(**FULL))).text
    text = _call(echo_system, body)
    fields = dict(part.split("=", 1) for part in text.split(" ") if "=" in part)
    assert fields["i64"] == str(-(1 << 63)) and fields["u64"] == str((1 << 64) - 1)
    assert fields["u32"] == str((1 << 32) - 1) and fields["i8"] == "-128"
    assert fields["f32"] == "1.500" and math.isclose(float(fields["f64"]), -2.25e300)
    assert fields["text"] == "héllo" and "wörld" in text      # UTF-8 intact
    assert fields["data"] == "4:ff" and fields["color"] == "2"
    assert fields["withDefault"] == "-5" and fields["flag"] == "0" and fields["peer"] == "no"
    assert fields["inner"] == "7/seven" and fields["ints"] == f"1,-1,{1 << 40},"
    assert fields["texts"] == "a,,ccc," and fields["inners"] == "1/one,2/,"
    assert fields["flags"] == "101" * 5 and fields["colors"] == "102"


def test_pycapnp_decodes_what_c_encodes(echo_system):
    async def body(schema, echo, _other):
        made = (await echo.make(3)).value
        peer_text = (await made.peer.describe(schema.Everything.new_message(i32=9))).text
        try:
            await echo.make(-1)
            failed = None
        except capnp.KjException as e:
            failed = str(e)
        return _plain(made), peer_text, failed
    made, peer_text, failed = _call(echo_system, body)
    assert made == dict(
        b=True, i8=-3, i16=-3000, i32=-300000, i64=-30000000000, u8=203, u16=60003,
        u32=4000000003, u64=18000000000000000003, f32=1.5, f64=0.75, text="made 3",
        data=b"\x01\x02\x03", color="blue", inner={"n": 3, "label": "in"},
        ints=[3, 3 << 20, 3 << 40], texts=["x", ""],
        inners=[{"n": 0}, {"n": 7, "label": "second"}],   # a zeroed wsuper_text is null
        flags=[i % 3 == 0 for i in range(10)], colors=["green", "red"], withDefault=0,
        flag=False, nothing=None)
    # the capability C put in the struct is its own main object: callable from pycapnp
    assert "i32=9 " in peer_text
    # an error from a server function reaches the caller with its message
    assert "seed must not be negative" in failed


def test_a_plugin_calls_a_capability_it_is_handed(echo_system):
    async def body(schema, echo, other):
        return (await echo.callPeer(other, 4)).text
    text = _call(echo_system, body)
    assert text.startswith("b=0 i8=-4 ") and "text=made 4" in text and "peer=yes" in text



def test_a_failed_call_says_whether_the_params_or_the_results_were_at_fault(tmp_path, wsuper,
                                                                           echo_plugin):
    """The skeleton answered every message it could not read, and every result it
    could not send, "malformed message": a caller whose params were fine, but
    whose `echo` came back larger than the plugin's `message_size` (a list of
    empty structs takes no room in the params, two words each in the results),
    was told its message was malformed, and a caller whose params were malformed
    was not told what in them.  Now each names the method, which of the two, and
    why."""
    sock = tmp_path / "ext.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{SCHEMA}"]
socket = "{sock}"
[compartments.echo]
module = "{echo_plugin}"
exports = "Echo"
external = true
[compartments.echo.limits]
message_size = "4KiB"
""")
    # the same schema (and ids) as a caller may have it: Inner empty, text Data
    # (loaded apart: wsuper's loader refuses a second file of those ids)
    with open(SCHEMA) as f:
        text = f.read()
    text = text.replace("n @0 :Int32;", "").replace("label @1 :Text;", "")
    (tmp_path / "echo.capnp").write_text(text.replace("text @11 :Text;", "text @11 :Data;"))
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready echo")
    schema = capnp.SchemaParser().load(str(tmp_path / "echo.capnp"))

    async def body(gateway):
        echo = (await gateway.get("echo")).cap.as_interface(schema.Echo)
        out = [len((await echo.echo(schema.Everything.new_message(inners=[{}] * 10))).value.inners)]
        for value in (dict(inners=[{}] * 400), dict(text=b"no NUL")):
            try:
                await echo.echo(schema.Everything.new_message(**value))
                out.append(None)
            except capnp.KjException as e:
                out.append(str(e).split("\n")[0])
        return out
    small, big, no_nul = external_client(str(sock), body)
    assert small == 10
    assert "echo: results of Echo.echo not sent: " in big and "message_size" in big, big
    assert "malformed" not in big, big
    assert "echo: malformed params of Echo.echo: text without its NUL" in no_nul, no_nul



def test_objects_handed_out_in_answers_do_not_fill_the_servers_handles(tmp_path, wsuper,
                                                                      echo_plugin):
    """Echo.make answers with a capability to the plugin's own object:
    wsuper_object(0), which makes a new handle in the plugin's c-list at each
    call, and which a server written with the generated skeleton could not
    release (the answer is sent after its function returns).  One client calling
    make `handles` times filled echo's table, and from then on every client's make
    failed ("a capability field holds a handle not in the c-list").  Now
    wsuper_object_for(arena, tag) makes one that goes with the arena, once the
    answer is sent."""
    sock = tmp_path / "ext.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{SCHEMA}"]
socket = "{sock}"
[compartments.echo]
module = "{echo_plugin}"
exports = "Echo"
external = true
[compartments.echo.limits]
handles = 32
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready echo")
    schema = capnp_schemas.load(SCHEMA)

    async def hog(gateway):
        echo = (await gateway.get("echo")).cap.as_interface(schema.Echo)
        for i in range(80):
            made = (await echo.make(1)).value
            del made
        return i

    async def other(gateway):
        echo = (await gateway.get("echo")).cap.as_interface(schema.Echo)
        made = (await echo.make(2)).value
        return made.i32, (await made.peer.describe(schema.Everything.new_message(i32=9))).text
    assert external_client(str(sock), hog) == 79
    i32, text = external_client(str(sock), other)
    assert i32 == -200000 and text.startswith("b=0 i8=0 i16=0 i32=9 "), text


def test_bindgen_cli_writes_headers_and_refuses_what_it_cannot_bind(tmp_path):
    r = run_wsuper("bindgen", SCHEMA, "-o", str(tmp_path / "inc"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "inc")) == ["echo.h", "wsuper.h"]
    header = (tmp_path / "inc" / "echo.h").read_text()
    assert "static int echo_echo(wsuper_arena *arena_, wsuper_cap cap_, const everything *value, " \
           "echo_echo_results *out_)" in header
    bad = tmp_path / "u.capnp"
    bad.write_text("@0xd1f0a3b2c4e5f602;\nstruct S { union { a @0 :Int32; b @1 :Text; } }\n")
    r = run_wsuper("bindgen", str(bad), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "u.capnp: S: unions are not supported" in r.stderr


def test_bindgen_of_several_schemas_writes_none_when_one_is_refused(tmp_path):
    """`bindgen good.capnp bad.capnp` wrote good's header and then refused bad's:
    the command failed (exit 2) with a half-written include directory, a header
    from this run beside older ones.  Every schema is bound and its files checked
    before any is written; a refusal writes nothing, wherever the bad one is."""
    bad = tmp_path / "u.capnp"
    bad.write_text("@0xd1f0a3b2c4e5f602;\nstruct S { union { a @0 :Int32; b @1 :Text; } }\n")
    for order in ([SCHEMA, str(bad)], [str(bad), SCHEMA]):
        out = tmp_path / f"inc{len(os.listdir(tmp_path))}"
        r = run_wsuper("bindgen", *order, "-o", str(out))
        assert r.returncode == 2 and "u.capnp: S: unions are not supported" in r.stderr
        assert not out.exists() or os.listdir(out) == [], os.listdir(out)
    # a header there that is not bindgen's, named last, refuses the whole run too
    out = tmp_path / "mine"
    out.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "kept.capnp").write_text("@0xd1f0a3b2c4e5f603;\nstruct K { a @0 :Int32; }\n")
    (out / "kept.h").write_text("/* my own */\n")
    r = run_wsuper("bindgen", SCHEMA, str(other / "kept.capnp"), "-o", str(out))
    assert r.returncode == 2 and "kept.h" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == ["kept.h"]


def test_an_unsupported_declaration_is_named_as_the_schema_names_it_where_it_is(tmp_path):
    """bindgen's refusals named a declaration by its C name, in the file it was
    given: `k.capnp: outer_inner.v`, `k.capnp: i_m_params.a`, and a union in a
    struct of an *imported* file was `k.capnp: v` (a struct k.capnp does not
    hold).  They name it as the schema does, in the file that declares it; and a
    file's name that holds a newline or an escape sequence is escaped, so the
    error stays one line that no name can colour or continue."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "v.capnp").write_text(
        "@0xd1f0a3b2c4e5f6a1;\nstruct V { union { a @0 :Int32; b @1 :Text; } }\n")
    cases = {
        "nested": ("struct Outer { struct Inner { v @0 :AnyPointer; } x @0 :Int8; }\n",
                   "nested.capnp: Outer.Inner.v: anyPointer fields are not supported"),
        "params": ("interface I { m @0 (a :AnyPointer) -> (); }\n",
                   "params.capnp: I.m, parameter a: anyPointer fields are not supported"),
        "results": ("interface I { m @0 () -> (y :List(List(Int8))); }\n",
                    "results.capnp: I.m, result y: List(list) is not supported"),
        "imported": ('using import "sub/v.capnp".V;\nstruct S { v @0 :V; }\n',
                     "sub/v.capnp (imported by imported.capnp): V: unions are not supported"),
        "inherits": ("interface A {}\ninterface B extends(A) {}\n",
                     "inherits.capnp: B: interface extends another interface"),
    }
    for i, (name, (body, said)) in enumerate(cases.items()):
        (tmp_path / f"{name}.capnp").write_text(f"@0xd1f0a3b2c4e5f6b{i};\n{body}")
        r = run_wsuper("bindgen", str(tmp_path / f"{name}.capnp"), "-o", str(tmp_path / "out"))
        said = said.replace(f"{name}.capnp", str(tmp_path / f"{name}.capnp"))
        assert r.returncode == 2 and r.stderr.startswith(f"wsuper: error: {said}"), r.stderr
    evil = "evil\n\x1b[31mwsuper: fine.capnp"
    (tmp_path / evil).write_text("@0xd1f0a3b2c4e5f6c1;\nstruct S { union { a @0 :Int8; "
                                 "b @1 :Int8; } }\n")
    for path in (evil, evil + ".missing"):
        r = run_wsuper("bindgen", str(tmp_path / path), "-o", str(tmp_path / "out"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr
        assert r.stderr.startswith("wsuper: error: ") and "evil\\n\\x1b[31mwsuper" in r.stderr


def test_names_that_are_c_keywords_still_compile(tmp_path):
    from supervisor import toolchain
    (tmp_path / "kw.capnp").write_text(
        "@0xd1f0a3b2c4e5f609;\nstruct Double { int @0 :Int32; char @1 :Text; }\n"
        "interface Switch { case @0 (default :Double) -> (return :Bool); }\n")
    r = run_wsuper("bindgen", str(tmp_path / "kw.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "use.c").write_text(
        '#include "kw.h"\nint main(void) {\n  double_ d = {1, {"x", 1}};\n'
        '  switch_case_results r;\n  wsuper_arena a = {0, 0};\n'
        '  return switch_case(&a, 1, &d, &r) == 0 && r.return_;\n}\n')
    toolchain.build([str(tmp_path / "use.c")], str(tmp_path / "use.wasm"),
                    include=[str(tmp_path / "inc")], extra=["-Werror"])


SHADOWS = """@0xd1f0a3b2c4e5f60a;
struct A { x @0 :Int32; }
struct B { a @0 :A; }
struct R { b @0 :B; }
struct S { r @0 :R; s @1 :List(S); }
struct T { s @0 :S; t @1 :T; }
struct V { t @0 :List(T); }
struct At { v @0 :V; }
struct Out { at @0 :At; }
struct In { out @0 :Out; }
struct Object { in @0 :In; }
struct Method { object @0 :Object; }
struct Len { method @0 :Method; }
enum N { x @0; y @1; }
enum L { x @0; }
enum I { x @0; }
enum First { x @0; }
enum Iface { x @0; }
enum Ncaps { x @0; }
enum Rc { x @0; }
struct Point { x @0 :Int32; }
enum Color { red @0; }
struct Enums { n @0 :N; l @1 :L; i @2 :I; first @3 :First; iface @4 :Iface; ncaps @5 :Ncaps;
               rc @6 :Rc; ns @7 :List(N); ls @8 :List(L); is @9 :List(I); firsts @10 :List(First); }
interface Shadow {
  put @0 (point :Point, other :Point, color :Color, hue :Color, pointList :List(Point),
          more :List(Point)) -> (point :Point, color :Color);
  a @1 A -> B;
  r @2 R -> S;
  t @3 (t :T, v :V, at :At, out :Out, in :In, object :Object, method :Method, len :Len)
       -> (e :Enums);
  s @4 (a :A, b :B, r :R, s :S, n :N, l :L, i :I, first :First, iface :Iface, ncaps :Ncaps,
        rc :Rc) -> (a :A);
}
"""


def test_names_that_are_also_type_names_still_compile(tmp_path):
    """A parameter named after its type (`put (point :Point, other :Point)`, the
    commonest way to write a schema), and types named like the generated code's
    own parameters and locals (`struct S`, `struct A`, `enum N`): the generated
    functions refer to types by struct tag or by uint16_t, which no name shadows."""
    from supervisor import toolchain
    (tmp_path / "shadow.capnp").write_text(SHADOWS)
    r = run_wsuper("bindgen", str(tmp_path / "shadow.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "use.c").write_text(r"""
#define WSUPER_SERVE_SHADOW
#include "shadow.h"
WSUPER_SERVE_ONLY(shadow)
int shadow_serve_put(wsuper_arena *a, int32_t object, const shadow_put_params *in,
                     shadow_put_results *out) {
  (void)a; (void)object; out->point = in->other; out->color = in->hue; return 0; }
int shadow_serve_a(wsuper_arena *a, int32_t object, const struct a *in, b *out) {
  (void)a; (void)object; out->a = (struct a *)in; return 0; }
int shadow_serve_r(wsuper_arena *a, int32_t object, const r *in, s *out) {
  (void)a; (void)object; (void)in; (void)out; return 0; }
int shadow_serve_t(wsuper_arena *a, int32_t object, const shadow_t_params *in,
                   shadow_t_results *out) {
  (void)a; (void)object; (void)in; (void)out; return 0; }
int shadow_serve_s(wsuper_arena *a, int32_t object, const shadow_s_params *in,
                   shadow_s_results *out) {
  (void)object; out->a = WSUPER_ARRAY(a, struct a, 1); out->a->x = in->n; return 0; }
int main(void) {
  wsuper_arena arena = {0, 0};
  point p = {1};
  point_list ps = {&p, 1};
  shadow_put_results pr;
  int rc = shadow_put(&arena, 1, &p, &p, COLOR_RED, COLOR_RED, ps, ps, &pr);
  struct a x = {2};
  b br;
  rc |= shadow_a(&arena, 1, x.x, &br);   /* a named params struct: its fields */
  s sr;
  rc |= shadow_r(&arena, 1, NULL, &sr);
  shadow_t_results tr;
  rc |= shadow_t(&arena, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &tr);
  shadow_s_results sres;
  rc |= shadow_s(&arena, 1, &x, NULL, NULL, NULL, N_Y, L_X, I_X, FIRST_X, IFACE_X, NCAPS_X,
                 RC_X, &sres);
  wsuper_arena_free(&arena);
  return rc;
}
""")
    toolchain.build([str(tmp_path / "use.c")], str(tmp_path / "use.wasm"),
                    include=[str(tmp_path / "inc")], extra=["-Werror"])


@pytest.mark.parametrize("body, first, second, c_name", [
    # a method's ordinal macro and the interface id: STORE_ID was redefined as 0
    ("interface Store { id @0 () -> (id :UInt64); }",
     "the id of interface Store", "method Store.id", "STORE_ID"),
    ("enum Mode { fooBar @0; fooBAR @1; }\nstruct S { m @0 :Mode; }",
     "enumerant Mode.fooBar", "enumerant Mode.fooBAR", "MODE_FOO_BAR"),
    ("interface Bus { dispatch @0 (); }",
     "the dispatch function of interface Bus", "method Bus.dispatch", "bus_dispatch"),
    ("interface Bus { x @0 (); serveX @1 (); }",
     "method Bus.x (its server function)", "method Bus.serveX (its client stub)", "bus_serve_x"),
    ("struct Foo { struct Bar {} }\nstruct FooBar {}", "struct Foo.Bar", "struct FooBar", "foo_bar"),
    ("interface Foo { get @0 (x :Int32); }\nstruct FooGetParams {}",
     "the params of Foo.get", "struct FooGetParams", "foo_get_params"),
    ("interface I { getUrl @0 (); getURL @1 (); }", "I.getUrl", "I.getURL", "i_get_url_params"),
    ("struct S { fooBar @0 :Int32; fooBAR @1 :Int32; }", "fields fooBar", "fooBAR", "foo_bar"),
    ("enum Shape { box @0; }\nstruct Shape2 { l @0 :List(Shape2); }\nstruct Shape2List {}",
     "lists of shape2", "struct Shape2List", "shape2_list"),
    # the SDK's names: a macro WSUPER_OK would have replaced the SDK's constant
    ("interface Wsuper { ok @0 (); }", "Wsuper.ok", "the C SDK (wsuper.h) reserves",
     "wsuper_ok_params"),
    ("struct WsuperText {}", "struct WsuperText", "the C SDK (wsuper.h) reserves", "wsuper_text"),
    ("struct SizeT { x @0 :Int32; }", "struct SizeT", "names ending in _t", "size_t"),
])
def test_names_that_would_collide_in_c_are_refused_naming_both(tmp_path, body, first, second,
                                                                c_name):
    """Two schema names that become one C name, or a name the SDK or the C library
    owns, are refused by bindgen with both named: a macro defined twice was only a
    compiler warning, and the second value won (a method `id` made STORE_ID 0,
    so no call reached the store)."""
    (tmp_path / "n.capnp").write_text(f"@0xd1f0a3b2c4e5f60b;\n{body}\n")
    r = run_wsuper("bindgen", str(tmp_path / "n.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 2, r.stdout
    assert first in r.stderr and second in r.stderr and f" {c_name} in C" in r.stderr, r.stderr
    assert "rename" in r.stderr and not (tmp_path / "inc").exists()


def test_a_type_and_an_imported_type_of_one_name_are_refused(tmp_path):
    """A struct (or enum) and one of the same name in a file it imports would both
    be one C type: refused with both named, the imported one with its file."""
    (tmp_path / "t.capnp").write_text(
        "@0xd1f0a3b2c4e5f6a0;\nstruct Point { x @0 :Int32; }\nenum Color { red @0; }\n")
    (tmp_path / "u.capnp").write_text(
        '@0xd1f0a3b2c4e5f6a1;\nusing T = import "t.capnp";\nstruct Point { p @0 :T.Point; }\n')
    (tmp_path / "v.capnp").write_text(
        '@0xd1f0a3b2c4e5f6a2;\nusing T = import "t.capnp";\nenum Color { blue @0; }\n'
        "struct S { c @0 :Color; d @1 :T.Color; }\n")
    for name, first, second, c_name in (
            ("u", "struct Point and", "struct Point (of t.capnp)", "point"),
            ("v", "enum Color (v.capnp)", "enum Color (t.capnp)", "color")):
        r = run_wsuper("bindgen", str(tmp_path / f"{name}.capnp"), "-o", str(tmp_path / "inc"))
        assert r.returncode == 2, r.stdout
        assert first in r.stderr and second in r.stderr and f" {c_name} in C" in r.stderr, r.stderr


def _compile(tmp_path, schemas: dict, source: str):
    from supervisor import toolchain
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, body in schemas.items():
        (tmp_path / f"{name}.capnp").write_text(body)
        r = run_wsuper("bindgen", str(tmp_path / f"{name}.capnp"), "-o", str(tmp_path / "inc"))
        assert r.returncode == 0, r.stderr
    (tmp_path / "use.c").write_text(source)
    try:
        toolchain.build([str(tmp_path / "use.c")], str(tmp_path / "use.wasm"),
                        include=[str(tmp_path / "inc")], extra=["-Werror"])
        return ""
    except toolchain.ToolchainError as e:
        return str(e)


def test_a_generated_macro_never_silently_takes_another_value(tmp_path):
    """A macro the plugin (or another generated header) defined already is not
    redefined with another value: the compiler stops at an #error naming it.  The
    same value again is harmless and compiles.  (One of the C library's, such as
    INT8_MAX, bindgen refuses: test_a_name_the_c_library_defines_as_a_macro_is_refused.)"""
    mine = "@0xd1f0a3b2c4e5f60c;\nenum Shade { dark @0; light @1; }\nstruct S { e @0 :Shade; }\n"
    error = _compile(tmp_path / "mine", {"mine": mine},
                     '#define SHADE_LIGHT 7\n#include "mine.h"\n'
                     'int main(void) { return SHADE_LIGHT; }\n')
    assert "wsuper bindgen: SHADE_LIGHT is already defined with another value" in error, error
    one = "@0xd1f0a3b2c4e5f60d;\nenum Color { red @0; green @1; }\nstruct A { c @0 :Color; }\n"
    two = "@0xd1f0a3b2c4e5f60e;\nenum Color { green @0; }\nstruct B { c @0 :Color; }\n"
    same = "@0xd1f0a3b2c4e5f60f;\nenum Color { red @0; }\nstruct C { c @0 :Color; }\n"
    error = _compile(tmp_path / "two", {"one": one, "two": two},
                     '#include "one.h"\n#include "two.h"\nint main(void) { return COLOR_GREEN; }\n')
    assert "wsuper bindgen: COLOR_GREEN is already defined with another value" in error, error
    assert _compile(tmp_path / "same", {"one": one, "same": same},
                    '#include "one.h"\n#include "same.h"\n'
                    'int main(void) { return COLOR_RED; }\n') == ""



@pytest.mark.parametrize("body, name, header", [
    ("enum Path { max @0; }", "enumerant Path.max would be PATH_MAX", "limits.h"),
    ("enum Seek { set @0; data @1; }", "enumerant Seek.set would be SEEK_SET", "stdio.h"),
    ("enum Int8 { max @0; }", "enumerant Int8.max would be INT8_MAX", "stdint.h"),
    ("interface Clock { realtime @0 () -> (); monotonic @1 () -> (); }",
     "method Clock.realtime (its ordinal) would be CLOCK_REALTIME", "time.h"),
    ("enum Sock { stream @0; dgram @1; }", "enumerant Sock.stream would be SOCK_STREAM",
     "sys/socket.h"),
    ("interface Path { max @0 () -> (); }", "method Path.max (its ordinal) would be PATH_MAX",
     "limits.h"),
    ("interface Atomic { init @0 () -> (); }",
     "method Atomic.init (its client stub) would be atomic_init", "stdatomic.h"),
])
def test_a_name_the_c_library_defines_as_a_macro_is_refused(tmp_path, body, name, header):
    """`enum Path { max @0; }` made PATH_MAX 0, and a plugin that included <limits.h>
    below the bindings (or <stdio.h>, <time.h>...) got the C library's value: the
    C library's headers are system headers, which redefine a macro without a
    warning, so the plugin sent 4096 for Path.max and nothing said so.  bindgen
    refuses every name the C library's headers define as a macro, naming one."""
    (tmp_path / "m.capnp").write_text(f"@0xd1f0a3b2c4e5f6d1;\n{body}\n")
    r = run_wsuper("bindgen", str(tmp_path / "m.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 2, r.stderr
    assert f"m.capnp: {name} in C, which <{header}> defines as a macro" in r.stderr, r.stderr
    assert not (tmp_path / "inc").exists()


def test_the_c_library_macros_bindgen_knows_are_the_toolchains():
    """supervisor/cmacros.py's table holds every macro of a generated name's shape
    that the installed toolchain's headers define (regenerate it with `python -m
    supervisor.cmacros` when wasi-libc changes)."""
    import subprocess

    from supervisor import cmacros, toolchain
    clang = toolchain.clang()
    headers = sorted(set(cmacros.MACROS.values()))
    source = "".join(f"#include <{h}>\n" for h in headers)
    base = [clang, "--target=wasm32-wasi", "-dM", "-E", "-x", "c", "-", *cmacros.FEATURES]
    own = set(cmacros._SHAPE.findall(subprocess.run(base, input="", capture_output=True,
                                                    text=True).stdout))
    for extra in ([], ["-D_GNU_SOURCE"]):
        r = subprocess.run(base + extra, input=source, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        missing = set(cmacros._SHAPE.findall(r.stdout)) - own - set(cmacros.MACROS)
        assert not missing, sorted(missing)
    assert {"PATH_MAX", "SEEK_SET", "INT_MAX", "EXIT_SUCCESS", "CLOCK_MONOTONIC"} \
        <= set(cmacros.MACROS)

def test_the_c_library_tables_command_ends_quietly_when_its_reader_goes():
    """docs/plugins.md says to run `python -m supervisor.cmacros --lower` (and
    `--declared`) to see the names bindgen renames: piped to a reader that went
    before it had all (`| head`, a pager quit early) it ended in a BrokenPipeError
    traceback (an outside review of the docs against the code).  It ends as
    `wsuper` does then: quietly, exit 0; and read whole, it prints the table.
    (Every table is printed by the same lines; each takes the toolchain ~13 s, and
    the two runs go side by side.)"""
    import subprocess
    import sys
    command = [sys.executable, "-m", "supervisor.cmacros", "--lower"]
    read, write = os.pipe()
    os.close(read)                       # the reader is gone before a byte is written
    try:
        gone = subprocess.Popen(command, cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                                text=True)
    finally:
        os.close(write)
    try:
        whole = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
        _, gone_err = gone.communicate(timeout=300)
    finally:
        if gone.poll() is None:
            gone.kill()
            gone.wait()
    assert whole.returncode == 0 and whole.stderr == "", whole.stderr
    assert "stdio.h: " in whole.stdout and " stdout" in whole.stdout, whole.stdout
    assert (gone.returncode, gone_err) == (0, ""), gone_err


def test_fields_named_like_c_library_macros_compile(tmp_path):
    """`stdout` is a macro of stdio.h (`(stdout)`), `errno` of errno.h, `true` of
    stdbool.h, `asm` a GNU C keyword: such a field or type gets a trailing _ as a
    keyword does, and a plugin that includes them first still compiles."""
    schema = ("@0xd1f0a3b2c4e5f61c;\nstruct Stdout { stdout @0 :Text; errno @1 :Int32; "
              "true @2 :Bool; asm @3 :Int8; typeof @4 :Int8; }\n"
              "interface Runner { run @0 (stdin :Text) -> (stdout :Text, stderr :Text, "
              "errno :Int32, out :Stdout); }\n")
    assert _compile(tmp_path / "x", {"runner": schema}, """#include <errno.h>
#include <stdio.h>
#include "runner.h"
int main(void) {
  wsuper_arena a = {0, 0};
  runner_run_results r;
  stdout_ s = {{"x", 1}, 2, true, 3, 4};
  int rc = runner_run(&a, 1, wsuper_str("in"), &r);
  return rc == 0 && r.stdout_.len && r.errno_ && r.out && s.true_ && s.asm_ && s.typeof_;
}
""") == ""


def test_names_like_any_lower_case_c_library_macro_compile(tmp_path):
    """Only a hand list of lower-case macros (stdout, errno, true ...) gave a field,
    struct or enum a trailing _: a field `stMtime` was `int64_t st_mtime;`, which
    a plugin that included <sys/stat.h> first read as `int64_t st_mtim.tv_sec;`,
    `noArgument` <getopt.h>'s `0`, `andEq` <iso646.h>'s `&=`, `struct Direct`
    <sys/dir.h>'s `dirent`, `struct Stat64` <sys/stat.h>'s `stat`: the header did
    not compile.  Every lower-case object-like macro of the C library's headers
    (cmacros.LOWER, made from the toolchain) is such a name now."""
    schema = ("@0xd1f0a3b2c4e5f63b;\nstruct Info { stMtime @0 :Int64; stAtime @1 :Int64; "
              "noArgument @2 :Bool; andEq @3 :Bool; d @4 :Direct; }\n"
              "struct Direct { x @0 :Int32; }\nstruct Stat64 { y @0 :Int32; }\n"
              "interface Fs { info @0 (noArgument :Bool, s :Stat64) -> (info :Info); }\n")
    assert _compile(tmp_path / "x", {"fs": schema}, """#define _GNU_SOURCE
#include <getopt.h>
#include <iso646.h>
#include <sys/dir.h>
#include <sys/stat.h>
#include "fs.h"
int main(void) {
  wsuper_arena a = {0, 0};
  fs_info_results r;
  direct_ d = {1};
  stat64_ s = {2};
  struct stat st = {0};
  int rc = fs_info(&a, 1, true, &s, &r);
  return rc == 0 && r.info && r.info->st_mtime_ && r.info->st_atime_ && r.info->no_argument_
      && r.info->and_eq_ && r.info->d && d.x && st.st_mtime;
}
""") == ""


def test_types_named_like_anything_the_c_library_declares_compile(tmp_path):
    """Only what the headers wsuper.h includes declare (stdlib.h, string.h ...) gave
    a struct or enum a trailing _: `struct Fputc` was a type `fputc`, which a plugin
    that included <stdio.h> could not compile ("redefinition of 'fputc' as
    different kind of symbol"), and so were `enum Clock` beside <time.h>'s clock(),
    `struct Log` beside <math.h>, `struct Stat` beside <sys/stat.h>.  Every name
    the C library's headers declare (cmacros.DECLARED) gets one now; an enum's
    macros keep it (CLOCK__REALTIME, never <time.h>'s CLOCK_REALTIME)."""
    schema = ("@0xd1f0a3b2c4e5f63c;\nstruct Fputc { x @0 :Int32; }\n"
              "enum Clock { realtime @0; monotonic @1; }\nstruct Log { c @0 :Clock; }\n"
              "struct Stat { f @0 :Fputc; l @1 :Log; }\n"
              "interface Fs { info @0 (f :Fputc) -> (s :Stat); }\n")
    assert _compile(tmp_path / "x", {"fs": schema}, """#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include "fs.h"
int main(void) {
  wsuper_arena a = {0, 0};
  fs_info_results r;
  fputc_ f = {1};
  log_ l = {CLOCK__MONOTONIC};
  clock_ c = CLOCK__REALTIME;
  struct stat st = {0};
  int rc = fs_info(&a, 1, &f, &r);
  fputc('x', stdout);
  return rc == 0 && r.s && r.s->f && l.c && c == 0 && st.st_size == 0 && log(1.0) == 0
      && time(NULL);
}
""") == ""


@pytest.mark.parametrize("body, name, header", [
    ("interface Clock { gettime @0 () -> (); }",
     "method Clock.gettime (its client stub) would be clock_gettime", "time.h"),
    ("interface Sem { wait @0 () -> (); }", "method Sem.wait (its client stub) would be sem_wait",
     "semaphore.h"),
    ("interface Atomic { load @0 () -> (); }",
     "method Atomic.load (its client stub) would be atomic_load", "stdatomic.h"),
    ("interface Va { start @0 () -> (); }", "method Va.start (its client stub) would be va_start",
     "stdarg.h"),
])
def test_a_function_named_like_what_the_c_library_declares_is_refused(tmp_path, body, name,
                                                                       header):
    """A client stub `clock_gettime` (interface Clock, method gettime) was a static
    function beside <time.h>'s ("static declaration of 'clock_gettime' follows
    non-static declaration"), `sem_wait` beside <semaphore.h>'s, and `atomic_load`
    or `va_start` a call of <stdatomic.h>'s or <stdarg.h>'s macro: a plugin that
    included the header did not compile.  Refused, naming the header."""
    (tmp_path / "m.capnp").write_text(f"@0xd1f0a3b2c4e5f6d2;\n{body}\n")
    r = run_wsuper("bindgen", str(tmp_path / "m.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 2, r.stderr
    assert f"m.capnp: {name} in C, which <{header}> of the C library declares" in r.stderr, \
        r.stderr
    assert not (tmp_path / "inc").exists()


def test_the_names_the_c_library_declares_bindgen_knows_are_the_toolchains():
    """supervisor/cmacros.py's DECLARED holds every lower-case name the installed
    toolchain's headers declare at file scope (`python -m supervisor.cmacros
    --declared`)."""
    import json
    import re
    import subprocess

    from supervisor import cmacros, toolchain
    clang = toolchain.clang()
    headers = sorted(set(cmacros.DECLARED.values()))
    source = "".join(f"#include <{h}>\n" for h in headers)
    for extra in ([], ["-D_GNU_SOURCE"]):
        r = subprocess.run([clang, "--target=wasm32-wasi", "-fsyntax-only", "-Xclang",
                            "-ast-dump=json", "-x", "c", "-", *cmacros.FEATURES, *extra],
                           input=source, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        todo, names = list(json.loads(r.stdout)["inner"]), set()
        while todo:
            node = todo.pop()
            if node.get("kind") == "EnumDecl":
                todo += node.get("inner", ())
            if node.get("kind") in cmacros._DECLARATIONS and not node.get("isImplicit") \
                    and re.fullmatch(r"[a-z][a-z0-9_]*", node.get("name") or ""):
                names.add(node["name"])
        missing = names - set(cmacros.DECLARED)
        assert not missing, sorted(missing)
    assert {"clock_gettime", "fputc", "stat", "atomic_load", "va_start", "log"} \
        <= set(cmacros.DECLARED)


def test_the_lower_case_c_library_macros_bindgen_knows_are_the_toolchains():
    """supervisor/cmacros.py's LOWER holds every lower-case object-like macro the
    installed toolchain's headers define (`python -m supervisor.cmacros --lower`)."""
    import subprocess

    from supervisor import cmacros, toolchain
    clang = toolchain.clang()
    headers = sorted(set(cmacros.MACROS.values()) | set(cmacros.LOWER.values()))
    source = "".join(f"#include <{h}>\n" for h in headers)
    base = [clang, "--target=wasm32-wasi", "-dM", "-E", "-x", "c", "-", *cmacros.FEATURES]
    own = set(cmacros._LOWER_SHAPE.findall(subprocess.run(base, input="", capture_output=True,
                                                          text=True).stdout))
    for extra in ([], ["-D_GNU_SOURCE"]):
        r = subprocess.run(base + extra, input=source, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        missing = set(cmacros._LOWER_SHAPE.findall(r.stdout)) - own - set(cmacros.LOWER)
        assert not missing, sorted(missing)
    assert {"st_mtime", "no_argument", "and_eq", "direct", "stdout", "errno"} \
        <= set(cmacros.LOWER)


def test_parameters_named_like_what_a_client_stub_uses_compile(tmp_path):
    """A client stub's parameter is named as its field: one named like a type of the
    C SDK (`wsuperText :Int32` before `b :Text`) hid that type from the parameters
    after it, one named like a function the stub calls (wsuper_invoke, or the
    params' own shade_m2_params_fill) hid it from the stub's body: the header did
    not compile.  A field named like the SDK's gets a trailing _ (as `memset`
    does); a parameter named like the stub's own _fill or _load, only there."""
    schema = ("@0xd1f0a3b2c4e5f61f;\nstruct Point { wsuperText @0 :Text; }\n"
              "interface Shade {\n"
              "  m @0 (wsuperText :Int32, b :Text, wsuperData :Int32, d :Data,\n"
              "        wsuperListI32 :Int32, l :List(Int32), wsuperCap :Int32, c :Shade,\n"
              "        wsuperInvoke :Int32, wsuperArena :Point, wsuperRoot :Int8)\n"
              "     -> (wsuperArena :Int32, wsuperRoot :Text);\n"
              "  m2 @1 (shadeM2ParamsFill :Int32, shadeM2ResultsLoad :Int32) -> (r :Int32);\n"
              "}\n")
    assert _compile(tmp_path / "x", {"shade": schema}, """#define WSUPER_SERVE_SHADE
#include "shade.h"
WSUPER_SERVE_ONLY(shade)
int shade_serve_m(wsuper_arena *a, int32_t object, const shade_m_params *in,
                  shade_m_results *out) {
  (void)a; (void)object;
  out->wsuper_arena_ = in->wsuper_text_ + in->wsuper_cap_ + in->wsuper_root_;
  out->wsuper_root_ = in->b; return 0; }
int shade_serve_m2(wsuper_arena *a, int32_t object, const shade_m2_params *in,
                   shade_m2_results *out) {
  (void)a; (void)object; out->r = in->shade_m2_params_fill + in->shade_m2_results_load;
  return 0; }
int main(void) {
  wsuper_arena a = {0, 0};
  shade_m_results r;
  shade_m2_results r2;
  point p = {{"x", 1}};
  int rc = shade_m(&a, 1, 1, wsuper_str("b"), 2, (wsuper_data){0, 0}, 3,
                   (wsuper_list_i32){0, 0}, 4, 0, 5, &p, 6, &r);
  rc |= shade_m2(&a, 1, 7, 8, &r2);
  return rc + (int)p.wsuper_text_.len;
}
""") == ""


def test_types_named_like_what_the_c_library_declares_compile(tmp_path):
    """wsuper.h includes stdlib.h and string.h: a struct or enum named like what they
    declare (`struct Index`: string.h's index(); `enum Random`, `struct Timespec`,
    `struct System`) was a C type of that name, and the header did not compile
    ("redefinition of 'index' as different kind of symbol"); a parameter `memset`
    hid the memset every client stub calls, and one named like a type (`sizeT`)
    hid the type from the parameters after it.  Each gets a trailing _, and each
    name bindgen declares is checked against every such name."""
    from supervisor import bindgen
    schema = ("@0xd1f0a3b2c4e5f62a;\nstruct Index { memset @0 :Int32; sizeT @1 :UInt32; "
              "free @2 :Text; }\nenum Random { a @0; }\nstruct Timespec { s @0 :Int64; }\n"
              "struct System { index @0 :Index; r @1 :Random; t @2 :List(Timespec); }\n"
              "interface Lib { run @0 (memset :Int32, sizeT :UInt32, n :UInt32, i :Index) "
              "-> (system :System, abs :Int32); }\n")
    assert _compile(tmp_path / "x", {"lib": schema}, """#include "lib.h"
int main(void) {
  wsuper_arena a = {0, 0};
  lib_run_results r;
  index_ i = {1, 2, {"x", 1}};
  random_ q = RANDOM__A;
  timespec_ t = {3};
  system_ s = {&i, q, {&t, 1}};
  int rc = lib_run(&a, 1, 4, 5, 6, &i, &r);
  void *p = malloc(1);
  memset(p, 0, 1);
  free(p);
  return rc == 0 && r.system && r.abs && s.index && i.memset_ && i.size_t_ && index("a", 'a');
}
""") == ""
    for name in sorted(bindgen._C_LIBRARY):        # every name is a trailing _ or refused
        assert bindgen._reserved(name, False) is not None, name


@pytest.mark.parametrize("directory", ["a:b", "x:int evil(void){return 1;}int y", ":c:"])
def test_a_colon_in_an_imported_files_path_is_no_part_of_a_c_name(tmp_path, directory):
    """A node's display name is its file's path, a colon, its name: split at the
    first colon, a file imported from `a:b/x.capnp` gave `typedef struct
    b/x_capnp:foo ...`, text of a directory's name written into the header's
    code.  The names are the schema's, and the header compiles."""
    (tmp_path / "out" / directory).mkdir(parents=True)
    (tmp_path / "out" / directory / "x.capnp").write_text(
        "@0xd1f0a3b2c4e5f62c;\nstruct Foo { x @0 :Int32; }\nenum Col { red @0; }\n")
    top = (f'@0xd1f0a3b2c4e5f62d;\nusing X = import "{directory}/x.capnp";\n'
           "interface Top { get @0 (c :X.Col) -> (f :X.Foo); }\n")
    assert _compile(tmp_path / "out", {"top": top}, """#include "top.h"
int main(void) {
  wsuper_arena a = {0, 0};
  top_get_results r;
  foo f = {COL_RED};
  col c = COL_RED;
  return top_get(&a, 1, c, &r) == 0 && r.f && f.x == 0;
}
""") == ""
    header = (tmp_path / "out" / "inc" / "top.h").read_text()
    code = [line for line in header.splitlines() if not line.startswith(("/*", " *"))]
    assert not [line for line in code if "evil" in line or "capnp" in line or "/x" in line]


def test_an_interface_served_by_an_sdk_macro_is_refused(tmp_path):
    """Interface Only was served by defining WSUPER_SERVE_ONLY, which wsuper.h
    defines (a function-like macro): its skeleton was always there."""
    (tmp_path / "only.capnp").write_text("@0xd1f0a3b2c4e5f62b;\n"
                                         "interface Only { m @0 () -> (); }\n")
    r = run_wsuper("bindgen", str(tmp_path / "only.capnp"), "-o", str(tmp_path / "inc"))
    assert r.returncode == 2 and "interface Only would be served by defining " \
        "WSUPER_SERVE_ONLY, a macro of the C SDK" in r.stderr, r.stderr
    assert not (tmp_path / "inc").exists()


def test_schemas_that_share_types_can_be_used_by_one_plugin(tmp_path):
    """Two schemas that import a third each have its types in their header (and
    two with a `-> stream` method each have StreamResult): a plugin that speaks
    both, and includes the third's header too, compiles: each type is defined
    once.  A file of enums alone binds too."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "types.capnp").write_text(
        "@0xd1f0a3b2c4e5f621;\nstruct Point { x @0 :Int32; y @1 :Int32; }\n"
        "enum Shape { circle @0; square @1; }\n")
    (tmp_path / "src" / "shapes.capnp").write_text(
        "@0xd1f0a3b2c4e5f624;\nenum Corner { round @0; sharp @1; }\n")
    (tmp_path / "src" / "a.capnp").write_text(
        '@0xd1f0a3b2c4e5f622;\nusing T = import "types.capnp";\n'
        "interface A { at @0 (p :T.Point) -> (s :T.Shape, ps :List(T.Point));\n"
        "  feed @1 (p :T.Point) -> stream; }\n")
    (tmp_path / "src" / "b.capnp").write_text(
        '@0xd1f0a3b2c4e5f623;\nusing T = import "types.capnp";\n'
        "interface B { near @0 (p :T.Point) -> (q :T.Point, ps :List(T.Point));\n"
        "  feed @1 (s :T.Shape) -> stream; }\n")
    source = tmp_path / "use.c"
    source.write_text("""#define WSUPER_SERVE_A
#include "a.h"
#include "b.h"
#include "types.h"
#include "shapes.h"
WSUPER_SERVE_ONLY(a)
int a_serve_at(wsuper_arena *x, int32_t object, const a_at_params *in, a_at_results *out) {
  (void)x; (void)object; out->s = in->p && in->p->x ? SHAPE_SQUARE : SHAPE_CIRCLE; return 0; }
int a_serve_feed(wsuper_arena *x, int32_t object, const a_feed_params *in, stream_result *out) {
  (void)x; (void)object; (void)in; (void)out; return 0; }
int main(void) {
  wsuper_arena arena = {0, 0};
  point p = {1, 2};
  b_near_results r;
  int rc = b_near(&arena, 1, &p, &r) | b_feed(&arena, 1, SHAPE_CIRCLE) | a_feed(&arena, 1, &p);
  point_list l = r.ps;
  return rc + (int)l.len + CORNER_SHARP;
}
""")
    out = tmp_path / "plugin.wasm"
    r = run_wsuper("build", str(source), "-o", str(out), "--schema", str(tmp_path / "src" / "a.capnp"),
                   "--schema", str(tmp_path / "src" / "b.capnp"),
                   "--schema", str(tmp_path / "src" / "types.capnp"),
                   "--schema", str(tmp_path / "src" / "shapes.capnp"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"\0asm")


def test_schemas_whose_headers_would_overwrite_one_another_are_refused(tmp_path):
    """a/kv.capnp and b/kv.capnp would both be kv.h (the second replaced the first,
    and the plugin failed to compile, or compiled against the wrong one), and
    wsuper.capnp would be wsuper.h, which the SDK's header then replaced."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "kv.capnp").write_text(
            f"@0xd1f0a3b2c4e5f62{'5' if d == 'a' else '6'};\nstruct {d.upper()} {{ x @0 :Int32; }}\n")
    r = run_wsuper("bindgen", str(tmp_path / "a" / "kv.capnp"), str(tmp_path / "b" / "kv.capnp"),
                   "-o", str(tmp_path / "inc"))
    assert r.returncode == 2 and "would both be bound to kv.h" in r.stderr, r.stderr
    assert not (tmp_path / "inc").exists()
    (tmp_path / "use.c").write_text("int main(void) { return 0; }\n")
    r = run_wsuper("build", str(tmp_path / "use.c"), "-o", str(tmp_path / "x.wasm"),
                   "--schema", str(tmp_path / "a" / "kv.capnp"),
                   "--schema", str(tmp_path / "b" / "kv.capnp"))
    assert r.returncode == 2 and "would both be bound to kv.h" in r.stderr, r.stderr
    (tmp_path / "wsuper.capnp").write_text("@0xd1f0a3b2c4e5f627;\nstruct W { x @0 :Int32; }\n")
    r = run_wsuper("bindgen", str(tmp_path / "wsuper.capnp"), "-o", str(tmp_path / "inc2"))
    assert r.returncode == 2 and "the C SDK's header" in r.stderr, r.stderr
    # the same file named twice is bound once
    r = run_wsuper("bindgen", str(tmp_path / "a" / "kv.capnp"),
                   os.path.join(str(tmp_path), "a", ".", "kv.capnp"), "-o", str(tmp_path / "inc3"))
    assert r.returncode == 0 and sorted(os.listdir(tmp_path / "inc3")) == ["kv.h", "wsuper.h"]


def test_headers_of_files_with_similar_names_are_all_included(tmp_path):
    """a-b.capnp and a_b.capnp (café.capnp and caf_.capnp) made one include guard,
    WSUPER_GEN_A_B_H: whichever header came second was silently empty.  The
    guard holds the file's id."""
    files = {"a-b": "P", "a_b": "Q", "café": "R", "caf_": "S"}
    schemas = {name: f"@0xd1f0a3b2c4e5f6{50 + i};\nstruct {s} {{ x @0 :Int32; }}\n"
               for i, (name, s) in enumerate(files.items())}
    includes = "".join(f'#include "{name}.h"\n' for name in files)
    assert _compile(tmp_path, schemas, includes + "int main(void) {\n"
                    "  p w = {1}; q x = {2}; r y = {3}; s z = {4};\n"
                    "  return w.x + x.x + y.x + z.x;\n}\n") == ""


def test_build_and_bindgen_never_write_over_what_they_did_not_make(tmp_path):
    """`wsuper build kv.c -o kv.c` wrote the module over the source (clang does
    not mind), `-o kv.capnp` over the schema; the default include/ beside the
    output (or --include-dir) may hold the plugin's own kv.h or wsuper.h, which
    bindgen replaced.  Each is refused and the file is left as it was; headers
    bindgen wrote itself are written again."""
    (tmp_path / "kv.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "kv.capnp").write_text("@0xd1f0a3b2c4e5f671;\nstruct K { x @0 :Int32; }\n")
    keep = {p: p.read_bytes() for p in (tmp_path / "kv.c", tmp_path / "kv.capnp")}
    for out in ("kv.c", "kv.capnp", "./kv.c"):
        r = run_wsuper("build", str(tmp_path / "kv.c"), "-o", os.path.join(str(tmp_path), out),
                       "--schema", str(tmp_path / "kv.capnp"))
        assert r.returncode == 2 and "not writing the module over it" in r.stderr, r.stderr
    # nor over a file the schema imports or embeds (an outside review: `-o lib.capnp`,
    # imported by the schema given, was written over)
    (tmp_path / "lib.capnp").write_text("@0xd1f0a3b2c4e5f672;\nstruct L { y @0 :Int32; }\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / "top.capnp").write_text(
        '@0xd1f0a3b2c4e5f673;\nusing import "lib.capnp".L;\nconst b :Data = embed "blob.bin";\n'
        'struct T { l @0 :L; }\n')
    keep.update({p: p.read_bytes() for p in (tmp_path / "lib.capnp", tmp_path / "blob.bin")})
    for out in ("lib.capnp", "blob.bin"):
        r = run_wsuper("build", str(tmp_path / "kv.c"), "-o", str(tmp_path / out),
                       "--schema", str(tmp_path / "top.capnp"))
        assert r.returncode == 2 and f"is the input {tmp_path / out}" in r.stderr, r.stderr
    (tmp_path / "include").mkdir()
    for name in ("kv.h", "wsuper.h"):
        mine = tmp_path / "include" / name
        mine.write_text("/* the plugin's own */\n")
        r = run_wsuper("build", str(tmp_path / "kv.c"), "-o", str(tmp_path / "kv.wasm"),
                       "--schema", str(tmp_path / "kv.capnp"))
        assert r.returncode == 2 and f"{mine} exists and was not written by wsuper bindgen" \
            in r.stderr, r.stderr
        r = run_wsuper("bindgen", str(tmp_path / "kv.capnp"), "-o", str(tmp_path / "include"))
        assert r.returncode == 2 and "not replacing it" in r.stderr, r.stderr
        assert mine.read_text() == "/* the plugin's own */\n"
        mine.unlink()
    assert all(p.read_bytes() == b for p, b in keep.items())
    for _ in range(2):      # its own headers, again
        r = run_wsuper("build", str(tmp_path / "kv.c"), "-o", str(tmp_path / "kv.wasm"),
                       "--schema", str(tmp_path / "kv.capnp"))
        assert r.returncode == 0, r.stderr


def test_a_fifo_planted_where_a_header_goes_is_refused_not_waited_on(tmp_path):
    """bindgen opened an existing NAME.h or wsuper.h to read its first line (is it
    one bindgen wrote?): a FIFO planted there (a plugin's source tree shipping
    build/include/kv.h) was waited on for ever, and `wsuper build` never ended.
    It is looked at without opening what is not a regular file, and refused."""
    (tmp_path / "kv.capnp").write_text("@0xd1f0a3b2c4e5f6e1;\nstruct K { x @0 :Int32; }\n")
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    include = tmp_path / "build" / "include"
    include.mkdir(parents=True)
    for name in ("kv.h", "wsuper.h"):
        os.mkfifo(include / name)
        r = run_wsuper("build", str(tmp_path / "p.c"), "--schema", str(tmp_path / "kv.capnp"),
                       "-o", str(tmp_path / "build" / "p.wasm"), timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"{include / name} exists and was not written by wsuper bindgen" in r.stderr
        r = run_wsuper("bindgen", str(tmp_path / "kv.capnp"), "-o", str(include), timeout=30)
        assert r.returncode == 2 and "not replacing it" in r.stderr, r.stderr
        os.unlink(include / name)


def test_an_output_that_is_no_regular_file_is_refused_not_waited_on(tmp_path):
    """The linker replaces a regular file at -o, but writes into anything else: a
    FIFO planted as build/p.wasm waited for a reader, and `wsuper build` with it
    (for COMPILE_SECONDS, then a traceback).  Such an output is refused at once."""
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "build").mkdir()
    os.mkfifo(tmp_path / "build" / "p.wasm")
    for out, kind in (("build/p.wasm", "a FIFO"), ("build", "a directory")):
        r = run_wsuper("build", str(tmp_path / "p.c"), "-o", str(tmp_path / out), timeout=30)
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"wsuper: error: {tmp_path / out} is {kind}: not writing the module "
                            "to it (-o names the .wasm to write)\n")


def test_build_never_writes_through_a_file_planted_beside_its_output(tmp_path):
    """`wsuper build` wrote the module's protect declaration to OUTPUT.tmp, a name
    fixed in advance, opened as it was: a symbolic link planted there (a hostile
    plugin's source tree shipping build/p.wasm.tmp -> ~/.bashrc) had the module
    written into whatever it named, that file's mode changed to the module's
    (0600 became 0755), and OUTPUT became the link.  The declaration is now
    written to a file of its own, made beside the output, and renamed."""
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (tmp_path / "build").mkdir()
    planted = tmp_path / "build" / "p.wasm.tmp"
    planted.symlink_to(victim)
    out = tmp_path / "build" / "p.wasm"
    r = run_wsuper("build", str(tmp_path / "p.c"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"precious\n" and victim.stat().st_mode & 0o777 == 0o600
    assert not out.is_symlink() and out.read_bytes().startswith(b"\0asm")
    assert planted.is_symlink()          # left as it was
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["p.wasm", "p.wasm.tmp"]


def test_deeply_nested_and_long_chained_schemas_bind(tmp_path):
    """Types nested 1200 deep, and 1500 structs each holding the next (and a list
    of it): bindgen walked both by recursion and died in a RecursionError
    traceback; the header now is written and compiles."""
    deep = "@0xd1f0a3b2c4e5f690;\n" + "".join(
        f"struct N{i} {{ x @0 :Int32; " for i in range(1200)) + "}" * 1200 + "\n"
    chain = "@0xd1f0a3b2c4e5f692;\n" + "".join(
        f"struct S{i} {{ n @0 :S{i + 1}; l @1 :List(S{i + 1}); }}\n" for i in range(1500)) + \
        "struct S1500 { x @0 :Int32; }\ninterface I { get @0 (s :S0) -> (s :S0); }\n"
    (tmp_path / "deep.capnp").write_text(deep)      # names 7000 characters long: not compiled
    r = run_wsuper("bindgen", str(tmp_path / "deep.capnp"), "-o", str(tmp_path / "deep"))
    assert r.returncode == 0 and "n0_n1_n2" in (tmp_path / "deep" / "deep.h").read_text(), r.stderr
    assert _compile(tmp_path / "chain", {"chain": chain},    # (calling i_get: 30 s of -O2)
                    '#include "chain.h"\nint main(void) {\n'
                    "  s0 s = {0, {0, 0}};\n  return s.n != 0 || I_GET != 0;\n}\n") == ""


def test_build_guesses_a_reactor_from_code_not_comments(tmp_path):
    """A source that defines no main is built as a reactor even if a comment or a
    string says `int main(` (it was built as a program, and failed to link:
    "undefined symbol: main"); one that does define main is a program.  A
    program without main is told to use --reactor."""
    (tmp_path / "serve.c").write_text(
        '/* a reactor: it has no int main(void), it only serves */\n'
        '// int main(int argc, char **argv) neither\n'
        'const char *why = "int main(";\nint helper(void) { return 1; }\n')
    r = run_wsuper("build", str(tmp_path / "serve.c"), "-o", str(tmp_path / "serve.wasm"))
    assert r.returncode == 0 and "(reactor)" in r.stdout, r.stdout + r.stderr
    (tmp_path / "prog.c").write_text("int\nmain (void) { return 0; }\n")
    r = run_wsuper("build", str(tmp_path / "prog.c"), "-o", str(tmp_path / "prog.wasm"))
    assert r.returncode == 0 and "(command)" in r.stdout, r.stdout + r.stderr
    r = run_wsuper("build", str(tmp_path / "serve.c"), "-o", str(tmp_path / "x.wasm"), "--command")
    assert r.returncode == 2 and "undefined symbol: main" in r.stderr
    assert "--reactor" in r.stderr, r.stderr


@pytest.mark.parametrize("main", ["int32_t main(void)", "signed main(void)",
                                  "int main(int argc, char **argv)",
                                  "MAIN_TYPE main(void)"])
def test_build_makes_a_program_of_any_main_and_a_reactor_of_a_main_only_named(tmp_path,
                                                                               main):
    """`int32_t main(` (or `signed`, or a macro's type) was guessed a reactor, as
    only `int main(` counted: the program built, and its main never ran when the
    system was up, with no word why.  Any `main(` outside comments and literals
    now makes a first guess of a program, and the linker decides: a source that
    only declares or calls main (no definition) is still a reactor."""
    (tmp_path / "prog.c").write_text(
        "#include <stdint.h>\n#include <stdio.h>\n#define MAIN_TYPE int\n"
        f"{main} {{ puts(\"main ran\"); return 7; }}\n")
    r = run_wsuper("build", str(tmp_path / "prog.c"), "-o", str(tmp_path / "prog.wasm"))
    assert r.returncode == 0 and "(command)" in r.stdout, r.stdout + r.stderr
    (tmp_path / "system.toml").write_text(
        '[compartments.prog]\nmodule = "prog.wasm"\n'
        '[compartments.prog.grants]\nstdout = { host = "log" }\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"), timeout=60)
    assert "main ran" in r.stdout + r.stderr and "exit=7" in r.stdout + r.stderr, \
        r.stdout + r.stderr
    (tmp_path / "serve.c").write_text(
        "int main(void);\nint helper(void) { return 1; }\n"
        "int twice(void) { return helper() * 2; }\n")
    r = run_wsuper("build", str(tmp_path / "serve.c"), "-o", str(tmp_path / "serve.wasm"))
    assert r.returncode == 0 and "(reactor)" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("main", ["int main(void)", "int main(int argc, char **argv)"])
@pytest.mark.parametrize("missing", ["main_loop", "mainloop", "main2"])
def test_a_program_whose_link_fails_on_a_symbol_named_like_main_is_not_made_a_reactor(
        tmp_path, main, missing):
    """A program that does define main, whose link fails on another undefined symbol
    whose name begins with "main" (main_loop), was taken for a program without main
    ("undefined symbol: main" was found in "undefined symbol: main_loop"), built
    again as a reactor, where its main and what it calls are dropped: it built,
    "(reactor)", its main never ran, and the link error was never said.  Only the
    symbol main itself, undefined, makes the second guess."""
    (tmp_path / "prog.c").write_text(
        f"#include <stdio.h>\nvoid {missing}(void);\n"
        f"{main} {{ puts(\"start\"); {missing}(); return 0; }}\n")
    r = run_wsuper("build", str(tmp_path / "prog.c"), "-o", str(tmp_path / "prog.wasm"))
    assert r.returncode == 2 and f"undefined symbol: {missing}" in r.stderr, \
        r.stdout + r.stderr
    assert "(reactor)" not in r.stdout and not (tmp_path / "prog.wasm").exists(), r.stdout


@pytest.mark.parametrize("how", ["macro", "macro argv", "header", "object",
                                 "library", "library argv"])
def test_build_makes_a_program_of_a_main_its_text_never_names(tmp_path, how):
    """The guess between a program and a reactor reads the sources' text for
    `main(`: a main spelled through a macro (`int ENTRY(void)`), defined in a header
    the source includes, or in an object file given to build, was never seen, the
    program was built as a reactor, "(reactor)", and its main never ran when the
    system was up.  A guessed reactor's link now says whether its inputs define
    main (the linker's trace), and such a build is a program."""
    import subprocess

    from supervisor import toolchain
    body = '{ puts("main ran"); return 7; }\n'
    source = tmp_path / "prog.c"
    if how == "macro":
        source.write_text(f"#include <stdio.h>\n#define ENTRY main\nint ENTRY(void) {body}")
    elif how == "macro argv":
        source.write_text("#include <stdio.h>\n#define ENTRY main\n"
                          f"int ENTRY(int argc, char **argv) {body}")
    elif how == "header":
        (tmp_path / "entry.h").write_text(f"int main(void) {body}")
        source.write_text('#include <stdio.h>\n#include "entry.h"\n')
    else:
        signature = "int argc, char **argv" if how.endswith("argv") else "void"
        (tmp_path / "entry.c").write_text(f"#include <stdio.h>\nint main({signature}) {body}")
        subprocess.run([toolchain.clang(), f"--target={toolchain.TARGET}", "-O2", "-c",
                        "-o", str(tmp_path / "prog.o"), str(tmp_path / "entry.c")], check=True)
        source = tmp_path / "prog.o"
        if how.startswith("library"):
            # main in a static library, beside a source that never names it: a
            # reactor's link only sees it "lazy" (nothing pulls it in)
            # (llvm-ar: GNU ar writes no symbol index for a wasm object, and wasm-ld
            # refuses such an archive)
            ar = shutil.which("llvm-ar") or shutil.which("llvm-ar-14")
            if ar is None:
                pytest.skip("no llvm-ar to make a static library with")
            subprocess.run([ar, "rc", str(tmp_path / "libentry.a"), str(source)], check=True)
            (tmp_path / "rest.c").write_text("int helper(void) { return 1; }\n")
            source = [tmp_path / "rest.c", tmp_path / "libentry.a"]
    sources = source if isinstance(source, list) else [source]
    r = run_wsuper("build", *map(str, sources), "-o", str(tmp_path / "prog.wasm"))
    assert r.returncode == 0 and "(command)" in r.stdout, r.stdout + r.stderr
    (tmp_path / "system.toml").write_text(
        '[compartments.prog]\nmodule = "prog.wasm"\n'
        '[compartments.prog.grants]\nstdout = { host = "log" }\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"), timeout=60)
    assert "main ran" in r.stdout + r.stderr and "exit=7" in r.stdout + r.stderr, \
        r.stdout + r.stderr
    # a reactor that only declares main, or pulls in libc's fallbacks for it, stays one
    for text in ("#define ENTRY main\nint ENTRY(void);\nint helper(void) { return 1; }\n",
                 "int __main_void(void);\nint helper(void) { return __main_void(); }\n"):
        (tmp_path / "serve.c").write_text(text)
        r = run_wsuper("build", str(tmp_path / "serve.c"), "-o", str(tmp_path / "serve.wasm"))
        assert r.returncode == 0 and "(reactor)" in r.stdout, r.stdout + r.stderr


def test_build_reports_what_the_compiler_said(tmp_path):
    (tmp_path / "bad.c").write_text("int main(void) { return undeclared; }\n")
    r = run_wsuper("build", str(tmp_path / "bad.c"), "-o", str(tmp_path / "bad.wasm"))
    assert r.returncode == 2
    assert "wsuper: error: building" in r.stderr and "undeclared" in r.stderr
    r = run_wsuper("bindgen", str(tmp_path / "missing.capnp"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "missing.capnp" in r.stderr


def test_build_shows_what_the_compiler_said_of_hostile_names_escaped(tmp_path):
    """The compiler's words quote the sources' file names and symbols, which a
    plugin's author chooses: a symbol `__asm__("\\xff...")` (or a file named so)
    that is not UTF-8 ended `wsuper build` in a UnicodeDecodeError traceback, and
    a file name or symbol holding ESC [2J or ESC ]0; reached the operator's
    terminal as it was.  One error line per line of the compiler's, escaped."""
    (tmp_path / "m.c").write_bytes(
        b'extern int foo(void) __asm__("\\xff\\x1b[2Jbad");\n'
        b"int main(void) { return foo(); }\n")
    name = tmp_path / "x\x1b]0;pwned\x07.c"
    name.write_text("int f( {\n")
    for source in (tmp_path / "m.c", name):
        r = run_wsuper("build", str(source), "-o", str(tmp_path / "m.wasm"))
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.startswith("wsuper: error: building")
        assert not any(c in r.stderr for c in "\x1b\x07"), repr(r.stderr)
    assert "\\x1b]0;pwned\\x07.c" in r.stderr


def test_a_compile_that_never_ends_is_stopped_with_what_it_started(tmp_path, monkeypatch):
    """A source can make the compiler run for ever (a macro whose expansion doubles
    at each level, an #include of a FIFO).  At the end of the 300 s `wsuper build`
    died in a subprocess.TimeoutExpired traceback, and only the driver was killed:
    the linker (or whatever else it had started) ran on.  The build now fails in
    one line saying so, and the compiler's whole process group is gone."""
    from supervisor import cli, toolchain
    pids = tmp_path / "pids"
    fake = tmp_path / "clang"
    fake.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > {pids}\nexec sleep 1000\n")
    fake.chmod(0o755)
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.setenv("WSUPER_CLANG", str(fake))
    monkeypatch.setattr(toolchain, "COMPILE_SECONDS", 1)
    with pytest.raises(toolchain.ToolchainError) as e:
        toolchain.build([str(tmp_path / "p.c")], str(tmp_path / "p.wasm"))
    assert str(e.value) == (f"building {tmp_path / 'p.wasm'} failed: clang took more than 1 s "
                            "and was stopped")
    child = int(pids.read_text())
    # killed (a zombie until init reaps it).  SIGKILL is sent to the group, not waited
    # for (the compiler's children are not ours): read at once, the child was still
    # "R" on its way out (CI, once); one that outlives the kill stays "S" for good
    deadline = time.monotonic() + 30
    while True:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z") or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert state in ("gone", "Z"), state
    assert cli.main(["build", str(tmp_path / "p.c"), "-o", str(tmp_path / "p.wasm")]) == 2


def _compiler_that_says_it_started(tmp_path):
    """(started, fake): a fake compiler that writes its pid to `started` once
    running and then never ends, and a source p.c for it in tmp_path."""
    started = tmp_path / "started"
    fake = tmp_path / "clang"
    fake.write_text(f"#!/bin/sh\necho $$ > {started}.tmp\nmv {started}.tmp {started}\n"
                    "exec sleep 1000\n")
    fake.chmod(0o755)
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    return started, fake


def test_ctrl_c_as_the_compiler_starts_stops_it_too(tmp_path, monkeypatch):
    """A Ctrl-C that came while Popen was still returning (the compiler had
    started: on a loaded machine the next test's fake compiler had run and said so)
    lost the compiler's pid, and the compiler ran on after `wsuper build` had
    said it was interrupted.  Here the interrupt comes just after the real Popen
    has started the (fake) compiler, inside the call that would have returned it."""
    import subprocess
    from supervisor import toolchain
    started, fake = _compiler_that_says_it_started(tmp_path)
    monkeypatch.setenv("WSUPER_CLANG", str(fake))
    real = subprocess.Popen

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        while not started.exists():
            time.sleep(0.01)
        raise KeyboardInterrupt
    monkeypatch.setattr(subprocess, "Popen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        toolchain.build([str(tmp_path / "p.c")], str(tmp_path / "p.wasm"))
    with pytest.raises(FileNotFoundError):      # killed and reaped
        open(f"/proc/{int(started.read_text())}/stat").close()


def test_ctrl_c_on_a_build_is_one_line_that_names_no_request_to_a_system(tmp_path):
    """An outside review of the docs: Ctrl-C on `wsuper build` (the compiler
    running) said "wsuper: interrupted (SIGINT); a request already sent to the
    system may still be carried out", where a build sends no system anything (the
    README: that is for a request a command had sent).  It says it was
    interrupted, exits 130, and the compiler is gone."""
    import signal
    import subprocess
    import sys
    started, fake = _compiler_that_says_it_started(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "build", str(tmp_path / "p.c"), "-o",
         str(tmp_path / "p.wasm")], cwd=ROOT, env={**os.environ, "WSUPER_CLANG": str(fake)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "wsuper: interrupted (SIGINT)\n")
    compiler = int(started.read_text())
    try:
        with open(f"/proc/{compiler}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), state


def test_build_makes_the_output_directory_and_names_a_missing_source(tmp_path):
    (tmp_path / "plain.c").write_text("int main(void) { return 0; }\n")
    out = tmp_path / "newdir" / "deeper" / "x.wasm"
    r = run_wsuper("build", str(tmp_path / "plain.c"), "-o", str(out))
    assert r.returncode == 0 and out.read_bytes().startswith(b"\0asm"), r.stderr
    r = run_wsuper("build", str(tmp_path / "nope.c"), "-o", str(tmp_path / "y.wasm"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"wsuper: error: {tmp_path / 'nope.c'}: no such source file"


def test_a_method_a_skeleton_does_not_know_is_unimplemented_for_the_caller(echo_plugin, tmp_path):
    """The skeleton's -5 for a method it does not know reaches the caller as
    E_UNIMPLEMENTED, not E_FAILED."""
    from tests.integration.guests import program
    echo_id = capnp_schemas.load(SCHEMA).Echo.schema.node.id
    (tmp_path / "app.wat").write_text(program(f"""
    (call $log_int (i32.const 200) (i32.const 6)
          (call $call0 (call $lookup (i32.const 210) (i32.const 4))
                (i64.const {echo_id - (1 << 64) if echo_id >= 1 << 63 else echo_id})
                (i32.const 99)))
    """, {"status": 200, "echo": 210}))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{os.path.join(GUESTS_C, 'echo.capnp')}"]
[compartments.echo]
module = "{echo_plugin}"
exports = "Echo"
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
echo = {{ compartment = "echo" }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert "[app] status -5" in r.stdout, r.stdout + r.stderr


def test_one_type_id_with_two_definitions_does_not_compile(tmp_path):
    """Each generated type sits under a guard named by its node id, so a header
    included second skipped a type the first had defined: two schemas that give
    one id to two different structs (`x @0, y @1` and `y @0, x @1`; one with a
    field more, say a newer copy of a shared file) compiled, and the second's
    calls encoded and decoded with the first's layout -- x sent as y, without a
    word.  The compiler now stops at an #error naming the id; the same type from
    two headers (a shared import, or an identical copy) still compiles."""
    point = "struct Point @0xe1f0a3b2c4e5f6a7 {{ {} }}\n"
    iface = "interface {} {{ put @0 (p :Point) -> (q :Point); }}\n"
    xy, yx = "x @0 :Int32; y @1 :Int32;", "y @0 :Int32; x @1 :Int32;"
    use = ('#include "one.h"\n#include "two.h"\n'
           "int main(void) { wsuper_arena a = {0, 0}; point p = {1, 2}; two_put_results r;\n"
           "  return one_put(&a, 1, &p, (one_put_results *)&r) | two_put(&a, 1, &p, &r); }\n")
    for name, first, second in (("swapped", xy, yx), ("grown", xy, xy + " z @2 :Int64;"),
                                ("enum", "x @0 :Int32; c @1 :Color;",
                                 "x @0 :Int32; c @1 :Int32;")):
        colors = "enum Color { red @0; }\n"
        schemas = {"one": f"@0xd1f0a3b2c4e5f6b1;\n{colors}" + point.format(first) + iface.format("One"),
                   "two": f"@0xd1f0a3b2c4e5f6b2;\n{colors}" + point.format(second) + iface.format("Two")}
        error = _compile(tmp_path / name, schemas, use)
        assert "wsuper bindgen:" in error and "E1F0A3B2C4E5F6A7" in error.upper(), (name, error)
    same = {"one": "@0xd1f0a3b2c4e5f6b1;\n" + point.format(xy) + iface.format("One"),
            "two": "@0xd1f0a3b2c4e5f6b2;\n" + point.format(xy) + iface.format("Two")}
    assert _compile(tmp_path / "same", same, use) == ""


@pytest.mark.parametrize("name", ["string", "stdlib", "stdio", "stdint", "errno", "unistd",
                                  "features", "__header_string"])
def test_a_schema_whose_header_would_shadow_a_c_library_header_is_refused(tmp_path, name):
    """string.capnp was bound to string.h in the include directory, which `wsuper
    build` passes with -I: every `#include <string.h>`, the plugin's and wsuper.h's
    own, then found the bindings instead of the C library's, and a plugin calling
    strlen and memcpy built without a word (undeclared, taken as built-ins);
    stdlib.capnp failed with errors about wsuper_reader inside "stdlib.h".  The
    schema is refused, naming the header it would hide."""
    from supervisor import bindgen
    (tmp_path / f"{name}.capnp").write_text(
        "@0xd1f0a3b2c4e5f637;\nstruct W { x @0 :Int32; }\n")
    with pytest.raises(bindgen.BindgenError) as e:
        bindgen.generate_all([str(tmp_path / f"{name}.capnp")], str(tmp_path / "inc"))
    assert f"its bindings would be {name}.h, a header of the C library" in str(e.value)
    with pytest.raises(bindgen.BindgenError):
        bindgen.generate(str(tmp_path / f"{name}.capnp"), str(tmp_path / "inc"))
    assert not (tmp_path / "inc").exists()


def test_a_copy_of_wsupers_own_probe_schema_binds_as_the_original(tmp_path):
    """An analysis compartment's project holds its own copy of probe.capnp (or
    reaches the checkout's through a symbolic link, or a checkout's beside a wsuper
    installed with `pip install .`): every wsuper process has loaded
    capnp_schemas/probe.capnp already, and pycapnp refused the copy's ids a second
    time, so `wsuper build analysis.c --schema probe.capnp` and `bindgen` failed
    with "probe.capnp:1: Duplicate ID @0xc6a1d2b3e4f50617.".  The same bytes are
    the same schema: the copy binds as the original does."""
    original = os.path.join(os.path.dirname(capnp_schemas.__file__), "probe.capnp")
    shutil.copy(original, tmp_path / "probe.capnp")
    os.symlink(original, tmp_path / "linked.capnp")
    headers = {}
    for name, schema in (("original", original), ("copy", tmp_path / "probe.capnp"),
                         ("link", tmp_path / "linked.capnp")):
        r = run_wsuper("bindgen", str(schema), "-o", str(tmp_path / name))
        assert r.returncode == 0, (name, r.stderr)
        headers[name] = (tmp_path / name / "probe.h").read_text() \
            if name != "link" else (tmp_path / name / "linked.h").read_text()
    assert headers["copy"] == headers["original"]
    assert "probe_read(" in headers["link"]
    # a copy that differs is another file with the same ids: still refused, by name
    (tmp_path / "changed.capnp").write_text(open(original).read() + "\n# mine\n")
    r = run_wsuper("bindgen", str(tmp_path / "changed.capnp"), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "changed.capnp:1: Duplicate ID" in r.stderr, r.stderr


def test_an_include_directory_that_cannot_be_made_is_named_not_an_errno(tmp_path):
    """`wsuper bindgen kv.capnp -o kv.capnp` said "[Errno 17] File exists:
    'kv.capnp'", and -o under a file "[Errno 20] Not a directory: ...": Python's
    words, naming neither what was being made nor for what.  They are said as
    `build` says its own output's directory: what, for what, why."""
    (tmp_path / "afile").write_text("")
    for out, why in ((SCHEMA, "File exists"), (str(tmp_path / "afile" / "inc"), "Not a directory")):
        r = run_wsuper("bindgen", SCHEMA, "-o", out)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"wsuper: error: cannot make the include directory {out} "
                                    f"for the bindings of {SCHEMA}: {why}"), r.stderr


def test_an_include_directory_no_file_can_be_made_in_is_named_not_an_errno():
    """-o /proc (a directory, one no file can be made in) said "[Errno 2] No such
    file or directory: '/proc/.calc.h.wy8ypfmi.tmp'": Python's words, about a
    temporary name of ours.  The header it could not write is named."""
    header = os.path.join("/proc", os.path.basename(SCHEMA)[:-len(".capnp")] + ".h")
    r = run_wsuper("bindgen", SCHEMA, "-o", "/proc")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"wsuper: error: cannot write {header}: No such file or " \
                               f"directory", r.stderr


@pytest.mark.parametrize("names,expected", [
    (["String"], "its bindings would be String.h, a header of the C library (string.h, "
                 "wherever case is ignored)"),
    (["STDLIB"], "its bindings would be STDLIB.h, a header of the C library (stdlib.h, "
                 "wherever case is ignored)"),
    (["Wsuper"], "its bindings would be Wsuper.h, the C SDK's header (wsuper.h, wherever "
                 "case is ignored)"),
    (["a/Kv", "b/kv"], "would both be bound to kv.h in"),
])
def test_header_names_that_differ_in_case_alone_are_one_header(tmp_path, names, expected):
    """Where the include directory ignores case (macOS, Windows, FAT, a casefolded
    ext4 directory), String.capnp's String.h is string.h: it hid the C library's
    as string.capnp's did, a check that compared names exactly let it through;
    Wsuper.capnp's bindings and the SDK's wsuper.h, which bindgen writes beside
    them, were one file, the second written over the first; a/Kv.capnp and
    b/kv.capnp wrote one header, the second replacing the first.  Each is refused
    before anything is written, wherever it is bound."""
    from supervisor import bindgen
    paths = []
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{name}.capnp").write_text(
            f"@{0xd1f0a3b2c4e5f640 + i:x};\nstruct W{i} {{ x @0 :Int32; }}\n")
        paths.append(str(tmp_path / f"{name}.capnp"))
    with pytest.raises(bindgen.BindgenError) as e:
        bindgen.generate_all(paths, str(tmp_path / "inc"))
    assert expected in str(e.value)
    if len(names) == 1:
        with pytest.raises(bindgen.BindgenError):
            bindgen.generate(paths[0], str(tmp_path / "inc"))
    assert not (tmp_path / "inc").exists()


def test_bindings_cut_short_never_block_the_next_bindgen(tmp_path, monkeypatch):
    """An outside review: a header was opened for writing (emptied) before its text
    was made and written: Ctrl-C while a large schema's header was generated, or a
    full disk at its write, left NAME.h (or wsuper.h, copied the same way) empty,
    and every later `wsuper bindgen` and `build` refused it as 'exists and was not
    written by wsuper bindgen' until the operator removed it.  Each is written
    whole under another name and then takes its own."""
    import errno
    from supervisor import bindgen
    schema = tmp_path / "kv.capnp"
    schema.write_text("@0xd1f0a3b2c4e5f638;\nstruct W { x @0 :Int32; }\n")
    inc = tmp_path / "inc"
    bindgen.generate(str(schema), str(inc))
    before = {p.name: p.read_bytes() for p in inc.iterdir()}

    def cut_short(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(bindgen.Generator, "header", cut_short)
    with pytest.raises(OSError):
        bindgen.generate(str(schema), str(inc))
    assert {p.name: p.read_bytes() for p in inc.iterdir()} == before
    monkeypatch.undo()
    assert sorted(bindgen.generate(str(schema), str(inc))) == sorted(
        str(inc / n) for n in before)


def test_build_compiles_sources_whose_names_begin_with_a_dash_or_an_at(tmp_path):
    """clang took a source named -Dputs=abort.c for an option (it defined a macro) and
    one named @p.c for a response file (it read p.c's text as its command line):
    neither was compiled, and `wsuper build` wrote an empty reactor, no word said.
    Each is a file, whatever its name; -o too."""
    import subprocess
    import sys
    import wasmtime
    (tmp_path / "@p.c").write_text('#include <stdio.h>\nint main(void) { puts("at"); }\n')
    (tmp_path / "p.c").write_text("-DFOO=1\n")
    (tmp_path / "-Dputs=abort.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("dash"); }\n')
    (tmp_path / "o.wasm").write_text("-DBAR=1\n")
    for args, out, said in ((["@p.c", "-o", "@o.wasm"], "@o.wasm", "at"),
                            (["--output=-o.wasm", "--", "-Dputs=abort.c"], "-o.wasm", "dash")):
        r = subprocess.run([sys.executable, "-m", "supervisor.cli", "build", *args],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": ROOT})
        assert r.returncode == 0 and r.stdout.strip() == f"wrote {out} (command)", r.stderr
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        config = wasmtime.WasiConfig()
        config.stdout_file = str(tmp_path / "stdout")
        store.set_wasi(config)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(tmp_path / out)))
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap:
            pass
        assert (tmp_path / "stdout").read_text() == f"{said}\n"


def test_build_compiles_its_own_c_without_the_programs_include_directories(tmp_path):
    """The toolchain's own C (the libc fixes, the _start of a program that serves
    calls) was compiled with the program's -I directories: a project's own time.h
    or stdlib.h there was the one it included, and a program that built before
    the fixes failed with errors in /tmp/wsuper-build-.../wsuper-libc-fixes-....c."""
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "time.h").write_text("#define PROJECT_TIME 1\n")
    (inc / "errno.h").write_text("#define PROJECT_ERRNO 1\n")
    (inc / "stdlib.h").write_text('#error "the project\'s stdlib.h"\n')
    src = tmp_path / "served.c"
    src.write_text('#include <stdio.h>\n#include <time.h>\n'
                   '__attribute__((export_name("extra"))) int extra(void) '
                   '{ return PROJECT_TIME; }\n'
                   'int main(void) { puts("ok"); return 0; }\n')
    out = tmp_path / "served.wasm"
    r = run_wsuper("build", str(src), "-I", str(inc), "-o", str(out))
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {out} (command)", r.stderr


def test_build_says_an_output_that_names_no_file_is_refused(tmp_path):
    """`-o ''` and `-o DIR/` reached the linker: "no output file specified",
    "cannot open output file DIR/"."""
    (tmp_path / "plain.c").write_text("int main(void) { return 0; }\n")
    for out, said in (("", "-o is empty"), (f"{tmp_path}/new/", f"{tmp_path}/new/ names a directory")):
        r = run_wsuper("build", str(tmp_path / "plain.c"), "-o", out)
        assert r.returncode == 2
        assert r.stderr.strip() == f"wsuper: error: {said}: -o names the .wasm to write"
    assert not (tmp_path / "new").exists()


def test_build_says_a_source_that_is_a_directory_or_a_fifo_is_no_source(tmp_path):
    """Each was "no such source file", though it is there."""
    (tmp_path / "dir.c").mkdir()
    os.mkfifo(tmp_path / "fifo.c")
    for name, kind in (("dir.c", "a directory"), ("fifo.c", "a FIFO")):
        r = run_wsuper("build", str(tmp_path / name), "-o", str(tmp_path / "x.wasm"))
        assert r.returncode == 2
        assert r.stderr.strip() == f"wsuper: error: {tmp_path / name} is {kind}: not a source file"


@pytest.mark.parametrize("tmpdir", ["/nonexistent-wsuper-tmp", "relative-tmp", "/proc"])
def test_build_works_with_a_tmpdir_it_cannot_use(tmp_path, monkeypatch, tmpdir):
    """TMPDIR that names no directory one can write in (gone, relative, a kernel file
    system; as an ordinary user: another user's directory): Python's own temporary
    files go to the next usable place (/tmp), but clang took TMPDIR as it was and
    `wsuper build` failed with only "clang: error: unable to make temporary file:
    Permission denied" (or "No such file or directory"), naming neither TMPDIR nor
    what to do.  The compiler is given the directory wsuper's own temporary files
    go to."""
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.setenv("TMPDIR", tmpdir)
    r = run_wsuper("build", str(tmp_path / "p.c"), "-o", str(tmp_path / "p.wasm"))
    assert r.returncode == 0 and "(command)" in r.stdout, r.stdout + r.stderr


def test_a_program_compiles_with_a_type_named_main_and_a_served_token_interface(tmp_path):
    """Two shapes a schema may have that made the generated C fail to compile (r256,
    found by binding 1,490 random schemas of hostile names and compiling each with
    -Wall -Werror): a struct or enum named `Main` was a type `main`, so a program
    that included the header could not define its main ("redefinition of 'main' as
    different kind of symbol"): it is `main_` now, as a type named like the C
    library's is; and the server skeleton of an interface without methods (a token
    the plugin hands out) declared a results builder it never used ("unused
    variable 'b'"), an error under -Werror."""
    schema = ("@0xd1f0a3b2c4e5f721;\nstruct Main { x @0 :Int32; }\n"
              "enum Kind { main @0; }\nstruct Holder { m @0 :Main; k @1 :Kind; }\n"
              "interface Token {}\n"
              "interface Maker { make @0 (m :Main) -> (t :Token, h :Holder); }\n")
    assert _compile(tmp_path / "x", {"maker": schema}, """#define WSUPER_SERVE_TOKEN
#include "maker.h"
int32_t wsuper_dispatch(int32_t object, int64_t iface, int32_t method, int32_t len,
                        int32_t ncaps) {
  return token_dispatch(object, iface, method, len, ncaps);
}
int main(void) {
  wsuper_arena a = {0, 0};
  maker_make_results r;
  main_ m = {MAIN__DWORDS};
  holder h = {&m, KIND_MAIN};
  return maker_make(&a, 1, &m, &r) == 0 && r.h && h.m->x == 1;
}
""") == ""


def test_two_schemas_with_a_struct_of_one_name_say_so_in_one_c_file(tmp_path):
    """`struct Point` in a.capnp and another in b.capnp (two types): their headers
    in one C file failed with only the compiler's "redefinition of 'struct
    point'", naming no schema (r256).  An #error names the struct (and the compiler
    the header it is in);
    each header in a C file of its own still builds."""
    a = "@0xd1f0a3b2c4e5f6d1;\nstruct Point { x @0 :Int32; }\n" \
        "interface A { put @0 (p :Point) -> (); }\n"
    b = "@0xd1f0a3b2c4e5f6d2;\nstruct Point { y @0 :Float64; }\n" \
        "interface B { put @0 (p :Point) -> (); }\n"
    error = _compile(tmp_path / "both", {"a": a, "b": b},
                     '#include "a.h"\n#include "b.h"\nint main(void) { return 0; }\n')
    assert "b.h" in error and "wsuper bindgen: C struct point (struct Point of this " \
           "header's schema) has the name of another type of a generated header included " \
           "before" in error, error
    for one in ("a", "b"):
        assert _compile(tmp_path / one, {one: a if one == "a" else b},
                        f'#include "{one}.h"\nint main(void) {{ return 0; }}\n') == ""


def test_build_output_is_written_whole_or_not_at_all_and_never_at_a_kept_name(tmp_path):
    """An outside review (r266, left to r268): `build -o` did not check the names the
    runtime directory keeps (endpoint.kept_name), which `trace -o` and `check
    --graph` refuse: `build p.c -o $XDG_RUNTIME_DIR/wsuper/x-0123abcd.lock` linked
    a module over a system's lock.  Every output goes through one helper
    (outfile.replacing): the kept name is refused, exit 2, nothing made; a build
    that fails leaves the file there as it was and nothing beside it; one that
    succeeds replaces it keeping its mode."""
    from supervisor import endpoint
    run = tmp_path / "run"
    (run / "wsuper").mkdir(mode=0o700, parents=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "bad.c").write_text("int main(void) { return nope; }\n")
    for name in ("x-0123abcd.lock", "x-0123abcd.lock.grants", "x-0123abcd.sock"):
        out = run / "wsuper" / name
        r = run_wsuper("build", str(tmp_path / "p.c"), "-o", str(out), env=env)
        assert r.returncode == 2 and "has the name of a system's own socket" in r.stderr \
            and endpoint.KEPT_NAMES in r.stderr, r.stderr
        assert os.listdir(run / "wsuper") == []
    out = tmp_path / "p.wasm"
    out.write_bytes(b"an older module")
    os.chmod(out, 0o750)
    r = run_wsuper("build", str(tmp_path / "bad.c"), "-o", str(out), env=env)
    assert r.returncode == 2 and "nope" in r.stderr, r.stderr
    assert out.read_bytes() == b"an older module"
    assert sorted(os.listdir(tmp_path)) == ["bad.c", "p.c", "p.wasm", "run"]
    r = run_wsuper("build", str(tmp_path / "p.c"), "-o", str(out), env=env)
    assert r.returncode == 0 and r.stdout == f"wrote {out} (command)\n", r.stdout + r.stderr
    assert out.read_bytes()[:4] == b"\0asm" and (out.stat().st_mode & 0o7777) == 0o750
    assert sorted(os.listdir(tmp_path)) == ["bad.c", "p.c", "p.wasm", "run"]
