"""The C example plugins of examples/kv, built from source with `wsuper build`
(clang, lld, wasi-libc) and run under `wsuper up`."""
import os
import re
import shutil

import pytest

from tests.conftest import audit_calls, ROOT, external_client, run_wsuper


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    """A copy of examples/kv (and the policy it uses) with its plugins built."""
    top = tmp_path_factory.mktemp("kv")
    here = top / "examples" / "kv"
    shutil.copytree(os.path.join(ROOT, "examples", "kv"), here,
                    ignore=shutil.ignore_patterns("build", "data"))
    (top / "policies").mkdir()
    shutil.copy(os.path.join(ROOT, "policies", "kv-client.toml"), top / "policies")
    for name in ("store", "client", "hostile"):
        r = run_wsuper("build", str(here / f"{name}.c"), "--schema", str(here / "kv.capnp"),
                       "-o", str(here / "build" / f"{name}.wasm"), timeout=300)
        assert r.returncode == 0, r.stderr
        assert ("reactor" if name == "store" else "command") in r.stdout
    return here


def _fresh_data(kv):
    shutil.rmtree(kv / "data", ignore_errors=True)
    (kv / "data").mkdir()
    for audit in ("audit.jsonl", "hostile-audit.jsonl"):
        (kv / audit).unlink(missing_ok=True)


