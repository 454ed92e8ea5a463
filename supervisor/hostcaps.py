"""Host capabilities: the objects the supervisor serves itself.

A log, a clock, a random source, an environment, directories and files: the
router (router.py) hands every call on one of them over as a `HostCall`
effect, and the runtime asks `HostCaps.serve` for the answer.  Parameters are
decoded here, eagerly and completely, by the method's params struct in
host.capnp (capnp_schemas/hosted.py): a field that cannot be read fails that
call with EINVAL and goes no further.  Dispatch is derived from the schema
too: a call of `Directory.open` runs `hostfs.Directory.open(**params)` (see
hostfs.py for the contract), and its results are built back by the schema.

What touches files never runs on the event loop: `serve` returns a `Job`
for those, which the runtime runs in a worker thread under a deadline; the
rest (log, clock, random, environment) answers at once.  Results never
exceed what the caller accepts (`max_bytes`).

This module owns the host servers' own limits (a log's line rate, a random
source's bytes per call) and nothing else: attenuation (read-only, allow
lists, quotas on calls) is the membranes' (membrane.py) and hostfs's.
"""
from __future__ import annotations

import inspect
import keyword
import os
import threading
import time

import attrs

from capnp_schemas import hosted, payloads, protocol
from capnp_schemas.payloads import DecodeError
from capnp_schemas.text import bounded, first_line
from compartments import abi

from . import endpoint, hostfs
from .supervision import TokenBucket

LOG_LINE_LIMIT = 4096        # characters of one Log line that are shown
RANDOM_MAX_BYTES = 65536     # Random.bytes per call
IO_DEADLINE = 10.0           # seconds a file operation may take before its call fails
#: the host objects whose operations take turns, each after those before it on the
#: same object (serve's `at_once`); log, clock, random and environment answer at once
TAKE_TURNS = ("directory", "file")


@attrs.define
class LogLine:
    compartment: str
    text: str


@attrs.define
class Answer:
    """The call returns `content`; `objects`: (kind, served) of the capabilities in it;
    `lines`: LogLines to show; `notices`: lines for the operator, about `owner`."""
    content: object
    objects: tuple = ()
    lines: tuple = ()
    notices: tuple = ()


@attrs.frozen
class Refusal:
    """The call fails; `notice`: something the operator should know (a fault here)."""
    reason: str
    type: str = "failed"
    notice: str | None = None


class Job:
    """A host call that touches the file system: `run()` (in a worker thread) gives
    its Answer or Refusal and never raises."""

    def __init__(self, label: str, method: hosted.Method, fn, kwargs: dict):
        self.label = label
        self.method = method
        self._fn = fn
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._abandoned = False
        self._begun = False
        self._outcome = None

    def run(self):
        """The operation, unless its caller already gave up (`abandon`): then None,
        and it is never begun."""
        with self._lock:
            if self._abandoned:
                return None
            self._begun = True
        outcome = self._run()
        with self._lock:
            self._outcome = outcome
            abandoned = self._abandoned
        if abandoned:                 # nobody will take what it opened: close it
            _release_objects(outcome)
        return outcome

    def abandon(self) -> bool:
        """The caller gave up waiting (a deadline): what `run` opens, now or when it
        finishes, is released, and a `run` not yet begun never begins.  True if it
        had begun (it may still complete)."""
        with self._lock:
            self._abandoned = True
            outcome, begun = self._outcome, self._begun
        _release_objects(outcome)
        return begun

    def _run(self):
        values = None
        try:
            values = self._fn(**self._kwargs)
            content, objects = payloads.build(self.method.results, values)
            return Answer(content, tuple((kind_of(o), o) for o in objects))
        except hostfs.FsError as e:
            return Refusal(f"{e.code}: {self.label}: {e}")
        except Exception as e:  # noqa: BLE001 - a fault in the host layer fails this call only
            for obj in (values or {}).values() if isinstance(values, dict) else ():
                if isinstance(obj, (hostfs.File, hostfs.Directory)):
                    release(kind_of(obj), obj)
            return Refusal(f"EIO: internal error in {self.method.name} on {self.label}",
                           notice=f"internal error serving {self.method.name} on {self.label}: "
                                  f"{type(e).__name__}: {first_line(e)}")


