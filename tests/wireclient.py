"""A hand-driven Cap'n Proto RPC client for tests that must send what no stock
client would: our own sans-IO Connection on a blocking socket, plus raw bytes."""
from __future__ import annotations

import socket
import time

from capnp_schemas import hosted, payloads, protocol as P, wire
from capnp_schemas.protocol import Content

GATEWAY = hosted.GATEWAY
#: what one sendall of WireClient.send takes at most (its timeout bounds each)
SEND_PIECE = 1 << 16


class WireClient:
    def __init__(self, path: str, timeout: float = 10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        #: how long `wait` (and so `returned`) waits by default: the timeout the test
        #: chose for this client (a fixed 10 s failed a test that gave its client 60
        #: for 7 MiB calls nested in a cycle, on a loaded machine)
        self.timeout = timeout
        self.sock.connect(path)
        self.conn = P.Connection("test client")
        self.events: list = []

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        """All of `data`, in pieces of SEND_PIECE: the socket's timeout bounds how
        long the supervisor may take none of it, not how long it takes all of it.
        (sendall's timeout is for the whole of what it sends: under load, a test's
        10 MB of calls outlasted its 10 s and sendall stopped inside a message,
        which the supervisor rightly cut off after message_timeout.)"""
        view = memoryview(data)
        for at in range(0, len(view), SEND_PIECE):
            self.sock.sendall(view[at:at + SEND_PIECE])

    def pump(self) -> bool:
        """Read once; False at the end of the stream."""
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        self.events += self.conn.receive(data)
        return True

    def wait(self, match, timeout: float | None = None):
        """The first event for which `match(event)` is true (removed from the queue),
        within `timeout` (the client's own by default)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for ev in self.events:
                if match(ev):
                    self.events.remove(ev)
                    return ev
            if time.monotonic() > deadline or not self.pump():
                raise AssertionError(f"no such event; got {self.events}")

    def call_made_by_hand(self, target: int, interface_id: int, method_id: int = 0):
        """(question id, message, the object it passes): a Call on `target` passing one
        capability of this client's, on the protocol core's books as if it had sent it
        (its Return and the capability's Release are read as any), built with pycapnp
        for a test to change before it frames and sends it."""
        from capnp_schemas import rpc
        given = object()
        qid, _data = self.conn.send_call(target, interface_id, method_id, P.EMPTY, [given])
        msg = rpc.Message.new_message()
        call = msg.init("call")
        call.questionId, call.interfaceId, call.methodId = qid, interface_id, method_id
        call.target.importedCap = target
        call.init("params").init("capTable", 1)[0].senderHosted = self.conn.export_id(given)
        return qid, msg, given

    def returned(self, qid: int) -> P.ReturnReceived:
        ev = self.wait(lambda e: isinstance(e, P.ReturnReceived) and e.question_id == qid)
        if ev.finish_needed:
            self.send(self.conn.send_finish(qid))
        return ev

    def closed(self, timeout: float = 10) -> bool:
        """Whether the supervisor closes the connection (after an Abort) within `timeout`
        (it said True when the time ran out too, and so hid a connection the
        supervisor never closed)."""
        self.sock.settimeout(timeout)
        try:
            while self.pump():
                pass
        except P.ProtocolError:
            return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def bootstrap(self) -> int:
        qid, data = self.conn.send_bootstrap()
        self.send(data)
        return self.returned(qid).payload.caps[0].import_id

    def call(self, target: int, interface_id: int, method_id: int, content=P.EMPTY,
             caps=()) -> int:
        qid, data = self.conn.send_call(target, interface_id, method_id, content, list(caps))
        self.send(data)
        return qid

    def get(self, gateway: int, name: str) -> int:
        """Gateway.get(name): the import id of that compartment's main object."""
        m = GATEWAY.method("get")
        ret = self.returned(self.call(gateway, GATEWAY.id, m.ordinal,
                                      payloads.build(m.params, {"name": name})[0]))
        assert ret.payload is not None, ret.error
        return ret.payload.caps[0].import_id


def struct_content(data_words: list[int], pointers: list[int] = ()) -> Content:
    """A standalone message whose root struct has these data and pointer words."""
    d, p = len(data_words), len(pointers)
    words = [(d << 32) | (p << 48), *data_words, *pointers]
    return Content.standalone([b"".join(w.to_bytes(8, "little") for w in words)])


def patch(content: Content, byte: int, raw: bytes) -> Content:
    """`content` (one segment) with `raw` written at `byte`."""
    seg = bytearray(content.segments[0])
    seg[byte:byte + len(raw)] = raw
    return Content.standalone([bytes(seg)])


def frame(*segments: bytes) -> bytes:
    return wire.frame(list(segments))
