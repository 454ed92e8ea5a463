"""`wsuper logs -f` (supervisor/logs.py) on real files: a line written while the
files are first read is shown by the following, once, never lost between the two."""
import os
import types

import pytest

from supervisor import endpoint, logs


def test_a_line_written_while_the_logs_are_first_read_is_followed_not_lost(tmp_path, monkeypatch):
    log = tmp_path / "supervisor.log"
    log.write_text("2026-12-03T10:00:00.000Z wsuper: ready app\n")
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={}, path=str(tmp_path))
    read = logs._read

    def read_then_a_write(*args, **kw):      # the system writes right after the read
        out = read(*args, **kw)
        with open(log, "a") as f:
            f.write("2026-12-03T10:00:01.000Z wsuper: stopping (wsuper stop)\n")
        return out
    monkeypatch.setattr(logs, "_read", read_then_a_write)
    lines = logs.lines(system, follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z wsuper: ready app"
    assert next(lines) == "2026-12-03T10:00:01.000Z wsuper: stopping (wsuper stop)"
    with open(log, "a") as f:
        f.write("2026-12-03T10:00:02.000Z wsuper: stopped\n")
    assert next(lines) == "2026-12-03T10:00:02.000Z wsuper: stopped"     # nothing twice


def test_a_half_written_last_line_is_shown_once_it_is_whole(tmp_path):
    log = tmp_path / "supervisor.log"
    log.write_text("2026-12-03T10:00:00.000Z wsuper: one\n2026-12-03T10:00:01.000Z wsu")
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={}, path=str(tmp_path))
    lines = logs.lines(system, follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z wsuper: one"
    with open(log, "a") as f:
        f.write("per: two\n")
    assert next(lines) == "2026-12-03T10:00:01.000Z wsuper: two"



def _rotate(log, keep=3):
    """What the running system does to a log file at its size limit (output.rotate)."""
    import os
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{log}.{i}"):
            os.replace(f"{log}.{i}", f"{log}.{i + 1}")
    os.replace(log, f"{log}.1")


def test_lines_written_just_before_a_rotation_are_followed_not_lost(tmp_path, monkeypatch):
    """`-f` noticed a rotation (the name has a new inode) and read the new file
    from its start: the lines appended to the old one since its last look, and
    any file rotated in between, were never shown."""
    polls = []

    def sleep(_seconds):                 # a look that finds nothing, more than once: lost
        polls.append(1)
        assert len(polls) < 3, "a line written before the rotation was never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    log = tmp_path / "app.log"
    log.write_text("2026-12-03T10:00:00.000Z [app] line 0\n")
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": None},
                                   path=str(tmp_path))
    lines = logs.lines(system, "app", follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z [app] line 0"
    n = 1
    for rotations in (1, 2, 1):          # between two looks: once, twice, once
        first = n
        for _ in range(rotations):
            for _ in range(2):           # a line before the rotation, one after
                with open(log, "a") as f:
                    f.write(f"2026-12-03T10:00:{n:02d}.000Z [app] line {n}\n")
                n += 1
            _rotate(log)
        with open(log, "a") as f:
            f.write(f"2026-12-03T10:00:{n:02d}.000Z [app] line {n}\n")
        n += 1
        got = []
        for _ in range(n - first):
            got.append(next(lines))
            polls.clear()
        assert got == [f"2026-12-03T10:00:{i:02d}.000Z [app] line {i}"
                       for i in range(first, n)]


def test_lines_written_and_rotated_away_during_a_look_are_followed_not_lost(tmp_path,
                                                                            monkeypatch):
    """A look reads what the followed file gained, then sees whether its name moved
    on.  The system writes its last lines to a file and rotates it right away
    (LogFiles._write_all): when both fell between the read and the check, the look
    saw the rotation, went on to the new file and never read the old one again."""
    polls = []

    def sleep(_seconds):                 # looks that find nothing, again and again: lost
        polls.append(1)
        assert len(polls) < 5, "a line written before the rotation was never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    log = tmp_path / "app.log"
    log.write_text("2026-12-03T10:00:00.000Z [app] line 0\n")
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": None},
                                   path=str(tmp_path))
    lines = logs.lines(system, "app", follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z [app] line 0"
    rest, armed = logs._Followed.rest, [True]

    def rest_then_write_and_rotate(self):      # the system, between read and check
        out = rest(self)
        if armed and armed.pop():
            with open(log, "a") as f:
                f.write("2026-12-03T10:00:01.000Z [app] line 1\n")
            _rotate(log)
            log.write_text("2026-12-03T10:00:02.000Z [app] line 2\n")
        return out
    monkeypatch.setattr(logs._Followed, "rest", rest_then_write_and_rotate)
    assert [next(lines), next(lines)] == ["2026-12-03T10:00:01.000Z [app] line 1",
                                          "2026-12-03T10:00:02.000Z [app] line 2"]


def test_a_log_made_and_rotated_between_two_looks_is_followed_not_lost(tmp_path, monkeypatch):
    """`-f` started before a compartment's log existed (following a system that
    is about to start): if the file was made and rotated before the next look,
    only the new one was read, from its start, and the rotated one never."""
    polls = []

    def sleep(_seconds):
        polls.append(1)
        assert len(polls) < 5, "a line written before the rotation was never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    (tmp_path / "app.log.1").write_text("2026-12-03T09:00:00.000Z [app] an older run\n")
    log = tmp_path / "app.log"
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": None},
                                   path=str(tmp_path))
    lines = logs.lines(system, "app", follow=True)
    assert next(lines) == "2026-12-03T09:00:00.000Z [app] an older run"
    log.write_text("2026-12-03T10:00:01.000Z [app] line 1\n")
    _rotate(log)
    log.write_text("2026-12-03T10:00:02.000Z [app] line 2\n")
    assert [next(lines), next(lines)] == ["2026-12-03T10:00:01.000Z [app] line 1",
                                          "2026-12-03T10:00:02.000Z [app] line 2"]


