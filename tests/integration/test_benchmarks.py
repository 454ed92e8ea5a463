"""The benchmark suite's smoke run: it runs here, and produces every figure
(how fast is for benchmarks/suite.py itself, never for a test)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_benchmark_suite_produces_every_figure(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "suite.py"), "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["machine"]) >= {"cpus", "cpu_model", "python", "versions"}
    for core in ("two_core", "one_core"):
        lat = result[core]["latency"]
        for key in ("c_relay", "python_relay", "pycapnp_direct", "pycapnp_relay",
                    "wsuper_external", "compartment_call", "compartment_per_call",
                    "compartment_attenuated", "compartment_call_python",
                    "compartment_log", "compartment_file"):
            assert lat[key]["p50_us"]["median"] > 0 and lat[key]["p99_us"]["median"] > 0, key
        for key in ("c_relay_batched", "pycapnp_direct", "pycapnp_relay", "wsuper_external"):
            assert lat[key]["calls_per_s"]["median"] > 0
        for key in ("pycapnp_direct", "pycapnp_relay", "wsuper_external"):
            assert lat[key]["calls_per_s_loadgen"]["median"] > 0        # both clients
        assert set(lat["ratios"]) == {"call_vs_c_relay", "call_vs_python_relay",
                                      "call_vs_pycapnp_relay", "external_vs_pycapnp_relay",
                                      "throughput_vs_pycapnp_relay",
                                      "throughput_vs_pycapnp_relay_pycapnp_client",
                                      "throughput_vs_c_relay_batched", "attenuated_vs_plain",
                                      "per_call_vs_plain", "log_vs_plain", "file_vs_plain",
                                      "python_path_vs_plain"}
    assert result["engine"]["wasm_to_host_us"] > 0 and result["engine"]["python_to_wasm_us"] > 0
    assert result["engine"]["wasm_to_host_us_ctypes"] > 0          # both paths measured
    assert result["engine"]["python_to_wasm_us_ctypes"] > 0
    assert result["engine"]["fresh_instance_us"] > 0
    assert result["engine"]["fresh_instance_default_us"] > 0    # pooled and not
    start = result["startup"]
    assert start["cold_start_one"]["ms"] > 0 and start["cold_start_one"]["samples"] >= 2
    assert all(start[f"many_{n}"]["uss_mib"] > 0 for n in result["config"]["many"])
    # what the run had of the machine, beside its wall time (r271): the CPU of its
    # processes a compartment, and the cores that CPU came to
    assert all(start[f"many_{n}"]["cpu_ms_each"] > 0 and start[f"many_{n}"]["cores_ours"] > 0
               and start[f"many_{n}"]["cores_idle"] >= 0
               for n in result["config"]["many"])
    assert set(start["vs_bare_python"]) == {"cold_start_one"} | {
        f"many_{n}" for n in result["config"]["many"]}
    assert all(v > 0 for v in start["confine_layers_us"].values())
    probes = result["probes"]
    assert all(probes["cpu"][f"{k}_vs_plain"] > 0 for k in (
        "functions_off", "all_points_off", "functions_counted", "blocks_counted",
        "functions_events"))
    assert set(probes["ratios"]) == {"call_functions_off_vs_plain", "call_calls_on_vs_plain"}
    assert probes["analysis"]["events"] > 0 and probes["analysis"]["events_per_s"] > 0
    protect = result["protect"]           # memory protection: every figure, as ratios
    for key in ("protected_vs_plain", "protected_bulk_vs_plain_bulk"):
        assert {"median", "fastest", "fuel"} <= set(protect["ratios"][key])
    assert protect["ratios"]["protected_vs_plain"]["fuel"] == 1.0      # the same code runs
    assert protect["ratios"]["protected_bulk_vs_plain_bulk"]["fuel"] > 1.0   # and the checks
    assert protect["host_call"]["ratio"]["median"] > 0
    assert protect["startup"]["enforce_us"] > 0 and protect["startup"]["prepare_ms"] > 0
    table = (tmp_path / "quick.md").read_text()
    assert "| target | measured | goal | met |" in table and "C relay" in table


def test_the_startup_cpu_benchmark_says_each_kinds_cpu_a_compartment_and_the_cores_it_had():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "startup_cpu.py"), "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    for kind in ("supervisor", "zygote", "engine"):
        assert out[f"{kind}_ms_each"] > 0, kind
    assert out["spare_ms_each"] >= 0          # spares left over: none, or a few
    assert out["cpu_ms_each"] == pytest.approx(sum(
        out[f"{kind}_ms_each"] for kind in ("supervisor", "zygote", "engine", "spare")), abs=0.05)
    assert out["cores_ours"] > 0 and out["cores_busy"] > 0
    assert out["cores_idle"] >= 0 and out["kthreads_cpu_s"] >= 0
    assert isinstance(out["kthreads_top"], dict)


def test_the_callee_benchmark_runs_both_ways():
    import re
    for native in ("1", "0"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "callee.py"),
                            "200", "10"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "WSUPER_NATIVE": native})
        assert r.returncode == 0, r.stderr[-2000:]
        assert re.fullmatch(r"200 calls, 10 a read: engine CPU [\d.]+ µs a call, "
                            r"wall [\d.]+ µs a call\n", r.stdout), r.stdout


def test_the_callee_opcodes_benchmark_counts_what_a_served_call_runs():
    """benchmarks/callee_opcodes.py: the opcodes per served call, and the functions
    that run the most, Engine._serve_call among them; pinned, the same count twice
    (within 1%: a garbage collection that runs a finalizer may fall in the traced calls)."""
    import re
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "callee_opcodes.py"),
                            "17", "--pinned", "--top", "5"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = r.stdout.splitlines()
        count = re.fullmatch(r"opcodes per call (\d+)", lines[1])
        assert count and int(count.group(1)) > 300, r.stdout
        assert len(lines) == 7 and "_serve_call" in r.stdout, r.stdout
        assert "callee_opcodes.py" not in r.stdout, r.stdout      # its wrapper not counted
        runs.append(int(count.group(1)))
    assert abs(runs[0] - runs[1]) <= runs[0] // 100, runs


def test_the_host_path_benchmark_runs_for_both_host_objects():
    """benchmarks/hostpath.py (the supervisor's side of a host call) hung once: it
    built the Supervisor by hand and fell behind what the host path came to use.
    It runs, and measures, for a Log.write and a File.read, and in its --micro form."""
    import ast
    for args in (["log", "300"], ["file", "300"], ["log", "300", "--micro"],
                 ["file", "3", "--opcodes", "5"]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "hostpath.py"),
                            *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        got = ast.literal_eval(r.stdout.strip().splitlines()[-1])
        assert got["kind"] == args[0] and got["n"] == int(args[1])
        if "--opcodes" in args:
            assert got["opcodes_per_feed"] > 100 and len(got["most"]) == 5, got
            continue
        timed = ("feed_us", "feed_cpu_us") if "--micro" in args else ("p50_us", "mean_us")
        assert all(got[k] > 0 for k in timed), got


@pytest.fixture(scope="module")
def neighbour(tmp_path_factory):
    """benchmarks/neighbour.py, its plugins built (once for every kind of neighbour)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import neighbour
    finally:
        sys.path.pop(0)
    built = tmp_path_factory.mktemp("neighbour")
    neighbour.build(str(built))
    return neighbour, str(built)


@pytest.mark.parametrize("mode", ["spin", "log", "grow", "crash", "caps", "huge", "hold",
                                  "xcaps", "xhuge"])
def test_an_honest_pair_gets_every_answer_beside_each_kind_of_neighbour(neighbour, mode):
    """benchmarks/neighbour.py's systems, small: beside a compartment that spins,
    floods its log, grows its memory to the limit, crashes and is restarted at
    once, passes capabilities, sends calls of its whole message_size or holds a
    call of the pair's own server unanswered, and beside an external client
    passing capabilities or sending 8 MiB calls in two segments, the honest
    client's calls are all answered, rightly (how fast is for the benchmark),
    and each neighbour did what it says."""
    module, built = neighbour
    r = module.run_once(built, mode, 200, timeout=120)
    assert r["line"] is not None, (mode, r)
    assert (r["n"], r["errors"], r["wrong"]) == (200, 0, 0), (mode, r["line"])
    if mode == "grow":
        assert any("grew 63 MiB more" in h for h in r["hostile"]), r["hostile"]
    if mode == "huge":
        assert any("huge call of" in h and "answered" in h for h in r["hostile"]), r
    if mode.startswith("x"):
        assert '"calls": ' in r["client"] and '"calls": 0,' not in r["client"], r["client"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="places the parties on two CPUs")
def test_the_placement_benchmark_pins_each_party_where_told():
    """benchmarks/placement.py (r255): a plain call's three parties left to the
    scheduler, and pinned apart (the serving engine on the second CPU, the caller
    and the supervisor on the first); every party is found, and, pinned, the
    serving engine is seen running on its CPU and the caller on its own."""
    import re
    cpus = sorted(os.sched_getaffinity(0))[:2]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "placement.py"),
                        "-n", "5000", "--pin", f"{cpus[0]}:{cpus[1]}:{cpus[0]}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{cpus[0]}:{cpus[1]}:{cpus[0]}: p50 "), line
    import ast
    seen = {name: (float(us), ast.literal_eval(where)) for name, us, where in
            re.findall(r"(caller|server|lane|trio) ([\d.]+) us/call on (\{[^}]*\})", line)}
    assert set(seen) == {"caller", "server", "lane", "trio"}, line
    assert all(us > 0 for us, _ in seen.values()), line
    for name, cpu in (("server", cpus[1]), ("caller", cpus[0])):
        where = seen[name][1]
        assert where and max(where, key=where.get) == cpu, line
