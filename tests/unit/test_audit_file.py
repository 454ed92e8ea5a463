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
            # the record whose write the disk still holds is not known written either
            # (the stop does not wait for it: test_a_write_a_disk_holds_...)
            held = 1 if cut == "waiting for the write under way" else 0
            assert audit.unwritten() == 1 + held and not errors
            gate.set()
            n.cancel_scope.cancel()
    trio.run(main)
    audit.close()


@pytest.mark.parametrize("kind", ["audit", "log files"])
def test_a_write_a_disk_holds_does_not_hold_the_stop(tmp_path, monkeypatch, kind):
    """A review of the stop while a disk is slow: the audit's (and the log files')
    last flush has a deadline, but the writer's own write, under way in its thread,
    was waited for when the stop cancelled it, and close() waited for it too: a
    disk that held the write (a hung network file system) held `wsuper stop` and
    SIGTERM as long as it held the write (for ever, for a dead server).  The write
    is abandoned at stop, close() leaves the file to it, and what it held is
    counted as not written."""
    import threading

    import trio

    from supervisor import output
    gate, writing, held_out = threading.Event(), threading.Event(), threading.Event()

    def hold():                      # the disk: holds the write until the gate opens
        writing.set()
        if not gate.wait(20):
            held_out.set()           # the stop waited for the write (the bug)
    told = []
    if kind == "audit":
        files = runtime._Audit(str(tmp_path / "audit.jsonl"), "run")
        files.open()
        real = files._write_now

        def slow(batch):
            hold()
            real(batch)
        files._write_now = slow

        def add(text):
            files.add({"time": 0.0, "event": text})

        def writer():
            return files.writer(told.append)

        def last():
            return files.flush(told.append)
    else:
        os.mkdir(tmp_path / "logs")
        files = output.LogFiles(str(tmp_path / "logs"), on_failed=told.append)
        real_append = output._append

        def slow_append(folder, file, chunk):
            hold()
            real_append(folder, file, chunk)
        monkeypatch.setattr(output, "_append", slow_append)

        def add(text):
            files.add("supervisor", text)
        writer, last = files.writer, files.flush_last

    async def stop():
        async with trio.open_nursery() as n:
            n.start_soon(writer)
            add("held by the disk")
            await trio.to_thread.run_sync(writing.wait, 20)
            add("run stopped")
            with trio.move_on_after(0.2):
                await last()
            n.cancel_scope.cancel()
    try:
        trio.run(stop)
        closing = threading.Thread(target=files.close, daemon=True)
        closing.start()
        closing.join(20)
        assert not closing.is_alive() and not held_out.is_set(), \
            "the stop waited for a write the disk held"
        assert files.unwritten() == 2         # the one held, and the one after it
        if kind == "log files":
            assert len(told) == 1 and "2 lines kept for them were not written" in told[0]
    finally:
        gate.set()


