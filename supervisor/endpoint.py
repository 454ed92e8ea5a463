"""Where a running system can be reached: its sockets, its lock, the admin protocol.

A running system has
  * an admin socket (`wsuper revoke` and the operator's commands), always;
  * an external socket, when a compartment is `external` (any Cap'n Proto
    client can call the exported compartments through the gateway);
  * a lock, so that the same system file cannot be brought up twice.
All of them live in one directory that nobody else can have prepared: by
default `$XDG_RUNTIME_DIR/wsuper` (else `/tmp/wsuper-UID`), which must be
owned by this user, mode 0700, and not a symbolic link; a socket path set in
the system file must be in a directory owned by this user that nobody else
may write to.  Names carry a hash of the system file's absolute path, so two
systems whose files share a name never share sockets.

The admin protocol is one JSON object per line each way: a request names the
system it is meant for, and a system refuses a request meant for another.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket as pysocket
import stat
import struct
import time

from capnp_schemas.text import quoted

ADMIN_LINE_LIMIT = 1 << 16      # a request (from any local process that can connect)
#: Admin connections still sending their request, at once: a new one closes the
#: oldest of them.  A local process that opened connections and sent nothing, or
#: asked and never read its answer, took a descriptor (and the answer's memory) for
#: each, until the supervisor had none left for its engines, its log files or its
#: clients.
ADMIN_CONNECTIONS = 16
#: Requests answered at once: past it, any but a stop is answered "too many".
ADMIN_ANSWERING = 16
#: Seconds a connection may take to send its request line ...
ADMIN_READ_TIMEOUT = 5.0
#: ... and the system waits for it to take the answer (it is then closed).
ADMIN_SEND_TIMEOUT = 5.0
ADMIN_ANSWER_LIMIT = 1 << 26    # an answer (from the system: one entry per compartment)
#: How long an operator's command waits for the answer: longer than any request takes
#: (a revocation waits up to hostcaps.IO_DEADLINE, 10 s, for the file operations
#: already begun through the grant; a status reads /proc for each engine).
ADMIN_ANSWER_TIMEOUT = 30.0


class EndpointError(Exception):
    """The sockets cannot be set up safely; the text is one line for the operator."""


def xdg_base(name: str) -> str | None:
    """The XDG base directory in the environment variable `name`, or None if it is
    unset, empty or relative, which the XDG Base Directory specification says to
    ignore.  Taken as it was, a relative one (XDG_RUNTIME_DIR=run) named another
    directory from every working directory: a system brought up in one was not
    running for `wsuper status`, `stop`, `call` or `revoke` run in another, and
    `wsuper logs` found no logs of it."""
    base = os.environ.get(name)
    return base if base and os.path.isabs(base) else None


def default_log_dir_hint() -> str:
    """What an operator whose default log directory cannot be made can do, said after
    why: the directory named alone (a service user's HOME=/nonexistent: "cannot make
    log directory /nonexistent/.local/state/wsuper/NAME-HASH: Permission denied")
    said neither where it came from nor what moves it."""
    where = "$XDG_STATE_HOME/wsuper" if xdg_base("XDG_STATE_HOME") else \
        "~/.local/state/wsuper (XDG_STATE_HOME is not set)"
    return (f"; it is the default log directory, in {where}: set logs under [system] in the "
            f"system file, or XDG_STATE_HOME, to a directory of yours")


def default_log_dir(system_id: str) -> str:
    base = xdg_base("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                      "state")
    return os.path.join(base, "wsuper", system_id)


def runtime_dir() -> str:
    base = xdg_base("XDG_RUNTIME_DIR")
    return os.path.join(base, "wsuper") if base else f"/tmp/wsuper-{os.getuid()}"


#: The longest trace session (`wsuper trace --seconds`), in seconds.
MAX_TRACE_SECONDS = 3600


def identity(system_path: str) -> str:
    """What makes two system files the same: the file itself, however it is reached
    (symbolic links resolved)."""
    return os.path.realpath(system_path)


def system_id(system_path: str) -> str:
    """NAME-HASH: the file's name without .toml, and 8 hex digits of its real path."""
    path = identity(system_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}-{hashlib.sha256(os.fsencode(path)).hexdigest()[:8]}"


def default_socket_path(system_path: str) -> str:
    return os.path.join(runtime_dir(), system_id(system_path) + ".sock")


def admin_socket_path(system_path: str) -> str:
    return os.path.join(runtime_dir(), system_id(system_path) + ".admin.sock")


def lock_path(system_path: str) -> str:
    return os.path.join(runtime_dir(), system_id(system_path) + ".lock")


def grants_path(system_path: str) -> str:
    """Beside the lock: the revocable grants of the system running (Lock.publish)."""
    return lock_path(system_path) + ".grants"


#: Bytes at most of the grants file read back (a grant's label is two names)
GRANTS_LIMIT = 1 << 22

#: The names the supervisor keeps in the runtime directory for a system NAME-HASH: its
#: external socket, admin socket, lock, the grants file beside the lock (publish), and
#: that file's temporary name while it is written
_KEPT_NAME = re.compile(r".+-[0-9a-f]{8}(\.sock|\.admin\.sock|\.lock|\.lock\.grants"
                        r"|\.lock\.grants\.[0-9]+\.tmp)", re.S)
KEPT_NAMES = "NAME-HASH.sock, .admin.sock, .lock, .lock.grants"


def kept_name(path: str) -> bool:
    """Whether `path` lies in the runtime directory under a name the supervisor keeps
    there for a system (this one's or another's: `_KEPT_NAME`), which no file a
    system file names (its audit, log directory, external socket) nor one an
    operator's command writes (`trace -o`, `check --graph`) may take.  The grants
    file was not among them: an audit named so was replaced by `up`'s grants file
    at each start (os.replace), every record of the runs before lost without a word,
    and `trace -o` wrote over a running system's lock and grants file (r266)."""
    if not _KEPT_NAME.fullmatch(os.path.basename(path)):
        return False
    try:
        return os.path.realpath(os.path.dirname(os.path.abspath(path))) == \
            os.path.realpath(runtime_dir())
    except (OSError, ValueError):
        return False


def running_grants(system_path: str) -> list | None:
    """`running_facts(system_path)["revocable"]`, or None."""
    facts = running_facts(system_path)
    return None if facts is None else facts["revocable"]


def running_facts(system_path: str) -> dict | None:
    """{"revocable": ["COMPARTMENT.GRANT", ...], "compartments": [...]} of the
    system running at `system_path`, as it published them when it started
    (Lock.publish), or None when that cannot be known here (none runs, or it
    published none, or the file is not its: another pid's, left behind).  `wsuper revoke` of a grant not among
    them is refused here, exit 2: asked of a system that does not answer (stopped,
    SIGSTOP), it waited ADMIN_ANSWER_TIMEOUT (30 s) and said it did not answer,
    exit 1, where the README promises exit 2 whether it runs or not."""
    fd = _open_lock(system_path)
    if fd is None:
        return None
    try:
        if not _held_exclusively(fd):
            return None
        pid = _holder_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    obj = _published(system_path)
    if obj is None or str(obj.get("pid")) != pid or not pid:
        return None
    facts = {}
    for key in ("revocable", "compartments"):
        names = obj.get(key)
        if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
            return None
        facts[key] = names
    return facts


def own_paths(system) -> list[tuple[str, str, bool, str, str]]:
    """The supervisor's own files and directories for `system`: (what, real path,
    is a directory, how to move it, the path as given).  No grant may reach them (policy.load refuses it): through a
    grant a compartment could read the audit of every call, forge records, or
    put a link where the supervisor writes."""
    sid = system_id(system.path)
    out = [("runtime directory (sockets, lock)", runtime_dir(), True,
            "XDG_RUNTIME_DIR moves it"),
           ("log directory", system.logs or default_log_dir(sid), True,
            "[system] logs moves it"),
           # every system's log directory lies there by default, as every system's
           # sockets lie in the runtime directory: a grant of another system's (or
           # of a directory holding them, for a system whose own logs are
           # elsewhere) let a compartment forge the lines `wsuper logs` shows of
           # it, read them, or stop its logs (a second hard link to a log file)
           ("log directories of every system (their default place)",
            os.path.dirname(default_log_dir(sid)), True, "XDG_STATE_HOME moves it")]
    if system.socket:
        out.append(("external socket", system.socket, False,
                    "--socket moves it" if system.socket_option else "[system] socket moves it"))
    if system.audit:
        out.append(("audit file", system.audit, False, "[system] audit moves it"))
    return [(what, os.path.realpath(p), is_dir, how, os.path.abspath(p))
            for what, p, is_dir, how in out]


def reaches(grant: str, is_dir: bool, own: str, own_is_dir: bool) -> bool:
    """Whether a grant of the real path `grant` reaches the supervisor's `own` path:
    it is that path, holds it, or (for an own directory) lies inside it."""
    def under(a, b):
        return a == b or a.startswith(b.rstrip("/") + "/")
    return grant == own or (is_dir and under(own, grant)) or (own_is_dir and under(grant, own))


def makedirs_private(path: str):
    """os.makedirs(path, exist_ok=True), but every directory it makes is made 0700:
    os.makedirs gives its `mode` to the last one only (Python 3.7 on), the others
    the umask's (0777 under `umask 0`, 0775 under 002), and another user could
    then rename the system's log or runtime directory away inside one of them and
    put a directory of their own there.  Raises OSError as os.makedirs does."""
    missing = []
    at = os.path.abspath(path)
    while not os.path.lexists(at) and at != os.path.dirname(at):
        missing.append(at)
        at = os.path.dirname(at)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass                          # made meanwhile: as os.makedirs, if a directory
    if not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)