def _release_objects(outcome):
    if isinstance(outcome, Answer):
        for kind, served in outcome.objects:
            release(kind, served)


def kind_of(obj) -> str:
    return "directory" if isinstance(obj, hostfs.Directory) else "file"


class GrantOpening:
    """Opening a host grant's file or directory in a worker thread (`run`), which the
    runtime may give up waiting for (`abandon`): then what it opens is closed.
    `quota`: the grant's write quota (HostCaps.write_quota), which outlives this
    opening: a restart opens the grant again and spends from the same quota."""

    def __init__(self, grant, quota: hostfs.WriteQuota | None = None):
        self.grant = grant
        self.quota = quota
        self._lock = threading.Lock()
        self._abandoned = False
        self._opened = None

    def run(self):
        opened = open_grant(self.grant, self.quota)
        with self._lock:
            self._opened, abandoned = opened, self._abandoned
        if abandoned:
            release(self.grant.target, opened)
        return opened

    def abandon(self):
        with self._lock:
            self._abandoned, opened = True, self._opened
        if opened is not None:
            release(self.grant.target, opened)


def open_grant(grant, quota: hostfs.WriteQuota | None = None):
    """The served object of a host grant (a policy.Grant): opens its file or
    directory.  Blocking: the runtime calls it in a worker thread.  Raises
    hostfs.FsError or OSError when the path cannot be opened.  `quota`: what is
    left of the grant's max_bytes_written (HostCaps.write_quota); without it, a
    new quota of max_bytes_written (for one opening only)."""
    if quota is None:
        quota = hostfs.WriteQuota(grant.max_bytes_written)
    attenuation = dict(read_only=grant.read_only, append_only=grant.append_only,
                       quota=quota, refuse_hard_links=grant.refuse_hard_links,
                       name=grant.name,       # its errors go to the guest: not the path
                       # not somewhere another user chose (a link on the way)
                       vet=lambda found: endpoint.redirected_grant(grant.path, found))
    if grant.target == "directory":
        return hostfs.Directory.grant(grant.path, subdir=grant.subdir, **attenuation)
    if grant.target == "file":
        return hostfs.File.grant(grant.path, **attenuation)
    if grant.target == "environment":
        return Environment((tuple(grant.args), dict(grant.vars)))
    return None


class Environment(tuple):
    """An environment grant's served object: (args, variables), and the answers to
    Environment.args and .vars once built (`answers`: method name -> Content), which
    never change.  Built for every call, an environment as large as its holder's
    message_size allows (10,000 variables) cost the supervisor's loop ~9 ms a call,
    150 times a Clock call (an outside review)."""

    def __init__(self, _value=()):
        super().__init__()
        self.answers: dict = {}


def release(kind: str, served):
    """Close what a host object holds.  Blocking (a close may flush): worker thread."""
    if kind in ("directory", "file") and served is not None:
        try:
            served.close()
        except OSError:
            pass


