"""Engine processes, forked from the main thread.

trio's `open_process` runs `Popen` in a worker thread, and Linux delivers an
engine's parent-death signal (PR_SET_PDEATHSIG) when the *thread* that forked
it exits: trio retires idle worker threads after 10 s, which would kill every
engine of a long-running system.  So engines are forked here, synchronously,
by the thread running trio (it lives as long as the supervisor), and reaped
through a pidfd that trio waits on.
"""
from __future__ import annotations

import os
import signal
import subprocess

import trio


class EngineProcess:
    def __init__(self, args: list[str], pass_fds: tuple, env: dict):
        self._popen = subprocess.Popen(
            args, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, cwd="/", start_new_session=True)
        self.pid = self._popen.pid
        self.stderr = trio.lowlevel.FdStream(os.dup(self._popen.stderr.fileno()))
        self._popen.stderr.close()
        self._exited = trio.Event()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):   # kernel before 5.3: poll instead
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def watch(self):
        """Reap the process when it exits (run as one task per process)."""
        try:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                while self._popen.poll() is None:
                    await trio.sleep(0.05)
            self._popen.wait()
        finally:
            if self._pidfd is not None:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
            if self._popen.returncode is None:    # cancelled: make sure it is gone
                self._popen.kill()
                self._popen.wait()
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self._popen.returncode

    def send_signal(self, sig: int):
        if self._popen.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)