#: Symbolic links changeable_above follows at most (the kernel's own limit: past it,
#: opening the path fails ELOOP, which whoever opens it says)
_MAX_LINKS = 40


def group_of_one(gid: int, uid: int) -> bool:
    """Whether group `gid` has no user in it but `uid`: no other user has it as
    their primary group or is listed in it.  A user's own group, where each user
    has one (Debian's and Fedora's users get a group of their name, and a umask of
    002 makes their directories 0775): a directory writable by it is writable by
    its user alone, and changeable_above takes it as one (it refused a project
    directory of 0775 above `logs = "logs"`)."""
    import grp
    import pwd
    try:
        members = grp.getgrgid(gid).gr_mem
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return False                   # unknown to this machine: anyone could be in it
    if any(m != name for m in members):
        return False
    return not any(p.pw_gid == gid and p.pw_uid != uid for p in pwd.getpwall())


def _above(path: str):
    """What the kernel looks at on the way to `path`, as it walks it: ("dir", D,
    stat) for each directory it looks a name up in (each directory above `path`,
    and above the target of each link on the way), ("link", L, lstat) for each
    symbolic link it follows.  `path`'s own last component is not looked at; the
    walk ends early where it cannot go on (nothing there yet, not a directory, no
    permission, more than _MAX_LINKS links)."""
    at = "/"
    todo = [p for p in os.path.abspath(path).split("/") if p]
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        try:
            st = os.stat(at)
        except OSError:
            return
        yield "dir", at, st
        if name == "..":
            at = os.path.dirname(at)
            continue
        nxt = os.path.join(at, name)
        if not todo:
            return                          # `path` itself: its own checks say
        try:
            lst = os.lstat(nxt)
        except OSError:
            return
        if stat.S_ISLNK(lst.st_mode):
            yield "link", nxt, lst
            links += 1
            if links > _MAX_LINKS:
                return
            try:
                target = os.readlink(nxt)
            except OSError:
                return
            todo = [p for p in target.split("/") if p] + todo
            if target.startswith("/"):
                at = "/"
            continue
        if not stat.S_ISDIR(lst.st_mode):
            return
        at = nxt


def _changer(kind: str, st: os.stat_result, me: int) -> int | None:
    """Who besides `me` and root may change what `_above` yielded: a link's owner, a
    directory's owner, or -1 (anyone) for a directory writable by others, or by a
    group with another user in it (group_of_one), without the sticky bit; None if
    nobody."""
    if kind == "link":
        return None if st.st_uid in (0, me) else st.st_uid
    others_write = st.st_mode & 0o002 or (
        st.st_mode & 0o020 and not group_of_one(st.st_gid, me))
    if others_write and not st.st_mode & stat.S_ISVTX:
        return -1
    return None if st.st_uid in (0, me) else st.st_uid


def changeable_above(path: str, what: str) -> str | None:
    """Why another user could put a directory (or a link) of their choosing at `path`,
    or None: a directory the kernel looks a name up in on the way to it (each
    directory above it, and above the target of each link on the way) belongs to
    another user (not root), or is writable by others, or by a group with
    another user in it (group_of_one), without the sticky bit; or a link on the
    way is another's.  Only `path`'s own directory
    was checked (own_dir, private_dir): beneath a directory of another's (`logs =
    "/home/eve/shared/logs"`, an HOME kept by sudo, an XDG_RUNTIME_DIR in a shared
    directory) they could rename it away and put a link in the place of a directory
    above it, and the supervisor, as root, made its log, audit and socket
    directories, and wrote its files, where they chose.  Makes nothing; a path
    that cannot be looked at further (nothing there yet: wsuper makes the rest,
    0700; not a directory; no permission) is left to what makes or opens it."""
    me = os.getuid()
    for kind, at, st in _above(path):
        if _changer(kind, st, me) is None:
            continue
        if kind == "link":
            return (f"{what}{quoted(path)} is reached through {quoted(at)}, a symbolic "
                    f"link of uid {st.st_uid} (not you): they choose where it leads; "
                    f"choose a path beneath directories only you, or root, may change")
        return (f"{what}{quoted(path)} lies beneath {quoted(at)}, in which another user "
                f"may rename or replace what is there (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}): they could put a directory of their "
                f"choosing (or a link to one) in its way; choose a path beneath "
                f"directories only you, or root, may change")
    return None


def anyone_may_change(path: str, what: str) -> str | None:
    """Why any user of the machine could change the file at `path` (one that decides
    what runs: a module, the system file, a policy file, a schema), or None: it is
    writable by others (or by a group with a user in it besides its owner), or a
    directory on the way to it is writable by others without the sticky bit (or by
    such a group), where anyone may rename it away and put their own.  Another
    user's own file, or one beneath their directories, is taken (running it is
    running theirs, as a grant of their tree is), as a link of theirs on the way:
    they could write it anyway; but what anyone may change, nobody chose."""
    me = os.getuid()
    for kind, at, st in _above(path):
        if kind == "dir" and _changer(kind, st, me) == -1:
            return (f"{what}{quoted(path)} lies beneath {quoted(at)}, in which any user may "
                    f"rename or replace it (mode {stat.S_IMODE(st.st_mode):04o}, no sticky "
                    f"bit): anyone could put a file of their own in its place; move it "
                    f"beneath directories only you, root or its owner may change")
    try:
        st = os.stat(path)
    except OSError:
        return None                     # its own checks say what is wrong with it
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not group_of_one(st.st_gid, st.st_uid)):
        return (f"{what}{quoted(path)} may be written by any user (mode "
                f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}, group gid "
                f"{st.st_gid}): anyone could put their own in it; chmod go-w it")
    return None


def redirected_grant(path: str, found: os.stat_result) -> str | None:
    """Why what a file or directory grant's `path` led to (`found`, its stat) may be
    somewhere another user chose, or None.  A grant beneath a directory another
    user may change is theirs to point elsewhere, at every (re)start, which opens
    it again: as root, a grant of "/home/eve/shared/data" reached a directory
    "data" of root's anywhere once eve made `shared` a link to its parent (only
    the last component is opened O_NOFOLLOW).  Granting another user's own tree
    is ordinary, so the grant is taken when what it found belongs to one of the
    users who may change the way to it (what they could have put there
    themselves); not when it is anyone else's, nor when anyone at all may change
    a directory on the way."""
    me = os.getuid()
    changers: dict[int, str] = {}
    for kind, at, st in _above(path):
        who = _changer(kind, st, me)
        if who is None:
            continue
        if who == -1:
            return (f"{quoted(path)} lies beneath {quoted(at)}, which anyone may change "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}, no sticky bit): they could put "
                    f"a link to any directory of that name in its way; grant a path "
                    f"beneath directories only its owner, you or root may change")
        changers.setdefault(who, at)
    if changers and found.st_uid not in changers:
        who, at = next(iter(changers.items()))
        return (f"{quoted(path)} lies beneath {quoted(at)}, which uid {who} may change, "
                f"and what is there now is not theirs (owner uid {found.st_uid}): they "
                f"could have put a link to it in its way; grant a path beneath "
                f"directories only its owner, you or root may change")
    return None


def _make_dir(path: str, what: str):
    """mkdir 0700 (nothing if it exists)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise EndpointError(f"cannot make {what}{quoted(path)}: {e.strerror}") from None


def _real_dir(path: str, what: str) -> os.stat_result:
    """lstat of `path`, refused unless it is a directory (not a symbolic link)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise EndpointError(f"{what}{quoted(path)}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        if st.st_uid != os.getuid():
            # "remove it" of another's entry, which in a sticky directory (/tmp) only
            # they or root can remove
            raise EndpointError(f"{what}{quoted(path)} is {_kind(st.st_mode)} of uid "
                                f"{st.st_uid}, not a directory of yours (uid {os.getuid()}): "
                                f"only that user or root can remove it; choose another path")
        raise EndpointError(f"{what}{quoted(path)} is not a directory (a symbolic link or something "
                            f"else was put there); remove it")
    return st


def _kind(mode: int) -> str:
    """What a file that is not a directory is, in words."""
    return "a symbolic link" if stat.S_ISLNK(mode) else "a regular file" if stat.S_ISREG(mode) \
        else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) \
        else "a device"


