"""Modules wasm-tools smith generates, with bulk-memory instructions written among
their instructions, through the walk that finds the instructions memory protection
checks (fuzz/wasmbulk.py), and proof that its checks fail when what they check
breaks."""
from compartments import wasmbin
from fuzz import wasmbulk as FB

COUNT = 150


def test_generated_modules_have_every_bulk_memory_instruction_found_and_checked():
    done, failures = FB.run(COUNT, seed=20261206)
    assert done == COUNT
    assert failures == {}, "\n".join(failures)


def test_a_walk_that_misreads_an_immediate_is_caught(monkeypatch):
    """A memarg's offset left unread: the walk loses its place in the body."""
    def memarg(r):
        if r.uleb() & 0x40:
            r.skip_leb()
    monkeypatch.setattr(wasmbin, "_memarg", memarg)
    _done, failures = FB.run(20, seed=20261206)
    assert any(k.startswith("walk: ") for k in failures), failures


def test_a_walk_that_misses_a_bulk_memory_instruction_is_caught(monkeypatch):
    monkeypatch.setattr(wasmbin, "MEMORY_FILL", -1)     # memory.fill walked past, unreported
    _done, failures = FB.run(20, seed=20261206)
    assert any(k.startswith("walk: found ") for k in failures), failures


def test_a_rewrite_wasmtime_refuses_is_caught(monkeypatch):
    real = wasmbin._check_body
    monkeypatch.setattr(wasmbin, "_check_body", lambda *a: real(*a)[:-1] + b"\x00")
    _done, failures = FB.run(20, seed=20261206)
    assert any(k.startswith("rewrite: wasmtime refuses") for k in failures), failures
