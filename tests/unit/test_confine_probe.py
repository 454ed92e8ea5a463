"""What `wsuper up` says when the kernel lacks a confinement mechanism."""
from compartments import confine


def test_probe_names_each_missing_mechanism(monkeypatch):
    monkeypatch.setattr(confine, "landlock_abi", lambda: 0)
    monkeypatch.setattr(confine, "seccomp_supported", lambda: False)
    missing = confine.probe()
    assert len(missing) == 2
    assert "no Landlock" in missing[0] and "not confined to their files" in missing[0]
    assert "seccomp" in missing[1]


def test_an_old_landlock_is_named_with_what_it_cannot_do(monkeypatch):
    monkeypatch.setattr(confine, "landlock_abi", lambda: 3)
    monkeypatch.setattr(confine, "seccomp_supported", lambda: True)
    assert confine.probe() == ["the kernel's Landlock ABI is 3 (< 6): engines can still "
                               "signal other processes of this user"]


def test_the_seccomp_program_refuses_listed_calls_and_foreign_architectures():
    prog = confine.seccomp_program([59, 41])
    assert prog[2] == (0x06, 0, 0, confine.SECCOMP_RET_KILL_PROCESS)
    assert prog[-1] == (0x06, 0, 0, confine.SECCOMP_RET_ERRNO | confine.EPERM)
    assert prog[-2] == (0x06, 0, 0, confine.SECCOMP_RET_ALLOW)
    # every comparison jumps exactly to the EPERM return
    for i, (code, jt, _jf, _k) in enumerate(prog):
        if code in (0x15, 0x35) and i > 1:
            assert i + 1 + jt == len(prog) - 1
