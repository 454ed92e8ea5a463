"""system.toml -> System: parsing and validation, with errors that name file, line and key.

`parse(text, path)` is pure (no file access) so every rule is unit-tested on
strings; `load(path)` reads the file and then checks what needs the disk
(modules exist, schema files load).  Nothing is granted by default: a
compartment holds exactly the grants written under it.
"""
from __future__ import annotations

import functools
import math
import os
import re
import stat
import sys
import tomllib

import attrs

import capnp_schemas
from capnp_schemas.text import ascii_printable, quoted, unseen_character
from compartments import protect as protection
from compartments.limits import MAX_MODULE_BYTES, Limits

from . import mounts
from .supervision import MODES, RestartPolicy

HOST_CAPS = tuple(capnp_schemas.HOST_KINDS)    # the host capabilities a grant can name
PATH_CAPS = ("directory", "file")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
#: compartment names that are the supervisor's own: each compartment's log file is
#: NAME.log beside the supervisor's supervisor.log (output.SUPERVISOR), so a
#: compartment of that name wrote its lines into the supervisor's log, every event
#: about it twice, and `wsuper logs` showed every event two to four times
RESERVED_NAMES = frozenset({"supervisor"})
#: What the audit ("caller"), the supervisor's events, call probes and traces call
#: every client of the external socket: no compartment may be called so too.
CLIENT_NAME = "external"

SYSTEM_KEYS = {"socket", "schemas", "audit", "audit_max_size", "audit_keep", "audit_share",
               "external_limits", "max_connections", "message_timeout", "logs",
               "engine_user"}
#: The audit file is rotated at this size (AUDIT.1 .. AUDIT.N, the oldest goes)
AUDIT_MAX_SIZE = 64 << 20
AUDIT_KEEP = 8
AUDIT_KEEP_MOST = 100
#: The part of each audit file one caller's records of calls that returned may fill
#: (and as much again of its calls that did not); past it they are summarized
#: (auditshare.py).  1: no share
AUDIT_SHARE = 0.125
#: uid and gid of every engine when wsuper runs as root (Debian's nobody and nogroup)
DEFAULT_ENGINE_USER = (65534, 65534)
_ENGINE_USER = re.compile(r"([0-9]{1,10}):([0-9]{1,10})\Z")
EXTERNAL_LIMIT_KEYS = {"in_flight", "handles", "message_size", "call_time"}
COMPARTMENT_KEYS = {"module", "exports", "external", "grants", "limits", "restart",
                    "max_restarts", "restart_window", "restart_delay", "critical", "policy",
                    "instance", "instrument", "probes", "protect"}
POLICY_KEYS = {"grants", "limits"}
GRANT_KEYS = {"compartment", "host", "allow", "revocable", "max_uses", "expires_after",
              "calls_per_second", "path", "read_only", "append_only", "refuse_hard_links",
              "subdir", "max_bytes_written", "args", "vars", "mount", "on"}
GRANT_TARGETS = ("compartment", "host")
#: a grant's quotas: (key, minimum, maximum, any number rather than a whole one)
GRANT_QUOTAS = (("max_uses", 1, 1 << 62, False),
                ("expires_after", 0.001, 1e9, True),        # about 31 years
                ("calls_per_second", 0.001, 1e9, True))
MAX_BYTES_WRITTEN = 1 << 60     # an exbibyte: more than any disk
SYSTEM_DIR = "${SYSTEM_DIR}"   # in a grant's path: the directory of the file that declares it


