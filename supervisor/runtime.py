"""The trio side: engine processes, sockets, the external endpoint, shutdown.

Everything that decides lives in router.py; this module moves bytes between
sockets and the router and performs the effects it returns.
"""
from __future__ import annotations

import collections
import json
import math
import os
import signal
import socket as pysocket
import sys

import trio

from compartments import confine
from compartments.limits import Limits
from compartments.spec import EngineSpec

from . import router as R
from .preflight import Plan
from .process import Zygote
from .supervision import Supervision, Throttle

GRACE_SECONDS = 2.0
EXPIRY_TICK = 0.05      # call_time is enforced to within this
STDERR_LINE_LIMIT = 4096


def admin_socket_path(socket_path: str) -> str:
    """The admin socket (revocation) sits beside the external one: NAME.admin.sock."""
    base = socket_path[:-5] if socket_path.endswith(".sock") else socket_path
    return base + ".admin.sock"


def default_socket_path(system_path: str) -> str:
    """$XDG_RUNTIME_DIR/wsuper/NAME.sock, else /tmp/wsuper-UID/NAME.sock."""
    stem = os.path.splitext(os.path.basename(system_path))[0]
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = os.path.join(base, "wsuper") if base else f"/tmp/wsuper-{os.getuid()}"
    return os.path.join(folder, f"{stem}.sock")


