"""The `wsuper` command."""
from __future__ import annotations

import sys

from . import __version__


def main(argv=None) -> int:
    """The command; a reader that goes away (`wsuper status | head`) ends it quietly.
    Ctrl-C at any moment of it is one line and 130 (_interrupted): one before
    `_main`'s own handler was in place (while the descriptors are set up, the
    first imports made) ended in a KeyboardInterrupt traceback, as one during the
    import of this module did (argparse, imported here before main: where a
    Ctrl-C 50 ms after `wsuper call` was typed landed)."""
    try:
        return _command(argv)
    except KeyboardInterrupt as e:
        return _interrupted(e, argv)


#: the commands that send a running system requests (through its admin socket, or
#: its external one): interrupted, they may have sent one it still carries out
ASKS_THE_SYSTEM = frozenset({"status", "stop", "revoke", "call", "probe", "trace"})


def _interrupted(e: KeyboardInterrupt, argv=None) -> int:
    """One line and 128 + the signal.  That a request may still be carried out is
    said by the commands that send one: `build`, `bindgen`, `check` and `logs` ask
    no system anything, and Ctrl-C on `wsuper build` said a request "already sent
    to the system" might still be carried out."""
    import signal
    signum = getattr(e, "signum", signal.SIGINT)
    command = (sys.argv[1:] if argv is None else argv)[:1]
    try:
        from . import stderr
        stderr.line(f"wsuper: interrupted ({signal.Signals(signum).name})" + (
            "; a request already sent to the system may still be carried out"
            if command and command[0] in ASKS_THE_SYSTEM else ""))
    except Exception:  # noqa: BLE001 - the exit code is the answer, whatever the line
        pass
    return 128 + signum


def _command(argv=None) -> int:
    _standard_descriptors()
    _children_waited()
    _signals_unblocked()
    # every command prints a guest's text (escaped, but printable characters of any
    # script stay as they are): a terminal or pipe that is not UTF-8 gets escapes
    # (\xe9), as `up`'s output does (output.Output); `wsuper logs` ended in a
    # UnicodeEncodeError traceback at a plugin's first "é", the rest unshown
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    zygote = None
    from . import launch, startsignals
    problem = launch.fd_floor_problem()
    if problem:                        # said before capnp_schemas (_error) is imported
        from . import stderr
        stderr.line(f"wsuper: error: {problem}")
        return 2
    try:
        if (sys.argv[1:] if argv is None else argv)[:1] == ["up"]:
            # before anything: SIGINT or SIGTERM while the system is read, checked and
            # compiled stops `up` with 130 or 143 and a word (StoppedAtStart below),
            # not a KeyboardInterrupt traceback or a death without one
            startsignals.stop_at_start()
            # first thing: the zygote's start-up (~150-250 ms) overlaps all of ours,
            # imports included (launch.py imports nothing heavy)
            from .launch import Launched
            try:
                zygote = Launched()
            except OSError:
                pass                 # tried again (and reported) once the system runs
            # and the namespace probe (confine.probe's notes), while this process is
            # small: forked after every import, it was on the way to the first spawn
            from compartments import confine
            confine.probe_soon()
        return _main(argv, zygote)
    except startsignals.StoppedAtStart as e:     # only `up` installs its handlers
        from . import stderr
        stderr.line(f"wsuper: {e.name} during start-up: stopped before the system started")
        return 128 + e.signum
    except KeyboardInterrupt as e:
        # Ctrl-C on any other command (`up` has its own handlers): `status`, `stop`,
        # `call`, `revoke` ... waiting for a system that does not answer (stopped
        # with SIGSTOP, busy) ended in a KeyboardInterrupt traceback (`trace` takes
        # SIGTERM and SIGHUP as one too: probecli._Stopped)
        return _interrupted(e, argv)
    except BrokenPipeError:
        from . import stderr
        stderr.gone(sys.stdout)
        return 0
    except OSError as e:      # a file a command writes or reads (--graph, -o): said, not a traceback
        _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        return 1
    finally:
        if startsignals.installed():
            startsignals.hold()      # `up` is over: a late signal is not a traceback
        if zygote is not None:
            zygote.discard()         # never used (a refused system): it goes
        if "compartments.confine" in sys.modules:
            sys.modules["compartments.confine"].probe_reaped()   # a refused system's


def _standard_descriptors():
    """Descriptors 0, 1 and 2 closed at launch (`wsuper up >&-`, a daemon manager that
    closes them) get /dev/null, first thing.  Left closed, the next descriptor opened
    took the number: the zygote's socket landed on 2, which the zygote inherited as
    its stderr (its own words written into its own control socket: `up` refused its
    system with "no such file" for a schema that is there), a socket landed on 1, a
    directory on 2, and anything that writes to 1 or 2 (the log lines, a child's
    output) wrote into whatever was there.  Python makes sys.stdout or sys.stderr
    None for a descriptor closed at its start: they become text streams on
    /dev/null, so that every `print` goes where it would have, to nothing."""
    import os
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)     # the lowest free: fd, as those below are open
        if null != fd:
            os.dup2(null, fd, inheritable=True)
            os.close(null)
        else:
            os.set_inheritable(fd, True)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, buffering=1 if fd == 2 else -1,
                                    closefd=False, errors="backslashreplace"))


def _children_waited():
    """SIGCHLD ignored at launch (SIG_IGN survives exec: a parent that ignores it, as
    some services and job runners do, hands that on) gets its default, first thing.
    Ignored, the kernel reaps each child as it ends and no exit status is left to
    read: every wait for one failed with ECHILD ("No child processes"), the
    compiler's (`wsuper check`: "cannot wait for its compiler"), the zygote's own
    (`up`: "wsuper zygote: cannot go on") and a schema's parser's ("cannot check the
    schema"); and subprocess.run reads ECHILD as exit 0: a parser that aborted on a
    schema passed its check."""
    import signal
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _signals_unblocked():
    """Signals blocked at launch get through, first thing: the signal mask survives
    exec (a launcher that blocked them while it forked, and exec'd without
    unblocking them, hands the mask on).  `up` so launched stopped neither on
    SIGTERM nor on Ctrl-C (a service manager's stop ended in its SIGKILL, the
    audit's and the log files' last writes lost), and its zygote and every engine
    inherited the mask.  Done before any thread starts: every thread takes the
    mask of the one that starts it."""
    import signal
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