#: characters of one key (a part of a dotted path) an error shows; a longer one is cut
SHOWN_KEY = 64
#: characters of a whole error line (a backstop: keys and values are cut before)
SHOWN_ERROR = 2000


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _cut_middle(text: str, limit: int) -> str:
    """`text` in at most about `limit` characters: its start (the file, line and key)
    and its end (the reason, which follows the path or value it names), the middle
    cut.  Cut at the end, a grant path of 3,000 characters left only the path on
    the line, not what was wrong with it ("... is not an existing directory")."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[:limit - tail]}... ({len(text)} characters) ...{text[-tail:]}"


class PolicyError(Exception):
    """A system file that cannot be run.  str() is one line: file:line: key: reason.

    Keys come from the file, which may be hostile (a key of megabytes): each part
    of `key` longer than SHOWN_KEY is cut, wherever it appears in the line, and the
    line itself is cut at SHOWN_ERROR.  The attributes keep the whole text."""

    def __init__(self, path: str, key: str, reason: str, line: int | None = None):
        self.path, self.key, self.reason, self.line = path, key, reason, line
        where = f"{quoted(path)}:{line}" if line else quoted(path)   # as check shows paths
        long = sorted({p for p in key.split(".") if len(p) > SHOWN_KEY}, key=len, reverse=True)
        shown = ".".join(_cut(p, SHOWN_KEY) for p in key.split(".")) if long else key
        reason = reason[:8 * SHOWN_ERROR]          # bounds the work below, not the line
        for part in long[:8]:                      # where the reason quotes the key
            reason = reason.replace(part, _cut(part, SHOWN_KEY))
        text = f"{where}: {shown}: {reason}" if key else f"{where}: {reason}"
        # escaped before it is cut: escaping lengthens it (a control character
        # is shown as four or six), and the line must stay within SHOWN_ERROR
        # and every character past ASCII too, as quoted() shows a path: a value that
        # passes for another (a Cyrillic 'а' in 'cаlc') made an error read as false
        super().__init__(_cut_middle(ascii_printable(text), SHOWN_ERROR))


@attrs.frozen
class Grant:
    name: str          # the local name the guest looks up
    kind: str          # "compartment" | "host"
    target: str        # compartment name, or host capability name
    allow: tuple | None = None   # method names ("m" or "Interface.m"); None: all
    revocable: bool = False
    max_uses: int | None = None           # calls through it (and what came through it)
    expires_after: float | None = None    # seconds after the compartment first starts
    calls_per_second: float | None = None
    path: str | None = None               # directory / file grants: an absolute path
    read_only: bool = False
    append_only: bool = False
    refuse_hard_links: bool = False       # directory / file grants: no file with links > 1
    subdir: str | None = None             # directory grants: only this part of `path`
    max_bytes_written: int | None = None  # directory / file grants: a write quota
    args: tuple = ()                      # environment grants: arguments
    vars: tuple = ()                      # environment grants: (name, value) pairs
    mount: str | None = None              # directory grants: where a WASI program sees it
    on: str | None = None                 # probe grants: the compartment whose events it reads
    origin: str = ""                      # "FILE: KEY" where the grant was written
    methods: frozenset | None = None      # `allow`, resolved by preflight to
                                          # (interface id, method id) pairs
    mentioned: frozenset | None = None    # `allow`, resolved: the ids of every interface
                                          # it restricts (the granted one, and each named)
    #: directory / file grants: (st_dev, st_ino) of what `load` looked at (and checked),
    #: which the running system grants (runtime._note_granted); None if not loaded
    checked: tuple | None = attrs.field(default=None, eq=False)

    @property
    def attenuated(self) -> bool:
        """Whether calls through it pass a membrane (allow-list, revocation, quotas)."""
        return self.allow is not None or self.revocable or self.max_uses is not None \
            or self.expires_after is not None or self.calls_per_second is not None


_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
          "PiB": 1 << 50, "EiB": 1 << 60}   # every unit a range here is written in


DEFAULT_LIMITS = Limits()   # compartments/limits.py: the one definition


@attrs.frozen
class Compartment:
    name: str
    module: str                 # absolute path
    exports: str | None = None  # interface name
    external: bool = False
    grants: tuple = ()
    limits: Limits = DEFAULT_LIMITS
    restart: RestartPolicy = RestartPolicy()
    instance: str = "shared"    # "per_call": a fresh instance for every incoming call
    instrument: tuple = ()      # probe points compiled into its module (docs/instrumentation.md)
    probes: tuple = ()          # declared probes (probes.ProbeSpec): on at every start
    #: memory protection (compartments/protect.py); default: what the module declares
    protect: protection.Setting | None = protection.DEFAULT
    #: limit name -> "FILE: KEY" where it was written (the system file, or its policy
    #: file), for the errors about it (limit_where); a default is written nowhere
    limit_origins: dict = attrs.field(factory=dict, eq=False)
    #: the keys of [compartments.NAME] written in the file (what `unused` looks at)
    written: frozenset = attrs.field(default=frozenset(), eq=False)


#: keys of [system] that only an external compartment uses (no client can connect
#: to a system without one); message_timeout bounds the engines' messages too
EXTERNAL_ONLY_KEYS = ("socket", "max_connections", "external_limits")
#: keys of [compartments.NAME] a compartment with restart = "never" never uses
RESTART_KEYS = ("max_restarts", "restart_window", "restart_delay")
#: limits that bound a program (_start) only
PROGRAM_LIMITS = ("run_time", "run_cpu")


@attrs.frozen
class System:
    path: str
    compartments: dict          # name -> Compartment, in file order
    schemas: tuple = ()         # absolute paths
    socket: str | None = None   # absolute path, if set in the file
    audit: str | None = None    # absolute path of the audit log (JSON lines), if any
    external_limits: "Limits" = None   # per external client connection (defaults if None)
    logs: str | None = None     # absolute path of the log directory, if set in the file
    max_connections: int = 32   # external connections at once
    message_timeout: float = 10.0   # seconds a peer may take to finish a message it began
    engine_user: tuple = DEFAULT_ENGINE_USER   # (uid, gid) of engines when run as root
    audit_max_size: int = AUDIT_MAX_SIZE   # bytes before the audit is rotated; 0: never
    audit_keep: int = AUDIT_KEEP           # rotated audit files kept (AUDIT.1 .. AUDIT.N)
    audit_share: float = AUDIT_SHARE       # of each audit file, one caller's (auditshare.py)
    socket_option: bool = False            # `socket` is `wsuper up --socket`'s, not the file's
    engine_user_given: bool = False        # `engine_user` is written in the file
    #: the keys of [system] written in the file (what `unused` looks at)
    written: frozenset = attrs.field(default=frozenset(), eq=False)

    def engine_user_unused(self) -> str | None:
        """What to tell the operator of an `engine_user` written in the file that
        this wsuper, not running as root, cannot use, or None: engines keep its
        uid (in a user namespace of their own), and the key was passed over in
        silence, whoever wrote it expecting engines to be that user."""
        if not self.engine_user_given or os.geteuid() == 0:
            return None
        uid, gid = self.engine_user
        return (f"[system] engine_user {uid}:{gid} is not used: wsuper does not run as root, "
                f"so engines run as your uid ({os.getuid()}), each in a user namespace of "
                f"its own (start wsuper as root for engines of that user)")

    def unused(self, programs=None) -> list[str]:
        """What to tell the operator of keys written in the file that this system
        never uses: each was taken and passed over in silence, whoever wrote it
        expecting it to do something (`audit_keep = 5` with no `audit`: no call was
        recorded; `run_time = 60` on a compartment that runs no program: nothing
        was bounded).  `programs`: the compartments whose module exports _start
        (preflight.Plan.programs); None: not known, run_time and run_cpu not looked
        at.  `check` warns of each, `up` says each at start."""
        said = []
        engine_user = self.engine_user_unused()
        if engine_user:
            said.append(engine_user)
        if self.audit is None:
            said += [f"[system] {k} is not used: no audit file is written without "
                     f"[system] audit" for k in ("audit_max_size", "audit_keep", "audit_share")
                     if k in self.written]
        elif self.audit_max_size == 0:
            said += [f"[system] {k} is not used: audit_max_size = 0 never rotates "
                     f"the audit file" for k in ("audit_keep", "audit_share")
                     if k in self.written]
        if not self.external:
            said += [f"[system] {k} is not used: no compartment is external (external = "
                     f"true), so nothing listens for clients" for k in EXTERNAL_ONLY_KEYS
                     if k in self.written]
        for c in self.compartments.values():
            if c.restart.mode == "never":
                said += [f"compartments.{c.name}.{k} is not used: restart = \"never\" never "
                         f"restarts it" for k in RESTART_KEYS if k in c.written]
            said += [f"{g.origin.rpartition(': ')[2]}.max_bytes_written "
                     f"({quoted(g.origin.rpartition(': ')[0])}) is not used: the grant is "
                     f"read_only, and nothing is written through it" for g in c.grants
                     if g.read_only and g.max_bytes_written is not None]
            if programs is not None and c.name not in programs:
                for k in PROGRAM_LIMITS:
                    if k in c.limit_origins:
                        file, _, key = c.limit_origins[k].rpartition(": ")
                        said.append(f"limits.{k} of compartment {c.name} "
                                    f"({quoted(file)}: {key}) is not used: its module "
                                    f"exports no _start, and {k} bounds a program")
        # shown as every error about the file is (PolicyError): a path quoted as check
        # shows paths, and nothing past ASCII; a policy file named 'p\u043el.toml' (a
        # Cyrillic 'о') was warned of as pol.toml, the file beside it the operator edits
        # each once: a policy file's grant is every compartment's that names the file,
        # and its key was said once for each of them, the same line (a policy shared
        # by 500 compartments: 500 warnings alike, the others lost among them)
        return [ascii_printable(line) for line in dict.fromkeys(said)]

    @property
    def external(self) -> tuple:
        return tuple(c.name for c in self.compartments.values() if c.external)


def _toml(text: str, path: str) -> dict:
    if "\0" in text:
        raise PolicyError(path, "", "file contains a NUL byte", text[:text.index("\0")].count("\n") + 1)
    _no_long_dotted_keys(text, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)", str(e))
        line = int(m.group(1)) if m else None
        if line is None and "at end of document" in str(e):    # its last line, then
            line = text.count("\n") + (not text.endswith("\n"))
        # a character past ASCII where TOML takes none (a no-break space, a byte order
        # mark) is named: the line shown looked right ("Invalid statement")
        note = unseen_character(_line_at(text, line), int(m.group(2)), "TOML") if m else ""
        raise PolicyError(path, "", f"invalid TOML: {str(e)}{note}", line) from None
    except (ValueError, OverflowError) as e:
        # not a TOMLDecodeError: tomllib's int() of a number of more than 4,300
        # digits (Python's limit on int from str) raises ValueError itself
        m = re.search(r"[0-9][0-9_]{4300}", text)
        if m:
            raise PolicyError(path, "", "invalid TOML: a number of more than 4,300 digits",
                              text.count("\n", 0, m.start()) + 1) from None
        raise PolicyError(path, "", f"invalid TOML: {_cut(str(e), 200)}") from None
    except RecursionError:
        raise PolicyError(path, "", "invalid TOML: nested too deeply") from None


def _line_at(text: str, line: int) -> str:
    """The text of line `line` (1-based) of `text`, without its newline."""
    lines = text.split("\n", line)
    return lines[line - 1] if 0 < line <= len(lines) else ""


#: parts of a dotted key (a.b.c has 3); a system file needs 6 at most
MAX_KEY_PARTS = 32

# The file as tokens, enough to tell a dotted key from what is inside a string
# or a comment.  No alternative can fail after scanning: a string that is
# never closed ends at the end of its line (or of the file, for a multi-line
# one), so no scan is tried again from the next character (quadratic).
_TOKENS = re.compile(r'''
    (?P<string>"""(?:\\.|\\\Z|[^\\])*?(?:"""(?!")|\Z)|\'\'\'[^\0]*?(?:\'\'\'(?!\')|\Z)
              |"(?:[^"\\\n]|\\.?)*(?:"|(?=\n)|\Z)|'[^'\n]*(?:'|(?=\n)|\Z))
  | (?P<part>[A-Za-z0-9_+:-]+)
  | (?P<dot>\.)
  | (?P<space>[ \t]+)
  | (?P<newline>\n)
  | \#[^\n]*
  | [^A-Za-z0-9_+:.\-"'\s\#]+
  | .
''', re.VERBOSE | re.DOTALL)


def _no_long_dotted_keys(text: str, path: str):
    """Refuse a key of more than MAX_KEY_PARTS dotted parts before tomllib sees it:
    tomllib takes time cubic in the parts (20 s for 40,000, hours for the
    file's 16 MiB).  A multi-line string is skipped whole; a number such as
    1.5 counts as two parts, which no limit here comes near."""
    line, run, after_dot, run_line = 1, 0, False, 1
    for m in _TOKENS.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            continue
        if kind == "dot":
            after_dot = run > 0
            continue
        if kind in ("part", "string") and not (kind == "string" and m.group().startswith(
                ('"""', "'''"))):
            run = run + 1 if after_dot else 1
            if run == 1:
                run_line = line
            if run > MAX_KEY_PARTS:
                raise PolicyError(path, "", f"a dotted key of more than {MAX_KEY_PARTS} parts",
                                  run_line)
        else:
            run = 0
        after_dot = False
        if kind == "newline":
            line += 1
        elif kind == "string":
            line += m.group().count("\n")


def _no_policy_files(path):
    raise PolicyError(path, "", "policy files can only be read by load()")


def parse(text: str, path: str = "system.toml", read_policy=_no_policy_files) -> System:
    """Validate system.toml text.  Relative paths resolve against the file's directory.

    `read_policy(path) -> text` reads a policy file a compartment refers to
    (`load()` passes one that reads the disk; tests pass a dict's get).
    """
    path = os.path.abspath(path)           # every error names files the same way
    # relative paths name the files of the system this is (endpoint.identity: its
    # directory's links resolved, once): through a link on the way (cur -> v1, the
    # usual deploy) a module was read again at a restart through `cur`, after it
    # had moved to v2, and a running v1 system ran v2's module, never checked
    base = _real_dir_of(path)
    where = _Where(text, path)
    wheres = {path: where}                 # each file read: a grant's errors name its own
    policies: dict = {}                    # path -> what _policy_file made of it
    doc = _toml(text, path)

    _only(where, "", doc, {"system", "compartments"})
    system = doc.get("system", {})
    _table(where, "system", system)
    _only(where, "system", system, SYSTEM_KEYS)
    schemas = tuple(_path(where, f"system.schemas[{i}]", s, base)
                    for i, s in enumerate(_list(where, "system.schemas", system.get("schemas", []))))
    first: dict[str, int] = {}
    for i, s in enumerate(schemas):
        # one file listed twice (x.capnp, ./x.capnp) failed at load as two files
        # declaring the same interfaces, naming one path twice
        if first.setdefault(s, i) != i:
            raise where.error(f"system.schemas[{i}]", f"{quoted(s)} is listed already, at "
                              f"system.schemas[{first[s]}]")
    socket = system.get("socket")
    if socket is not None:
        socket = _path(where, "system.socket", socket, base)
    audit = system.get("audit")
    if audit is not None:
        audit = _path(where, "system.audit", audit, base)
    logs = system.get("logs")
    if logs is not None:
        logs = _path(where, "system.logs", logs, base)
    external_limits = None
    if "external_limits" in system:
        table = system["external_limits"]
        _table(where, "system.external_limits", table)
        _only(where, "system.external_limits", table, EXTERNAL_LIMIT_KEYS)
        external_limits = _limits(where, "system.external_limits", table)
    engine_user = _engine_user(where, system.get("engine_user"))
    endpoint = {}
    for k, kinds, lo, hi in (("max_connections", int, 1, 100_000),
                             ("message_timeout", (int, float), 0.1, 3600),
                             ("audit_keep", int, 1, AUDIT_KEEP_MOST),
                             ("audit_share", (int, float), 0.01, 1)):
        if k in system:
            endpoint[k] = _number(where, f"system.{k}", system[k], lo, hi, real=kinds is not int)
    if "audit_max_size" in system:
        # 0 however written ("0 MiB" too: it was refused as below 1 MiB), else 1 MiB..1 PiB
        # every refusal states the one rule: "from 0 to 1 PiB" (_size's, of a size
        # past 1 PiB, -1, true or 0.5) said that 512 would do, which it does not
        raw = system["audit_max_size"]
        try:
            size = _size(where, "system.audit_max_size", raw, 0, 1 << 50)
        except PolicyError:
            size = None
        if size is None or 0 < size < 1 << 20:
            raise where.error("system.audit_max_size", "must be 0 (never rotated) or a size "
                              "from 1 MiB to 1 PiB, such as \"64 MiB\", not " + (
                                  f"{size:,} bytes" if size is not None else _shown(raw)))
        endpoint["audit_max_size"] = size

    comps_doc = doc.get("compartments")
    if comps_doc is None:
        raise PolicyError(path, "compartments", "no compartments declared "
                          "(add a [compartments.NAME] table with a module)")
    _table(where, "compartments", comps_doc)
    if not comps_doc:
        raise PolicyError(path, "compartments", "no compartments declared")
    compartments = {}
    for name, body in comps_doc.items():
        key = f"compartments.{name}"
        if not _NAME.match(name):
            raise where.error(key, f"compartment name {name!r} is not allowed "
                              "(letters, digits, '_' and '-', starting with a letter or '_', at most 64)")
        if name in RESERVED_NAMES:
            raise where.error(key, f"compartment name {name!r} is reserved: its log file "
                              f"would be the supervisor's own ({name}.log)")
        if name == CLIENT_NAME:
            raise where.error(key, f"compartment name {name!r} is reserved: the audit, the "
                              f"supervisor's events, probes and traces name every client "
                              f"of the external socket so, and could not tell this "
                              f"compartment from them")
        _table(where, key, body)
        _only(where, key, body, COMPARTMENT_KEYS)
        if "module" not in body:
            raise where.error(key, "missing 'module' (the .wasm or .wat file to run)")
        module = _path(where, f"{key}.module", body["module"], base)
        if not module.endswith((".wasm", ".wat")):
            raise where.error(f"{key}.module", f"{body['module']!r} is neither .wasm nor .wat")
        exports = body.get("exports")
        if exports is not None and (not isinstance(exports, str) or not exports):
            raise where.error(f"{key}.exports", "must be an interface name (a string)")
        external = body.get("external", False)
        if not isinstance(external, bool):
            raise where.error(f"{key}.external", f"must be true or false, not {external!r}")
        if external and exports is None:
            raise where.error(f"{key}.external", "only a compartment that exports an "
                              "interface can be external")
        grants_doc = body.get("grants", {})
        _table(where, f"{key}.grants", grants_doc)
        grants = tuple(_grant(where, f"{key}.grants.{g}", g, spec)
                       for g, spec in grants_doc.items())
        limits_doc = body.get("limits", {})
        _table(where, f"{key}.limits", limits_doc)
        if "policy" in body:
            pgrants, plimits = _policy_file(where, f"{key}.policy", body["policy"], base,
                                            read_policy, wheres, policies)
            clash = {g.name for g in grants} & {g.name for g in pgrants}
            if clash:
                raise where.error(f"{key}.grants.{sorted(clash)[0]}",
                                  f"also granted by policy {body['policy']!r}; "
                                  f"grant each name in one place")
            grants = pgrants + grants
            # as _policy_file
            ppath = os.path.normpath(os.path.join(base, _in_base(body["policy"])))
            origins = {k: f"{ppath}: limits.{k}" for k in plimits}
            limits_doc = {**plimits, **limits_doc}     # inline limits win
        else:
            origins = {}
        origins.update({k: f"{path}: {key}.limits.{k}" for k in body.get("limits", {})})
        limits = _limits(where, f"{key}.limits", limits_doc)
        restart = _restart(where, key, body)
        instance = body.get("instance", "shared")
        if instance not in ("shared", "per_call"):
            raise where.error(f"{key}.instance", f"must be \"shared\" or \"per_call\", "
                              f"not {instance!r}")
        if instance == "per_call" and exports is None:
            raise where.error(f"{key}.instance", "per_call applies to a compartment that "
                              "exports an interface (each call gets a fresh instance)")
        instrument, declared = _instrumentation(where, key, name, body)
        try:
            protect = protection.parse_setting(body["protect"]) if "protect" in body \
                else protection.DEFAULT
        except protection.ProtectError as e:
            raise where.error(f"{key}.{e.key}", e.reason) from None
        compartments[name] = Compartment(name, module, exports, external, grants, limits,
                                         restart, instance, instrument, declared, protect,
                                         limit_origins=origins, written=frozenset(body))

    for comp in compartments.values():
        for g in comp.grants:
            # reported where the grant is written: a policy file's grant was reported
            # at the system file's [compartments.NAME] line, under a key it does not have
            origin_file, _, key = g.origin.rpartition(": ")
            gwhere = wheres.get(origin_file, where)
            of = "" if gwhere is where else f" (in the policy of compartment {comp.name})"
            if g.kind == "compartment":
                other = compartments.get(g.target)
                if other is None:
                    raise gwhere.error(key, f"no compartment named {g.target!r} "
                                       f"(declared: {', '.join(compartments)}){of}")
                if other.exports is None:
                    raise gwhere.error(key, f"compartment {g.target!r} exports no interface "
                                       f"(set exports = \"Interface\" on it){of}")
            elif g.target not in HOST_CAPS:
                raise gwhere.error(key, f"unknown host capability {g.target!r} "
                                   f"(available: {', '.join(HOST_CAPS)})")
            elif g.target == "probe":
                if g.on not in compartments:
                    raise gwhere.error(f"{key}.on", f"a probe grant names the compartment whose "
                                       f"probes it reads: on = \"NAME\" (declared: "
                                       f"{', '.join(compartments)}){of}")
                if g.on == comp.name:
                    raise gwhere.error(f"{key}.on",
                                       f"a compartment cannot read its own probes{of}")
    return System(os.path.abspath(path), compartments, schemas, socket, audit, external_limits,
                  logs, engine_user=engine_user,
                  engine_user_given=system.get("engine_user") is not None,
                  written=frozenset(system), **endpoint)


def read(path: str) -> System:
    """Read and validate a system file and its policy files as text, and nothing they
    name: what the commands to a running system need (stop, status, revoke, logs,
    probe, trace).  They re-ran load()'s checks of the disk, which see the disk as
    it is now: a compartment that renamed a directory another grant names (through
    a writable grant), or deleted its own module from its grant, locked the
    operator out of `wsuper revoke` and `wsuper stop` of the system already running."""
    path = os.path.abspath(path)
    return parse(_read_text(path, ""), path, lambda p: _read_text(p, "policy file "))


def read_alone(path: str) -> System:
    """The system file at `path` read as text, its policy files not read (as if
    empty): what `wsuper call` needs of a running system (its compartments, which
    are external, what they export, its schemas and socket), which a policy file
    (grants and limits only) never changes.  With `read`, a policy file shared
    with other systems and broken since `up` locked the operator out of `wsuper
    call` of the system that runs."""
    path = os.path.abspath(path)
    return parse(_read_text(path, ""), path, lambda p: "")


def files_of(path: str) -> list[tuple[str, str]]:
    """(what, absolute path) of every file of the system at `path` that a file an
    operator's command writes (`wsuper check --graph`, `wsuper trace -o`) must not
    be: the system file, its policy files, each module and schema
    (_deciding_files) and every file a schema imports or embeds, the audit file
    and its rotations.  Read as `read_alone` reads (nothing it names is looked at,
    but the schemas' imports and embeds, read as load reads them; its policy files
    are named, not read: they hold grants and limits, never a path of these); a
    system file that does not read gives itself alone.  Its policy files were read
    and a policy file that did not parse (removed, or edited since `up`) gave the
    system file alone: `wsuper trace S -o audit.jsonl` wrote over the running
    system's audit file, its modules and schemas likewise."""
    path = os.path.abspath(path)
    policy_files: list = []
    try:
        system = parse(_read_text(path, ""), path,
                       lambda p: (policy_files.append(p), "")[1])
    except PolicyError:
        return [("the system file", path)]
    out = [(what, p) for what, p, _c in _deciding_files(system, policy_files)]
    # and every file a schema imports or embeds, as load counts them: `check S --graph
    # lib.capnp` wrote the graph over the file calc.capnp imports, and the next check
    # and up of S failed ("lib.capnp:1: Parse error")
    for s in system.schemas:
        try:
            out += [(f"the schema file (which {s} reads)", f)
                    for f, by, _ in capnp_schemas.closure(s, capnp_schemas.import_path(s))
                    if by is not None]
        except (capnp_schemas.SchemaError, OSError):
            pass                     # no file of it is read: nothing more to keep
    if system.audit is not None:
        out.append(("the audit file", system.audit))
        out += [("a rotation of the audit file", f"{system.audit}.{i}")
                for i in range(1, system.audit_keep + 1)]
    return out


def load(path: str, socket: str | None = None) -> System:
    """Read and validate a system file, then check the files it names.  `socket`:
    `wsuper up --socket`, which takes the place of [system] socket, and is checked
    as it is (its length; no grant may reach it)."""
    path = os.path.abspath(path)
    text = _read_text(path, "")
    policy_files = []
    system = parse(text, path, lambda p: (policy_files.append(p), _read_text(p, "policy file "))[1])
    if socket is not None:
        if not socket or "\0" in socket:
            raise PolicyError(path, "--socket", f"must be a non-empty path, not {socket!r}")
        system = attrs.evolve(system, socket=os.path.abspath(socket), socket_option=True)
    where = _Where(text, path)
    from .endpoint import own_paths as supervisor_paths
    own_paths = supervisor_paths(system)
    _socket_paths_fit(system, where)
    imported = []
    for i, s in enumerate(system.schemas):
        if not os.path.isfile(s):
            raise where.error(f"system.schemas[{i}]", _not_a_file("schema file", s))
        try:
            # what it reads beside it; not the schemas installed with wsuper and
            # pycapnp (c++.capnp): whoever can change those can change wsuper
            imported += [(f"the schema file {f} (which {s} reads)", f, None)
                         for f, by, _ in capnp_schemas.closure(s, capnp_schemas.import_path(s))
                         if by is not None and not any(
                             f.startswith(d.rstrip("/") + "/") for d in capnp_schemas.IMPORT_PATH)]
        except capnp_schemas.SchemaError as e:
            raise where.error(f"system.schemas[{i}]", str(e)) from None
    deciding = _deciding_files(system, policy_files) + imported
    _nobody_else_decides(system, deciding, where)
    if system.audit is not None:
        problem = _audit_among_logs(system, own_paths) or _audit_successor_named(system) \
            or _audit_rotated_name_too_long(system)
        if problem is None and os.path.isfile(system.audit):
            links = os.stat(system.audit).st_nlink
            if links > 1:
                problem = audit_links_problem(system.audit, links)
        if problem:
            raise where.error("system.audit", problem)
    written = _writes_over(system, own_paths, deciding)
    if written:
        raise where.error(*written)
    wheres = {where.path: where}
    places = mounts.Places()
    installed = _installed()
    searched = _searched()
    on_the_way = functools.cache(_names_on_the_way)     # the same few paths, every grant
    checked: dict[tuple, tuple] = {}     # (compartment, grant) -> (st_dev, st_ino)
    # each file once, as first listed (what the errors below name, as before): one
    # module of a thousand compartments was a thousand entries, looked at for each
    # writable grant of each of them (a million, 30 s of `check`, `up` and every
    # command to the system, quadratic in the compartments)
    deciding_once = _Deciding(list({file: (what, file, owner)
                                    for what, file, owner in reversed(deciding)}.values())[::-1],
                              places, on_the_way)
    for comp in system.compartments.values():
        for g in comp.grants:
            if g.path is None:
                continue
            # report it where the grant was written (this file or a policy file)
            gwhere, origin_key = grant_where(g, wheres)
            key = f"{origin_key}.path"
            if os.path.islink(g.path):
                raise gwhere.error(key, f"{quoted(g.path)} is a symbolic link; grant what it points to")
            want = os.path.isdir if g.target == "directory" else os.path.isfile
            if not want(g.path):
                what = "directory" if g.target == "directory" else "regular file"
                raise gwhere.error(key, f"{quoted(g.path)} is not an existing {what}")
            if g.subdir is not None:
                problem = _subdir_problem(g.path, g.subdir)
                if problem:
                    raise gwhere.error(f"{origin_key}.subdir", problem)
            real = os.path.realpath(os.path.join(g.path, g.subdir or ""))
            is_dir = g.target == "directory"
            # what the checks below look at is what the system grants, pinned by
            # device and inode (Grant.checked); gone or another kind of file since
            # the looks above, there is nothing checked to pin, and a start must
            # not grant whatever the path names by then (fail closed)
            try:
                st = os.stat(real)
            except OSError as e:
                raise gwhere.error(key, f"{quoted(g.path)} changed while it was being checked "
                                   f"({real}: {e.strerror or e}); run the command "
                                   f"again") from None
            if stat.S_ISDIR(st.st_mode) != is_dir or not (
                    is_dir or stat.S_ISREG(st.st_mode)):
                raise gwhere.error(key, f"{quoted(g.path)} changed while it was being checked "
                                   f"({real} is now {capnp_schemas.file_kind(st.st_mode)}); "
                                   f"run the command again")
            checked[(comp.name, g.name)] = (st.st_dev, st.st_ino)
            fs = _kernel_fs(real)
            if fs:
                raise gwhere.error(key, f"{quoted(g.path)} is on the kernel's {fs} file system: no "
                                   f"grant may reach it (opened by the supervisor, /proc/self "
                                   f"is the supervisor's own process)")
            problem = _opening_problem(g, st, comp.name)
            if problem:
                raise gwhere.error(f"{origin_key}.subdir" if g.subdir and problem[0] else key,
                                   problem[1])
            if system.audit is not None and _rotated_audit(places, real, system.audit):
                raise gwhere.error(key, f"{quoted(g.path)} reaches the supervisor's rotated audit file "
                                   f"{real}: no compartment may read or change the "
                                   f"supervisor's own files ([system] audit moves it)")
            for what, own, own_dir, how, given in own_paths:
                # the path itself, and (for a grant that allows changes) every name
                # on the way to it as given: a link there, replaced, moves where
                # the supervisor writes
                names = [own] if g.read_only else [own, *on_the_way(given)]
                if any(_reaches(places, real, is_dir, name, own_dir and name == own)
                       for name in names):
                    raise gwhere.error(key, f"{quoted(g.path)} reaches the supervisor's {what} "
                                       f"{own}: no compartment may read or change the "
                                       f"supervisor's own files ({how})")
            if g.read_only:
                continue
            for what, folder in installed:
                if any(_reaches(places, real, is_dir, name, name == folder)
                       for name in on_the_way(folder)):
                    raise gwhere.error(key, f"{quoted(g.path)} would let compartment {comp.name} change "
                                       f"{what} {folder}: what is there runs as the "
                                       f"supervisor at the next start; grant it read_only = "
                                       f"true, or grant a directory that holds none of it")
            for what, folder in searched:
                # the directory, one on the way to it, or a name right inside it
                if os.path.dirname(real) == folder or any(
                        _reaches(places, real, is_dir, name, False)
                        for name in on_the_way(folder)):
                    raise gwhere.error(key, f"{quoted(g.path)} would let compartment {comp.name} change "
                                       f"{what} {folder}: what is there runs as the "
                                       f"supervisor at the next start; grant it read_only = "
                                       f"true, or grant a directory that holds none of it")
            # the first of the files that decide what runs it reaches, or may hold
            # another link of (in their order: a reach before a link of one file)
            reached, linked = deciding_once.first(real, is_dir, g)
            if reached is not None and (linked is None or reached[0] <= linked[0]):
                _i, (what, file, owner) = reached
                why = ("a module is compiled again at its next start, and one can be "
                       "made to compile for minutes, while no other compartment "
                       "starts" if owner == comp.name else
                       "what a compartment can change there runs with another's "
                       "grants (a module is read again at every start)")
                raise gwhere.error(key, f"{quoted(g.path)} would let compartment {comp.name} change "
                                   f"{what} {quoted(file)}: {why}; grant it read_only = true, or "
                                   f"move the file")
            if linked is not None:
                _i, (what, file, _owner), links = linked
                raise gwhere.error(key, f"{what} {quoted(file)} has {links} hard links, and "
                                   f"{quoted(g.path)} is writable on the same file system: "
                                   f"another link to it may lie in the grant, through "
                                   f"which compartment {comp.name} could change it; "
                                   f"remove the extra links, or grant it read_only = "
                                   f"true or refuse_hard_links = true")
        if not os.path.isfile(comp.module):
            raise where.error(f"compartments.{comp.name}.module",
                              _not_a_file("module file", comp.module))
        size = os.stat(comp.module).st_size
        if size > MAX_MODULE_BYTES:
            raise where.error(f"compartments.{comp.name}.module",
                              f"module file {quoted(comp.module)} has {size:,} bytes, more than "
                              f"{MAX_MODULE_BYTES:,}")
    return attrs.evolve(system, compartments={
        name: attrs.evolve(comp, grants=tuple(
            attrs.evolve(g, checked=checked[(name, g.name)]) if (name, g.name) in checked
            else g for g in comp.grants))
        for name, comp in system.compartments.items()})


def grant_where(g: Grant, wheres: dict) -> tuple["_Where", str]:
    """Where grant `g` was written, to report an error about it: (the _Where of the
    system file or policy file that holds it, its key there).  `wheres`: path ->
    _Where, the files read so far (each is read once, not once per grant)."""
    origin_file, _, origin_key = g.origin.rpartition(": ")
    if origin_file not in wheres:
        wheres[origin_file] = _Where.of_file(origin_file, "policy file ")
    return wheres[origin_file], origin_key


def limit_where(comp: Compartment, name: str, wheres: dict, where: "_Where"
                ) -> tuple["_Where", str]:
    """Where limit `name` of `comp` was written, to report an error about it: (the
    _Where of the system file or of its policy file, the key there).  A limit from
    a policy file was reported at the system file's [compartments.NAME] line, under
    `compartments.NAME.limits.memory`, a key the file does not have.  A default
    (written nowhere) is reported at the compartment, `where` the system file's."""
    origin = comp.limit_origins.get(name)
    if not origin:
        return where, f"compartments.{comp.name}.limits.{name}"
    file, _, key = origin.rpartition(": ")
    if file not in wheres:
        wheres[file] = where if file == where.path else _Where.of_file(file, "policy file ")
    return wheres[file], key


#: bytes of a Unix socket's path (sun_path holds 108, with the closing NUL)
MAX_SOCKET_PATH = 107


def _socket_paths_fit(system: System, where):
    """Every socket `wsuper up` will bind has a path the kernel takes: bind() fails
    on a longer one ("AF_UNIX path too long") once everything else has started."""
    from . import endpoint
    paths = [("", "the admin socket", endpoint.admin_socket_path(system.path))]
    if system.external:
        key = "--socket" if system.socket_option else "system.socket"
        paths.append((key, "the external socket", system.socket) if system.socket
                     else ("", "the external socket", endpoint.default_socket_path(system.path)))
    # the audit file too: made there (`audit = "$XDG_RUNTIME_DIR/wsuper/NAME-HASH.admin.sock"`),
    # `up` could not bind its admin socket, and left a regular file there that
    # refused every later `up` of that system; at a lock's name, a system's `up`
    # truncated it as its lock (or this one refused its own lock as "written by
    # another running system"); check passed them all
    # and the log directory (made there, mode 0700, it took the place of a lock)
    audit = [("system.audit", "the audit file", system.audit)] if system.audit else []
    audit += [("system.logs", "the log directory", system.logs)] if system.logs else []
    for key, what, p in paths[1:] + audit:
        # a system's admin socket or lock there (this system's or another's): bound
        # there, the other's `up` could not take its lock (a socket where its lock
        # file goes) or bind its admin socket, and a lock file there was refused with
        # "remove it", the lock of a system that ran
        # (and the grants file beside its lock: an audit named so was replaced by
        # that file at each `up`, the records of every run before lost: r266)
        if key and endpoint.kept_name(p):
            raise where.error(key, f"{what} {quoted(p)} has the name of a system's own "
                              f"socket, admin socket or lock, or of the grants file beside "
                              f"its lock, in the runtime directory ({endpoint.KEPT_NAMES}), "
                              f"which the supervisor keeps for the system of that name: "
                              f"choose another name")
    for key, what, p in paths:
        n = len(os.fsencode(p))
        if n > MAX_SOCKET_PATH:
            how = "choose a shorter path" if key else \
                "give the system file a shorter name, or set XDG_RUNTIME_DIR to a shorter directory"
            raise where.error(key, f"{what} {quoted(p)} would have {n} bytes, more than a Unix "
                              f"socket's {MAX_SOCKET_PATH}: {how}")


def _deciding_files(system: System, policy_files) -> list[tuple[str, str, str | None]]:
    """(what, absolute path, the compartment whose module it is) of every file that
    decides what runs with which authority: each compartment's module (read again
    whenever it starts), the system file, its policy files and schemas (read at
    every `wsuper up`).  A compartment that could change one of them could run
    its own code with another's grants, so no grant that allows changes may
    reach them.  Its own module neither: that gains it no authority, but a
    module can be made to compile for minutes, in one of the zygote's few compiler
    slots (other modules to compile wait for one)."""
    out = [(f"compartment {c.name}'s module", c.module, c.name)
           for c in system.compartments.values()]
    out.append(("the system file", system.path, None))
    out += [("the policy file", os.path.abspath(p), None) for p in dict.fromkeys(policy_files)]
    out += [("the schema file", s, None) for s in system.schemas]
    return out


def _nobody_else_decides(system: System, deciding, where):
    """Refuse a file that decides what runs (`deciding`: _deciding_files and what the
    schemas read) which any user of the machine may change (endpoint.anyone_may_change):
    a module of mode 0666, or one in a directory of mode 0777, ran whatever another
    user put there with the grants the system gives it, and a policy file so
    writable gave it whatever grants they wrote (as root too)."""
    from .endpoint import anyone_may_change
    schemas = {s: i for i, s in enumerate(system.schemas)}
    # each file once, as first named (a module a thousand compartments share is
    # looked at once)
    once = list({f: (f, w, o) for w, f, o in reversed(deciding)}.values())[::-1]
    for file, what, owner in once:
        problem = anyone_may_change(file, f"{what} ")
        if problem is None:
            continue
        if owner is not None:
            raise where.error(f"compartments.{owner}.module", problem)
        if file in schemas:
            raise where.error(f"system.schemas[{schemas[file]}]", problem)
        raise PolicyError(file, "", problem)


def _same_dir(a: str, b: str) -> bool:
    """Whether the directories `a` and `b` are one (by path, or by device and inode:
    a bind mount shows one directory at two paths)."""
    if a == b:
        return True
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def _writes_over(system: System, own_paths, deciding) -> tuple[str, str] | None:
    """(key, reason) if a file the supervisor writes is one of the files that decide
    what runs (`deciding`: _deciding_files and what the schemas read), or None.
    Those files are the audit (appended to, renamed AUDIT.1 .. AUDIT.N by its
    rotation, the next one made as .AUDIT.rotating) and the log files in the log
    directory (supervisor.log, NAME.log and their rotations).  `check` passed
    `audit = "calc.wat"`, and `up` appended every call's record to calc's module,
    which failed its next start (and every later one: the module was lost); with
    `logs = "."` and `policy = "app.log"`, app's log lines went into its policy
    file, which the next `up` refused, and its rotation renamed it away.  Compared
    by real path, and by the directory's device and inode (a bind mount)."""
    audit = os.path.realpath(system.audit) if system.audit is not None else None
    log_dir = next(p for what, p, *_ in own_paths if what == "log directory")
    logs = re.compile(r"(%s)\.log(\.[0-9]+)?" % "|".join(
        map(re.escape, ["supervisor", *system.compartments])), re.DOTALL)
    # the external socket too: bound where the audit was made just before (`audit`
    # and `socket` both "x.sock"), `up` refused its own audit file as "not a socket"
    socket = [("the external socket", system.socket, None)] \
        if system.external and system.socket else []
    for what, file, _owner in [*deciding, *socket]:
        real = os.path.realpath(file)
        folder, name = os.path.split(real)
        if audit is not None and _same_dir(folder, os.path.dirname(audit)):
            base = os.path.basename(audit)
            if name == base or name == audit_successor_name(base) or (
                    name.startswith(base + ".") and name[len(base) + 1:].isdigit()):
                how = "is" if name == base else (
                    "would make its next file (rotating) over" if name ==
                    audit_successor_name(base) else "would rotate its files over")
                return "system.audit", (
                    f"the audit file {quoted(system.audit)} {how} {what} {quoted(file)}: "
                    f"the supervisor would write the records of every call into it, and "
                    f"the rotation rename it away; name another file")
        if _same_dir(folder, log_dir) and logs.fullmatch(name):
            return ("system.logs" if system.logs else ""), (
                f"the log directory {quoted(log_dir)} holds {what} {quoted(file)} under "
                f"the name of a log file of this system ({name}): the supervisor would "
                f"write its log lines into it, and its rotation rename it away; choose "
                f"another log directory, or move the file")
    return None


#: what the dynamic loader reads before any library of every process it starts
#: (ld.so.preload: a library loaded into each, as root too)
LOADER_FILES = ("/etc/ld.so.preload", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d")


def _mapped_libraries() -> list[str]:
    """The files this process runs code from (its executable mappings: the loader,
    libc, libpython, the extension modules' libraries), each an existing regular
    file: a grant that could change one (/usr/lib/x86_64-linux-gnu, writable)
    passed `check`, and what was put there ran as the supervisor at the next
    `wsuper up`, as wsuper's own packages would."""
    found = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and "x" in parts[1]:
                    path = parts[5].rstrip("\n")
                    # not a memfd, nor a file deleted since (" (deleted)"), nor [vdso]
                    if path.startswith("/") and not path.endswith(" (deleted)") \
                            and os.path.isfile(path):
                        found.append(path)
    except OSError:
        pass
    return list(dict.fromkeys(found))


def _installed() -> list[tuple[str, str]]:
    """(what, path) of each directory wsuper runs from: its own packages and the
    Python that runs it (standard library, installed packages, scripts), the
    libraries it runs and the loader's configuration; the files its start reads
    (start_up_files); and every directory searched for its modules (sys.path) and,
    first, for its libraries ($LD_LIBRARY_PATH).  A compartment that could change
    what is there would run its code as the supervisor (and in every engine) at
    the next `wsuper up`."""
    import sysconfig
    import supervisor
    import compartments
    out = [("wsuper's own code", os.path.dirname(m.__file__))
           for m in (supervisor, compartments, capnp_schemas)]
    paths = sysconfig.get_paths()
    out += [("the Python that runs wsuper", paths[k])
            for k in ("stdlib", "platstdlib", "purelib", "platlib", "scripts") if k in paths]
    out += [("the Python that runs wsuper", os.path.dirname(exe))
            for exe in (sys.executable, os.path.realpath(sys.executable))]
    out += [("the directory of a shared library the supervisor runs,", os.path.dirname(lib))
            for lib in _mapped_libraries()]
    out += [("the dynamic loader's configuration", f) for f in LOADER_FILES]
    # every directory the dynamic loader looks in before its own ($LD_LIBRARY_PATH;
    # an empty entry is the working directory), with what is inside (glibc looks in
    # its glibc-hwcaps subdirectories too): a library put there is loaded first
    ld_path = os.environ.get("LD_LIBRARY_PATH", "")
    out += [("a directory the dynamic loader looks in first ($LD_LIBRARY_PATH)",
             entry or os.getcwd()) for entry in (re.split("[:;]", ld_path) if ld_path else ())]
    # and each package the supervisor has imported from a directory of its import path
    # that is not listed above (a $PYTHONPATH's): a module put inside runs with it
    out += [("a package the Python that runs wsuper imports", folder)
            for folder in _imported_packages()]
    seen, unique = set(), []
    for what, path in out:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append((what, real))
    # then the files, each named rather than a directory searched that holds it (a
    # checkout's .venv/pyvenv.cfg lies in the checkout, an import directory of an
    # editable install); as given, not resolved: the names on the way to each (the
    # caller's _names_on_the_way) are then those of its links too
    # (/usr/lib/ssl/openssl.cnf, a link to /etc/ssl/openssl.cnf: a grant of
    # /usr/lib/ssl could replace the link)
    for what, path in start_up_files():
        if path not in seen:
            seen.add(path)
            unique.append((what, path))
    return unique


def _searched() -> list[tuple[str, str]]:
    """(what, real path) of each directory searched by name for what wsuper runs:
    its import path (sys.path: $PYTHONPATH's, the directory `python -m
    supervisor.cli` runs from; an empty entry is the working directory), where a
    module or package put first is imported in place of the one of that name
    further on (an `attrs.py` in a writable grant of a $PYTHONPATH directory ran as
    the supervisor at `up`), and $PATH, where wsuper's commands find the programs
    they run (check --graph's dot, build's clang) as the operator.  What is made in
    such a directory, or in a directory right inside it (a package), is found
    there; deeper is not (a checkout of an editable install is on the import path,
    and examples/kv/data, its demo's grant, is no package of its): the packages
    imported from them are `_installed`'s."""
    found = [("a directory the Python that runs wsuper imports from", entry or os.getcwd())
             for entry in sys.path if isinstance(entry, str)]
    path_dirs = os.environ.get("PATH", "")
    found += [("a directory of $PATH, where wsuper finds the programs it runs (dot, clang),",
               entry or os.getcwd()) for entry in (path_dirs.split(":") if path_dirs else ())]
    return list({os.path.realpath(p): (w, os.path.realpath(p)) for w, p in reversed(found)}
                .values())[::-1]


def _imported_packages() -> list[str]:
    """The top directory of each package imported from a directory of sys.path."""
    # the deepest first: site-packages lies in a checkout that is on the path too
    roots = sorted({os.path.realpath(e or os.getcwd()) for e in sys.path
                    if isinstance(e, str)}, key=len, reverse=True)
    tops = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not os.path.basename(file).startswith("__init__."):
            continue
        real = os.path.realpath(file)
        for root in roots:
            if real.startswith(root.rstrip("/") + "/"):
                top = real[len(root.rstrip("/")) + 1:].split("/", 1)[0]
                tops.add(os.path.join(root, top))
                break
    return sorted(tops)


#: the program ctypes.util.find_library runs (`ldconfig -p`), as the supervisor: trio
#: finds libpthread with it as its thread cache starts, at every `wsuper up`
LDCONFIG = "/sbin/ldconfig"
#: bytes of OpenSSL's configuration read for the files it names
OPENSSL_CONFIG_READ = 1 << 20


def start_up_files() -> list[tuple[str, str]]:
    """(what, absolute path) of each file outside the directories `_installed` lists
    that the supervisor's process reads or runs as it starts and that decides what
    code it runs, whether it exists or not (made, it is read as well): the Python's
    `pyvenv.cfg` (its `home` says where the standard library is: a compartment that
    wrote `home = /srv/data/py/bin` there ran its own `site.py` as the supervisor at
    the next `wsuper up`), OpenSSL's configuration and what it names (libcrypto loads
    it in the supervisor, hashlib's and ssl's: its providers and engines are shared
    libraries, loaded), and the programs its libraries run (`/sbin/ldconfig`)."""
    out = []
    for exe in (sys.executable, os.path.realpath(sys.executable)):
        if exe:
            # getpath reads pyvenv.cfg beside the interpreter (its directory is
            # listed already) and in the directory above it
            out.append(("the start-up configuration of the Python that runs wsuper",
                        os.path.join(os.path.dirname(os.path.dirname(exe)), "pyvenv.cfg")))
    out.append(("the start-up configuration of the Python that runs wsuper",
                os.path.join(sys.prefix, "pyvenv.cfg")))
    # the supervisor's ($OPENSSL_CONF) and its zygote's and engines' (their
    # environment is empty: OpenSSL's own)
    for config in dict.fromkeys(c for c in (openssl_config(), openssl_config({})) if c):
        out.append(("OpenSSL's configuration, which names libraries to load,", config))
        try:
            with open(config, "rb") as f:
                text = f.read(OPENSSL_CONFIG_READ).decode("utf-8", "replace")
        except OSError:
            text = ""
        out += [("a file OpenSSL's configuration names", name)
                for name in openssl_config_names(text)]
    out.append(("a program the supervisor runs (ctypes.util.find_library's)", LDCONFIG))
    return [(what, os.path.abspath(path)) for what, path in out]


def openssl_config(environ=None) -> str | None:
    """The configuration file libcrypto loads in a process with `environ` (default:
    this one's): $OPENSSL_CONF, else openssl.cnf in its OPENSSLDIR (the directory
    of its default certificate directory)."""
    given = (os.environ if environ is None else environ).get("OPENSSL_CONF")
    if given:
        return given
    try:
        import ssl
        certs = ssl.get_default_verify_paths().openssl_capath
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    return os.path.join(os.path.dirname(certs), "openssl.cnf") if certs else None


_OPENSSL_NAMES = re.compile(
    r"^[ \t]*(?:\.include|include|module|dynamic_path)"
    r"[ \t]*=?[ \t]*[\"']?(/[^\s\"'#]*)", re.M)


def openssl_config_names(text: str) -> list[str]:
    """The absolute paths an OpenSSL configuration names as files to include or
    libraries to load (`.include`, `module = ...`, an engine's `dynamic_path`)."""
    return list(dict.fromkeys(m.group(1) for m in _OPENSSL_NAMES.finditer(text)))


def _reaches(places: mounts.Places, grant: str, is_dir: bool, name: str,
             own_is_dir: bool) -> bool:
    """Whether a grant of the real path `grant` reaches `name` (endpoint.reaches):
    by their paths, or by their places in their file systems, which a bind mount
    of one directory at two paths does not change (mounts.Places)."""
    from .endpoint import reaches
    if reaches(grant, is_dir, name, own_is_dir):
        return True
    return any(g_dev == dev and reaches(g_path, is_dir, path, own_is_dir)
               for g_dev, g_path in places.object(grant)
               for dev, path in places.of(name, follow=False))


def _rotated_audit(places: mounts.Places, grant: str, audit: str) -> bool:
    """Whether the real path `grant` is a rotated audit file (AUDIT.N, whatever
    audit_keep is now, or whether rotation is on: earlier runs may have left them),
    or the name its rotation makes the next audit under (audit_successor_name), by
    its path or by its place in its file system."""
    def rotated(path, base):
        return (path.startswith(base + ".") and path[len(base) + 1:].isdigit()) or \
            path == os.path.join(os.path.dirname(base),
                                 audit_successor_name(os.path.basename(base)))
    audit = os.path.realpath(audit)
    if rotated(grant, audit):
        return True
    return any(g_dev == dev and rotated(g_path, path)
               for g_dev, g_path in places.object(grant)
               for dev, path in places.of(audit, follow=False))


def _names_on_the_way(path: str, hops: int = 40) -> list[str]:
    """Every name the kernel looks up to resolve `path` (absolute), each as the real
    directory it is in plus the name, following symbolic links as it goes: whoever
    can change one of them (replace a directory, a link, the file) changes what
    `path` names."""
    names, at = [], "/"
    todo = [p for p in path.split("/") if p]
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            at = os.path.dirname(at)
            continue
        name = os.path.join(at, part)
        names.append(name)
        if hops > 0 and os.path.islink(name):
            hops -= 1
            try:
                target = os.readlink(name)
            except OSError:
                break
            if target.startswith("/"):
                at = "/"
            todo = [p for p in target.split("/") if p] + todo
        else:
            at = name
    return names


def _opening_problem(g: Grant, checked: os.stat_result, holder: str
                     ) -> tuple[bool, str] | None:
    """(whether it is about the subdir, why) if the directory or file grant `g`
    cannot be opened as every start of its holder opens it (hostcaps.open_grant:
    with its attenuation, its subdir beneath the path, no mount crossed, no file of
    more than one link under refuse_hard_links), or None.  The looks before this
    one passed what the start then refused at every try, until the holder failed
    for good: a file grant with refuse_hard_links of a file with two links, or a
    subdir that is a mount point (path = "/dev", subdir = "shm").  Opened, and
    closed at once: nothing is created, truncated or written."""
    from . import hostcaps
    try:
        opened = hostcaps.open_grant(g)
    except (OSError, hostcaps.hostfs.FsError) as e:
        why = getattr(e, "strerror", None) or str(e)
        sub = f" (subdir {quoted(g.subdir)})" if g.subdir else ""
        return bool(g.subdir), (f"{quoted(g.path)}{sub} cannot be opened as every start of "
                                f"{holder} opens it ({holder} could never start): {why}")
    try:
        now = os.fstat(opened.fd)
    finally:
        hostcaps.release(g.target, opened)
    if (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):
        return False, (f"{quoted(g.path)} changed while it was being checked (what it "
                       f"names now is another {g.target}); run the command again")
    return None


def _kernel_fs(path: str) -> str | None:
    """The kernel file system (hostfs.KERNEL_FS) `path` is on, if it is on one."""
    from .hostfs import kernel_fs
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None                 # what does not exist is refused by the caller
    try:
        return kernel_fs(fd)
    finally:
        os.close(fd)


def audit_file_problem(path: str) -> str | None:
    """Why the audit file `path` cannot be opened as `wsuper up` opens it (in a
    directory of ours that no one else may write to, never through a link, a
    regular file with one name), or None: what `wsuper check` says of it (it said
    a symbolic link or a FIFO there was fine).  Nothing there yet is fine: up
    makes it.  `up` itself refuses the same when it opens the file (runtime
    _Audit.open, on the descriptor: no race)."""
    import stat

    from .endpoint import _unwritable, own_dir_problem
    folder = os.path.dirname(path)
    # first, as up does (endpoint.own_dir): a real directory of ours, closed to others,
    # or one up can make.  A symbolic link there too is refused, as up refuses it:
    # left to up, `audit = "ln/audit.jsonl"` (ln a link to a directory of ours)
    # passed check, and up exited 2 ("audit directory ... is not a directory")
    problem = own_dir_problem(folder, "audit directory ")
    if problem:
        return problem
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        # up makes it: in a directory it can write (a read-only file system, or a
        # directory of ours without write permission, passed check and refused up)
        why = _unwritable(folder) if os.path.isdir(folder) else None
        return f"cannot make the audit file {quoted(path)}: {why}" if why else None
    except OSError as e:
        return f"cannot look at the audit file {quoted(path)}: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        return (f"the audit file {quoted(path)} is a symbolic link: the audit is never opened "
                f"through one; name the file itself")
    if not stat.S_ISREG(st.st_mode):
        return (f"the audit file {quoted(path)} is {capnp_schemas.file_kind(st.st_mode)}: the "
                f"audit must be a regular file")
    if st.st_nlink > 1:
        return audit_links_problem(path, st.st_nlink)
    if not os.access(path, os.W_OK):     # up opens it for appending
        why = "Read-only file system" if _unwritable(folder) == "Read-only file system" \
            else "Permission denied"
        return f"cannot open the audit file {quoted(path)} for writing: {why}"
    return None


def _audit_among_logs(system: System, own_paths) -> str | None:
    """Why the audit file cannot be where it is, if it is one of the log files (or
    their rotations): supervisor.log or a compartment's NAME.log in the log
    directory.  The audit's records and the log's lines were written into one file,
    and the log's rotation at 1 MiB (which a compartment's own lines bring about)
    moved the audit file from under its writer, and then deleted it."""
    log_dir = next(p for what, p, *_ in own_paths if what == "log directory")
    audit = os.path.realpath(system.audit)
    if os.path.dirname(audit) != log_dir:
        return None
    names = ["supervisor", *system.compartments]
    m = re.fullmatch(r"(.*)\.log(\.[0-9]+)?", os.path.basename(audit))
    if m is None or m.group(1) not in names:
        return None
    whose = "the supervisor's" if m.group(1) == "supervisor" else f"compartment {m.group(1)}'s"
    return (f"the audit file {system.audit} is {whose} log file in the log directory "
            f"{log_dir}{' (a rotation of it)' if m.group(2) else ''}: the two would be "
            f"written, and rotated, as one file; name another file")


def audit_successor_name(name: str) -> str:
    """The name (in the audit's directory) of the next audit file of the audit named
    `name` while a rotation makes it (runtime._Audit._rotate): hidden, beside the
    audit; an audit whose name is near NAME_MAX gets a short one (from its hash)."""
    mine = f".{name}.rotating"
    if len(os.fsencode(mine)) <= 255:
        return mine
    import hashlib
    return f".wsuper-audit-{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}.rotating"


def is_audit_successor_name(name: str) -> bool:
    """Whether the file name `name` is one audit_successor_name gives (of any audit):
    a rotation of the audit beside it removes a file of that name and puts its own
    there, whatever it was."""
    return re.fullmatch(r"\..+\.rotating", name, re.DOTALL) is not None


def _audit_successor_named(system: System) -> str | None:
    """Why the audit file cannot have its name: one the rotation of another audit in
    its directory (`.AUDIT.rotating`) makes its successor under.  Two systems given
    `aud/x.jsonl` and `aud/.x.jsonl.rotating` ran side by side, and the first's
    rotation unlinked the second's audit as a leftover of a rotation cut short: the
    second went on writing its records into a file no name reached."""
    name = os.path.basename(os.path.realpath(system.audit))
    if is_audit_rotated_name(name):
        # aud/x.jsonl and aud/x.jsonl.1 side by side: the first's rotation moved the
        # second's audit on (x.jsonl.1 -> .2 ...) and in the end deleted it, while the
        # second wrote on into it; or the second appended to the first's rotated file
        return (f"the audit file {quoted(system.audit)} has the name of a rotated file "
                f"of the audit {quoted(name.rpartition('.')[0])} beside it (NAME.N): "
                f"that audit's rotations would rename this one and in the end delete "
                f"it; name another file")
    if not is_audit_successor_name(name):
        return None
    return (f"the audit file {quoted(system.audit)} has a name the supervisor keeps for "
            f"the next audit file while it rotates one (.NAME.rotating): the rotation of "
            f"an audit beside it would remove this one; name another file")


def _audit_rotated_name_too_long(system: System) -> str | None:
    """Why the audit's rotated files cannot have their names (AUDIT.1 ..
    AUDIT.audit_keep, longer than a name its file system takes), or None.  An audit
    of 254 bytes passed `check`, and its first rotation failed ("File name too
    long"): the audit write failed, and the system stopped once the audit reached
    audit_max_size."""
    if not system.audit_max_size:
        return None                  # never rotated
    folder, name = os.path.split(system.audit)
    try:
        most = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        most = 255                   # the directory is made at up: Linux's usual
    longest = len(os.fsencode(name)) + len(f".{system.audit_keep}")
    if longest <= most:
        return None
    return (f"the audit file {quoted(system.audit)} has a name of {len(os.fsencode(name))} "
            f"bytes: its rotated files' ({name[:20]}....{system.audit_keep}) would have "
            f"{longest}, more than the {most} its directory takes, and the first rotation "
            f"would stop the system; choose a shorter name (or audit_max_size = 0)")


def is_audit_rotated_name(name: str) -> bool:
    """Whether the file name `name` is one a rotation gives to a rotated file of an
    audit beside it (`NAME.1` .. `NAME.AUDIT_KEEP_MOST`, output.rotate)."""
    m = re.fullmatch(r".+\.([1-9][0-9]*)", name, re.DOTALL)
    return m is not None and int(m.group(1)) <= AUDIT_KEEP_MOST


def audit_links_problem(path: str, links: int) -> str:
    """Why an audit file with more than one hard link is refused."""
    return (f"the audit file {quoted(path)} has {links} hard links: its other name may lie "
            f"where a compartment can read or change it (every call's record, or "
            f"forged ones), wherever grants are; remove the other links")


class _Deciding:
    """The files that decide what runs (each once, in order), indexed for load's
    look at each writable grant: which of them it reaches first, and which it may
    hold another hard link of first, found by a search among their names, not by
    looking at each of them for each grant (a thousand compartments, each with a
    module of its own and a writable grant, were a million looks: 27 s of `check`
    and `up`, hours for ten thousand)."""

    def __init__(self, files: list, places: mounts.Places, on_the_way):
        import bisect
        self._bisect = bisect
        self.files = files
        names: dict[str, int] = {}
        at: dict[int, dict[str, int]] = {}      # device -> path in it -> first file
        for i, (_what, file, _owner) in enumerate(files):
            for name in on_the_way(file):
                names.setdefault(name, i)
                for dev, path in places.of(name, follow=False):
                    at.setdefault(dev, {}).setdefault(path, i)
        self._names = (names, sorted(names))
        self._at = {dev: (paths, sorted(paths)) for dev, paths in at.items()}
        self._places = places
        self._linked = []                      # (index, stat) of each with links > 1
        for i, (_what, file, _owner) in enumerate(files):
            try:
                st = os.stat(file)
            except OSError:
                continue
            if st.st_nlink > 1:
                self._linked.append((i, st))

    def _first(self, index, grant: str, is_dir: bool) -> int | None:
        """The first file (its index) with a name that is `grant` or, for a
        directory grant, beneath it (endpoint.reaches, an own file's path)."""
        first, ordered = index
        found = [first[grant]] if grant in first else []
        if is_dir:
            prefix = grant.rstrip("/") + "/"
            k = self._bisect.bisect_left(ordered, prefix)
            while k < len(ordered) and ordered[k].startswith(prefix):
                found.append(first[ordered[k]])
                k += 1
        return min(found, default=None)

    def first(self, real: str, is_dir: bool, g) -> tuple:
        """((index, file entry) of the first file the grant at the real path `real`
        reaches (by path, or by its place in its file system: _reaches), or None;
        (index, file entry, links) of the first it may hold another link of
        (a second name of it may lie in a writable grant on its file system),
        or None)."""
        found = [self._first(self._names, real, is_dir)]
        for g_dev, g_path in self._places.object(real):
            if g_dev in self._at:
                found.append(self._first(self._at[g_dev], g_path, is_dir))
        i = min((f for f in found if f is not None), default=None)
        reached = (i, self.files[i]) if i is not None else None
        linked = None
        if self._linked and not g.refuse_hard_links:
            try:
                dev = os.stat(real).st_dev
            except OSError:
                dev = None
            j, st = next(((j, st) for j, st in self._linked if st.st_dev == dev),
                         (None, None))
            if j is not None:
                linked = (j, self.files[j], st.st_nlink)
        return reached, linked


def _not_a_file(what: str, path: str) -> str:
    """Why `path` is no regular file, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        # "~/x.wasm" and "${HOME}/x.wasm" are taken as they are written, beneath the
        # file's directory: say so, where a part of the missing path begins so
        said = " (no ~ and no variable but ${SYSTEM_DIR} is expanded in a path; a " \
            "relative one is relative to the file's directory)" \
            if any(part.startswith(("~", "$")) for part in path.split("/")) else ""
        return f"{what} {quoted(path)} does not exist{said}"
    return f"{what} {quoted(path)} is {capnp_schemas.file_kind(mode)}, not a regular file"


def _subdir_problem(path: str, subdir: str) -> str | None:
    """Why `subdir` cannot be granted beneath `path` (None if it can): each part must
    be a real directory, not a symbolic link (the supervisor opens it beneath
    the grant with no links followed)."""
    at = path
    for part in [p for p in subdir.split("/") if p not in ("", ".")]:
        at = os.path.join(at, part)
        if os.path.islink(at):
            return f"{at} is a symbolic link; subdir must name a real directory"
        if not os.path.isdir(at):
            return f"{at} is not an existing directory"
    return None


#: bytes of a system or policy file
MAX_FILE_BYTES = 16 << 20


def _read_text(path: str, what: str) -> str:
    """A system or policy file's text; errors say which (`what` is "" or "policy file ").
    Only a regular file of at most MAX_FILE_BYTES is read (capnp_schemas.read_regular)."""
    try:
        raw = capnp_schemas.read_regular(path, MAX_FILE_BYTES)
    except capnp_schemas.FileProblem as e:
        raise PolicyError(path, "", f"cannot read {what}{quoted(path)}: {e.strerror}" if e.strerror
                          else f"{what or 'system file '}{quoted(path)} {e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # its line, as every other error of the file says (and as the NUL byte's does);
        # in the reason too: a policy file's error is said at the line that names it
        line = raw[:e.start].count(b"\n") + 1
        raise PolicyError(path, "", f"{what}{quoted(path)} is not UTF-8 (line {line}, byte "
                          f"{e.start})", line) from None


# ------------------------------------------------------------------ helpers


#: The file as tokens for _Where: TOML's own (a string whole, a multi-line one
#: too, so that nothing inside a string is taken for a key or a header), each
#: bracket and `=` alone.  Linear, as _TOKENS is.
_LINE_TOKENS = re.compile(r'''
    (?P<string>"""(?:\\.|\\\Z|[^\\])*?(?:"""(?!")|\Z)|\'\'\'[^\0]*?(?:\'\'\'(?!\')|\Z)
              |"(?:[^"\\\n]|\\.?)*(?:"|(?=\n)|\Z)|'[^'\n]*(?:'|(?=\n)|\Z))
  | (?P<part>[A-Za-z0-9_+:-]+)
  | (?P<dot>\.)
  | (?P<newline>\n)
  | (?P<open>[\[{])
  | (?P<close>[\]}])
  | (?P<eq>=)
  | [ \t\r]+
  | \#[^\n]*
  | [^A-Za-z0-9_+:.\-"'\s\#\[\]{}=]+
  | .
''', re.VERBOSE | re.DOTALL)


def _key_part(token: str) -> str:
    """One part of a TOML key as TOML reads it: bare, 'literal' or "basic" (its
    escapes decoded: "\\u0061pp" is app)."""
    if token.startswith("'"):
        return token[1:-1]
    if token.startswith('"'):
        if "\\" not in token:
            return token[1:-1]
        try:
            return next(iter(tomllib.loads(f"{token} = 0")))
        except (tomllib.TOMLDecodeError, StopIteration, ValueError):
            return token[1:-1]
    return token


def _written_keys(text: str) -> list:
    """(key path, line) of each table header and each key the file writes, in
    order, as TOML reads them: lines counted at \\n alone (TOML's newline; a
    U+2028 or U+0085 in a comment or a string ends no line), keys decoded
    (quoted, literal, with escapes), and nothing inside a string (a multi-line
    one holding "[a]" or "b = 1") taken for a header or a key."""
    out, table, line = [], [], 1
    state, parts, depth, key_line, after_dot = "start", [], 0, 1, True
    for m in _LINE_TOKENS.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if state == "value":                 # skipped to its end: a newline outside brackets
            if kind == "open":
                depth += 1
            elif kind == "close":
                depth = max(depth - 1, 0)
            elif kind == "newline" and depth == 0:
                state = "start"
        elif state == "start":
            if kind in ("part", "string"):
                state, parts, key_line, after_dot = "key", [_key_part(tok)], line, False
            elif kind == "open" and tok == "[":
                state, parts, key_line, after_dot = "header", [], line, True
        elif state == "header":
            if kind == "open" and not parts:
                pass                         # [[an array of tables]]
            elif kind in ("part", "string") and after_dot:
                parts.append(_key_part(tok))
                after_dot = False
            elif kind == "dot":
                after_dot = True
            elif kind == "close":
                table = parts
                out.append((tuple(parts), key_line))
                state, depth = "value", 0    # the rest of the line (`]]`, a comment)
            elif kind == "newline":
                state = "start"
        elif state == "key":
            if kind in ("part", "string") and after_dot:
                parts.append(_key_part(tok))
                after_dot = False
            elif kind == "dot":
                after_dot = True
            elif kind == "eq":
                out.append((tuple(table) + tuple(parts), key_line))
                state, depth = "value", 0
            elif kind == "newline":
                state = "start"
        if kind == "newline":
            line += 1
        elif kind == "string":
            line += tok.count("\n")
    return out


class _Where:
    """Finds the line a key was written on, for error messages."""

    def __init__(self, text, path):
        self.text = text
        self.path = path
        self._keys = None           # _written_keys, made at the first error

    @classmethod
    def of_file(cls, path: str, what: str = "") -> "_Where":
        """The _Where of a file read again to name an error's line (`check` and
        `up`'s refusals, a grant's file): a file changed since it was loaded (not
        UTF-8 now, removed, a directory) names no line, and the error about the
        key is still the one said; its own PolicyError was a traceback of `check`."""
        try:
            return cls(_read_text(path, what), path)
        except PolicyError:
            return cls("", path)

    def line_of(self, key: str) -> int | None:
        """The line that writes `key` (dotted, list indices ignored): the line of the
        longest prefix of it that the file writes, as a table header, a dotted key
        or an inline table; for a table the file only writes deeper parts of (an
        unknown table `[foo.bar]` for the key `foo`), its first header.  Keys are
        read as TOML reads them (_written_keys): `'bogus' = 1`, `"b\\u006fgus" = 1`
        and `['compartments'.app]` were not found (the error named the table's
        line, or line 1), a U+2028 in a comment moved every line after it by one,
        and a multi-line string holding a header took an error to its lines."""
        # matched as text, each written key joined at its dots, never by splitting
        # `key` (a key part of a dot or a bracket, `"x.y" = 1` or a grant named
        # "g]", split where TOML does not: the error named its table's line, or none)
        if not key:
            return None
        if self._keys is None:
            self._keys = _written_keys(self.text)
        best, best_line = 0, None
        for path, line in self._keys:
            written = ".".join(path)
            if key == written or key.startswith((written + ".", written + "[")):
                score = len(written) + 1          # a prefix of it (list indices ignored)
            elif written.startswith((key + ".", key + "[")):
                score = len(key) + 1              # a table written only deeper
            else:
                continue
            if score > best:
                best, best_line = score, line
        return best_line

    def error(self, key, reason) -> PolicyError:
        return PolicyError(self.path, key, reason, self.line_of(key))


def _engine_user(where, value) -> tuple:
    """system.engine_user = "UID:GID": numbers, neither root's 0 nor 2^32-1."""
    if value is None:
        return DEFAULT_ENGINE_USER
    m = _ENGINE_USER.match(value) if isinstance(value, str) else None
    ids = (int(m.group(1)), int(m.group(2))) if m else None
    if ids is None or not all(1 <= i <= 4294967294 for i in ids):
        raise where.error("system.engine_user", f'must be "UID:GID" with numbers from 1 to '
                          f'4294967294 (not root), e.g. "65534:65534"; got {value!r}')
    return ids


_KEY = re.compile(r'((?:"[^"]*"|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|[A-Za-z0-9_-]+))*)\s*=')


# Both of these see every line of a hostile file and every key of an error: plain
# string scans, linear in the length (the regular expressions they replace
# backtracked: cubic on a "[" and spaces, quadratic on a key of many dots).

def _header(line: str) -> str | None:
    """What a table header `[a.b]` or `[[a.b]]` names, stripped; None if `line`
    (stripped) is none."""
    if not line.startswith("["):
        return None
    inner = line[2:] if line.startswith("[[") else line[1:]
    end = inner.find("]")
    return None if end < 0 else inner[:end].strip()


def _split_key(key: str) -> list[str]:
    """An error's key at its dots, but not at a dot inside brackets (`a.b[x.y]`)."""
    parts, end, closing = [], len(key), False
    for i in range(len(key) - 1, -1, -1):
        c = key[i]
        if c in "[]":
            closing = c == "]"
        elif c == "." and not closing:
            parts.append(key[i + 1:end])
            end = i
    parts.append(key[:end])
    return parts[::-1]


def _split_dotted(key: str) -> list[str]:
    """`a."b.c".d` -> ["a", "b.c", "d"] (dots inside quotes or brackets do not split)."""
    parts = re.findall(r'"([^"]*)"|([^.\s"]+(?:\[[^\]]*\])?)', key)
    return [q or bare for q, bare in parts]


def _only(where, key, table, allowed):
    for k in table:
        if k not in allowed:
            full = f"{key}.{k}" if key else k
            raise where.error(full, f"unknown key {k!r} (allowed here: {', '.join(sorted(allowed))})")


def _table(where, key, value):
    if not isinstance(value, dict):
        raise where.error(key, f"must be a table, not {type(value).__name__}")


def _list(where, key, value):
    if not isinstance(value, list):
        raise where.error(key, f"must be a list, not {type(value).__name__}")
    return value


def _real_dir_of(path: str) -> str:
    """The directory that holds the file `path`, its links resolved (not the file's
    own name: a system file that is itself a link keeps its paths beside the link)."""
    return os.path.realpath(os.path.dirname(path))


def _path(where, key, value, base) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(key, f"must be a non-empty path string, not {value!r}")
    if "\0" in value:
        raise where.error(key, "path contains a NUL byte")
    return os.path.normpath(os.path.join(base, _in_base(value)))


def _in_base(value: str) -> str:
    """A path relative to the file's directory, written as grant paths are
    ("${SYSTEM_DIR}/build/app.wasm"): that directory is what it names too (it was
    taken as a directory named "${SYSTEM_DIR}")."""
    if value == SYSTEM_DIR or value.startswith(SYSTEM_DIR + "/"):
        return "." + value[len(SYSTEM_DIR):]
    return value


def _policy_file(where, key, ref, base, read_policy, wheres=None, cache=None):
    """Grants and limits from a policy file: (tuple of Grant, limits table).
    `wheres`: path -> _Where of the files read, to which it adds its own.
    `cache`: path -> what this made of it, so that each file is read and parsed
    once: a policy file of 8 MiB named by 200 compartments was read and parsed 200
    times (50 s of `check`, and of `status` and `stop`, which read it too)."""
    if not isinstance(ref, str) or not ref:
        raise where.error(key, f"must be the path of a policy file, not {ref!r}")
    if "\0" in ref:
        raise where.error(key, "path contains a NUL byte")
    path = os.path.normpath(os.path.join(base, _in_base(ref)))
    if os.path.realpath(path) == os.path.realpath(where.path):
        # read as a policy file, its own [system] was refused as "system: unknown
        # key 'system' (allowed here: grants, limits)" at its line 1, which never
        # said that the file was read as a policy file, nor which key made it one
        raise where.error(key, f"{quoted(ref)} is this system file itself; a policy file "
                          f"holds only [grants] and [limits] (and no [system] or "
                          f"[compartments])")
    if cache is not None and path in cache:
        return cache[path]
    try:
        text = read_policy(path)
    except PolicyError as e:
        raise where.error(key, e.reason) from None
    pwhere = _Where(text, path)
    if wheres is not None:
        wheres.setdefault(path, pwhere)
    doc = _toml(text, path)
    _only(pwhere, "", doc, POLICY_KEYS)
    grants_doc = doc.get("grants", {})
    _table(pwhere, "grants", grants_doc)
    grants = tuple(_grant(pwhere, f"grants.{g}", g, spec) for g, spec in grants_doc.items())
    limits = doc.get("limits", {})
    # checked here, where they are written: merged first, a bad value was reported
    # at the system file's [compartments.NAME] line, under a key it does not have
    _limits(pwhere, "limits", limits)
    if cache is not None:
        cache[path] = (grants, limits)
    return grants, limits


def _restart(where, key, body) -> RestartPolicy:
    values = {}
    mode = body.get("restart", "transient")
    if mode not in MODES:
        raise where.error(f"{key}.restart", f"must be one of {', '.join(MODES)}, not {mode!r}")
    values["mode"] = mode
    for k, lo, hi, kinds in (("max_restarts", 0, 1000, int),
                             ("restart_window", 0.1, 86_400, (int, float)),
                             ("restart_delay", 0.0, 60, (int, float))):
        if k in body:
            values[k] = _number(where, f"{key}.{k}", body[k], lo, hi, real=kinds is not int)
    critical = body.get("critical", False)
    if not isinstance(critical, bool):
        raise where.error(f"{key}.critical", f"must be true or false, not {critical!r}")
    values["critical"] = critical
    return RestartPolicy(**values)


def _limits(where, key, table) -> Limits:
    _table(where, key, table)
    _only(where, key, table, set(Limits.RANGES))
    values = {}
    for k, v in table.items():
        lo, hi, is_size = Limits.RANGES[k]
        values[k] = _size(where, f"{key}.{k}", v, lo, hi) if is_size else \
            _number(where, f"{key}.{k}", v, lo, hi, real=k in Limits.REAL)
    return Limits(**values)


def _number(where, key, value, lo, hi, real=True):
    """A number from the file, checked once for every key that takes one: an int
    (or a float, if `real`) from lo to hi.  Not a bool (TOML's true is no count),
    and not nan or inf, which TOML allows and every comparison would wave
    through (a quota of nan is no quota)."""
    kinds = (int, float) if real else int
    if isinstance(value, bool) or not isinstance(value, kinds) \
            or (isinstance(value, float) and not math.isfinite(value)) \
            or not lo <= value <= hi:
        what = "a number" if real else "a whole number"
        raise where.error(key, f"must be {what} from {_bound(lo)} to {_bound(hi)}, "
                          f"not {_shown(value)}")
    return value


def _bound(n) -> str:
    return f"{int(n):,}" if n == int(n) else f"{n:g}"


def _shown(value) -> str:
    """repr() of a value from the file, cut (an int's too: it may have 4,000 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of {value.bit_length()} bits"
    return _cut(repr(value), SHOWN_KEY)


def _size(where, key, value, lo, hi) -> int:
    """A size: a whole number of bytes, or a string such as "64MiB", from lo to hi."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]{1,20})\s*(B|KiB|MiB|GiB|TiB|PiB|EiB)?\s*", value)
        if m is None:
            raise where.error(key, f"must be a size in bytes, such as 65536 or \"64MiB\", "
                              f"not {_shown(value)}")
        n = int(m.group(1)) * _UNITS[m.group(2) or ""]
        if not lo <= n <= hi:
            # the value cut, as every value an error quotes: spaces are allowed
            # around its number and unit, and thousands of them pushed the range
            # past SHOWN_ERROR, off the line
            raise where.error(key, f"{_shown(value)} is {n:,} bytes; it must be from "
                              f"{_bound(lo)} to {_bound(hi)}")
        return n
    return _number(where, key, value, lo, hi, real=False)


# the attenuation a `file` grant under a standard stream's name has unless it says the
# opposite: that key false, or the other one true (docs/policy-reference.md, "Grants a
# WASI program uses")
STDIO_ATTENUATION = {"stdin": "read_only", "stdout": "append_only", "stderr": "append_only"}


def _grant(where, key, name, spec) -> Grant:
    if not _NAME.match(name):
        raise where.error(key, f"grant name {name!r} is not allowed (letters, digits, '_' "
                          "and '-', starting with a letter or '_', at most 64)")
    if not isinstance(spec, dict):
        raise where.error(key, "must be a table such as { compartment = \"calc\" } "
                          "or { host = \"log\" }")
    _only(where, key, spec, GRANT_KEYS)
    kinds = [k for k in GRANT_TARGETS if k in spec]
    if len(kinds) != 1:
        raise where.error(key, "needs exactly one of 'compartment' or 'host'")
    target = spec[kinds[0]]
    if not isinstance(target, str):
        raise where.error(f"{key}.{kinds[0]}", f"must be a string, not {target!r}")
    # what a host grant's own keys (subdir, mount, args, vars, on) are checked against:
    # a compartment's name is no host capability, though it may be spelled as one (a
    # grant of a compartment called `environment` took `args` and ignored them)
    host = target if kinds[0] == "host" else None
    allow = spec.get("allow")
    if allow is not None:
        if not isinstance(allow, list) or not all(isinstance(m, str) and m for m in allow):
            raise where.error(f"{key}.allow", "must be a list of method names, such as "
                              "[\"add\"] or [\"Counter.inc\"]")
        allow = tuple(allow)
    revocable = spec.get("revocable", False)
    if not isinstance(revocable, bool):
        raise where.error(f"{key}.revocable", f"must be true or false, not {revocable!r}")
    quotas = {}
    for k, lo, hi, real in GRANT_QUOTAS:
        if k in spec:
            quotas[k] = _number(where, f"{key}.{k}", spec[k], lo, hi, real)
    files = {}
    for k in ("read_only", "append_only", "refuse_hard_links"):
        if k in spec:
            if not isinstance(spec[k], bool):
                raise where.error(f"{key}.{k}", f"must be true or false, not {spec[k]!r}")
            files[k] = spec[k]
    if "subdir" in spec:
        sub = spec["subdir"]
        if not isinstance(sub, str) or not sub or sub.startswith("/") or ".." in sub.split("/") \
                or "\0" in sub:
            raise where.error(f"{key}.subdir", f"must be a relative path without '..', "
                              f"not {sub!r}")
        if host != "directory":
            raise where.error(f"{key}.subdir", "applies only to directory grants")
        files["subdir"] = sub
    if "mount" in spec:
        m = spec["mount"]
        if not isinstance(m, str) or not m or "\0" in m or ".." in m.split("/"):
            raise where.error(f"{key}.mount", f"must be a path such as \"/data\" or \".\" "
                              f"(no '..'), not {m!r}")
        if host != "directory":
            raise where.error(f"{key}.mount", "applies only to directory grants")
        files["mount"] = m
    if "max_bytes_written" in spec:
        files["max_bytes_written"] = _size(where, f"{key}.max_bytes_written",
                                           spec["max_bytes_written"], 0, MAX_BYTES_WRITTEN)
    if "args" in spec or "vars" in spec:
        if host != "environment":
            raise where.error(f"{key}.{'args' if 'args' in spec else 'vars'}",
                              "applies only to environment grants")
        args, variables = spec.get("args", []), spec.get("vars", {})
        if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a
                                                 for a in args):
            raise where.error(f"{key}.args", "must be a list of strings (no NUL)")
        if not isinstance(variables, dict) or not all(
                isinstance(v, str) and "\0" not in v and "\0" not in k and "=" not in k and k
                for k, v in variables.items()):
            raise where.error(f"{key}.vars", "must be a table of NAME = \"value\" strings "
                              "(names without '=' or NUL)")
        env = {"args": tuple(args), "vars": tuple(variables.items())}
    else:
        env = {}
    if "path" in spec:
        p = spec["path"]
        if not isinstance(p, str) or not p or "\0" in p:
            raise where.error(f"{key}.path", f"must be a path, not {p!r}")
        if p == SYSTEM_DIR or p.startswith(SYSTEM_DIR + "/"):   # the one variable:
            p = _real_dir_of(os.path.abspath(where.path)) + p[len(SYSTEM_DIR):]  # its dir
        if not p.startswith("/"):
            # "${HOME}/data" and "~/data" are not expanded: say so, not only "relative"
            said = f"only {SYSTEM_DIR} is expanded (no other variable, no ~); " \
                if p.startswith(("$", "~")) else ""
            raise where.error(f"{key}.path", f"{p!r} is relative: {said}grant an absolute "
                              f"path (or one that starts with {SYSTEM_DIR}/)")
        if ".." in p.split("/"):
            raise where.error(f"{key}.path", f"{p!r} contains '..'; name the directory itself")
        files["path"] = os.path.normpath(p)
    if kinds[0] == "host" and target in PATH_CAPS:
        if "path" not in files:
            raise where.error(key, f"a {target} grant needs a path")
        if files.get("read_only") and files.get("append_only"):
            raise where.error(key, "read_only and append_only together make no sense: "
                              "choose one")
        if target == "file" and name in STDIO_ATTENUATION:
            # a WASI program's stdin is read, its stdout and stderr appended to, and
            # nothing more: a file shared by several compartments (or holding the
            # operator's earlier output) was the whole File to each of them, so
            # fcntl(1, F_SETFL, 0), lseek and write, or ftruncate(1), overwrote or
            # emptied what the others wrote (and lookup("stdin") wrote the input).
            # Only a grant that says the opposite lifts it: the key itself set false,
            # or the other one true; the other one false is the default said aloud
            # (`stdout = { ..., read_only = false }` made it the whole File again)
            own = STDIO_ATTENUATION[name]
            other = "append_only" if own == "read_only" else "read_only"
            if own not in files and not files.get(other):
                files[own] = True
    elif files:
        extra = ", ".join(sorted(files))
        # a compartment may be called file or directory: its grant is named as one, not
        # by its bare name ("read_only applies only to directory and file grants, not
        # to 'file'" contradicted itself)
        of = f"host capability {target!r}" if host is not None else \
            f"a grant of compartment {target!r}"
        raise where.error(f"{key}.{sorted(files)[0]}", f"{extra} applies only to directory "
                          f"and file grants (host = ...), not to {of}")
    on = spec.get("on")
    if on is not None and not isinstance(on, str):
        raise where.error(f"{key}.on", f"must be a compartment name, not {on!r}")
    if on is not None and host != "probe":
        raise where.error(f"{key}.on", "applies only to probe grants")
    return Grant(name, kinds[0], target, allow, revocable, **quotas, **files, **env,
                 on=on, origin=f"{where.path}: {key}")


