"""The locks a running system holds (its lock file and system file, its log
directory, its audit file): taken whole, said rightly, never lost at a race with
the system before it or with a command that only looks."""
import errno
import fcntl
import os

import pytest

from supervisor import endpoint, output, runtime


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    system = tmp_path / "system.toml"
    system.write_text("")
    return str(system)


def test_a_lock_taken_as_the_system_before_lets_go_is_the_one_at_its_path(rundir,
                                                                            monkeypatch):
    """A review of start and stop: `up` opened the lock file, the system before it
    (stopping) unlinked it and closed it, and `up` then locked that unlinked file:
    it ran with no lock file at its path, so `wsuper status`, `stop` and `revoke`
    said it was not running (`stop` answered "stopped" at once).  The lock taken
    is the file at the path (its holder let go: once more)."""
    first = endpoint.Lock(rundir)
    first.acquire()
    real = fcntl.flock
    raced = []

    def flock(fd, op):
        if not raced and op & fcntl.LOCK_EX and first.fd is not None:
            raced.append(fd)
            first.release()                  # unlinked and closed between open and lock
        return real(fd, op)
    monkeypatch.setattr(endpoint.fcntl, "flock", flock)
    second = endpoint.Lock(rundir)
    second.acquire()
    try:
        assert raced
        assert endpoint.is_running(rundir)
        st = os.stat(endpoint.lock_path(rundir))
        own = os.fstat(second.fd)
        assert (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
        assert open(endpoint.lock_path(rundir)).read() == f"{os.getpid()}\n"
    finally:
        second.release()
    assert not endpoint.is_running(rundir)


def test_a_command_probing_the_lock_never_makes_up_say_it_is_running(rundir, monkeypatch):
    """`wsuper status` (stop, revoke) asks whether the system runs by taking the
    lock file's shared lock for a moment (is_running): an `up` at that moment was
    refused "this system is already running (pid ?)" of a system that was not.
    Only an exclusive holder (a running system) refuses it."""
    path = endpoint.lock_path(rundir)
    endpoint.private_dir(endpoint.runtime_dir())
    probe = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600)]
    fcntl.flock(probe[0], fcntl.LOCK_SH)      # a probe under way
    tries = []

    def pause():
        tries.append(1)
        if probe:
            os.close(probe.pop())             # the probe is done
    monkeypatch.setattr(endpoint, "_pause", pause, raising=False)
    lock = endpoint.Lock(rundir)
    try:
        lock.acquire()
        assert tries and endpoint.is_running(rundir)
    finally:
        lock.release()
    # a running system (exclusive) is refused at once, naming its pid
    first = endpoint.Lock(rundir)
    first.acquire()
    try:
        with pytest.raises(endpoint.EndpointError,
                           match=rf"already running \(pid {os.getpid()}\)"):
            endpoint.Lock(rundir).acquire()
        assert endpoint.is_running(rundir)
    finally:
        first.release()


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL],
                         ids=["ENOLCK", "EOPNOTSUPP", "EINVAL"])
@pytest.mark.parametrize("what", ["lock file", "system file", "log directory", "audit file"])
def test_a_file_system_that_cannot_lock_is_said_so_not_another_running_system(
        rundir, tmp_path, monkeypatch, err, what):
    """A review of start-up: flock failing for another reason than a holder (an NFS
    mount without its lock service: ENOLCK; a file system that does not lock)
    was said "this system is already running", "is in use by another running
    system", "is being written by another running system": the operator looked
    for a system that was not there.  Refused all the same (never unlocked), but
    saying what is wrong."""
    real = fcntl.flock
    audit = tmp_path / "audit.jsonl"
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    target = {"lock file": endpoint.lock_path(rundir), "system file": rundir,
              "log directory": str(logs), "audit file": str(audit)}[what]

    def flock(fd, op):
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        own = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            raise OSError(err, os.strerror(err))
        return real(fd, op)
    monkeypatch.setattr(endpoint.fcntl, "flock", flock)
    with pytest.raises(endpoint.EndpointError) as e:
        if what in ("lock file", "system file"):
            lock = endpoint.Lock(rundir)
            lock.acquire()
            lock.release()
        elif what == "log directory":
            os.close(endpoint.lock_dir(str(logs), "log directory "))
        else:
            runtime._Audit(str(audit), "run").open()
    text = str(e.value)
    assert "running" not in text and "in use" not in text, text
    assert "cannot lock " in text and target in text and os.strerror(err) in text, text
    assert not os.path.exists(endpoint.lock_path(rundir))     # nothing left behind