#: seconds `wsuper stop` waits for the system to be gone (its own stop takes at most
#: its engines' grace and the last writes of the audit and the log files, 5 s each)
STOP_WAIT = 30.0
#: how often `wsuper stop` looks whether the system let go of its lock: every
#: STOP_LOOK_SOON s for the first STOP_SOON s (a small system's stop takes 20-100
#: ms; looked at every 50 ms, each `wsuper stop` waited ~25 ms more than it took),
#: then every STOP_LOOK s
STOP_LOOK_SOON, STOP_SOON, STOP_LOOK = 0.005, 1.0, 0.05


def seconds_arg(most: float):
    """An argparse type: a number of seconds, more than 0 and at most `most` (not nan,
    not inf); anything else is a usage error naming the bound."""
    def seconds(text: str) -> float:
        import argparse
        import math
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value <= most:           # false for nan
            # "'0' is not a number of seconds from 0 to 3600" refused what it named
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds more "
                                             f"than 0 and at most {most:g}")
        return value
    return seconds


def parser():
    """The command line: every command and its options (the README's "Commands"
    lists each one: tests/unit/test_docs.py holds it to this)."""
    import argparse
    ap = argparse.ArgumentParser(
        prog="wsuper",
        description="Run untrusted WebAssembly plugins as compartments that hold only "
                    "the capabilities their system file grants.")
    ap.add_argument("--version", action="version", version=f"wsuper {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a system and run it until its programs finish "
                        "(or Ctrl-C / SIGTERM)")
    up.add_argument("system", help="path to system.toml")
    up.add_argument("--socket", help="Unix socket for the external endpoint (default: "
                    "[system] socket, else $XDG_RUNTIME_DIR/wsuper/NAME-HASH.sock or "
                    "/tmp/wsuper-UID/NAME-HASH.sock)")
    up.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="text (default): plugin lines on stdout, timed supervisor events on "
                    "stderr; json: one JSON object per line on each")
    logs = sub.add_parser("logs", help="show a system's log lines (its plugins' and the "
                          "supervisor's), oldest first")
    logs.add_argument("system", help="path to system.toml")
    logs.add_argument("compartment", nargs="?", help="only this compartment's lines")
    logs.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")
    call = sub.add_parser("call", help="call an exported compartment's method through the "
                          "external endpoint, as any external client would")
    call.add_argument("system", help="path to the running system's system.toml")
    call.add_argument("target", metavar="COMPARTMENT.METHOD")
    call.add_argument("params", nargs="?", default="()",
                      help="the parameters in Cap'n Proto text, e.g. '(a = 20, b = 22)'")
    call.add_argument("--json", action="store_true",
                      help="print the results as JSON (capabilities as \"<capability>\", "
                           "Data as base64, NaN and the infinities as the strings "
                           "\"NaN\", \"Infinity\", \"-Infinity\"; an enum value or union "
                           "member the schema does not name as its number, or left out)")
    call.add_argument("--socket", help="the external socket (default: where the running "
                      "system says it listens, as `up --socket` bound it, else the system "
                      "file's)")
    call.add_argument("--timeout", type=seconds_arg(3600), default=30,
                      help="seconds to wait, in all: asking the running system "
                           "where it listens, connecting and the call (30; at most 3600)")
    status = sub.add_parser("status", help="what each compartment of a running system is "
                            "doing: state, pid, uptime, restarts, calls, memory, handles "
                            "(exit 0; a system still starting is said so, exit 3; none "
                            "running, or its wsuper up stopped with SIGSTOP: exit 1)")
    status.add_argument("system", help="path to the running system's system.toml")
    status.add_argument("--json", action="store_true", help="the same, as JSON")
    stop = sub.add_parser("stop", help="stop a running system and wait for its end (exit 0; 1 "
                          "if not within 30 s); its wsuper up exits 0, or 1 if a "
                          "compartment failed or stopped abnormally. One still starting "
                          "is sent SIGTERM")
    stop.add_argument("system", help="path to the running system's system.toml")
    check = sub.add_parser("check", help="validate a system without starting anything, "
                           "and print who holds what and how each memory is protected")
    check.add_argument("system", help="path to system.toml")
    check.add_argument("--graph", metavar="FILE", help="write the authority graph (DOT; SVG "
                       "when FILE ends in .svg and Graphviz's dot is installed)")
    check.add_argument("--reach", metavar="TARGET", action="append", default=[],
                       help="which compartments could ever call TARGET: COMPARTMENT (its "
                       "main object), COMPARTMENT.METHOD, or COMPARTMENT:HOSTCAP (repeatable)")
    revoke = sub.add_parser("revoke", help="revoke a revocable grant of a running system: "
                            "it, everything obtained through it and its calls in flight fail")
    revoke.add_argument("system", help="path to the running system's system.toml")
    revoke.add_argument("grant", help="COMPARTMENT.GRANT, e.g. app.calc")
    bindgen = sub.add_parser("bindgen", help="write C bindings (NAME.h and wsuper.h) for the "
                             "interfaces and structs of Cap'n Proto schemas")
    bindgen.add_argument("schemas", nargs="+", metavar="SCHEMA.capnp")
    bindgen.add_argument("-o", "--output", required=True, metavar="DIR",
                         help="where NAME.h and wsuper.h are written")
    build = sub.add_parser("build", help="compile a C plugin to wasm (clang, wasi-libc), "
                           "generating bindings for --schema first")
    build.add_argument("sources", nargs="+", metavar="FILE.c")
    build.add_argument("-o", "--output", required=True, metavar="PLUGIN.wasm",
                       help="the module to write")
    build.add_argument("--schema", action="append", default=[], metavar="SCHEMA.capnp",
                       help="generate bindings for it into the include directory (repeatable)")
    build.add_argument("-I", "--include", action="append", default=[], metavar="DIR",
                       help="another directory of headers for the compiler (repeatable)")
    build.add_argument("--include-dir", metavar="DIR", help="where generated headers go "
                       "(default: OUTPUT's directory/include)")
    kind = build.add_mutually_exclusive_group()
    kind.add_argument("--reactor", action="store_true", default=None, help="a plugin without "
                      "main that serves calls (the default when no source defines main)")
    kind.add_argument("--command", dest="reactor", action="store_false",
                      help="a program with main")
    from . import probecli
    probecli.add_commands(sub)
    return ap


