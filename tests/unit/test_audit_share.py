"""Each caller's share of the audit file (auditshare.py, pure) and the audit writer
that uses it (runtime._Audit, real files): one caller's flood cannot push the
records of others out of the rotation window, and nothing goes without a count."""
import json

from supervisor import auditshare, runtime


def sized(n):
    """An encoder whose every record is `n` bytes (and that counts its calls)."""
    def encode(record):
        encode.calls += 1
        return b"x" * n
    encode.calls = 0
    return encode


def kept(shares, record, n, now=0.0):
    return shares.admit(record, now, sized(n)) is not None


def call(caller, outcome="returned", method="add", capability="calc (main object)", t=0.0):
    r = {"time": t, "caller": caller, "capability": capability, "interface": "Calc",
         "method": method, "outcome": outcome, "duration_ms": 0.1}
    if outcome != "returned":
        r["reason"] = "no"
    return r


def test_a_caller_past_its_share_is_counted_and_others_keep_theirs():
    s = auditshare.AuditShares(max_size=10_000, share=0.1, interval=5.0)   # 1,000 bytes
    encode = sized(100)
    got = [s.admit(call("flood", t=i), float(i), encode) is not None for i in range(50)]
    assert got == [True] * 10 + [False] * 40
    assert encode.calls == 11        # past its share, its records are not even encoded
    # another caller, a denial of the flooder's, and events are kept in full
    assert kept(s, call("app"), 100, now=50.0)
    assert kept(s, call("flood", "denied"), 100, now=50.0)
    assert kept(s, {"time": 1.0, "event": "grant revoked", "grant": "app.calc"}, 5000, 50.0)
    assert kept(s, {"time": 1.0, "event": "run stopped"}, 5000, 50.0)
    assert s.summaries(now=4.0) == []                        # due 5 s after the first count
    [summary] = s.summaries(now=15.0)
    assert {k: summary[k] for k in ("event", "caller", "capability", "interface", "method",
                                    "returned", "failed", "denied", "first", "last")} == {
        "event": "calls summarized", "caller": "flood", "capability": "calc (main object)",
        "interface": "Calc", "method": "add", "returned": 40, "failed": 0, "denied": 0,
        "first": 10.0, "last": 49.0}
    assert "share" in summary["reason"] and s.due is None and s.summaries(99.0, all=True) == []


def test_calls_that_did_not_return_have_a_share_of_their_own_and_are_summarized_too():
    """A flood of denied (or failed) calls is a flood as well; and a flood of plain
    calls does not spend the room of the caller's first denials."""
    s = auditshare.AuditShares(max_size=1000, share=0.5)
    assert [kept(s, call("x"), 200) for _ in range(3)] == [True, True, False]
    assert [kept(s, call("x", o), 200) for o in ("denied", "failed", "denied",
                                                 "failed")] == [True, True, False, False]
    got = {(r["caller"], r["method"]): (r["returned"], r["failed"], r["denied"])
           for r in s.summaries(0.0, all=True)}
    assert got == {("x", "add"): (1, 1, 1)}


def test_a_new_file_gives_every_caller_its_share_again_and_no_share_means_none():
    s = auditshare.AuditShares(max_size=1000, share=0.1)
    assert kept(s, call("x"), 100) and not kept(s, call("x"), 100)
    assert not kept(s, call("x"), 1)         # past its share: so for the rest of the file
    s.rotated()
    assert kept(s, call("x"), 100)
    for whole in (auditshare.AuditShares(1000, 1), auditshare.AuditShares(0, 0.1)):
        assert all(kept(whole, call("x"), 900) for _ in range(100))
        assert whole.limit is None and whole.summaries(0.0, all=True) == []


def test_a_caller_with_many_kinds_of_call_gets_a_bounded_number_of_summaries():
    """One summary per capability and method: a caller with a new object per call
    would have made as many summaries as calls.  Past SUMMARY_KINDS, one more counts
    the rest."""
    s = auditshare.AuditShares(max_size=1000, share=0.01)
    for i in range(1000):
        kept(s, call("x", capability=f"calc object #{i}"), 100, float(i))
    out = s.summaries(0.0, all=True)
    assert len(out) == auditshare.SUMMARY_KINDS + 1
    assert out[-1]["capability"] == out[-1]["method"] == "*"
    assert sum(r["returned"] for r in out) == 1000


def _records(tmp_path, keep):
    files = [tmp_path / f"audit.jsonl.{i}" for i in range(keep, 0, -1)] + \
        [tmp_path / "audit.jsonl"]
    return [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]


