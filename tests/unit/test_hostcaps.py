"""The host layer on real files, behind the real router: what a compartment's calls
on its log, clock, random, environment, directories and files answer.

The runtime runs file operations in worker threads; here they run inline, which
is the same code without the thread."""
import struct

import pytest

from capnp_schemas import hosted, payloads, protocol as P, rpcwire, wire
from capnp_schemas.protocol import Content
from supervisor import effects as fx, hostcaps, router as R
from tests.unit.test_router import FakeEngine, grant

DIR, FILE = hosted.BY_KIND["directory"], hosted.BY_KIND["file"]
LOG, CLOCK, RANDOM, ENV = (hosted.BY_KIND[k] for k in ("log", "clock", "random", "environment"))


class Harness:
    """A router, a real HostCaps, and one compartment `app` with `grants`."""

    def __init__(self, grants, names=None, limits=None, **sources):
        self.router = R.Router({"app": None}, names=names, limits=limits)
        self.hosts = hostcaps.HostCaps(lambda owner: 100.0, **sources)
        self.lines, self.notices, self.released, self.said = [], [], [], []
        served = {g.name: hostcaps.open_grant(g) for g in grants}
        e = FakeEngine.__new__(FakeEngine)
        e.router, e.name, e.exports = self.router, "app", False
        e.conn, e.control, e.main = P.Connection("app"), object(), object()
        e.grants, e.inbox, e.effects, e.host_calls, e.answer_hosts = {}, [], [], [], False
        e.deliver = self.deliver
        self.app = e
        e.pid, effects = self.router.add_engine("app", grants, served)
        FakeEngine.all[e.pid] = e
        self.deliver(effects)

    def deliver(self, effects):
        for e in effects:
            if isinstance(e, fx.Send):
                FakeEngine.all[e.peer].feed(e.data)
            elif isinstance(e, fx.HostCall):
                outcome = self.hosts.serve(e)
                if isinstance(outcome, hostcaps.Job):
                    outcome = outcome.run()
                if isinstance(outcome, hostcaps.Answer):
                    self.lines += outcome.lines
                    self.said += outcome.notices
                    self.deliver(self.router.host_returned(e.token, outcome.content,
                                                           outcome.objects))
                else:
                    self.notices.append(outcome.notice)
                    self.deliver(self.router.host_failed(e.token, outcome.reason, outcome.type))
            elif isinstance(e, fx.HostRelease):
                self.released.append(e)
                hostcaps.release(e.kind, e.served)
            else:
                self.app.effects.append(e)

    def call(self, handle, iface, method, content=None, **fields):
        m = iface.method(method)
        if content is None:
            content = payloads.build(m.params, fields)[0] if fields else Content()
        self.app.send(self.app.conn.send_call(handle, iface.id, m.ordinal, content)[1])
        return self.app.inbox.pop()

    def grant(self, i):
        return self.app.grants[i].import_id


def result(ret, iface, method):
    return payloads.read(iface.method(method).results, ret.payload.content, 1 << 20)


def test_clock_and_random_answer_from_their_sources():
    h = Harness([grant("clock", "clock", "host"), grant("random", "random", "host")],
                wall_ns=lambda: 1_700_000_000_000_000_000, monotonic_ns=lambda: 42,
                entropy=lambda n: b"\x07" * n)
    assert result(h.call(h.grant(0), CLOCK, "wall"), CLOCK, "wall") == {
        "ns": 1_700_000_000_000_000_000}
    assert result(h.call(h.grant(0), CLOCK, "monotonic"), CLOCK, "monotonic") == {"ns": 42}
    got = h.call(h.grant(1), RANDOM, "bytes", count=5)
    assert result(got, RANDOM, "bytes") == {"data": b"\x07" * 5}
    refused = h.call(h.grant(1), RANDOM, "bytes", count=hostcaps.RANDOM_MAX_BYTES + 1)
    assert "at most 65536 bytes per call" in refused.error


def test_random_never_answers_more_than_the_caller_accepts():
    h = Harness([grant("random", "random", "host")],
                limits={"app": R.Limits(message_size=4096)}, entropy=lambda n: b"\0" * n)
    refused = h.call(h.grant(0), RANDOM, "bytes", count=8000)
    assert "EINVAL: Random.bytes: at most 4080 bytes per call" in refused.error
    got = h.call(h.grant(0), RANDOM, "bytes", count=4080)
    assert result(got, RANDOM, "bytes") == {"data": b"\0" * 4080}


@pytest.mark.parametrize("size", [1024, 1025, 1031, 1032, 2047])
def test_random_answers_at_the_least_message_size_as_much_as_fits(size):
    """Random.bytes kept 1 KiB of every answer for its structure (RESULT_HEADROOM,
    File.read's), of which it takes 16 bytes: a compartment with message_size =
    "1KiB", the least the system file allows, got "at most 0 bytes per call" for
    every count, and a WASI program's random_get failed EINVAL, whatever it asked.
    Now it answers what fits, and that answer reaches the compartment."""
    h = Harness([grant("random", "random", "host")],
                limits={"app": R.Limits(message_size=size)}, entropy=lambda n: b"\x07" * n)
    most = (size - 16) // 8 * 8
    got = h.call(h.grant(0), RANDOM, "bytes", count=most)
    assert result(got, RANDOM, "bytes") == {"data": b"\x07" * most}, got
    refused = h.call(h.grant(0), RANDOM, "bytes", count=most + 1)
    assert f"at most {most} bytes per call" in refused.error