def _main(argv=None, zygote=None) -> int:
    """`zygote`: a process.Launched for `up` (main starts it), or None."""
    args = parser().parse_args(argv)
    from . import probecli

    if args.command == "probe":
        return probecli.probe(args) if _running_or_read(args.system) else 2
    if args.command == "trace":
        return probecli.trace_command(args) if _running_or_read(args.system) else 2
    if args.command == "revoke":
        return _revoke(args)
    if args.command == "logs":
        return _logs(args)
    if args.command in ("status", "stop"):
        return _admin(args)
    if args.command in ("bindgen", "build"):
        return _toolchain(args)

    if args.command != "up" and zygote is not None:
        zygote.discard()
        zygote = None
    lock = _early_lock(args.system) if args.command == "up" else None
    try:
        from . import policy, preflight
        from .policy import PolicyError
        checks = None                     # up: module checks started early (preflight)
        if zygote is not None:        # schemas parsed by a fork of it, not a new interpreter
            import capnp_schemas
            capnp_schemas.parse_elsewhere = zygote.parse_schema
        if args.command == "call":
            # a running system's: its file's text and its schemas, as the other
            # commands to a running system read them.  policy.load and prepare look
            # at every grant's path and module as they are now, and a compartment
            # that removed (through a writable grant of its own) a directory another
            # grant names locked the operator out of `wsuper call` of the system
            # that runs and serves ("... is not an existing directory"); and its
            # policy files, which call needs nothing of, not at all (read_alone)
            try:
                system = policy.read_alone(args.system)
                comp = system.compartments.get(args.target.partition(".")[0])
                interfaces, fingerprints = preflight.exported(
                    system, comp.exports if comp is not None else None)
            except PolicyError as e:
                _error(f"{e}")
                return 2
            return _call(system, interfaces, args, fingerprints)
        try:
            # up's --socket is checked as [system] socket is (a grant reaching it, its
            # length): it went around both, straight to the runtime
            system = policy.load(args.system,
                                 socket=args.socket if args.command == "up" else None)
            if args.command == "up":
                # each module compiled by the zygote, and the first one checked in a
                # child of ours, while the rest of what the system runs on is
                # imported here (~70 ms): not after those imports (docs/performance.md,
                # "Start-up, sixth pass"; "Each module compiled once on the way to
                # ready")
                if zygote is not None:
                    zygote.compile_soon(system)
                checks = preflight.ChecksSoon(system)
                # what the system runs on, imported before prepare waits for the
                # zygote to parse the schemas: ~0.1 s of imports that came after the
                # wait overlap the zygote's start now (docs/performance.md, "Up and
                # stop").  Not for a file policy.load refused: said as soon as before
                import trio  # noqa: F401

                from . import runtime  # noqa: F401
            plan = preflight.prepare(system, None, checks)
        except PolicyError as e:
            _error(f"{e}")
            return 2
        finally:
            if checks is not None:
                checks.cancel()          # what a refused system left running
        if zygote is not None and zygote.sock is None:
            zygote = None                 # it did not answer: the system starts another
        if args.command == "check":
            return _check(plan, args)

        import trio

        from . import runtime, startsignals
        # from here on a signal is held for the system's receiver, which takes it as soon
        # as it is installed (runtime.Supervisor._signals): never raised inside trio
        startsignals.hold()
        startsignals.stop_if_held()      # one whose StoppedAtStart was dropped: said here
        return trio.run(runtime.up, plan, None, args.log_format, zygote,   # --socket: in plan
                        lock)
    finally:
        if lock is not None:
            lock.release()               # refused, stopped at start, or ended: let go


def _early_lock(system_path: str):
    """The system's lock (endpoint.Lock), taken before its file is read, checked
    and compiled, for `up` to hand to the runtime; None if it cannot be taken now,
    which the runtime then says as it always did (already running, a runtime
    directory that is not private ...).  Taken only once all that was done (a few
    hundred ms for a small system, seconds for a large one), a `wsuper stop` (or
    `status`, `revoke`) meanwhile found no system running and said so, exit 1,
    and the system then ran on: `wsuper up S & sleep 0.2; wsuper stop S` left S
    running.  Held, they wait for its admin socket (endpoint.connect_admin)."""
    import os

    from . import endpoint
    if not os.path.isfile(system_path):
        return None                      # what is wrong with it: policy.load says
    lock = endpoint.Lock(endpoint.identity(system_path))
    try:
        lock.acquire()
    except (endpoint.EndpointError, OSError):
        return None
    return lock


def _default_log_dir_said(system, problem):
    """A problem with the log directory, with what to do when it is the default one."""
    from . import endpoint
    return f"{problem}{endpoint.default_log_dir_hint()}" if problem and not system.logs \
        else problem


def _refused_by_up(system):
    """What `wsuper up` would refuse before anything starts (runtime.Supervisor.run:
    the runtime directory (its lock's, its admin socket's), the socket's directory,
    the log directory, the audit's directory and file), as a
    PolicyError, or None: check said 0 for each of them, and up then exited 2."""
    from . import endpoint, policy
    where = None
    for key, problem in (
            ("", endpoint.private_dir_problem(endpoint.runtime_dir())),   # its lock's
            ("--socket" if system.socket_option else "system.socket" if system.socket else "",
             endpoint.socket_dir_problem(system.socket or endpoint.default_socket_path(
                 system.path)) if system.external else None),
            ("system.logs" if system.logs else "", _default_log_dir_said(
                system, endpoint.own_dir_problem(
                    system.logs or endpoint.default_log_dir(endpoint.system_id(system.path)),
                    "log directory ", parents=True))),
            ("system.audit", policy.audit_file_problem(system.audit)
             if system.audit is not None else None)):
        if problem:
            if key == "--socket" or not key:
                return policy.PolicyError(system.path, key, problem)
            if where is None:
                where = policy._Where.of_file(system.path)
            return where.error(key, problem)
    return None


