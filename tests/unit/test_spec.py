"""What the supervisor asks the zygote for (compartments/spec.py), and the
[system] engine_user key it takes the engines' uid and gid from."""
import json

import pytest

from compartments.limits import Limits
from compartments.spec import EngineSpec, SpecError
from supervisor import policy
from tests.conftest import run_wsuper

SPEC = EngineSpec("calc", "/srv/calc.wasm", exports=True, per_call=True,
                  limits=Limits(memory=1 << 20, handles=9), user=(65534, 65534))


def test_a_spec_survives_its_json_form():
    assert EngineSpec.from_json(SPEC.to_json()) == SPEC
    assert EngineSpec.from_json(b'{"name": "a", "module": "/a.wat"}') == EngineSpec("a", "/a.wat")


def _with(**changes) -> bytes:
    obj = json.loads(SPEC.to_json())
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("data, named", [
    (b"[1, 2]", "not a JSON object"),
    (b"{", "not JSON"),
    (b"[" * 60_000, "not JSON"),                  # RecursionError inside json
    (b'{"name": "a"}', "missing key 'module'"),
    (_with(argv=["--fd", "3"]), "unknown key 'argv'"),
    (_with(name="../etc"), "name: not a compartment name"),
    (_with(name="a\nready b pid=1"), "name: not a compartment name"),
    (_with(module="relative.wasm"), "module: not an absolute path"),
    (_with(module="/a\u0000b"), "module: not an absolute path"),
    (_with(exports=1), "exports: expected true or false"),
    (_with(limits={"memory": "64MiB"}), "limits.memory: expected a number"),
    (_with(limits={"memory": 1 << 40}), "limits.memory: expected a number from"),
    (_with(limits={"handles": 1.5}), "limits.handles: expected a number"),
    (_with(limits={"handles": True}), "limits.handles: expected a number"),
    (_with(limits={"stack": 1}), "limits: unknown key 'stack'"),
    (_with(user=[0, 0]), "user: expected [uid, gid] from 1"),
    (_with(user=[65534]), "user: expected [uid, gid]"),
    (_with(user=[-1, 5]), "user: expected [uid, gid]"),
    (_with(user=[1 << 32, 5]), "user: expected [uid, gid]"),
    (b" " * (1 << 17), "request of 131072 bytes"),
])
def test_a_request_the_zygote_cannot_use_is_refused_naming_the_key(data, named):
    with pytest.raises(SpecError) as e:
        EngineSpec.from_json(data)
    assert named in str(e.value)


def test_engine_user_defaults_to_nobody_and_is_read_as_uid_gid():
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n', "/s/system.toml")
    assert s.engine_user == (65534, 65534)
    s = policy.parse('[system]\nengine_user = "4242:4343"\n[compartments.a]\nmodule = "a.wat"\n',
                     "/s/system.toml")
    assert s.engine_user == (4242, 4343)


@pytest.mark.parametrize("value", ['"0:0"', '"0:65534"', '"nobody"', '"65534"', '"-1:5"',
                                   '"4294967295:1"', '"1:2:3"', "65534", '" 1:2"'])
def test_a_bad_engine_user_is_refused_with_file_line_and_key(value):
    text = f'[system]\nengine_user = {value}\n[compartments.a]\nmodule = "a.wat"\n'
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/s/system.toml")
    assert str(e.value).startswith('/s/system.toml:2: system.engine_user: must be "UID:GID" '
                                   'with numbers from 1 to 4294967294 (not root)')


def test_wsuper_check_refuses_a_bad_engine_user_with_exit_2(tmp_path):
    (tmp_path / "system.toml").write_text('[system]\nengine_user = "root"\n'
                                          '[compartments.a]\nmodule = "a.wat"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().endswith("system.toml:2: system.engine_user: must be \"UID:GID\" "
                                     "with numbers from 1 to 4294967294 (not root), e.g. "
                                     "\"65534:65534\"; got 'root'")