class _Link:
    """A peer's socket.  Writes go straight to the (non-blocking) socket; only what
    the kernel does not take at once is queued, in order, for a writer task."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.send, self.recv = trio.open_memory_channel(math.inf)
        self.queued = 0
        self.closed = False
        self._reads = 0

    def write(self, data: bytes):
        if self.closed:
            return
        if not self.queued:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                n = 0
            except OSError:          # the peer is gone; its reader task reports it
                self.closed = True
                return
            if n == len(data):
                return
            data = data[n:]
        self.queued += 1
        try:
            self.send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True

    def close(self):
        self.closed = True
        self.send.close()

    async def receive(self) -> bytes:
        """The next bytes from the peer (b"" at its end), read straight from the
        non-blocking socket.  trio's SocketStream yields to the scheduler once more
        after every successful read, which cost more per message than routing it;
        here a task parks only when there is nothing to read, and every 16th
        read yields anyway, so a peer that never stops sending starves nobody."""
        self._reads += 1
        if self._reads % 16 == 0:
            await trio.lowlevel.checkpoint()
        while True:
            if self.stream.socket.fileno() != self.fd:
                return b""       # closed meanwhile: the number may belong to another socket
            try:
                return os.read(self.fd, 1 << 16)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from None

    async def writer(self):
        async with self.recv:
            async for data in self.recv:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.closed = True
                    return
                self.queued -= 1


class Supervisor:
    def __init__(self, plan: Plan, socket_path: str | None = None, out=None):
        self.plan = plan
        self.system = plan.system
        self.out = out or sys.stdout
        self.socket_path = socket_path or self.system.socket or \
            default_socket_path(self.system.path)
        self.router = R.Router(plan.main_interface, self.system.external, {
            c.name: c.limits for c in self.system.compartments.values()}, clock=trio.current_time,
            names=plan.names, audit=self.system.audit is not None,
            external_limits=self.system.external_limits or Limits())
        self._audit_file = None
        self._bound: dict[str, bool] = {}
        self.links: dict[int, _Link] = {}
        self.procs: dict = {}
        self.started: set[str] = set()
        self.programs: set[str] = set()
        self.running: set[str] = set()
        self.all_started = False
        # one number per incarnation: events about an older one are ignored
        self.generation = {name: 0 for name in self.system.compartments}
        self.supervision = {c.name: Supervision(c.restart)
                            for c in self.system.compartments.values()}
        self.exit_code = 0
        self.denials = Throttle(per_second=5)
        # WSUPER_STATS=1: engines time their calls, and start-up times are shown
        self.stats = os.environ.get("WSUPER_STATS") == "1"
        self._spawned_at: dict[str, float] = {}
        self._done = trio.Event()
        self._stderr_tail: dict[str, collections.deque] = {}

    def say(self, line: str):
        print(line, file=self.out, flush=True)

    # ------------------------------------------------------------ main

    async def run(self) -> int:
        _raise_fd_limit()
        for missing in confine.probe():
            self.say(f"wsuper: note: {missing}")
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._signals)
            nursery.start_soon(self._expire_calls)
            if self.system.external:
                await nursery.start(self._listen)
            if any(g.revocable for c in self.system.compartments.values() for g in c.grants):
                await nursery.start(self._admin)
            self.zygote = Zygote()
            nursery.start_soon(self.zygote.run)
            for comp in self.system.compartments.values():
                await self._spawn(comp)
            await self._done.wait()
            await self._stop_engines()
            self.zygote.stop()
            nursery.cancel_scope.cancel()
        for path in (self.socket_path, admin_socket_path(self.socket_path)):
            if self._bound.get(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self._audit_file is not None:
            self._audit_file.close()
        return self.exit_code

    def _finish(self, code: int = 0):
        if code:
            self.exit_code = code
        self._done.set()

    async def _expire_calls(self):
        """Fail calls that took longer than their callee's call_time."""
        while True:
            await trio.sleep(EXPIRY_TICK)
            if self.router.next_deadline() is not None:
                self._perform(self.router.expire())

    async def _signals(self):
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                self.say(f"wsuper: {signal.Signals(sig).name}, stopping")
                self._finish()
                return

    # ------------------------------------------------------------ engines

    async def _spawn(self, comp):
        ours, theirs = pysocket.socketpair(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        spec = EngineSpec(comp.name, comp.module, exports=comp.exports is not None,
                          per_call=comp.instance == "per_call", stats=self.stats,
                          limits=comp.limits, user=self.system.engine_user)
        if self.stats:
            self._spawned_at[comp.name] = trio.current_time()
        try:
            proc = await self.zygote.spawn(spec, theirs.fileno())
        except OSError as e:
            ours.close()
            self.say(f"wsuper: cannot start compartment {comp.name}: {e}")
            self._finish(1)
            return
        finally:
            theirs.close()
        self.nursery.start_soon(proc.watch)
        self.procs[comp.name] = proc
        grants = [R.GrantSpec(g.name, g.kind, g.target, self.plan.allow.get((comp.name, g.name)),
                              g.revocable, g.max_uses, g.expires_after, g.calls_per_second,
                              g.path, g.read_only, g.append_only, g.subdir,
                              g.max_bytes_written, g.args, g.vars, g.mount)
                  for g in comp.grants]
        pid, effects = self.router.add_engine(comp.name, grants)
        link = _Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        self.links[pid] = link
        self.nursery.start_soon(link.writer)
        stderr_done = trio.Event()
        self.nursery.start_soon(self._read_engine, comp.name, self.generation[comp.name], pid,
                                link, proc, stderr_done)
        self.nursery.start_soon(self._read_stderr, comp.name, proc, stderr_done)
        self._perform(effects)

    async def _respawn(self, comp, delay):
        gen = self.generation[comp.name]
        await trio.sleep(delay)
        if gen == self.generation[comp.name] and not self._done.is_set():
            await self._spawn(comp)

    async def _read_engine(self, name, gen, pid, link, proc, stderr_done):
        reason = None
        try:
            while True:
                data = await link.receive()
                if not data:
                    break
                self._perform(self.router.receive(pid, data))
                if pid not in self.router.peers:       # it broke the protocol: cut off
                    reason = "broke the protocol"
                    proc.kill()
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            reason = str(e) or "connection lost"
        code = await proc.wait()
        if code:                  # its own exit says more than the broken socket
            with trio.move_on_after(1):       # its last words, if it left any
                await stderr_done.wait()
            reason = _describe_exit(code)
            tail = self._stderr_tail.get(name)
            if tail:
                reason += f": {tail[-1]}"
        elif reason is None:
            reason = "exited"
        self._perform(self.router.disconnected(pid, f"engine {reason}"))
        await link.send.aclose()
        self.links.pop(pid, None)
        # A program that was running was handled through its Exited effect above.
        if gen == self.generation[name] and not self._done.is_set():
            self._stopped(name, True, f"engine {reason}")

    def _stopped(self, name: str, abnormal: bool, reason: str):
        """The current incarnation of `name` stopped: restart it, leave it, or give up."""
        comp = self.system.compartments[name]
        policy = comp.restart
        d = self.supervision[name].decide(trio.current_time(), abnormal)
        if d.action == "restart":
            self.generation[name] += 1
            self.say(f"wsuper: restarting {name} in {d.delay:g} s ({reason}; restart "
                     f"{d.attempt} of at most {policy.max_restarts} in "
                     f"{policy.restart_window:g} s)")
            self._perform(self.router.stop_engine(name, reason))
            self.procs[name].terminate()
            self.nursery.start_soon(self._respawn, comp, d.delay)
            return
        if d.action == "fail":
            self.generation[name] += 1
            holders = [c.name for c in self.system.compartments.values()
                       if any(g.kind == "compartment" and g.target == name for g in c.grants)]
            told = f"; calls from {', '.join(holders)} to it now fail" if holders else ""
            self.say(f"wsuper: compartment {name} failed for good: {d.reason} "
                     f"(last: {reason}){told}")
            self._perform(self.router.stop_engine(name, reason))
            self._perform(self.router.fail_compartment(name, d.reason))
            self.procs[name].terminate()
            self.exit_code = 1
            self.running.discard(name)
            if policy.critical:
                self.say(f"wsuper: {name} is critical: stopping the system")
                self._finish(1)
            self._check_done()
            return
        if abnormal:
            self.say(f"wsuper: compartment {name} stopped: {reason} ({d.reason})")
            if name in self.running:
                self.exit_code = 1
        self.running.discard(name)
        self._check_done()

    def _check_done(self):
        if self.all_started and self.programs and not self.running \
                and not self.system.external:
            self._finish()

    async def _read_stderr(self, name, proc, done):
        buf = b""
        tail = self._stderr_tail.setdefault(name, collections.deque(maxlen=5))
        async with proc.stderr:
            while True:
                try:
                    chunk = await proc.stderr.receive_some(1 << 14)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    done.set()
                    break
                buf += chunk
                while True:                # whole lines, and over-long ones in pieces
                    end = buf.find(b"\n", 0, STDERR_LINE_LIMIT)
                    if end >= 0:
                        line, buf = buf[:end], buf[end + 1:]
                    elif len(buf) > STDERR_LINE_LIMIT:
                        line, buf = buf[:STDERR_LINE_LIMIT], buf[STDERR_LINE_LIMIT:]
                    else:
                        break
                    text = line.decode("utf-8", "replace")
                    tail.append(text)
                    self.say(f"[{name}] stderr: {text}")

    async def _stop_engines(self):
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            p.terminate()
        with trio.move_on_after(GRACE_SECONDS):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

    # ------------------------------------------------------------ external endpoint

    async def _bind(self, path: str) -> trio.SocketListener:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            if os.path.exists(path):
                os.unlink(path)
        except OSError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
        self._bound[path] = True
        return trio.SocketListener(sock)

    async def _listen(self, task_status=trio.TASK_STATUS_IGNORED):
        listener = await self._bind(self.socket_path)
        self.say(f"listening on {self.socket_path} (external: {', '.join(self.system.external)})")
        task_status.started()
        async with listener:
            while True:
                stream = await listener.accept()
                self.nursery.start_soon(self._serve_external, stream)

    async def _admin(self, task_status=trio.TASK_STATUS_IGNORED):
        """`wsuper revoke`: one request line per connection, one answer line."""
        listener = await self._bind(admin_socket_path(self.socket_path))
        task_status.started()
        async with listener:
            while True:
                stream = await listener.accept()
                self.nursery.start_soon(self._serve_admin, stream)

    async def _serve_admin(self, stream):
        async with stream:
            data = b""
            with trio.move_on_after(5):
                while b"\n" not in data and len(data) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            words = data.decode("utf-8", "replace").split()
            if len(words) == 2 and words[0] == "revoke":
                try:
                    self._perform(self.router.revoke(words[1]))
                    answer = f"ok: revoked {words[1]}"
                except KeyError as e:
                    answer = f"error: {e.args[0]}"
            else:
                answer = "error: expected 'revoke COMPARTMENT.GRANT'"
            try:
                await stream.send_all(answer.encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve_external(self, stream):
        pid = self.router.add_external()
        link = _Link(stream)
        self.links[pid] = link
        async with trio.open_nursery() as n:
            n.start_soon(link.writer)
            try:
                while True:
                    data = await link.receive()
                    if not data:
                        break
                    self._perform(self.router.receive(pid, data))
                    if pid not in self.router.peers:
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            self._perform(self.router.disconnected(pid, "external client disconnected"))
            await link.send.aclose()
        self.links.pop(pid, None)
        await stream.aclose()

    # ------------------------------------------------------------ effects

    def _perform(self, effects):
        # Consecutive sends to one peer go out as one write; any other effect
        # first flushes them, so nothing it triggers can overtake them.
        batch: dict[int, list] = {}
        for e in effects:
            if isinstance(e, R.Send):
                batch.setdefault(e.peer, []).append(e.data)
                continue
            self._write_all(batch)
            if isinstance(e, R.Close):
                link = self.links.get(e.peer)
                if link is not None:
                    link.close()
            elif isinstance(e, R.LogLine):
                self.say(f"[{e.compartment}] {_printable(e.text)}")
            elif isinstance(e, R.Started):
                self._on_started(e)
            elif isinstance(e, R.StartFailed):
                self._on_start_failed(e)
            elif isinstance(e, R.Exited):
                self._on_exited(e)
            elif isinstance(e, R.Notice):
                self.say(f"wsuper: {e.text}")
            elif isinstance(e, R.Denied):
                show, hidden = self.denials.admit(e.caller, trio.current_time())
                if hidden:
                    self.say(f"wsuper: ({hidden} more denials for {e.caller} were not shown; "
                             f"the audit file has every call)")
                if show:
                    self.say(f"wsuper: {e.text}")
            elif isinstance(e, R.Audit):
                self._write_audit(e.record)
        self._write_all(batch)

    def _write_audit(self, record: dict):
        if self._audit_file is None:
            self._audit_file = open(self.system.audit, "a", encoding="utf-8", buffering=1)
        self._audit_file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _write_all(self, batch: dict):
        for peer, chunks in batch.items():
            link = self.links.get(peer)
            if link is not None:
                link.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        batch.clear()

    def _on_started(self, e: R.Started):
        comp = self.system.compartments[e.compartment]
        proc = self.procs[e.compartment]
        self.started.add(e.compartment)
        if e.program:
            self.programs.add(e.compartment)
        base = os.path.dirname(self.system.path) + os.sep
        rel = comp.module[len(base):] if comp.module.startswith(base) else comp.module
        self.say(f"ready {comp.name} pid={proc.pid} module={rel}")
        if self.stats and comp.name in self._spawned_at:
            ms = (trio.current_time() - self._spawned_at.pop(comp.name)) * 1000
            self.say(f"stats start {comp.name} {ms:.2f} ms")
        if self.all_started:                     # a restart: run its program again
            if e.program:
                self.running.add(e.compartment)
                self._perform(self.router.run(e.compartment))
        elif len(self.started) == len(self.system.compartments):
            self.all_started = True
            self._all_ready()

    def _on_start_failed(self, e: R.StartFailed):
        if not self.all_started:                 # it never worked: a configuration problem
            self.say(f"wsuper: compartment {e.compartment} failed to start: {e.reason}")
            self._finish(1)
        elif not self._done.is_set():
            self._stopped(e.compartment, True, f"failed to start: {e.reason}")

    def _all_ready(self):
        if not self.programs:
            self.say("wsuper: all compartments ready; serving until Ctrl-C")
            return
        for name in sorted(self.programs):
            self.running.add(name)
            self._perform(self.router.run(name))

    def _on_exited(self, e: R.Exited):
        if e.compartment not in self.running:
            return
        if self._done.is_set():          # we are stopping it ourselves
            self.running.discard(e.compartment)
            self.say(f"stopped {e.compartment}")
            return
        if e.error is not None:
            self.say(f"wsuper: compartment {e.compartment} failed: {e.error}")
            self._stopped(e.compartment, True, "its program failed")
        else:
            self.say(f"finished {e.compartment} exit={e.exit_code}")
            self._stopped(e.compartment, e.exit_code != 0, f"its program ended "
                          f"(exit {e.exit_code})")


def _raise_fd_limit():
    """Each engine costs the supervisor a socket and a pipe: use the hard limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)


async def up(plan: Plan, socket_path: str | None = None, out=None) -> int:
    return await Supervisor(plan, socket_path, out).run()