def _planted(option: str, output: str) -> str | None:
    """Why another user could choose where the file `output` is written, or None: a
    directory on the way they may change (endpoint.changeable_above: `-o` in a
    directory anyone may write to without the sticky bit), or what is at `output`
    is theirs in a directory anyone may write to (/tmp): a link, which open()
    follows, or a file or FIFO of theirs, which they read.  `wsuper check S
    --graph /tmp/g.dot` as root, with another user's link /tmp/g.dot ->
    /opt/victim (fs.protected_symlinks off), wrote the graph over /opt/victim;
    `trace -o` the same with the trace."""
    import os
    import stat

    from capnp_schemas.text import quoted

    from . import endpoint
    problem = endpoint.changeable_above(output, f"{option} ")
    if problem:
        return problem
    try:
        st = os.lstat(output)
        folder = os.stat(os.path.dirname(os.path.abspath(output)))
    except (OSError, ValueError):
        return None
    if folder.st_mode & stat.S_ISVTX and folder.st_mode & 0o002 \
            and st.st_uid not in (os.geteuid(), folder.st_uid):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
        return (f"{option} {quoted(output)} is {kind} of uid {st.st_uid} (not you) in a "
                f"directory anyone may write in: they choose where it leads, or read "
                f"what is written; name another file")
    return None


def overwrites(option: str, output: str, system_path: str) -> str | None:
    """Why the file `output` that a command writes (`check --graph`, `trace -o`)
    may not be written: it is one of the system's own files (policy.files_of: the
    system file, a policy file, a module, a schema, the audit file or a rotation of
    it) or lies in its log directory; or None.  `wsuper check S --graph S` wrote
    the DOT graph over the system file, `--graph calc.wat` over a module, and
    `wsuper trace S -o S` (or -o the audit file, a log file) over them while the
    system ran: lost, without a word but "wrote"."""
    import os

    from capnp_schemas.text import quoted

    from . import logs, outfile, policy
    problem = outfile.refused(option, output)   # what no output may be (build -o too)
    if problem:
        return problem
    try:
        policy.read_alone(system_path)
    except policy.PolicyError as e:
        # which files are the system's is known from its file only: one that does not
        # read (edited since `up`) named none of them, and `trace S -o audit.jsonl`
        # wrote over the running system's audit
        return (f"{option} {quoted(output)}: cannot tell whether it is one of the "
                f"system's own files (its audit file, a module, a schema, a log file), "
                f"which are never written over: {e}")
    # where the output is written: the file its path leads to, symbolic links
    # followed (as open() follows them), whether or not it exists yet.  Compared by
    # the path as given, a symbolic link to a log file (or a dangling one to a log
    # or an audit rotation not made yet) was "another file", and the trace went
    # into the log directory through it; a hard link to a log file too
    try:
        real = os.path.realpath(output)
    except (OSError, ValueError):
        real = os.path.abspath(output)
    try:
        target = os.stat(output)
    except (OSError, ValueError):
        target = None
    for what, path in policy.files_of(system_path):
        try:
            same = os.path.samefile(path, output)
        except (OSError, ValueError):
            same = False
        try:
            same = same or os.path.realpath(path) == real
        except (OSError, ValueError):
            pass
        if same:
            return (f"{option} {quoted(output)} is {what} {quoted(path)}: not writing over "
                    f"it; name another file")
    try:
        # the system file alone: a policy file that no longer parses (grants and
        # limits only) hid the log directory, and the output went into it
        folder = logs.log_dir(policy.read_alone(system_path))
    except policy.PolicyError:
        return None
    try:
        inside = os.path.samefile(os.path.dirname(real), folder)
    except (OSError, ValueError):
        inside = False
    if not inside and target is not None and target.st_nlink > 1:
        # a hard link elsewhere to a file of the log directory is that file
        # (an entry gone meanwhile, a rotation's, is passed over, not the others)
        def same(entry) -> bool:
            try:
                return os.path.samestat(entry.stat(follow_symlinks=False), target)
            except OSError:
                return False
        try:
            with os.scandir(folder) as entries:
                inside = any(same(e) for e in entries)
        except (OSError, ValueError):
            pass
    if inside:
        return (f"{option} {quoted(output)} is in (or leads into) the system's log directory "
                f"{quoted(folder)}: not writing there; name another file")
    return None


