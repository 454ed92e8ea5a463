"""A few thousand system files from the policy fuzzer (fuzz/policy.py), and
proof that its checks fail when what they check breaks."""
import pytest

from capnp_schemas.text import printable
from fuzz import policy as FP
from supervisor import authority, policy

COUNT = 10_000


def test_a_few_thousand_hostile_system_files_break_nothing():
    done, failures = FP.run(COUNT, seed=20261204)
    assert done == COUNT
    assert failures == {}, "\n".join(failures)


def _lenient_number(where, key, value, lo, hi, real=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise where.error(key, "bad")
    return value                          # the old check: nan and inf pass


_COMPARTMENT = policy.Compartment


def _limits_said_in_the_system_file(name, *args, limit_origins=None, **kw):
    """As before limit_origins: every limit said to be the system file's
    compartments.NAME.limits.K, a policy file's too."""
    return _COMPARTMENT(name, *args, **kw, limit_origins={
        k: f"/fuzz/system.toml: compartments.{name}.limits.{k}" for k in limit_origins or {}})


@pytest.mark.parametrize("breakage,check", [
    (lambda mp: mp.setattr(policy, "_number", _lenient_number), "values"),
    (lambda mp: mp.setattr(authority, "_dot", lambda text: text), "check"),
    # nothing escaped in what check prints (holdings and the graph, both through
    # ascii_printable since the graph's _dot took it; authority.printable was its)
    (lambda mp: mp.setattr(authority, "ascii_printable", lambda text: text), "check"),
    (lambda mp: mp.setattr(policy, "ascii_printable", lambda text: text), "error"),
    # only what is past ASCII shown as it is (printable, as before), a Cyrillic letter
    # passing for a Latin one
    (lambda mp: mp.setattr(policy, "ascii_printable", printable), "error"),
    (lambda mp: mp.setattr(authority, "ascii_printable", printable), "check"),
    (lambda mp: mp.setattr(policy, "_no_long_dotted_keys", lambda text, path: None), "time"),
    (lambda mp: mp.setattr(policy, "Compartment", _limits_said_in_the_system_file), "where"),
])
def test_each_check_fails_when_what_it_guards_is_broken(monkeypatch, breakage, check):
    breakage(monkeypatch)
    # "time": input 11 of seed 5 is the first to take over a second of CPU with
    # the guard gone (~6 s; the next, 29, ~5 s more, and no more a proof of it)
    _done, failures = FP.run(12 if check == "time" else 600, seed=5)
    assert any(k.startswith(f"{check}: ") for k in failures), failures