def test_a_flooding_caller_cannot_rotate_others_records_out_of_the_window(tmp_path):
    """The writer with real files: a caller writing ~4 windows' worth of records after
    another's few calls and a denial.  Those stay on disk; the flood is summarized
    (counts that add up to every call), and the files keep their bound."""
    audit = runtime._Audit(str(tmp_path / "audit.jsonl"), "run", max_size=1 << 20, keep=1,
                           share=0.125)
    audit.open()
    audit._write([{"time": 0.0, "event": "run started"}, call("app", t=1.0),
                  call("app", "denied", t=1.0), call("app", "failed", t=1.0)])
    n = 0
    for _ in range(45):                       # 45 x 512 records of ~190 bytes: ~4.3 MiB
        audit._write([call("flood", t=2.0 + i) for i in range(512)])
        n += 512
    audit._write([{"time": 3.0, "event": "run stopped"}])
    audit.close()
    for f in (tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"):
        assert not f.exists() or f.stat().st_size <= 1 << 20
    assert not (tmp_path / "audit.jsonl.2").exists()
    records = _records(tmp_path, 1)
    assert [(r["caller"], r["outcome"]) for r in records if r.get("caller") == "app"] == [
        ("app", "returned"), ("app", "denied"), ("app", "failed")]
    assert records[0]["event"] == "run started" and records[-1]["event"] == "run stopped"
    full = [r for r in records if r.get("caller") == "flood" and "outcome" in r]
    summed = [r for r in records if r.get("event") == "calls summarized"]
    assert 0 < len(full) and sum(r["returned"] for r in summed) + len(full) == n
    assert records[-2]["event"] == "calls summarized"          # all of them before the end
    assert summed[0]["first"].endswith("Z") and summed[0]["caller"] == "flood"


def test_summaries_are_written_when_due_without_a_record_after_them(tmp_path):
    (tmp_path / "audit.jsonl.1").write_text("")     # the window is full (keep = 1)
    audit = runtime._Audit(str(tmp_path / "audit.jsonl"), "run", max_size=1 << 20, share=0.01)
    audit.shares.interval = 0.0
    audit.open()
    audit._write([call("flood") for _ in range(200)])
    assert audit._summaries_due()
    audit._write([])                          # what flush() writes when only summaries wait
    audit.close()
    records = _records(tmp_path, 0)
    [summary] = [r for r in records if r.get("event") == "calls summarized"]
    assert summary["returned"] + len(records) - 1 == 200


def test_calls_counted_into_summaries_not_written_yet_are_counted_as_unwritten(tmp_path):
    """A stop whose last write is cut short (a disk that does not keep up) says how
    many records it did not write: the calls waiting in summaries are among them,
    not gone without a word."""
    (tmp_path / "audit.jsonl.1").write_text("")     # the window is full (keep = 1)
    audit = runtime._Audit(str(tmp_path / "audit.jsonl"), "run", max_size=1 << 20, share=0.01)
    audit.open()
    audit._write([call("flood") for _ in range(200)])
    written = len((tmp_path / "audit.jsonl").read_text().splitlines())
    assert audit.unwritten() == 200 - written > 0
    audit._write([{"time": 0.0, "event": "run stopped"}])
    audit.close()
    assert audit.unwritten() == 0


def test_a_busy_caller_is_recorded_call_by_call_until_a_rotation_would_delete_a_file(
        tmp_path):
    """Shares only matter once the window is full: until the next rotation deletes a
    file, no record can push another out.  A system whose one busy caller made most
    calls had them summarized past an eighth of its first file, which then never
    filled (summaries only): every later call counted, none recorded one by one,
    with the rest of the window unused.  Now it is recorded call by call until the
    window is full (audit_keep rotated files), and summarized past its share only
    then."""
    audit = runtime._Audit(str(tmp_path / "audit.jsonl"), "run", max_size=1 << 16, keep=2,
                           share=0.125)
    audit.open()
    n = 0
    for _ in range(100):                      # ~190 KiB: two rotations, the window full
        audit._write([call("app", t=float(n + i)) for i in range(50)])
        n += 50
        if (tmp_path / "audit.jsonl.2").exists():
            break
    assert (tmp_path / "audit.jsonl.2").exists()    # (summarized, the first file never filled)
    whole = [r for r in _records(tmp_path, 2) if r.get("caller") == "app" and "outcome" in r]
    assert len(whole) == n                    # every call until then, one by one
    assert not [r for r in _records(tmp_path, 2) if r.get("event") == "calls summarized"]
    for _ in range(40):                       # now past its share of the new file
        audit._write([call("app", t=float(n + i)) for i in range(50)])
        n += 50
    audit._write([{"time": 0.0, "event": "run stopped"}])
    audit.close()
    records = _records(tmp_path, 2)
    summed = sum(r["returned"] for r in records if r.get("event") == "calls summarized")
    whole = [r for r in records if r.get("caller") == "app" and "outcome" in r]
    assert summed > 0 and summed + len(whole) == n      # every call: a record or counted
    assert not (tmp_path / "audit.jsonl.3").exists()
