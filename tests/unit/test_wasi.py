"""The WASI translation layer against a fake engine (real programs: integration/test_wasi.py)."""
import struct

import pytest

from capnp_schemas import protocol
from capnp_schemas.payloads import with_capability
from capnp_schemas.protocol import Content
from compartments import wasi
from compartments.wasi import E, HostCallFailed, Wasi, errno_of


class FakeHost:
    """Guest memory and a scripted supervisor: `answers[(method ordinal)]` -> results."""

    def __init__(self):
        self.mem = bytearray(1 << 16)
        self.calls = []
        self.results = {}
        self.dropped = []

    def read(self, ptr, n):
        return bytes(self.mem[ptr:ptr + n])

    def write(self, ptr, data):
        self.mem[ptr:ptr + len(data)] = data

    def invoke(self, cap, iface, method, content):
        self.calls.append((cap, method))
        result = self.results.get((iface, method))
        if isinstance(result, Exception):
            raise result
        if result is None:
            return protocol.Payload(protocol.EMPTY, ())
        content, caps = result
        return protocol.Payload(content, caps)

    def adopt(self, cap):
        return cap

    def hold(self, cap):
        self.held = getattr(self, "held", []) + [cap]
        return cap

    def drop(self, cap):
        self.dropped.append(cap)


def _dir_list(names):
    _id, ordinal, _params, results = wasi._M["Directory", "list"]
    msg = results.new_message()
    lst = msg.init("entries", len(names))
    for i, n in enumerate(names):
        lst[i].name, lst[i].kind = n, "file"
    return (_id, ordinal), (Content.standalone(msg.to_segments()), ())


def test_errno_comes_from_the_reason_or_the_exception_type():
    assert errno_of(HostCallFailed("failed", "ENOENT: directory /x: 'a' does not exist")) == E.NOENT
    assert errno_of(HostCallFailed("failed", "app.data: Directory.mkdir is not allowed")) \
        == E.NOTCAPABLE
    assert errno_of(HostCallFailed("failed", "EBOGUS: nothing we know")) == E.NOTCAPABLE
    assert errno_of(HostCallFailed("overloaded", "too fast")) == E.AGAIN
    assert errno_of(HostCallFailed("disconnected", "gone")) == E.IO


def test_preopens_and_stdio_follow_the_grants():
    host = FakeHost()
    w = Wasi(host, "app")
    w.grant([("stdout", "log", "", 11), ("data", "directory", "/data", 12),
             ("other", "directory", ".", 13), ("stdin", "log", "", 14)])
    assert sorted(w.fds) == [1, 3, 4]          # a log cannot be stdin
    assert w.fd_prestat_get(3, 100) is None and host.read(100, 8) == struct.pack("<BxxxI", 0, 5)
    w.fd_prestat_dir_name(4, 200, 1)
    assert host.read(200, 1) == b"."
    fn = w.function("fd_prestat_get")
    assert fn(5, 100) == E.BADF
    assert fn(1, 100) == E.BADF                # stdout is no directory
    assert w.function("fd_close")(3) == 0 and 3 not in w.fds
    assert host.held == [11, 12, 13] and host.dropped == [12]   # only our own reference


def test_readdir_resumes_at_the_cookie_and_fills_the_buffer():
    host = FakeHost()
    w = Wasi(host, "app")
    w.grant([("data", "directory", "/data", 7)])
    key, answer = _dir_list(["a.txt", "bb.txt"])
    host.results[key] = answer
    readdir = w.function("fd_readdir")
    assert readdir(3, 1000, 4096, 0, 900) == 0
    used = struct.unpack_from("<I", host.mem, 900)[0]
    names, pos = [], 1000
    while pos < 1000 + used:
        nxt, _ino, namelen, _type = struct.unpack_from("<QQIB", host.mem, pos)
        names.append((nxt, bytes(host.mem[pos + 24:pos + 24 + namelen]).decode()))
        pos += 24 + namelen
    assert names == [(1, "."), (2, ".."), (3, "a.txt"), (4, "bb.txt")]
    # a buffer too small is filled completely (that tells libc to call again)
    assert readdir(3, 1000, 30, 2, 900) == 0
    assert struct.unpack_from("<I", host.mem, 900)[0] == 30
    assert readdir(3, 1000, 4096, 4, 900) == 0 and struct.unpack_from("<I", host.mem, 900)[0] == 0


