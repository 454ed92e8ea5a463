"""Building plugins: C to wasm32-wasi with Debian's clang, lld and wasi-libc.

wsuper does not ship a compiler.  `scripts/setup` installs the Debian
packages (clang, lld, wasi-libc, libclang-rt-14-dev-wasm32); this module
only finds them and runs them, so `wsuper build` and the tests use one
command line.  Set WSUPER_CLANG to use another clang (a wasi-sdk one, say).
"""
from __future__ import annotations

import os
import shutil
import subprocess

DEBIAN_PACKAGES = ("clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32")
RUST_PACKAGES = ("rustc", "libstd-rust-dev-wasm32")
TARGET = "wasm32-wasi"


class ToolchainError(Exception):
    """The compiler is missing or the build failed; the text says which and why."""


def clang() -> str:
    path = shutil.which(os.environ.get("WSUPER_CLANG", "clang"))
    if path is None:
        raise ToolchainError("clang not found: run ./scripts/setup (it installs the Debian "
                             f"packages {' '.join(DEBIAN_PACKAGES)}) or set WSUPER_CLANG")
    return path


def command(sources, output: str, *, reactor: bool = False, include=(), exports=(),
            optimize: str = "-O2", extra=()) -> list[str]:
    """The clang command line that builds `sources` into the module `output`.

    A plugin that serves an interface is a *reactor* (no main; it exports
    `_initialize` and `wsuper_dispatch`); a program with `main` is a command.
    """
    cmd = [clang(), f"--target={TARGET}", optimize, "-Wall", "-o", output]
    if reactor:
        cmd.append("-mexec-model=reactor")
    cmd += [f"-I{d}" for d in include]
    cmd += [f"-Wl,--export={e}" for e in exports]
    return cmd + list(extra) + list(sources)


def build(sources, output: str, **options) -> str:
    """Compile and link; returns `output` (its directory is made if missing).  Raises
    ToolchainError with clang's messages, or naming a source that is not there."""
    for src in sources:
        if not os.path.isfile(src):
            raise ToolchainError(f"{src}: no such source file")
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ToolchainError(f"cannot make {folder} for {output}: {e.strerror}") from None
    cmd = command(sources, output, **options)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except OSError as e:
        raise ToolchainError(f"cannot run {cmd[0]}: {e}") from None
    if r.returncode != 0:
        text = (r.stderr or r.stdout).strip()
        if "wasm-ld" in text and "not found" in text or "unable to execute" in text:
            text += f"\n(install the Debian packages {' '.join(DEBIAN_PACKAGES)})"
        raise ToolchainError(f"building {output} failed:\n{text}")
    return output


def rustc() -> str:
    """A rustc that has the wasm32-wasi standard library (Debian's, by default)."""
    for candidate in (os.environ.get("WSUPER_RUSTC"), "/usr/bin/rustc", shutil.which("rustc")):
        if not candidate or not os.path.exists(candidate):
            continue
        r = subprocess.run([candidate, "--print", "sysroot"], capture_output=True, text=True)
        if r.returncode == 0 and os.path.isdir(os.path.join(r.stdout.strip(), "lib", "rustlib",
                                                            "wasm32-wasi")):
            return candidate
    raise ToolchainError("no rustc with the wasm32-wasi standard library: run ./scripts/setup "
                         f"(it installs the Debian packages {' '.join(RUST_PACKAGES)}) or set "
                         "WSUPER_RUSTC")


def build_rust(source: str, output: str) -> str:
    """Compile one Rust file (no crates) to a wasm32-wasi program."""
    cmd = [rustc(), "--target", "wasm32-wasi", "-O", "-C", "debuginfo=0",
           "-C", "link-arg=--strip-debug", "-o", output, source]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise ToolchainError(f"building {output} failed:\n{(r.stderr or r.stdout).strip()}")
    return output

