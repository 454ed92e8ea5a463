"""What the operator sees of a compartment: its engine's stderr, held to log_rate."""
import os
import stat

import pytest

from supervisor import output
from supervisor.output import STDERR_LINE_LIMIT, StderrLines, strip_time


def test_stderr_lines_past_the_rate_are_counted_not_shown_and_the_reader_told_to_wait():
    lines = StderrLines(rate=3, now=0.0)
    got = lines.feed(b"".join(b"line %d\n" % i for i in range(10)), now=0.0)
    assert [t for t, shown in got if shown] == ["line 0", "line 1", "line 2"]
    assert len(got) == 10 and lines.over and 0 < lines.wait() <= 1.0
    later = lines.feed(b"next\n", now=1.0)                  # the rate allows more again
    assert later == [("(7 lines not shown: more than 3 a second, limit log_rate)", True),
                     ("next", True)]
    assert not lines.over


def test_stderr_lines_come_whole_and_over_long_ones_in_pieces():
    lines = StderrLines(rate=1000, now=0.0)
    assert lines.feed(b"half a ", 0.0) == []
    assert lines.feed(b"line\nx" + b"y" * STDERR_LINE_LIMIT, 0.0) == [
        ("half a line", True), ("x" + "y" * (STDERR_LINE_LIMIT - 1), True)]
    assert lines.feed(b"\xff\n", 0.0) == [("y\ufffd", True)]


def test_timestamps_are_stripped_only_where_output_puts_them():
    assert strip_time("2026-12-03T10:00:00.101Z wsuper: ready") == "wsuper: ready"
    assert strip_time("[app] 2026-12-03T10:00:00.101Z ") == "[app] 2026-12-03T10:00:00.101Z "


def test_log_files_rotate_between_lines_and_keep_every_line_that_fits(tmp_path, monkeypatch):
    """A batch larger than a file is split at line boundaries: no file starts in
    the middle of a line (where a plugin could have put text that looks like a
    supervisor event), and no line within the kept files is lost."""
    from supervisor import output
    monkeypatch.setattr(output, "LOG_FILE_SIZE", 1000)
    files = output.LogFiles(str(tmp_path))
    lines = [f"2026-12-03T10:00:00.000Z [ev] line {i:03d} " + "x" * 270 for i in range(12)]
    files._write({"ev": lines})
    kept = []
    for name in ("ev.log.3", "ev.log.2", "ev.log.1", "ev.log"):
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 1000 and text.endswith("\n")
        kept += text.splitlines()
    assert kept == lines                                 # 4 files of 3 lines: all of them
    files._write({"ev": lines[:1]})                      # one more: the oldest file goes
    kept = [l for n in ("ev.log.3", "ev.log.2", "ev.log.1", "ev.log")
            for l in (tmp_path / n).read_text().splitlines()]
    assert kept == lines[3:] + lines[:1]
    files.close()                                        # closed: nothing more is written,
    files._write({"other": lines[:1]})                   # least of all beside the process
    assert not (tmp_path / "other.log").exists() and not os.path.exists("other.log")


def test_a_terminal_that_is_not_utf8_gets_escapes_and_stays_open(tmp_path):
    import io

    from supervisor.output import Output
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    closed = []
    out = Output(stream, stream, on_closed=lambda: closed.append(True))
    out.plugin("app", "café € done")
    out.event("after it")
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert "[app] caf\\xe9 \\u20ac done" in text and "wsuper: after it" in text
    assert not closed and not out.closed


def test_times_are_those_datetime_would_write_to_the_millisecond():
    import datetime
    import random

    from supervisor.output import rfc3339

    def expected(t):
        when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rng = random.Random(7)
    edges = [0.0, 0.9999996, 1.0, 1733230000.9995, 1733230000.9999996, 1356270672.6779997]
    for t in edges + [rng.uniform(0, 4e9) for _ in range(20000)]:
        assert rfc3339(t) == expected(t), t
    assert rfc3339().endswith("Z") and len(rfc3339()) == len("2026-12-03T13:40:54.637Z")


def test_the_last_flush_waits_for_a_batch_still_being_written(tmp_path, monkeypatch):
    """At shutdown the supervisor flushes and closes the log files; a batch the
    writer task had taken and was still writing must reach the file (before,
    close() came first and the batch, the 'stopping' line among it, was lost)."""
    import threading

    import trio

    from supervisor import output
    files = output.LogFiles(str(tmp_path))
    write, started = files._write, threading.Event()

    def slow_write(batch):                  # the writer's batch: slow to write
        if not started.is_set():
            started.set()
            threading.Event().wait(0.3)
        write(batch)
    monkeypatch.setattr(files, "_write", slow_write)

    async def main():
        async with trio.open_nursery() as nursery:
            files.add("supervisor", "2026-12-03T10:00:00.000Z wsuper: stopping (wsuper stop)")
            nursery.start_soon(files.flush)          # the writer task's flush
            await trio.to_thread.run_sync(started.wait)
            files.add("supervisor", "2026-12-03T10:00:01.000Z wsuper: stopped")
            await files.flush()                     # the runtime's last flush, then close
            files.close()
    trio.run(main)
    assert (tmp_path / "supervisor.log").read_text().splitlines() == [
        "2026-12-03T10:00:00.000Z wsuper: stopping (wsuper stop)",
        "2026-12-03T10:00:01.000Z wsuper: stopped"]


def test_a_log_file_with_a_second_hard_link_is_not_written(tmp_path):
    """A second name of a log file (made on the host inside a grant) would let a
    compartment read another's log lines: such a file is not written to, and the
    log files say why; a file with one name takes its lines."""
    from supervisor.output import LogFiles
    (tmp_path / "app.log").write_bytes(b"")
    os.link(tmp_path / "app.log", tmp_path / "elsewhere")
    files = LogFiles(str(tmp_path))
    with pytest.raises(OSError, match="app.log has 2 hard links"):
        files._write({"app": ["secret"]})
    files._write({"other": ["fine"]})
    files.close()
    assert (tmp_path / "app.log").read_bytes() == b""
    assert (tmp_path / "other.log").read_text() == "fine\n"


def test_supervisor_events_are_cut_at_4096_characters_saying_how_many_more(tmp_path):
    """An event can carry text a guest chose (a trap in a function whose name is
    300,000 characters made a line of 300,123 on the terminal and in the log
    files); like a plugin's log line, each is cut, and what was cut is counted."""
    import io
    import json

    from supervisor.output import EVENT_LINE_LIMIT, Output
    for fmt in ("text", "json"):
        err = io.StringIO()
        out = Output(io.StringIO(), err, fmt=fmt, log_dir=str(tmp_path / fmt))
        out.event("failed t: wasm trap (in " + "A" * 300_000 + ")", "t")
        out.event("short")
        lines = err.getvalue().splitlines()
        event = json.loads(lines[0])["event"] if fmt == "json" else lines[0]
        assert event.endswith(f"AAAA... ({300_025 - EVENT_LINE_LIMIT} more characters)")
        assert len(event) < EVENT_LINE_LIMIT + 100 and "short" in lines[1]
        logged = out.files.pending                  # what the log files' writer gets
        assert len(logged["supervisor"]) == 2 and len(logged["t"]) == 1
        assert all(len(line) < EVENT_LINE_LIMIT + 100 for line in logged["supervisor"])


