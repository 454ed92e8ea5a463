"""The trio side of the probes: asking engines, polling them, serving sinks.

Nothing here decides: probes.py says which sites are on and what events mean,
trace.py what a trace file holds.  This module asks engines for their probe
sites and sets their flags (Engine.describe/probe/collect, through the
router), collects what they recorded every POLL seconds, answers the admin
socket's probe requests (operator only; every change audited), streams a
trace session to `wsuper trace`, and serves the Probe capability of
analysis compartments (a read waits for events at most `waitMs`).

A busy engine answers when its guest next waits or returns: no request waits
for it longer than ENGINE_TIMEOUT, and one collect at a time is in flight
per engine, so a compartment in a long loop delays only its own events.
"""
from __future__ import annotations

import fcntl
import json
import sys
import termios
import time

import trio

from capnp_schemas import engine as engine_schema, hosted, payloads
from capnp_schemas.payloads import DecodeError
from capnp_schemas.text import printable
from compartments import probing

from . import hostcaps, probes as P, threads
from .endpoint import MAX_TRACE_SECONDS

POLL = 0.1
ENGINE_TIMEOUT = 5.0
MAX_TRACES = 4
MAX_READ = 1024
MAX_WAIT_MS = 10_000
#: seconds between a waiting read's looks at whether its call is still wanted
READ_RECHECK = 1.0
TRACE_CHUNK = 500                 # events per line of a trace stream
#: A trace client that takes none of a line for this long is gone: its probes come off.
TRACE_SEND_TIMEOUT = 5.0
#: With no events to send, an empty line this often: a client that closed its
#: connection is noticed (the write fails) and its probes come off.
TRACE_HEARTBEAT = 1.0
EVENT_SLICE = 4096                # engine events decoded between two turns of the loop
_RESULT_WORDS = 1 << 24
_STRUCTS = {m: payloads.method_structs(engine_schema.Engine, name)
            for m, name in ((probing.DESCRIBE, "describe"), (probing.PROBE, "probe"),
                            (probing.COLLECT, "collect"))}
PROBE = hosted.BY_KIND["probe"]


class _Answer:
    """The handler of one Engine call (control.py's protocol), awaited by a task."""

    def __init__(self, results, set_event=trio.Event.set):
        self.results = results
        self.set_event = set_event       # the supervisor's: the answer may come in either thread
        self.done = trio.Event()
        self.value = None
        self.error = None
        #: a collect's: (flag changes sent before it, the engine peer asked), set
        #: when it is given up on, for whoever takes its answer later
        self.context = None

    def returned(self, router, peer, ev):
        if ev.payload is None:
            self.error = ev.error
        else:
            try:
                self.value = payloads.read(self.results, ev.payload.content, _RESULT_WORDS)
            except DecodeError as e:
                self.error = f"malformed answer: {e}"
        self.set_event(self.done)

    def lost(self, router, peer, reason):
        self.error = reason
        self.set_event(self.done)


class EngineBusy(Exception):
    pass