def runtime_dir_hint() -> str:
    """What an operator whose runtime directory cannot be made can do, said after
    why: it comes from XDG_RUNTIME_DIR (set by a login, and kept by `su` to another
    user: root's /run/user/0), else is /tmp/wsuper-UID."""
    base = xdg_base("XDG_RUNTIME_DIR")
    if base:
        return (f"; it is $XDG_RUNTIME_DIR/wsuper (XDG_RUNTIME_DIR={quoted(base)}): set "
                f"XDG_RUNTIME_DIR to a directory of yours, or unset it "
                f"(/tmp/wsuper-{os.getuid()} then)")
    return "; set XDG_RUNTIME_DIR to a directory of yours to move it"


def private_dir(path: str, create: bool = True) -> str:
    """The runtime directory, made if missing; refused unless it is ours, 0700, real.
    One that cannot be made is said as the runtime directory, with its own path
    and how to move it: "cannot make /run/user/0/wsuper: Permission denied" named
    neither (an ordinary user under `su`, which keeps root's XDG_RUNTIME_DIR)."""
    problem = changeable_above(path, "the runtime directory ")
    if problem:
        raise EndpointError(f"{problem}{runtime_dir_hint()}")
    if create:
        try:
            makedirs_private(os.path.dirname(path))
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            at = f" ({quoted(e.filename)})" if e.filename and e.filename != path else ""
            raise EndpointError(f"cannot make the runtime directory {quoted(path)}: "
                                f"{e.strerror}{at}{runtime_dir_hint()}") from None
    try:
        there = os.lstat(path)
    except OSError:
        there = None
    if there is not None and there.st_uid != os.getuid() and not stat.S_ISDIR(there.st_mode):
        # a FIFO, a file or a link another user put at the name first: "is not a
        # directory ...; remove it" was all it said, and in /tmp (sticky) an ordinary
        # user cannot remove another's entry, whatever it is
        raise EndpointError(f"{path} is {_kind(there.st_mode)} of uid {there.st_uid}, "
                            f"not a directory of yours (uid {os.getuid()}): it is where "
                            f"your runtime directory goes, and only that user or root "
                            f"can remove it{runtime_dir_hint()}")
    st = _real_dir(path, "")
    if st.st_uid != os.getuid():
        # "remove it": in /tmp (sticky) an ordinary user cannot remove the directory
        # another user made there first, at the name that is theirs
        raise EndpointError(f"{path} belongs to uid {st.st_uid}, not to you "
                            f"(uid {os.getuid()}): it is your runtime directory, which only "
                            f"that user or root can remove{runtime_dir_hint()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise EndpointError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be "
                            f"0700 (chmod 700 {path})")
    return path


def safe_socket_dir(socket_path: str):
    """A socket the system file names: its directory (made if missing) must be ours and
    closed to others."""
    folder = os.path.dirname(os.path.abspath(socket_path))
    if folder == runtime_dir():
        private_dir(folder)
    else:
        own_dir(folder, "socket directory ")
    problem = _unbindable_dir_problem(folder, "socket directory ") or \
        socket_file_problem(socket_path)          # refused now, naming the key
    if problem:
        raise EndpointError(problem)


def _unbindable_dir_problem(folder: str, what: str) -> str | None:
    """Why no socket can be bound in the existing directory `folder`, or None: it is
    on one of the kernel's own file systems (_kernel_dir_problem; the runtime
    directory's is not asked foreign_dir), or nothing can be made in it (a read-only
    file system, a directory of ours without write permission)."""
    if not os.path.isdir(folder):
        return None                      # missing: made (or refused) by own_dir
    why = _kernel_dir_problem(folder, what)
    if why:
        return why
    why = _unwritable(folder)
    return f"cannot make a socket in {what}{quoted(folder)}: {why}" if why else None


def _name_too_long(path: str) -> bool:
    """Whether the kernel refuses `path` as too long (ENAMETOOLONG): PATH_MAX bytes
    in all, or a part of more than NAME_MAX.  Looked at, such a path is "not there"
    (os.path.lexists says False on any error), so `check` passed a log directory
    of 5,000 bytes that `up` could not make ("File name too long")."""
    raw = os.fsencode(path)
    return len(raw) >= os.pathconf("/", "PC_PATH_MAX") or any(
        len(part) > os.pathconf("/", "PC_NAME_MAX") for part in raw.split(b"/"))


def own_dir_problem(folder: str, what: str, parents: bool = False) -> str | None:
    """Why own_dir(folder, what, parents) would refuse, or None; makes nothing (what
    `wsuper check` says, so that it refuses what `up` will): a folder there must be
    a real directory of ours closed to others (foreign_dir); one missing is made,
    which needs its parent (or with `parents`, the nearest that exists) to be a
    directory."""
    if _name_too_long(folder):
        # the reason before the path, which may be cut off the error's line
        return (f"cannot make {what or 'the directory '}of {len(os.fsencode(folder)):,} "
                f"bytes (File name too long, past PATH_MAX or NAME_MAX): {quoted(folder)}")
    if os.path.lexists(folder):
        return foreign_dir(folder, what)
    problem = changeable_above(folder, what)
    if problem:
        return problem
    why = _unmakeable(folder, parents)
    return f"cannot make {what}{quoted(folder)}: {why}" if why else None


def _unmakeable(folder: str, parents: bool) -> str | None:
    """Why the missing directory `folder` cannot be made (its parent, or with
    `parents` the nearest that exists, is no directory, or nothing can be made in
    it), as the kernel would say it; or None."""
    parent = os.path.dirname(folder)
    if parents:
        while parent != os.path.dirname(parent) and not os.path.lexists(parent):
            parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return "Not a directory" if os.path.lexists(parent) else "No such file or directory"
    fs = _kernel_fs(parent)
    if fs:
        # root's, and writable by root as far as access() tells: check passed
        # XDG_RUNTIME_DIR=/proc (or logs = "/sys/kernel/x"), and up could not make it
        return f"{quoted(parent)} is on the kernel's {fs} file system, where wsuper makes nothing"
    return _unwritable(parent)