def test_environment_grant_shows_only_what_was_granted(monkeypatch):
    monkeypatch.setenv("SUPERVISOR_SECRET", "hunter2")
    h = Harness([grant("env", "environment", "host", args=("-v", "x"),
                       vars=(("MODE", "fast"),))])
    e = h.grant(0)
    assert result(h.call(e, ENV, "args"), ENV, "args") == {"args": ["-v", "x"]}
    assert result(h.call(e, ENV, "vars"), ENV, "vars") == {
        "vars": [{"name": "MODE", "value": "fast"}]}
    assert result(h.call(e, ENV, "get", name="MODE"), ENV, "get") == {
        "value": "fast", "present": True}
    assert result(h.call(e, ENV, "get", name="SUPERVISOR_SECRET"), ENV, "get") == {
        "value": "", "present": False}


def test_an_environments_answers_are_built_once_not_for_every_call(monkeypatch):
    """Environment.args and .vars built their whole answer anew for every call: an
    environment grant of 10,000 variables (as much as the holder's message_size
    takes, which check allows) made each 100-byte call cost the supervisor's loop
    ~9 ms, 150 times a Clock call, as often as the holder liked.  Each answer is
    built once a grant (it never changes)."""
    from capnp_schemas import payloads as PL
    h = Harness([grant("env", "environment", "host", args=("-v", "x"),
                       vars=tuple((f"V{i}", "x" * 40) for i in range(500)))])
    e = h.grant(0)
    built, real = [], PL.build
    monkeypatch.setattr(PL, "build", lambda struct, values: built.append(
        len(values.get("vars", ()))) or real(struct, values))
    for _ in range(5):
        got = result(h.call(e, ENV, "vars"), ENV, "vars")["vars"]
        assert len(got) == 500 and got[7] == {"name": "V7", "value": "x" * 40}
        assert result(h.call(e, ENV, "args"), ENV, "args") == {"args": ["-v", "x"]}
    assert built.count(500) == 1, built


def test_a_file_opened_through_a_read_only_directory_grant_is_read_only(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    h = Harness([grant("data", "directory", "host", path=str(tmp_path), read_only=True)])
    d = h.grant(0)
    assert "is read-only" in h.call(d, DIR, "open", path="notes.txt", mode="readWrite").error
    f = h.call(d, DIR, "open", path="notes.txt", mode="read").payload.caps[0].import_id
    assert result(h.call(f, FILE, "read", offset=0, count=100), FILE, "read") == {
        "data": b"hello"}
    assert "is read-only" in h.call(f, FILE, "write", offset=0, data=b"X").error
    assert "contains '..'" in h.call(d, DIR, "open", path="../x", mode="read").error
    assert (tmp_path / "notes.txt").read_text() == "hello"
    h.app.send(h.app.conn.send_release(f))          # released: its descriptor is closed
    assert [r.kind for r in h.released] == ["file"]


def test_a_parameter_named_by_a_python_keyword_reaches_the_method_and_max_bytes_too(tmp_path):
    # Directory.rename(from, to) runs hostfs's rename(from_, to); Directory.list
    # also gets the caller's max_bytes (both looked up once per class and method)
    (tmp_path / "a.txt").write_text("x")
    h = Harness([grant("data", "directory", "host", path=str(tmp_path))],
                limits={"app": R.Limits(message_size=4096)})
    d = h.grant(0)
    for name in ("b.txt", "c.txt"):
        old = "a.txt" if name == "b.txt" else "b.txt"
        assert h.call(d, DIR, "rename", **{"from": old, "to": name}).error is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]
    for i in range(200):
        (tmp_path / f"{i:03d}-{'n' * 60}").write_text("")
    listed = result(h.call(d, DIR, "list", path="."), DIR, "list")
    assert 0 < len(listed["entries"]) < 201 and not listed["done"]     # a page that fits 4 KiB


def test_an_allow_list_on_a_directory_applies_to_the_files_it_opens(tmp_path):
    (tmp_path / "log.txt").write_text("")
    names = {DIR.id: ("Directory", {m.ordinal: m.name for m in DIR.methods}),
             FILE.id: ("File", {m.ordinal: m.name for m in FILE.methods})}
    allow = frozenset({(DIR.id, DIR.method("open").ordinal),
                       (FILE.id, FILE.method("append").ordinal)})
    h = Harness([grant("data", "directory", "host", methods=allow, path=str(tmp_path))],
                names=names)
    d = h.grant(0)
    f = h.call(d, DIR, "open", path="log.txt", mode="readWrite").payload.caps[0].import_id
    assert h.call(f, FILE, "append", data=b"ok").error is None
    assert "File.truncate is not allowed" in h.call(f, FILE, "truncate", size=0).error
    assert (tmp_path / "log.txt").read_text() == "ok"