def test_lines_waiting_for_a_disk_that_does_not_keep_up_are_bounded_and_counted(tmp_path,
                                                                               monkeypatch):
    """The log files' writer is one thread: while it waits on a disk that does not
    keep up (a hung network file system), every line plugins wrote was kept in
    memory, without bound.  Past LOG_BACKLOG_BYTES plugin lines are counted, not
    kept (events have twice the room), and each file says how many it lost."""
    import io

    import trio

    from supervisor import output
    monkeypatch.setattr(output, "LOG_BACKLOG_BYTES", 2000)
    out = output.Output(io.StringIO(), io.StringIO(), log_dir=str(tmp_path))
    files = out.files

    async def main():
        for i in range(100):                        # the writer is stuck: nothing is written
            out.plugin("app", f"line {i:03d} " + "x" * 90)
            out.plugin("other", f"line {i:03d} " + "y" * 90, "stderr")
        assert files.pending_size <= 2000
        for i in range(6):
            out.event(f"event {i} " + "e" * 90, "app")     # events still have room ...
        assert 2000 < files.pending_size <= 4000
        await files.flush()                                # ... and the disk catches up
    trio.run(main)
    app = [strip_time(l) for l in (tmp_path / "app.log").read_text().splitlines()]
    other = [strip_time(l) for l in (tmp_path / "other.log").read_text().splitlines()]
    sup = [strip_time(l) for l in (tmp_path / "supervisor.log").read_text().splitlines()]
    kept_app = [l for l in app if l.startswith("[app] line")]
    kept_other = [l for l in other if l.startswith("[other] stderr: line")]
    assert 0 < len(kept_app) < 100 and 0 < len(kept_other) < 100
    assert kept_app == [f"[app] line {i:03d} " + "x" * 90 for i in range(len(kept_app))]
    assert len([l for l in app if l.startswith("wsuper: event")]) == 6
    assert app[-1] == f"wsuper: {100 - len(kept_app)} lines were not written to the log " \
                      f"files (the disk did not keep up)"
    assert other[-1] == f"wsuper: {100 - len(kept_other)} lines were not written to the " \
                        f"log files (the disk did not keep up)"
    assert f"wsuper: {100 - len(kept_other)} lines were not written to the log files (the " \
           f"disk did not keep up: {100 - len(kept_other)} of other's)" in sup
    assert len([l for l in sup if l.startswith("wsuper: event")]) == 6


def test_a_terminal_that_does_not_read_holds_a_bounded_number_of_characters(monkeypatch):
    """The lines waiting for a terminal nobody reads (Ctrl-S, a stopped pager) were
    bounded in number only: 10,000 plugin lines of 4096 characters a plugin chose to
    be escaped ten times over (\\U000e0001 each) were ~400 MB of the supervisor's
    memory.  Characters are bounded too; the lines past it are counted and said once
    the terminal catches up (at the latest when the system stops: the count used to
    wait for a later line, which the end of a run never brought)."""
    import io
    import threading

    import trio

    from supervisor import output
    monkeypatch.setattr(output, "TERMINAL_BACKLOG_CHARS", 100_000)
    stuck, go = threading.Event(), threading.Event()

    class Stopped(io.StringIO):          # a terminal that blocks its writer until `go`
        def write(self, text):
            stuck.set()
            go.wait()
            return super().write(text)
    out_stream, err_stream = Stopped(), io.StringIO()
    out = output.Output(out_stream, err_stream)

    async def main():
        out.start()
        out.plugin("app", "first")
        await trio.to_thread.run_sync(stuck.wait)        # the terminal thread is stuck
        for _ in range(200):
            out.plugin("app", "\U000e0001" * 4096)       # 40,966 characters shown each
        assert out._queued <= 100_000 + len("[app] first")
        assert out.dropped >= 190
        out.event("still said")                           # events have twice the room
        go.set()
        await trio.to_thread.run_sync(out.stop)          # caught up: the count is said
    trio.run(main)
    assert "wsuper: still said" in err_stream.getvalue()
    shown = out_stream.getvalue().count("[app] \\U000e0001")
    assert 1 <= shown <= 3
    assert f"the terminal did not keep up: {200 - shown} lines were not shown" in \
        err_stream.getvalue()


def test_log_files_wait_out_a_shortage_of_descriptors_and_lose_no_line(tmp_path, monkeypatch):
    """Out of descriptors for a moment (a flood of connections), the log files
    stopped for good: 'the log files stopped: ... Too many open files', and every
    line of the rest of the run was lost.  A shortage passes: what was not written
    waits (bounded) and is written, in order, once a descriptor is free; a line
    that was written is not written twice.  Other errors still stop them."""
    import errno

    import trio

    from supervisor import output
    told = []
    files = output.LogFiles(str(tmp_path), on_failed=lambda why: told.append(("failed", why)),
                            on_paused=lambda why: told.append(("paused", why)))
    real, short = output._append, {"left": 0}

    def append(folder, file, chunk):
        if short["left"] and file == "app.log":
            short["left"] -= 1
            raise OSError(errno.EMFILE, f"{file} cannot be opened: Too many open files")
        real(folder, file, chunk)
    monkeypatch.setattr(output, "_append", append)

    async def main():
        files.add("supervisor", "event 1")
        files.add("app", "app 1")
        short["left"] = 2                   # two writes of app.log fail
        await files.flush()                 # supervisor.log written, app.log not
        files.add("app", "app 2")
        await files.flush()                 # fails again: kept, in order
        assert files.failed is None and files.paused
        await files.flush()                 # a descriptor is free again
        assert not files.paused
    trio.run(main)
    files.close()
    assert [k for k, _ in told] == ["paused"] and "Too many open files" in told[0][1]
    assert (tmp_path / "supervisor.log").read_text() == "event 1\n"
    assert (tmp_path / "app.log").read_text() == "app 1\napp 2\n"
    # anything else (a file that is not a regular one, say) still stops them
    files = output.LogFiles(str(tmp_path), on_failed=lambda why: told.append(("failed", why)))
    os.remove(tmp_path / "app.log")
    os.mkfifo(tmp_path / "app.log")
    monkeypatch.setattr(output, "_append", real)
    files.add("app", "app 3")
    trio.run(files.flush)
    files.close()
    assert files.failed and told[-1][0] == "failed"