def test_the_audit_stays_locked_while_it_is_rotated(tmp_path, monkeypatch):
    """A review of start-up: the audit file's lock (one running system's) was let go
    at each rotation, before the renames: a second system starting then, which had
    opened the file before the rename, locked it and wrote into what became AUDIT.1,
    while the first wrote the new AUDIT; rotations then took records of one or the
    other away.  At every moment of the rotation the file is locked, and a system
    that locked a file the path no longer names is refused."""
    path = tmp_path / "audit.jsonl"
    audit = runtime._Audit(str(path), "a", max_size=1 << 20, keep=2)
    audit.open()
    real = output.rotate
    seen = []

    def rotate(folder, file, keep, **how):
        other = os.open(path, os.O_WRONLY | os.O_APPEND)    # a second system's open...
        try:
            real(folder, file, keep, **how)
            try:                                            # ... and its lock after
                endpoint.lock_exclusive(other)
                seen.append("locked")
            except endpoint.LockHeld:
                seen.append("held")
        finally:
            os.close(other)
    monkeypatch.setattr(runtime.output, "rotate", rotate)
    for _ in range(12):
        audit._write([{"event": "call", "pad": "x" * 500, "time": 0.0}] * 400)
    assert seen and set(seen) == {"held"}, seen
    # and one that locked the file a rotation renamed is refused, not writing there
    other = runtime._Audit(str(path), "b")
    real_lock = endpoint.lock_exclusive

    def late(fd, what="it"):
        audit.close()                     # the first let go (it stopped) ...
        os.replace(path, str(path) + ".1")   # ... after it renamed the file
        return real_lock(fd, what)
    monkeypatch.setattr(endpoint, "lock_exclusive", late)
    with pytest.raises(endpoint.EndpointError, match="another running system"):
        other.open()


def test_a_second_system_started_during_a_rotation_never_takes_the_audit_over(tmp_path,
                                                                              monkeypatch):
    """A review of the audit's lock: the rotation renamed AUDIT to AUDIT.1 and then
    made the new AUDIT by its name, and locked it: a second system given the same
    file (a service manager starting it again and again, each refused) that
    opened the name in between made the new file and locked it first.  It ran,
    and the first, refused its own new file ("being written by another running
    system"), stopped with its audit failed.  At every moment of every rotation
    the name is a file the running system has locked: the second is refused, the
    first writes on, and no record is lost."""
    path = tmp_path / "audit.jsonl"
    audit = runtime._Audit(str(path), "a", max_size=1 << 16, keep=3)
    audit.open()
    real = output.rotate
    refused, ran = [], []

    def rotate(folder, file, keep, **how):
        real(folder, file, keep, **how)
        second = runtime._Audit(str(path), "b")          # a second system starts
        try:
            second.open()
            ran.append(second)
        except endpoint.EndpointError as e:
            refused.append(str(e))
    monkeypatch.setattr(runtime.output, "rotate", rotate)
    written = 0
    for i in range(8):
        batch = [{"event": "call", "n": written + k, "pad": "x" * 300, "time": 0.0}
                 for k in range(100)]
        audit._write(batch)
        written += len(batch)
    try:
        assert refused and not ran, (refused, ran)
        assert all("another running system" in why for why in refused), refused
        assert audit.failed is None
    finally:
        for other in ran:
            other.close()
        audit.close()
    monkeypatch.setattr(runtime.output, "rotate", real)
    import json
    files = [path] + [tmp_path / f"audit.jsonl.{i}" for i in (1, 2, 3)]
    assert not (tmp_path / "audit.jsonl.4").exists()
    kept = [json.loads(line)["n"] for f in files if f.exists()
            for line in f.read_text().splitlines()]
    assert sorted(kept) == list(range(written - len(kept), written)), "records lost or doubled"
    assert all(os.stat(f).st_nlink == 1 for f in files if f.exists())
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # nothing left beside


def test_every_rotation_keeps_the_audit_named_and_locked(tmp_path):
    """keep = 1 too: the one rotated file is replaced, the name never missing."""
    for keep in (1, 2):
        folder = tmp_path / f"k{keep}"
        folder.mkdir()
        path = folder / "audit.jsonl"
        audit = runtime._Audit(str(path), "a", max_size=4096, keep=keep)
        audit.open()
        for _ in range(5):
            audit._write([{"event": "call", "pad": "y" * 200, "time": 0.0}] * 30)
            other = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                with pytest.raises(endpoint.LockHeld):
                    endpoint.lock_exclusive(other)
            finally:
                os.close(other)
        audit.close()
        names = sorted(os.listdir(folder))
        assert names == ["audit.jsonl"] + [f"audit.jsonl.{i}" for i in range(1, keep + 1)], names


