"""Host files with real engines: an append-only journal, and an escape attempt."""

from capnp_schemas.hosted import BY_KIND

DIRECTORY_ID, FILE_ID = BY_KIND["directory"].id, BY_KIND["file"].id
from tests.conftest import audit_calls, run_wsuper
from tests.integration.guests import program

APPEND = f"""
    (i32.store (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (i32.const 3))
    (i64.store (i32.const 1032) (i64.const 0x0001000000000000))
    (i64.store (i32.const 1040) (i64.or (i64.const 0x0000000200000001)
                                        (i64.shl (i64.const 6) (i64.const 35))))
    (i64.store (i32.const 1048) (i64.const 0))
    (memory.copy (i32.const 1048) (i32.const 220) (i32.const 6))
    (local.set $r (call $call (local.get $h) (i64.const {FILE_ID}) (i32.const 2)
                        (i32.const 1024) (i32.const 32) (i32.const 0) (i32.const 0) (i32.const 1000)))
    (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
    (call $log_int (i32.const 300) (i32.const 11) (i32.wrap_i64 (i64.load (i32.const 2064))))
"""


def test_an_append_only_journal_grows_and_cannot_be_truncated(tmp_path):
    journal = tmp_path / "journal.txt"
    journal.write_text("")
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 7)))
    {APPEND}
    {APPEND}
    ;; File.truncate(0): one data word holding the size
    (i32.store (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (i32.const 2))
    (i64.store (i32.const 1032) (i64.const 0x0000000100000000))
    (i64.store (i32.const 1040) (i64.const 0))
    (local.set $r (call $call (local.get $h) (i64.const {FILE_ID}) (i32.const 3)
                        (i32.const 1024) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 1000)))
    (drop (call $reply_read (i32.const 2048) (i32.const 3000)))   ;; before logging calls again
    (call $log_int (i32.const 320) (i32.const 8) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"journal": 200, "entry\\n": 220, "appended at": 300, "truncate": 320}))
    (tmp_path / "system.toml").write_text(f"""
[system]
audit = "audit.jsonl"
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
journal = {{ host = "file", path = "{journal}", append_only = true }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [l[6:] for l in r.stdout.splitlines() if l.startswith("[app] ")]
    assert logs[:2] == ["appended at 0", "appended at 6"]   # the answer's offset field
    assert logs[2] == "truncate -2"
    # the reason starts with the errno a WASI program gets (EPERM), then says why
    # and names the file as the guest knows it (its grant's name), never the host path
    assert logs[3] == "EPERM: file journal: journal is append-only: cannot truncate"
    assert journal.read_text() == "entry\nentry\n"
    records = audit_calls(tmp_path / "audit.jsonl")
    files = [(x["interface"], x["method"], x["outcome"]) for x in records
             if x["capability"] == "app.journal"]
    assert files == [("File", "append", "returned")] * 2 + [("File", "truncate", "failed")]


def test_a_guest_cannot_leave_its_directory(tmp_path):
    granted = tmp_path / "granted"
    granted.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    path = b"../secret.txt"
    n = len(path)
    words = 3 + (n + 1 + 7) // 8
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (memory.fill (i32.const 1024) (i32.const 0) (i32.const 256))
    (i32.store (i32.const 1028) (i32.const {words}))
    (i64.store (i32.const 1032) (i64.const 0x0001000100000000))
    (i64.store (i32.const 1048) (i64.const {1 | (2 << 32) | ((n + 1) << 35)}))
    (memory.copy (i32.const 1056) (i32.const 220) (i32.const {n}))
    (local.set $r (call $call (local.get $h) (i64.const {DIRECTORY_ID}) (i32.const 0)
                        (i32.const 1024) (i32.const {8 + 8 * words}) (i32.const 0) (i32.const 0)
                        (i32.const 1000)))
    (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
    (call $log_int (i32.const 300) (i32.const 4) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"data": 200, path.decode(): 220, "open": 300}))
    (tmp_path / "system.toml").write_text(f"""
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
data = {{ host = "directory", path = "{granted}" }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [l[6:] for l in r.stdout.splitlines() if l.startswith("[app] ")]
    assert logs == ["open -2", "ENOTCAPABLE: directory data: '../secret.txt' contains '..' "
                               "that leads outside the granted directory"]


def test_two_compartments_appending_to_one_file_lose_no_record(tmp_path):
    """An outside review: File.append found the end and then wrote there, so two
    compartments granted one file (both their journals, or both their stdout)
    appending at once wrote over each other's records.  Each record is there."""
    journal = tmp_path / "journal.txt"
    journal.write_text("")
    rounds = 1500
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 7)))
    (loop $again
      {APPEND}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {rounds}))))
    """, {"journal": 200, "entry\\n": 220, "appended at": 300}).replace(
        "(call $log_int (i32.const 300) (i32.const 11) (i32.wrap_i64 (i64.load (i32.const 2064))))",
        ""))
    grants = f"""
log = {{ host = "log" }}
journal = {{ host = "file", path = "{journal}" }}
"""
    (tmp_path / "system.toml").write_text(f"""
[compartments.a]
module = "app.wat"
[compartments.a.grants]
{grants}
[compartments.b]
module = "app.wat"
[compartments.b.grants]
{grants}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    data = journal.read_bytes()
    assert data == b"entry\n" * (2 * rounds), f"{len(data)} bytes, not {12 * rounds}"
