"""What the supervisor asks the zygote to start: one engine's configuration.

Owns: `EngineSpec`, its JSON form (one object per request, see zygote.py)
and the validation of that form.  The supervisor builds a spec and sends
`to_json()`; the zygote reads it back with `from_json()`, which accepts
exactly the keys and types below and refuses anything else with
`SpecError` naming the key, before any engine is forked.

Must not: read files, import wasmtime, the engine, trio or the supervisor.
"""
from __future__ import annotations

import json
import re

import attrs

from .limits import Limits
from .protect import Setting as Protect

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
MAX_REQUEST = 1 << 16       # bytes of one request line
MAX_ID = (1 << 32) - 2      # the largest uid or gid (2^32 - 1 means "unchanged")
#: The engine's exit code when its guest called exit(0) in a call it served with no
#: run() to answer (engine.EXIT_GUEST is any other code): the supervisor reads it
#: as the engine's end by itself, as EXIT_OK (a program that ended with exit 0 is
#: not restarted for it), and names the exit (the engine's last stderr line)
EXIT_GUEST_OK = 7


class SpecError(ValueError):
    """A request the zygote refuses; str() names the key and what is wrong."""


@attrs.frozen
class EngineSpec:
    name: str                       # the compartment
    module: str                     # absolute path of its module file
    exports: bool = False           # it serves an interface (its main object)
    per_call: bool = False          # a fresh instance for every incoming call
    stats: bool = False             # time outgoing calls, report them on stderr
    limits: Limits = Limits()
    #: (uid, gid) the engine runs as when the zygote runs as root; None: not root
    user: tuple | None = None
    #: probe points compiled into the module (instrument.POINTS); () runs it as it is
    instrument: tuple = ()
    protect: Protect | None = None  # memory protection (compartments/protect.py); None: off

    @classmethod
    def of(cls, comp, user, **run) -> "EngineSpec":
        """The spec of a system's compartment `comp` (policy.Compartment: its name,
        module, limits, probes and protection, all its compile depends on); `user`:
        the system's engine_user; `run`: how this start runs it (exports, per_call,
        stats).  One place for `up`'s early compiles (launch.Launched.compile_soon)
        and its starts (runtime), whose compiles must be the same."""
        return cls(comp.name, comp.module, limits=comp.limits, user=user,
                   instrument=comp.instrument, protect=comp.protect, **run)

    def to_json(self) -> bytes:
        return json.dumps({
            "name": self.name, "module": self.module, "exports": self.exports,
            "per_call": self.per_call, "stats": self.stats,
            "limits": attrs.asdict(self.limits),
            "user": list(self.user) if self.user is not None else None,
            "instrument": list(self.instrument),
            "protect": self.protect.to_json() if self.protect is not None else None,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "EngineSpec":
        if len(data) > MAX_REQUEST:
            raise SpecError(f"request of {len(data)} bytes (at most {MAX_REQUEST})")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise SpecError(f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise SpecError("not a JSON object")
        extra = set(obj) - _KEYS
        if extra:
            raise SpecError(f"unknown key {sorted(extra)[0]!r}")
        missing = {"name", "module"} - set(obj)
        if missing:
            raise SpecError(f"missing key {sorted(missing)[0]!r}")
        name, module = obj["name"], obj["module"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"name: not a compartment name: {name!r}")
        if not isinstance(module, str) or not module.startswith("/") or "\0" in module:
            raise SpecError(f"module: not an absolute path: {module!r}")
        flags = {}
        for key in ("exports", "per_call", "stats"):
            v = obj.get(key, False)
            if not isinstance(v, bool):
                raise SpecError(f"{key}: expected true or false, got {v!r}")
            flags[key] = v
        return cls(name, module, **flags, limits=_limits(obj.get("limits", {})),
                   user=_user(obj.get("user")), instrument=_instrument(obj.get("instrument")),
                   protect=_protect(obj.get("protect")))


_KEYS = {"name", "module", "exports", "per_call", "stats", "limits", "user", "instrument",
         "protect"}
_POINTS = ("functions", "blocks", "stores")      # instrument.POINTS (not imported: no wasmtime)


def _instrument(v) -> tuple:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(p, str) and p in _POINTS for p in v) \
            or len(set(v)) != len(v):
        raise SpecError(f"instrument: expected a list of distinct points from "
                        f"{', '.join(_POINTS)}, got {v!r}")
    return tuple(p for p in _POINTS if p in v)


def _protect(v):
    if v is None:
        return None
    try:
        return Protect.from_json(v)
    except ValueError as e:
        raise SpecError(f"protect: {e}") from None


def _limits(obj) -> Limits:
    if not isinstance(obj, dict):
        raise SpecError("limits: expected an object")
    fields = attrs.fields_dict(Limits)
    values = {}
    for key, v in obj.items():
        if key not in fields:
            raise SpecError(f"limits: unknown key {key!r}")
        if v is None and fields[key].default is None:     # a limit that may be absent
            values[key] = None
            continue
        low, high, _size = Limits.RANGES[key]
        kinds = (int, float) if key in Limits.REAL else int
        if isinstance(v, bool) or not isinstance(v, kinds) or not low <= v <= high:
            raise SpecError(f"limits.{key}: expected a number from {low} to {high}, got {v!r}")
        values[key] = v
    return Limits(**values)


def _user(v):
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and
            all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_ID for i in v)):
        raise SpecError(f"user: expected [uid, gid] from 1 to {MAX_ID}, got {v!r}")
    return (v[0], v[1])