def test_the_merged_view_shows_a_compartments_events_among_its_lines_in_the_order_they_came(
        tmp_path, monkeypatch):
    """A review of `wsuper logs`: the merged view took every event from
    supervisor.log and merged by the millisecond, events first on a tie, so that
    `finished app exit=0` came before the last lines app wrote in that millisecond.
    Each event about a compartment is now taken where that compartment's file has
    it, among its lines, and every line is still shown once (with -f too)."""
    monkeypatch.setattr(logs.time, "sleep", lambda _s: None)
    t0, t1 = "2026-12-03T10:00:00.000Z", "2026-12-03T10:00:01.000Z"
    (tmp_path / "supervisor.log").write_text(
        f"{t0} wsuper: ready app pid=1\n{t0} wsuper: ready calc pid=2\n"
        f"{t1} wsuper: finished app exit=0\n{t1} wsuper: stopping (wsuper stop)\n")
    (tmp_path / "app.log").write_text(
        f"{t0} wsuper: ready app pid=1\n{t0} [app] one\n{t1} [app] two\n{t1} [app] three\n"
        f"{t1} wsuper: finished app exit=0\n{t1} [app] four\n"
        f"{t1} wsuper: 2 lines were not written to the log files (the disk did not keep up)\n")
    (tmp_path / "calc.log").write_text(f"{t1} [calc] five\n")   # its "ready": rotated away
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": 0, "calc": 0},
                                   path=str(tmp_path))
    expected = [f"{t0} wsuper: ready app pid=1", f"{t0} wsuper: ready calc pid=2",
                f"{t0} [app] one", f"{t1} [app] two", f"{t1} [app] three",
                f"{t1} wsuper: finished app exit=0", f"{t1} wsuper: stopping (wsuper stop)",
                f"{t1} [app] four", f"{t1} [calc] five"]
    shown = list(logs.lines(system))
    assert shown == expected, shown
    followed = logs.lines(system, follow=True)
    assert [next(followed) for _ in expected] == expected
    with open(tmp_path / "supervisor.log", "a") as f:
        f.write(f"{t1} wsuper: ready app pid=3\n")
    with open(tmp_path / "app.log", "a") as f:
        f.write(f"{t1} [app] six\n{t1} wsuper: ready app pid=3\n{t1} [app] seven\n")
    assert [next(followed) for _ in range(3)] == \
        [f"{t1} [app] six", f"{t1} wsuper: ready app pid=3", f"{t1} [app] seven"]
    followed.close()


