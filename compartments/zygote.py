"""The zygote: a preloaded process that forks engines on request.

A fresh `python -m compartments.engine` costs ~90 ms and ~18 MiB of private
memory before it does anything (imports of wasmtime, pycapnp, the schemas).
The supervisor starts this process once, exec'd like an engine (`python -I`,
an empty environment), and it imports all of that, freezes the heap
(`gc.freeze()`, so the children share it copy-on-write) and then, for each
request, forks an engine:

  request (supervisor -> zygote, on the control socket):
      one JSON line: the engine's argument list, sent with two descriptors
      (SCM_RIGHTS): the engine's socket and the write end of its stderr pipe
  answer: one JSON line {"pid": N}
  event:  one JSON line {"exit": N, "code": C} when an engine ends

Engines are the zygote's children; the zygote dies with the supervisor
(PR_SET_PDEATHSIG) and engines with the zygote, so nothing outlives the
supervisor.  Each engine confines itself exactly as an exec'd one does.
It is not a fork of the supervisor: that would leak the supervisor's memory,
its environment included, into every engine.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys

import wasmtime

from . import abi, engine, hostcall  # (preloaded for the children)
from .engine import _die_with_parent


class _Compiled:
    """Each module compiled once (keyed by path, mtime and size), by this process.

    Children inherit the compiled module itself, with the wasmtime engine that
    compiled it (the engines' own configuration), so an engine neither compiles
    nor deserializes.  The zygote stays single-threaded (wasmtime's parallel
    compilation is off), so forking with a wasmtime engine in memory is safe.
    """

    def __init__(self):
        self._engine = None
        self._cache: dict[tuple, tuple] = {}      # key -> (module, imports, export types)

    def get(self, path: str):
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._cache:
            if self._engine is None:
                self._engine = wasmtime.Engine(engine.engine_config())
                for params, results in (*abi.IMPORTS.values(), *abi.WASI_IMPORTS.values()):
                    hostcall.func_type(params, results, self._engine)   # shared by children
            try:
                module = engine.compile_module(self._engine, path)
            except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError):
                return None                  # the engine compiles it and reports the error
            self._cache[key] = (module, list(engine.describe_imports(module)),
                                engine.export_types(module))
        return (self._engine, *self._cache[key])


def _child(args: list[str], sock_fd: int, err_fd: int, compiled: tuple | None) -> int:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err_fd, 2)
    for fd in (null, err_fd):
        if fd > 2:
            os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    args = list(args)
    args[args.index("--fd") + 1] = str(sock_fd)   # its number here, not the supervisor's
    return engine.main(args, compiled)


def serve(control: socket.socket, supervisor_pid: int):
    _die_with_parent(supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.collect()
    gc.freeze()
    buf = b""
    children: set[int] = set()
    compiled = _Compiled()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 512)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                control.sendall(json.dumps({"exit": pid, "code": code}).encode() + b"\n")
        if control in ready:
            data, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, 2)
            if not data:
                return                          # the supervisor is gone
            buf += data
            if len(fds) == 2:
                line, _, buf = buf.partition(b"\n")
                args = json.loads(line)
                module = compiled.get(args[args.index("--module") + 1])
                pid = os.fork()
                if pid == 0:
                    code = 70
                    try:
                        control.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        signal.set_wakeup_fd(-1)
                        code = _child(args, fds[0], fds[1], module)
                    finally:
                        try:
                            sys.stderr.flush()
                        finally:
                            os._exit(code)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                control.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    serve(control, int(sys.argv[2]))
    os._exit(0)


if __name__ == "__main__":
    main()
