"""A few thousand hostile module binaries from the function-type fuzzer
(fuzz/wasmtypes.py), and proof that its checks fail when what they check breaks."""
import pytest

from compartments import wasmbin
from fuzz import wasmtypes as FW

COUNT = 10_000


def test_a_few_thousand_hostile_binaries_break_nothing():
    done, failures = FW.run(COUNT, seed=20261205)
    assert done == COUNT
    assert failures == {}, "\n".join(failures)


def test_the_seeds_compile_and_hold_types_wasmtime_cannot_show():
    import wasmtime
    state = FW._setup()
    unshown = 0
    for data in state["seeds"]:
        wasmtime.Module(state["engine"], data)
        imports, exports = wasmbin.function_types(data)
        unshown += sum(map(wasmbin.unshown, (*imports.values(), *exports.values())))
        FW.check(data)
    assert unshown >= 5


def _leaky(real):
    def leaky(data):
        if len(data) % 3 == 0:
            raise IndexError("a read past the end")
        return real(data)
    return leaky


def _refusing(data):
    raise wasmbin.Unsupported("everything")


@pytest.mark.parametrize("breakage,check", [
    (lambda mp: mp.setattr(wasmbin, "function_types", _leaky(wasmbin.function_types)),
     "errors"),
    # (a v128 misnamed as a number would be asked of wasmtime: that aborts the run)
    (lambda mp: mp.setitem(wasmbin._NUMBERS, 0x7C, "f32"), "wasmtime"),
    (lambda mp: mp.setattr(wasmbin, "function_types", _refusing), "wasmtime"),
])
def test_each_check_fails_when_what_it_guards_is_broken(monkeypatch, breakage, check):
    breakage(monkeypatch)
    _done, failures = FW.run(1000, seed=7)
    assert not any(k.startswith("harness") for k in failures), failures
    assert any(k.startswith(check + ":") for k in failures), failures
