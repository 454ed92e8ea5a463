"""Tests of a C extension run again with it built with AddressSanitizer and UBSan.

`rerun(tmp_path, source, test_file, ...)` copies the tree (without this
interpreter's build of the extension, so that its own is left alone), builds
`source` (a path in the tree, e.g. "supervisor/_fastlane.c") there with both
sanitizers (any error ends the process), and runs `test_file`'s tests (or each of
those files', one build for all) but the sanitized one (`-k "not asan"`) in it,
with the sanitizers' runtimes preloaded (and `env` set).
Skips where gcc has no such runtimes; fails with the run's output if a test
fails or any is skipped."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rerun(tmp_path, source: str, test_file: str | tuple, *, extra: tuple = (),
          timeout: int = 300, select: str = "not asan", env: dict | None = None):
    runtime = [subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                              text=True).stdout.strip() for lib in ("libasan.so", "libubsan.so")]
    if shutil.which("gcc") is None or not all(os.path.isabs(p) for p in runtime):
        pytest.skip("gcc with AddressSanitizer and UBSan runtimes is needed")
    folder, name = os.path.split(source)
    module = name.rsplit(".", 1)[0]
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".venv", ".git", f"{module}*.so", "build", "*.egg-info", "results"))
    out = tree / folder / (module + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", *extra,
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         f"-I{sysconfig.get_paths()['include']}", str(tree / source), "-o", str(out)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         *((test_file,) if isinstance(test_file, str) else test_file), "-k", select],
        cwd=tree, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, LD_PRELOAD=" ".join(runtime), ASAN_OPTIONS="detect_leaks=0",
                 UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", PYTHONPATH=str(tree),
                 **(env or {})))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
