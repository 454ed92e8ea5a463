"""Throughput with a client that costs next to nothing per call (loadgen.c).

    python benchmarks/loadgen.py SOCKET CALLS [gw]     prints calls/s

A throughput figure should measure the server.  The pycapnp client of
peers.py spends 27-36 us of CPU on each call, as much as the systems it
drives, so with it every target tops out near the client's own rate.  Here
Python does the handshake on a Unix socket with the project's own protocol
core (Bootstrap, and Gateway.get("calc") with `gw`), and then hands the
socket to loadgen.c, which keeps IN_FLIGHT calls of Calc.add(2, 3) open
(each Return is answered at once with its Finish and a new Call, one write
per read), checks every result, and times CALLS calls after a warm-up.  The
same client drives pycapnp's server, pycapnp's relay and wsuper's external
endpoint, so the three figures compare the servers alone.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from capnp_schemas import hosted, payloads, protocol as P, rpcwire  # noqa: E402

CALC_ID = 0xc0ffee0000000001
IN_FLIGHT = 100
QID_BASE = 1000          # far above the handshake's question ids


def build(d: str) -> str:
    exe = os.path.join(d, "loadgen")
    if not os.path.exists(exe):
        subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(HERE, "loadgen.c")], check=True)
    return exe


def _returned(sock, conn: P.Connection, qid: int) -> P.ReturnReceived:
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the server closed the connection during the handshake")
        for ev in conn.receive(data):
            if isinstance(ev, P.ReturnReceived) and ev.question_id == qid:
                if ev.payload is None:
                    raise RuntimeError(f"the handshake failed: {ev.error}")
                if ev.finish_needed:
                    sock.sendall(conn.send_finish(qid))
                return ev


def _at(a: bytes, b: bytes) -> int:
    """The byte where two messages that differ only in a question id differ."""
    diff = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
    if len(a) != len(b) or not diff or diff[-1] - diff[0] > 3:
        raise RuntimeError("the message templates differ in more than a question id")
    return diff[0]


def templates(conn: P.Connection, target: int) -> tuple[bytes, int, bytes, int]:
    """A framed Calc.add(2, 3) to `target` and a framed Finish, with the byte of
    each one's question id."""
    content = _add_params()
    calls = [conn.send_call(target, CALC_ID, 0, content)[1] for _ in range(2)]
    f0, f1 = rpcwire.encode_finish(QID_BASE), rpcwire.encode_finish(QID_BASE + 1)
    return calls[0], _at(calls[0], calls[1]), f0, _at(f0, f1)


def _add_params() -> P.Content:
    # Calc.add's params: a struct of one data word, a = 2 (bits 0-31), b = 3 (32-63)
    seg = (1 << 32).to_bytes(8, "little") + (2 | (3 << 32)).to_bytes(8, "little")
    return P.Content.standalone([seg])


def run(path: str, calls: int, gateway: bool, d: str, warm: int | None = None) -> float:
    """calls/s of `calls` Calc.add calls, IN_FLIGHT at a time, after `warm` more."""
    exe = build(d)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(path)
        conn = P.Connection("loadgen")
        qid, data = conn.send_bootstrap()
        sock.sendall(data)
        target = _returned(sock, conn, qid).payload.caps[0].import_id
        if gateway:
            m = hosted.GATEWAY.method("get")
            qid, data = conn.send_call(target, hosted.GATEWAY.id, m.ordinal,
                                       payloads.build(m.params, {"name": "calc"})[0])
            sock.sendall(data)
            target = _returned(sock, conn, qid).payload.caps[0].import_id
        call, call_at, finish, finish_at = templates(conn, target)
        sock.setblocking(True)
        warm = max(calls // 10, IN_FLIGHT) if warm is None else warm
        out = subprocess.run(
            [exe, str(sock.fileno()), str(calls), str(warm), str(IN_FLIGHT), str(QID_BASE),
             "5", call.hex(), str(call_at), finish.hex(), str(finish_at)],
            pass_fds=(sock.fileno(),), capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or f"loadgen exited {out.returncode}")
        return float(out.stdout.split()[0])
    finally:
        sock.close()


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        print(run(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["gw"], d))