def test_a_record_cut_short_by_an_earlier_run_is_never_joined_to_the_next_one(tmp_path):
    """An outside review: an audit on a full file system (or a file size limit, or a
    machine that lost power) keeps its last record cut short; the system stops.  The
    next run appended its first record (`run started`) to that piece: one line that
    is no JSON, and that run's record was lost to every reader of the audit.  A file
    that does not end a line gets a newline first."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event":"call","n":1}\n{"time":"2026-12-05T09:00:42Z","calle')
    audit = runtime._Audit(str(path), "run")
    audit.open()
    audit._write([{"event": "run started", "time": 0.0}])
    audit.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"time":"2026-12-05T09:00:42Z","calle' and lines[-1] == b""
    assert json.loads(lines[2])["event"] == "run started"
    # a file that ends its last line, or is empty, is appended to as it is
    audit = runtime._Audit(str(path), "run")
    audit.open()
    audit._write([{"event": "run started", "time": 0.0}])
    audit.close()
    assert [json.loads(x)["event"] for x in path.read_bytes().split(b"\n")[2:-1]] == \
        ["run started", "run started"]


def test_an_audit_on_a_full_disk_keeps_whole_records_and_counts_those_not_written(tmp_path):
    """A review of the host running out (a real 64 KiB tmpfs): the audit's file
    system full, the write that failed left the part of its batch that fitted in
    the file, its last record cut short (a line that is no JSON, for every reader
    of the audit), and the records of that batch and every later one (the calls
    ended at the stop, `run stopped`) were dropped without a count: the error said
    only that calls *would* go unrecorded.  The file now holds whole records only
    (the write that failed is cut back), and what was not written is counted."""
    import subprocess

    import trio
    from tests.unit.test_output import _fill, _small_tmpfs
    mnt = _small_tmpfs(tmp_path)
    try:
        path = mnt / "audit.jsonl"
        audit = runtime._Audit(str(path), "run")
        audit.open()
        audit._write([{"event": "call", "n": n, "pad": "x" * 40, "time": 0.0}
                      for n in range(40)])               # ~3.7 KiB of its first page
        before = path.read_bytes()
        _fill(mnt / "filler")
        told = []

        async def main():
            for n in range(40, 80):
                audit.add({"event": "call", "n": n, "pad": "x" * 40, "time": 0.0})
            await audit.flush(told.append)
            audit.add({"event": "run stopped", "time": 0.0})
        try:
            trio.run(main)
        finally:
            audit.close()
        assert len(told) == 1 and "No space left on device" in told[0], told
        assert path.read_bytes() == before                # nothing of the failed write
        assert audit.unwritten() == 41                    # 40 calls and `run stopped`
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_an_audit_file_removed_or_moved_while_the_system_runs_is_made_again(tmp_path, how):
    """A review of the host running out (an operator freeing space, a logrotate
    without copytruncate): the audit file removed while the system ran kept being
    written through its descriptor, into a file no name reached: every later
    record of the run ('run stopped' among them) lost, exit 0, nothing said.  The
    writer notices its file is no longer at the path and makes a new one there
    (as at start: regular, locked, one name), saying so once; records written
    before a move stay in the moved file."""
    import trio
    path = tmp_path / "audit.jsonl"
    told = []
    audit = runtime._Audit(str(path), "run")
    audit.on_note = told.append
    audit.open()
    audit._write([{"event": "run started", "time": 0.0}])
    if how == "removed":
        os.remove(path)
    else:
        os.rename(path, tmp_path / "audit.jsonl.old")

    async def main():
        audit.add({"event": "call", "time": 0.0})
        await audit.flush(told.append)
        audit.add({"event": "run stopped", "time": 0.0})
        await audit.flush(told.append)
    try:
        trio.run(main)
    finally:
        audit.close()
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == \
        ["call", "run stopped"]
    if how == "moved":
        assert json.loads((tmp_path / "audit.jsonl.old").read_text())["event"] == \
            "run started"
    assert len(told) == 1 and f"the audit file {path} was" in told[0] and \
        "a new one is made there" in told[0], told


@pytest.mark.parametrize("rotated", [True, False])
@pytest.mark.parametrize("how", ["removed", "moved"])
def test_an_audit_whose_directory_is_removed_or_moved_while_the_system_runs_goes_on(
        tmp_path, how, rotated):
    """The audit's directory is opened once (its rotations rename in it): removed
    while the system ran (an `rm -rf` of the log directory, which `check` lets the
    audit lie in and which the system now makes again), the new audit file was
    opened in the removed directory, ENOENT, and the audit failed: the system
    stopped ("cannot write the audit log ... stopping"), 327 records lost in a run
    of `wsuper up`.  Moved away, every later record went into the moved directory.
    The directory is made again at its path as at start (ours, closed to others)
    and the audit goes on there."""
    import shutil

    import trio
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    path = folder / "audit.jsonl"
    told = []
    audit = runtime._Audit(str(path), "run", max_size=(1 << 20) if rotated else 0, keep=2)
    audit.on_note = told.append
    audit.open()
    audit._write([{"event": "run started", "time": 0.0}])
    if how == "removed":
        shutil.rmtree(folder)
    else:
        os.rename(folder, tmp_path / "moved")

    async def main():
        audit.add({"event": "call", "time": 0.0})
        await audit.flush(told.append)
        audit.add({"event": "run stopped", "time": 0.0})
        await audit.flush(told.append)
    try:
        trio.run(main)
    finally:
        audit.close()
    assert not audit.failed, audit.failed
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == \
        ["call", "run stopped"]
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
    if how == "moved":
        assert json.loads((tmp_path / "moved" / "audit.jsonl").read_text())["event"] == \
            "run started"


@pytest.mark.parametrize("max_size", [0, 1 << 20])
def test_an_audit_or_log_file_that_is_a_socket_is_named_a_socket_not_a_fifo(tmp_path,
                                                                             max_size):
    """A review of the operator's files: another system's external socket where a
    system's audit (or one of its log files) lies (`socket = "/d/calc.log"` beside
    `logs = "/d"`): opening it fails ENXIO, as a FIFO nobody reads does, and both
    were said to be "a FIFO (named pipe) no one reads"."""
    import socket

    from supervisor import output
    path = tmp_path / "calc.log"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(endpoint.EndpointError) as e:
            runtime._Audit(str(path), "run", max_size=max_size).open()
        assert ": a socket; the audit must be a regular file" in str(e.value) \
            and "FIFO" not in str(e.value), e.value
        files = output.LogFiles(str(tmp_path))
        with pytest.raises(OSError) as e:
            files._write({"calc": ["2026-12-03T10:00:00.000Z [calc] x"]})
        files.close()
        assert "is a socket" in str(e.value) and "FIFO" not in str(e.value), e.value
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(endpoint.EndpointError, match="a FIFO"):
        runtime._Audit(str(tmp_path / "fifo.log"), "run").open()


def test_peers_are_read_again_once_the_audit_backlog_is_below_its_mark_not_once_all_is_written(
        tmp_path):
    """A client flooding audited calls filled the backlog (AUDIT_BACKLOG records), and
    every peer's input paused until the writer had written all that waited, in one
    write: 0.16-0.57 s each time, measured with real engines, while the flooder's
    calls on the fast lane went on.  The writer now writes in slices, and the peers
    are read again (room) as soon as fewer than AUDIT_BACKLOG records wait."""
    import json

    import trio
    path = tmp_path / "audit.jsonl"
    audit = runtime._Audit(str(path), "run")
    audit.open()
    total = 2 * runtime.AUDIT_BACKLOG
    for n in range(total):
        audit.add({"event": "call", "n": n, "time": 0.0})
    assert not audit.room.is_set()
    written, at_room, errors = [0], [], []
    real = audit._write

    def counting(batch):
        real(batch)
        written[0] += len(batch)
    audit._write = counting

    async def main():
        async with trio.open_nursery() as nursery:
            async def watch():
                await audit.room.wait()
                at_room.append(written[0])
            nursery.start_soon(watch)
            await trio.sleep(0)
            await audit.flush(errors.append)
    trio.run(main)
    audit.close()
    assert not errors and audit.unwritten() == 0
    # before: only once all of them were written (20,000)
    assert at_room and at_room[0] <= total - runtime.AUDIT_BACKLOG + 2 * runtime.AUDIT_SLICE, \
        at_room
    assert [json.loads(x)["n"] for x in path.read_bytes().split(b"\n")[:-1]] == \
        list(range(total))
