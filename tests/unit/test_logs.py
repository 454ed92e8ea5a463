"""`wsuper logs -f` (supervisor/logs.py) on real files: a line written while the
files are first read is shown by the following, once, never lost between the two."""
import types

from supervisor import logs


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
