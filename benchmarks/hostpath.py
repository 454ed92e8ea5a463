"""The supervisor's side of a host call, without engines (issue 14, host calls).

    .venv/bin/python benchmarks/hostpath.py log 20000       # or: file
    .venv/bin/python benchmarks/hostpath.py log 20000 --profile 40

The real Supervisor's lane host worker (`_lane_host`; with
WSUPER_HOST_WORKER=0 the lane task, `_lane_events`), router, host layer and
output, on the real fast lane, inside trio; the compartment is a small child
process on the other end of the socket that sends the same call (`Log.write`
of one character, or a 4 KiB `File.read`, as benchmarks/suite.py's
compartment_call does) and waits for each answer.  Prints the child's
round trip (p50, mean) and the CPU the supervisor's trio thread and its
lane host worker spent per call (RUSAGE_THREAD, /proc/self/task): what a
host call costs the supervisor, with no wasm and no engine message loop
around it.  `--profile N`: cProfile
of the trio thread, the N functions with most time of their own.

    .venv/bin/python benchmarks/hostpath.py log 10 --opcodes 30

`--micro`: `_feed` alone, in a loop in one thread.  `--opcodes N`: the
interpreter's opcodes one `_feed` runs (sys.settrace with f_trace_opcodes,
over n of them after a warm-up), and the N functions that run the most: a
count that does not depend on the machine or its load, where timings on a
shared VM vary by a third from one minute to the next.

The Supervisor is the real one of a one-compartment system (its own
constructor, from a real plan), so that the code timed is runtime.py's own.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import trio  # noqa: E402

from capnp_schemas import hosted, payloads, protocol as P, wire  # noqa: E402
from capnp_schemas.protocol import Content  # noqa: E402
from supervisor import fastlane, hostcaps, policy, preflight, router as R  # noqa: E402
from supervisor import runtime  # noqa: E402

LOG, FILE = hosted.BY_KIND["log"], hosted.BY_KIND["file"]
#: what each kind of call is made on
HOSTS = {"log": "log", "log4k": "log", "file": "file", "read1m": "file", "list": "directory",
         "stat": "directory", "random": "random"}

# The compartment: sends `msg` n times, each after the answer to the last came,
# and prints its round trips (µs), sorted.
CHILD = r"""
import os, socket, struct, sys, time
fd, n = int(sys.argv[1]), int(sys.argv[2])
msg = sys.stdin.buffer.read()
s = socket.socket(fileno=fd)
times = []
buf = b""
for _ in range(n):
    t = time.perf_counter()
    s.sendall(msg)
    while True:
        if len(buf) >= 8:
            nseg = struct.unpack_from("<I", buf)[0] + 1
            table = 4 + 4 * nseg
            table += table & 4
            if len(buf) >= table:
                words = sum(struct.unpack_from(f"<{nseg}I", buf, 4))
                if len(buf) >= table + 8 * words:
                    buf = buf[table + 8 * words:]
                    break
        got = s.recv(1 << 16)
        if not got:
            sys.exit("the supervisor closed the socket")
        buf += got
    times.append(time.perf_counter() - t)