class HostCaps:
    """The host servers.  `log_rate(owner)` is a compartment's Log lines per second;
    `clock()` is monotonic seconds (for rates); the sources are injectable."""

    def __init__(self, log_rate, clock=time.monotonic, wall_ns=time.time_ns,
                 monotonic_ns=time.monotonic_ns, entropy=os.urandom):
        self.log_rate = log_rate
        self.clock = clock
        self.wall_ns, self.monotonic_ns, self.entropy = wall_ns, monotonic_ns, entropy
        # a writer -> its lines per second (to every log), and (owner, writer) -> the
        # writer's at the owner's rate on a Log it was handed (_log)
        self._log_budget: dict = {}
        # writer -> {owner of the log: [lines refused and not yet said, the rate]}
        self._log_refused: dict[str, dict[str, list]] = {}
        self._log_refused_said: dict[str, float] = {}    # writer -> when that was last said
        self._signatures: dict[tuple, tuple] = {}      # (class, method) -> _signature()
        self._servers: dict = {}                       # kind -> its method here (_log, ...)
        self._quotas: dict[tuple, hostfs.WriteQuota] = {}  # (owner, grant) -> its quota

    def write_quota(self, owner: str, grant) -> hostfs.WriteQuota:
        """The write quota (max_bytes_written) of `owner`'s grant, for as long as the
        system runs: a grant's quota belongs to the grant, not to one run of its
        holder, so a holder that restarts (and has its grants opened anew) goes on
        spending what was left, as a membrane's max_uses does."""
        key = (owner, grant.name)
        quota = self._quotas.get(key)
        if quota is None:
            quota = self._quotas[key] = hostfs.WriteQuota(grant.max_bytes_written)
        return quota

    def serve(self, call, at_once: bool = True):
        """The answer to a `effects.HostCall`: an Answer or Refusal now, or a Job.
        `at_once`: nothing else is under way on the object (the caller's turns say),
        so a file call that needs no waiting may be answered now; else every file
        call is a Job, which takes its turn after those before it."""
        iface = hosted.BY_KIND.get(call.kind)
        if iface is None or call.interface_id != iface.id \
                or not 0 <= call.method_id < len(iface.methods):
            names = ", ".join(m.name for m in iface.methods) if iface else ""
            return Refusal(f"ENOTSUP: a {call.kind} implements {iface.name if iface else '?'}"
                           f" ({names}) only", "unimplemented")
        method = iface.methods[call.method_id]
        content = call.content
        words = content.size() // 8 + 1024
        try:
            params = payloads.read(method.params, content, words)
        except DecodeError as e:
            return Refusal(f"EINVAL: {iface.name}.{method.name}: malformed params: {e}")
        server = self._servers.get(call.kind)
        if server is None:
            server = self._servers[call.kind] = getattr(self, "_" + call.kind)
        try:
            if call.kind in TAKE_TURNS:
                return server(call, iface, method, params, at_once)
            return server(call, iface, method, params)
        except (ValueError, OverflowError) as e:
            return Refusal(f"EINVAL: {iface.name}.{method.name}: {first_line(e)}")

    # ------------------------------------------------------------ served at once

    def _log(self, call, iface, method, params):
        now = self.clock()
        owner = call.owner
        writer = call.caller or owner
        # Every line is the writer's: it spends the writer's own log_rate, whoever's
        # log it goes to.  A line to a Log handed on by another compartment (or to an
        # external client) also spends a budget of the writer's own for that log, at
        # the owner's log_rate, and never the owner's: on the owner's bucket, which
        # all of the owner's logs share (stdout, stderr, any log grant), another
        # compartment made the owner's own lines fail EAGAIN, a limit of one
        # compartment reached by another; and no writer fills the owner's log faster
        # than the owner itself may.
        taken = []
        for key, rate_of in ((writer, writer), ((owner, writer), owner)) \
                if writer != owner else ((owner, owner),):      # (bucket, whose rate)
            budget = self._log_budget.get(key)
            if budget is None:
                budget = self._log_budget[key] = TokenBucket(self.log_rate(rate_of), now)
            if not budget.take(now):
                for given in taken:
                    given.give_back()
                refused = self._log_refused.setdefault(writer, {}).setdefault(
                    owner, [0, 0.0])
                refused[0] += 1
                refused[1] = budget.rate
                whose = "" if key == writer else f"{owner}'s "
                into = "its logs" if key == writer else f"{owner}'s log"
                return Refusal(f"EAGAIN: {writer} writes to {into} faster than "
                               f"{budget.rate:g} lines/s ({whose}limit log_rate)",
                               "overloaded")
            taken.append(budget)
        text = bounded(params["text"], LOG_LINE_LIMIT)
        note = None
        if writer in self._log_refused and \
                now - self._log_refused_said.get(writer, -1.0) >= 1.0:
            self._log_refused_said[writer] = now      # at most once a second
            note = self.log_refused(writer)
        return Answer(protocol.EMPTY, lines=(LogLine(owner, text),),
                      notices=(note,) if note else ())

    def log_refused(self, writer: str) -> str | None:
        """What the operator was not told yet: how many of the log lines `writer` wrote
        were refused by log_rate since it was last said (with a line shown, at most
        once a second, and when its program ends or its engine stops).  The plugin got
        EAGAIN for each; without this a burst of printf (a WASI program's stdout) lost
        its lines and nobody watching the system ever knew."""
        refused = self._log_refused.pop(writer, None)
        if not refused:
            return None
        said = []
        for owner, (count, rate) in refused.items():
            into = "" if owner == writer else f" (to {owner}'s log)"
            said.append(f"{count} log line{'s' * (count != 1)} of {writer}{into} not "
                        f"shown: more than {rate:g} a second (limit log_rate)")
        return "; ".join(said)

    def _clock(self, call, iface, method, params):
        ns = self.wall_ns() if method.name == "wall" else self.monotonic_ns()
        return Answer(payloads.build(method.results, {"ns": ns})[0])

    def _random(self, call, iface, method, params):
        count = params["count"]
        most = min(RANDOM_MAX_BYTES, abi.random_most(call.max_bytes))
        if count > most:
            return Refusal(f"EINVAL: Random.bytes: at most {most} bytes per call, not {count}")
        return Answer(payloads.build(method.results, {"data": self.entropy(count)})[0])

    def _environment(self, call, iface, method, params):
        args, variables = call.served
        built = getattr(call.served, "answers", None)      # (an Environment's)
        content = built.get(method.name) if built is not None else None
        if content is None:
            if method.name == "args":
                values = {"args": list(args)}
            elif method.name == "vars":
                values = {"vars": [{"name": k, "value": v} for k, v in variables.items()]}
            else:
                values = {"value": variables.get(params["name"], ""),
                          "present": params["name"] in variables}
            content = payloads.build(method.results, values)[0]
            if built is not None and method.name in ("args", "vars"):
                built[method.name] = content
        if content.size() > call.max_bytes:
            return Refusal(f"E2BIG: Environment.{method.name}: more than the caller's "
                           f"message size limit")
        return Answer(content)

    # ------------------------------------------------------------ served by a worker

    def _job(self, call, iface, method, params, at_once: bool = True):
        obj = call.served
        name = method.name
        fn = getattr(obj, name, None)
        if obj is None or fn is None:
            return Refusal(f"ENOTSUP: {iface.name}.{name} is not served here",
                           "unimplemented")
        sig = self._signatures.get((type(obj), name))
        takes, renamed = sig if sig is not None else self._signature(obj, name)
        kwargs = {renamed.get(k, k): v for k, v in params.items()} if renamed else params
        if takes:
            # the caller's message_size itself: each hostfs method that takes it keeps
            # the room its answer's own structure needs (hostfs.RESULT_SLACK, and a
            # listing each entry's); 1 KiB more kept here (RESULT_HEADROOM, gone) left a
            # compartment of message_size = "1KiB", the least allowed, no byte of
            # any File.read (a WASI read failed E2BIG), nor a listing or a readlink
            kwargs["max_bytes"] = call.max_bytes
        if name == "read" and isinstance(obj, hostfs.File):
            if kwargs.get("count", 0) > 0 and \
                    kwargs["max_bytes"] <= hostfs.RESULT_SLACK:
                # no byte fits: an answer without data reads as the end of the file
                # max_bytes is the caller's message_size: it is the one to raise (the
                # owner, whose grant the File came through, was named)
                return Refusal(f"E2BIG: file {obj.label}: not one byte read fits in a "
                               f"message to {call.caller or call.owner} (raise its "
                               f"message_size)")
            # a read the page cache can serve needs no worker thread (~90 µs a hand-off
            # here); one that would wait for the disk still goes to one, and so does
            # one on a File with an operation queued or running (it would overtake it)
            values = obj.read_now(**kwargs) if at_once else None
            if values is not None:
                return Answer(payloads.build(method.results, values)[0])
        return Job(f"{call.kind} {getattr(obj, 'label', '?')}", method, fn, kwargs)

    _directory = _file = _job

    def _signature(self, obj, name: str) -> tuple[bool, dict]:
        """Whether `obj`'s method `name` takes max_bytes, and its parameters that are
        Python keywords (`from` -> `from_`), looked up once per class and method."""
        key = (type(obj), name)
        sig = self._signatures.get(key)
        if sig is None:
            parameters = inspect.signature(getattr(type(obj), name)).parameters
            sig = self._signatures[key] = (
                "max_bytes" in parameters,
                {k[:-1]: k for k in parameters if k.endswith("_") and keyword.iskeyword(k[:-1])})
        return sig
