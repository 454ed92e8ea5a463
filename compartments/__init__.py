"""The engine: one subprocess per compartment, running one wasm module.

  abi.py     the guest ABI: import names, signatures, error codes (no I/O)
  engine.py  the engine program: wasmtime store, linker, handle table and the
             blocking loop that speaks Cap'n Proto RPC to the supervisor

This package never imports `supervisor` or trio.
"""