def _instrumentation(where, key, name, body) -> tuple[tuple, tuple]:
    """`instrument = [...]` (points compiled in) and `[...probes.NAME]` (declared probes)."""
    from compartments.instrument import POINTS

    from .probes import IN_MODULE, MAX_PROBES, ProbeError, spec
    instrument = body.get("instrument", [])
    if not isinstance(instrument, list) or not all(p in POINTS for p in instrument) \
            or len(set(instrument)) != len(instrument):
        raise where.error(f"{key}.instrument", f"must be a list of distinct probe points "
                          f"to compile in, from {', '.join(POINTS)}; not {instrument!r}")
    table = body.get("probes", {})
    _table(where, f"{key}.probes", table)
    declared = []
    for pname, pspec in table.items():
        pkey = f"{key}.probes.{pname}"
        if len(declared) >= MAX_PROBES:
            # a compartment holds at most MAX_PROBES (probes.Registry.add): the rest
            # passed check, and every start said "cannot add declared probe ...:
            # ... has 64 probes already", running without them
            raise where.error(pkey, f"more than {MAX_PROBES} probes declared for "
                              f"{name}, the most a compartment may have")
        _table(where, pkey, pspec)
        _only(where, pkey, pspec, {"point", "functions", "events"})
        if "point" not in pspec:
            raise where.error(pkey, f"missing 'point' (one of calls, hostcalls, "
                              f"{', '.join(IN_MODULE)})")
        if not isinstance(pspec.get("functions", []), list):
            # probes.spec splits a string at its commas (`wsuper probe --functions
            # a,b`): `functions = ""` passed as no pattern, a probe of every function
            raise where.error(f"{pkey}.functions", "must be a list of name patterns or "
                              "indices, such as [\"store_*\", \"#12\"]")
        try:
            s = spec(name, pname, pspec["point"], pspec.get("functions", []),
                     pspec.get("events", False), declared=True)
        except ProbeError as e:
            # the key it is about, and so its line (the table's said `events = 1`
            # was wrong on the line of [compartments.a.probes.p])
            raise where.error(f"{pkey}.{e.key}" if e.key else pkey, str(e)) from None
        if s.point in IN_MODULE and s.point not in instrument:
            raise where.error(f"{pkey}.point", f"{s.point} probes need the sites compiled in: "
                              f"add \"{s.point}\" to {key}.instrument")
        declared.append(s)
    return tuple(p for p in POINTS if p in instrument), tuple(declared)
