"""The supervisor's end of the zygote when the zygote goes with requests unread."""
import socket
import subprocess

import trio

from supervisor import process


def test_a_zygote_gone_with_a_request_unread_ends_its_run_not_the_supervisor():
    """A review of the stop racing start-up: the stop ends the zygote (its stop signal)
    while requests for engines may still be in its socket, unread.  Its end of a
    Unix socket closed with data unread makes the supervisor's recv fail with
    ECONNRESET, not end: Zygote.run raised it, and `wsuper up` ended in a
    traceback with exit 1 instead of its stop's 143 (seen 2 in 6 runs of
    test_a_start_under_way_when_the_stop_ends_the_zygote_is_no_failure).  A
    zygote whose socket fails is gone, as one whose socket ended."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    zygote = object.__new__(process.Zygote)
    zygote._popen = subprocess.Popen(["true"])
    zygote.pid = zygote._popen.pid
    zygote._raw = ours
    zygote._sock = trio.socket.from_stdlib_socket(ours)
    zygote._waiting = {}
    zygote._engines = {}
    zygote._early = {}
    zygote.alive = True
    ours.send(b'1 {"request": "never read"}\n')
    theirs.close()                  # gone, the request unread: ECONNRESET here
    answer = process._Answer()
    zygote._waiting[1] = answer

    async def main():
        with trio.fail_after(10):
            await zygote.run()
    trio.run(main)
    assert not zygote.alive and answer.value is None
    ours.close()
