"""`wsuper check`: who holds what, the graph, and who could ever reach what."""
import os
import re

import attrs
import pytest

from supervisor import authority, policy, preflight
from tests.conftest import EXAMPLES, run_wsuper


def plan_of(tmp_path, text):
    (tmp_path / "system.toml").write_text(text)
    return preflight.prepare(policy.load(str(tmp_path / "system.toml")))


SYSTEM = f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/callback.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = ["add"], revocable = true }}
log = {{ host = "log" }}
[compartments.other]
module = "{EXAMPLES}/hello.wat"
[compartments.other.grants]
log = {{ host = "log" }}
"""


def test_holdings_name_each_grant_its_attenuation_and_origin(tmp_path):
    text = authority.holdings(plan_of(tmp_path, SYSTEM))
    assert (f"  calc -> calc's Calc [allow=add, revocable]  "
            f"(from {tmp_path}/system.toml: compartments.app.grants.calc)" in text.splitlines())
    assert text.splitlines()[1] == "  holds nothing"          # calc holds nothing


def test_the_graph_shows_a_letter_of_another_script_escaped_as_holdings_do(tmp_path):
    """`check --graph` draws what `holdings` lists, and drew a variable's name of a
    Cyrillic letter (or an argument) as it is, a 'PATH' the operator meant to
    grant, where holdings shows P\\u0410TH (875c59a)."""
    text = authority.dot(plan_of(tmp_path, SYSTEM.replace(
        'log = { host = "log" }\n[compartments.other]',
        'env = { host = "environment", vars = { "P\u0410TH" = "/x" }, '
        'args = ["j\u043es\u00e9"] }\n[compartments.other]')))
    assert text.isascii(), [line for line in text.splitlines() if not line.isascii()]
    assert "P\\\\u0410TH" in text, text


def test_holdings_show_a_letter_of_another_script_escaped(tmp_path):
    """A variable's name (or an argument) of a Cyrillic letter passed for the Latin
    name the operator meant to grant: what check says each compartment holds is
    shown past ASCII escaped, as its paths are."""
    text = authority.holdings(plan_of(tmp_path, SYSTEM.replace(
        'log = { host = "log" }\n[compartments.other]',
        'env = { host = "environment", vars = { "P\u0410TH" = "/x" }, '
        'args = ["j\u043es\u00e9"] }\n[compartments.other]')))
    assert "  env -> host Environment [args=['j\\u043es\\u00e9'], vars=P\\u0410TH]" in text
    assert text.isascii()


def test_reach_follows_interfaces_that_can_carry_capabilities(tmp_path):
    plan = plan_of(tmp_path, SYSTEM)
    # Calc.sumTo takes an Observer: app could pass its log to calc
    assert authority.could_reach(plan, "app:log")[0] == ["app", "calc"]
    # nobody grants other's log to anyone, and other calls nobody
    assert authority.could_reach(plan, "other:log")[0] == ["other"]
    # app's grant allows only add, and what comes back through it is held to that:
    # nobody at all can call sumTo (calc's own code runs without a capability)
    assert authority.could_reach(plan, "calc.sumTo")[0] == []
    assert authority.could_reach(plan, "calc.add")[0] == ["app"]
    why = authority.could_reach(plan, "calc")[1]
    assert "over-approximation" in why and "calc itself runs its own code" in why


@pytest.mark.parametrize("target,error", [
    ("nobody", "no compartment named 'nobody' (compartments: calc, app, other)"),
    ("calc.nope", "calc's interface Calc has no method 'nope' (methods: add, newCounter, sumTo)"),
    ("calc.Calc.add", "has no method 'Calc.add'"),
    # app exports nothing: "app's interface (none) has no method 'log' (methods: none)"
    # said neither that nor how to name the log it holds
    ("app.log", "app exports no interface, so it has no method 'log' to reach (a host "
                "capability it holds is COMPARTMENT:HOSTCAP: app:log, "),
    ("app:log.write", "name a host capability as COMPARTMENT:HOSTCAP, with no method"),
    ("other:clock", "other holds no host 'clock'"),
    # a grant's name where the kind goes: the answer says which kinds it holds
    ("app:calc", "not a grant's name; app holds: log)"),
    ("calc:log", "calc holds: none)"),
    # a "." with nothing after it: `calc.` was answered as `calc`, the main object,
    # though it names a method, and none (so was `app:log.`)
    ("calc.", "'calc.' names no method after its '.' (COMPARTMENT, COMPARTMENT.METHOD"),
    ("app:log.", "'app:log.' names no method after its '.'"),
])
def test_reach_refuses_names_that_do_not_exist(tmp_path, target, error):
    with pytest.raises(KeyError, match=re.escape(error)):
        authority.could_reach(plan_of(tmp_path, SYSTEM), target)


def test_dot_graph_has_every_grant_as_an_edge(tmp_path):
    text = authority.dot(plan_of(tmp_path, SYSTEM))
    assert '"app" -> "calc" [label="calc\\nallow=add, revocable", style=dashed];' in text
    assert '"other" -> "other:log" [label="log"];' in text


def test_check_command_prints_and_writes_the_graph(tmp_path):
    graph = tmp_path / "g.dot"
    r = run_wsuper("check", os.path.join(EXAMPLES, "callback.toml"), "--reach", "app:log",
                   "--graph", str(graph))
    assert r.returncode == 0, r.stderr
    assert "could reach app:log: app, calc" in r.stdout
    assert graph.read_text().startswith("digraph authority {")
    r = run_wsuper("check", os.path.join(EXAMPLES, "callback.toml"), "--reach", "nobody")
    assert r.returncode == 2 and "no compartment named 'nobody'" in r.stderr


def test_check_refuses_an_svg_graph_without_graphviz_before_printing_anything(tmp_path):
    import subprocess
    import sys
    from tests.conftest import ROOT
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}     # no `dot` on it
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check",
                        os.path.join(EXAMPLES, "callback.toml"), "--graph",
                        str(tmp_path / "g.svg")], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert "Graphviz's dot is not installed" in r.stderr
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check",
                        os.path.join(EXAMPLES, "callback.toml"), "--reach", "calc.nope"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and "has no method 'nope'" in r.stderr


INHERITING = """@0xc4b8e6d2a1b77e77;
interface Root @0xc4b8e6d2a1b77f71 { wipe @0 () -> (); }
interface Base @0xc4b8e6d2a1b77f72 extends(Root) { reset @0 () -> (); }
interface Counter @0xc4b8e6d2a1b77f73 extends(Base) { inc @0 (by :Int32) -> (value :Int32); }
interface Calc @0xc4b8e6d2a1b77f74 extends(Base) {
  add @0 (a :Int32, b :Int32) -> (sum :Int32);
  newCounter @1 () -> (counter :Counter);
}
"""


@pytest.fixture(scope="module")
def inheriting(tmp_path_factory):
    """A directory with the schema (one path: a schema's id is loaded once a process)."""
    d = tmp_path_factory.mktemp("inheriting")
    (d / "inh.capnp").write_text(INHERITING)
    return d


@pytest.mark.parametrize("allow,reaching", [
    (["add"], {"add"}),
    (["Calc.add"], {"add"}),                   # the granted interface, by its name
    (["Calc.add", "reset"], {"add", "reset"}),  # reset: inherited from Base
    (["Calc.wipe"], {"wipe"}),                  # from Root, through Base
    (["Base.reset", "Root.wipe"], {"reset", "wipe"}),
    (["Counter.inc"], set()),                   # Calc itself restricted to nothing
    (["newCounter", "Counter.reset"], {"newCounter", "reset"}),  # Base's reset is Calc's
])
def test_reach_decides_an_allow_list_as_the_membrane_does(inheriting, allow, reaching):
    """`check --reach` said a grant with allow = ["Calc.add"] could not reach calc.add
    (it compared the list's text with the bare name, where the running system
    compares the ids the list resolves to), knew nothing of inherited methods
    (`--reach calc.reset`: "no method"), and so said "nobody" of what the membrane
    lets through: an under-approximation where it promises an over-approximation.
    Every method, own or inherited, is now decided by the membrane's own test."""
    from supervisor import membrane
    plan = plan_of(inheriting, f"""
[system]
schemas = ["inh.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = {allow!r} }}
""".replace("'", '"'))
    (g,) = plan.system.compartments["app"].grants
    m = membrane.Membrane.for_grant("app.calc", g, 0xc4b8e6d2a1b77f74, 0.0)
    ids = {"wipe": (0xc4b8e6d2a1b77f71, 0), "reset": (0xc4b8e6d2a1b77f72, 0),
           "add": (0xc4b8e6d2a1b77f74, 0), "newCounter": (0xc4b8e6d2a1b77f74, 1)}
    assert {name for name, (i, j) in ids.items() if m.allows(i, j)} == reaching
    for method in ids:             # own and inherited methods can all be asked about
        holders = authority.could_reach(plan, f"calc.{method}")[0]
        assert holders == (["app"] if method in reaching else []), method


def test_a_plan_says_what_each_interface_extends(inheriting):
    """The router lets a compartment's main object be called with the ids of the
    interfaces its own extends (inherited methods): the plan hands them over."""
    plan = plan_of(inheriting, f"""
[system]
schemas = ["inh.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    root, base, calc = 0xc4b8e6d2a1b77f71, 0xc4b8e6d2a1b77f72, 0xc4b8e6d2a1b77f74
    assert plan.main_interface["calc"] == calc
    assert set(plan.extends[calc]) == {base, root} and set(plan.extends[base]) == {root}
    assert plan.extends[root] == ()


def test_reach_counts_what_external_clients_can_hand_on(tmp_path):
    """External clients are callers too: the gateway hands each of them every
    external compartment's main object, with no allow list, and a client may
    pass what it holds on in params (Calc.sumTo takes an Observer) or get one back
    in results.  Reach left them out: with two external compartments and no
    grant between them, `--reach calc` said nobody, though any client can hand
    calc's main object to store as sumTo's observer; and what an external
    compartment holds, a client could get out of it and hand on the same way."""
    plan = plan_of(tmp_path, f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
[compartments.store]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
[compartments.inner]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.inner.grants]
calc = {{ compartment = "calc", allow = ["add"] }}
[compartments.keeper]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/callback.wat"
external = false
[compartments.app.grants]
keeper = {{ compartment = "keeper" }}
log = {{ host = "log" }}
[compartments.bridge]
module = "{EXAMPLES}/callback.wat"
[compartments.bridge.grants]
calc = {{ compartment = "calc" }}
log = {{ host = "log" }}
""")
    names, why = authority.could_reach(plan, "calc")
    assert names == ["bridge", "inner", "store"], names
    assert "could be passed on to: store; and any client of the external socket" in why
    # inner's allow list holds sumTo back; a client's main object has none
    assert authority.could_reach(plan, "calc.sumTo")[0] == ["bridge", "store"]
    # nothing app or keeper holds can reach a client: keeper is app's alone
    names, why = authority.could_reach(plan, "keeper")
    assert names == ["app"] and "external socket" not in why, (names, why)
    # what bridge hands calc, a client can get out of calc and hand on to store
    names, why = authority.could_reach(plan, "bridge:log")
    assert names == ["bridge", "calc", "inner", "store"], names
    assert "any client of the external socket" in why
    assert authority.could_reach(plan, "app:log")[0] == ["app", "keeper"]


ONE_WAY = """@0xd5a9f7e3b2c88e01;
interface Box @0xd5a9f7e3b2c88f01 {
  put @0 (thing :Capability) -> ();
  take @1 () -> (thing :Capability);
}
interface Hub @0xd5a9f7e3b2c88f02 { open @0 () -> (box :Box); }
interface Observer @0xd5a9f7e3b2c88f03 { notify @0 (thing :Capability) -> (); }
interface Feed @0xd5a9f7e3b2c88f04 { subscribe @0 (obs :Observer) -> (); }
interface Base @0xd5a9f7e3b2c88f05 { stash @0 (thing :Capability) -> (); }
interface Plain @0xd5a9f7e3b2c88f06 extends(Base) { add @0 (a :Int32) -> (b :Int32); }
interface Sealed @0xd5a9f7e3b2c88f07 { add @0 (a :Int32) -> (b :Int32); }
struct Inner { thing @0 :Capability; }
struct Holder {
  g :group { thing @0 :Capability; }
  u :union { none @1 :Void; nested @2 :List(List(Inner)); }
  ints @3 :List(List(Int32));
}
interface Grouped @0xd5a9f7e3b2c88f08 { put @0 (h :Holder) -> (); }
struct Deep { l @0 :List(List(Inner)); }
interface Deeper @0xd5a9f7e3b2c88f09 { get @0 () -> (d :Deep); }
"""


@pytest.fixture(scope="module")
def one_way(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_way")
    (d / "oneway.capnp").write_text(ONE_WAY)
    return d


@pytest.mark.parametrize("served", ["Hub", "Feed", "Plain", "Grouped", "Deeper"])
def test_reach_follows_capabilities_both_ways_across_any_grant_that_can_carry_one(
        one_way, served):
    """A capability that crosses a grant either way can be an object of any
    interface, and calls on it carry capabilities both ways: the holder of a Hub
    puts its log in the Box that Hub.open returned (Hub's own params carry none);
    a Feed hands its subscriber what it holds in the params of Observer.notify
    (Feed's own results carry none); Plain inherits Base.stash.  Reach looked at
    the granted interface's own methods only, one way each, and said nobody else
    could reach app's log, or what the server holds: an under-approximation.  It
    also missed a capability inside a group or a named union (Grouped), and
    crashed on a list of lists of structs (Deeper: AttributeError)."""
    plan = plan_of(one_way, f"""
[system]
schemas = ["oneway.capnp"]
[compartments.secret]
module = "{EXAMPLES}/calc.wat"
exports = "Sealed"
[compartments.server]
module = "{EXAMPLES}/calc.wat"
exports = "{served}"
[compartments.server.grants]
secret = {{ compartment = "secret" }}
[compartments.app]
module = "{EXAMPLES}/callback.wat"
[compartments.app.grants]
server = {{ compartment = "server" }}
log = {{ host = "log" }}
[compartments.lonely]
module = "{EXAMPLES}/callback.wat"
[compartments.lonely.grants]
secret = {{ compartment = "secret" }}
log = {{ host = "log" }}
""")
    assert authority.could_reach(plan, "app:log")[0] == ["app", "server"]
    assert authority.could_reach(plan, "secret")[0] == ["app", "lonely", "server"]
    # an interface through which no capability can pass carries nothing either way
    assert authority.could_reach(plan, "lonely:log")[0] == ["lonely"]


def test_the_router_is_told_which_main_objects_carry_no_capability(one_way):
    """reach counts a grant of an interface with no capability anywhere in its
    schema (Sealed) as carrying nothing; the router must hold every call on such a
    main object to that (a cap table is the sender's, whatever the schema says):
    authority.sealed is what it is told.  Plain only inherits its capability
    (Base.stash), and Hub, Grouped and Deeper carry theirs in a result, a group or
    a list of lists: none of them is sealed."""
    plan = plan_of(one_way, """
[system]
schemas = ["oneway.capnp"]
""" + "".join(f"""
[compartments.{name.lower()}]
module = "{EXAMPLES}/calc.wat"
exports = "{name}"
""" for name in ("Sealed", "Plain", "Hub", "Grouped", "Deeper", "Feed")) + f"""
[compartments.app]
module = "{EXAMPLES}/callback.wat"
""")
    sealed = authority.sealed(plan)
    assert sealed == {plan.main_interface["sealed"]}


_SEALED_IDS = ((0xe6b0c1d2a3f49500 + i, 0xe6b0c1d2a3f4a500 + i) for i in range(1000))


@pytest.mark.parametrize("exports", ["Sealed", "Calc"])
@pytest.mark.parametrize("held", [True, False], ids=["held by a grant", "held by nobody"])
def test_reach_counts_the_target_handing_its_own_main_object_on(tmp_path, exports, held):
    """s can hand its own main object (wsuper.object(0)) to t, in a call across its
    grant to t, whose interface carries capabilities: t can call s from then on.
    Reach counted only what s's callers could pass on, never s itself ("s itself
    runs its own code"), and said nobody but a could reach s, or nobody at all."""
    ids = next(_SEALED_IDS)          # a schema's ids once a process (pycapnp)
    (tmp_path / "sealed.capnp").write_text(
        f"@{ids[0]:#x};\n"
        f"interface Sealed @{ids[1]:#x} {{ add @0 (a :Int32) -> (sum :Int32); }}\n")
    plan = plan_of(tmp_path, f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp", "sealed.capnp"]
[compartments.s]
module = "{EXAMPLES}/calc.wat"
exports = "{exports}"
[compartments.s.grants]
t = {{ compartment = "t" }}
[compartments.t]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.a]
module = "{EXAMPLES}/callback.wat"
""" + ("""[compartments.a.grants]
s = { compartment = "s" }
""" if held else ""))
    method = ".add"
    for target in ("s", "s" + method):
        names, why = authority.could_reach(plan, target)
        assert "t" in names, (target, names, why)
        assert ("a" in names) == held, (target, names)
    # s passes nothing to a across a's grant when Sealed carries none
    if held and exports == "Sealed":
        assert authority.could_reach(plan, "t")[0] == ["s"]


def _chain(n: int, last: str, ident: int) -> str:
    """A schema whose Deep interface returns S0, S0 holding S1 ... S{n-1} holding `last`."""
    lines = [f"@0x{ident:x};"]
    for i in range(n):
        lines.append(f"struct S{i} {{ pad @0 :Int32; "
                     f"next @1 :{f'List(S{i + 1})' if i % 2 else f'S{i + 1}'}; }}"
                     if i < n - 1 else f"struct S{i} {{ last @0 :{last}; }}")
    return "\n".join(lines) + "\ninterface Deep { get @0 () -> (s :S0); }\n"


@pytest.mark.parametrize("last, carries", [("Capability", True), ("List(List(Data))", False)])
def test_reach_walks_structs_nested_deeper_than_pythons_stack(tmp_path, last, carries):
    """A chain of 3,000 structs each holding the next ended `check` (and `up`,
    which asks which main objects are sealed) in a RecursionError traceback."""
    (tmp_path / "deep.capnp").write_text(_chain(3000, last, 0xd5a9f7e3b2c88f20 + carries))
    plan = plan_of(tmp_path, f"""
[system]
schemas = ["deep.capnp"]
[compartments.deep]
module = "{EXAMPLES}/calc.wat"
exports = "Deep"
[compartments.app]
module = "{EXAMPLES}/callback.wat"
[compartments.app.grants]
deep = {{ compartment = "deep" }}
log = {{ host = "log" }}
""")
    assert authority.could_reach(plan, "app:log")[0] == (["app", "deep"] if carries else ["app"])
    assert bool(authority.sealed(plan)) is not carries
    assert "deep -> " in authority.holdings(plan)


@pytest.mark.parametrize("n", [preflight.MAX_EXTENDS, preflight.MAX_EXTENDS + 1, 3000])
def test_an_interface_extending_too_many_is_refused_naming_it(tmp_path, n):
    """A chain of 3,000 interfaces each extending the next ended `check` and `up`
    in a RecursionError traceback (and walking it costs its square)."""
    lines = [f"@0x{0xd5a9f7e3b2c88f22 + n:x};"]   # one id to one file in a process
    lines += [f"interface J{i} extends(J{i + 1}) {{ m{i} @0 () -> (); }}" for i in range(n)]
    lines.append(f"interface J{n} {{ last @0 () -> (); }}")
    (tmp_path / "ext.capnp").write_text("\n".join(lines) + "\n")
    text = f"""
[system]
schemas = ["ext.capnp"]
[compartments.j]
module = "{EXAMPLES}/calc.wat"
exports = "J0"
[compartments.app]
module = "{EXAMPLES}/callback.wat"
[compartments.app.grants]
j = {{ compartment = "j", allow = ["last"] }}
"""
    if n <= preflight.MAX_EXTENDS:
        plan = plan_of(tmp_path, text)
        assert len(plan.extends[plan.interfaces["J0"]]) == n
        assert authority.could_reach(plan, "j.last")[0] == ["app"]
        assert authority.could_reach(plan, "j.m1")[0] == []
        return
    with pytest.raises(policy.PolicyError) as e:
        plan_of(tmp_path, text)
    assert f"{tmp_path}/ext.capnp: interface ext.capnp:J0 " \
        f"extends more than {preflight.MAX_EXTENDS} interfaces" in str(e.value)
    assert "system.schemas[0]" in str(e.value)


SHADOWED = """@0xc4b8e6d2a1b77e78;
interface D @0xc4b8e6d2a1b77f81 { f @0 () -> (); }
interface A @0xc4b8e6d2a1b77f82 extends(D) { }
interface B @0xc4b8e6d2a1b77f83 { f @0 () -> (); g @1 () -> (); }
interface C @0xc4b8e6d2a1b77f84 extends(A, B) { g @0 () -> (); }
"""


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory):
    d = tmp_path_factory.mktemp("shadowed")
    (d / "shadowed.capnp").write_text(SHADOWED)
    return d


@pytest.mark.parametrize("allow,reaching", [
    (["f"], {"D.f"}),                  # C's f is D's (depth first), as Cap'n Proto says
    (["g"], {"C.g"}),                  # C's own g, not B's it hides
    (["C.f"], {"D.f"}), (["A.f"], {"D.f"}),
    (["B.f"], {"B.f"}), (["B.g"], {"B.g"}), (["f", "B.f", "B.g"], {"D.f", "B.f", "B.g"}),
])
def test_an_allow_list_name_is_the_one_method_cap_n_proto_means_by_it(shadowed, allow,
                                                                       reaching):
    """`allow = ["f"]` on a grant of C, which extends(A, B) with A extends(D), D and B
    each declaring an f: Cap'n Proto's C.f is D's, and B's is reached only by its
    own name (B.f).  Every method so named anywhere C extends was allowed, so the
    list let through a method it never named (B.f; B.g behind C's own g)."""
    from supervisor import membrane
    plan = plan_of(shadowed, f"""
[system]
schemas = ["shadowed.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "C"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = {allow!r} }}
""".replace("'", '"'))
    (g,) = plan.system.compartments["app"].grants
    m = membrane.Membrane.for_grant("app.calc", g, 0xc4b8e6d2a1b77f84, 0.0)
    ids = {"D.f": (0xc4b8e6d2a1b77f81, 0), "B.f": (0xc4b8e6d2a1b77f83, 0),
           "B.g": (0xc4b8e6d2a1b77f83, 1), "C.g": (0xc4b8e6d2a1b77f84, 0)}
    assert {name for name, (i, j) in ids.items() if m.allows(i, j)} == reaching


def test_reach_looks_at_each_grant_once_however_the_file_orders_them(tmp_path, monkeypatch):
    """Who could reach what is a walk of the graph: each grant is looked at once,
    not once a compartment reached (a loop over every grant until nothing changed
    took one pass a compartment on a chain written in the other order: 20,000
    compartments took `check --reach` 56 s a target).  Counted, not timed."""
    n = 200
    text = f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n'
    for i in range(n):
        text += f'[compartments.c{i}]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        if i:
            text += f'[compartments.c{i}.grants]\nnext = {{ compartment = "c{i - 1}" }}\n'
    plan = plan_of(tmp_path, text)
    looks = []

    @attrs.frozen
    class Counted(authority.Edge):
        def __getattribute__(self, name):
            if name == "carries_in":
                looks.append(1)
            return object.__getattribute__(self, name)

    real = authority.edges
    monkeypatch.setattr(authority, "edges", lambda p: [
        Counted(**{f.name: getattr(e, f.name) for f in attrs.fields(authority.Edge)})
        for e in real(p)])
    for target in (f"c{n - 1}", "c0", "c0.add"):
        looks.clear()
        names, _ = authority.could_reach(plan, target)
        assert len(names) == n - 1
        assert len(looks) <= 2 * (n - 1), (target, len(looks))


@pytest.mark.parametrize("name", ["d\u0430ta",          # a Cyrillic a
                                  "\u0501ata",          # a Cyrillic d
                                  "dat\u0251",          # a Latin alpha
                                  "\uff44ata",          # a fullwidth d
                                  "da\u0074\u0327a"])   # t and a combining cedilla
def test_check_shows_no_path_that_looks_like_another(tmp_path, name):
    """What `check` shows of a path is plain ASCII or quoted with every other
    character escaped: a directory whose name is written in letters of another
    script that look like Latin ones was shown as the directory it is not."""
    (tmp_path / name).mkdir()
    (tmp_path / "data").mkdir()
    plan = plan_of(tmp_path, SYSTEM + f'look = {{ host = "directory", path = "{tmp_path}/{name}" }}\n'
                                      f'real = {{ host = "directory", path = "{tmp_path}/data" }}\n')
    lines = authority.holdings(plan).splitlines()
    (look,) = [x for x in lines if x.startswith("  look -> ")]
    (real,) = [x for x in lines if x.startswith("  real -> ")]
    assert look.isascii() and "\\u" in look, look
    assert f"[path={tmp_path}/data]" in real
    assert look.split("[path=")[1].split("]")[0] != real.split("[path=")[1].split("]")[0]
    assert authority.quoted("/srv/d\u0430ta") == '"/srv/d\\u0430ta"'


def test_reach_finds_each_grant_without_searching_its_holders_grants(tmp_path):
    """Deciding an allow-list for `--reach calc.add` looked each grant up among all
    its holder's grants, once a grant: one compartment with 50,000 grants took
    `check --reach` more than 200 s.  Each edge knows its grant.  Counted, not timed."""
    n = 250                                     # other's grants, each to calc (at most 256 start)
    text = SYSTEM + "".join(f'g{i} = {{ compartment = "calc", allow = ["add"], max_uses = 5 }}\n'
                            for i in range(n))
    plan = plan_of(tmp_path, text)
    seen = []

    class Counting(tuple):
        def __iter__(self):
            for g in tuple.__iter__(self):
                seen.append(g)
                yield g

    for comp in plan.system.compartments.values():
        object.__setattr__(comp, "grants", Counting(comp.grants))
    names, _ = authority.could_reach(plan, "calc.add")
    assert names == ["app", "other"]
    assert len(seen) <= 3 * (n + 4), len(seen)


LOOKALIKES = ["d\u0430ta",            # a Cyrillic a
              "\uff44ata",            # a fullwidth d
              "data  (from x.toml: compartments.app.grants.log)"]


@pytest.mark.parametrize("name", LOOKALIKES)
def test_an_error_about_a_path_shows_it_as_check_does(tmp_path, name):
    """check's holdings quoted a path that is not plain ASCII, but the errors about
    it (`... is not an existing directory`, a symbolic link, a module too big, the
    audit file) showed it as it is: a grant of a missing /srv/dаta (a Cyrillic
    `а`) was said to be a missing /srv/data, which exists."""
    (tmp_path / "data").mkdir()
    (tmp_path / "system.toml").write_text(
        SYSTEM + f'look = {{ host = "directory", path = "{tmp_path}/{name}" }}\n')
    with pytest.raises(policy.PolicyError, match="not an existing directory") as e:
        policy.load(str(tmp_path / "system.toml"))
    shown = str(e.value)
    assert authority.quoted(f"{tmp_path}/{name}") in shown, shown
    (tmp_path / "logs").mkdir(mode=0o700)
    (tmp_path / "logs" / name).mkdir()              # an audit file that is a directory
    problem = policy.audit_file_problem(f"{tmp_path}/logs/{name}")   # `up`'s error
    assert authority.quoted(f"{tmp_path}/logs/{name}") in problem, problem
    (tmp_path / name).mkdir(mode=0o777)
    os.chmod(tmp_path / name, 0o777)                # an audit directory others may write
    problem = policy.audit_file_problem(f"{tmp_path}/{name}/audit.log")
    assert authority.quoted(f"{tmp_path}/{name}") in problem, problem
    os.rmdir(tmp_path / name)
    os.symlink(tmp_path / "data", tmp_path / name)
    (tmp_path / "system.toml").write_text(
        SYSTEM + f'look = {{ host = "directory", path = "{tmp_path}/{name}" }}\n')
    with pytest.raises(policy.PolicyError, match="symbolic link") as e:
        policy.load(str(tmp_path / "system.toml"))
    assert authority.quoted(f"{tmp_path}/{name}") in str(e.value), str(e.value)


@pytest.mark.parametrize("name", LOOKALIKES)
def test_checks_hard_link_warning_shows_paths_as_its_holdings_do(tmp_path, name):
    """The warning about a writable grant holding hard-linked files showed the
    grant's path and a file in it as they are, while the holdings line above it
    quoted the same path."""
    d = tmp_path / name
    d.mkdir()
    (d / "f\u0430").write_text("x")
    os.link(d / "f\u0430", d / "g")
    (tmp_path / "system.toml").write_text(
        SYSTEM + f'look = {{ host = "directory", path = "{d}" }}\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stderr
    (warning,) = [x for x in r.stderr.splitlines() if "hard link" in x]
    assert warning.isascii(), warning
    assert f"{authority.quoted(str(d))} is writable" in warning, warning
    assert authority.quoted(str(d / "f\u0430")) in warning or \
        authority.quoted(str(d / "g")) in warning, warning


@pytest.mark.parametrize("name", LOOKALIKES)
def test_preflights_errors_about_a_module_show_its_path_as_check_does(tmp_path, name):
    """preflight's errors (a module that does not export what it serves, cannot
    load a schema) named the module or schema file as it is."""
    import shutil
    module = tmp_path / f"{name}.wat"
    shutil.copy(f"{EXAMPLES}/hello.wat", module)
    with pytest.raises(policy.PolicyError, match="does not export") as e:
        plan_of(tmp_path, SYSTEM.replace(f'module = "{EXAMPLES}/calc.wat"', f'module = "{module}"'))
    assert authority.quoted(str(module)) in str(e.value), str(e.value)
    schema = tmp_path / f"{name}.capnp"
    schema.write_text("not a schema\n")
    with pytest.raises(policy.PolicyError) as e:
        plan_of(tmp_path, SYSTEM.replace(f'"{EXAMPLES}/calc.capnp"', f'"{schema}"'))
    assert str(e.value).startswith(authority.quoted(str(schema)) + ":"), str(e.value)


def test_an_allow_list_is_resolved_once_an_interface_however_long_it_is(tmp_path, monkeypatch):
    """Each name of an allow list was looked for among every method of the interface,
    twice (`name in methods.values()`, then a scan for its ids): a schema of 20,000
    methods and one grant allowing 10,000 of them took `check` (and `up`, before
    anything started) 48 s, twenty such grants over 15 minutes.  The methods of an
    interface are read once, into an index by name.  Counted, not timed."""
    n = 300
    methods = "\n".join(f"  m{i} @{i} () -> ();" for i in range(n))
    (tmp_path / "many.capnp").write_text(
        f"@0xd1e2f3a4b5c6d7e9;\ninterface Many @0xd1e2f3a4b5c6d7ea {{\n{methods}\n}}\n")
    scans = []

    class Counted(dict):
        def values(self):
            scans.append(1)
            return super().values()

        def items(self):
            scans.append(1)
            return super().items()

    real = preflight._method_names
    monkeypatch.setattr(preflight, "_method_names", lambda i: Counted(real(i)))
    allow = ", ".join(f'"m{i}"' for i in range(0, n, 2))
    plan = plan_of(tmp_path, f"""
[system]
schemas = ["many.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Many"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
a = {{ compartment = "calc", allow = [{allow}] }}
b = {{ compartment = "calc", allow = [{allow}, "Many.m1"] }}
""")
    a, b = plan.system.compartments["app"].grants
    assert a.methods == {(0xd1e2f3a4b5c6d7ea, i) for i in range(0, n, 2)}
    assert b.methods == a.methods | {(0xd1e2f3a4b5c6d7ea, 1)}
    assert len(scans) <= 4, f"{len(scans)} scans of the interface's methods for {n} names"


def test_checks_hard_link_warning_says_what_an_append_only_grant_can_do_there(tmp_path):
    """A stdout file grant is append-only by default (policy.STDIO_ATTENUATION): the
    warning about a second hard link to it said the compartment could 'read and
    overwrite that file', which it cannot; it can append to it (and an
    append-only directory grant read and append to its files)."""
    out, d = tmp_path / "out.txt", tmp_path / "d"
    d.mkdir()
    out.write_text("")
    os.link(out, tmp_path / "elsewhere.txt")
    (d / "f").write_text("")
    os.link(d / "f", tmp_path / "other.txt")
    (tmp_path / "system.toml").write_text(
        SYSTEM + f'stdout = {{ host = "file", path = "{out}" }}\n'
        f'data = {{ host = "directory", path = "{d}", append_only = true }}\n'
        f'rw = {{ host = "file", path = "{tmp_path / "other.txt"}", append_only = false }}\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stderr
    warnings = {re.search(r"compartments\.other\.grants\.\w+", x).group(0): x
                for x in r.stderr.splitlines() if "hard link" in x}
    assert "lets other append to that file:" in warnings["compartments.other.grants.stdout"]
    assert "lets other read and append to that file:" in \
        warnings["compartments.other.grants.data"]
    assert "lets other read and overwrite that file:" in warnings["compartments.other.grants.rw"]


def test_an_interface_declared_inside_another_is_named_by_an_allow_list(tmp_path):
    """An interface declared inside another declaration (`Calc.Inner`, returned by
    Calc.make; `S.Cb`, inside a struct) is reached through a grant like any other,
    but an allow list could not name it: `Calc.Inner.z` and `Inner.z` were both
    "unknown interface", so its methods passed every grant unrestricted, whatever
    the operator wanted.  It is named by its qualified name, and restricted with
    what it extends (an inherited method is called with its declarer's id)."""
    from supervisor.membrane import Membrane
    (tmp_path / "n.capnp").write_text("""@0xd1e2f3a4b5c6d7f0;
interface Outer @0xd1e2f3a4b5c6d7f1 {
  interface Base @0xd1e2f3a4b5c6d7f2 { reset @0 () -> (); }
}
interface Calc @0xd1e2f3a4b5c6d7f3 {
  interface Inner @0xd1e2f3a4b5c6d7f4 extends(Outer.Base) { z @0 () -> (); w @1 () -> (); }
  make @0 () -> (i :Inner);
  add @1 () -> ();
}
struct S { interface Cb @0xd1e2f3a4b5c6d7f5 { ping @0 () -> (); pong @1 () -> (); } }
""")
    plan = plan_of(tmp_path, f"""
[system]
schemas = ["n.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = ["make", "Calc.Inner.z", "S.Cb.ping"] }}
""")
    (g,) = plan.system.compartments["app"].grants
    m = Membrane.for_grant("app.calc", g, 0xd1e2f3a4b5c6d7f3, 0.0)
    calc, base, inner, cb = 0xd1e2f3a4b5c6d7f3, 0xd1e2f3a4b5c6d7f2, 0xd1e2f3a4b5c6d7f4, \
        0xd1e2f3a4b5c6d7f5
    assert [m.allows(calc, 0), m.allows(calc, 1)] == [True, False]
    assert [m.allows(inner, 0), m.allows(inner, 1), m.allows(base, 0)] == [True, False, False]
    assert [m.allows(cb, 0), m.allows(cb, 1)] == [True, False]
    assert plan.names[inner][0] == "Calc.Inner" and plan.names[cb][0] == "S.Cb"
    with pytest.raises(policy.PolicyError) as e:
        plan_of(tmp_path, f"""
[system]
schemas = ["n.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc.Inner"
""")
    assert "unknown interface 'Calc.Inner'" in str(e.value)


def test_an_interface_a_schema_imports_is_named_by_an_allow_list_and_no_decoy_hides_it(
        tmp_path):
    """An interface declared in a file a listed schema imports (Calc.newCounter
    returning `import "lib.capnp".Counter`) is reached through a grant like any
    other, but an allow list could not name it: alone, `Counter.inc` was "unknown
    interface", so its methods passed every grant unrestricted; and where a listed
    schema declared an interface of the same name (a decoy `Counter`), the name was
    that one's, `wsuper check` accepted the list and showed it, and every method of
    the Counter actually returned passed.  The name stands for every interface so
    named that the schemas declare or import, and restricts each."""
    from supervisor.membrane import Membrane
    (tmp_path / "lib.capnp").write_text("""@0xd1e2f3a4b5c6e7f0;
interface Base @0xd1e2f3a4b5c6e7f1 { clear @0 () -> (); }
interface Counter @0xd1e2f3a4b5c6e7f2 extends(Base) { inc @0 () -> (); reset @1 () -> (); }
struct S { interface Cb @0xd1e2f3a4b5c6e7f3 { ping @0 () -> (); pong @1 () -> (); } }
""")
    (tmp_path / "calc.capnp").write_text("""@0xd1e2f3a4b5c6e7f8;
using L = import "lib.capnp";
interface Calc @0xd1e2f3a4b5c6e7f9 {
  newCounter @0 () -> (c :L.Counter);
  add @1 () -> ();
  watch @2 (cb :L.S.Cb) -> ();
}
""")
    (tmp_path / "decoy.capnp").write_text("""@0xd1e2f3a4b5c6e7fa;
interface Counter @0xd1e2f3a4b5c6e7fb { inc @0 () -> (); }
""")
    calc, base, counter, cb, decoy = (0xd1e2f3a4b5c6e7f9, 0xd1e2f3a4b5c6e7f1,
                                      0xd1e2f3a4b5c6e7f2, 0xd1e2f3a4b5c6e7f3,
                                      0xd1e2f3a4b5c6e7fb)
    for schemas in (["calc.capnp"], ["calc.capnp", "decoy.capnp"]):
        plan = plan_of(tmp_path, f"""
[system]
schemas = {schemas!r}
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = ["newCounter", "Counter.inc", "S.Cb.ping"] }}
""")
        (g,) = plan.system.compartments["app"].grants
        m = Membrane.for_grant("app.calc", g, calc, 0.0)
        assert [m.allows(calc, 0), m.allows(calc, 1)] == [True, False]
        # lib's Counter: inc only; what it inherits from Base is restricted with it
        assert [m.allows(counter, 0), m.allows(counter, 1), m.allows(base, 0)] == \
            [True, False, False], schemas
        assert [m.allows(cb, 0), m.allows(cb, 1)] == [True, False]
        if "decoy.capnp" in schemas:
            assert m.allows(decoy, 0) and not m.allows(decoy, 1)
        # and named so in the audit and in denials
        assert plan.names[counter][0] == "Counter" and plan.names[cb][0] == "S.Cb"
        assert plan.names[counter][1][1] == "reset"
    # exports are still the listed schemas' interfaces
    with pytest.raises(policy.PolicyError) as e:
        plan_of(tmp_path, f"""
[system]
schemas = ["calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Counter"
""")
    assert "unknown interface 'Counter'" in str(e.value)


def test_an_interface_a_schema_imports_from_the_import_path_is_named_by_an_allow_list(
        tmp_path):
    """A review of the imported interfaces (reviewer 173): the files a schema
    imports from the import path (`import "/capnp/persistent.capnp".Persistent`,
    capnp's own; wsuper's `"/engine.capnp".Engine`) were left out of the
    interfaces an allow list names, as "our own": `Persistent.save` was "unknown
    interface", so a Persistent (or Engine) a granted method returns passed every
    allow list unrestricted, and where a listed schema declared a decoy of its
    name, the name restricted the decoy alone.  They are named as any imported
    file's are, and restricted."""
    from supervisor.membrane import Membrane
    (tmp_path / "calc.capnp").write_text("""@0xd1e2f3a4b5c6e8f8;
interface Calc @0xd1e2f3a4b5c6e8f9 {
  get @0 () -> (p :import "/capnp/persistent.capnp".Persistent(Text, Text));
  eng @1 () -> (e :import "/engine.capnp".Engine);
  add @2 () -> ();
}
""")
    (tmp_path / "decoy.capnp").write_text("""@0xd1e2f3a4b5c6e8fa;
interface Persistent @0xd1e2f3a4b5c6e8fb { save @0 () -> (); }
""")
    calc, persistent, engine = 0xd1e2f3a4b5c6e8f9, 0xc8cb212fcd9f5691, 0xa05a5e2c6b2f6d03
    for schemas in (["calc.capnp"], ["calc.capnp", "decoy.capnp"]):
        plan = plan_of(tmp_path, f"""
[system]
schemas = {schemas!r}
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = ["get", "eng", "Engine.describe"] }}
""")
        (g,) = plan.system.compartments["app"].grants
        m = Membrane.for_grant("app.calc", g, calc, 0.0)
        assert [m.allows(calc, 0), m.allows(calc, 2)] == [True, False]
        # Engine: describe (@2) only
        assert [m.allows(engine, 2), m.allows(engine, 0), m.allows(engine, 1)] == \
            [True, False, False], schemas
        plan = plan_of(tmp_path, f"""
[system]
schemas = {schemas!r}
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = ["get", "Persistent.save", "Engine.describe"] }}
""")
        (g,) = plan.system.compartments["app"].grants
        m = Membrane.for_grant("app.calc", g, calc, 0.0)
        assert m.allows(persistent, 0), schemas         # capnp's own Persistent.save
        assert plan.names[persistent][0] == "Persistent"
        assert plan.names[engine][0] == "Engine"