def test_the_store_persists_to_its_append_only_file(kv):
    _fresh_data(kv)
    for run in (1, 2):
        r = run_wsuper("up", str(kv / "system.toml"), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        client = [l for l in r.stdout.splitlines() if l.startswith("[client]")]
        assert client == [
            f"[client] client: told that runs is now {run}",     # the store called back
            "[client] client: told that greeting is now hello",
            "[client] client: the store holds 2 keys: runs greeting",
            # the one method its allow-list leaves out: refused before the store
            "[client] client: remove greeting -> refused (-10): denied: client.kv: "
            "Store.remove is not allowed (allow = [Store.get, Store.keys, Store.put, "
            "Store.subscribe])",
            f"[client] client: this is run {run} (the count survives restarts in the "
            "append-only log)"]
    assert "[store] store: replayed 2 records from /data/kv.log" in r.stdout
    assert (kv / "data" / "kv.log").read_text() == \
        "runs\t1\ngreeting\thello\nruns\t2\ngreeting\thello\n"
    records = audit_calls(kv / "audit.jsonl")
    calls = {(x["caller"], x["capability"].split(" ")[0], x["method"]) for x in records}
    assert {("client", "client.kv", "subscribe"), ("client", "client.kv", "put"),
            ("store", "store.data>Directory.open", "append")} <= calls, calls
    assert [x["outcome"] for x in records if x["method"] == "remove"] == ["denied"] * 2  # 2 runs
    # the Listener the client handed over at run time, called by the store
    assert any(x["caller"] == "store" and x["method"] == "changed" for x in records)


def _store_alone(kv, name: str, tmp_path):
    """A system file `name` beside the example's: its store alone, external, on a
    socket in `tmp_path`."""
    system = kv / name
    system.write_text(f"""
[system]
schemas = ["kv.capnp"]
socket = "{tmp_path}/kv.sock"

[compartments.store]
module = "build/store.wasm"
exports = "Store"
external = true

[compartments.store.grants]
data = {{ host = "directory", path = "${{SYSTEM_DIR}}/data", append_only = true }}
stdout = {{ host = "log" }}
""")
    return system


def test_a_client_allowed_remove_removes_for_good(kv, wsuper, tmp_path):
    """The demo's client may not call Store.remove; a client whose grant allows it
    (here an external one, through the system's socket) removes a key: the store
    appends a record of it to its append-only log and, started again, replays it."""
    import capnp_schemas
    _fresh_data(kv)
    (kv / "data" / "kv.log").write_text("runs\t7\ngreeting\thello\n")
    system = _store_alone(kv, "removing.toml", tmp_path)
    schema = capnp_schemas.load(str(kv / "kv.capnp"))

    async def remove(gateway):
        store = (await gateway.get("store")).cap.as_interface(schema.Store)
        gone, again = await store.remove("greeting"), await store.remove("greeting")
        return gone.found, again.found, list((await store.keys()).keys)

    async def keys(gateway):
        store = (await gateway.get("store")).cap.as_interface(schema.Store)
        return list((await store.keys()).keys)

    for body, expected in ((remove, (True, False, ["runs"])), (keys, ["runs"])):
        run = wsuper("up", str(system))
        run.wait_for("ready store")
        assert external_client(f"{tmp_path}/kv.sock", body) == expected
        run.stop()
    assert (kv / "data" / "kv.log").read_text() == "runs\t7\ngreeting\thello\n\tgreeting\n"
    assert "[store] store: replayed 3 records from /data/kv.log" in run.lines


def test_check_shows_who_holds_what_in_the_example(kv):
    _fresh_data(kv)                 # the grant's directory must exist (alone, it did not)
    r = run_wsuper("check", str(kv / "hostile.toml"), "--reach", "store.put")
    assert r.returncode == 0, r.stderr
    assert f"  data -> host Directory [path={kv}/data, append_only]" in r.stdout
    assert "  kv -> store's Store [allow=get, calls_per_second=50]" in r.stdout
    assert f"  public -> host Directory [path={kv}/public, read_only]" in r.stdout
    # no compartment could call put: only clients of the external socket
    assert "could reach store.put: nobody" in r.stdout
    assert "and any client of the external socket" in r.stdout


def _shown_checks() -> list[tuple[list[str], list[str]]]:
    """The `$ wsuper check ...` examples of docs/policy-reference.md: each one's
    arguments and the lines it shows."""
    with open(os.path.join(ROOT, "docs", "policy-reference.md"), encoding="utf-8") as f:
        text = f.read()
    return [(m.group(1).split(), m.group(2).splitlines())
            for m in re.finditer(r"^```\n\$ wsuper check ([^\n]*)\n(.*?)```$", text, re.M | re.S)]


def test_the_check_output_the_reference_shows_is_what_check_prints(kv):
    """An outside review: policy-reference.md showed `wsuper check`'s lines without
    the memory protection each compartment's line ends with, and its grants as
    coming "from examples/kv/hostile.toml" where check names the file by its
    absolute path. Each line shown (`...` standing for any text, a line of `...`
    alone for any lines) is a line check prints, in that order."""
    _fresh_data(kv)
    shown = _shown_checks()
    assert [args[0] for args, _ in shown] == ["examples/kv/hostile.toml",
                                              "examples/calc/callback.toml"], shown
    for args, lines in shown:
        path = str(kv / "hostile.toml") if args[0] == "examples/kv/hostile.toml" \
            else os.path.join(ROOT, args[0])
        r = run_wsuper("check", path, *args[1:])
        assert r.returncode == 0, r.stderr
        printed = r.stdout.splitlines()
        at = 0
        for line in lines:
            if line.strip() == "...":
                continue
            pattern = re.compile(".*".join(map(re.escape, line.split("..."))) + r"\Z")
            found = next((i for i in range(at, len(printed)) if pattern.match(printed[i])),
                         None)
            assert found is not None, (f"wsuper check {' '.join(args)} printed no line like\n"
                                       f"{line}\nafter line {at}:\n{r.stdout}")
            at = found + 1


def test_a_hostile_plugin_is_contained(kv, wsuper):
    _fresh_data(kv)
    (kv / "data" / "kv.log").write_text("runs\t41\n")
    # not in data/: the store's grant holds that directory, and no grant may reach the
    # supervisor's socket (--socket is held to that as [system] socket is)
    sock = kv / "ext.sock"
    run = wsuper("up", str(kv / "hostile.toml"), "--socket", str(sock))
    run.wait_for("hostile: looping now", timeout=60)
    # a compartment spinning forever hurts nobody: the store still answers
    import capnp_schemas
    schema = capnp_schemas.load(str(kv / "kv.capnp"))

    async def body(gateway):
        store = (await gateway.get("store")).cap.as_interface(schema.Store)
        got = await store.get("runs")
        return got.found, got.value
    assert external_client(str(sock), body) == (True, "41")
    # ... and it is stopped when its program has used its CPU allowance (run_cpu)
    run.wait_for("compartment hostile failed: its program used more than 3 s of CPU "
                 "(limit run_cpu)", timeout=60)
    run.stop()
    out = [l for l in run.lines if l.startswith("[hostile]") and "flood line" not in l]
    assert out[:7] == [
        "[hostile] hostile: read /etc/passwd -> Capabilities insufficient",
        "[hostile] hostile: read ../data/kv.log -> Operation not permitted",
        "[hostile] hostile: read /data/kv.log -> Capabilities insufficient",
        "[hostile] hostile: write /public/readme.txt -> Read-only file system",
        "[hostile] hostile: put through kv -> -10 (denied: hostile.kv: Store.put is not allowed "
        "(allow = [Store.get]))",
        "[hostile] hostile: get through forged handle 999 -> -1 (handle 999 is not in this "
        "compartment's c-list)",
        "[hostile] hostile: get through kv -> 0 (41)"], out
    refused = int(out[7].split(", ")[1].split()[0])
    assert out[7].startswith("[hostile] hostile: 200 quick gets, ") and refused > 100
    floods = [l for l in run.lines if "flood line" in l]
    assert 0 < len(floods) < 100              # log_rate = 20: most of 1000 lines refused
    denials = [l for l in run.lines if l.startswith("wsuper: denied: hostile")]
    assert len(denials) < 20                  # the terminal is not flooded either
    assert (kv / "data" / "kv.log").read_text() == "runs\t41\n"
    records = audit_calls(kv / "hostile-audit.jsonl")
    assert any(x["caller"] == "hostile" and x["method"] == "put" and x["outcome"] == "denied"
               for x in records)
    assert sum(x["caller"] == "hostile" and x["outcome"] == "denied" for x in records) > 100


def test_capabilities_a_listener_adds_to_its_answers_do_not_fill_the_stores_handles(kv, wsuper,
                                                                                    tmp_path):
    """The store calls every listener on each put, through a generated client stub
    that reads the whole reply.  A client whose listener answered `changed` with 16
    capabilities (the method returns none) filled the store's 1024 handles after
    64 puts: every later subscribe failed.  The stubs now release what the results
    do not hold, and the handles in params are the call's (docs/guest-abi.md)."""
    import struct

    from capnp_schemas import payloads, protocol as P
    from capnp_schemas.protocol import Content
    from tests.wireclient import WireClient
    import capnp_schemas
    _fresh_data(kv)
    system = _store_alone(kv, "external.toml", tmp_path)
    run = wsuper("up", str(system))
    run.wait_for("ready store")
    schema = capnp_schemas.load(str(kv / "kv.capnp"))
    store_id = schema.Store.schema.node.id
    put_params, subscribe_params = (payloads.method_structs(schema.Store, m)[0]
                                    for m in ("put", "subscribe"))
    c = WireClient(f"{tmp_path}/kv.sock")
    store = c.get(c.bootstrap(), "store")

    def subscribe(listener) -> P.ReturnReceived:
        seg = bytearray(payloads.build(subscribe_params, {})[0].segments[0])
        struct.pack_into("<Q", seg, len(seg) - 8, 3)      # `listener`: capability #0
        return c.returned(c.call(store, store_id, 3, Content.standalone([bytes(seg)]),
                                 [listener]))

    def put(key: str, junk: int) -> list:
        """store.put, answering the store's calls to our listeners; their keys."""
        qid = c.call(store, store_id, 0, payloads.build(put_params,
                                                         {"key": key, "value": "v"})[0])
        told = []
        while True:
            ev = c.wait(lambda e: isinstance(e, P.CallReceived)
                        or isinstance(e, P.ReturnReceived) and e.question_id == qid)
            if isinstance(ev, P.ReturnReceived):
                assert ev.payload is not None, ev.error
                if ev.finish_needed:
                    c.send(c.conn.send_finish(qid))
                return told
            told.append(ev.target)
            c.send(c.conn.send_return(ev.answer_id, P.EMPTY,
                                      [object() for _ in range(junk)]))

    hostile, honest = object(), object()
    assert subscribe(hostile).payload is not None
    for i in range(80):                   # 1280 capabilities the store never asked for
        assert put(f"k{i}", junk=16) == [hostile]
    ret = subscribe(honest)
    assert ret.payload is not None, ret.error
    assert put("last", junk=0) == [hostile, honest]
    c.close()