def test_lines_lost_while_the_log_files_wait_are_all_counted(tmp_path, monkeypatch):
    """While the log files wait out a shortage of descriptors, what is not written
    is kept up to the backlog's bound and the rest counted.  The count of lines not
    kept used to travel as a line ("N lines were not written ...") in the batch that
    failed, and was then kept or dropped as any line: a full backlog dropped it and
    counted it as *one* line, so the files said "1 lines were not written" for
    hundreds lost.  Whatever the shortage's length, every line added is either in
    its file or in the count its file gives, and the supervisor's copy of each
    count agrees with it."""
    import errno
    import re

    import trio

    from supervisor import output
    monkeypatch.setattr(output, "LOG_BACKLOG_BYTES", 2000)
    files = output.LogFiles(str(tmp_path))
    real, short = output._append, {"on": False}

    def append(folder, file, chunk):
        if short["on"]:
            raise OSError(errno.EMFILE, f"{file} cannot be opened: Too many open files")
        real(folder, file, chunk)
    monkeypatch.setattr(output, "_append", append)
    added = {"app": 0, "other": 0}

    async def main():
        short["on"] = True
        for _round in range(6):               # a shortage over several flushes
            for name in added:
                for _ in range(40):
                    files.add(name, f"{name} line {added[name]:04d} " + "x" * 80,
                              droppable=True)
                    added[name] += 1
            await files.flush()
            assert files.paused and files.failed is None
        short["on"] = False
        await files.flush()
        assert not files.paused
        await files.flush()                   # nothing left over
    trio.run(main)
    files.close()
    sup = (tmp_path / "supervisor.log").read_text()
    for name, n in added.items():
        text = (tmp_path / f"{name}.log").read_text()
        kept = [l for l in text.splitlines() if l.startswith(f"{name} line")]
        assert kept == sorted(kept) and len(set(kept)) == len(kept)      # in order, once
        lost = sum(map(int, re.findall(r"wsuper: (\d+) lines were not written", text)))
        assert len(kept) + lost == n, (len(kept), lost, n)
        copied = sum(map(int, re.findall(rf"(\d+) of {name}'s\)", sup)))
        assert copied == lost, (copied, lost)


def test_the_last_flush_waits_out_a_shortage_and_says_what_it_could_not_write(tmp_path,
                                                                              monkeypatch):
    """The operator is told the log files wait and their lines will be written once a
    descriptor is free.  At stop, one flush was tried: a shortage still there then
    lost every line kept, without a word.  The last flush waits it out (within its
    deadline), and what it still could not write is said, with how many lines."""
    import errno

    import trio

    from supervisor import output
    real, short = output._append, {"left": 0}

    def append(folder, file, chunk):
        if short["left"]:
            short["left"] -= 1
            raise OSError(errno.ENFILE, f"{file} cannot be opened: Too many open files "
                                        f"in system")
        real(folder, file, chunk)
    monkeypatch.setattr(output, "_append", append)
    told = []
    files = output.LogFiles(str(tmp_path / "a"), on_failed=lambda why: told.append(why))
    os.mkdir(tmp_path / "a")
    files.add("app", "app 1")
    short["left"] = 3                      # passes after three tries
    trio.run(files.flush_last)
    files.close()
    assert (tmp_path / "a" / "app.log").read_text() == "app 1\n" and not told
    # one that outlasts the last flush's deadline
    files = output.LogFiles(str(tmp_path / "b"), on_failed=lambda why: told.append(why))
    os.mkdir(tmp_path / "b")
    files.add("app", "app 1")
    files.add("supervisor", "event 1")
    short["left"] = 10 ** 9

    async def last():
        with trio.move_on_after(0.3):
            await files.flush_last()
    trio.run(last)
    files.close()
    assert len(told) == 1 and "2 lines kept for them were not written" in told[0], told
    assert "Too many open files in system" in told[0]
    files.close()                           # said once
    assert len(told) == 1


def test_what_the_last_flush_leaves_is_counted_as_lines_and_never_lost_silently(
        tmp_path, monkeypatch):
    """At stop, what the log files could not write is said, with how many lines.
    The count took each line kept as one, so a note standing for hundreds of lines
    lost was one, and the supervisor's copy of another file's note one more; and a
    stop whose deadline came just as a flush had taken its batch out of what was
    kept (trio checks for a cancel before the write's thread starts) lost that
    batch without a word."""
    import errno
    import re

    import trio

    from supervisor import output
    monkeypatch.setattr(output, "LOG_BACKLOG_BYTES", 2000)
    real = output._append

    def append(folder, file, chunk):
        raise OSError(errno.EMFILE, f"{file} cannot be opened: Too many open files")
    monkeypatch.setattr(output, "_append", append)
    told = []
    files = output.LogFiles(str(tmp_path), on_failed=told.append)
    added = 0

    async def main():
        nonlocal added
        for _round in range(4):
            for name in ("app", "other", "supervisor"):
                for _ in range(40):
                    files.add(name, f"{name} line " + "x" * 80, droppable=True)
                    added += 1
            await files.flush()
            assert files.paused and files.failed is None
        with trio.move_on_after(0.3):
            await files.flush_last()
    trio.run(main)
    files.close()
    assert len(told) == 1, told
    assert int(re.search(r"(\d+) lines kept", told[0])[1]) == added, (told, added)

    # the stop's deadline comes once a flush has taken its batch, before the write
    monkeypatch.setattr(output, "_append", real)
    told.clear()
    files = output.LogFiles(str(tmp_path / "b"), on_failed=told.append)
    os.mkdir(tmp_path / "b")
    for i in range(3):
        files.add("app", f"app {i}")
    run_sync = trio.to_thread.run_sync

    async def main2():
        with trio.CancelScope() as scope:
            async def cancelled_first(*args, **kwargs):
                scope.cancel()
                return await run_sync(*args, **kwargs)
            monkeypatch.setattr(trio.to_thread, "run_sync", cancelled_first)
            await files.flush_last()
        monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    trio.run(main2)
    files.close()
    written = (tmp_path / "b" / "app.log").read_text().splitlines() \
        if (tmp_path / "b" / "app.log").exists() else []
    assert len(written) == 3 or (len(told) == 1 and
                                 f"{3 - len(written)} lines kept" in told[0]), (written, told)


def test_close_counts_a_batch_the_writer_had_taken_but_not_yet_written(tmp_path):
    """At stop close() comes right after the last flush, while the writer task may
    have taken a batch and handed it to its thread that has not begun: the thread
    then finds the files closed and writes nothing, and those lines, out of what
    was kept, were lost without a word.  Whatever the order, every line is written
    or counted in what close() says."""
    import re
    import threading

    import trio

    from supervisor import output
    told = []
    files = output.LogFiles(str(tmp_path), on_failed=told.append)
    real_write = files._write
    in_thread, go = threading.Event(), threading.Event()

    def write(batch):
        in_thread.set()
        go.wait(10)
        real_write(batch)
    files._write = write
    for i in range(5):
        files.add("app", f"app {i}")

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(files.flush)              # the writer's flush, mid-way
            await trio.to_thread.run_sync(in_thread.wait, 10)
            files.close()                          # the stop's, meanwhile
            go.set()
    trio.run(main)
    log = tmp_path / "app.log"
    written = log.read_text().splitlines() if log.exists() else []
    said = int(re.search(r"(\d+) lines kept", told[0])[1]) if told else 0
    assert len(written) + said == 5, (written, told)


