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