def _check(plan, args) -> int:
    import os
    import shutil
    import subprocess

    from capnp_schemas.text import printable, quoted

    from . import authority
    problem = _refused_by_up(plan.system)
    if problem:
        _error(f"{problem}")
        return 2
    problem = overwrites("--graph", args.graph, args.system) if args.graph else None
    if problem:
        _error(problem)
        return 2
    if args.graph and args.graph.endswith(".svg") and shutil.which("dot") is None:
        _error("--graph: Graphviz's dot is not installed; name a .dot file "
              "instead")
        return 2
    reach = []
    for target in args.reach:          # every name checked before anything is printed
        try:
            reach.append((target, *authority.could_reach(plan, target)))
        except KeyError as e:
            _error(f"--reach {target[:200]}: {str(e.args[0])[:500]}")
            return 2
    protection, unusable = _protection(plan)
    print(authority.holdings(plan, protection))
    for name, why in unusable:
        print(printable(f"wsuper: warning: compartment {name}: {quoted(plan.system.compartments[name].module)}: "
                        f"memory not protected: {why}"), file=sys.stderr)
    _warn_hard_links(plan)
    for unused in plan.system.unused(plan.programs):
        print(printable(f"wsuper: warning: {unused}"), file=sys.stderr)
    for target, names, why in reach:
        print(printable(f"could reach {target}: {', '.join(names) or 'nobody'}"))
        print(f"  ({printable(why)})")
    if args.graph:
        from . import outfile
        text = authority.dot(plan)
        # whole or not at all: written beside it and renamed over it at the end (a
        # failure left a half-written graph, or none where one was: r268)
        try:
            with outfile.replacing("--graph", args.graph) as out:
                if args.graph.endswith(".svg"):
                    done = subprocess.run(["dot", "-Tsvg"], input=text, text=True,
                                          stdout=out.fd, stderr=subprocess.PIPE)
                    if done.returncode:
                        _error(f"--graph: dot could not write {args.graph}: "
                               f"{done.stderr.strip()[:500]}")
                        return 1
                else:
                    data = memoryview(text.encode())
                    while data:
                        data = data[os.write(out.fd, data):]
                out.done = True
        except outfile.OutputError as e:
            _error(str(e))
            return 1
        except OSError as e:
            _error(f"--graph {quoted(args.graph)}: cannot write the graph: {e.strerror or e}")
            return 1
        print(f"wrote {quoted(args.graph)}")
    return 0


def _protection(plan) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """How each compartment's memory will be protected (docs/memory-protection.md),
    as its engine will resolve it (preflight has already refused what cannot be
    met); and (compartment, why) of each whose module declares a layout that
    cannot be read (a malformed wsuper.protect section, or two), which runs
    unprotected by default: warned of, as the module was meant to be protected."""
    import wasmtime

    from compartments import protect
    out, layouts, unusable = {}, {}, []
    for comp in plan.system.compartments.values():
        if comp.protect is None:
            out[comp.name] = "memory not protected (protect = false)"
            continue
        key = (comp.module, comp.protect, comp.limits.memory)
        if key not in layouts:
            try:
                layouts[key] = protect.prepare(protect.read_module(comp.module), comp.protect,
                                               comp.limits.memory)[1]
            except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as e:
                layouts[key] = protect.Layout(problem=f"cannot read it: {e}")
        layout = layouts[key]
        if layout.regions is None:
            why = layout.problem or (layout.error[1] if layout.error else
                                     "the module declares no layout")
            out[comp.name] = f"memory not protected ({why})"
            if layout.declared_problem and layout.declared is None and layout.error is None:
                unusable.append((comp.name, layout.declared_problem))
            continue
        r = protect.regions_of(layout)
        parts = [f"no-access [0x0, {r.no_access_end:#x})"] if r.no_access_end else []
        if r.read_only_end > r.read_only_start:
            parts.append(f"read-only [{r.read_only_start:#x}, {r.read_only_end:#x})")
        out[comp.name] = "memory protected: " + ", ".join(parts)
    return out, unusable


def _warn_hard_links(plan):
    """A writable file grant holding files with more than one hard link: one of
    them may be a link made on the host to a file outside every grant, which the
    compartment could then read and overwrite, or append to if the grant is
    append-only (docs/policy-reference.md)."""
    import os

    from capnp_schemas.text import printable, quoted

    from .hostfs import hard_linked
    for comp in plan.system.compartments.values():
        for g in comp.grants:
            if g.kind != "host" or g.target not in ("directory", "file") or g.read_only \
                    or g.refuse_hard_links:
                continue
            path = os.path.join(g.path, g.subdir) if g.subdir else g.path
            if g.target == "file":
                try:
                    n, examples, complete = int(os.lstat(path).st_nlink > 1), [path], True
                except OSError:
                    continue
            else:
                n, examples, complete = hard_linked(path)
            if n:
                # what the grant lets it do to that file: an append-only one (a stdout
                # or stderr file grant is, by default) cannot read or overwrite it
                does = "read and overwrite" if not g.append_only else \
                    "append to" if g.target == "file" else "read and append to"
                # names of files in a writable grant are a guest's text: escaped
                # and paths are shown as `check` shows them (quoted unless plain ASCII)
                file, _, key = g.origin.rpartition(": ")
                print(printable(f"wsuper: warning: {quoted(file)}: {key}: {quoted(path)} is "
                                f"writable and holds "
                                f"{n}{'' if complete else ' or more'} regular file"
                                f"{'s' * (n != 1)} with more than one hard link (such as "
                                f"{quoted(examples[0])}); a link made on the host to a file outside "
                                f"the grant lets {comp.name} {does} that file: "
                                f"remove the links, or set refuse_hard_links = true"),
                      file=sys.stderr)


def _schema_files(schemas) -> list[str]:
    """The schemas and every file they import or embed: `build -o` may name none of
    them (`-o lib.capnp`, imported by the schema given, was written over)."""
    import capnp_schemas
    files = list(schemas)
    for schema in schemas:
        try:
            files += [f for f, _, _ in capnp_schemas.closure(schema)]
        except (capnp_schemas.SchemaError, OSError):
            pass            # bindgen's load says what is wrong with it, naming it
    return files


