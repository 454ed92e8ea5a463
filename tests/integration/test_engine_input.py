"""The engine never crashes on its own input.

A real engine, forked by the real zygote and confined, is driven here by a
test playing the supervisor: what the engine cannot handle ends that one
call with a clear error; bytes that break the protocol make it say so on
stderr and exit with EXIT_PROTOCOL; a request the zygote cannot read is
refused before anything is forked."""
import os
import socket

import pytest
import trio

from capnp_schemas import engine as engine_schema, payloads, protocol, wire
from capnp_schemas.protocol import Content
from compartments import engine
from compartments.spec import EngineSpec
from supervisor.process import Zygote
from tests.conftest import EXAMPLES

ENGINE = engine_schema.Engine.schema.node.id
CALC = 0xC0FFEE0000000001
USER = (65534, 65534) if os.geteuid() == 0 else None


class Supervisor:
    """Our end of one engine's socket: a protocol.Connection and blocking I/O."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.conn = protocol.Connection("test->engine")
        sock.settimeout(30)

    def call(self, target, interface, method, content=protocol.EMPTY, caps=()):
        qid, data = self.conn.send_call(target, interface, method, content, list(caps))
        self.sock.sendall(data)
        while True:
            for ev in self.conn.receive(self.sock.recv(1 << 16)):
                if isinstance(ev, protocol.ReturnReceived) and ev.question_id == qid:
                    if ev.finish_needed:
                        self.sock.sendall(self.conn.send_finish(qid))
                    return ev

    def bootstrap(self) -> int:
        qid, data = self.conn.send_bootstrap()
        self.sock.sendall(data)
        while True:
            for ev in self.conn.receive(self.sock.recv(1 << 16)):
                if isinstance(ev, protocol.ReturnReceived) and ev.question_id == qid:
                    return ev.payload.caps[0].import_id


async def _with_engine(test, module=f"{EXAMPLES}/calc.wat"):
    """Run test(supervisor) against a fresh engine; returns (exit code, its stderr)."""
    zygote = Zygote()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(zygote.run)
        ours, theirs = socket.socketpair()
        try:
            proc = await zygote.spawn(EngineSpec("calc", module, exports=True, user=USER),
                                      theirs.fileno())
        finally:
            theirs.close()
        await trio.to_thread.run_sync(test, Supervisor(ours))
        ours.shutdown(socket.SHUT_WR)
        with trio.fail_after(30):
            code = await proc.wait()
            err = b""
            while chunk := await proc.stderr.receive_some(1 << 16):
                err += chunk
        ours.close()
        zygote.stop()
        nursery.cancel_scope.cancel()
    return code, err.decode()


def _start_params_whose_grants_are_text() -> Content:
    """Engine.start params, well framed, with a text where the grant list belongs."""
    seg = bytearray(payloads.StartParams.new_message().to_segments()[0])
    seg += bytes(8)
    loc = wire.struct_pointer_field([seg], (0, 0), 0)
    far = len(seg) // 8 - 1
    # list pointer, element size 2 (byte), 8 elements, pointing at the last word
    wire.set_word(seg, loc[1], ((far - loc[1] - 1) << 2) | 1 | (2 << 32) | (8 << 35))
    return Content.standalone([bytes(seg)])


def test_a_call_the_engine_cannot_handle_fails_alone_and_it_keeps_serving():
    answers = {}

    def test(sup: Supervisor):
        control = sup.bootstrap()
        answers["bad grants"] = sup.call(control, ENGINE, 0, _start_params_whose_grants_are_text())
        answers["no such method"] = sup.call(control, ENGINE, 9)
        answers["wrong interface"] = sup.call(control, 0x1234, 0)
        good = sup.call(control, ENGINE, 0, payloads.grants_content([]))
        answers["start"] = good
        answers["start again"] = sup.call(control, ENGINE, 0, payloads.grants_content([]))
        main = good.payload.caps[0].import_id
        params = payloads.method_structs(_calc(), "add")[0].new_message(a=40, b=2)
        answers["add"] = sup.call(main, CALC, 0, Content.standalone(params.to_segments()))

    code, err = trio.run(_with_engine, test)
    bad = answers["bad grants"]
    assert bad.payload is None and bad.error_type == "failed"
    assert "the engine could not handle this call" in bad.error
    assert answers["no such method"].error_type == "unimplemented"
    assert answers["wrong interface"].error_type == "unimplemented"
    assert answers["start"].payload is not None
    assert answers["start again"].error == "start called twice"
    add = answers["add"]
    reader = payloads.method_structs(_calc(), "add")[1].from_segments(add.payload.content.message())
    assert reader.sum == 42
    assert code == engine.EXIT_OK, err


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\x7f" + bytes(4),                              # 2^31 segments
    bytes(4) + (1 << 28).to_bytes(4, "little"),                  # one segment of 2 GiB
    bytes(4) + b"\x01\x00\x00\x00" + (0x0000000500000002).to_bytes(8, "little"),
])                                                # a root that is far, in segment 5
def test_bytes_that_break_the_protocol_end_the_engine_with_a_reason(garbage):
    def test(sup: Supervisor):
        sup.bootstrap()
        sup.sock.sendall(garbage)
        sup.sock.recv(1 << 16)                       # its Abort, or the end

    code, err = trio.run(_with_engine, test)
    assert code == engine.EXIT_PROTOCOL
    assert "wsuper engine calc: protocol error from supervisor:" in err


def test_the_zygote_refuses_a_request_it_cannot_read():
    async def main():
        zygote = Zygote()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote.run)
            bad = EngineSpec("calc", f"{EXAMPLES}/calc.wat", user=(0, 0))   # root: refused
            ours, theirs = socket.socketpair()
            with pytest.raises(OSError, match=r"the zygote refused: engine request: user: "):
                await zygote.spawn(bad, theirs.fileno())
            good = await zygote.spawn(EngineSpec("calc", f"{EXAMPLES}/calc.wat", user=USER),
                                      theirs.fileno())       # and it goes on serving
            assert good.pid > 0
            good.kill()
            await good.wait()
            zygote.stop()
            nursery.cancel_scope.cancel()
    trio.run(main)


def _calc():
    import capnp_schemas
    return capnp_schemas.load(f"{EXAMPLES}/calc.capnp").Calc


def test_requests_to_the_zygote_do_not_wait_for_each_others_fork():
    """Each request goes out as soon as the one before it is sent (`wsuper up` starts
    many compartments so); every answer still goes to its own request."""
    async def main():
        zygote = Zygote()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote.run)
            results, socks = {}, []

            async def spawn(i, spec, task_status=trio.TASK_STATUS_IGNORED):
                ours, theirs = socket.socketpair()
                socks.append(ours)
                try:
                    results[i] = (await zygote.spawn(spec, theirs.fileno(),
                                                     task_status.started), ours)
                except OSError as e:
                    results[i] = (e, ours)
                finally:
                    theirs.close()
            good = EngineSpec("calc", f"{EXAMPLES}/calc.wat", exports=True, user=USER)
            bad = EngineSpec("calc", f"{EXAMPLES}/calc.wat", user=(0, 0))  # root: refused
            specs = [good, bad, good, bad, good]
            async with trio.open_nursery() as requests:
                for i, spec in enumerate(specs):      # the next once this one is sent
                    await requests.start(spawn, i, spec)
            for i, spec in enumerate(specs):
                proc, sock = results[i]
                if spec is bad:
                    assert isinstance(proc, OSError) and "the zygote refused" in str(proc)
                else:           # an engine that answers on the socket it was given
                    assert await trio.to_thread.run_sync(Supervisor(sock).bootstrap) >= 0
                    proc.kill()
                    await proc.wait()
            for s in socks:
                s.close()
            zygote.stop()
            nursery.cancel_scope.cancel()
    trio.run(main)