def test_an_audit_whose_name_is_near_name_max_is_rotated_too(tmp_path):
    """The successor's own name never passes NAME_MAX (255 bytes): a rotation that
    could not make it would stop the system."""
    path = tmp_path / ("a" * 250)
    audit = runtime._Audit(str(path), "a", max_size=2048, keep=1)
    audit.open()
    for _ in range(4):
        audit._write([{"event": "call", "pad": "z" * 200, "time": 0.0}] * 10)
    audit.close()
    assert sorted(os.listdir(tmp_path)) == ["a" * 250, "a" * 250 + ".1"]


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022])
def test_every_directory_up_makes_is_closed_to_others_whatever_the_umask(tmp_path, monkeypatch,
                                                                          mask):
    """A review of the operator's files: the log directory's and the runtime
    directory's missing parents (`XDG_STATE_HOME=/srv/state/a/b`, a fresh home's
    ~/.local/state) were made by os.makedirs, whose `mode` sets the last
    directory's only: the others took the umask's, 0777 under `umask 0` (0775
    under 002), and another user could rename the system's log and runtime
    directories away inside them, and put directories of their own there.  Every
    directory wsuper makes is 0700."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run" / "x" / "y"))
    old = os.umask(mask)
    try:
        endpoint.private_dir(endpoint.runtime_dir())
        endpoint.own_dir(str(tmp_path / "state" / "p" / "q" / "wsuper" / "s-1"),
                         "log directory ", parents=True)
    finally:
        os.umask(old)
    made = [tmp_path / "run", tmp_path / "run" / "x", tmp_path / "run" / "x" / "y",
            tmp_path / "run" / "x" / "y" / "wsuper", tmp_path / "state",
            tmp_path / "state" / "p", tmp_path / "state" / "p" / "q",
            tmp_path / "state" / "p" / "q" / "wsuper",
            tmp_path / "state" / "p" / "q" / "wsuper" / "s-1"]
    assert {str(d): oct(d.stat().st_mode & 0o777) for d in made} == \
        {str(d): oct(0o700) for d in made}


@pytest.fixture
def foreign_lock():
    """lock(path): a process of another user (uid 65534) takes an exclusive flock on
    the file (or directory) at `path`, through a descriptor root opened: what anyone
    who may read a file can do."""
    import signal
    import time
    if os.geteuid() != 0:
        pytest.skip("takes a lock as another user")
    children = []

    def lock(path):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # pragma: no cover (the child)
            try:
                os.setgid(65534)
                os.setuid(65534)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(w, b"x")
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        os.close(fd)
        children.append(pid)
    yield lock
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_lock_another_user_holds_is_said_so_not_taken_for_a_running_system(
        rundir, tmp_path, foreign_lock):
    """A review of the operator's files as another user: the system file is locked
    (flock) for the run, and a flock needs only a descriptor to read: another user
    who may read the system file (0644, the usual) held it, and `wsuper up` said
    "this system is already running ... locked by another wsuper up ... stop it
    first", while `wsuper status` and `stop` found no system to stop.  So with an
    audit file or a log directory others may read.  A lock held by a process of
    another user is said to be that, naming its uid."""
    os.chmod(rundir, 0o644)
    foreign_lock(rundir)
    with pytest.raises(endpoint.EndpointError) as e:
        endpoint.Lock(rundir).acquire()
    assert "uid 65534" in str(e.value) and "already running" not in str(e.value), e.value
    assert not endpoint.is_running(rundir)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    foreign_lock(str(logs))
    with pytest.raises(endpoint.EndpointError) as e:
        endpoint.lock_dir(str(logs), "log directory ")
    assert "uid 65534" in str(e.value) and "another running system" not in str(e.value)


def test_a_log_file_another_user_holds_locked_is_written_all_the_same(tmp_path,
                                                                        foreign_lock):
    """The log files leave alone a file another running system of the user's holds
    (its audit); one that another user's process holds locked (a file others may
    read) is no system's of ours: its lines are written, not stopped."""
    (tmp_path / "app.log").write_bytes(b"")
    os.chmod(tmp_path / "app.log", 0o644)
    foreign_lock(str(tmp_path / "app.log"))
    files = output.LogFiles(str(tmp_path))
    files._write({"app": ["2026-12-03T10:00:00.000Z [app] one"]})
    files.close()
    assert (tmp_path / "app.log").read_text() == "2026-12-03T10:00:00.000Z [app] one\n"