def _build(args, output: str, include: list) -> str:
    """Build args.sources into `output`; its kind, "command" or "reactor"."""
    from . import toolchain
    reactor = args.reactor
    if reactor is None:
        texts = []
        for src in args.sources:
            with open(src, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
        # a first guess from the text; the linker has the last word either way
        if toolchain.mentions_main(texts):    # a program, unless the linker
            try:                                # finds no main: then it serves
                toolchain.build(args.sources, output, reactor=False,
                                include=include, guessed=True)
                return "command"
            except toolchain.NoMain:
                pass
        try:                # a reactor, unless its inputs define main after all
            toolchain.build(args.sources, output, reactor=True, include=include,
                            guessed=True)
            return "reactor"
        except toolchain.DefinesMain:
            reactor = False
    toolchain.build(args.sources, output, reactor=reactor, include=include)
    return "reactor" if reactor else "command"


def _toolchain(args) -> int:
    import os

    from capnp_schemas.text import quoted

    from . import bindgen, outfile, toolchain
    try:
        if args.command == "bindgen":
            for path in bindgen.generate_all(args.schemas, args.output):
                print(f"wrote {quoted(path)}")
            return 0
        include = list(args.include)
        toolchain.check_output(args.output, [*args.sources, *_schema_files(args.schema)])
        if args.schema:
            gen_dir = args.include_dir or os.path.join(
                os.path.dirname(os.path.abspath(args.output)), "include")
            bindgen.generate_all(args.schema, gen_dir)
            include.insert(0, gen_dir)
        toolchain.check_sources(args.sources)
        # built into a file of its own beside -o, renamed over it once whole: a build
        # that failed (or was interrupted) after a first link left a module that was
        # not the one asked for, or none where one was; and -o took a name the
        # runtime directory keeps (r268: outfile.refused, as trace -o and --graph)
        with outfile.replacing("-o", args.output, stream=False, make_folder=True) as out:
            kind = _build(args, out.path, include)
            out.done = True
        print(f"wrote {quoted(args.output)} ({kind})")
        return 0
    except outfile.OutputError as e:
        _error(str(e))
        return 2
    except (bindgen.BindgenError, toolchain.ToolchainError, OSError) as e:
        from capnp_schemas.text import printable

        from . import stderr
        # the compiler's lines, each escaped: they quote the sources' names and symbols
        # (a plugin's source tree named `x\x1b[2J.c`, `__asm__("\x1b]0;...")`), and
        # their terminal escapes reached the operator's terminal as they were
        stderr.line("\n".join(printable(line) for line in f"wsuper: error: {e}".split("\n")))
        return 2


def _error(text: str):
    """One error line; text from a guest, a module or a peer is shown escaped."""
    from capnp_schemas.text import printable

    from . import stderr
    stderr.line(f"wsuper: error: {printable(text)}")


def _call(system, interfaces: dict, args, fingerprints=None) -> int:
    """`interfaces`: name -> pycapnp interface module, each one the schemas declare;
    `fingerprints`: name -> the fingerprint of the schema that declares it, as loaded
    here (compared with the running system's: preflight.Plan.fingerprints)."""
    from capnp_schemas.text import quoted

    from . import captext, client, endpoint

    def refuse(text):
        _error(f"{text}")
        return 2
    name, dot, method = args.target.partition(".")
    if not dot or not method:
        return refuse(f"{args.target!r}: expected COMPARTMENT.METHOD, e.g. calc.add")
    comp = system.compartments.get(name)
    if comp is None:
        return refuse(f"no compartment {name!r} (compartments: "
                      f"{', '.join(system.compartments)})")
    if not comp.external:
        return refuse(f"compartment {name!r} is not external: from outside, only "
                      f"compartments with external = true can be called "
                      f"(external: {', '.join(system.external) or 'none'})")
    interface = interfaces.get(comp.exports)
    if interface is None:
        return refuse(f"compartment {name!r} exports {comp.exports!r}, which no schema of "
                      f"the system declares")
    try:
        declared_by, found = captext.find(interface.schema, method)
    except KeyError as e:
        return refuse(f"{comp.exports} {e.args[0]}")
    try:
        params = captext.typed(captext.parse(args.params), found.param_type)
    except captext.TextError as e:
        return refuse(f"parameters of {comp.exports}.{method}: {e}")
    import time
    deadline = time.monotonic() + args.timeout     # --timeout bounds it all, the lookup too
    try:
        running = _running(args.system, args.timeout)     # (with --socket too: its schemas)
    except (endpoint.SystemStarting, endpoint.SystemSuspended) as e:
        # still starting after --timeout, or its `up` stopped (SIGSTOP): said as it is
        # ("no answer within 30 s (the running system did not say on its admin socket
        # where its external socket is)", after all of --timeout for a stopped one)
        _error(f"{name}.{method}: {e}; not called")
        return 1
    ran = running.get("schemas") if isinstance(running.get("schemas"), dict) else {}
    if fingerprints and comp.exports in ran and ran[comp.exports] != fingerprints.get(comp.exports):
        # the running system reads the parameters in the layout its schemas had at
        # `wsuper up`: written with the schema as it is now, a changed field's type
        # or order was read as something else, and the call answered, no word said
        return refuse(f"{comp.name}.{method}: the schema that declares {comp.exports} (or a "
                      f"file it reads) has changed since the running system was started "
                      f"(`wsuper up`): the parameters could be written in a layout it does "
                      f"not read; call with the schema it started with, or restart the system")
    socket = running.get("socket")
    socket = socket if isinstance(socket, str) and socket.startswith("/") else None
    path = args.socket or socket or system.socket or \
        endpoint.default_socket_path(system.path)
    if not running and not args.socket and not endpoint.is_running(args.system) \
            and not endpoint.file_locked(args.system) and endpoint.answers(path):
        # this system is not running, yet something listens where its file says its
        # socket is: another system of yours naming the same socket (a copy of the
        # file, the next version of it), whose schemas were never compared with
        # these; it answered as this one
        _error(f"{name}.{method}: {quoted(args.system)} is not running, but something "
               f"listens on its socket {quoted(path)}: another system (one naming the "
               f"same socket?), not called as this one; give --socket {quoted(path)} to "
               f"call it as any client would")
        return 1
    if time.monotonic() >= deadline:
        _error(f"{name}.{method}: no answer within {args.timeout:g} s (the running system "
               f"did not say on its admin socket " +
               ("what its schemas are)" if args.socket else "where its external socket is)"))
        return 1
    try:
        from compartments.limits import Limits
        text = client.call(path, name, interface, method, params, args.timeout, args.json,
                           declared_by, deadline=deadline,
                           message_size=(system.external_limits or Limits()).message_size)
    except client.CallFailed as e:
        hint = ""
        if str(e).startswith("cannot connect to ") and not running and not args.socket \
                and not endpoint.is_running(args.system) \
                and not endpoint.file_locked(args.system):
            # "cannot connect to /run/x.sock: [Errno 111] Connection refused" of a
            # system that is not running (its socket left by an `up` killed), under
            # any XDG_RUNTIME_DIR (its file is not locked either)
            hint = f"; {quoted(args.system)} is not running"
        elif str(e).startswith("cannot connect to ") and not args.socket and not system.socket:
            # `up --socket PATH` binds where the system file does not say
            hint = ("; if the system was started with `wsuper up --socket PATH`, "
                    "give `call` the same --socket PATH")
        _error(f"{name}.{method}: {e}{hint}")
        return 1
    from capnp_schemas.text import printable
    # the compartment's text, escaped as a whole: only the newlines of the
    # format itself start lines (U+2028, U+0085 ... inside a value stay escaped)
    print("\n".join(printable(line) for line in text.split("\n")))
    return 0


def _running(system_path: str, timeout: float) -> dict:
    """What the running system `system_path` says on its admin socket: where it
    listens for external clients ("socket": `up --socket PATH` binds where the
    system file does not say) and the fingerprints of its schemas as it loaded them
    ("schemas"); {} when no system runs there or it does not say within `timeout`
    (call's --timeout: asked with the admin requests' 30 s, twice over, a system
    that did not answer kept `call --timeout 1` waiting 31 s).  A system still
    starting is waited for, within `timeout`: SystemStarting past it; one whose
    `up` is stopped (SIGSTOP) is SystemSuspended at once."""
    from . import endpoint
    if not endpoint.is_running(system_path):
        return {}
    try:
        answer = endpoint.request(system_path, {"op": "socket"}, timeout, wait_start=True,
                                  notice=_notice)
    except (endpoint.SystemStarting, endpoint.SystemSuspended):
        raise
    except endpoint.EndpointError:
        return {}
    return answer if isinstance(answer, dict) and answer.get("ok") else {}


#: `wsuper status`'s exit code for a system still starting (0: it runs, and the table
#: is its answer; 1: it is not running, or cannot be asked)
STATUS_STARTING = 3


def _notice(text: str):
    """A line on stderr while a command waits for its system's answer."""
    from capnp_schemas.text import printable

    from . import stderr
    stderr.line(f"wsuper: {printable(text)}")


def _admin(args) -> int:
    """`status` and `stop`: one request to the running system's admin socket, as the
    system's state allows (endpoint.system_state): one still starting is said so by
    `status` (exit 3), and sent SIGTERM by `stop`; one whose `up` is stopped
    (SIGSTOP, Ctrl-Z) is said so at once, nothing sent."""
    import json
    import os
    import signal
    import time

    from capnp_schemas.text import printable, quoted

    from . import endpoint
    if not _running_or_read(args.system):
        return 2
    state = endpoint.system_state(args.system)
    if state.kind == endpoint.SUSPENDED:
        # connected, the request went into its backlog, and the command waited 30 s
        # for an answer that could not come ("did not answer", exit 1); a stop so
        # sent was carried out whenever the system was continued
        _error(endpoint.suspended_said(args.system, state.pid))
        return 1
    if state.kind == endpoint.STARTING and args.command == "status":
        # it waited 30 s, then said "... is its `wsuper up` stuck starting?", exit 1
        if args.json:
            print(json.dumps({"state": "starting", "pid": state.pid}, indent=2))
        else:
            print(printable(f"system {args.system}: starting (pid {state.pid}): its wsuper "
                            f"up reads, checks and compiles it; no compartment runs yet"))
        return STATUS_STARTING
    if state.kind == endpoint.STARTING:
        # its `up` reads, checks and compiles the system before its admin socket is
        # bound: `wsuper stop` waited 30 s for it, said "is its `wsuper up` stuck
        # starting?", exit 1, and the system then started and ran on.  SIGTERM is
        # how `up` stops at any moment of its start (StoppedAtStart: exit 143)
        starting = state.pid
        try:
            os.kill(starting, signal.SIGTERM)
        except OSError as e:
            _error(f"cannot stop {args.system} while it starts (pid {starting}): "
                   f"{e.strerror or e}")
            return 1
        answer = {"ok": True, "pid": starting}
        print(f"wsuper: {quoted(args.system)} is starting (its admin socket is not up "
              f"yet): sent SIGTERM to its wsuper up (pid {starting})")
    else:
        try:
            answer = endpoint.request(args.system, {"op": args.command}, notice=_notice)
        except endpoint.EndpointError as e:
            _error(f"{e}")
            return 1
    if not answer.get("ok"):
        _error(f"{answer.get('error', 'refused')}")
        return 1
    if args.command == "stop":
        began = time.monotonic()
        deadline = began + STOP_WAIT
        pid = answer.get("pid")
        while time.monotonic() < deadline:
            held, holder = endpoint.lock_holder(args.system)
            if held is not True:
                # the path as check shows it: a directory named by a plugin's
                # author (`wsuper stop plugins/*/system.toml`) wrote its terminal
                # escapes (ESC [2J ...) as they were
                print(f"wsuper: stopped {quoted(args.system)}")
                return 0
            if endpoint.another_holds(pid, holder):
                # the up that was asked let go of the lock, and a new `wsuper up` of
                # the same system took it before this looked (`wsuper stop S & wsuper
                # up S`, a service manager restarting it): waited for that one, and
                # said after 30 s that the system asked "has not stopped", exit 1
                print(f"wsuper: stopped {quoted(args.system)} (pid {pid}); another wsuper "
                      f"up of it has started since (pid {holder})")
                return 0
            if isinstance(pid, int) and endpoint.stopped(pid):
                # stopped (SIGSTOP) while it stopped: waited out STOP_WAIT, no word
                _error(f"asked {args.system} to stop, and it is stopping, but its wsuper "
                       f"up (pid {pid}) has been stopped (SIGSTOP, Ctrl-Z, or a debugger): "
                       f"it ends once continued (kill -CONT {pid})")
                return 1
            time.sleep(STOP_LOOK_SOON if time.monotonic() - began < STOP_SOON else STOP_LOOK)
        # not "stopped": a script that goes on (`wsuper stop S && wsuper up S`) would
        # find it still running; said as an error, exit 1
        _error(f"asked {args.system} to stop (pid {answer.get('pid')}); it has not "
               f"stopped within {STOP_WAIT:g} s")
        return 1
    status = answer["status"]
    if args.json:
        print(json.dumps({"state": "stopping" if status.get("stopping") is True
                          else "running", **status}, indent=2))
        return 0
    print("\n".join(printable(line) for line in _status_table(args.system, status).split("\n")))
    return 0


#: the columns of `wsuper status` (the README says what each one is)
STATUS_COLUMNS = ("COMPARTMENT", "STATE", "PID", "UPTIME", "RESTARTS", "GEN", "SERVED", "FAILED",
                  "MEMORY", "HANDLES", "IN FLIGHT")


def _status_table(path: str, status: dict) -> str:
    def dur(s):
        if s is None:
            return "-"
        s = int(s)
        return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else \
            f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

    def mib(b):
        return "-" if b is None else f"{b / (1 << 20):.1f}MiB"

    head = STATUS_COLUMNS
    # an engine stopped by a signal or a debugger answers nothing until continued
    rows = [head] + [(c["name"], c["state"] + (f" (stopped: kill -CONT {c['pid']})"
                                               if c.get("stopped") is True else ""),
                      str(c["pid"] or "-"), dur(c["uptime_s"]),
                      str(c["restarts"]), str(c["generation"]), str(c["served"]),
                      str(c["failed"]), mib(c["memory_bytes"]), str(c["handles"]),
                      f"{c['calls_from']} out, {c['calls_to']} in")
                     for c in status["compartments"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"system {path}: " + ("stopping, " if status.get("stopping") is True else "")
             + f"pid {status['pid']}, up {dur(status['uptime_s'])}, "
             f"run {status['run']}" + (f", external: {', '.join(status['external'])}"
                                      if status["external"] else "")]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _load(path: str):
    """The system file at `path` of a system that runs (commands to it), or None
    after saying why it cannot be read.  Its text only (policy.read): not the files
    it names, which the system's compartments may have changed since it started."""
    from . import policy
    try:
        return policy.read(path)
    except policy.PolicyError as e:
        _error(f"{e}")
        return None


def _running_or_read(path: str) -> bool:
    """Whether a command may go on to the system at `path`: at once if one runs there
    (it knows its own grants; the file may have been edited since `up`, or a policy
    file it shares with other systems: a grant no longer revocable in the text, or a
    file that no longer parses, locked the operator out of `wsuper revoke`, `stop`
    and `status` of the system already running); otherwise if the file reads (its
    error says more than "no running system" would)."""
    from . import endpoint
    return endpoint.is_running(path) or _load(path) is not None


def _logs(args) -> int:
    from . import logs, policy
    # the system file alone: its [system] logs and compartments are all `logs` needs,
    # and a policy file (grants and limits) shared with other systems, removed or
    # broken since `up`, locked the operator out of the running system's logs
    try:
        system = policy.read_alone(args.system)
    except policy.PolicyError as e:
        _error(f"{e}")
        return 2
    if args.compartment is not None and args.compartment not in system.compartments:
        _error(f"{args.system} has no compartment {args.compartment!r} "
              f"(compartments: {', '.join(system.compartments)})")
        return 2
    try:
        for line in logs.lines(system, args.compartment, follow=args.follow):
            print(line, flush=args.follow)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except logs.NoLogs as e:
        _error(f"{e}")
        return 1
    return 0


def _revoke(args) -> int:
    from capnp_schemas.text import printable

    from . import endpoint
    if not endpoint.is_running(args.system):
        # nothing runs there: the file's own answer (the running system's is its own,
        # whatever the file says now)
        system = _load(args.system)
        if system is None:
            return 2
        revocable = sorted(f"{c.name}.{g.name}" for c in system.compartments.values()
                           for g in c.grants if g.revocable)
        if args.grant not in revocable:
            _error(f"{args.system} has no revocable grant {args.grant!r} "
                  f"(revocable: {', '.join(revocable) or 'none'})")
            return 2
    else:
        # it runs: the grants it published as it started (its own, whatever the file
        # says now).  A grant not among them is refused here, at once: asked, a
        # system that did not answer (stopped: SIGSTOP) held this ADMIN_ANSWER_TIMEOUT
        # (30 s), then exit 1, for what is a wrong argument (exit 2) either way
        revocable = endpoint.running_grants(args.system)
        if revocable is not None and args.grant not in revocable:
            _error(f"no revocable grant {args.grant!r} "
                   f"(revocable: {', '.join(revocable) or 'none'})")
            return 2
    try:
        answer = endpoint.request(args.system, {"op": "revoke", "grant": args.grant},
                                  notice=_notice)
    except endpoint.EndpointError as e:
        _error(f"{e}")
        return 1
    if answer.get("ok"):
        print(printable(f"wsuper: ok: {answer.get('text', '')}"))
        return 0
    _error(f"{answer.get('error', 'refused')}")
    # a grant the system does not have is a wrong argument, whether it runs or not:
    # exit 2 both ways (the running system's refusal exited 1, the file's 2)
    return 2 if answer.get("unknown") is True else 1


def run():
    """The `wsuper` program (and `python -m supervisor.cli`): main(), then the end of
    the process without the interpreter's teardown, which only frees what the
    process holds (every module, pycapnp's and wasmtime's objects) and took 12-95
    ms of CPU after every command (`check` 40-95 ms, `up` 12-24 ms: strace, from
    main's return to exit_group; docs/performance.md, "Up and stop").  What the
    teardown does that shows is done first: the atexit handlers (the schemas'
    private copies removed, capnp_schemas) and stdout and stderr flushed.  Any
    thread still running that is not a daemon, or a flush that fails (a reader
    gone), and the interpreter ends as before: it waits for the one, and says the
    other as it always did."""
    code = main()
    if not isinstance(code, int):
        sys.exit(code)
    import atexit
    import os
    import threading
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive()
           for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    run()