def _unwritable(parent: str) -> str | None:
    """Why nothing can be made in the existing directory `parent` (mkdir would fail
    there: a read-only file system, no write or search permission), or None."""
    if os.access(parent, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            return "Read-only file system"
    except OSError:
        pass
    return "Permission denied"


def private_dir_problem(path: str) -> str | None:
    """Why private_dir(path) would refuse, or None; makes nothing (`wsuper check`
    says it, as up, which takes its lock there, does before anything starts)."""
    if not os.path.lexists(path):
        problem = changeable_above(path, "the runtime directory ")
        if problem:
            return f"{problem}{runtime_dir_hint()}"
        why = _unmakeable(path, parents=True)
        # the directory that cannot be made is the runtime directory (or, missing too,
        # one of its parents): it was said "cannot make /run/user/0" of a
        # /run/user/0 that is there, and up, "cannot make /run/user/0/wsuper"
        return (f"cannot make the runtime directory {quoted(path)}: {why}"
                f"{runtime_dir_hint()}") if why else None
    try:
        private_dir(path, create=False)
    except EndpointError as e:
        return str(e)
    why = _unwritable(path)            # up makes its lock and admin socket there
    return f"cannot make the system's lock in {quoted(path)}: {why}" if why else None


def socket_dir_problem(socket_path: str) -> str | None:
    """Why safe_socket_dir(socket_path) would refuse, or None; makes nothing."""
    folder = os.path.dirname(os.path.abspath(socket_path))
    if folder == runtime_dir():
        return socket_file_problem(socket_path)   # the directory: private_dir's, made at up
    return own_dir_problem(folder, "socket directory ") or \
        _unbindable_dir_problem(folder, "socket directory ") or socket_file_problem(socket_path)


def own_dir(folder: str, what: str, parents: bool = False):
    """A directory wsuper writes into (sockets, logs, the audit file): made 0700 if
    missing; refused unless it is a real directory of ours that nobody else may
    write to, so no one can plant a link or a socket in it; nor beneath a directory
    another may change (changeable_above): nothing is made there."""
    problem = changeable_above(folder, what)
    if problem:
        raise EndpointError(problem)
    if parents:
        try:
            makedirs_private(os.path.dirname(folder))
        except OSError as e:
            raise EndpointError(f"cannot make {what}{quoted(folder)}: {e.strerror}") from None
    _make_dir(folder, what)
    problem = foreign_dir(folder, what)
    if problem:
        raise EndpointError(problem)


def foreign_dir(folder: str, what: str) -> str | None:
    """Why wsuper may not write into `folder` (own_dir), or None: it is a real
    directory of ours that nobody else may write to, or it does not exist yet.
    Makes nothing (`wsuper check` asks it too)."""
    try:
        st = _real_dir(folder, what)     # one look: a second lstat raised when it was gone
    except EndpointError as e:
        if not os.path.lexists(folder):
            return None
        return str(e)
    return owned_problem(st, folder, what) or changeable_above(folder, what) or \
        _kernel_dir_problem(folder, what)


def _kernel_dir_problem(folder: str, what: str) -> str | None:
    """Why wsuper may not write into the existing directory `folder`: it is on one of
    the kernel's own file systems (hostfs.KERNEL_FS, which no grant may reach
    either), root's and closed to others like any of root's directories, where
    nothing it makes can be made (bind() fails ENOENT in /proc, EPERM in /sys; a
    file, EACCES).  `socket = "/proc/x.sock"` and `audit = "/sys/kernel/x.jsonl"`
    passed `check` (up then said "[Errno 2] No such file or directory", or refused
    the audit), and `logs = "/proc/self/fdinfo"` ran with its log files stopped."""
    fs = _kernel_fs(folder)
    return (f"{what}{quoted(folder)} is on the kernel's {fs} file system, where wsuper "
            f"makes nothing; choose another path") if fs else None


def _kernel_fs(path: str) -> str | None:
    """The kernel file system (hostfs.KERNEL_FS) `path` is on, or None (for one that
    is not there either: what makes or opens it says why)."""
    from .hostfs import kernel_fs
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return kernel_fs(fd)
    finally:
        os.close(fd)


def owned_problem(st: os.stat_result, folder: str, what: str) -> str | None:
    """Why the directory of stat `st` (at `folder`) is not one of the user's that
    nobody else may write to, or None."""
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return (f"{what}{quoted(folder)} must belong to you and be writable by you only (owner uid "
                f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return None


class LockHeld(EndpointError):
    """Another process holds the lock asked for (lock_exclusive)."""


#: flock's answers that mean another holds the lock; any other error (ENOLCK: a
#: network file system without its lock service, EOPNOTSUPP, EINVAL: one that does
#: not lock at all) means nobody can tell, and was said "in use by another running
#: system", which sent the operator looking for a system that was not there
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN)


def lock_exclusive(fd: int, what: str = "it"):
    """Hold `fd`'s file (or directory) for this process until it is closed: a
    second process asking fails at once (LockHeld), whatever its runtime
    directory; the kernel lets go when the holder ends, SIGKILLed or not.  A file
    system that cannot lock is refused too, saying so (EndpointError, naming
    `what`): failing closed, never running unlocked."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _HELD:
            foreign = foreign_holders(fd)
            if foreign:
                # a flock needs only a descriptor to read: another user who may read
                # the system file (0644), the audit or the log directory held it, and
                # up said the system was already running ("stop it first"), which
                # `wsuper status` and `stop` then denied
                pid, uid = foreign[0]
                raise EndpointError(f"cannot lock {what}: process {pid} of uid {uid} (not "
                                    f"you: no wsuper of yours) holds a lock on it, as "
                                    f"anyone who may read it can; make it readable by you "
                                    f"alone, or end that process") from None
            raise LockHeld(e.strerror or str(e)) from None
        raise EndpointError(f"cannot lock {what}: {e.strerror or e} (its file system "
                            f"does not lock files here; wsuper needs it to)") from None


#: The table of the machine's locks, and the most of it foreign_holders reads
PROC_LOCKS = "/proc/locks"
PROC_LOCKS_BYTES = 1 << 22


def foreign_holders(fd: int) -> list[tuple[int, int]]:
    """The processes of other users that hold a lock on `fd`'s file, as (pid, uid),
    from /proc/locks; empty if none is, or if that cannot be told (no /proc, a
    holder in another pid namespace, whose pid shows as 0 or -1, a table longer
    than PROC_LOCKS_BYTES).  Empty too when a process of this user holds one as
    well: that one may be a system of ours."""
    me, out = os.getuid(), []
    for pid in lock_pids(fd):
        if pid <= 0:
            return []                   # not seen from here: maybe ours
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return []                   # gone meanwhile (or hidden): cannot tell
        if uid == me:
            return []
        out.append((pid, uid))
    return out


def lock_pids(fd: int) -> list[int]:
    """The pids /proc/locks names as holding a lock on `fd`'s file (0 or -1 for one
    in another pid namespace); empty if none, or if that cannot be told (no /proc,
    a table longer than PROC_LOCKS_BYTES)."""
    try:
        st = os.fstat(fd)
        with open(PROC_LOCKS, "rb") as f:
            raw = f.read(PROC_LOCKS_BYTES + 1)
    except OSError:
        return []
    if len(raw) > PROC_LOCKS_BYTES:
        # cut, the table may lack the entry of the system of ours that holds the
        # file: any user can make it that long (one process, one descriptor, ~75,000
        # byte-range locks), and with a read lock of theirs on the file listed
        # before the cut, the file was said to be held by them alone (a log writer
        # then wrote into another running system's audit: output._take)
        return []
    table = raw.decode("ascii", "replace")
    inode = str(st.st_ino)
    devices = (f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", None)
    holders: dict = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->":        # "->": a waiter, not a holder
            continue
        dev, _, ino = parts[5].rpartition(":")
        if ino == inode and parts[4].lstrip("-").isdigit():
            holders.setdefault(dev, []).append(int(parts[4]))
    # the kernel names the device of the file system's superblock, which st_dev is
    # but for a few (a btrfs subvolume): the inode's own entries, else any of its number
    return holders.get(devices[0]) or (next(iter(holders.values())) if len(holders) == 1
                                        else [])


# ------------------------------------------------------- what state a system is in

#: The states an operator's command can find a system in (system_state)
NOT_RUNNING = "not running"
#: its `up` holds the lock and reads, checks and compiles the system: no admin socket yet
STARTING = "starting"
#: its `up` answers (or is about to: its admin socket bound again, or not yet)
RUNNING = "running"
#: its `up` is stopped by a signal (SIGSTOP, SIGTSTP: Ctrl-Z) or a tracer, and
#: answers nothing until it is continued
SUSPENDED = "suspended"

#: /proc/PID/stat's states of a process stopped: by a signal (T) or a tracer (t)
_STOPPED_STATES = frozenset("Tt")


class SystemState:
    """What an operator's command found (system_state): `kind`, one of NOT_RUNNING,
    STARTING, RUNNING, SUSPENDED; `pid`, its `up`'s when known; `stale`, for
    NOT_RUNNING: what a `wsuper up` that ended without removing it left (its lock
    file, its admin socket: killed with SIGKILL, or out of memory)."""
    __slots__ = ("kind", "pid", "stale")

    def __init__(self, kind: str, pid: int | None = None, stale: tuple = ()):
        self.kind, self.pid, self.stale = kind, pid, stale

    def __eq__(self, other):
        return isinstance(other, SystemState) and (self.kind, self.pid, self.stale) == \
            (other.kind, other.pid, other.stale)

    def __repr__(self):
        return f"SystemState({self.kind!r}, {self.pid!r}, {self.stale!r})"


def decide_state(held: bool, pid: int | None, process: str | None, published: bool,
                 accepting: bool, stale: tuple = ()) -> SystemState:
    """The state of a system (pure), from what was seen of it: `held`, whether a
    process holds its lock; `pid`, that process's (this user's, as /proc/locks names
    it), None if not known; `process`, its state letter in /proc/PID/stat; `published`,
    whether it has written its grants beside the lock (Lock.publish: it does so once
    the system is read, checked and compiled, just before it binds its admin
    socket); `accepting`, whether its admin socket takes a connection; `stale`, the
    files left at the lock's and the admin socket's paths.

    Every operator's command decides from here: `status` waited 30 s of a system
    still starting and then said its `up` might be "stuck starting", `revoke`,
    `probe`, `trace` and `call` the same, and every one of them waited 30 s of a
    system whose `up` was stopped (SIGSTOP, Ctrl-Z), `stop` leaving its request to
    be carried out whenever it was continued."""
    if not held:
        return SystemState(NOT_RUNNING, None, stale)
    if pid is not None and process in _STOPPED_STATES:
        return SystemState(SUSPENDED, pid)
    if accepting or published or pid is None:
        # answering; or past its start, its admin socket about to be bound (again:
        # removed while it ran, it is bound again within runtime.SOCKET_CHECK); or
        # held by a process not seen from here (another pid namespace): asked
        return SystemState(RUNNING, pid)
    return SystemState(STARTING, pid)


#: how many times, and how far apart (s), a process seen stopped is looked at again
#: before it is said to be (settled_state)
STOP_LOOKS, STOP_LOOK_GAP = 10, 0.03


def stopped(pid: int | None) -> bool:
    """Whether process `pid` is stopped: by a signal (SIGSTOP, SIGTSTP: Ctrl-Z) or a
    tracer, and stays so (settled_state); False if it is not, or cannot be told."""
    return pid is not None and pid > 0 and settled_state(pid) in _STOPPED_STATES


def settled_state(pid: int) -> str | None:
    """process_state(pid), but a process seen stopped (T, t) is looked at again,
    STOP_LOOKS times STOP_LOOK_GAP apart, and the first state it is seen in that
    is not stopped is the one returned.  strace (or py-spy, perf trace) stops its
    tracee at every system call, a moment each (t): looked at once, a running
    `wsuper up` under strace was said to be stopped by 6 `status` of 15 and a
    `stop` of it refused, "nothing was sent to it" (an outside review).  A
    process stopped by a signal or a debugger stays stopped; only its saying so
    waits, ~0.3 s."""
    state = process_state(pid)
    for _ in range(STOP_LOOKS - 1):
        if state not in _STOPPED_STATES:
            break
        time.sleep(STOP_LOOK_GAP)
        state = process_state(pid)
    return state


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, D, T, t, Z ...), or None if it cannot
    be read (gone, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    # "PID (COMM) S ...": COMM may hold spaces and parentheses; the state follows the
    # last ')'
    rest = raw[raw.rfind(b")") + 1:].split()
    return rest[0].decode("ascii", "replace") if rest else None


def _accepting(path: str) -> bool:
    """Whether a process listens on the unix socket at `path` (a connection is
    taken into its backlog; nothing is sent, and the connection is closed)."""
    with pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except (BlockingIOError, InterruptedError):
            return True                  # a full backlog: someone listens
        except OSError:
            return False
    return True


def _published_by(system_path: str, pid: int) -> bool:
    """Whether the grants file beside the lock is the one process `pid` published."""
    obj = _published(system_path)
    return obj is not None and str(obj.get("pid")) == str(pid)


def _published(system_path: str) -> dict | None:
    """The JSON object of the grants file beside the lock (Lock.publish), or None:
    none there, not a regular file (not followed if a link), past GRANTS_LIMIT, or
    not a JSON object.  Who published it is the caller's to check."""
    try:
        fd = os.open(grants_path(system_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                     | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, GRANTS_LIMIT + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        obj = json.loads(data) if len(data) <= GRANTS_LIMIT else None
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def system_state(system_path: str) -> SystemState:
    """The state of the system `system_path` now (decide_state, from what is seen
    here).  Reads its lock, /proc/locks and /proc/PID/stat of its holder, and
    connects to its admin socket (sending nothing) only when its holder is neither
    stopped nor past its start."""
    admin = admin_socket_path(system_path)
    held, pid = lock_holder(system_path)
    if held is None:
        return decide_state(False, None, None, False, False,
                            ("admin socket",) if _is_socket(admin) else ())
    if not held:
        return decide_state(False, None, None, False, False, ("lock file",) + (
            ("admin socket",) if _is_socket(admin) else ()))
    process = settled_state(pid) if pid is not None else None
    if pid is not None and process in _STOPPED_STATES:
        return decide_state(True, pid, process, False, False)
    published = pid is not None and _published_by(system_path, pid)
    # its admin socket is connected to only when that decides (a system past its
    # start is running whatever its socket does): each connection is one the system
    # reads a request from, and answers
    return decide_state(True, pid, process, published, not published and _accepting(admin))


def lock_holder(system_path: str) -> tuple[bool | None, int | None]:
    """(held, pid) of the lock of `system_path`: held None when there is no lock file
    (or no private runtime directory), False when nobody holds it; pid that of the
    holder, when the lock file names it, /proc/locks says it holds it and it is this
    user's process, else None."""
    fd = _open_lock(system_path)
    if fd is None:
        return None, None
    try:
        held = _held_exclusively(fd)
        pid = None
        if held:
            text = _holder_pid(fd)
            if text.isdigit() and int(text) in lock_pids(fd):
                pid = int(text)
                try:
                    if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                        pid = None
                except OSError:
                    pid = None
    except OSError:
        held, pid = False, None
    finally:
        os.close(fd)
    return held, pid


def another_holds(asked, holder: int | None) -> bool:
    """Whether the `wsuper up` that answered a stop (`asked`: the pid it said) has let
    go of its system's lock, now held by `holder` (lock_holder's pid) (pure): only
    when both are known and differ; when the holder cannot be told (it has not
    written its pid yet, or /proc/locks cannot say), it may still be the one asked."""
    return isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 \
        and holder is not None and holder != asked


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


class SystemStarting(EndpointError):
    """The system is still starting: nothing can be asked of it yet (`pid`: its up's)."""

    def __init__(self, text: str, pid: int | None):
        super().__init__(text)
        self.pid = pid


class SystemSuspended(EndpointError):
    """The system's `up` is stopped (SIGSTOP, Ctrl-Z): it answers nothing until it is
    continued (`pid`: its up's)."""

    def __init__(self, text: str, pid: int | None):
        super().__init__(text)
        self.pid = pid


def stale_said(stale: tuple) -> str:
    """What a system not running left behind (SystemState.stale), said after "no
    running system": "; ..." or ""."""
    if not stale:
        return ""
    many = len(stale) > 1
    them = "them" if many else "it"
    return (f"; the {' and '.join(stale)} there {'are' if many else 'is'} left by a wsuper "
            f"up that ended without removing {them} (killed?): the next up of the system "
            f"takes {them} over")


def starting_said(system_path: str, pid: int | None) -> str:
    """How a system still starting is said (every command says it so)."""
    return (f"{quoted(system_path)} is starting: its wsuper up (pid {pid}) reads, checks "
            f"and compiles it, and answers once that is done (`wsuper status` "
            f"says when)")


def suspended_said(system_path: str, pid: int | None, sent: bool = False) -> str:
    """How a system whose `up` is stopped is said; `sent`: the request was sent
    before it was seen stopped (it may be carried out once it goes on)."""
    return (f"{quoted(system_path)} does not answer: its wsuper up (pid {pid}) is "
            f"stopped (SIGSTOP, Ctrl-Z, or a debugger) until it is continued "
            f"(kill -CONT {pid}); " + ("the request was sent, and may be carried out "
                                      "then" if sent else "nothing was sent to it"))


def lock_dir(folder: str, what: str) -> int:
    """A descriptor of the directory `folder` (own_dir's), locked (lock_exclusive):
    the system's own, while it runs.  Two systems given one log directory wrote
    each other's supervisor.log (and a compartment's of the same name), and each
    rotated and deleted what the other was writing."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise EndpointError(f"cannot open {what}{quoted(folder)}: {e.strerror}") from None
    try:
        lock_exclusive(fd, f"{what}{quoted(folder)}")
    except LockHeld:
        os.close(fd)
        raise EndpointError(f"{what}{quoted(folder)} is in use by another running system: give "
                            f"each system its own") from None
    except EndpointError:
        os.close(fd)
        raise
    return fd


#: Times Lock tries again for its lock file while only `is_running` probes hold it
#: (a shared lock, for a moment), and the pause between two tries (seconds)
LOCK_TRIES = 200
LOCK_PAUSE = 0.005


def _pause():
    time.sleep(LOCK_PAUSE)


def _held_exclusively(fd: int) -> bool:
    """Whether a process holds `fd`'s file with an exclusive lock (a running
    system), not only shared ones (is_running's probes, for a moment)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in _HELD
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _names(path: str, fd: int) -> bool:
    """Whether `path` still names `fd`'s file."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


#: Looks at a held lock file for its holder's pid, which it writes just after
#: taking the lock (LOCK_PAUSE apart)
PID_TRIES = 40


def _holder_pid(fd: int) -> str:
    """The pid in the lock file `fd`, held by another process; "" if it has written
    none.  Its holder writes it just after it has the lock: a second `wsuper up` of
    the same system started beside the first (the two at once) read the file in
    between and said "already running (pid ?)"."""
    for i in range(PID_TRIES):
        text = os.pread(fd, 32, 0).decode("ascii", "replace")
        if text.endswith("\n") or not _held_exclusively(fd):
            return text.strip()
        if i + 1 < PID_TRIES:
            _pause()
    return text.strip()


class Lock:
    """The system's lock: held while it runs, refused to a second `wsuper up`.
    Two locks: the lock file in the runtime directory (its pid, `is_running`), and
    the system file itself, which is the same file whatever XDG_RUNTIME_DIR says:
    with the lock file alone, a second `wsuper up` under another XDG_RUNTIME_DIR
    ran the same system beside the first, both writing (and rotating) one audit
    file and one log directory, both opening the same grants."""

    def __init__(self, system_path: str):
        self.path = lock_path(system_path)
        self.system_path = system_path
        self.fd: int | None = None
        self.file_fd: int | None = None
        self.revocable: list | None = None       # published (publish), for renew
        self.compartments: list = []

    def publish(self, revocable, compartments=()) -> None:
        """Write this system's revocable grants and compartments beside its lock
        (running_facts), so that `wsuper revoke` of a grant it does not have, or
        `probe` and `trace` of a compartment it does not have, are refused without
        asking it.  Best effort: not written (a full runtime directory), they ask
        the system."""
        self.revocable = sorted(revocable)
        self.compartments = list(compartments)
        path = grants_path(self.system_path)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            try:
                data = json.dumps({"pid": os.getpid(), "revocable": self.revocable,
                                   "compartments": self.compartments}).encode()
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _unpublish(self):
        """The grants file, if it is still ours (a later system's is left alone)."""
        path = grants_path(self.system_path)
        try:
            with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
                ours = json.loads(f.read(GRANTS_LIMIT)).get("pid") == os.getpid()
            if ours:
                os.unlink(path)
        except (OSError, ValueError, AttributeError):
            pass

    def acquire(self):
        private_dir(runtime_dir())
        self._acquire_file()             # first: a second up beside it names its pid
        try:
            file_fd = os.open(self.system_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
                              | os.O_NONBLOCK)
        except OSError as e:
            self.release()
            raise EndpointError(f"cannot open {self.system_path} to lock it: "
                                f"{e.strerror}") from None
        try:
            lock_exclusive(file_fd, f"the system file {self.system_path}")
        except EndpointError as e:
            os.close(file_fd)
            self.release()
            if not isinstance(e, LockHeld):
                raise
            raise EndpointError(f"this system is already running: its file "
                                f"{self.system_path} is locked by another wsuper up (under "
                                f"another XDG_RUNTIME_DIR, maybe); stop it first") from None
        self.file_fd = file_fd

    def _acquire_file(self):
        """The lock file, locked, and still the one at its path.  Two races are
        lost otherwise: a lock taken on the file the system before us unlinked as it
        stopped (opened before its unlink, locked after its close) ran this system
        with no lock file at its path, and `wsuper status`, `stop` and `revoke`
        said it was not running (`stop` answered "stopped" at once); and a
        `wsuper status` probing the lock (is_running: a shared lock for a moment)
        made `up` say "already running (pid ?)" of a system that was not."""
        for _ in range(LOCK_TRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600)
            except OSError as e:            # a runtime directory read-only, or full
                raise EndpointError(f"cannot make the system's lock {self.path}: "
                                    f"{e.strerror or e}") from None
            try:
                lock_exclusive(fd, f"the system's lock {self.path}")
            except LockHeld:
                held = _held_exclusively(fd)
                if held:
                    try:
                        pid = _holder_pid(fd)
                    finally:
                        os.close(fd)
                    raise EndpointError(f"this system is already running (pid {pid or '?'}); "
                                        f"stop it first") from None
                os.close(fd)             # only probed (is_running): once more
                _pause()
                continue
            except EndpointError:        # a file system that cannot lock: said so
                if _names(self.path, fd) and not os.fstat(fd).st_size:
                    try:                 # made just now (empty): not left behind
                        os.unlink(self.path)
                    except OSError:
                        pass
                os.close(fd)
                raise
            if _names(self.path, fd):
                break
            os.close(fd)                 # unlinked (or replaced) by its holder: once more
        else:
            raise EndpointError(f"cannot take the system's lock {self.path}: other "
                                f"processes hold it or replace it without end") from None
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            # a full runtime directory: "[Errno 28] No space left on device", exit 1,
            # named nowhere, and the lock file left behind
            self.release()
            raise EndpointError(f"cannot write the system's lock {self.path}: "
                                f"{e.strerror or e}") from None
        try:
            # an earlier run's grants (one SIGKILLed), believed if its pid were ours
            # again (a container's pids): ours are published once the system is read
            os.unlink(grants_path(self.system_path))
        except OSError:
            pass

    def renew(self) -> bool:
        """The lock file made again at its path, locked and with our pid, if it is
        no longer there (the runtime directory removed while the system ran: a
        cleaner of old files in /tmp).  Without it `wsuper status`, `stop` and
        `call` said no system ran.  True if it was made again; EndpointError if it
        cannot be (another process holds the one there now)."""
        if self.fd is None or _names(self.path, self.fd):
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as e:
            raise EndpointError(f"cannot make the system's lock {self.path} again: "
                                f"{e.strerror or e}") from None
        try:
            try:
                lock_exclusive(fd, f"the system's lock {self.path}")
            except LockHeld:
                raise EndpointError(f"cannot make the system's lock {self.path} again: "
                                    f"another process holds the file there") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise EndpointError(f"cannot write the system's lock {self.path}: "
                                f"{e.strerror or e}") from None
        except BaseException:
            os.close(fd)
            raise
        old, self.fd = self.fd, fd
        os.close(old)
        if self.revocable is not None:      # gone with the runtime directory, maybe
            self.publish(self.revocable, self.compartments)
        return True

    def release(self):
        if self.fd is not None and self.revocable is not None:
            self._unpublish()
        if self.fd is not None:
            # only the file it holds: its path may name another's by now (the
            # runtime directory removed while the system ran, and another `up` of
            # the system file took the lock file made again there before renew):
            # unlinked, that one's `status` and `stop` said it was not running,
            # and a third `up` ran beside it
            if _names(self.path, self.fd):
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = None
        if self.file_fd is not None:
            os.close(self.file_fd)
            self.file_fd = None


def admin_socket(system_path: str) -> str:
    """The admin socket of the system at `system_path`, to connect to: only in a
    runtime directory of ours, 0700, not a link (private_dir, as `up` makes it).
    In one that is not (someone else made /tmp/wsuper-UID first), `up` refuses
    to run, and whoever made it could have its own lock and socket there answer
    `wsuper status`, `stop`, `revoke` ... as the system (a revoke said done, a
    status of their choosing).  Raises EndpointError."""
    path = admin_socket_path(system_path)
    if not os.path.lexists(runtime_dir()):
        raise EndpointError(f"no running system at {path} (No such file or directory)")
    try:
        private_dir(runtime_dir(), create=False)
    except EndpointError as e:
        raise EndpointError(f"no system of yours can run at {path}, nor be asked there: "
                            f"{e}") from None
    return path


def external_socket(socket_path: str) -> str:
    """The external socket at `socket_path`, to connect to as a system's (`wsuper
    call`): only in a directory `up` would bind it in (the runtime directory:
    ours, 0700, real, as admin_socket; any other: a real directory of ours that
    nobody else may write to, as safe_socket_dir).  `wsuper call` connected to
    whatever socket it found there: whoever made /tmp/wsuper-UID first (up
    refuses to run there), or may write to the directory the system file's
    socket names, could bind a socket of their own, read the call's parameters
    and answer it with results of their choosing, said as the compartment's.
    Raises EndpointError."""
    folder = os.path.dirname(os.path.abspath(socket_path))
    if folder == runtime_dir():
        if not os.path.lexists(folder):
            raise EndpointError(f"no running system at {socket_path} (No such file or "
                                f"directory)")
        try:
            private_dir(folder, create=False)
        except EndpointError as e:
            problem = str(e)
        else:
            return socket_path
    else:
        problem = foreign_dir(folder, "socket directory ")
        if problem is None:
            return socket_path
    raise EndpointError(f"no system of yours can run at {socket_path}, nor be asked there: "
                        f"{problem}")


def is_running(system_path: str) -> bool:
    """Whether a system holds the lock of `system_path` now (a lock in a runtime
    directory that is not ours and private is nobody's: admin_socket)."""
    fd = _open_lock(system_path)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def file_locked(system_path: str) -> bool:
    """Whether a `wsuper up` holds the system file `system_path` locked (Lock: the
    same file whatever XDG_RUNTIME_DIR says), as far as can be told."""
    try:
        fd = os.open(system_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _held_exclusively(fd)
    finally:
        os.close(fd)


def answers(path: str) -> bool:
    """Whether a system of this user's listens on the external socket at `path`: in
    a directory `up` would bind it in (external_socket, checked before the
    connect), held by this user (check_peer).  Anything else is False, and left to
    whoever connects next to refuse with its own reason (`call` asked the socket
    first, and said "another system" of a directory no system of the user's may
    use, or of a socket another user holds)."""
    try:
        external_socket(path)
    except EndpointError:
        return False
    with pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
            check_peer(s, path)
        except (OSError, EndpointError):
            return False
    return True


def _open_lock(system_path: str) -> int | None:
    """The lock file of `system_path` opened to look at (never followed through a
    link), or None: no lock there, or the runtime directory is not ours and private
    (a lock there is nobody's: admin_socket)."""
    try:
        private_dir(runtime_dir(), create=False)
    except EndpointError:
        return None
    try:
        return os.open(lock_path(system_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None


def socket_file_problem(path: str) -> str | None:
    """Why `path` cannot be bound as a socket because something else is there (a
    socket there, stale or live, is claim_socket_path's to judge), or None.  `check`
    asks it too: it passed `socket = "calc.capnp"`, which `up` then refused, naming
    no key."""
    try:
        st = os.lstat(path)
    except OSError:
        return None                  # nothing there (or the bind says why)
    if stat.S_ISSOCK(st.st_mode):
        return None
    kind = "a regular file" if stat.S_ISREG(st.st_mode) else "a symbolic link" \
        if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) \
        else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
    return (f"the socket {quoted(path)} exists and is {kind}, not a socket; remove it or "
            f"choose another path")


def claim_socket_path(path: str):
    """Make `path` free for bind(): refuse one a live system answers on; remove a stale one."""
    problem = socket_file_problem(path)
    if problem:
        raise EndpointError(problem)
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        # not blocking: a Unix socket's connect is answered at once (accepted into
        # the listener's queue, refused, or EAGAIN: the queue is full).  It waited up
        # to a second for room in a full queue, and a running system binding its
        # socket again (Supervisor._kept_bound) waited so on trio's thread, every
        # SOCKET_CHECK, while a full-queued listener held its path
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)         # nobody listens there: a stale socket
        except FileNotFoundError:
            pass                    # gone meanwhile: free all the same
        return
    except FileNotFoundError:
        # gone since (the system before stopping, as it removes its sockets): free.
        # Taken for "may be in use", a second system started as the first stopped
        # was refused; and one removed between the probe and its unlink ended up in
        # "[Errno 2] No such file or directory", naming no key
        return
    except OSError as e:
        # someone listens, or may: a full backlog (EAGAIN: a system stopped with
        # Ctrl-Z, or slower to accept than its clients connect), no answer within the
        # second, no permission.  Removed, a running system lost its socket to this
        # one, and its clients were served by this system instead
        why = "its queue of connections is full" if isinstance(e, BlockingIOError) \
            else e.strerror or str(e)
        raise EndpointError(f"{path} may be in use by a running system or another program "
                            f"(connecting to it: {why}); not removed") from None
    finally:
        probe.close()
    # something accepts there: another system, or a program of another kind (which
    # was said to be "a running system", and sent its user looking for one)
    raise EndpointError(f"{path} is in use: something accepts connections on it (a "
                        f"running system, or another program); not removed")


def owned_socket(path: str, inode: int):
    """Remove the socket at `path` if it is still the one we bound (`inode`)."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------------ the admin protocol


def admin_evictee(conns):
    """Which admin connection makes room for a new one (pure): of `conns`, (key,
    since, reading), the one that began longest ago and is still reading its
    request; its key, or None when every one has sent it (and is answered)."""
    best = None
    for key, since, reading in conns:
        if reading and (best is None or since < best[1]):
            best = (key, since)
    return None if best is None else best[0]


def never_busy(req: dict | None) -> bool:
    """Whether a request (what take_request gave: None for a line it refused) is one
    the admin socket answers however many others it is answering: a stop."""
    return req is not None and req["op"] == "stop"


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def request_line(body: dict) -> bytes:
    """One admin request, encoded (the operator's commands), or EndpointError if
    the system would not take it (decode: longer than ADMIN_LINE_LIMIT, or more
    than 64 brackets, which it counts inside strings too).  Sent, the system
    answered "expected one JSON object on one line": `wsuper revoke S` of a
    70,000-character grant name (or a `probe` whose --functions held 65
    brackets) was told of a protocol error, not of its argument."""
    line = encode(body)
    try:
        parse_request(line[:-1])        # the system's own parser: what it would refuse
    except ValueError as e:
        raise EndpointError(f"the {str(body.get('op'))[:20]} request cannot be sent: {e} "
                            f"({len(line) - 1} bytes; a system takes at most "
                            f"{ADMIN_LINE_LIMIT}): an argument is too long") from None
    return line


def _no_duplicates(pairs) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            # json kept the last: {"op":"status","op":"stop"} was a stop to the system
            # while a reader of its first key (a log, a proxy) saw a status
            raise ValueError(f"the key {key[:100]!r} is given twice")
        obj[key] = value
    return obj


def _no_constant(name: str):
    raise ValueError(f"{name} is no JSON number")


def decode(line: bytes, answer: bool = False) -> dict:
    """One JSON object from an admin line: a request (parse_request validates its
    shape), or with `answer` one answer line (a status holds an object per
    compartment); ValueError naming why, whatever the line: not UTF-8, not JSON (or
    nested past the interpreter's recursion limit), NaN or Infinity, a key given
    twice, not an object."""
    if answer:
        if len(line) > ADMIN_ANSWER_LIMIT:
            raise ValueError("not an answer: too long")
    elif len(line) > ADMIN_LINE_LIMIT:
        raise ValueError("not a request: too long")
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    except ValueError as e:     # a key twice, NaN, an integer of more than 4300 digits
        raise ValueError(f"not JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


#: the shape of every admin request: its op, and each key it may have with the type
#: of its value and whether it must be there ("op" and "system", text, always).  A
#: request is taken only as parse_request gives it: its op was once found by the
#: substring "trace" in the raw line, and {"op":"\u0074race"} (a trace) was
#: answered "unknown request" (r268)
REQUESTS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "status": {},
    "stop": {},
    "socket": {},
    "revoke": {"grant": ((str,), True)},
    "probe": {"compartment": ((str,), True), "action": ((str,), True),
              "name": ((str,), False), "point": ((str,), False),
              "functions": ((str,), False), "events": ((bool,), False)},
    "trace": {"seconds": ((int, float), True), "compartments": ((str,), False),
              "functions": ((str,), False)},
}

_TYPE_NAMES = {str: "text", bool: "true or false", int: "a number", float: "a number"}


def _kind_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def request_problem(req: dict) -> str | None:
    """Why the decoded request `req` is not one of REQUESTS (pure), naming the key;
    or None."""
    op = req.get("op")
    if not isinstance(op, str):
        return f"op: {'missing' if 'op' not in req else 'text, not ' + _kind_of(op)}" \
               f" (one of {', '.join(REQUESTS)})"
    if op not in REQUESTS:
        return f"unknown request {op[:100]!r} (one of {', '.join(REQUESTS)})"
    shape = {"op": ((str,), True), "system": ((str,), True), **REQUESTS[op]}
    for key in req:
        if key not in shape:
            return (f"{op}: unknown key {key[:100]!r} (it takes "
                    f"{', '.join(shape)})")
    for key, (types, needed) in shape.items():
        if key not in req:
            if needed:
                return f"{op}: {key} is missing"
            continue
        value = req[key]
        # true is no number (bool is int's subclass), and "5" no number either
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return (f"{op}: {key}: {_TYPE_NAMES[types[0]]}, not {_kind_of(value)}")
    return None


class RequestShapeError(ValueError):
    """A request line that is a JSON object, but of no shape REQUESTS gives."""


def parse_request(line: bytes) -> dict:
    """The one parser of an admin request line: decoded (decode) and of one of the
    shapes REQUESTS gives, or ValueError naming why (the key, its type).  Every
    decision on a request (a trace session or an answer, a stop served past the
    limit) is taken on what this returns, never on the raw line."""
    req = decode(line)
    problem = request_problem(req)
    if problem:
        raise RequestShapeError(problem)
    return req


def take_request(line: bytes) -> tuple[dict | None, str | None]:
    """(the request parse_request gives, None), or (None, the answer's error: why
    the line is no request, naming the key)."""
    try:
        return parse_request(line), None
    except RequestShapeError as e:          # an object: the key named
        return None, str(e)
    except ValueError as e:
        return None, f"expected one JSON object on one line ({e})"


def peer_problem(peer_uid: int, path: str, uid: int) -> str | None:
    """Why the process listening on the socket at `path` (its uid `peer_uid`, as
    the kernel says it) is not a system of the user `uid`, or None.  Only the
    user's own `up` can bind a socket that is theirs to ask: the checks of the
    socket's directory (admin_socket, external_socket) are made on its path
    before the connect, and a directory in a parent that others may write to
    (or any path they can change meanwhile) can be another by then."""
    if peer_uid == uid:
        return None
    return (f"the socket at {path} is held by uid {peer_uid}, not by you (uid {uid}): "
            f"no system of yours answers there (was its directory moved or replaced?)")


#: the kernel's struct ucred (SO_PEERCRED): pid_t pid (signed), uid_t uid and gid_t
#: gid (unsigned 32 bits).  Read as three signed ints, a uid of 2**31 or more (id
#: mapped directory users, user namespaces, nfsnobody's 4294967294) came out
#: negative, never the user's own: their own system refused them every command
_UCRED = struct.Struct("=iII")


def peer_creds(raw: bytes) -> tuple[int, int, int]:
    """(pid, uid, gid) of SO_PEERCRED's answer `raw` (pure); ValueError if it is
    not one."""
    if len(raw) != _UCRED.size:
        raise ValueError(f"SO_PEERCRED gave {len(raw)} bytes, not {_UCRED.size}")
    return _UCRED.unpack(raw)


def check_peer(s, path: str) -> int:
    """Refuse (EndpointError) the connected unix socket `s` unless its listener is
    this user's (peer_problem), before anything is sent on it; the listener's pid
    (0 if it is not seen from here: another pid namespace)."""
    try:
        pid, peer_uid, _gid = peer_creds(
            s.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_PEERCRED, _UCRED.size))
    except (OSError, ValueError) as e:
        raise EndpointError(f"cannot tell who holds the socket at {path}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    problem = peer_problem(peer_uid, path, os.getuid())
    if problem:
        raise EndpointError(problem)
    return pid


def connect_admin(s, path: str, timeout: float, system_path: str | None = None,
                  wait_start: bool = False, notice=None) -> int:
    """Connect to the admin socket, waiting up to `timeout` for room in its backlog;
    the pid of the process that listens there.
    A unix socket whose backlog is full refuses a connect with a timeout at once
    (EAGAIN): a local process that kept it full (connecting and sending nothing)
    made `wsuper stop` and `status` say there was no running system.  Only a
    socket this user's process listens on is kept (check_peer), and not one whose
    process is stopped (SIGSTOP, Ctrl-Z: SystemSuspended, at once): the connection
    went into its backlog, the request was sent, and the command waited 30 s for
    an answer that could not come (`wsuper stop`'s then carried out whenever the
    system was continued, long after "did not answer", exit 1).

    With `system_path`, a socket not there (or refusing: a stale one a SIGKILLed
    `up` left, not yet replaced) is judged by system_state: a system not running is
    said so at once; one still starting (its `up` reads, checks and compiles it
    before it binds its admin socket: tens of seconds for a large system) at once
    too (SystemStarting), unless `wait_start` (`call`, within its --timeout): it
    waited 30 s and said its `up` might be "stuck starting"; one past its start
    (its socket about to be bound, or bound again) is waited for, up to `timeout`;
    `notice(text)` is called once, WAIT_NOTICE s into any of these waits."""
    began = time.monotonic()
    deadline = began + timeout
    pause = 0.005
    who = system_path or path

    def waiting(what: str):
        nonlocal notice
        if notice is not None and time.monotonic() - began >= WAIT_NOTICE:
            notice(f"waiting for {quoted(who)} {what}; at most {timeout:g} s in all")
            notice = None
    while True:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            s.connect(path)
            pid = check_peer(s, path)
            if system_path is not None and pid > 0:
                # the system's `up` listens there itself: another process of the
                # user's on its path (one that never answers) held the command for
                # all of its wait, then "did not answer"
                _held, holder = lock_holder(system_path)
                if holder is not None and holder != pid:
                    raise EndpointError(f"the admin socket {path} is listened on by process "
                                        f"{pid}, not by the system's wsuper up (pid "
                                        f"{holder}, which holds its lock): nothing was sent "
                                        f"to it")
            if stopped(pid):
                raise SystemSuspended(suspended_said(who, pid), pid)
            return pid
        except (BlockingIOError, InterruptedError) as e:
            if system_path is not None:
                state = system_state(system_path)       # a stopped up takes none either
                if state.kind == SUSPENDED:
                    raise SystemSuspended(suspended_said(who, state.pid), state.pid) \
                        from None
            if time.monotonic() >= deadline:
                raise EndpointError(f"the system at {path} is busy: its admin socket took "
                                    f"no connection within {timeout:g} s "
                                    f"({e.strerror or e})") from None
            waiting("to take a connection (its admin socket's backlog is full)")
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if system_path is None:
                raise EndpointError(f"no running system at {path} ({e.strerror or e})") \
                    from None
            state = system_state(system_path)
            if state.kind == NOT_RUNNING:
                raise EndpointError(f"no running system at {path} ({e.strerror or e})"
                                    f"{stale_said(state.stale)}") from None
            if state.kind == SUSPENDED:
                raise SystemSuspended(suspended_said(who, state.pid), state.pid) from None
            if state.kind == STARTING and not wait_start:
                raise SystemStarting(starting_said(who, state.pid), state.pid) from None
            if time.monotonic() >= deadline:
                if state.kind == STARTING:
                    raise SystemStarting(f"{starting_said(who, state.pid)}; still "
                                         f"starting after {timeout:g} s", state.pid) from None
                raise EndpointError(f"the system {system_path} holds its lock and has "
                                    f"started, but its admin socket {path} took no "
                                    f"connection within {timeout:g} s ({e.strerror or e})") \
                    from None
            waiting(f"to start (its wsuper up, pid {state.pid}, reads, checks and compiles "
                    f"it)" if state.kind == STARTING else "to bind its admin socket")
        except OSError as e:
            raise EndpointError(f"no running system at {path} ({e.strerror or e})") \
                from None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


#: Seconds between two looks, while an answer is awaited, that the system's `up` has
#: not been stopped (SIGSTOP, Ctrl-Z) meanwhile
SUSPENDED_LOOK = 0.5
#: Seconds an operator's command waits for an answer before it says it waits
WAIT_NOTICE = 3.0


def once(notice):
    """`notice` (a callable taking a text, or None), that says only its first text."""
    if notice is None:
        return None
    told = []

    def first(text):
        if not told:
            told.append(text)
            notice(text)
    return first


def recv_answer(s, size: int, deadline: float, pid: int, system_path: str, notice=None,
                since: float | None = None) -> bytes:
    """One recv of at most `size` bytes from the admin connection `s`, before
    `deadline` (socket.timeout past it): looking every SUSPENDED_LOOK s that the
    process `pid` listening there (its `up`) is not stopped (SystemSuspended, the
    request sent), and calling `notice(text)` once WAIT_NOTICE s after `since`:
    a system that did not answer (its `up` stopped after the connection, or too
    busy) held the command 30 s without a word."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise pysocket.timeout("timed out")
        s.settimeout(min(left, SUSPENDED_LOOK))
        try:
            return s.recv(size)
        except pysocket.timeout:
            if stopped(pid):
                raise SystemSuspended(suspended_said(system_path, pid, sent=True),
                                      pid) from None
            if notice is not None and since is not None and \
                    time.monotonic() - since >= WAIT_NOTICE:
                notice(f"waiting for {quoted(system_path)} (pid {pid}) to answer: it has "
                       f"not in {WAIT_NOTICE:g} s; at most {deadline - since:g} s in all")
                notice = None


def request(system_path: str, body: dict, timeout: float = ADMIN_ANSWER_TIMEOUT,
            wait_start: bool = False, notice=None) -> dict:
    """Send one admin request to the running system `system_path`; its answer.
    Raises EndpointError when no system answers there, or it does not answer in time
    (which does not mean the request was not carried out); SystemStarting and
    SystemSuspended (EndpointErrors) when it is starting or stopped (connect_admin,
    recv_answer; `wait_start`, `notice`: theirs).  `timeout` bounds the
    whole request: the wait for room in the socket's backlog, the sending and the
    answer together.  Each had all of it, one after the other (and each read of
    the answer anew), so `wsuper call --timeout 1`, which asks the system where its
    external socket is, waited 31 s for a system that did not answer."""
    path = admin_socket(system_path)
    body = {**body, "system": identity(system_path)}
    line = request_line(body)
    began = time.monotonic()
    notice = once(notice)                # whichever wait it is said in
    deadline = began + timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())
    try:
        with pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM) as s:
            pid = connect_admin(s, path, timeout, system_path, wait_start, notice)
            s.settimeout(left())
            s.sendall(line)
            data = b""
            chunks, size = [], 0
            while size <= ADMIN_ANSWER_LIMIT:
                chunk = recv_answer(s, 1 << 16, deadline, pid, system_path, notice, began)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            data = b"".join(chunks)
    except OSError as e:
        # connected: a system is there, and may have done what was asked
        raise EndpointError(f"the system at {path} did not answer ({e.strerror or e}); "
                            f"the request may still have been carried out") from None
    try:
        answer = decode(data, answer=True)
    except ValueError:
        raise EndpointError(f"the system at {path} gave no answer") from None
    if answer.get("system") != body["system"]:
        raise EndpointError(f"the socket {path} belongs to another system "
                            f"({answer.get('system')!r})")
    return answer