def test_the_merged_view_keeps_every_files_order_and_shows_each_line_once(tmp_path):
    """The same on random runs: whatever lines share a millisecond, the merged view
    shows each line once, supervisor.log's events in their order, and each
    compartment's lines and events about it in the order its file has them."""
    import random
    rnd = random.Random(77)
    for run in range(40):
        folder = tmp_path / str(run)
        folder.mkdir()
        names = ["app", "calc", "db"][:rnd.randint(1, 3)]
        files = {n: [] for n in ["supervisor", *names]}
        ms, seen = 0, 0
        for _ in range(rnd.randint(1, 60)):
            ms += rnd.choice((0, 0, 0, 1))
            t = f"2026-12-03T10:00:{ms // 1000:02d}.{ms % 1000:03d}Z"
            seen += 1
            who = rnd.choice([None, *names])
            if rnd.random() < 0.4:                      # an event, about who (or no one)
                line = f"{t} wsuper: event {seen}" + (f" about {who}" if who else "")
                files["supervisor"].append(line)
                if who:
                    files[who].append(line)
            elif who:
                files[who].append(f"{t} [{who}] line {seen}")
        for n, lines in files.items():
            (folder / f"{n}.log").write_text("".join(l + "\n" for l in lines))
        system = types.SimpleNamespace(logs=str(folder), compartments=dict.fromkeys(names),
                                       path=str(folder))
        shown = list(logs.lines(system))
        plugin = [l for n in names for l in files[n] if f"[{n}]" in l]
        assert sorted(shown) == sorted(files["supervisor"] + plugin)
        assert [l for l in shown if " wsuper: " in l] == files["supervisor"]
        for n in names:
            assert [l for l in shown if l in set(files[n])] == files[n], (run, n)
        assert [logs._time(l) for l in shown] == sorted(logs._time(l) for l in shown)


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_rotation_while_the_logs_are_read_loses_no_file(tmp_path, monkeypatch, after):
    """A review of `wsuper logs`: the files were read oldest first, name after name,
    so a rotation between two reads (app.log -> app.log.1, a new app.log) had the
    file that was current read under neither name: its lines were not shown, and
    nothing said so.  A rotation at any moment of the reading shows every line
    of the files as they were, once, in order."""
    t = "2026-12-03T10:00:00.000Z"
    (tmp_path / "app.log.2").write_text(f"{t} [app] a\n")
    (tmp_path / "app.log.1").write_text(f"{t} [app] b\n")
    (tmp_path / "app.log").write_text(f"{t} [app] c\n")
    (tmp_path / "supervisor.log").write_text("")
    opened = []
    real_open = open

    def rotating_open(path, *args, **kw):
        f = real_open(path, *args, **kw)
        if str(path).startswith(str(tmp_path / "app.log")):
            opened.append(path)
            if len(opened) == after:        # the system rotates right then
                _rotate(tmp_path / "app.log")
                (tmp_path / "app.log").write_text(f"{t} [app] d\n")
        return f
    monkeypatch.setattr(logs, "open", rotating_open, raising=False)
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": 0},
                                   path=str(tmp_path))
    for compartment in (None, "app"):
        opened.clear()
        for p in ("app.log", "app.log.1", "app.log.2", "app.log.3"):
            if (tmp_path / p).exists():
                os.unlink(tmp_path / p)
        for p, x in (("app.log.2", "a"), ("app.log.1", "b"), ("app.log", "c")):
            (tmp_path / p).write_text(f"{t} [app] {x}\n")
        shown = [line.rpartition(" ")[2] for line in logs.lines(system, compartment)]
        assert shown in (["a", "b", "c"], ["a", "b", "c", "d"]), (after, shown)


class _Polled(Exception):
    pass


