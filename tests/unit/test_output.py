"""What the operator sees of a compartment: its engine's stderr, held to log_rate."""
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
