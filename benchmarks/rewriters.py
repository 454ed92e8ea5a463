"""Protection's bulk-memory checks (compartments/wasmbin.py, in-process) against the
least a wasm-tools route would cost (compartments/instrument.py's confined
wasm-tools: the module printed as text and parsed back, nothing inserted), on
the same modules: two C plugins built with -mbulk-memory, and a synthetic
module of 20,000 functions.  Best of 5, in ms.  docs/memory-protection.md,
"Why its own module reader, beside wasm-tools", quotes it.

    .venv/bin/python benchmarks/rewriters.py
"""
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import wasmtime  # noqa: E402

from compartments import instrument, wasmbin  # noqa: E402
from supervisor import bindgen, toolchain  # noqa: E402

BULK = ["-mbulk-memory", "-ftls-model=local-exec"]


def synthetic(n: int) -> bytes:
    body = """(func $f{i} (param $p i32) (result i32) (local $x i32)
  local.get $p i32.const {i} i32.add local.set $x
  block loop local.get $x i32.const 3 i32.mul local.tee $x i32.const 1000 i32.gt_u
    br_if 1 br 0 end end
  local.get $x i32.const 0 i32.const 16 memory.fill
  local.get $x i32.const 64 i32.const 16 memory.copy
  local.get $x i32.load local.get $x i32.const 4 i32.add i32.load i32.add)"""
    funcs = "\n".join(body.format(i=i) for i in range(n))
    return bytes(wasmtime.wat2wasm(f'(module (memory (export "memory") 2) {funcs})'))


def best(f, n=5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main():
    with tempfile.TemporaryDirectory() as d:
        guests = os.path.join(os.path.dirname(HERE), "tests", "integration", "guests", "c")
        bindgen.generate(os.path.join(guests, "protect.capnp"), os.path.join(d, "inc"))
        paths = {
            "benchmarks/protect_guest.c": toolchain.build(
                [os.path.join(HERE, "protect_guest.c")], os.path.join(d, "g.wasm"),
                reactor=True, extra=BULK),
            "tests/.../protect_server.c": toolchain.build(
                [os.path.join(guests, "protect_server.c")], os.path.join(d, "s.wasm"),
                reactor=True, include=[os.path.join(d, "inc")], extra=BULK),
        }
        modules = {}
        for name, path in paths.items():
            with open(path, "rb") as f:
                modules[name] = f.read()
    modules["synthetic, 20000 functions"] = synthetic(20000)
    print("| module | bytes | wasmbin.add_bulk_checks | wasm-tools print + parse |")
    print("|---|---|---|---|")
    for name, data in modules.items():
        checks = best(lambda: wasmbin.add_bulk_checks(data, 4096, 4096, 8192))

        def round_trip():
            text = instrument._tool(["print", "-"], data)
            instrument._tool(["parse", "-", "-o", "/dev/stdout"], text)
        print(f"| {name} | {len(data)} | {checks:.1f} ms | {best(round_trip):.0f} ms |")


if __name__ == "__main__":
    main()