@pytest.mark.parametrize("after", [1, 2, 3, 4])
def test_a_rotation_while_the_followed_logs_are_first_read_loses_no_file(tmp_path,
                                                                      monkeypatch, after):
    """A review of `wsuper logs -f`: the rotated files older than the one followed
    were listed (their names and inodes), then read by name: a rotation between
    the two had a name read that by then named another file, the followed one
    among them (its lines shown twice) while the oldest was read under no name.
    A rotation at any moment of the first reading shows every line once, in
    order."""
    t = "2026-12-03T10:00:00.000Z"
    opened, polls, rotated = [], [], []
    real_open = open

    def rotating_open(path, *args, **kw):
        f = real_open(path, *args, **kw)
        if str(path).startswith(str(tmp_path / "app.log")):
            opened.append(path)
            if len(opened) == after:        # the system rotates right then
                rotated.append(1)
                _rotate(tmp_path / "app.log")
                (tmp_path / "app.log").write_text(f"{t} [app] d\n")
        return f

    def sleep(_s):
        polls.append(1)
        if len(polls) > 2:
            raise _Polled
    monkeypatch.setattr(logs, "open", rotating_open, raising=False)
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(sleep=sleep))
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": 0},
                                   path=str(tmp_path))
    (tmp_path / "supervisor.log").write_text("")
    for compartment in (None, "app"):
        opened.clear()
        polls.clear()
        rotated.clear()
        for p in ("app.log", "app.log.1", "app.log.2", "app.log.3", "app.log.4"):
            if (tmp_path / p).exists():
                os.unlink(tmp_path / p)
        for p, x in (("app.log.2", "a"), ("app.log.1", "b"), ("app.log", "c")):
            (tmp_path / p).write_text(f"{t} [app] {x}\n")
        shown = []
        with pytest.raises(_Polled):
            for line in logs.lines(system, compartment, follow=True):
                shown.append(line.rpartition(" ")[2])
        assert rotated or after > 3        # the first reading opens the files 3 times
        assert shown == ["a", "b", "c"] + ["d"] * len(rotated), (after, compartment, shown)


@pytest.mark.parametrize("after", [1, 2, 3, 4, 5])
def test_a_rotation_while_a_followed_log_catches_up_on_its_rotations_loses_no_file(
        tmp_path, monkeypatch, after):
    """A review of `wsuper logs -f`: a look that found its file rotated (twice since
    the last one: app.log -> .2, another -> .1, a new app.log) listed the files
    rotated after it by name and inode, then read them by name: a rotation between
    the two had the name read that named the new current file by then (its lines
    shown twice) and the file rotated after the followed one under no name.
    A rotation at any moment of the look (at any open or stat of the files)
    shows every line once, in order."""
    t = "2026-12-03T10:00:00.000Z"
    (tmp_path / "supervisor.log").write_text("")
    (tmp_path / "app.log").write_text(f"{t} [app] a\n")
    real_open, real_stat = open, os.stat
    looks, polls, rotated = [], [], []

    def look(path):
        if polls and not rotated and str(path).startswith(str(tmp_path / "app.log")):
            looks.append(path)
            if len(looks) == after:         # the system rotates right then
                rotated.append(1)
                _rotate(tmp_path / "app.log")
                (tmp_path / "app.log").write_text(f"{t} [app] d\n")

    def rotating_open(path, *args, **kw):
        f = real_open(path, *args, **kw)
        look(path)
        return f

    def rotating_stat(path, *args, **kw):
        st = real_stat(path, *args, **kw)
        look(path)
        return st

    def sleep(_s):
        if not polls:                       # twice rotated since the first look
            for x in "bc":
                _rotate(tmp_path / "app.log")
                (tmp_path / "app.log").write_text(f"{t} [app] {x}\n")
        polls.append(1)
        if len(polls) > 3:
            raise _Polled
    monkeypatch.setattr(logs, "open", rotating_open, raising=False)
    monkeypatch.setattr(os, "stat", rotating_stat)
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(sleep=sleep))
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={"app": 0},
                                   path=str(tmp_path))
    shown = []
    with pytest.raises(_Polled):
        for line in logs.lines(system, "app", follow=True):
            shown.append(line.rpartition(" ")[2])
    assert shown == ["a", "b", "c"] + ["d"] * len(rotated), (after, shown)