@pytest.mark.parametrize("rights,fdflags,mode", [
    (wasi.RIGHT_FD_READ, 0, "read"),
    (wasi.RIGHT_FD_WRITE, 0, "write"),
    (wasi.RIGHT_FD_READ | wasi.RIGHT_FD_WRITE, 0, "readWrite"),
    (wasi.RIGHT_FD_WRITE, wasi.FDFLAGS_APPEND, "append"),
])
def test_path_open_asks_for_the_least_mode_that_serves(rights, fdflags, mode):
    host = FakeHost()
    w = Wasi(host, "app")
    w.grant([("data", "directory", "/data", 7)])
    opened = []

    def invoke(cap, iface, method, content):
        _id, _o, params, _r = wasi._M["Directory", "open"]
        p = params.from_segments(content.message())
        opened.append((p.path, str(p.mode)))
        return protocol.Payload(with_capability(wasi._M["Directory", "open"][3].new_message()), (99,))
    host.invoke = invoke
    host.write(0, b"x.txt")
    assert w.function("path_open")(3, 0, 0, 5, 0, rights, 0, fdflags, 64) == 0
    assert opened == [("x.txt", mode)]
    assert struct.unpack_from("<I", host.mem, 64)[0] == 4


def test_a_denied_open_is_notcapable_and_nothing_leaks():
    host = FakeHost()
    w = Wasi(host, "app")
    w.grant([("data", "directory", "/data", 7)])
    iface, ordinal = wasi._M["Directory", "open"][:2]
    host.results[(iface, ordinal)] = HostCallFailed("failed", "app.data was revoked")
    host.write(0, b"x.txt")
    assert w.function("path_open")(3, 0, 0, 5, 0, wasi.RIGHT_FD_READ, 0, 0, 64) == E.NOTCAPABLE
    assert sorted(w.fds) == [3]
    # no clock grant: no time
    assert w.function("clock_time_get")(0, 0, 64) == E.NOTCAPABLE
    assert w.function("random_get")(0, 16) == E.NOTCAPABLE


class Fault(Exception):
    """What the engine raises for out-of-range guest memory (a trap)."""


class StrictHost(FakeHost):
    def read(self, ptr, n):
        if ptr < 0 or n < 0 or ptr + n > len(self.mem):
            raise Fault()
        return super().read(ptr, n)

    def write(self, ptr, data):
        if ptr < 0 or ptr + len(data) > len(self.mem):
            raise Fault()
        super().write(ptr, data)


from hypothesis import given, settings, strategies as st  # noqa: E402

from compartments.abi import WASI_IMPORTS  # noqa: E402

_i32 = st.one_of(st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from([0, 1, 3, 4, 8, 64]))
_i64 = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from([0, 1, 4096]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(n for n in WASI_IMPORTS if n != "proc_exit")), st.data())
def test_any_arguments_give_an_errno_or_a_trap_never_an_engine_error(name, data):
    host = StrictHost()
    w = Wasi(host, "app")
    w.grant([("data", "directory", "/data", 7), ("stdout", "log", "", 8),
              ("clock", "clock", "", 9), ("env", "environment", "", 10)])
    params, _ = WASI_IMPORTS[name]
    args = [data.draw(_i64 if p == "i64" else _i32) for p in params]
    try:
        r = w.function(name)(*args)
    except Fault:
        return                   # out-of-range memory: the guest traps, as it should
    assert isinstance(r, int) and 0 <= r <= 76, (name, args, r)
