import os
import socket

import pytest

from tests.conftest import EXAMPLES


def test_wsuper_call_says_a_full_backlog_is_a_busy_system_not_a_silent_one(tmp_path):
    """`wsuper call` waits, within its timeout, for room in a full backlog of the
    external socket (a local process that keeps it full).  When none came, it said
    'no answer within 0.5 s', as if the system had taken the call and not answered;
    the operator's commands say the system is busy (endpoint.connect_admin), and so
    does a call now."""
    import capnp_schemas
    from supervisor import client
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)                # never accepts
    queued = []
    try:
        while True:                                  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        calc = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp")).Calc
        with pytest.raises(client.CallFailed) as e:
            client.call(path, "calc", calc, "add", {"a": 1, "b": 2}, timeout=0.5)
        assert "is busy: its socket took no connection within 0.5 s" in str(e.value)
        assert path in str(e.value)
        # one the backlog takes, but that is never answered, is told so
        for s in queued:
            s.close()
        queued.clear()
        server, _ = listener.accept()       # one of those closed: room again
        server.close()
        with pytest.raises(client.CallFailed) as e:
            client.call(path, "calc", calc, "add", {"a": 1, "b": 2}, timeout=0.5)
        assert str(e.value) == "no answer within 0.5 s", e.value
    finally:
        for s in queued:
            s.close()
        listener.close()
