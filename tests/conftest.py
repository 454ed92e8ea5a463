import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "calc")


class Running:
    """A `wsuper up` subprocess whose output lines can be awaited."""

    def __init__(self, args, cwd=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", *args], cwd=cwd or ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def wait_for(self, fragment, timeout=30, start=0):
        """The first output line (from line `start` on) containing `fragment`."""
        deadline = time.monotonic() + timeout
        for line in self.lines[start:]:
            if fragment in line:
                return line
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if fragment in line:
                return line
        raise AssertionError(f"never saw {fragment!r}; output:\n" + "\n".join(self.lines))

    def finish(self, timeout=30):
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.finish(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.finish()


@pytest.fixture
def wsuper():
    started = []

    def start(*args, cwd=None):
        r = Running(args, cwd)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def run_wsuper(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def wasi_guests(tmp_path_factory):
    """The C test programs of tests/integration/guests/wasi, built with the real toolchain."""
    from supervisor import toolchain
    out = tmp_path_factory.mktemp("wasi-guests")
    src = os.path.join(ROOT, "tests", "integration", "guests", "wasi")
    built = {}
    for name in ("posix", "probe"):
        built[name] = toolchain.build([os.path.join(src, name + ".c")], str(out / f"{name}.wasm"))
    return built
