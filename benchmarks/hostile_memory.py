"""What N taken-over compartments make the supervisor hold: its RSS, sampled.

    .venv/bin/python benchmarks/hostile_memory.py flood 8            # unread answers
    .venv/bin/python benchmarks/hostile_memory.py kept 4             # results never finished
    .venv/bin/python benchmarks/hostile_memory.py partial 8          # half-sent messages
    WSUPER_NATIVE=0 .venv/bin/python benchmarks/hostile_memory.py flood 8    # off the lane

Runs the real `wsuper up` through tests/hostile.py (real zygote, real confined
engines; each engine `evilN` runs a payload once the supervisor says it is ready)
beside an honest calc, and prints the supervisor's RSS every --every seconds for
--seconds, then the operator's lines about cut-offs.
  flood:   each evil calls Random.bytes(65536) --count times (1200: 79 MB, under its
           own 80 MiB hard bound) and reads nothing;
  kept:    a taken-over `keeper` answers every call with 4 MiB and a capability; each
           evil makes 15 calls, reads the answers and never sends Finish (60 MiB,
           under the 64 MiB a connection may keep);
  partial: each evil sends all but 8 bytes of an 8 MiB message, then nothing.
docs/security.md, "The supervisor's own resources"; docs/design.md, "Known limits" (r258).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALC = os.path.join(ROOT, "examples", "calc")

FLOOD = """
import struct, sys
from capnp_schemas.protocol import Content
rnd = engine.grants["rnd"][1].import_id
body = Content.standalone([struct.pack("<QI4x", 1 << 32, 65536)])
for n in range({count}):
    try:
        sock.sendall(engine.conn.send_call(rnd, 0xa05a5e2c6b2f6d05, 0, body, [])[1])
    except OSError:
        break
print("flooded", n + 1, file=sys.stderr, flush=True)
"""
KEEPER = """
import struct
from capnp_schemas import protocol as P
from capnp_schemas.protocol import Content
words = (4 << 20) // 8
big = Content.standalone([struct.pack("<Q", words << 32) + b"\\1" * (8 * words)])
while True:
    for ev in recv_events(60):
        if isinstance(ev, P.CallReceived):
            send(engine.conn.send_return(ev.answer_id, big, [object()]))
"""
KEPT = """
import struct, sys, time
from capnp_schemas import protocol as P
from capnp_schemas.protocol import Content
keeper = engine.grants["keeper"][1].import_id
body = Content.standalone([struct.pack("<Qii", 1 << 32, 1, 2)])
got = 0
for n in range(15):
    send(engine.conn.send_call(keeper, 0xc0ffee0000000001, 0, body, [])[1])
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if any(isinstance(e, P.ReturnReceived) for e in recv_events(1)):
            got += 1
            break
print("kept", got, file=sys.stderr, flush=True)
"""
PARTIAL = """
import struct, sys
words = (8 << 20) // 8
sock.sendall(struct.pack("<II", 0, words) + bytes(8 * words - 8))
print("sent all but 8 bytes", file=sys.stderr, flush=True)
"""


def system(kind: str, n: int, tmp: str, count: int) -> str:
    text = (f'[system]\nschemas = ["{CALC}/calc.capnp"]\nlogs = "{tmp}/logs"\n'
            f'\n[compartments.calc]\nmodule = "{CALC}/calc.wat"\nexports = "Calc"\n')
    os.mkdir(f"{tmp}/payloads")
    if kind == "kept":
        text += f'\n[compartments.keeper]\nmodule = "{CALC}/calc.wat"\nexports = "Calc"\n'
        with open(f"{tmp}/payloads/keeper.py", "w") as f:
            f.write(textwrap.dedent(KEEPER))
    payload = {"flood": FLOOD, "kept": KEPT, "partial": PARTIAL}[kind].format(count=count)
    for i in range(n):
        with open(f"{tmp}/payloads/evil{i}.py", "w") as f:
            f.write(textwrap.dedent(payload) + "\ntime = __import__('time')\ntime.sleep(3600)\n")
        text += (f'\n[compartments.evil{i}]\nmodule = "{CALC}/calc.wat"\nrestart = "never"\n'
                 f'[compartments.evil{i}.grants]\n')
        text += {"flood": 'rnd = { host = "random" }\n',
                 "kept": 'keeper = { compartment = "keeper" }\n',
                 "partial": 'calc = { compartment = "calc" }\n'}[kind]
    return text


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=("flood", "kept", "partial"))
    ap.add_argument("n", type=int, help="taken-over compartments")
    ap.add_argument("--count", type=int, default=1200, help="flood: calls each")
    ap.add_argument("--seconds", type=float, default=14)
    ap.add_argument("--every", type=float, default=1)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wsuper-hostile-memory-")
    with open(f"{tmp}/system.toml", "w") as f:
        f.write(system(args.kind, args.n, tmp, args.count))
    proc = subprocess.Popen([sys.executable, "-m", "tests.hostile", f"{tmp}/payloads", "up",
                             f"{tmp}/system.toml"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    samples = []
    try:
        end = time.monotonic() + args.seconds
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(args.every)
            samples.append(rss(proc.pid))
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    print(f"{args.kind} N={args.n} ({'off the lane' if os.environ.get('WSUPER_NATIVE') == '0' else 'lane'}): "
          f"supervisor RSS MB every {args.every:g} s: {samples}; peak {max(samples or [0])}")
    for line in out.splitlines():
        if "connection cut off" in line or "connection aborted" in line:
            print("  " + line[:240])


if __name__ == "__main__":
    main()