times.sort()
print(times[len(times) // 2] * 1e6, sum(times) / len(times) * 1e6)
"""


def _answer_control(conn, ev, send, grants):
    """The engine's side of bootstrap and start (tests/unit/test_router.answer_control)."""
    import struct
    if isinstance(ev, P.BootstrapRequested):
        send(conn.send_return(ev.answer_id, Content.capability(0), [object()]))
        return
    if not isinstance(ev, P.CallReceived):
        return
    segs = ev.payload.content.message()
    elems = wire.struct_list_elements(segs, wire.struct_pointer_field(segs, (0, 0), 0))
    for i, (s, start, d, p) in enumerate(elems):
        grants[i] = ev.payload.caps[wire.capability_index(segs, (s, start + d + 1))]
    seg = bytearray(struct.pack("<QQQ", (1 << 32) | (1 << 48), 1, 0))
    send(conn.send_return(ev.answer_id, Content.standalone([seg]), [], no_finish=True))


def _supervisor(d: str, kind: str, path: str):
    """The real Supervisor of a one-compartment system (`app`, granted `kind`),
    made by its own constructor from a real plan; the lane is started by hand,
    as Supervisor._serve does, without the engines.  Built by hand before
    (Supervisor.__new__), it fell behind each attribute the host path came to
    use, and the worker's first call failed: the run hung."""
    with open(os.path.join(d, "app.wat"), "w") as f:
        f.write('(module (memory (export "memory") 1) (func (export "_start")))')
    host = HOSTS[kind]
    grant = f'{{ host = "{host}" }}' if host in ("log", "random") else \
        f'{{ host = "{host}", path = "{path}", read_only = true }}'
    with open(os.path.join(d, "system.toml"), "w") as f:
        f.write(f'[system]\nlogs = "{d}/logs"\n[compartments.app]\nmodule = "app.wat"\n'
                f'[compartments.app.limits]\nlog_rate = 1000000\n'
                + ('message_size = "2MiB"\n' if kind == "read1m" else "") +
                f'[compartments.app.grants]\n{host} = {grant}\n')
    plan = preflight.prepare(policy.load(os.path.join(d, "system.toml")))
    devnull = open(os.devnull, "w")
    sup = runtime.Supervisor(plan, os.path.join(d, "admin.sock"), devnull, devnull)
    sup._fd_budget = 1000
    sup.lane = fastlane.Lane()
    sup.router.native = sup.lane
    comp = plan.system.compartments["app"]
    return sup, comp.limits, comp.grants[0]


async def _setup(kind: str, d: str, nursery):
    """The supervisor, with compartment `app` started on the lane (its engine played
    by hand here); returns (sup, pid, the engine's socket, the call's bytes)."""
    path = os.path.join(d, "4k.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20 if kind == "read1m" else 4096))
    if kind in ("list", "stat"):
        path = os.environ.get("HOSTPATH_DIR") or d     # a directory to list
    sup, limits, g = _supervisor(d, kind, path)
    host = HOSTS[kind]
    served = {host: hostcaps.open_grant(g) if host in ("file", "directory") else None}
    iface = hosted.BY_KIND[host]
    method, fields = {
        "log": ("write", {"text": "x"}), "log4k": ("write", {"text": "x" * 4095}),
        "file": ("read", {"offset": 0, "count": 4096}),
        "read1m": ("read", {"offset": 0, "count": 1 << 20}),
        "list": ("list", {"path": "", "cursor": 0}),
        "stat": ("stat", {"path": ""}),
        "random": ("bytes", {"count": 65536})}[kind]
    method = iface.method(method)
    ours, theirs = socket.socketpair()
    pid, effects = sup.router.add_engine("app", [g], served)
    framer = sup.router.peers[pid].conn._framer
    sup.lane.add(pid, ours.detach(), R.queue_soft_limit(limits), R.queue_hard_limit(limits),
                 framer.max_words, framer.max_segments, limits.message_size,
                 limits.in_flight, False)
    sup.router.lane_peer(pid)
    link = sup.links[pid] = runtime._NativeLink(sup.lane, pid, limits)
    # as Supervisor._spawn: the engine's writes past its soft bound come from
    # the engines' pool, which every write to it asks (r258)
    queues = getattr(sup, "_engine_queues", None)
    if queues is not None:
        link.shared = queues
        queues.links[link] = pid
    # the peer's own task, as in wsuper up: what the lane's host worker leaves (a
    # TURN ran out, or trio's thread took the work over) goes to it
    nursery.start_soon(sup._pump_native, pid, sup.links[pid])
    conn, grants = P.Connection("app"), {}

    def send(data):
        theirs.sendall(data)
    sup.nursery = nursery
    sup.output.start()
    nursery.start_soon(sup.output.files.writer)
    sup._clock = trio.lowlevel.current_clock()
    sup.router.clock = sup.hosts.clock = sup._clock.current_time      # as Supervisor._serve
    sup.output.files.set_event = sup._set
    nursery.start_soon(sup._lane_host if runtime.host_worker() else sup._lane_events)
    sup._perform(effects)
    while not grants:                      # bootstrap and start, by hand
        await trio.lowlevel.wait_readable(theirs)
        for ev in conn.receive(theirs.recv(1 << 16)):
            _answer_control(conn, ev, send, grants)
    content = payloads.build(method.params, fields)[0]
    _q, msg = conn.send_call(grants[0].import_id, iface.id, method.ordinal, content)
    return sup, pid, theirs, msg


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def _thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread `name` so far (0 if there is none)."""
    for t in threading.enumerate():
        if t.name == name and t.native_id is not None:
            with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
    return 0.0


async def run(kind: str, n: int, profile: int | None) -> dict:
    d = tempfile.mkdtemp()
    async with trio.open_nursery() as nursery:
        sup, _pid, theirs, msg = await _setup(kind, d, nursery)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(theirs.fileno()), str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 pass_fds=[theirs.fileno()])
        prof = cProfile.Profile() if profile else None
        cpu0 = resource.getrusage(resource.RUSAGE_THREAD)
        worker0 = _thread_cpu("wsuper-lane-host")
        all0 = resource.getrusage(resource.RUSAGE_SELF)
        if prof:
            prof.enable()
        child.stdin.write(msg)
        child.stdin.close()
        out = await trio.to_thread.run_sync(child.stdout.read)
        if prof:
            prof.disable()
        cpu1 = resource.getrusage(resource.RUSAGE_THREAD)
        worker = _thread_cpu("wsuper-lane-host") - worker0
        all1 = resource.getrusage(resource.RUSAGE_SELF)
        await trio.to_thread.run_sync(child.wait)
        nursery.cancel_scope.cancel()
    sup.lane.stop()
    sup.output.stop()
    p50, mean = map(float, out.split())
    cpu = (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / n * 1e6
    sys_ = (cpu1.ru_stime - cpu0.ru_stime) / n * 1e6
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(profile)
    return {"kind": kind, "n": n, "host_worker": runtime.host_worker(),
            "p50_us": round(p50, 1), "mean_us": round(mean, 1),
            "trio_thread_cpu_us": round(cpu, 2), "of_which_system_us": round(sys_, 2),
            "worker_thread_cpu_us": round(worker / n * 1e6, 2),
            # every thread: with those that run host jobs (list, stat) too
            "process_cpu_us": round((all1.ru_utime - all0.ru_utime + all1.ru_stime
                                     - all0.ru_stime) / n * 1e6, 2)}


async def micro(kind: str, n: int, profile: int | None) -> dict:
    """The Python part alone: `_feed` of the same call, n times in a row, in this
    thread (no wake-up, no lane.ready/take); `cat` reads the answers."""
    d = tempfile.mkdtemp()
    async with trio.open_nursery() as nursery:
        sup, pid, theirs, msg = await _setup(kind, d, nursery)
        drain = subprocess.Popen(["cat"], stdin=theirs.fileno(), stdout=subprocess.DEVNULL)
        link = sup.links[pid]
        items = [msg]
        feed = sup._feed
        for _ in range(200):
            feed(pid, link, items, float("inf"))
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        c0, t0 = _cpu(), time.perf_counter()
        for _ in range(n):
            feed(pid, link, items, float("inf"))
        t1, c1 = time.perf_counter(), _cpu()
        if prof:
            prof.disable()
        nursery.cancel_scope.cancel()
    sup.lane.stop()
    sup.output.stop()
    drain.kill()
    drain.wait()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(profile)
    return {"kind": kind, "n": n, "feed_us": round((t1 - t0) / n * 1e6, 2),
            "feed_cpu_us": round((c1 - c0) / n * 1e6, 2)}


async def opcodes(kind: str, n: int, top: int) -> dict:
    """Interpreter opcodes of one `_feed` (the mean of n, after a warm-up), and
    the `top` functions that run the most of them."""
    import collections

    import opcodes as ops
    counts: collections.Counter = collections.Counter()
    tracer = ops.tracer(counts)
    d = tempfile.mkdtemp()
    async with trio.open_nursery() as nursery:
        sup, pid, theirs, msg = await _setup(kind, d, nursery)
        drain = subprocess.Popen(["cat"], stdin=theirs.fileno(), stdout=subprocess.DEVNULL)
        link, items = sup.links[pid], [msg]
        for _ in range(300):
            sup._feed(pid, link, items, float("inf"))
        sys.settrace(tracer)
        try:
            for _ in range(n):
                sup._feed(pid, link, items, float("inf"))
        finally:
            sys.settrace(None)
        nursery.cancel_scope.cancel()
    sup.lane.stop()
    sup.output.stop()
    drain.kill()
    drain.wait()
    return {"kind": kind, "n": n, "opcodes_per_feed": round(sum(counts.values()) / n, 1),
            "most": {k: round(v / n, 1) for k, v in counts.most_common(top)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=tuple(HOSTS))
    ap.add_argument("n", type=int, nargs="?", default=20000)
    ap.add_argument("--profile", type=int, default=None)
    ap.add_argument("--micro", action="store_true", help="_feed alone, in a loop")
    ap.add_argument("--opcodes", type=int, default=None, metavar="N",
                    help="opcodes one _feed runs, and the N functions that run the most")
    a = ap.parse_args()
    if a.opcodes is not None:
        print(trio.run(opcodes, a.kind, a.n, a.opcodes))
    else:
        print(trio.run(micro if a.micro else run, a.kind, a.n, a.profile))


if __name__ == "__main__":
    main()