@pytest.mark.parametrize("spoil", ["mode", "symlink", "owner"])
def test_logs_never_shows_a_log_directory_up_refuses(tmp_path, capsys, spoil):
    """`up` writes its logs only in a real directory of the user's that nobody else
    may write to (endpoint.own_dir), and refuses to run with any other; `wsuper
    logs` read whatever it found there: a directory another user made first (or
    one others may write to, or a link to one) held lines of their choosing, shown
    as the system's, terminal escapes raw (a window title set, the screen
    cleared), with exit 0."""
    from supervisor import cli
    folder = tmp_path / "logs"
    if spoil == "mode":
        folder.mkdir()
        os.chmod(folder, 0o777)
    elif spoil == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        os.symlink(tmp_path / "elsewhere", folder)
    else:
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
    (folder / "supervisor.log").write_text(
        "2026-12-03T10:00:00.000Z wsuper: ready app pid=1 \x1b]0;owned\x07\x1b[2J\n")
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\nlogs = "{folder}"\n[compartments.app]\n'
                      f'module = "app.wat"\n')
    assert cli.main(["logs", str(system)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "owned" not in err and "\x1b" not in err
    assert err.startswith("wsuper: error: no logs of yours") and str(folder) in err, err


def test_every_line_shown_is_escaped_whatever_the_file_holds(tmp_path):
    """The system writes its log lines escaped (output.py); what else a file holds
    (a line from another version, an editor's) is escaped when shown, and only a
    newline ends a line: no line moves the cursor, nor starts another (a \\r,
    U+2028 or U+0085 inside one ended it there, the rest shown as a line of its
    own, time included)."""
    (tmp_path / "supervisor.log").write_bytes(
        "2026-12-03T10:00:00.000Z wsuper: a \x1b[2J b\r2026-12-03T10:00:09.000Z wsuper: "
        "fake\u2028c\x85d\\x1b\n2026-12-03T10:00:01.000Z wsuper: two\n".encode())
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={}, path=str(tmp_path))
    assert list(logs.lines(system)) == [
        "2026-12-03T10:00:00.000Z wsuper: a \\x1b[2J b\\r2026-12-03T10:00:09.000Z wsuper: "
        "fake\\u2028c\\x85d\\x1b",
        "2026-12-03T10:00:01.000Z wsuper: two"]


@pytest.mark.parametrize("after", ["shorter", "longer"])
def test_a_followed_log_truncated_in_place_is_read_again_from_its_start(tmp_path, monkeypatch,
                                                                         after):
    """A log truncated in place (logrotate's copytruncate, `: > NAME.log`): the
    system appends from the new end (O_APPEND), and `-f` read on from its old
    offset: nothing was shown until the file grew past it (lines lost), then the
    rest of some line from its middle (a line without its time)."""
    log = tmp_path / "supervisor.log"
    log.write_text("2026-12-03T10:00:00.000Z wsuper: " + "x" * 200 + "\n")
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={}, path=str(tmp_path))
    polls = []

    def sleep(_seconds):
        polls.append(1)
        assert len(polls) < 3, "a line written after the truncation was never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    lines = logs.lines(system, follow=True)
    assert next(lines).endswith("x" * 200)
    os.truncate(log, 0)
    new = ["2026-12-03T10:00:01.000Z wsuper: after"] if after == "shorter" else \
        [f"2026-12-03T10:00:0{i}.000Z wsuper: {'y' * 150}" for i in range(1, 3)]
    with open(log, "a") as f:
        f.write("".join(line + "\n" for line in new))
    assert [next(lines) for _ in new] == new


@pytest.mark.parametrize("lines_of", ["the same length", "one byte more", "two lines"])
def test_a_followed_log_truncated_and_written_past_its_old_offset_loses_no_line(
        tmp_path, monkeypatch, lines_of):
    """After a truncation in place, lines written past the old offset before `-f`
    looked again (a ticker's lines, all of one length, are the common case) left
    a newline just before the old offset: `-f` took the file as appended to,
    read on from there, and every line written before that offset since the
    truncation was lost, without a word."""
    log = tmp_path / "supervisor.log"
    old = [f"2026-12-03T10:00:0{i}.000Z wsuper: tick {i}" for i in range(3)]
    log.write_text("".join(line + "\n" for line in old))
    system = types.SimpleNamespace(logs=str(tmp_path), compartments={}, path=str(tmp_path))
    polls = []

    def sleep(_seconds):
        polls.append(1)
        assert len(polls) < 3, "lines written after the truncation were never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    lines = logs.lines(system, follow=True)
    assert [next(lines) for _ in old] == old
    os.truncate(log, 0)
    extra = {"the same length": "", "one byte more": "x", "two lines": ""}[lines_of]
    new = [f"2026-12-03T10:00:1{i}.000Z wsuper: tick {i}{extra}" for i in range(
        3 if lines_of != "two lines" else 4)]
    with open(log, "a") as f:
        f.write("".join(line + "\n" for line in new))
    assert [next(lines) for _ in new] == new