def test_a_lock_table_too_long_to_read_whole_never_makes_a_systems_audit_anothers(
        tmp_path, monkeypatch):
    """A review of the lock look-up (reviewer 173): /proc/locks was read up to 4 MiB,
    and what lay past it was taken as not there.  Any user makes the table that
    long (one process, one descriptor, ~75,000 byte-range read locks of a file of
    theirs) and, with a read lock of theirs on a file others may read (an audit
    another system of yours holds, 0644) listed before the cut, the file was said
    to be held by that user alone: the log writer of a system whose log directory
    holds that audit under a log file's name wrote into it and rotated it
    (output._take, _not_taken), and `up` let such a log directory or audit pass.
    A table that does not fit is "cannot tell", as for a holder not seen."""
    import signal
    import time
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o755)
    audit = folder / "supervisor.log"
    audit.write_text("")
    audit.chmod(0o644)
    ours = os.open(audit, os.O_RDWR | os.O_CLOEXEC)
    fcntl.flock(ours, fcntl.LOCK_EX)           # another running system's audit
    child = None
    if os.geteuid() == 0:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:                                  # pragma: no cover (the child)
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, b"x")
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        theirs = child
    elif os.stat("/proc/1").st_uid != os.getuid():
        theirs = 1
    else:
        pytest.skip("needs a process of another user")
    try:
        st = os.fstat(ours)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        # theirs listed first (the newest), then their padding, then ours
        lines = [f"1: POSIX  ADVISORY  READ {theirs} {ident} 0 0"]
        lines += [f"{i}: POSIX  ADVISORY  READ {theirs} 00:00:1 {2 * i} {2 * i}"
                  for i in range(2, 90_000)]
        lines.append(f"90000: FLOCK  ADVISORY  WRITE {os.getpid()} {ident} 0 EOF")
        table = tmp_path / "locks"
        table.write_text("\n".join(lines) + "\n")
        assert table.stat().st_size > 4 << 20 and table.stat().st_size > \
            getattr(endpoint, "PROC_LOCKS_BYTES", 0)
        real_open = open

        def fake_open(path, *a, **k):       # the kernel's table, as long as that
            return real_open(table if path == "/proc/locks" else path, *a, **k)
        monkeypatch.setattr(endpoint, "open", fake_open, raising=False)
        probe = os.open(audit, os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert endpoint.foreign_holders(probe) == []
        finally:
            os.close(probe)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with pytest.raises(OSError) as e:
                output._not_taken(dfd, "supervisor.log")     # never rotated as a log
            assert e.value.errno == errno.EBUSY
        finally:
            os.close(dfd)
        # read whole, the same table names the system of ours: never "theirs alone"
        monkeypatch.setattr(endpoint, "PROC_LOCKS_BYTES", 8 << 20)
        probe = os.open(audit, os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert endpoint.foreign_holders(probe) == []
        finally:
            os.close(probe)
    finally:
        os.close(ours)
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


def test_a_system_that_stops_never_removes_a_lock_file_that_is_not_its_own(rundir):
    """A review of the runtime directory made again (reviewer 173): the runtime
    directory removed while a system ran (a cleaner of old files), another `up` of
    that system file made the lock file again at its path and held it before the
    first system could (Lock.renew refused: another process holds it), and the
    first, stopping, unlinked the path, which named the other's lock: `wsuper
    status`, `stop` and `revoke` then said the other was not running, and a third
    `up` ran beside it.  Only the lock file it holds is removed."""
    import shutil
    first = endpoint.Lock(rundir)
    first.acquire()
    second = endpoint.Lock(rundir)
    try:
        shutil.rmtree(endpoint.runtime_dir())
        endpoint.private_dir(endpoint.runtime_dir())
        second._acquire_file()                     # the lock file, made again: theirs
        with pytest.raises(endpoint.EndpointError, match="another process holds"):
            first.renew()
        first.release()
        assert os.path.exists(second.path) and endpoint.is_running(rundir)
        st, own = os.stat(second.path), os.fstat(second.fd)
        assert (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
    finally:
        first.release()
        second.release()
    assert not os.path.exists(second.path)


def test_a_directory_above_writable_only_by_its_users_own_group_is_not_anothers(tmp_path):
    """Where each user has a group of their own (Debian, Fedora; a umask of 002
    makes a project directory 0775), a directory writable by that group is the
    user's alone: changeable_above refused `logs = "logs"` beneath it.  A group
    another user is in (nobody's primary group) is still refused."""
    import pwd
    uid, gid = os.getuid(), os.getgid()
    if not endpoint.group_of_one(gid, uid):
        pytest.skip(f"group {gid} has other users in it on this machine")
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(project, 0o775)                    # made under a umask of 002
    logs = str(project / "logs")
    assert endpoint.changeable_above(logs, "the log directory ") is None
    os.chmod(project, 0o777)                    # anyone may write: refused
    assert "another user may rename or replace" in endpoint.changeable_above(logs, "")
    if uid != 0:
        return                                  # only root can give it another group
    nobody = pwd.getpwnam("nobody")
    assert not endpoint.group_of_one(nobody.pw_gid, uid)   # nobody's primary group
    os.chown(project, uid, nobody.pw_gid)
    os.chmod(project, 0o775)
    assert f"(owner uid {uid}, mode 0775)" in endpoint.changeable_above(logs, "")
