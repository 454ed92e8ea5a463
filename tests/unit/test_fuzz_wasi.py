"""A short run of the WASI fuzzer (fuzz/wasi.py: hostile WASI calls under wsuper and
under wasmtime's own WASI, compared), and proof that its checks fail when what
they check breaks (long runs: python -m fuzz.wasi, docs/security.md "Fuzzing")."""
import struct

from fuzz import wasi as FW

SEEDS = list(range(20261206, 20261214))       # one system of 8 compartments
CALLS = 40


def test_hostile_wasi_calls_answer_as_under_wasmtime_but_where_documented():
    stats = {}
    findings, notes, made = FW.run(SEEDS, CALLS, per=len(SEEDS), stats=stats)
    assert findings == [], "\n".join(findings)
    assert made >= len(SEEDS) * CALLS // 2          # the programs ran, most to their end
    assert stats["compared"] >= made // 2 and stats["trees"] >= 1, stats
    assert notes                                    # and met documented differences


def test_the_same_seed_is_the_same_program():
    assert FW.module(FW.sequence(7, CALLS)) == FW.module(FW.sequence(7, CALLS))
    names = {c.name for s in range(40) for c in FW.sequence(s, CALLS)}
    assert names == set(FW.FUNCS)                   # every function is called


def _record(i, errno, window=b""):
    return (i, errno, window.ljust(FW.WINDOW, b"\xaa"))


def _calls():
    tell = FW.Call("fd_tell", [3, FW.OUT], outs=[("offset", "u64", FW.OUT)])
    unlink = FW.Call("path_unlink_file", [3, FW.IN, 5], b"a.txt")
    unlink.paths = [b"a.txt"]
    return [tell, unlink]


def _compare(ours, theirs, trees=([], [])):
    return FW.compare(1, _calls(), ours, theirs, trees)


def test_an_errno_that_differs_undocumented_is_a_finding():
    same = [_record(0, FW.E["EBADF"]), _record(1, 0)]
    ok = (same, None, ["wsuper: finished app1 exit=0"])
    assert _compare(ok, (same, None)) == ([], [])
    other = [_record(0, FW.E["EBADF"]), _record(1, FW.E["EACCES"])]
    findings, _ = _compare(ok, (other, None))
    assert findings and "path_unlink_file" in findings[0] and "EACCES" in findings[0]


def test_a_documented_difference_is_noted_not_found():
    ours = [_record(0, FW.E["EBADF"]), _record(1, FW.E["ENOTDIR"])]
    theirs = [_record(0, FW.E["EBADF"]), _record(1, FW.E["EBADF"])]
    findings, notes = _compare((ours, None, ["finished app1 exit=0"]), (theirs, None))
    assert findings == [] and "not one, ENOTDIR" in notes[0]


def test_out_values_and_trees_that_differ_are_findings():
    a = [_record(0, 0, struct.pack("<Q", 5)), _record(1, 0)]
    b = [_record(0, 0, struct.pack("<Q", 6)), _record(1, 0)]
    findings, _ = _compare((a, None, ["finished app1 exit=0"]), (b, None))
    assert findings and "out-values differ" in findings[0]
    findings, _ = _compare((a, None, ["finished app1 exit=0"]), (a, None),
                           ([("a.txt", "file", "1:b'x'")], []))
    assert findings and "trees differ" in findings[0]


def test_a_trap_that_does_not_name_its_function_or_no_end_is_a_finding():
    recs = [_record(0, 0)]
    theirs = (recs, "error while executing")
    findings, _ = _compare((recs, "guest passed out-of-range memory [1, 1+4)", []), theirs)
    assert any("does not name the function" in f for f in findings)
    named = "wasi_snapshot_preview1.path_unlink_file: guest passed out-of-range memory"
    findings, _ = _compare((recs, named, []), theirs)
    assert not any("does not name" in f for f in findings)
    findings, _ = _compare((recs, None, ["compartment app1 stopped: engine exited"]),
                           (recs + [_record(1, 0)], None))
    assert any("neither finished nor trapped" in f for f in findings)