class Prober:
    def __init__(self, sup):
        self.sup = sup
        self.registry = P.Registry(time.perf_counter_ns, {
            c.name: c.instrument for c in sup.system.compartments.values()})
        sup.router.call_watch = self.registry.calls.watch
        sup.router.call_probes = self.registry.calls
        self.registry.calls.on_watch = sup.router.watch
        self._collecting: dict = {}       # compartment -> the trio.Lock of its collects
        self._traces = 0
        self._trace_ids = 0                   # names the probes of each trace session
        self._incarnation: dict = {}          # compartment -> engine peer its sites are from
        #: compartment -> its collect question the engine has not answered within
        #: ENGINE_TIMEOUT: no other is asked until it is (see _engine)
        self._unanswered: dict = {}
        #: compartment -> that question once answered, for the next collect to read
        self._answered_late: dict = {}

    # ------------------------------------------------------------ engines

    async def _engine(self, name: str, method: int, values: dict | None = None,
                      timeout: float = ENGINE_TIMEOUT) -> dict:
        params, results = _STRUCTS[method]
        deadline = trio.current_time() + timeout
        busy = EngineBusy(f"{name} did not answer within {timeout:g} s (its guest is busy); "
                          f"the change applies when it next waits or returns")
        collect = method == probing.COLLECT
        if collect:
            # One collect question in an engine at a time: one given up on stays open
            # until the engine answers (or goes), and each poll asked another, so an
            # engine that never answered (a guest in a long loop, a taken-over engine)
            # grew the supervisor's open questions by one every ENGINE_TIMEOUT for
            # good (an outside review).  A collect waits for the one still open.
            late = self._unanswered.get(name)
            if late is not None:
                with trio.move_on_at(deadline):
                    await late.done.wait()
                if not late.done.is_set():
                    raise busy
                if self._unanswered.get(name) is late:
                    del self._unanswered[name]
                    if late.context is not None and late.error is None:
                        # what it brought is the engine's counts and events up to its
                        # answer, which it no longer holds: the collect taking over
                        # reads it first (_collect_now)
                        self._answered_late[name] = late
        content, _caps = payloads.build(params, values or {})
        answer = _Answer(results, self.sup._set)
        self.sup._perform(self.sup.router.engine_call(name, method, content, answer))
        with trio.move_on_at(deadline):
            await answer.done.wait()
        if not answer.done.is_set():
            if collect:
                self._unanswered[name] = answer
            raise busy
        if answer.error is not None:
            raise P.ProbeError(f"{name}: {answer.error}")
        return answer.value

    async def _sites(self, name: str):
        peer = self.sup._peer_of.get(name)
        if self._incarnation.get(name) != peer:
            self.registry.sites.pop(name, None)
        if name not in self.registry.sites:
            if not self.sup.system.compartments[name].instrument:
                self.registry.sites[name] = None
            else:
                got = await self._engine(name, probing.DESCRIBE)
                self.registry.sites[name] = await threads.run_sync(
                    P.parse_sites, got["sites"])            # up to 8 MiB of JSON: off the loop
            self._incarnation[name] = peer
        return self.registry.sites[name]

    async def _push(self, name: str):
        flags, hostcalls = self.registry.flags(name)
        self.registry.pushed(name)
        await self._engine(name, probing.PROBE, {"flags": flags, "hostcalls": hostcalls})

    async def _collect(self, name: str):
        """The engine's counts and events now.  One collect at a time per compartment,
        and each its own: one that came while another was under way returned at once,
        so `probe list` (or a baseline, or a removed probe's last counts) showed what
        was counted before (0 for a probe just added) when the periodic poll's
        collect happened to be under way."""
        lock = self._collecting.setdefault(name, trio.Lock())
        async with lock:
            await self._collect_now(name)

    async def _collect_now(self, name: str):
        sent_after, peer = self.registry.pushes.get(name, 0), self.sup._peer_of.get(name)
        try:
            got = await self._engine(name, probing.COLLECT)
        except EngineBusy:
            given_up = self._unanswered.get(name)
            if given_up is not None and given_up.context is None:
                given_up.context = (sent_after, peer)
            raise
        finally:
            # A collect given up on (a busy guest: up to ENGINE_TIMEOUT) is answered
            # when the guest next waits, with every event the engine had recorded
            # since the collect before, which it then forgets: nobody read that
            # answer, so a trace (or an analysis) of a guest in a long call lost all
            # its function and host-call events up to the call's end.  Read first,
            # in order, whatever this collect's own question came to.
            late = self._answered_late.pop(name, None)
            if late is not None:
                with trio.CancelScope(shield=True):     # it only yields the loop
                    await self._take(name, late.value, *late.context)
        await self._take(name, got, sent_after, peer)

    async def _take(self, name: str, got: dict, sent_after: int, peer):
        """What one collect's answer brought: counters and events, into the registry."""
        if self.sup._peer_of.get(name) != peer:
            return                   # what a replaced engine counted is not the new one's
        until = self.registry.clock()      # no record it brought is later (one clock)
        self.registry.counters(name, got["counters"], sent_after)
        data, dropped = got["events"], got["dropped"]
        step = EVENT_SLICE * probing.EVENT.size     # decoded in slices: others get the loop
        for at in range(0, max(len(data), 1), step):
            self.registry.engine_events(name, data[at:at + step], dropped if at == 0 else 0,
                                        until)
            if at + step < len(data):
                await trio.lowlevel.checkpoint()

    async def poll(self):
        """Every POLL seconds: the router's call records, and what engines recorded."""
        while True:
            await trio.sleep(POLL)
            self.registry.take_calls()
            for name in list(self.registry.probes):
                busy = self._collecting.get(name)
                if self.registry.engine_points(name) and not (busy and busy.locked()):
                    self.sup.nursery.start_soon(self._quiet_collect, name)

    async def _quietly(self, step, name: str, what: str):
        """`step(name)` as a task of the supervisor's: a busy or gone engine is no
        error, and nothing else is ever fatal (it is said, naming `what` failed)."""
        try:
            await step(name)
        except (EngineBusy, P.ProbeError):
            pass
        except Exception as e:  # noqa: BLE001 - a task of the supervisor's: never fatal
            self.sup.say(f"cannot {what.format(name)}: internal error "
                         f"({type(e).__name__}: {printable(str(e))[:200]})", name)

    async def _quiet_collect(self, name):
        await self._quietly(self._collect, name, "collect {}'s probes")

    # ------------------------------------------------------------ probes

    async def add(self, s: P.ProbeSpec, by: str = "operator", mine: dict | None = None) -> dict:
        """Add probe `s`; `mine` (a trace session's): spec -> the Probe, set as soon as
        it enters the registry (the session removes that probe, and only it)."""
        if s.compartment not in self.sup.system.compartments:
            raise P.ProbeError(f"no compartment {s.compartment!r} (compartments: "
                               f"{', '.join(self.sup.system.compartments)})")
        # The engine it is added on: one that restarts meanwhile takes run-time probes
        # with it (started), and its successor's sites are its own.  Said, not
        # answered ok: a probe added with the old engine's sites into the new one's
        # registry got no flags (or another's), and one the restart dropped while its
        # flags went out was reported added (an outside review).
        peer = self.sup._peer_of.get(s.compartment)
        restarted = P.ProbeError(f"{s.compartment} restarted while the probe was being "
                                 f"added; its run-time probes went with the old engine: "
                                 f"add it again")
        sites = None
        if s.point in P.IN_MODULE or s.point == "hostcalls":
            if self.sup._ready_peer.get(s.compartment) != peer:
                raise P.ProbeError(f"{s.compartment} is not running")
            sites = await self._sites(s.compartment)
        selected = None
        if s.point in P.IN_MODULE and sites is not None:   # patterns x names: off the loop
            selected = await threads.run_sync(P.Registry.select, sites, s)
        if self.sup._peer_of.get(s.compartment) != peer:
            raise restarted
        probe = self.registry.add(s, sites, selected)
        if mine is not None:
            mine[s] = probe
        # audited as it enters the registry: from here a restart may drop it, or another
        # request remove it, and each of those is audited too
        self._audit("probe added", s, by)

        def gone() -> P.ProbeError | None:
            # why the probe is no longer in the registry, if it is not
            if self.registry.probes.get(s.compartment, {}).get(s.name) is probe:
                return None
            if self.sup._peer_of.get(s.compartment) != peer:
                return restarted
            return P.ProbeError(f"{s.compartment}.{s.name} was removed while it was being "
                                f"added")
        pending = None
        if s.point in P.IN_MODULE or s.point == "hostcalls":
            try:
                await self._push(s.compartment)
                if s.point in P.IN_MODULE:
                    await self._collect(s.compartment)      # its baseline (or the next one's)
            except P.ProbeError:
                why = gone()
                if why is not None:
                    raise why from None
                self.registry.remove(s.compartment, s.name)
                self._audit("probe removed", s, by)
                raise
            except EngineBusy as e:     # queued: the engine applies it when it can
                pending = str(e)
            why = gone()
            if why is not None:
                raise why
        summary = await self._summary(probe, self.registry.sites.get(s.compartment))
        if pending:
            summary["pending"] = pending
        return summary

    async def remove(self, compartment: str, name: str, by: str = "operator",
                     only: P.Probe | None = None) -> dict:
        """Remove `compartment`'s probe `name` (`only`: if it is still that Probe; a
        trace session's end removed by name whatever probe had its name then, such
        as one the operator added after removing the session's)."""
        def not_mine():
            return P.ProbeError(f"{compartment}.{name} is not the probe of {by} any more")
        probe = self.registry.probes.get(compartment, {}).get(name)
        if only is not None and probe is not only:
            raise not_mine()
        # its last counts: a hostcalls probe's too, which are the host-call records
        # its engine kept since the last poll (lost to it when not collected first)
        if probe is not None and probe.spec.point in P.IN_MODULE + ("hostcalls",):
            try:
                await self._collect(compartment)
            except (EngineBusy, P.ProbeError):
                pass
            except trio.Cancelled:
                # a removal given a bounded time (a trace session's end), behind a busy
                # guest's collects (the poll's, then its own, up to ENGINE_TIMEOUT
                # each): cancelled before the probe left the registry, the session's
                # probes stayed on for good.  It comes off all the same, without its
                # last counts, and its engine is sent the flags without it
                try:
                    self._take_off(compartment, name, by, only)
                except P.ProbeError:
                    pass
                else:
                    try:
                        self.sup.nursery.start_soon(self._quiet_push, compartment)
                    except RuntimeError:        # the supervisor is stopping
                        pass
                raise
        if only is not None and self.registry.probes.get(compartment, {}).get(name) is not only:
            raise not_mine()
        probe = self._take_off(compartment, name, by, only)
        if probe.spec.point in P.IN_MODULE or probe.spec.point == "hostcalls":
            try:
                await self._push(compartment)
            except (EngineBusy, P.ProbeError):
                # busy: it applies the flags when it can; gone (its engine died, it is
                # restarting or failed): no engine runs them, and the next starts with
                # none.  Said as an error, the removal that had happened went unaudited
                pass
        return await self._summary(probe, self.registry.sites.get(compartment))

    def _take_off(self, compartment: str, name: str, by: str, only: P.Probe | None):
        """The registry's part of a removal (no wait): the probe (`only`: if it is
        still that one) leaves the registry, audited."""
        if only is not None and self.registry.probes.get(compartment, {}).get(name) is not only:
            raise P.ProbeError(f"{compartment}.{name} is not the probe of {by} any more")
        self.registry.take_calls()
        probe = self.registry.remove(compartment, name)
        self._audit("probe removed", probe.spec, by)     # it is: whatever its engine says
        return probe

    async def _quiet_push(self, name: str):
        await self._quietly(self._push, name, "set {}'s probe flags")

    async def list(self, compartment: str, name: str | None = None) -> list:
        """Its probes' summaries; with a name, that probe's alone (ProbeError when it
        has none of that name: `list cov` after a typo said nothing of it)."""
        mine = self.registry.probes.get(compartment, {})
        if name is not None and name not in mine \
                and name not in self._declared_waiting(compartment):
            raise P.ProbeError(f"{compartment} has no probe named {name[:100]!r} "
                               f"(probes: {', '.join(mine) or 'none'})")
        if self.registry.engine_points(compartment):
            try:
                await self._collect(compartment)
            except (EngineBusy, P.ProbeError):
                pass
        self.registry.take_calls()
        sites = self.registry.sites.get(compartment)
        return [await self._summary(p, sites)
                for p in list(self.registry.probes.get(compartment, {}).values())
                if name is None or p.spec.name == name]

    @staticmethod
    async def _summary(probe: P.Probe, sites) -> dict:
        """probe.summary, its coverage found in a worker thread: time in the number of
        its sites, in the event loop it held every compartment's calls (0.4 s a probe
        on a module of 500,000 sites; 64 such probes, 27 s at each `probe list`)."""
        covered = None
        if probe.spec.point in P.IN_MODULE and sites is not None:
            covered = await threads.run_sync(
                P.coverage, sites, probe.sites, probe.counters, probe.baseline)
        return probe.summary(sites, covered)

    def _audit(self, what: str, s: P.ProbeSpec, by: str):
        text = f"{what}: {s.compartment}.{s.name} ({s.point}" + \
            (f" {','.join(s.functions)}" if s.functions else "") + \
            (", events" if s.events else "") + f") by {by}"
        self.sup.say(printable(text), s.compartment)
        if self.sup.audit is not None:   # after the calls that ended before it
            self.sup.audit_event({"time": None, "event": what, "compartment": s.compartment,
                                  "probe": s.name, "point": s.point,
                                  "functions": list(s.functions), "events": s.events,
                                  "by": by})

    def started(self, name: str, pid: int | None = None):
        """A new engine of `name` (process `pid`) is ready: run-time probes are gone
        with the old one; the declared ones are added again."""
        lost = [p.spec for p in self.registry.probes.get(name, {}).values()
                if not p.spec.declared]
        self.registry.restarted(name, pid)
        for s in lost:
            self._audit("probe dropped by a restart", s, "wsuper")
        for s in self.sup.system.compartments[name].probes:
            self.sup.nursery.start_soon(self._declare, s)

    async def _declare(self, s: P.ProbeSpec):
        try:
            await self.add(s, by="the system file")
        except (P.ProbeError, EngineBusy) as e:
            self.sup.say(f"cannot add declared probe {s.compartment}.{s.name}: "
                         f"{printable(str(e))}", s.compartment)
        except Exception as e:  # noqa: BLE001 - a task of the supervisor's: never fatal
            self.sup.say(f"cannot add declared probe {s.compartment}.{s.name}: internal "
                         f"error ({type(e).__name__}: {printable(str(e))[:200]})",
                         s.compartment)

    # ------------------------------------------------------------ the admin socket

    def _declared_waiting(self, compartment: str) -> list:
        """The names of the probes the system file declares on `compartment` that are
        not there because its engine is not ready (they are added when it is); none
        once it is (one the operator removed since is gone)."""
        if self.sup.lifecycle.state.get(compartment) == "ready":
            return []
        have = self.registry.probes.get(compartment, {})
        return [s.name for s in self.sup.system.compartments[compartment].probes
                if s.name not in have]

    async def admin(self, req: dict) -> dict:
        """{"op": "probe", "compartment", "action": add|remove|list, ...}"""
        comp, action = req.get("compartment"), req.get("action")
        if not isinstance(comp, str) or comp not in self.sup.system.compartments:
            return {"ok": False, "error": f"no compartment {str(comp)[:100]!r} "
                                          f"(compartments: "
                                          f"{', '.join(self.sup.system.compartments)})"}
        try:
            if action == "add":
                s = P.spec(comp, req.get("name"), req.get("point"), req.get("functions") or (),
                           req.get("events", False))
                return {"ok": True, "probe": await self.add(s)}
            if action == "remove":
                return {"ok": True, "probe": await self.remove(comp, str(req.get("name")))}
            if action == "list":
                name = req.get("name")
                if name is not None and not isinstance(name, str):
                    return {"ok": False, "error": "a probe's name is text"}
                probes = await self.list(comp, name)
                # declared probes are added when its engine is ready: before, `list`
                # said "no probes", as if the system file declared none
                waiting = [s for s in self._declared_waiting(comp) if name in (None, s)]
                return {"ok": True, "probes": probes, "declared_waiting": waiting,
                        "instrument": list(self.sup.system.compartments[comp].instrument)}
        except (P.ProbeError, EngineBusy) as e:
            return {"ok": False, "error": printable(str(e))}
        return {"ok": False, "error": f"unknown probe action {str(action)[:40]!r} "
                                      f"(add, remove, list)"}

    async def trace(self, stream, req: dict):
        """A trace session: calls probes (with events) on the chosen compartments for
        `seconds`; events go to the client as JSON lines, then one summary line."""
        last = trio.current_time()
        reader = P.ReaderWatch(last)
        gone = f"the trace client read nothing for {TRACE_SEND_TIMEOUT:g} s"

        def reading():
            # a client that reads nothing, while what it is sent still fits in its
            # socket's buffer, is gone too: its place and probes come off
            reader.look(trio.current_time(), _unread(stream))
            if reader.stalled(trio.current_time(), TRACE_SEND_TIMEOUT):
                raise trio.BrokenResourceError(gone)

        async def send(obj):
            # a client that stops reading would hold the trace, and its probes on every
            # compartment it chose, for as long as it keeps the connection open
            nonlocal last
            reading()
            with trio.move_on_after(TRACE_SEND_TIMEOUT):
                await stream.send_all(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
                reader.wrote(_unread(stream))
                last = trio.current_time()
                return
            raise trio.BrokenResourceError(gone)
        seconds = req.get("seconds")
        names = req.get("compartments") or ""
        functions = req.get("functions") or ""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0 < seconds <= MAX_TRACE_SECONDS:
            return await send({"ok": False, "error": f"seconds: a number from 0 to "
                                                     f"{MAX_TRACE_SECONDS}"})
        if not isinstance(names, str) or not isinstance(functions, str):
            return await send({"ok": False, "error": "compartments and functions are "
                                                     "comma-separated text"})
        # each once: one named twice got its probe, then an error that the session's
        # own probe was there already ("remove it first")
        chosen = list(dict.fromkeys(n for n in names.split(",") if n)) \
            or list(self.sup.system.compartments)
        unknown = [n for n in chosen if n not in self.sup.system.compartments]
        if unknown:
            return await send({"ok": False, "error": f"no compartment "
                                                     f"{unknown[0][:100]!r}"})
        if self._traces >= MAX_TRACES:
            return await send({"ok": False, "error": f"{MAX_TRACES} traces are running "
                                                     f"already"})
        self._traces += 1
        sub = self.registry.subscribe(P.Subscriber(chosen, label="trace"))
        # a name of its own: two sessions once named by id(sub) & 0xffff could share one,
        # and the second's probes were refused while the first's came off under it
        label = self._trace_label(chosen)
        mine = {}               # spec -> its Probe, from when it entered the registry
        dropped = 0             # events its queue dropped, over every turn
        on_engine = {}          # spec -> the engine it was added on (a restart drops it)
        try:
            for c in chosen:
                specs = [P.spec(c, label, "calls", events=True)]
                if functions and "functions" in self.sup.system.compartments[c].instrument:
                    specs.append(P.spec(c, label + "-f", "functions", functions, events=True))
                for s in specs:
                    on_engine[s] = self.sup._peer_of.get(c)
                    try:
                        await self.add(s, by="wsuper trace", mine=mine)
                    except (P.ProbeError, EngineBusy) as e:
                        await send({"note": printable(str(e))})
            await send({"ok": True, "compartments": chosen, "clock": "CLOCK_MONOTONIC ns",
                        "started_ns": time.perf_counter_ns()})
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                await trio.sleep(min(POLL * 2, max(0.0, deadline - trio.current_time())))
                reading()
                # a restart drops run-time probes, the session's too: without them
                # again on the new engine, the compartment's calls were missing
                # from the rest of the trace without a word
                for s in list(mine):
                    await self._trace_again(s, mine, on_engine, send)
                self.registry.take_calls()
                # the count of what its queue dropped is reset by each take: thrown
                # away here, a trace that lost events said at its end it lost none
                events, more = sub.take(TRACE_CHUNK * 20)
                dropped += more
                for i in range(0, len(events), TRACE_CHUNK):
                    await send({"events": events[i:i + TRACE_CHUNK]})
                if trio.current_time() - last >= TRACE_HEARTBEAT:
                    # a client that went away is told from one that waits only by
                    # writing to it: without this, one that closed its connection
                    # while nothing happened kept the session, its probes (events on)
                    # and a place of MAX_TRACES for up to MAX_TRACE_SECONDS
                    await send({"events": []})
        finally:
            with trio.CancelScope(shield=True):
                # its own probes, by identity: by name, it removed a probe the operator
                # had added under that name after removing the session's, and a
                # probe that entered the registry while the session was cancelled
                # (its add under way) stayed for good
                for s, probe in reversed(list(mine.items())):
                    if probe.gone is not None:
                        continue
                    try:
                        with trio.move_on_after(ENGINE_TIMEOUT + 1):
                            await self.remove(s.compartment, s.name, by="wsuper trace",
                                              only=probe)
                    except (P.ProbeError, EngineBusy):
                        pass
                self.registry.unsubscribe(sub)
                self._traces -= 1
        events, more = sub.take(len(sub.queue))
        dropped += more
        for i in range(0, len(events), TRACE_CHUNK):
            await send({"events": events[i:i + TRACE_CHUNK]})
        await send({"done": True, "dropped": dropped})

    def _trace_label(self, chosen: list) -> str:
        """A name for a new trace session's probes ("trace-N", and "trace-N-f" for
        its functions probes) that no probe of the `chosen` compartments has, nor
        one the system file declares there (added again at each restart).  Probe
        names are the operator's too: with a probe of theirs (or a declared one)
        named as the next session's, that session added none on its compartment
        (a note "calc has a probe named trace-3 already (remove it first)"), and
        its trace held none of the compartment's calls (an outside review, r266)."""
        def taken(name: str) -> bool:
            return any(name in self.registry.probes.get(c, {})
                       or any(s.name == name for s in self.sup.system.compartments[c].probes)
                       for c in chosen)
        while True:
            self._trace_ids += 1
            label = f"trace-{self._trace_ids}"
            if not taken(label) and not taken(label + "-f"):
                return label

    async def _trace_again(self, s: P.ProbeSpec, mine: dict, on_engine: dict, send):
        """A trace's probe `s` that a restart of its compartment dropped is added
        again on the new engine (once per engine), and the trace client told.  One
        that was removed (by the operator: audited) stays removed: added again
        at the next restart, it undid the operator's removal."""
        peer = self.sup._peer_of.get(s.compartment)
        if mine[s].gone != "restart" or peer is None or peer == on_engine.get(s) or \
                self.sup._ready_peer.get(s.compartment) != peer or \
                s.name in self.registry.probes.get(s.compartment, {}):
            return
        on_engine[s] = peer
        try:
            await self.add(s, by="wsuper trace", mine=mine)
        except (P.ProbeError, EngineBusy) as e:
            await send({"note": printable(f"{s.compartment} restarted; its trace probe "
                                          f"{s.name} could not be added again: {e}")})
            return
        await send({"note": printable(f"{s.compartment} restarted: its trace probe {s.name} "
                                      f"was added again (what it did while it restarted "
                                      f"is not in the trace)")})

    # ------------------------------------------------------------ the Probe capability

    def grant(self, owner: str, grant) -> P.Subscriber:
        """The served object of a probe grant: a bounded queue of `grant.on`'s events."""
        sub = P.Subscriber([grant.on], limit=10_000, label=f"{owner}.{grant.name}")
        sub.target = grant.on
        return self.registry.subscribe(sub)

    def host_call(self, call):
        """A call on a Probe capability (an analysis compartment reading events)."""
        sub = call.served
        if call.interface_id != PROBE.id or not 0 <= call.method_id < len(PROBE.methods) \
                or not isinstance(sub, P.Subscriber):
            self.sup._host_done(call.token, hostcaps.Refusal(
                "ENOTSUP: a probe implements Probe (read, target) only", "unimplemented"))
            return
        method = PROBE.methods[call.method_id]
        try:
            params = payloads.read(method.params, call.content, 1 << 12)
        except DecodeError as e:
            self.sup._host_done(call.token, hostcaps.Refusal(f"EINVAL: {e}"))
            return
        if method.name == "target":
            content, _ = payloads.build(method.results, {"compartment": sub.target})
            self.sup._host_done(call.token, hostcaps.Answer(content))
            return
        n = max(1, min(params["max"], MAX_READ))
        wait = min(params["waitMs"], MAX_WAIT_MS) / 1000
        if sub.queue or wait <= 0:
            self._answer_read(call, sub, n)
        else:
            self.sup._task(f"a probe read of {call.caller or call.owner}", self._read_later,
                           call, sub, n, wait, on_fault=lambda why: self.sup._host_done(
                               call.token, hostcaps.Refusal("EIO: internal error")))

    async def _read_later(self, call, sub, n, wait):
        """Answer read `call` once `sub` has events, or after `wait` s, while its call
        is still wanted.  Every read waiting on `sub` is woken by an event (one of
        them takes it; the others wait on).  A read whose call ended meanwhile (its
        caller gave up on it: cancelled, past its call_time, gone, revoked) takes
        nothing: it waited on, took the first events that came into an answer that
        went nowhere, and they were lost to the analysis's next read, uncounted;
        and as the one read a queue could wake, a second read left the first
        sleeping beside waiting events, or, ending first, the other (an outside
        review, r240)."""
        live = self.sup.router.host_call_live
        deadline = trio.current_time() + wait
        while not sub.queue and live(call.token):
            now = trio.current_time()
            if now >= deadline:
                break
            woke = trio.Event()
            sub.waiters.add(woke)
            try:
                # a call given up is noticed within READ_RECHECK even when no event comes
                with trio.move_on_at(min(deadline, now + READ_RECHECK)):
                    await woke.wait()
            finally:
                sub.waiters.discard(woke)
        if not live(call.token):
            expired = self.sup.router.host_call_expired(call.token)
            self.sup._host_done(call.token, hostcaps.Refusal(expired, "denied") if expired
                                else hostcaps.Refusal("ECANCELED: the read's call ended while "
                                                      "it waited (cancelled, or its caller "
                                                      "is gone)"))
            return
        self._answer_read(call, sub, n)

    def _answer_read(self, call, sub, n):
        """Up to `n` of `sub`'s events, as many as fit in one message to the reader:
        the rest stay queued for its next read, and an event that cannot be sent
        at all (larger than a message, or a value the schema cannot hold) is
        dropped and counted.  (The events taken were refused whole with E2BIG:
        lost uncounted, and one event larger than a message refused every read
        after it.)"""
        # only the events that fit are taken, made and built (_event_bytes: what each
        # adds, at most): building all `max` of them and halving until they fitted
        # cost a reader with a small message_size ~2,000 events made and built (~10
        # ms of the supervisor's loop) for each 8 it was answered, read after read
        queue, events, structs, size = sub.queue, [], [], _READ_BYTES
        while queue and len(events) < n:
            struct_ = _event_struct(queue[0])
            size += _event_bytes(struct_)
            if structs and size > call.max_bytes:
                break                   # it and the rest wait for the next read
            events.append(queue.popleft())
            structs.append(struct_)
        dropped, sub.dropped = sub.dropped, 0
        method = PROBE.methods[0]
        while True:
            try:
                content, _ = payloads.build(method.results, {
                    "events": structs, "dropped": dropped})
            except Exception:  # noqa: BLE001 - a value that does not fit the schema
                content = None
            if content is not None and content.size() <= call.max_bytes:
                self.sup._host_done(call.token, hostcaps.Answer(content))
                return
            if len(events) > 1:         # the second half waits for the next read
                half = len(events) // 2
                sub.queue.extendleft(reversed(events[half:]))
                events, structs = events[:half], structs[:half]
            elif events:
                events, structs, dropped = [], [], dropped + 1
            else:                       # not even an empty answer fits
                sub.dropped += dropped
                self.sup._host_done(call.token, hostcaps.Refusal(
                    "E2BIG: no answer fits in one message to this compartment"))
                return


#: bytes of a read's answer besides its events: the segment table, the root pointer,
#: the results struct (dropped, events) and the list's tag word
_READ_BYTES = 8 * 5
_EVENT_WORDS = 5 + 8          # ProbeEvent: 5 data words and 8 pointers, in the list
_EVENT_TEXTS = ("kind", "compartment", "name", "caller", "callee", "grant", "outcome")


def _text_words(text) -> int:
    return (len(text.encode("utf-8", "surrogatepass")) + 8) // 8 \
        if isinstance(text, str) else 0            # its bytes and a NUL, whole words


def _event_bytes(s: dict) -> int:
    """The bytes the ProbeEvent `s` (_event_struct's) adds to a read's answer, at
    most (a value the schema cannot hold fails the build anyway)."""
    words = _EVENT_WORDS + sum(_text_words(s[k]) for k in _EVENT_TEXTS)
    probes = s["probes"]
    if probes:
        words += 1 + sum(1 + _text_words(p) for p in probes)   # the list's words too
    return 8 * words


def _event_struct(e: dict) -> dict:
    out = {"kind": e["kind"], "compartment": e.get("compartment", ""),
           "name": e.get("name", ""), "timeNs": e.get("ts_ns", 0),
           "durationNs": e.get("dur_ns", 0), "caller": e.get("caller", ""),
           "callee": e.get("callee", ""), "grant": e.get("grant", ""),
           "outcome": e.get("outcome", ""), "address": max(e.get("address", 0), 0),
           "size": e.get("size", 0), "function": e.get("function", 0),
           "result": e.get("result", 0), "probes": list(e.get("probes", ()))}
    return out


def _unread(stream) -> int | None:
    """Bytes written to `stream`'s socket that its reader has not taken (SIOCOUTQ:
    for a Unix socket, what they hold of its buffer), or None if it cannot be told."""
    try:
        raw = fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (OSError, ValueError, AttributeError):
        return None
    return int.from_bytes(raw, sys.byteorder, signed=True)