def test_a_short_write_to_a_log_file_stops_the_files_and_says_why(tmp_path):
    """A write to a log file that takes only part of a batch (the disk, or the
    process's file size limit, reached midway) returns how much it took, with no
    error: the rest of the batch, lines the files were said to hold, was dropped
    without a word.  The rest is written again and its error reported."""
    import subprocess
    import sys
    code = f"""
import resource, trio
from supervisor import output
told = []
files = output.LogFiles({str(tmp_path)!r}, on_failed=told.append)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
for i in range(10):
    files.add("app", f"app line {{i:02d}} " + "x" * 20)
trio.run(files.flush)
files.close()
print(repr(told))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    written = (tmp_path / "app.log").read_text()
    assert len(written) < 10 * 32               # the limit held it back
    assert "File too large" in r.stdout, r.stdout      # said, not lost unseen


def test_stderr_that_ends_says_its_last_line_without_a_newline_and_what_the_rate_held_back():
    """A review of the operator's output: at the end of an engine's stderr, a last
    line that no newline ended was never shown (nor kept for the reason of its
    death), and the count of lines the rate held back, said only with a later
    line shown, was never said."""
    lines = StderrLines(rate=1000, now=0.0)
    lines.feed(b"one\nfatal: no newline", 0.0)
    assert lines.finish(0.0) == [("fatal: no newline", True)]
    assert lines.finish(0.0) == []                            # said once
    for last in (b"last", b""):       # the last line is last (the reason is taken from it)
        flooded = StderrLines(rate=2, now=0.0)
        flooded.feed(b"".join(b"line %d\n" % i for i in range(5)) + last, 0.0)
        assert flooded.finish(0.0) == [
            ("(3 lines not shown: more than 2 a second, limit log_rate)", True)] + \
            ([("last", True)] if last else [])
        assert flooded.finish(0.0) == []
    said = StderrLines(rate=1, now=0.0)
    got = said.feed(b"a\nb\n", 0.0) + said.feed(b"c\n", 5.0) + said.finish(5.0)
    assert [t for t, _ in got if not said.is_note(t)] == ["a", "b", "c"]   # the engine's


def test_a_flood_of_stderr_lines_held_back_is_counted_in_bulk_not_given_line_by_line():
    """A taken-over engine wrote its stderr in chunks of 16 KiB of newlines: each
    feed copied the rest of its buffer for every line and decoded and gave every
    line held back, ~56 ms of the supervisor's loop per chunk, and the reader came
    back for the next chunk as soon as the rate allowed one more line (10 ms at
    log_rate 100): one engine held the loop most of the time, every other
    compartment's calls waiting behind it.  What the rate holds back is counted
    in bulk; only the last few lines (why an engine ended: the runtime keeps 5)
    are given."""
    lines = StderrLines(rate=100, now=0.0)
    flood = b"\n" * 16384
    got = lines.feed(b"first\n" + flood + b"last words\npartial", 0.0)
    assert [t for t, shown in got if shown] == ["first"] + [""] * 99
    held = [t for t, shown in got if not shown]
    assert 5 <= len(held) <= 16 and held[-1] == "last words" and set(held[:-1]) == {""}
    assert lines.hidden == 16384 + 2 - 100 and lines.buf == b"partial"
    again = lines.feed(flood, 0.0)                       # nothing shown: all counted
    assert 5 <= len(again) <= 16 and lines.hidden == 16384 * 2 + 2 - 100
    assert lines.feed(b"\n", 1.0)[0] == (
        f"({16384 * 2 + 2 - 100} lines not shown: more than 100 a second, "
        f"limit log_rate)", True)


def test_a_log_line_an_earlier_run_left_unended_is_never_joined_to_the_next_one(tmp_path):
    """An outside review: a log file whose last line a full disk cut short (the log
    files then stop for the run) got the next run's first line appended to that
    piece, one line of two, with the second's time in its middle.  The first write
    of a run to a file that does not end a line ends it first, once."""
    (tmp_path / "app.log").write_bytes(b"2026-12-05T09:00:00.000Z [app] whole\n"
                                       b"2026-12-05T09:00:01.000Z [app] cut sh")
    from supervisor.output import LogFiles
    files = LogFiles(str(tmp_path))
    files._write({"app": ["2026-12-05T09:10:00.000Z [app] next run"], "new": ["x"]})
    files._write({"app": ["2026-12-05T09:10:01.000Z [app] and on"]})
    assert (tmp_path / "app.log").read_bytes().split(b"\n") == [
        b"2026-12-05T09:00:00.000Z [app] whole", b"2026-12-05T09:00:01.000Z [app] cut sh",
        b"2026-12-05T09:10:00.000Z [app] next run", b"2026-12-05T09:10:01.000Z [app] and on",
        b""]
    assert (tmp_path / "new.log").read_bytes() == b"x\n"


class _PlainStderrLines:
    """The straightforward model of StderrLines.feed (as it was before 8a37aaa):
    one line at a time, each decoded, each asked of the rate, each given."""

    def __init__(self, rate, now):
        from supervisor.supervision import TokenBucket
        self.rate, self.buf, self.hidden = TokenBucket(rate, now), b"", 0

    def feed(self, chunk, now):
        limit, out = output.STDERR_LINE_LIMIT, []
        self.buf += chunk
        while True:
            end = self.buf.find(b"\n", 0, limit)
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1:]
            elif len(self.buf) > limit:
                line, self.buf = self.buf[:limit], self.buf[limit:]
            else:
                return out
            text = line.decode("utf-8", "replace")
            if not self.rate.take(now):
                self.hidden += 1
                out.append((text, False))
                continue
            out += self._said()
            out.append((text, True))

    def finish(self, now):
        out = self._said()
        if self.buf:
            text, self.buf = self.buf.decode("utf-8", "replace"), b""
            self.rate.take(now)
            out.append((text, True))
        return out

    def _said(self):
        if not self.hidden:
            return []
        note = (output._Note(f"({self.hidden} lines not shown: more than "
                             f"{self.rate.rate:g} a second, limit log_rate)"), True)
        self.hidden = 0
        return [note]


def _hostile_stderr_chunk(r, limit):
    parts = []
    for _ in range(r.randrange(0, 12)):
        k = r.random()
        if k < 0.3:
            parts.append(b"\n" * r.randrange(0, 30))
        elif k < 0.45:
            parts.append(b"\r" * r.randrange(1, 3) + b"\r\n" * r.randrange(0, 2))
        elif k < 0.6:
            parts.append(bytes(r.randrange(256) for _ in range(r.randrange(0, 2 * limit + 3))))
        elif k < 0.7:
            parts.append(b"x" * r.choice([limit - 1, limit, limit + 1, 2 * limit - 1,
                                          2 * limit, 2 * limit + 1, 3 * limit]))
        elif k < 0.8:
            parts.append("é€😀".encode()[:r.randrange(1, 10)])   # cut mid-character too
        else:
            parts.append(b"ab\n" * r.randrange(0, 5))
    return b"".join(parts)


@pytest.mark.parametrize("limit", [1, 2, 3, 8, STDERR_LINE_LIMIT])
def test_stderr_lines_counted_in_bulk_are_those_of_the_plain_model(monkeypatch, limit):
    """Differential: over random hostile stderr (partial lines, \\r, invalid and cut
    UTF-8, lines of the limit and around it, empty chunks, floods), StderrLines
    shows exactly the lines the line-by-line model shows, with the same 'N lines
    not shown' notes (N the model's count), keeps the same partial line, gives
    the last HIDDEN_KEPT of the lines held back (the model's last ones), so the
    runtime's tail of 5 is the same, and finish() says the same."""
    import collections
    import random
    monkeypatch.setattr(output, "STDERR_LINE_LIMIT", limit)
    for seed in range(300):
        r = random.Random(seed * 31 + limit)
        rate, now = r.choice([0.5, 1, 2, 2.5, 3, 100]), 0.0
        model, lines = _PlainStderrLines(rate, now), StderrLines(rate, now)
        tails = collections.deque(maxlen=5), collections.deque(maxlen=5)
        for step in range(r.randrange(1, 25)):
            now += r.choice([0, 0, 0.001, 0.1, 0.5, 1, 3])
            chunk = _hostile_stderr_chunk(r, limit) if r.random() > 0.1 else b""
            want, got = model.feed(chunk, now), lines.feed(chunk, now)
            where = (limit, seed, step)
            assert [x for x in got if x[1]] == [x for x in want if x[1]], where
            assert [StderrLines.is_note(t) for t, shown in got if shown] == \
                [StderrLines.is_note(t) for t, shown in want if shown], where
            held_want = [t for t, shown in want if not shown]
            held_got = [t for t, shown in got if not shown]
            assert len(held_got) == min(len(held_want), output.HIDDEN_KEPT), where
            assert held_got == held_want[len(held_want) - len(held_got):], where
            for out, tail in zip((want, got), tails):
                tail.extend(t for t, shown in out if not StderrLines.is_note(t))
            assert list(tails[1]) == list(tails[0]), where
            assert (lines.hidden, lines.buf, lines.over) == (model.hidden, model.buf,
                                                             model.hidden > 0), where
        now += r.choice([0, 1])
        assert lines.finish(now) == model.finish(now), (limit, seed)


def test_an_unended_line_is_still_ended_when_the_first_write_waits_for_a_descriptor(
        tmp_path, monkeypatch):
    """An outside review: the first write of a run to a file whose last line an
    earlier run left unended failed for want of a descriptor (EMFILE: the lines wait
    for the next flush, as documented).  The file was marked looked at, and the
    newline put before the lines was lost with the failed write: the next flush
    joined this run's first line to the piece.  Looking for the piece with no
    descriptor free took it for a whole line, with the same end."""
    import errno
    from supervisor.output import LogFiles
    piece = b"2026-12-05T09:00:01.000Z [app] cut sh"
    first = "2026-12-05T09:10:00.000Z [app] next run"
    real_open = os.open
    for where in ("the write", "the look"):
        (tmp_path / "app.log").write_bytes(piece)
        calls = []

        def short_of_descriptors(path, flags, *a, calls=calls, **k):
            # the first open of the log file: for the write (O_WRONLY) or the look
            wanted = os.O_WRONLY if where == "the write" else 0
            if path == "app.log" and flags & os.O_ACCMODE == wanted and not calls:
                calls.append(1)
                raise OSError(errno.EMFILE, "Too many open files")
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(output.os, "open", short_of_descriptors)
        files = LogFiles(str(tmp_path))
        batch = {"app": [first]}
        with pytest.raises(OSError):
            files._write(batch)
        assert batch == {"app": [first]}        # kept for the next flush
        files._write(batch)
        assert (tmp_path / "app.log").read_bytes() == piece + b"\n" + first.encode() + b"\n", where
        monkeypatch.undo()


def _small_tmpfs(tmp_path, size="64k"):
    """A small file system of our own (root only), and a filler that takes all of
    it; the caller unmounts it (umount)."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounts a small file system")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs",
                        str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode()[:200]}")
    return mnt


def _fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_log_files_on_a_full_disk_wait_for_room_and_write_each_line_once_whole(tmp_path):
    """A review of the host running out: the log directory's file system full
    (ENOSPC) stopped the log files for good ('the log files stopped: ... No space
    left on device'), and every line of the rest of the run was lost, though room
    came back a moment later (a log of another program's, rotated; a core file
    removed).  And the write that failed had left a piece of a line in the file
    (the part that fitted), to which the next run joined its first line.  Now a
    full disk is waited out as a shortage of descriptors is: the lines are kept
    (bounded) and written, whole and once, when there is room; a write that did
    not fit leaves nothing of itself in the file."""
    import subprocess

    import trio
    mnt = _small_tmpfs(tmp_path)
    try:
        logs = mnt / "logs"
        logs.mkdir(mode=0o700)
        before = "".join(f"old line {i:03d} " + "o" * 30 + "\n" for i in range(90))
        (logs / "app.log").write_text(before)        # ~4000 bytes: its page almost full
        _fill(mnt / "filler")
        told = []
        files = output.LogFiles(str(logs), on_failed=lambda why: told.append(("failed", why)),
                                on_paused=lambda why: told.append(("paused", why)))
        new = [f"new line {i:03d} " + "n" * 60 for i in range(20)]

        async def main():
            for line in new[:10]:
                files.add("app", line)
            await files.flush()                  # part of it fits in the last page: no more
            assert files.failed is None, files.failed
            assert (logs / "app.log").read_text() == before      # nothing of it written
            for line in new[10:]:
                files.add("app", line)
            await files.flush()                  # still full: kept, in order
            os.remove(mnt / "filler")            # room again
            await files.flush()
            assert not files.paused and files.failed is None
        try:
            trio.run(main)
        finally:
            files.close()
        assert [k for k, _ in told] == ["paused"], told
        assert "No space left on device" in told[0][1], told
        assert (logs / "app.log").read_text() == before + "".join(l + "\n" for l in new)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)



def _remaking(folder, made=None):
    """A LogFiles `remake` as the runtime's (Supervisor._remake_log_dir): `folder`
    made as at start and locked; the descriptors it returns go to `made`."""
    from supervisor import endpoint

    def remake():
        endpoint.own_dir(str(folder), "log directory ")
        fd = endpoint.lock_dir(str(folder), "log directory ")
        if made is not None:
            made.append(fd)
        return fd
    return remake

def test_a_log_directory_removed_or_moved_while_running_is_made_again(tmp_path):
    """The log files are written through the directory as opened at start: removed
    while the system ran (an operator's `rm -rf`, a cleaner of old files), every
    later write failed ENOENT and the files stopped for good (every later line of
    the run in no file); moved away, they went on into the moved directory, where
    `wsuper logs` does not look.  A new one is made where it was, as at start (by
    `remake`, whose descriptor the files keep until closed), and said once each
    time; one that cannot be made again stops the files, saying why."""
    import shutil

    from supervisor.output import LogFiles
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    said, made = [], []

    remake = _remaking(folder, made)
    files = LogFiles(str(folder), on_remade=said.append, remake=remake)
    files._write({"app": ["one"]})
    shutil.rmtree(folder)
    files._write({"app": ["two"], "supervisor": ["event"]})
    assert (folder / "app.log").read_text() == "two\n"
    assert (folder / "supervisor.log").read_text() == "event\n"
    assert len(said) == 1 and f"the log directory {folder} was removed or moved" in said[0]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    os.rename(folder, tmp_path / "moved")
    files._write({"app": ["three"]})
    assert (folder / "app.log").read_text() == "three\n"
    assert (tmp_path / "moved" / "app.log").read_text() == "two\n"
    assert len(said) == 2 and len(made) == 2
    files._write({"app": ["four"]})            # nothing moved: written on, nothing said
    assert (folder / "app.log").read_text() == "three\nfour\n" and len(said) == 2
    # a link planted where it was is not followed: the writes fail, naming why
    shutil.rmtree(folder)
    os.symlink(tmp_path / "moved", folder)
    with pytest.raises(OSError, match="not a directory"):
        files._write({"app": ["five"]})
    assert "five" not in (tmp_path / "moved" / "app.log").read_text()
    files.close()
    for fd in made:                             # closed with the files
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_log_directory_removed_as_a_batch_is_written_loses_no_line(tmp_path):
    """The writer looked whether its directory was gone once, before a batch: an
    `rm -rf` that came after that look, as the batch was written (a plugin logging
    at full rate keeps the writer busy), failed the batch's open (ENOENT in a
    removed directory) and stopped the log files for good, the very loss the
    directory's remaking was made for.  A batch that fails in a directory gone
    meanwhile is written again, what was not written of it, in a new one."""
    import shutil

    from supervisor import endpoint
    from supervisor.output import LogFiles
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    said, made = [], []

    remake = _remaking(folder, made)
    files = LogFiles(str(folder), on_remade=said.append, remake=remake)
    files._write({"app": ["one"]})
    real, removed = files._write_all, []

    def write_all(fd, batch):            # rm -rf just after the writer's look
        if not removed:
            removed.append(True)
            shutil.rmtree(folder)
        return real(fd, batch)
    files._write_all = write_all
    batch = {"app": ["two", "three"], "supervisor": ["event"]}
    files._write(batch)
    assert batch == {}
    assert (folder / "app.log").read_text() == "two\nthree\n"
    assert (folder / "supervisor.log").read_text() == "event\n"
    assert len(said) == 1 and len(made) == 1
    # removed again between its making and its locking (the failure `up` showed:
    # "the log files stopped: ...: cannot make it again: cannot open log directory
    # ...: No such file or directory"): made once more
    shutil.rmtree(folder)
    plain = remake

    tries = []

    def remake():
        tries.append(1)
        endpoint.own_dir(str(folder), "log directory ")
        if len(tries) == 1:
            shutil.rmtree(folder)
        fd = endpoint.lock_dir(str(folder), "log directory ")
        made.append(fd)
        return fd
    files.remake = remake
    files._write({"app": ["four"]})
    assert (folder / "app.log").read_text() == "four\n" and len(made) == 2
    files.remake = plain
    files.close()


def test_a_log_directory_removed_in_a_loop_keeps_the_lines_and_writes_them_later(tmp_path):
    """Removed each time it is made again (an `rm -rf` in a loop), the log files wait
    with their lines, as for a descriptor, and write them once it stays: they do
    not stop for good."""
    import shutil

    import trio

    from supervisor import endpoint
    from supervisor.output import LogFiles
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    paused, failed, looping = [], [], [True]

    def remake():
        endpoint.own_dir(str(folder), "log directory ")
        fd = endpoint.lock_dir(str(folder), "log directory ")
        if looping[0]:
            shutil.rmtree(folder)
        return fd
    files = LogFiles(str(folder), on_failed=failed.append, on_paused=paused.append,
                     remake=remake)

    async def main():
        files.add("app", "one")
        await files.flush()
        shutil.rmtree(folder)
        files.add("app", "two")
        await files.flush()
        assert files.paused and not failed and len(paused) == 1
        looping[0] = False
        files.add("app", "three")
        await files.flush()
    trio.run(main)
    assert not failed and not files.paused
    assert (folder / "app.log").read_text() == "two\nthree\n"
    files.close()


def test_a_log_directory_moved_away_again_and_again_holds_no_descriptor_of_each(tmp_path):
    """Each time the log directory was made again, the descriptor that locked the
    one made before was kept until the system stopped: moved away again and again
    (a cleaner that moves it aside, a `mv` in a loop: 100 moves left 100 more
    descriptors in the supervisor, seen in /proc/PID/fd), the supervisor's
    descriptors, which its compartments' files and connections share, ran out one
    a move, and every moved directory stayed locked.  Only the one at the path is
    held: a directory moved away is let go of."""
    from supervisor import endpoint
    from supervisor.output import LogFiles
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)

    remake = _remaking(folder)
    files = LogFiles(str(folder), remake=remake)
    files._write({"app": ["zero"]})
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        os.rename(folder, tmp_path / f"moved{i}")
        files._write({"app": [f"line {i}"]})
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    for i in range(1, 20):                       # let go of, as the system's lock
        os.close(endpoint.lock_dir(str(tmp_path / f"moved{i}"), "log directory "))
    with pytest.raises(endpoint.EndpointError, match="in use by another running system"):
        endpoint.lock_dir(str(folder), "log directory ")
    assert (folder / "app.log").read_text() == "line 19\n"
    files.close()


def test_a_log_directory_made_again_without_a_descriptor_to_spare_waits_for_one(
        tmp_path, monkeypatch):
    """Made again with no descriptor free for the writer's copy of it (EMFILE), the
    new directory's lock was kept, and the next try to make it again was refused
    by that very lock ("in use by another running system"): the log files stopped
    for good.  The lock goes with the failure, which is waited out as any want of
    a descriptor."""
    import errno
    import shutil

    import trio

    from supervisor.output import LogFiles
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    failed, paused = [], []

    remake = _remaking(folder)
    files = LogFiles(str(folder), on_failed=failed.append, on_paused=paused.append,
                     remake=remake)
    real_dup, short = os.dup, [True]

    def dup(fd):
        if short[0]:
            short[0] = False
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(fd)
    monkeypatch.setattr(os, "dup", dup)

    async def main():
        files.add("app", "one")
        await files.flush()
        shutil.rmtree(folder)
        files.add("app", "two")
        await files.flush()
        assert files.paused and not failed
        await files.flush()
    trio.run(main)
    assert not failed and not files.paused
    assert (folder / "app.log").read_text() == "two\n"
    files.close()


@pytest.mark.parametrize("size", [10, 2000])
def test_a_log_file_another_running_system_holds_as_its_audit_is_never_written(
        tmp_path, monkeypatch, size):
    """A review of the operator's files: system A's `audit = "/d/supervisor.log"`
    and system B's `logs = "/d"`, both running (either started first): B appended
    its log lines (a plugin's text among them) to A's audit, a file of JSON
    records, and at 1 MiB rotated it from under A (renamed to supervisor.log.1,
    and in the end deleted); a write of B's that failed cut A's file back to the
    size B had seen.  The audit is locked by its system for the run: a log file
    another process holds locked is not written, nor rotated, and the log files
    say why."""
    import fcntl

    from supervisor import output
    monkeypatch.setattr(output, "LOG_FILE_SIZE", 1000)
    audit = tmp_path / "supervisor.log"
    audit.write_bytes(b'{"event":"run started"}\n'.ljust(size - 1, b" ") + b"\n")
    before = audit.read_bytes()
    held = os.open(audit, os.O_WRONLY | os.O_APPEND)      # as _Audit.open holds it
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        files = output.LogFiles(str(tmp_path))
        with pytest.raises(OSError, match="supervisor.log is locked by another process"):
            files._write({"supervisor": ["2026-12-03T10:00:00.000Z wsuper: x" * 10]})
        files._write({"app": ["2026-12-03T10:00:00.000Z [app] fine"]})
        files.close()
    finally:
        os.close(held)
    assert audit.read_bytes() == before
    assert not (tmp_path / "supervisor.log.1").exists()
    assert (tmp_path / "app.log").read_text() == "2026-12-03T10:00:00.000Z [app] fine\n"


def test_plugin_lines_and_events_on_one_stream_keep_their_order(tmp_path):
    """`wsuper up ... 2>&1` (a pipe, a file, a test's merged output): stdout is
    block-buffered there and stderr line-buffered, and the terminal thread wrote a
    batch of lines to both and flushed each at the end: every event line of the
    batch reached the stream before the plugin lines written before it.  As an
    ordinary user, `[app] 2 + 3 = 5` came after `wsuper: finished app exit=0` 4
    runs in 5 (test_hello_prints_ready_lines_and_the_result failed).  A stream
    is flushed before a line goes to the other."""
    import trio
    fd = os.open(tmp_path / "merged", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = open(fd, "w", buffering=8192)                 # as stdout on a pipe
    err = open(os.dup(fd), "w", buffering=1)            # as stderr: line-buffered
    o = output.Output(out, err)

    async def main():
        o.start()
        for i in range(3):                              # one batch
            o.plugin("app", f"line {i}")
            o.event(f"event {i}")
        o.stop()
    trio.run(main)
    out.close()
    err.close()
    lines = [strip_time(l) for l in (tmp_path / "merged").read_text().splitlines()]
    assert lines == ["[app] line 0", "wsuper: event 0", "[app] line 1", "wsuper: event 1",
                     "[app] line 2", "wsuper: event 2"]


def test_a_line_of_control_characters_is_escaped_without_python_work_per_character(monkeypatch):
    """Every plugin line is shown through text.printable, which escaped a line that
    is not all printable one character at a time in Python: a Log line of 4,096
    control characters (or bidi overrides) cost the supervisor's loop ~1.5 ms,
    300 times a printable line, at every compartment's log_rate.  Each character
    is escaped once (str.translate with what was made before), and the text is
    the same as before."""
    from capnp_schemas import text as T
    calls = []
    real = T._escape
    monkeypatch.setattr(T, "_escape", lambda c: calls.append(c) or real(c))
    lines = ["\x01" * 4096, "a\x1b[31mred\u202e\x00" * 400, "é😀\tx\\y\n\U000e0001"]
    expected = ["".join(real(c) if not c.isprintable() else c for c in line)
                for line in lines]
    for _ in range(3):
        assert [T.printable(line) for line in lines] == expected
    assert len(calls) <= 10, len(calls)      # once a character, not once an occurrence


#: Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters a
#: renderer shows as nothing
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C),
                     (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
                     (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F),
                     (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
                     (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def test_no_character_that_shows_as_nothing_is_shown_as_it_is():
    """str.isprintable() passes some characters a terminal shows as nothing: the
    Hangul fillers (letters), variation selectors, the combining grapheme joiner,
    and the braille blank.  A guest's log line of them read as an empty line, or
    as another's continuation; each is escaped now, alone, among others, and in a
    line of other text, and text without them is shown as it was."""
    from capnp_schemas import text as T
    blank = [chr(n) for a, b in DEFAULT_IGNORABLE for n in range(a, b + 1)] + ["\u2800"]
    for c in blank:
        assert T.printable(c) != c and T.printable(c).isascii(), hex(ord(c))
        assert c not in T.printable(f"x{c}y{c}z") and not T.shows(c)
    assert T.printable("\u3164\u3164 not empty") == "\\u3164\\u3164 not empty"
    for line in ("plain", "café ✓ 日本語 😀", "e\u0301 Vie\u0323\u0302t"):
        assert T.printable(line) == line


def test_an_unbuffered_terminal_gets_each_batch_of_lines_in_one_write(tmp_path):
    """With PYTHONUNBUFFERED=1 (as in many services and containers) every write to the
    terminal is a system call, and print() wrote each line's end apart: two writes
    for each line a plugin logged, and a wake-up of whoever reads the terminal for
    each.  The terminal thread writes each stream's lines of a batch in one write
    now, in the order they came, events between them where they came."""
    import io

    import trio
    writes = []

    class Counted(io.FileIO):
        def write(self, b):
            writes.append(len(b))
            return super().write(b)
    path = tmp_path / "terminal"
    stream = io.TextIOWrapper(Counted(str(path), "w"), encoding="utf-8", write_through=True)
    out = output.Output(stream, stream)

    async def main():
        out.start()
        for i in range(100):
            out.plugin("app", f"line {i}")
        out.event("an event")
        for i in range(100, 150):
            out.plugin("app", f"line {i}")
        await trio.to_thread.run_sync(out.stop)
    trio.run(main)
    stream.close()
    assert [strip_time(line) for line in path.read_text().splitlines()] == \
        [f"[app] line {i}" for i in range(100)] + ["wsuper: an event"] + \
        [f"[app] line {i}" for i in range(100, 150)]
    assert len(writes) <= 12, writes            # 302 before: two for each line


def test_a_large_batch_for_the_terminal_is_written_without_copying_it_whole(monkeypatch):
    """The terminal thread writes a stream's lines of a batch together, and it joined
    them all into one string, then one more with its newline, then their encoding:
    a plugin's flood of lines with one character outside Latin-1 each (4 bytes a
    character in the joined string), queued while the terminal was slow (its full
    16 Mi characters), made the supervisor take ~200 MB more at once to write them
    (tracemalloc: 201.4 MB, against 0.1 MB line by line).  A write holds at most
    TERMINAL_WRITE_CHARS characters; every line still comes, in order."""
    import threading
    import tracemalloc

    import trio
    stuck, go = threading.Event(), threading.Event()

    class Slow:                      # a terminal that holds its first write until `go`
        encoding = "utf-8"

        def __init__(self):
            self.lines = []          # each line once (the flood's are one and the same)

        def write(self, text):
            if not stuck.is_set():
                stuck.set()
                go.wait()
            assert text.endswith("\n")
            for got in text[:-1].split("\n"):
                if not self.lines or self.lines[-1][0] != got:
                    self.lines.append([got, 0])
                self.lines[-1][1] += 1
            return len(text)

        def flush(self):
            pass
    stdout = Slow()
    out = output.Output(stdout, Slow())
    line = "\U0001f600" + "x" * 4000
    state = {}

    async def main():
        out.start()
        out.plugin("app", "first")
        await trio.to_thread.run_sync(stuck.wait)        # the terminal thread is stuck
        n = 0
        while not out.dropped:                            # the backlog is full
            out.plugin("app", line)
            n += 1
        state["queued"] = n
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            go.set()
            await trio.to_thread.run_sync(lambda: out.stop(timeout=120))
            state["peak"] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    trio.run(main)
    assert stdout.lines == [["[app] first", 1], [f"[app] {line}", state["queued"] - 1]]
    assert state["queued"] > 4000
    assert state["peak"] < 16 * output.TERMINAL_WRITE_CHARS + (1 << 20), state


@pytest.mark.parametrize("layers", ["unbuffered", "buffered"])
def test_a_terminal_made_non_blocking_by_another_program_loses_no_line(layers):
    """O_NONBLOCK belongs to the open file, which every process that inherited it
    shares (a CI runner's pipe, a terminal another program left so): a write the
    pipe could not take at once failed EAGAIN, and Python's text layer dropped it
    without a word.  With PYTHONUNBUFFERED=1 (sys.stdout on the descriptor, no
    buffer between: `unbuffered`) 70 of 2,000 plugin lines came whole once the
    terminal thread wrote a batch at once (688 line by line before), 211 with a
    buffer; the rest were lost uncounted, and a cut line was joined to the next.
    Such a write now waits until the terminal takes it, as on a blocking one."""
    import array
    import fcntl
    import io
    import termios
    import threading

    import trio
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        os.set_blocking(w, False)               # as another program left it
        os.set_blocking(r, False)
        raw = io.FileIO(w, "w", closefd=False)
        stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True) \
            if layers == "unbuffered" else io.TextIOWrapper(io.BufferedWriter(raw),
                                                            encoding="utf-8")
        got, done = [], threading.Event()

        def reader():                   # reads only once the pipe is full, then all
            waiting = array.array("i", [0])
            while not done.is_set():
                fcntl.ioctl(r, termios.FIONREAD, waiting)
                if waiting[0] >= capacity - 1024:
                    break
                done.wait(0.001)
            last = False
            while True:
                try:
                    got.append(os.read(r, 65536))
                except BlockingIOError:
                    if last:
                        return
                    last = done.wait(0.01)
        thread = threading.Thread(target=reader)
        thread.start()
        out = output.Output(stream, stream)
        lines = [f"line {i:05d} " + "x" * 40 for i in range(2000)]

        async def main():
            out.start()
            for line in lines:
                out.plugin("app", line)
            await trio.to_thread.run_sync(lambda: out.stop(timeout=60))
        try:
            trio.run(main)
        finally:
            done.set()
            thread.join()
        assert b"".join(got).decode().splitlines() == [f"[app] {line}" for line in lines]
        assert not out.closed and not out.dropped
    finally:
        os.close(r)
        os.close(w)


def test_a_terminal_stream_only_the_output_refers_to_stays_open(tmp_path):
    """Output writes a text stream on a descriptor through a layer of its own
    (_written_whole): the stream it was given, once no one else referred to it (a
    caller's `Output(open(os.devnull, "w"), ...)`), was collected and closed its
    descriptor, whose number the next descriptor opened took (an engine's socket,
    in benchmarks/hostpath.py: plugin lines went into it and the run hung)."""
    import gc

    import trio
    out = output.Output(open(tmp_path / "terminal", "w"), open(tmp_path / "events", "w"))
    gc.collect()
    with open(tmp_path / "other", "w") as other:       # the number, if it was let go of
        async def main():
            out.start()
            out.plugin("app", "a line")
            out.event("an event")
            await trio.to_thread.run_sync(out.stop)
        trio.run(main)
        other.flush()
    assert (tmp_path / "other").read_text() == ""
    assert (tmp_path / "terminal").read_text() == "[app] a line\n"
    assert strip_time((tmp_path / "events").read_text()) == "wsuper: an event\n"


def test_nothing_is_written_to_a_terminal_stream_its_owner_closed(tmp_path):
    """A stream its owner closed raised ValueError at the next write, and the
    output took the terminal for gone; written through Output's own layer on its
    descriptor's number (_written_whole), what came next went to whatever took the
    number, and _gone put /dev/null in that one's place."""
    import trio
    given = open(tmp_path / "terminal", "w")
    closed = []
    out = output.Output(given, given, on_closed=lambda: closed.append(True))
    given.close()
    with open(tmp_path / "other", "w") as other:        # takes the number
        async def main():
            out.start()
            out.plugin("app", "a line")
            await trio.to_thread.run_sync(out.stop)
        trio.run(main)
        other.write("its own")
        other.flush()
        assert os.fstat(other.fileno()).st_ino == os.stat(tmp_path / "other").st_ino
    assert (tmp_path / "other").read_text() == "its own"
    assert out.closed


def test_a_line_of_an_idle_system_is_written_at_once_and_the_stop_waits_no_rest(monkeypatch):
    """The terminal thread slept TERMINAL_GATHER after it woke for a line and before it
    wrote it: every line of an idle system (`ready`, `stopping`) came that late, and
    the stop waited as long again for the last ones.  Now a line is written as soon as
    it is said; the rest comes after a write (lines said meanwhile gather, and go in
    one write), and the stop cuts it short.  A rest of an hour shows it: a lone line
    and the stop are each waited for here at most 30 s."""
    import io
    import threading

    import trio

    monkeypatch.setattr(output, "TERMINAL_GATHER", 3600.0)
    written = threading.Event()

    class Terminal(io.StringIO):
        writes = 0

        def write(self, text):
            Terminal.writes += 1
            n = super().write(text)
            written.set()
            return n
    err = Terminal()
    out = output.Output(io.StringIO(), err)

    async def main():
        out.start()
        out.event("ready calc pid=1")
        assert await trio.to_thread.run_sync(written.wait, 30), "the line never came"
        assert "wsuper: ready calc pid=1" in err.getvalue()
        for n in range(50):                   # said while the thread rests
            out.event(f"line {n}")
        done = threading.Event()
        threading.Thread(target=lambda: (out.stop(timeout=60), done.set()),
                         daemon=True).start()
        assert await trio.to_thread.run_sync(done.wait, 30), "the stop waited out the rest"
    trio.run(main)
    assert "wsuper: line 49" in err.getvalue()
    assert Terminal.writes == 2                # the 50 lines gathered: one write
