"""`wsuper probe` and `wsuper trace`: the operator's side of the probes.

Both talk to the running system's admin socket (only its owner can reach
it): `probe` sends one request and prints the answer; `trace` opens a
session and reads events until the system says it is done.  Answers can be
larger than the one-line admin answers, so this reads them itself, with
bounds of its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import time

from capnp_schemas.text import printable, quoted

from . import endpoint, stderr, trace

MAX_LINE = 64 << 20
#: Events `wsuper trace` keeps (~740 bytes each in memory, and the Chrome file makes
#: four records of a call): the system sends up to 50,000 a second, and a trace kept
#: them all until its end, tens of gigabytes for a compartment calling in a loop
#: for 600 s.  Past it events are counted as dropped, as the system's queue does
MAX_TRACE_EVENTS = 1_000_000


def add_commands(sub):
    probe = sub.add_parser("probe", help="add, remove or list probes on a running "
                           "compartment (docs/instrumentation.md)")
    probe.add_argument("system", help="path to the running system's system.toml")
    probe.add_argument("compartment")
    probe.add_argument("action", choices=("add", "remove", "list"))
    probe.add_argument("name", nargs="?", help="the probe's name (add, remove; list: that probe "
                       "alone)")
    probe.add_argument("--point", choices=("calls", "hostcalls", "functions", "blocks",
                                           "stores"),
                       help="what it watches (add); functions, blocks and stores need the "
                       "sites compiled in (instrument = [...] in the system file)")
    probe.add_argument("--functions", default="", metavar="PATTERNS",
                       help="comma-separated name patterns (store_*) or indices (#12): the "
                       "functions a functions/blocks/stores probe covers (default: all)")
    probe.add_argument("--events", action="store_true", help="record every hit as a timed "
                       "event (for traces and analysis compartments), not only counts")
    probe.add_argument("--json", action="store_true", help="print the answer as JSON")
    tr = sub.add_parser("trace", help="record calls across compartments for some seconds "
                        "into a Chrome trace-event file (open it in Perfetto)")
    tr.add_argument("system", help="path to the running system's system.toml")
    from .cli import seconds_arg
    tr.add_argument("--seconds", type=seconds_arg(endpoint.MAX_TRACE_SECONDS), required=True,
                    help=f"how long to record (at most {endpoint.MAX_TRACE_SECONDS:g})")
    tr.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="the file to write (never one of the system's own)")
    tr.add_argument("--format", choices=("chrome", "jsonl"), default="chrome",
                    help="chrome (default): trace-event JSON; jsonl: one event per line")
    tr.add_argument("--compartments", default="", metavar="NAMES",
                    help="comma-separated compartments (default: all)")
    tr.add_argument("--functions", default="", metavar="PATTERNS",
                    help="also function entries and exits in compartments that have them "
                    "compiled in")


def _error(text: str):
    stderr.line(f"wsuper: error: {printable(text)}")


def _notice(text: str):
    """A line on stderr while a command waits for its system (endpoint's `notice`)."""
    stderr.line(f"wsuper: {printable(text)}")


def _lines(system: str, body: dict, timeout: float, notice=None):
    """Send one admin request; yield the answer's lines as objects.  `notice`: said
    once, if the connection or an answer is waited for WAIT_NOTICE s."""
    path = endpoint.admin_socket(system)       # EndpointError: not our runtime directory
    notice = endpoint.once(notice)
    body = {**body, "system": endpoint.identity(system)}
    line = endpoint.request_line(body)           # EndpointError: too long to be taken
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # EndpointError: none there, busy, starting or stopped (SIGSTOP)
        pid = endpoint.connect_admin(s, path, timeout, system, notice=notice)
    except endpoint.EndpointError:
        s.close()
        raise
    s.settimeout(timeout)
    with s:
        s.sendall(line)
        buf = b""
        while True:
            try:
                # each read within `timeout` of the last, its `up` looked at meanwhile
                # (stopped: SystemSuspended, at once)
                chunk = endpoint.recv_answer(s, 1 << 20, time.monotonic() + timeout, pid,
                                             system, notice, time.monotonic())
                notice = None            # said of the first answer only
            except OSError as e:
                raise endpoint.EndpointError(f"the system at {path} stopped answering "
                                             f"({e.strerror or e})") from None
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    yield json.loads(line)
                except (ValueError, RecursionError):
                    raise endpoint.EndpointError("the system gave an answer that is not "
                                                 "JSON") from None
            if len(buf) > MAX_LINE:
                raise endpoint.EndpointError("the system's answer is too long")


def _unknown_compartment(system: str, names) -> str | None:
    """The running system's refusal of the first of `names` it does not have, said
    here from what it published as it started (endpoint.running_facts): asked, a
    system that does not answer (stopped: SIGSTOP) held the command 30 s; None
    when all are its, or it is not known here (the system is asked, as before)."""
    facts = endpoint.running_facts(system)
    if facts is None:
        return None
    have = facts["compartments"]
    for name in names:
        if name not in have:
            return f"no compartment {name[:100]!r} (compartments: {', '.join(have)})"
    return None


def probe(args) -> int:
    body = {"op": "probe", "compartment": args.compartment, "action": args.action}
    unknown = _unknown_compartment(args.system, [args.compartment])
    if unknown:
        _error(unknown)
        return 1
    if args.action in ("add", "remove"):
        if not args.name:
            _error(f"probe {args.action} needs the probe's NAME")
            return 2
        body["name"] = args.name
    elif args.name:
        body["name"] = args.name                 # list NAME: that probe alone
    if args.action == "add":
        if not args.point:
            _error("probe add needs --point (calls, hostcalls, functions, blocks, stores)")
            return 2
        body.update(point=args.point, functions=args.functions, events=args.events)
    try:
        answer = next(_lines(args.system, body, 30, _notice), None)
    except endpoint.EndpointError as e:
        _error(str(e))
        return 1
    if not isinstance(answer, dict) or not answer.get("ok"):
        _error(str((answer or {}).get("error", "no answer")))
        return 1
    if args.json:
        print(json.dumps(answer.get("probes", answer.get("probe")), indent=2))
        return 0
    if args.action == "list":
        waiting = answer.get("declared_waiting") or []
        if answer["probes"] or not waiting:
            print(trace.text(answer["probes"], answer.get("instrument", ())))
        if waiting and all(isinstance(n, str) for n in waiting):
            print(f"{printable(args.compartment)} is not ready: the probes its system file "
                  f"declares ({printable(', '.join(waiting))}) are added when it is")
    else:
        verb = "added" if args.action == "add" else "removed"
        print(f"wsuper: {verb} probe {printable(args.name)} on {printable(args.compartment)}")
        if answer["probe"].get("pending"):
            print(f"wsuper: note: {printable(str(answer['probe']['pending']))}")
        if args.action == "remove":
            print(trace.text([answer["probe"]]))
    return 0


def trace_command(args) -> int:
    body = {"op": "trace", "seconds": args.seconds, "compartments": args.compartments,
            "functions": args.functions}
    if isinstance(args.compartments, str):
        unknown = _unknown_compartment(args.system,
                                       [n for n in args.compartments.split(",") if n])
        if unknown:
            _error(unknown)
            return 1
    from .cli import overwrites
    problem = overwrites("-o", args.output, args.system)
    if problem:
        _error(problem)
        return 2
    from . import outfile
    code = 1
    try:
        # before the trace: a path that cannot be written loses nothing.  Whole or not
        # at all: the trace goes into a file of its own beside it, renamed over it at
        # the end; a write that failed left the file that was there empty (r266: its
        # old content lost, r268).  A FIFO no process reads is refused at once (open()
        # waited for a reader before the system was asked anything)
        with outfile.replacing("-o", args.output) as o:
            with open(o.fd, "a", encoding="utf-8", closefd=False) as out:
                with _stops_as_interrupts():
                    code = _trace(args, body, out, o)
    except outfile.OutputError as e:
        _error(str(e))
        return 1
    return code


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a trace, taken as Ctrl-C is (KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stops_as_interrupts():
    """SIGTERM (`timeout 30 wsuper trace ...`, a service manager, `kill`) and SIGHUP
    (the terminal closed) end the session as Ctrl-C does: their default killed the
    client without a word, every event that had come was lost and the -o file, made
    empty to be filled at the end, was left so where there was none.  A signal
    ignored when the command began (`nohup`) stays ignored."""
    def stop(signum, _frame):
        raise _Stopped(signum)
    before = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                before[sig] = signal.signal(sig, stop)
        except (ValueError, OSError):        # not the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_held():
    """SIGINT, SIGTERM and SIGHUP wait (blocked) while the trace file is written;
    one that came meanwhile is taken when this ends (a KeyboardInterrupt)."""
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    except (AttributeError, OSError, ValueError):
        before = None
    try:
        yield
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _signal_of(e: KeyboardInterrupt) -> tuple[str, int]:
    """The signal a KeyboardInterrupt stands for, and the exit code it gives."""
    signum = getattr(e, "signum", signal.SIGINT)
    return signal.Signals(signum).name, 128 + signum


def _is_stdout(f) -> bool:
    """Whether the open file `f` is the file (or pipe) stdout writes to."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _write_all(f, chunks, piece: int = 1 << 20):
    """`chunks` (text) written to the open file `f` through its descriptor, in pieces
    of about `piece` bytes; raises OSError as a write fails.  Nothing stays behind in
    `f`'s own buffers, which its close would try to write again after a failure
    (where the file was emptied meanwhile: after a hole)."""
    f.flush()
    fd = f.fileno()
    pending, size = [], 0

    def put(data: bytes):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= piece:
            put("".join(pending).encode())
            pending, size = [], 0
    if pending:
        put("".join(pending).encode())


def _trace(args, body: dict, f, o) -> int:
    """The session, its events written to `f` (`o`: outfile.Output, done once the
    trace is written whole, what came before an interruption too)."""
    events, dropped, meta, done, interrupted = [], 0, {}, False, None
    kept_out = 0                  # events past MAX_TRACE_EVENTS: counted as dropped
    try:
        for obj in _lines(args.system, body, args.seconds + 60):
            if not isinstance(obj, dict):
                continue
            if obj.get("ok") is False:
                _error(str(obj.get("error")))
                return 1
            if "note" in obj:
                print(f"wsuper: note: {printable(str(obj['note']))}", file=sys.stderr)
            if obj.get("ok"):
                meta = {"compartments": obj.get("compartments")}
            if isinstance(obj.get("events"), list):
                room = max(MAX_TRACE_EVENTS - len(events), 0)
                events.extend(obj["events"][:room])
                kept_out += max(len(obj["events"]) - room, 0)
            if obj.get("done"):
                dropped, done = obj.get("dropped", 0), True
                break
    except endpoint.EndpointError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt as e:
        # Ctrl-C (or SIGTERM, SIGHUP: _stops_as_interrupts) during the session: every
        # event that had come was lost, and the file (made empty, to be filled at the
        # end) was left so where there was none
        interrupted = _signal_of(e)
    if interrupted and not meta:
        _error(f"interrupted ({interrupted[0]}) before the trace began; nothing written")
        return interrupted[1]
    if not meta:
        _error("the system ended the trace before it began (it is stopping?)")
        return 1
    dropped = (dropped if isinstance(dropped, int) else 0) + kept_out
    if kept_out:
        print(f"wsuper: note: a trace keeps at most {MAX_TRACE_EVENTS:,} events: {kept_out:,} "
              f"more were dropped (trace fewer compartments, or for fewer seconds)",
              file=sys.stderr)
    regular = False
    try:
        with _signals_held():
            # Ctrl-C (SIGTERM, SIGHUP) here, once the file was emptied, left it cut
            # short: no JSON, and the file it replaced (a trace of an earlier run) gone
            # with what came.  It is taken once the file is whole.
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode) and not o.streaming
            if regular:          # (a file of its own; one given as a descriptor is not
                f.seek(0)        # emptied: `-o /dev/stdout >> log` keeps the log)
                f.truncate()
            # else a pipe, a FIFO, a terminal (-o /dev/stdout | jq): written as it
            # is.  Its seek failed ("underlying stream is not seekable", exit 1),
            # and every event of the session was lost
            if args.format == "jsonl":
                _write_all(f, [trace.jsonl(events)])
            else:
                _write_all(f, json.JSONEncoder().iterencode(
                    trace.chrome(events, {**meta, "dropped": dropped})))
            o.done = True
    except KeyboardInterrupt as e:
        interrupted = interrupted or _signal_of(e)
    except OSError as e:       # a full disk: said naming the file, not "[Errno 28] ..."
        _error(f"-o {args.output}: cannot write the trace: {e.strerror or e}")
        # what was written of it is no trace (JSON cut short): a full disk left the
        # file holding the part that fitted, as if it were the trace (r266); not done,
        # the file of its own is removed, the one that was there kept (outfile)
        return 1
    calls = sum(1 for e in events if isinstance(e, dict) and e.get("kind") == "call")
    # on stderr when the trace itself goes to stdout (-o /dev/stdout): said on stdout,
    # the line ended up in the trace, after its JSON
    print(f"wsuper: wrote {quoted(args.output)}: {len(events)} events ({calls} call records"
          + (f", {dropped} dropped" if dropped else "") + ")",
          file=sys.stderr if _is_stdout(f) else sys.stdout)
    if interrupted:
        _error(f"interrupted ({interrupted[0]}) before {args.seconds:g} s; {args.output} "
               f"holds what came before")
        return interrupted[1]
    if not done:
        # the connection ended without the session's last line: the system stopped
        # (or failed) before the seconds were up; what came is written, and said so
        _error(f"the trace was cut short: the system ended the session before "
               f"{args.seconds:g} s (it stopped?); {args.output} holds what came before")
        return 1
    return 0
