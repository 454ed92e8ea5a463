import json
import os

import pytest

from supervisor import endpoint, runtime


def test_the_audit_is_not_opened_through_a_second_hard_link(tmp_path):
    """Made after check and before up opens it, a second name of the audit file is
    refused where the supervisor opens it too (and a single name is written)."""
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    os.link(path, tmp_path / "other")
    with pytest.raises(endpoint.EndpointError, match="has 2 hard links"):
        runtime._Audit(str(path), "run").open()
    os.unlink(tmp_path / "other")
    audit = runtime._Audit(str(path), "run")
    audit.open()
    audit._write([{"event": "x", "time": 0.0}])
    audit.close()
    assert '"event":"x"' in path.read_text()


def test_the_audit_is_rotated_at_its_size_and_the_oldest_file_goes(tmp_path):
    """Every call appends a record: without a bound, a busy (or hostile) compartment
    filled the disk, and then the run stopped.  At `audit_max_size` the file is
    rotated (AUDIT.1 .. AUDIT.keep): each file stays within the size, the records
    kept run on in order with none missing, and a link planted at a rotated name
    is replaced, not followed."""
    path = tmp_path / "audit.jsonl"
    outside = tmp_path / "outside"
    outside.write_text("not the audit's\n")
    os.symlink(outside, tmp_path / "audit.jsonl.1")
    audit = runtime._Audit(str(path), "run", max_size=1 << 20, keep=2)
    audit.open()
    n = 0
    for _ in range(40):                        # ~3.5 MiB in batches, as the writer makes them
        audit._write([{"event": "call", "n": n + i, "pad": "x" * 150, "time": 0.0}
                      for i in range(512)])
        n += 512
    audit.close()
    files = [tmp_path / f"audit.jsonl.{i}" for i in (2, 1)] + [path]
    assert not (tmp_path / "audit.jsonl.3").exists()
    assert outside.read_text() == "not the audit's\n"
    seen = []
    for f in files:
        assert not f.is_symlink() and f.stat().st_size <= 1 << 20, f
        seen += [json.loads(line)["n"] for line in f.read_text().splitlines()]
    assert seen == list(range(seen[0], n)) and seen[0] > 0     # in order, none missing
    assert sum(f.stat().st_size for f in files) > 2.5 * (1 << 20)  # three files' worth


def test_an_audit_without_a_size_bound_is_never_rotated(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = runtime._Audit(str(path), "run", max_size=0)
    audit.open()
    for _ in range(10):
        audit._write([{"event": "call", "pad": "x" * 1000, "time": 0.0}] * 200)
    audit.close()
    assert os.listdir(tmp_path) == ["audit.jsonl"] and path.stat().st_size > 2 << 20


@pytest.mark.parametrize("cut", ["waiting for the write under way", "a deadline already past"])
def test_records_a_last_flush_cut_short_leaves_are_counted_not_lost_without_a_word(tmp_path,
                                                                                   cut):
    """A review of the audit at stop: the last flush has a deadline; a disk that held
    the write under way past it (or a deadline already past) lost the
    records left, `run stopped` among them, and nobody was told.  They stay counted
    (unwritten()), which the stop says (runtime: "were not written")."""
    import threading

    import trio
    path = tmp_path / "audit.jsonl"
    audit = runtime._Audit(str(path), "run")
    audit.open()
    gate, writing = threading.Event(), threading.Event()
    real = audit._write

    def slow(batch):
        writing.set()
        gate.wait(10)
        real(batch)
    audit._write = slow
    errors = []

    async def main():
        async with trio.open_nursery() as n:
            if cut == "waiting for the write under way":
                n.start_soon(audit.writer, errors.append)
                audit.add({"time": 0.0, "event": "call"})
                await trio.to_thread.run_sync(writing.wait)
            audit.add({"time": 0.0, "event": "run stopped"})
            with trio.CancelScope() as scope:
                if cut == "a deadline already past":
                    scope.cancel()
                else:
                    scope.deadline = trio.current_time() + 0.2
                await audit.flush(errors.append)
            assert scope.cancelled_caught
            assert audit.unwritten() == 1 and not errors
            gate.set()
            n.cancel_scope.cancel()
    trio.run(main)
    audit.close()
