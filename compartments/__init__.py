"""The engine: one subprocess per compartment, running one wasm module.

  abi.py        the guest ABI: import names, signatures, error codes (no I/O)
  limits.py     per-compartment limits, one definition for policy, router and engine
  spec.py       EngineSpec: what the supervisor asks the zygote to start (JSON)
  wasm.py       the wasmtime configuration; compiling and describing modules
  unchecked.py  calls into and out of wasm without wasmtime-py's checks: the
                only user of wasmtime-py's private API, checked at import
                (its native version: _fastcall.c)
  engine.py     the engine: wasmtime store, linker, handle table and the
                blocking loop that speaks Cap'n Proto RPC to the supervisor
  wasi.py       WASI preview 1 on top of the compartment's grants
  zygote.py     the preloaded process that forks engines; modules in sealed memfds
  confine.py    the OS confinement of an engine, and what the kernel lacks (probe)
  seccomp.py    the engines' system call allow-list and its BPF program

This package never imports `supervisor` or trio.
"""
