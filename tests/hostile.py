"""A compromised engine in a live system: `python -m tests.hostile DIR up SYSTEM`.

The threat model (docs/security.md) lets a guest escape wasmtime and run native
code in its engine process.  This runs `wsuper up` as the CLI does, with one
change: the zygote it starts (the real one, `python -I`, an empty environment)
first installs a hook, so that an engine whose compartment has a payload in DIR
(`DIR/NAME.py`) starts as any engine does (forked by the zygote, the module
loaded, the bootstrap and Engine.start answered, confined: the supervisor says
it is ready) and then, instead of serving, runs that payload: Python source,
with the engine's socket and the rest of the process, under the engine's
confinement (seccomp, Landlock, namespaces, rlimits), as attacker code would
be.  Payloads are read by the zygote when it starts (an engine reads no file).

A payload's globals: `engine` (the compartments.engine.Engine, its `conn` the
protocol core's books of what the supervisor gave it), `sock` (its socket to the
supervisor), `send(bytes)`, `recv_events(timeout)` and `libc` (ctypes, errno on).
When it returns, the engine process exits (0)."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install(directory: str):
    """In the zygote, before it imports anything of its own: payloads by name."""
    import ctypes
    import socket
    import time

    from compartments import engine as engine_mod
    payloads = {}
    for entry in os.listdir(directory):
        if entry.endswith(".py"):
            with open(os.path.join(directory, entry)) as f:
                payloads[entry[:-3]] = f.read()
    honest = engine_mod.Engine.serve

    def serve(self):
        source = payloads.get(self.name)
        if source is None:
            return honest(self)
        early, self._early = self._early, []        # as Engine.serve begins
        self._backlog.extend((0, ev) for ev in early)
        while not self._started:       # a normal start: the supervisor says it is ready
            if not self._pump():
                return
        self._flush()
        sock = self.sock

        def send(data: bytes):
            sock.sendall(data)

        def recv_events(timeout: float = 5.0) -> list:
            """What the supervisor sent within `timeout` (polled: seccomp lets an
            engine block in recv, not set a socket timeout)."""
            deadline = time.monotonic() + timeout
            while True:
                try:
                    data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return []
                    time.sleep(0.01)
                    continue
                if not data:
                    raise SystemExit(0)
                return self.conn.receive(data)

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        exec(compile(source, f"<payload {self.name}>", "exec"),
             {"engine": self, "sock": sock, "send": send, "recv_events": recv_events,
              "libc": libc, "__name__": "payload"})
        sys.stderr.flush()
        os._exit(0)

    engine_mod.Engine.serve = serve


ZYGOTE = ("import sys, runpy; sys.path.insert(0, {root!r}); import tests.hostile as h; "
          "h.install({dir!r}); runpy.run_module('compartments.zygote', run_name='__main__', "
          "alter_sys=True)")


def main():
    import subprocess
    import types

    from supervisor import launch
    directory = os.path.abspath(sys.argv[1])
    real = subprocess.Popen

    def popen(argv, *args, **kwargs):
        if list(argv[1:4]) == ["-I", "-m", "compartments.zygote"]:
            argv = [argv[0], "-I", "-c", ZYGOTE.format(root=ROOT, dir=directory), *argv[4:]]
        return real(argv, *args, **kwargs)

    launch.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})
    sys.argv = ["wsuper", *sys.argv[2:]]
    from supervisor import cli
    cli.run()


if __name__ == "__main__":
    main()