@pytest.mark.parametrize("swapped_for", ["symlink", "mode", "owner"])
@pytest.mark.parametrize("follow", [False, True])
def test_logs_never_reads_a_log_directory_swapped_in_after_its_check(tmp_path, monkeypatch,
                                                                     swapped_for, follow):
    """The log directory was checked by its path (endpoint.foreign_dir) and its files
    then opened by path: in a parent others may write to, the checked directory
    could be swapped for theirs in between (a link to it, or one of theirs), and
    its lines were shown as the system's.  The directory is opened once, checked
    by its descriptor, and read through it: here the swap comes right after the
    check, and the forged lines are never shown."""
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "supervisor.log").write_text("2026-12-03T10:00:00.000Z wsuper: real\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    (theirs / "supervisor.log").write_text("2026-12-03T10:00:00.000Z wsuper: forged\n")
    if swapped_for == "mode":
        os.chmod(theirs, 0o777)
    elif swapped_for == "owner":
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        os.chown(theirs, 65534, 65534)
    checked = endpoint.foreign_dir

    def check_then_swap(path, what):
        problem = checked(path, what)
        os.rename(folder, tmp_path / "was-ours")
        if swapped_for == "symlink":
            os.symlink(theirs, folder)
        else:
            os.rename(theirs, folder)
        return problem
    monkeypatch.setattr(endpoint, "foreign_dir", check_then_swap)
    monkeypatch.setattr(logs.time, "sleep", lambda _s: pytest.fail("nothing to follow"))
    system = types.SimpleNamespace(logs=str(folder), compartments={}, path=str(tmp_path))
    with pytest.raises(logs.NoLogs, match="no logs of yours") as e:
        next(logs.lines(system, follow=follow))
    assert "forged" not in str(e.value)


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_following_goes_on_in_a_log_directory_made_again(tmp_path, monkeypatch, how):
    """`-f` reads through the directory it pinned at its start: removed or moved
    away while the system ran, and made again there by it (LogFiles._make_again),
    the directory followed was one nothing more was written to, and `-f` showed
    no line again, silently (seen with `wsuper up`, `wsuper logs -f` and an
    `rm -rf` of the log directory).  What the old one gained before it was left is
    shown, then every line of the new one, each once."""
    import shutil
    polls = []

    def sleep(_seconds):                 # looks that find nothing: the line is lost
        polls.append(1)
        assert len(polls) < 5, "a line of the directory made again was never shown"
    monkeypatch.setattr(logs.time, "sleep", sleep)
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    log = folder / "app.log"
    log.write_text("2026-12-03T10:00:00.000Z [app] one\n")
    system = types.SimpleNamespace(logs=str(folder), compartments={"app": None},
                                   path=str(tmp_path / "system.toml"))
    lines = logs.lines(system, "app", follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z [app] one"
    if how == "moved":
        with open(log, "a") as f:        # written just before it was moved
            f.write("2026-12-03T10:00:01.000Z [app] two\n")
        os.rename(folder, tmp_path / "moved")
    else:
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)             # what the system does at its next batch
    (folder / "app.log").write_text("2026-12-03T10:00:02.000Z [app] three\n")
    got = [next(lines)] if how == "removed" else [next(lines), next(lines)]
    polls.clear()
    expected = (["2026-12-03T10:00:01.000Z [app] two"] if how == "moved" else []) + \
        ["2026-12-03T10:00:02.000Z [app] three"]
    assert got == expected
    with open(folder / "app.log", "a") as f:
        f.write("2026-12-03T10:00:03.000Z [app] four\n")
    assert next(lines) == "2026-12-03T10:00:03.000Z [app] four"
    lines.close()


def test_following_a_log_directory_removed_again_as_it_is_pinned_goes_on(tmp_path,
                                                                          monkeypatch):
    """Removed again between `-f`'s look at the new directory and its opening (an
    `rm -rf` in a loop), the opening's failure ended `-f` with an error ("a symbolic
    link or something else was put there?"); nothing there is looked at again."""
    import shutil
    monkeypatch.setattr(logs.time, "sleep", lambda _s: None)
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "app.log").write_text("2026-12-03T10:00:00.000Z [app] one\n")
    system = types.SimpleNamespace(logs=str(folder), compartments={"app": None},
                                   path=str(tmp_path / "system.toml"))
    pinned, calls = logs._pinned, []

    def pin(system, path):
        calls.append(1)
        if len(calls) == 2:              # removed again just before it is opened
            shutil.rmtree(folder)
        return pinned(system, path)
    monkeypatch.setattr(logs, "_pinned", pin)
    lines = logs.lines(system, "app", follow=True)
    assert next(lines) == "2026-12-03T10:00:00.000Z [app] one"
    shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    (folder / "app.log").write_text("2026-12-03T10:00:01.000Z [app] two\n")
    real_stat, looks = os.stat, []

    def stat(path, *args, **kw):         # the system makes it again after the second look
        if path == str(folder):
            looks.append(1)
            if len(looks) == 2 and not os.path.lexists(folder):
                folder.mkdir(mode=0o700)
                (folder / "app.log").write_text("2026-12-03T10:00:02.000Z [app] three\n")
        return real_stat(path, *args, **kw)
    monkeypatch.setattr(logs.os, "stat", stat)
    assert next(lines) == "2026-12-03T10:00:02.000Z [app] three"
    lines.close()


