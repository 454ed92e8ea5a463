"""Revocation and instrumentation under failure, with real processes: `wsuper revoke`
racing file operations in the supervisor's worker threads (a real disk, fsync),
and `wsuper trace` across an engine killed, restarted, and a grant revoked."""
import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, audit_calls, run_wsuper

WASI = os.path.join(ROOT, "tests", "integration", "guests", "wasi")
REC = 256 << 10                 # revokewrite.c's record: one File.write


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    from supervisor import toolchain
    out = tmp_path_factory.mktemp("revokewrite")
    return toolchain.build([os.path.join(WASI, "revokewrite.c")], str(out / "rw.wasm"))


def _descriptors_to(pid: int, path) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == str(path)
        except OSError:
            pass
    return n


@pytest.mark.parametrize("records_first", [1, 10, 30])
def test_a_write_racing_a_revocation_lands_before_revoke_answers_or_never(
        tmp_path, wsuper, writer, records_first):
    """A program writes whole 16 KiB records, each O_DSYNC on a real disk, through a
    revocable directory grant `d`, and holds a second grant `k` on the same
    directory.  `wsuper revoke app.d` while it writes: once revoke has answered, not
    one byte more reaches the file (its size then is its size for good), the file
    holds whole records in order (a write either landed whole before the answer or
    never ran), the audit counts exactly those writes returned and fails the one in
    flight with a clear reason, the program is told ENOTCAPABLE, `d` can open
    nothing more, the supervisor holds nothing open on the file, and `k` still
    works."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "system.toml").write_text(f"""
[system]
audit = "{tmp_path}/audit.jsonl"
[compartments.app]
module = "{writer}"
restart = "never"
[compartments.app.grants]
stdout = {{ host = "log" }}
d = {{ host = "directory", path = "{data}", revocable = true }}
k = {{ host = "directory", path = "{data}" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("[app] writing")
    out = data / "out.bin"
    end = time.monotonic() + 30
    while time.monotonic() < end and out.stat().st_size < records_first * REC:
        time.sleep(0.005)
    r = run_wsuper("revoke", str(tmp_path / "system.toml"), "app.d")
    size = out.stat().st_size              # what is there as revoke has answered
    assert r.returncode == 0 and r.stdout.strip() == "wsuper: ok: revoked app.d", \
        r.stdout + r.stderr
    assert _descriptors_to(run.proc.pid, out) == 0
    assert run.finish() == 0
    lines = [l[6:] for l in run.lines if l.startswith("[app] ")]
    assert out.stat().st_size == size, "bytes were written after revoke answered"
    assert size % REC == 0 and size >= records_first * REC
    content = out.read_bytes()
    for i in range(size // REC):
        rec = content[i * REC:(i + 1) * REC]
        assert rec[:9] == b"%08d " % i and rec[-1:] == b"\n" and rec[9:-1] == b"x" * (REC - 10)
    n = size // REC
    # the write after the last that landed failed, as a refusal by attenuation
    assert lines[1] == f"write {n}: ENOTCAPABLE", lines
    assert lines[2:] == ["open again: ENOTCAPABLE", "other: ok"], lines
    assert (data / "other.txt").read_text() == "other\n"
    assert not (data / "again.txt").exists()
    records = audit_calls(tmp_path / "audit.jsonl")
    through = [x for x in records if x["capability"].startswith("app.d")]
    writes = [x for x in through if x["method"] == "write"]
    assert [x["outcome"] for x in writes if x["outcome"] == "returned"] == ["returned"] * n
    # the audit's revocation comes after every call that returned through the grant,
    # and every call through it after it failed, saying so
    every = [json.loads(l) for l in open(tmp_path / "audit.jsonl")]
    at = next(i for i, x in enumerate(every) if x.get("event") == "grant revoked")
    after = [x for x in every[at:] if x.get("capability", "").startswith("app.d")]
    assert after and all(x["outcome"] in ("denied", "failed")
                         and x["reason"].startswith("app.d") and " was revoked" in x["reason"]
                         for x in after), after
    assert sum(x["method"] == "write" and x["outcome"] == "returned"
               for x in every[:at] if x.get("capability", "").startswith("app.d")) == n