def test_a_file_read_never_answers_more_than_the_caller_accepts(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    h = Harness([grant("big", "file", "host", path=str(tmp_path / "big"))],
                limits={"app": R.Limits(message_size=8192)})
    got = h.call(h.grant(0), FILE, "read", offset=0, count=100_000)
    assert 0 < len(result(got, FILE, "read")["data"]) <= 8192


def test_a_file_read_that_cannot_fit_any_byte_fails_and_is_never_taken_for_the_end(tmp_path):
    """With a message size that leaves no byte of a file room beside a result's own
    structure, File.read answered no data, which every reader takes for the end
    of the file (a WASI program read an empty file).  It fails E2BIG, naming the
    limit.  (This was message_size = 1 KiB, the least the system file allows,
    while the host kept 1 KiB of every answer; a read carries 960 bytes there now,
    test_file_answers_at_the_least_message_size_carry_what_fits.)"""
    from supervisor import hostfs
    (tmp_path / "f").write_bytes(b"x" * 100)
    f = hostfs.File.grant(str(tmp_path / "f"))
    hosts = hostcaps.HostCaps(lambda owner: 100.0)
    read = FILE.method("read")

    def call(offset, count):
        content = payloads.build(read.params, {"offset": offset, "count": count})[0]
        got = hosts.serve(fx.HostCall(1, "file", "app", f, FILE.id, read.ordinal, content,
                                      hostfs.RESULT_SLACK, "app"))
        return got.run() if isinstance(got, hostcaps.Job) else got
    try:
        got = call(0, 10)
        assert isinstance(got, hostcaps.Refusal) and got.reason.startswith("E2BIG: ") \
            and "message_size" in got.reason, got
        got = call(0, 0)                                  # nothing asked: nothing
        assert payloads.read(read.results, got.content, 1 << 20)["data"] == b""
        got = call(500, 10)                               # past the end: the same
        assert isinstance(got, hostcaps.Refusal) and got.reason.startswith("E2BIG: "), got
    finally:
        f.close()


# ------------------------------------------------------------------ hostile parameters


def _with_word(iface, method, fields, byte, fmt, value):
    """Params of `iface.method` with the data word at `byte` (of the root struct) replaced."""
    seg = bytearray(payloads.build(iface.method(method).params, fields)[0].segments[0])
    struct.pack_into(fmt, seg, 8 + byte, value)
    return Content.standalone([bytes(seg)])


def _with_text_bytes(iface, method, fields, old: bytes, new: bytes):
    seg = bytearray(payloads.build(iface.method(method).params, fields)[0].segments[0])
    i = seg.index(old)
    seg[i:i + len(new)] = new
    return Content.standalone([bytes(seg)])


def test_params_that_cannot_be_read_fail_that_call_with_einval(tmp_path):
    (tmp_path / "f").write_text("data")
    h = Harness([grant("data", "directory", "host", path=str(tmp_path)),
                 grant("log", "log", "host")])
    d, log = h.grant(0), h.grant(1)
    bad_mode = _with_word(DIR, "open", {"path": "f", "mode": "read"}, 0, "<H", 7)
    assert "EINVAL" in (err := h.call(d, DIR, "open", bad_mode).error) and "mode: 7" in err
    not_utf8 = _with_text_bytes(DIR, "stat", {"path": "ab"}, b"ab", b"\xff\xfe")
    assert "not valid UTF-8" in h.call(d, DIR, "stat", not_utf8).error
    assert "not valid UTF-8" in h.call(log, LOG, "write", _with_text_bytes(
        LOG, "write", {"text": "ab"}, b"ab", b"\xc3\x28")).error
    # a text field whose pointer points at a struct
    seg = bytearray(payloads.build(LOG.method("write").params, {"text": "x"})[0].segments[0])
    struct.pack_into("<Q", seg, 8, (1 << 32))           # a struct pointer, 1 data word
    assert "EINVAL" in h.call(log, LOG, "write", Content.standalone([bytes(seg)])).error
    assert h.lines == []
    assert h.notices == [None] * 4                        # failed calls, no internal faults


def test_a_log_line_of_a_mebibyte_is_shown_cut_and_the_call_succeeds():
    h = Harness([grant("log", "log", "host")])
    ret = h.call(h.grant(0), LOG, "write", text="y" * (1 << 20))
    assert ret.error is None
    (line,) = h.lines
    assert line.text.startswith("y" * hostcaps.LOG_LINE_LIMIT)
    assert line.text.endswith(f"({(1 << 20) - hostcaps.LOG_LINE_LIMIT} more characters)")


def test_a_method_the_host_object_does_not_have_is_unimplemented():
    h = Harness([grant("clock", "clock", "host")])
    h.app.send(h.app.conn.send_call(h.grant(0), CLOCK.id, 9)[1])
    ret = h.app.inbox.pop()
    assert ret.error_type == "unimplemented" and "Clock (wall, monotonic) only" in ret.error
    h.app.send(h.app.conn.send_call(h.grant(0), FILE.id, 0)[1])
    assert h.app.inbox.pop().error_type == "unimplemented"


def test_a_fault_in_a_file_operation_fails_that_call_and_tells_the_operator(tmp_path,
                                                                             monkeypatch):
    (tmp_path / "f").write_text("data")
    h = Harness([grant("data", "directory", "host", path=str(tmp_path))])
    monkeypatch.setattr(hostcaps.hostfs.Directory, "stat",
                        lambda self, path, **_: 1 // 0)
    ret = h.call(h.grant(0), DIR, "stat", path="f")
    assert ret.error.startswith("EIO: internal error in stat")
    assert "ZeroDivisionError" in h.notices[-1]


def test_an_abandoned_job_releases_what_it_opened(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("data")
    directory = hostcaps.hostfs.Directory.grant(str(tmp_path))
    real_open, abandoned = hostcaps.hostfs.Directory.open, []

    def open_(self, *args, **kwargs):
        abandoned.append(job.abandon())    # its caller gives up while it runs
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(hostcaps.hostfs.Directory, "open", open_)
    job = hostcaps.HostCaps(lambda o: 1.0).serve(fx.HostCall(
        1, "directory", "app", directory, DIR.id, DIR.method("open").ordinal,
        payloads.build(DIR.method("open").params, {"path": "f", "mode": "read"})[0], 1 << 20))
    outcome = job.run()
    assert abandoned == [True]                    # finishes after its caller gave up
    (kind, opened), = outcome.objects
    with pytest.raises(OSError):
        import os
        os.fstat(opened.fd)                # closed by the job itself


def test_a_read_the_page_cache_holds_is_answered_at_once_and_others_go_to_a_thread(tmp_path,
                                                                                    monkeypatch):
    from supervisor import hostfs
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 16)
    f = hostfs.File.grant(str(path), read_only=True)
    hosts = hostcaps.HostCaps(lambda o: 1.0)
    read = FILE.method("read")

    def serve(offset, count):
        content = payloads.build(read.params, {"offset": offset, "count": count})[0]
        return hosts.serve(fx.HostCall(1, "file", "app", f, FILE.id, read.ordinal, content, 1 << 20))
    path.read_bytes()                                     # in the page cache now
    now = serve(100, 1000)
    assert isinstance(now, hostcaps.Answer)               # inline: no worker thread
    assert payloads.read(read.results, now.content, 4096)["data"] == (bytes(range(256)) * 16)[100:1100]
    assert isinstance(serve(4000, 1000), hostcaps.Job)    # short (the end of the file): a thread
    monkeypatch.setattr(hostfs, "_NOWAIT", None)          # no RWF_NOWAIT here: a thread
    assert isinstance(serve(0, 10), hostcaps.Job)
    f.close()


def test_params_behind_a_far_pointer_that_lands_on_the_messages_root_word_fail_with_einval(
        tmp_path):
    # File.read whose params pointer is a far pointer with its landing pad at word 0 of
    # segment 0: the message's root pointer, read as the pad's tag, makes the Call
    # struct itself the params.  pycapnp reads the params as a message whose root word
    # is that far pointer (landing on itself) and refuses them; the flat reader must
    # not answer from the words of the Call instead.
    (tmp_path / "f").write_text("0123456789")
    h = Harness([grant("f", "file", "host", path=str(tmp_path / "f"))])
    params = payloads.build(FILE.method("read").params, {"offset": 0, "count": 4})[0]
    _q, data = h.app.conn.send_call(h.grant(0), FILE.id, FILE.method("read").ordinal, params)
    seg = bytearray(wire.unframe(data)[0])
    at = rpcwire.decode([bytes(seg)]).content_loc[1]
    struct.pack_into("<Q", seg, 8 * at, wire.far_pointer(0, 0))
    content = P.Content((bytes(seg),), (0, at))
    with pytest.raises(payloads.DecodeError):
        payloads._read_pycapnp(FILE.method("read").params, content, 1 << 20)
    with pytest.raises(payloads.DecodeError):
        payloads.read(FILE.method("read").params, content, 1 << 20)
    h.app.send(wire.frame([bytes(seg)]))
    ret = h.app.inbox.pop()
    assert ret.error is not None and "EINVAL: File.read: malformed params" in ret.error
    assert h.notices == [None]


def test_a_grants_write_quota_outlives_each_opening_of_the_grant(tmp_path):
    """The runtime opens a compartment's grants at each start: the quota it opens
    them with is the grant's (HostCaps.write_quota), so a restart does not renew it."""
    from supervisor import policy
    d = tmp_path / "d"
    d.mkdir()
    g = policy.Grant("q", "host", "directory", path=str(d), max_bytes_written=5000)
    f = policy.Grant("f", "host", "file", path=str(d / "f.txt"), max_bytes_written=10)
    (d / "f.txt").write_text("")
    hosts = hostcaps.HostCaps(lambda owner: 100.0)
    assert hosts.write_quota("app", g) is hosts.write_quota("app", g)
    assert hosts.write_quota("other", g) is not hosts.write_quota("app", g)
    for opened, write in ((g, lambda o: o.create("x%d" % id(o))["file"].append(b"y" * 800)),
                          (f, lambda o: o.append(b"0123456789"))):
        first = hostcaps.GrantOpening(opened, hosts.write_quota("app", opened)).run()
        write(first)                               # spends most of it ...
        first.close()
        again = hostcaps.GrantOpening(opened, hosts.write_quota("app", opened)).run()
        with pytest.raises(hostcaps.hostfs.FsError, match="write quota exhausted") as e:
            write(again)                           # ... and a second opening has the rest
        assert e.value.code == "EDQUOT"
        again.close()


def test_log_lines_refused_by_the_rate_are_told_to_the_operator_not_lost_in_silence():
    """Past log_rate a Log.write fails EAGAIN for the plugin; the operator was told
    nothing (a WASI program's burst of printf lost its lines without a trace, where
    an engine's stderr says "N lines not shown").  The count is said with a line
    shown (at most once a second) and, by the runtime, when the program ends."""
    now = [0.0]
    h = Harness([grant("log", "log", "host")], clock=lambda: now[0])
    outcomes = [h.call(h.grant(0), LOG, "write", text=f"line {i}").error for i in range(250)]
    assert outcomes.count(None) == 100 and len(h.lines) == 100      # a burst of log_rate
    assert all("EAGAIN" in e and "limit log_rate" in e for e in outcomes if e)
    assert h.said == []                          # nothing shown since: nothing said yet
    now[0] = 0.5
    assert h.call(h.grant(0), LOG, "write", text="half a second on").error is None
    assert h.said == ["150 log lines of app not shown: more than 100 a second "
                      "(limit log_rate)"] and h.lines[-1].text == "half a second on"
    for i in range(120):                          # 49 tokens left: 71 refused
        h.call(h.grant(0), LOG, "write", text=f"again {i}")
    now[0] = 0.9                                  # said less than a second ago: counted on
    h.call(h.grant(0), LOG, "write", text="later")
    assert len(h.said) == 1
    assert h.hosts.log_refused("app") == "71 log lines of app not shown: more than 100 " \
                                         "a second (limit log_rate)"
    assert h.hosts.log_refused("app") is None     # said once


@pytest.mark.parametrize("declared", [["File"], ["File", "Directory"], []])
def test_an_allow_list_names_the_host_interfaces_whatever_the_schemas_declare(
        tmp_path, declared):
    """An outside review: a schema of the system that declared an interface named
    File (or Directory) took the name's place: `File.read` in a directory grant's
    allow list meant the schema's File, the host's File that the grant returns was
    restricted by nothing, and a compartment allowed only to read wrote its files.
    A name stands for every interface so named, each restricted; the granted one
    is the one granted, by its id."""
    from supervisor import policy, preflight
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "log.txt").write_text("kept")
    ids = iter(range(0x80 + 0x10 * len(declared), 0x90 + 0x10 * len(declared)))
    (tmp_path / "mine.capnp").write_text(f"@0xd3a7e5c1b0a99e{len(declared):02x};\n" + "".join(
        f"interface {n} @0xd3a7e5c1b0a99f{next(ids):02x} {{\n  read @0 () -> ();\n"
        f"  open @1 () -> ();\n}}\n" for n in declared))
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["mine.capnp"]
[compartments.app]
module = "m.wat"
[compartments.app.grants]
data = {{ host = "directory", path = "{tmp_path}/data", allow = ["open", "File.read"] }}
""")
    plan = preflight.prepare(policy.load(str(tmp_path / "system.toml")))
    (g,) = plan.system.compartments["app"].grants
    assert (DIR.id, DIR.method("open").ordinal) in g.methods
    assert (FILE.id, FILE.method("read").ordinal) in g.methods
    assert {DIR.id, FILE.id} <= g.mentioned
    h = Harness([g], names=plan.names)
    d = h.grant(0)
    f = h.call(d, DIR, "open", path="log.txt", mode="readWrite").payload.caps[0].import_id
    assert h.call(f, FILE, "read", offset=0, count=10).error is None
    for method, fields in (("write", {"offset": 0, "data": b"PWNED"}), ("truncate",
                                                                          {"size": 0})):
        assert f"File.{method} is not allowed" in h.call(f, FILE, method, **fields).error
    assert "Directory.remove is not allowed" in h.call(d, DIR, "remove", path="log.txt").error
    assert (tmp_path / "data" / "log.txt").read_text() == "kept"


def test_an_allow_list_restricts_what_a_mentioned_interface_inherits(tmp_path):
    """An inherited method is called with the id of the interface that declares it:
    `allow = ["newCounter", "Counter.inc"]` restricted Counter's own id only, so
    Base.reset on a Counter (Counter extends Base) passed as a call on an interface
    the list never mentioned, and `Counter.reset` could not even be written ("no
    method"). A mentioned interface stands for what it extends, transitively; the
    granted one too."""
    from supervisor import membrane, policy, preflight
    (tmp_path / "inh.capnp").write_text("""@0xd3a7e5c1b0a99e77;
interface Root @0xd3a7e5c1b0a99f71 { wipe @0 () -> (); }
interface Base @0xd3a7e5c1b0a99f72 extends(Root) { reset @0 () -> (); }
interface Counter @0xd3a7e5c1b0a99f73 extends(Base) { inc @0 (by :Int32) -> (value :Int32); }
interface Calc @0xd3a7e5c1b0a99f74 extends(Base) {
  add @0 (a :Int32, b :Int32) -> (sum :Int32);
  newCounter @1 () -> (counter :Counter);
}
""")
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    from tests.conftest import EXAMPLES
    root, base, counter, calc = (0xd3a7e5c1b0a99f71, 0xd3a7e5c1b0a99f72,
                                 0xd3a7e5c1b0a99f73, 0xd3a7e5c1b0a99f74)

    def membrane_of(allow):
        (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["inh.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "m.wat"
[compartments.app.grants]
calc = {{ compartment = "calc", allow = {allow!r} }}
""".replace("'", '"'))
        plan = preflight.prepare(policy.load(str(tmp_path / "system.toml")))
        (g,) = plan.system.compartments["app"].grants
        return membrane.Membrane.for_grant("app.calc", g, calc, 0.0)

    m = membrane_of(["newCounter", "Counter.inc"])
    assert m.allows(counter, 0) and m.allows(calc, 1)
    assert not m.allows(base, 0) and not m.allows(root, 0)     # reset, wipe: inherited
    assert not m.allows(calc, 0)
    m = membrane_of(["newCounter", "Counter.inc", "Counter.reset"])
    assert m.allows(base, 0) and not m.allows(root, 0)
    m = membrane_of(["add", "wipe"])                            # bare: the granted Calc's
    assert m.allows(calc, 0) and m.allows(root, 0) and not m.allows(base, 0)
    assert not m.allows(calc, 1)


def test_a_main_object_serves_the_methods_its_interface_inherits(tmp_path):
    """A Cap'n Proto client calls an inherited method with the id of the interface
    that declares it: a compartment exporting `Calc extends(Base)` was refused
    Base.reset on its main object ("does not implement interface"), whoever called.
    The plan says what each interface extends and the router's main objects take
    those ids too; an interface it does not extend is still refused."""
    from supervisor import policy, preflight, router as R
    from capnp_schemas import protocol as P
    from tests.unit.test_router import start
    (tmp_path / "inh.capnp").write_text("""@0xd3a7e5c1b0a99e78;
interface Root @0xd3a7e5c1b0a99f81 { wipe @0 () -> (); }
interface Base @0xd3a7e5c1b0a99f82 extends(Root) { reset @0 () -> (); }
interface Calc @0xd3a7e5c1b0a99f84 extends(Base) { add @0 (a :Int32, b :Int32) -> (sum :Int32); }
interface Other @0xd3a7e5c1b0a99f85 { poke @0 () -> (); }
""")
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    from tests.conftest import EXAMPLES
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["inh.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "m.wat"
[compartments.app.grants]
calc = {{ compartment = "calc" }}
""")
    plan = preflight.prepare(policy.load(str(tmp_path / "system.toml")))
    root, base, calc_id, other = (0xd3a7e5c1b0a99f81, 0xd3a7e5c1b0a99f82,
                                  0xd3a7e5c1b0a99f84, 0xd3a7e5c1b0a99f85)
    assert set(plan.extends[calc_id]) == {base, root}
    router = R.Router(plan.main_interface, names=plan.names, extends=plan.extends)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", plan.system.compartments["app"].grants)
    h = app.grants[0].import_id
    for iface in (calc_id, base, root):
        app.send(app.conn.send_call(h, iface, 0)[1])
        got = calc.inbox.pop()
        assert isinstance(got, P.CallReceived) and got.interface_id == iface
        calc.send(calc.conn.send_return(got.answer_id))
        assert app.inbox.pop().error is None
    app.send(app.conn.send_call(h, other, 0)[1])
    refused = app.inbox.pop()
    assert refused.error_type == "unimplemented" and "does not implement" in refused.error
    assert calc.inbox == []


def test_a_read_no_byte_of_which_fits_names_the_caller_whose_message_size_it_is(tmp_path):
    """A review of host capabilities: the E2BIG of a File.read no byte of which fits
    named the compartment whose grant the File came through ("raise its
    message_size"), but the limit is the caller's: a compartment handed the File
    by another was told to raise the other's message_size, which changes nothing."""
    from supervisor import hostfs
    (tmp_path / "f").write_bytes(b"x" * 100)
    f = hostfs.File.grant(str(tmp_path / "f"))
    hosts = hostcaps.HostCaps(lambda owner: 100.0)
    read = FILE.method("read")
    content = payloads.build(read.params, {"offset": 0, "count": 10})[0]
    try:
        for caller, named in (("b", "b"), ("a", "a"), ("", "a")):
            # a message_size no byte of which is left beside the answer's structure
            got = hosts.serve(fx.HostCall(1, "file", "a", f, FILE.id, read.ordinal, content,
                                          hostfs.RESULT_SLACK, caller))
            assert isinstance(got, hostcaps.Refusal) and got.reason.startswith("E2BIG: "), got
            assert f"message to {named} (raise its message_size)" in got.reason, got.reason
    finally:
        f.close()


@pytest.mark.parametrize("writer", ["z", "external"])
def test_a_log_handed_on_is_written_from_the_writers_budget_not_the_owners(writer):
    """app hands its Log to z (or to an external client), which writes as fast as it
    can: its lines were taken from app's log_rate bucket, which every log of app's
    (stdout, stderr, any log grant) shares, so app's own writes on any of them failed
    EAGAIN, a limit of one compartment reached by another.  The writer now has a
    bucket of its own for that log, at the lower of the two rates (a writer with a
    higher log_rate still cannot fill app's log faster than app itself may)."""
    rates = {"app": 10.0, "z": 1000.0}
    now = [0.0]
    hosts = hostcaps.HostCaps(lambda name: rates.get(name, 100.0), clock=lambda: now[0])
    write = LOG.method("write")

    def line(caller, text="x"):
        content = payloads.build(write.params, {"text": text})[0]
        return hosts.serve(fx.HostCall(1, "log", "app", None, LOG.id, write.ordinal,
                                       content, 1 << 20, caller))

    outcomes = [line(writer) for _ in range(50)]
    shown = [o for o in outcomes if isinstance(o, hostcaps.Answer)]
    assert len(shown) == 10                      # app's rate, not the writer's own
    assert all(l.compartment == "app" for o in shown for l in o.lines)  # app's log still
    refused = [o for o in outcomes if isinstance(o, hostcaps.Refusal)]
    assert refused and all(o.type == "overloaded" and f"{writer} writes to app's log" in
                           o.reason for o in refused)
    # app itself (caller app, or unnamed) still has its whole burst
    assert all(isinstance(line(c), hostcaps.Answer) for c in ("app", "") for _ in range(5))
    # and the operator is told whose lines were not shown
    assert hosts.log_refused(writer) == (f"40 log lines of {writer} (to app's log) not "
                                         f"shown: more than 10 a second (limit log_rate)")
    assert hosts.log_refused("app") is None


def test_what_a_compartment_writes_to_a_log_it_was_handed_spends_its_own_log_rate_too():
    """Every line is its writer's: z (log_rate 5) handed app's Log (log_rate 100)
    writes 5 lines at once, not 100 (its log_rate bounds what it writes, to its own
    logs or another's), and its own log then refuses it too, while app's is whole."""
    rates = {"app": 100.0, "z": 5.0}
    hosts = hostcaps.HostCaps(lambda name: rates.get(name, 100.0), clock=lambda: 0.0)
    write = LOG.method("write")

    def line(owner, caller):
        content = payloads.build(write.params, {"text": "x"})[0]
        return hosts.serve(fx.HostCall(1, "log", owner, None, LOG.id, write.ordinal,
                                       content, 1 << 20, caller))

    shown = [line("app", "z") for _ in range(20)]
    assert sum(isinstance(o, hostcaps.Answer) for o in shown) == 5
    assert "z writes to its logs faster than 5 lines/s (limit log_rate)" in shown[-1].reason
    assert isinstance(line("z", "z"), hostcaps.Refusal)
    assert all(isinstance(line("app", "app"), hostcaps.Answer) for _ in range(100))


def test_no_error_a_guest_gets_from_a_file_or_directory_grant_names_its_host_path(tmp_path):
    """An outside review: the reasons of failed file operations named the grant's
    host path ("EPERM: file /home/alice/journal.txt: /home/alice/journal.txt is
    append-only"), telling a plugin where on the host its grants lie (a user's
    name, the host's layout).  Every refusal and kernel error through any kind of
    grant now names it as the guest does: its grant's name."""
    root = tmp_path / "alice-secret-home"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "notes.txt").write_text("hello")
    (root / "journal.txt").write_text("")
    h = Harness([grant("ro", "directory", "host", path=str(root), read_only=True),
                 grant("ao", "directory", "host", path=str(root), append_only=True),
                 grant("sub", "directory", "host", path=str(root), subdir="sub",
                       max_bytes_written=2),
                 grant("journal", "file", "host", path=str(root / "journal.txt"),
                       append_only=True),
                 grant("notes", "file", "host", path=str(root / "sub" / "notes.txt"),
                       read_only=True)])
    ro, ao, sub, journal, notes = (h.grant(i) for i in range(5))
    errors = [
        h.call(ro, DIR, "open", path="sub/notes.txt", mode="readWrite").error,
        h.call(ro, DIR, "mkdir", path="new").error,
        h.call(ro, DIR, "open", path="nothing-here", mode="read").error,
        h.call(ao, DIR, "remove", path="journal.txt").error,
        h.call(ao, DIR, "stat", path="missing/deeper").error,
        h.call(sub, DIR, "open", path="../journal.txt", mode="read").error,
        h.call(sub, DIR, "remove", path="notes.txt/x").error,
        h.call(journal, FILE, "truncate", size=0).error,
        h.call(journal, FILE, "write", offset=0, data=b"x").error,
        h.call(journal, FILE, "read", offset=0, count=10).error,
        h.call(notes, FILE, "write", offset=0, data=b"x").error,
        h.call(notes, FILE, "truncate", size=0).error,
    ]
    f = h.call(sub, DIR, "open", path="notes.txt", mode="readWrite").payload.caps[0].import_id
    errors += [h.call(f, FILE, "write", offset=0, data=b"xyz").error,     # quota: 2 bytes
               h.call(f, FILE, "truncate", size=1 << 62).error]
    assert all(errors), "\n".join(map(repr, errors))      # each of them failed
    assert not [e for e in errors if str(tmp_path) in e or "alice" in e], errors
    assert "journal is append-only" in errors[7] and "ro is read-only" in errors[0]


@pytest.mark.parametrize("size", [1024, 1025, 1031, 1032, 2047])
def test_file_answers_at_the_least_message_size_carry_what_fits(tmp_path, size):
    """The host kept 1 KiB of every File.read, Directory.list and readlink answer
    for its structure (RESULT_HEADROOM), on top of what hostfs keeps itself
    (RESULT_SLACK, and each entry's cost): at message_size = "1KiB", the least
    the system file allows, every read failed E2BIG ("not one byte read fits")
    and so did every listing and readlink.  Each answers what fits now, and the
    answer stays within the caller's message_size, as the engine takes it."""
    from supervisor import hostfs
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 5000)
    for i in range(60):
        (tmp_path / "d" / f"entry-{i:03d}-{'n' * 20}").write_text("")
    (tmp_path / "d" / "link").symlink_to("t" * 900)
    (tmp_path / "d" / "long").symlink_to("./" * 1000 + "\u00e9" * 1000)
    d = hostfs.Directory.grant(str(tmp_path / "d"))
    f = hostfs.File.grant(str(tmp_path / "d" / "f"))
    hosts = hostcaps.HostCaps(lambda owner: 100.0)

    def answer(obj, kind, iface, method, values):
        m = iface.method(method)
        content = payloads.build(m.params, values)[0]
        got = hosts.serve(fx.HostCall(1, kind, "a", obj, iface.id, m.ordinal, content,
                                      size, "a"))
        if isinstance(got, hostcaps.Job):
            got = got.run()
        assert isinstance(got, hostcaps.Answer), got
        assert got.content.size() <= size, (method, got.content.size())
        got.content.single_segment_copy(size // 8)       # as the engine hands it over
        return payloads.read(m.results, got.content, 1 << 20)

    try:
        data = answer(f, "file", FILE, "read", {"offset": 0, "count": 5000})["data"]
        assert 0 < len(data) <= size - hostfs.RESULT_SLACK and set(data) == {ord("x")}
        listed = answer(d, "directory", DIR, "list", {"path": "."})
        assert listed["entries"], listed
        assert answer(d, "directory", DIR, "readlink", {"path": "link"})["target"] == "t" * 900
        # a target longer than any answer at this size, in parts that each fit
        got, whole = "", "./" * 1000 + "\u00e9" * 1000
        while len(got.encode()) < len(whole.encode()):
            part = answer(d, "directory", DIR, "readlink",
                          {"path": "long", "offset": len(got.encode()), "partial": True})
            assert part["target"] and part["length"] == len(whole.encode())
            got += part["target"]
        assert got == whole
    finally:
        f.close()
        d.close()


@pytest.mark.parametrize("target", ["directory", "file"])
def test_a_grant_beneath_another_users_directory_reaches_only_what_they_could_put_there(
        tmp_path, target):
    """Every (re)start opens a grant's path again, its last component O_NOFOLLOW and
    the directories above it as they are then.  As root, a grant of
    "THEIRS/shared/data" beneath another user's directory reached root's own
    "data" elsewhere once that user made `shared` a link to its parent.  What such
    a grant finds must be one of theirs (their own tree is granted as ever); a
    directory anyone may change on the way is refused outright."""
    import os

    from supervisor import hostfs, policy
    if os.geteuid() != 0:
        pytest.skip("needs root to make another user's directory and link")
    nobody = 65534
    theirs = tmp_path / "theirs"                 # another user's home
    theirs.mkdir(mode=0o755)
    mine = tmp_path / "mine"                     # root's, with its own "data"
    mine.mkdir(mode=0o700)
    own = theirs / "own"                         # their own tree, with their "data"
    own.mkdir()
    for d in (mine, own):
        if target == "directory":
            (d / "data").mkdir()
            (d / "data" / "secret").write_text(str(d))
        else:
            (d / "data").write_text(str(d))
    os.chown(own, nobody, nobody)
    os.chown(own / "data", nobody, nobody)
    os.chown(theirs, nobody, nobody)

    def opened(path):
        g = policy.Grant("g", "host", target, path=str(path))
        served = hostcaps.open_grant(g)
        try:
            return os.fstat(served.fd).st_uid
        finally:
            hostcaps.release(target, served)

    assert opened(own / "data") == nobody        # their own: granted as before
    os.symlink(mine, theirs / "shared")          # their link, to a directory of root's
    os.lchown(theirs / "shared", nobody, nobody)
    with pytest.raises(hostfs.FsError) as e:
        opened(theirs / "shared" / "data")
    assert f"lies beneath {theirs}, which uid {nobody} may change, and what is there " \
           f"now is not theirs (owner uid 0)" in str(e.value), e.value
    assert e.value.code == "EACCES"
    open_ = tmp_path / "open"                    # anyone may rename what is in it
    open_.mkdir()
    os.chmod(open_, 0o777)
    (open_ / "sub").mkdir()
    os.rename(own / "data", open_ / "sub" / "data")
    with pytest.raises(hostfs.FsError, match=r"which anyone may change \(mode 0777"):
        opened(open_ / "sub" / "data")
    assert opened(mine / "data") == 0            # root's own tree: as ever