@pytest.mark.parametrize("follow", [False, True])
@pytest.mark.parametrize("plant", ["fifo", "link to /dev/zero", "directory",
                                   "rotated fifo"])
def test_a_log_file_that_is_no_regular_file_is_named_not_waited_for_nor_read(
        tmp_path, plant, follow):
    """The system writes only a regular file as a log (output._append: a FIFO or a
    link there and its log files stop, said).  `wsuper logs` opened what it found:
    a FIFO under a log's name held it for ever, waiting for a writer, and a link to
    /dev/zero was read until a MemoryError traceback.  It is refused, named."""
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "supervisor.log").write_text("2026-12-03T10:00:00.000Z wsuper: ready app\n")
    bad = folder / ("app.log.1" if plant == "rotated fifo" else "app.log")
    if "fifo" in plant:
        os.mkfifo(bad)
    elif plant == "directory":
        bad.mkdir()
    else:
        os.symlink("/dev/zero", bad)
    system = types.SimpleNamespace(logs=str(folder), compartments={"app": None},
                                   path=str(tmp_path / "system.toml"))
    with pytest.raises(logs.NoLogs) as e:
        for _line in logs.lines(system, follow=follow):
            pass
    assert str(e.value).startswith(f"log file {bad} is ") and "not a regular file" in str(e.value)


@pytest.mark.parametrize("spoil", ["missing", "broken"])
def test_logs_shows_a_systems_logs_whatever_its_policy_files_say_now(tmp_path, capsys, spoil):
    """`wsuper logs` needs the system file's [system] logs and its compartments'
    names, which no policy file holds (grants and limits only), but parsed the
    policy files too: one shared with other systems and removed, or edited into a
    file that no longer parses, since `up` locked the operator out of the running
    system's logs ("cannot read policy file ..."), as it did of `wsuper call`
    (policy.read_alone) before."""
    from supervisor import cli
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "supervisor.log").write_text("2026-12-03T10:00:00.000Z wsuper: ready app pid=1\n")
    (folder / "app.log").write_text("2026-12-03T10:00:01.000Z [app] hello\n")
    if spoil == "broken":
        (tmp_path / "shared.toml").write_text("[grants]\nlog = { host = \n")
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\nlogs = "{folder}"\n[compartments.app]\n'
                      f'module = "app.wat"\npolicy = "shared.toml"\n')
    assert cli.main(["logs", str(system)]) == 0, capsys.readouterr()
    out, err = capsys.readouterr()
    assert "ready app pid=1" in out and "hello" in out and err == "", (out, err)
    assert cli.main(["logs", str(system), "app"]) == 0
    assert "hello" in capsys.readouterr().out


