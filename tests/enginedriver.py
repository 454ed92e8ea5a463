"""An Engine driven in this process as the supervisor drives one: its recording
socket, the supervisor's side of the protocol, the start call with its grants,
and the main object it serves.  For unit tests of the engine with real wasmtime
(tests/unit/test_engine_*.py), which play the supervisor."""
from __future__ import annotations

from capnp_schemas import payloads, protocol
from compartments.engine import ENGINE_INTERFACE


class Driven:
    def __init__(self, engine, grants=(), caps=()):
        """Bootstrap `engine` and start it with `grants` ((name, kind, detail)
        triples) whose capabilities are `caps` (objects of ours)."""
        self.engine, self.sock = engine, engine.sock
        self.sup = protocol.Connection("supervisor")
        control = self.ask(self.sup.send_bootstrap()[1]).payload.caps[0].import_id
        self.started = self.ask(self.sup.send_call(
            control, ENGINE_INTERFACE, 0, payloads.grants_content(list(grants)),
            list(caps))[1])
        self.main = self.started.payload.caps[0].import_id

    def ask(self, msg):
        """Hand the engine one message and return the one event it answers with."""
        self.sock.batches.append(msg)
        self.engine._pump()
        self.engine._flush()
        [ev] = self.sup.receive(self.sock.writes.pop())
        return ev

    def events(self, msg) -> list:
        """Hand the engine one message and return every event it answers with."""
        self.sock.writes.clear()
        self.sock.batches.append(msg)
        self.engine._pump()
        self.engine._flush()
        return self.sup.receive(b"".join(self.sock.writes))
