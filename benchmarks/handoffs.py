"""Thread hand-offs per host call in one `wsuper up` of a part of survey.c.

    .venv/bin/python benchmarks/handoffs.py pathops      # or bigdir, any survey part

Runs the real supervisor in this process (the engines are its children, as
always), a compartment running tests/integration/guests/wasi/survey.c's part on
a fresh directory grant, and counts what hands work from one of its threads to
another: trio's thread to a worker thread (`trio.to_thread.run_sync`), another
thread to trio's (`TrioToken.run_sync_soon`), and one thread to another waiting
on a `threading.Condition` (the host objects' worker threads); and the host
calls, and those a worker thread answered itself.  Prints one JSON line with
the counts, the wall time, and the supervisor's CPU (getrusage).  The engine's
own two wake-ups a call (its question read by the lane, its answer read by it)
are not counted.  docs/performance.md, r246.
"""
from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import trio  # noqa: E402

from supervisor import runtime, toolchain  # noqa: E402


def main(part: str):
    tmp = tempfile.mkdtemp(prefix="wsuper-handoffs-")
    guests = os.path.join(ROOT, "tests/integration/guests/wasi")
    wasm = toolchain.build([os.path.join(guests, "survey.c"), os.path.join(guests, "suite_c.c")],
                           os.path.join(tmp, "survey.wasm"))
    sandbox = os.path.join(tmp, "sandbox")
    os.mkdir(sandbox)
    out = os.path.join(tmp, "stdout.txt")
    open(out, "w").close()
    system = os.path.join(tmp, "system.toml")
    with open(system, "w") as f:
        f.write(f"""
[system]
audit = "{tmp}/audit.jsonl"
[compartments.app]
module = "{wasm}"
restart = "never"
[compartments.app.grants]
stdout = {{ host = "file", path = "{out}" }}
stderr = {{ host = "log" }}
sandbox = {{ host = "directory", path = "{sandbox}", mount = "/sandbox" }}
env = {{ host = "environment", args = {json.dumps([part])} }}
clock = {{ host = "clock" }}
random = {{ host = "random" }}
""")
    n = collections.Counter()
    to_thread, soon = trio.to_thread.run_sync, trio.lowlevel.TrioToken.run_sync_soon
    notify, host_call = threading.Condition.notify, runtime.Supervisor._host_call

    async def counted_to_thread(*args, **kw):
        n["to a worker thread"] += 1
        return await to_thread(*args, **kw)

    def counted_soon(self, *args, **kw):
        if threading.current_thread() is not threading.main_thread():
            n["to trio's thread"] += 1
        return soon(self, *args, **kw)

    def counted_notify(self, k=1):
        if self._waiters:
            n["to a waiting thread"] += 1
        return notify(self, k)

    def counted_host_call(self, call):
        n["host calls"] += 1
        return host_call(self, call)
    trio.to_thread.run_sync = counted_to_thread
    trio.lowlevel.TrioToken.run_sync_soon = counted_soon
    threading.Condition.notify = counted_notify
    runtime.Supervisor._host_call = counted_host_call
    here = getattr(runtime.Supervisor, "_io_answer_here", None)
    if here is not None:
        def counted_here(self, *args):
            answered = here(self, *args)
            n["answered in a worker thread"] += answered
            return answered
        runtime.Supervisor._io_answer_here = counted_here
    from supervisor import cli
    began = time.monotonic()
    # cli.main, not the program (`python -m supervisor.cli` ends its process once
    # main returns: cli.run), so that the counts are printed after it
    try:
        cli.main(["up", system])
    finally:                       # the guest, its sandbox and its audit
        shutil.rmtree(tmp, ignore_errors=True)
    took = time.monotonic() - began
    ru = resource.getrusage(resource.RUSAGE_SELF)
    calls = max(n["host calls"], 1)
    handed = n["to a worker thread"] + n["to trio's thread"] + n["to a waiting thread"]
    print(json.dumps({"part": part, "seconds": round(took, 2), **n,
                      "hand-offs a host call": round(handed / calls, 2),
                      "supervisor cpu s": round(ru.ru_utime + ru.ru_stime, 2)}),
          file=sys.stderr)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", nargs="?", default="pathops",
                    help="the part of survey.c to run (default: pathops)")
    main(ap.parse_args().part)