@pytest.mark.parametrize("spoil", ["missing", "broken"])
def test_an_output_file_is_never_one_of_the_systems_own_whatever_its_policy_files_say(
        tmp_path, spoil):
    """`wsuper trace S -o FILE` and `check --graph FILE` refuse to write over the
    system's own files (the audit, a module, a schema, a log file); they read the
    system file and its policy files to know them, and a policy file removed, or
    edited into one that does not parse, since `up` gave the system file alone:
    `wsuper trace S -o audit.jsonl` wrote its JSON over the running system's audit
    records (seen live).  No policy file holds any of those paths."""
    from supervisor import cli
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    for name in ("app.wat", "calc.capnp", "audit.jsonl"):
        (tmp_path / name).write_text("")
    if spoil == "broken":
        (tmp_path / "shared.toml").write_text("[grants]\nlog = { host = \n")
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\nschemas = ["calc.capnp"]\naudit = "audit.jsonl"\n'
                      f'logs = "{folder}"\n[compartments.app]\nmodule = "app.wat"\n'
                      f'policy = "shared.toml"\n')
    for name, what in (("audit.jsonl", "the audit file"), ("app.wat", "module"),
                       ("calc.capnp", "the schema file"), ("system.toml", "the system file"),
                       ("logs/supervisor.log", "log directory")):
        problem = cli.overwrites("-o", str(tmp_path / name), str(system))
        assert problem is not None and what in problem, (name, problem)
    if spoil == "broken":
        problem = cli.overwrites("-o", str(tmp_path / "shared.toml"), str(system))
        assert problem is not None and "the policy file" in problem, problem
    assert cli.overwrites("-o", str(tmp_path / "trace.json"), str(system)) is None


def test_an_output_file_is_refused_when_the_system_file_does_not_say_which_are_its_own(
        tmp_path):
    """A system file edited since `up` into one that does not parse named none of the
    system's own files but itself (policy.files_of), and `wsuper trace S -o FILE`
    wrote anywhere, the running system's audit file too: it is refused now, saying
    why, until the file reads again."""
    from supervisor import cli
    (tmp_path / "audit.jsonl").write_text('{"event":"run started"}\n')
    system = tmp_path / "system.toml"
    system.write_text('[system]\naudit = "audit.jsonl"\n[compartments.app]\nmodule = \n')
    problem = cli.overwrites("-o", str(tmp_path / "audit.jsonl"), str(system))
    assert problem is not None and "cannot tell whether it is one of the system's own " \
        "files" in problem and "invalid TOML" in problem, problem


@pytest.mark.parametrize("how", ["symlink", "hard link", "dangling symlink",
                                 "dangling symlink to a rotation"])
def test_an_output_file_that_leads_to_a_systems_own_file_is_refused(tmp_path, how):
    """`trace -o` and `check --graph` open their output as open() does, following
    symbolic links; the log directory was compared with the directory of the path
    as given, and files_of by samefile alone (which fails for a file not made
    yet): `-o trace.json`, a symbolic or hard link to logs/supervisor.log, or a
    dangling link to a log or an audit rotation still to come, was 'another
    file', and the trace went into the running system's log directory (its log
    emptied) or became its audit rotation."""
    from supervisor import cli
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "supervisor.log").write_text("2026-12-03T10:00:00.000Z wsuper: ready\n")
    (tmp_path / "app.wat").write_text("")
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\naudit = "audit.jsonl"\naudit_keep = 2\nlogs = "{folder}"\n'
                      f'[compartments.app]\nmodule = "app.wat"\n')
    out = tmp_path / "trace.json"
    if how == "symlink":
        out.symlink_to(folder / "supervisor.log")
    elif how == "hard link":
        os.link(folder / "supervisor.log", out)
    elif how == "dangling symlink":
        out.symlink_to(folder / "app.log")
    else:
        out.symlink_to(tmp_path / "audit.jsonl.2")
    problem = cli.overwrites("-o", str(out), str(system))
    assert problem is not None and ("log directory" in problem or "audit" in problem), problem
    assert cli.overwrites("-o", str(tmp_path / "other.json"), str(system)) is None
