"""How the zygote cuts its control socket's bytes into requests, each with the
descriptors that came with it (compartments/zygote.py `_Lines`).

The supervisor sends a request's socket and stderr pipe with the request's first
bytes; a request longer than half the socket's send buffer goes in pieces, and
the kernel hands the descriptors over with the read that reaches their piece and
ends that read there.  The zygote took them for the first line that *ended* in
that read: a request in pieces had its descriptors closed (refused), and one whose
last piece came in one read with the next request's first piece took that
request's socket and stderr pipe.  Here reads are played as the kernel can cut
them (descriptors are numbers: nothing is closed)."""
import random

import pytest

from compartments.zygote import _Lines

REQUESTS = [(b"1 " + b"a" * 300, [10, 11]), (b"2 " + b"b" * 5, [20, 21]),
            (b'{"schema": "/s.capnp", "imports": []}', []),
            (b"3 " + b"c" * 1000, [30, 31]), (b"4 d", [40, 41])]


def _reads(requests, cuts):
    """The reads a kernel may return: each request's bytes cut at `cuts` of them
    (pieces), its descriptors with its first piece, each read ending at a piece
    with descriptors, and any number of pieces without them glued before it."""
    pieces = []
    for line, fds in requests:
        data = line + b"\n"
        points = sorted({0, len(data), *(c for c in cuts(len(data)) if 0 < c < len(data))})
        for i, (a, b) in enumerate(zip(points, points[1:])):
            pieces.append((data[a:b], fds if i == 0 else []))
    reads, data = [], b""
    for piece, fds in pieces:
        data += piece
        if fds or random.random() < 0.5:
            reads.append((data, list(fds)))
            data = b""
    if data:
        reads.append((data, []))
    return reads


@pytest.mark.parametrize("seed", range(200))
def test_each_request_gets_the_descriptors_it_was_sent_with_however_it_is_read(seed):
    random.seed(seed)
    cuts = [lambda n: (), lambda n: (n // 2,), lambda n: (1,), lambda n: (n - 1,),
            lambda n: random.sample(range(1, n), min(n - 1, 3))][seed % 5]
    lines, got, stray = _Lines(), [], []
    for data, fds in _reads(REQUESTS, cuts):
        whole, closed = lines.feed(data, fds)
        got += whole
        stray += closed
    assert got == [(line, fds, False) for line, fds in REQUESTS]
    assert stray == [] and not lines.pending() and lines.descriptors() == []


def test_a_request_in_pieces_keeps_its_descriptors_until_it_is_whole():
    lines = _Lines()
    assert lines.feed(b"1 head", [3, 4]) == ([], [])
    assert lines.descriptors() == [3, 4]           # the zygote's, closed by every child
    assert lines.feed(b" tail\n2 next", [5, 6]) == ([(b"1 head tail", [3, 4], False)], [])
    assert lines.descriptors() == [5, 6]
    assert lines.feed(b"\n", []) == ([(b"2 next", [5, 6], False)], [])


def test_descriptors_where_no_line_starts_and_a_line_too_long_are_given_back():
    lines = _Lines(limit=10)
    assert lines.feed(b"1 he", [3, 4]) == ([], [])
    assert lines.feed(b"ad", [5]) == ([], [5])         # in the middle of a line
    whole, stray = lines.feed(b"x" * 20, [])
    assert whole == [(b"1 headxxxx", [], True)] and stray == [3, 4]
    # the rest of that line is dropped, descriptors with it; the next line is whole
    assert lines.feed(b"yyy", [7]) == ([], [7])
    assert lines.feed(b"yy\n2 ok\n", []) == ([(b"2 ok", [], False)], [])
    assert lines.feed(b"3 x\n", [8, 9]) == ([(b"3 x", [8, 9], False)], [])
