"""wire.single_segment_copy against pycapnp's decoder; policy parsing errors."""
import struct

import pytest

import capnp_schemas
from capnp_schemas import wire
from supervisor import policy
from tests.conftest import EXAMPLES


def test_single_segment_copy_decodes_with_pycapnp_and_keeps_cap_pointers():
    calc = capnp_schemas.load(f"{EXAMPLES}/calc.capnp")
    msg = capnp_schemas.host.Gateway.schema.methods["list"].result_type
    from capnp.lib.capnp import _StructModule
    List = _StructModule(msg, "ListResults")
    segs = List.new_message(names=["a", "bb", "ccc"]).to_segments()
    out = wire.single_segment_copy(segs, (0, 0))
    assert list(List.from_bytes(out).__enter__().names) == ["a", "bb", "ccc"]
    # a struct whose pointer is a capability keeps the pointer word as is
    seg = struct.pack("<QQ", 1 << 48, wire.cap_pointer(3))
    out = wire.single_segment_copy([seg], (0, 0))
    assert struct.unpack_from("<Q", out, 16)[0] == wire.cap_pointer(3)
    assert calc  # schema loads


def test_single_segment_copy_refuses_amplification():
    # a list of 2^20 empty structs in 2 words
    tag = (1 << 20) << 2
    lst = 1 | (0 << 2) | (7 << 32) | (0 << 35)
    seg = struct.pack("<QQ", lst, tag)
    with pytest.raises(wire.WireError, match="traversal limit|malformed"):
        wire.single_segment_copy([seg], (0, 0), max_words=1000)


def test_out_of_bounds_pointer_is_a_wire_error():
    seg = struct.pack("<Q", (100 << 2) | (1 << 32))
    with pytest.raises(wire.WireError, match="outside"):
        wire.resolve([seg], (0, 0))


@pytest.mark.parametrize("text,line,fragment", [
    ('[compartments.a]\nmodule = "a.wat"\nbogus = 1\n', 3, "compartments.a.bogus: unknown key"),
    ('[compartments.a]\nexports = "X"\n', 1, "missing 'module'"),
    ('[compartments."b c"]\nmodule = "a.wat"\n', 1, "is not allowed"),
    ('[compartments.a]\nmodule = "a.txt"\n', 2, "neither .wasm nor .wat"),
    ('[compartments.a]\nmodule = "a.wat"\nexternal = true\n', 3, "only a compartment that exports"),
    ('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\nl = { host = "disk" }\n', 4,
     "unknown host capability 'disk'"),
    ('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\nl = { host = "log", compartment = "a" }\n',
     4, "exactly one of"),
    ("[system]\n", None, "no compartments declared"),
])
def test_policy_errors_name_line_key_and_reason(text, line, fragment):
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/system.toml")
    assert fragment in str(e.value)
    assert e.value.line == line


def test_nothing_is_granted_by_default_and_paths_resolve_against_the_file():
    s = policy.parse('[compartments.a]\nmodule = "m/a.wat"\n', "/srv/sys/system.toml")
    a = s.compartments["a"]
    assert a.grants == () and a.module == "/srv/sys/m/a.wat" and not a.external


def test_grant_attenuation_keys_parse_and_keep_the_grant_kind():
    s = policy.parse('[compartments.c]\nmodule = "c.wat"\nexports = "C"\n'
                     '[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'c = { compartment = "c", allow = ["x"], revocable = true, max_uses = 3, '
                     'expires_after = 1.5, calls_per_second = 2 }\n', "/x/s.toml")
    (g,) = s.compartments["a"].grants
    assert (g.kind, g.target, g.allow, g.revocable) == ("compartment", "c", ("x",), True)
    assert (g.max_uses, g.expires_after, g.calls_per_second) == (3, 1.5, 2)
    with pytest.raises(policy.PolicyError, match="max_uses: must be a whole number from 1 to "):
        policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'l = { host = "log", max_uses = 0 }\n', "/x/s.toml")


POLICY = '[grants]\ncalc = { compartment = "calc", allow = ["add"] }\n[limits]\nmemory = "1MiB"\n'
SYSTEM = ('[compartments.calc]\nmodule = "c.wat"\nexports = "C"\n'
          '[compartments.app]\nmodule = "a.wat"\npolicy = "p/client.toml"\n')


def test_a_policy_file_supplies_grants_and_limits_and_inline_limits_win():
    files = {"/s/p/client.toml": POLICY}
    s = policy.parse(SYSTEM + '[compartments.app.limits]\nhandles = 9\n', "/s/system.toml",
                     files.__getitem__)
    app = s.compartments["app"]
    assert [(g.name, g.target, g.allow) for g in app.grants] == [("calc", "calc", ("add",))]
    assert (app.limits.memory, app.limits.handles) == (1 << 20, 9)


def test_policy_file_errors_name_the_policy_file_and_line():
    bad = POLICY.replace('memory = "1MiB"', 'colour = "red"')
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(SYSTEM, "/s/system.toml", {"/s/p/client.toml": bad}.__getitem__)
    assert str(e.value).startswith("/s/p/client.toml:4: limits.colour: unknown key")
    with pytest.raises(policy.PolicyError, match="also granted by policy"):
        policy.parse(SYSTEM + '[compartments.app.grants]\ncalc = { compartment = "calc" }\n',
                     "/s/system.toml", {"/s/p/client.toml": POLICY}.__getitem__)


def test_directory_grant_keys_subdir_and_write_quota():
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'd = { host = "directory", path = "/srv", subdir = "x/y", '
                     'max_bytes_written = "1KiB" }\n', "/s/system.toml")
    (g,) = s.compartments["a"].grants
    assert (g.path, g.subdir, g.max_bytes_written) == ("/srv", "x/y", 1024)
    for bad, msg in (('subdir = "../x"', "without '..'"), ('subdir = "/x"', "without '..'")):
        with pytest.raises(policy.PolicyError, match=msg):
            policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                         f'd = {{ host = "directory", path = "/srv", {bad} }}\n', "/s/s.toml")
    with pytest.raises(policy.PolicyError, match="applies only to directory and file grants"):
        policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'l = { host = "log", max_bytes_written = 5 }\n', "/s/s.toml")


def test_system_dir_is_the_only_way_to_a_path_that_is_not_absolute():
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'd = { host = "directory", path = "${SYSTEM_DIR}/data" }\n',
                     "/srv/sys/system.toml")
    assert s.compartments["a"].grants[0].path == "/srv/sys/data"
    for bad, msg in (('"data"', "is relative"), ('"${SYSTEM_DIR}/../etc"', "contains '..'"),
                     ('"$SYSTEM_DIR/data"', "is relative")):
        with pytest.raises(policy.PolicyError, match=msg):
            policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                         f'd = {{ host = "directory", path = {bad} }}\n', "/srv/sys/s.toml")


def test_mount_names_a_directory_for_wasi_programs_only():
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'd = { host = "directory", path = "/srv", mount = "." }\n', "/s/system.toml")
    assert s.compartments["a"].grants[0].mount == "."
    for bad, msg in (('{ host = "directory", path = "/srv", mount = "/a/../b" }', "no '..'"),
                     ('{ host = "directory", path = "/srv", mount = 3 }', "must be a path"),
                     ('{ host = "log", mount = "/x" }', "applies only to directory grants")):
        with pytest.raises(policy.PolicyError, match=msg):
            policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                         f'd = {bad}\n', "/s/s.toml")


def test_environment_grants_take_args_and_vars_and_nothing_else_does():
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'env = { host = "environment", args = ["-v"], vars = { MODE = "fast" } }\n',
                     "/s/s.toml")
    (g,) = s.compartments["a"].grants
    assert (g.args, g.vars) == (("-v",), (("MODE", "fast"),))
    for bad, msg in (('{ host = "log", args = ["x"] }', "only to environment grants"),
                     ('{ host = "environment", vars = { "A=B" = "x" } }', "names without '='"),
                     ('{ host = "environment", args = [1] }', "list of strings")):
        with pytest.raises(policy.PolicyError, match=msg):
            policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                         f'e = {bad}\n', "/s/s.toml")


def test_external_limits_take_the_connection_limits_only():
    s = policy.parse('[system]\nexternal_limits = { in_flight = 256 }\n[compartments.a]\n'
                     'module = "a.wat"\n', "/s/s.toml")
    assert s.external_limits.in_flight == 256
    with pytest.raises(policy.PolicyError, match="system.external_limits.memory: unknown key"):
        policy.parse('[system]\nexternal_limits = { memory = "1MiB" }\n[compartments.a]\n'
                     'module = "a.wat"\n', "/s/s.toml")


def test_no_compartment_takes_the_name_of_the_supervisors_own_log():
    """Each compartment's log file is NAME.log beside supervisor.log: one named
    `supervisor` wrote into the supervisor's log, and `wsuper logs` showed every
    event two to four times (and that compartment's view, everyone's events)."""
    from supervisor import output
    assert output.SUPERVISOR in policy.RESERVED_NAMES
    for name in policy.RESERVED_NAMES:
        with pytest.raises(policy.PolicyError, match=f"compartments.{name}: compartment name "
                           f"'{name}' is reserved: its log file would be the supervisor's"):
            policy.parse(f'[compartments.{name}]\nmodule = "a.wat"\n', "/s/system.toml")
    policy.parse('[compartments.supervisor2]\nmodule = "a.wat"\n'
                 '[compartments.Supervisor]\nmodule = "a.wat"\n', "/s/system.toml")


def test_no_compartment_takes_the_name_every_external_client_goes_by():
    """Every client of the external socket is `external` in the audit ("caller"),
    in the supervisor's events ("compartment external did not answer ...") and to
    call probes and traces: a compartment named `external` (a plausible name for
    an adapter) made its calls and a client's the same records."""
    import inspect

    from supervisor.router import Router
    assert inspect.signature(Router.add_external).parameters["label"].default \
        == policy.CLIENT_NAME == "external"
    for where in ('[compartments.external]\nmodule = "a.wat"\n',
                  '[compartments]\nexternal = { module = "a.wat" }\n'):
        with pytest.raises(policy.PolicyError, match="compartments.external: compartment name "
                           "'external' is reserved: the audit"):
            policy.parse(where, "/s/system.toml")
    policy.parse('[compartments.external2]\nmodule = "a.wat"\n'
                 '[compartments.External]\nmodule = "a.wat"\n', "/s/system.toml")


@pytest.mark.parametrize("value, reason", [
    ('"1 TB"', "must be a size in bytes"), ("1", "must be a whole number from 65,536"),
    ("nan", "must be a whole number from 65,536"), ("true", "must be a whole number")])
def test_a_policy_files_bad_limit_is_reported_in_the_policy_file(value, reason):
    """An outside review: a policy file's limits were checked only once merged into
    the compartment's, and a bad value was reported at the system file's
    [compartments.NAME] line under compartments.NAME.limits.KEY, a key the system
    file does not have; docs/policy-reference.md: errors name the policy file, its
    line and key.  (A bad value is an error even where an inline limit overrides it:
    the file is shared, and wrong for every system that uses it.)"""
    bad = POLICY.replace('memory = "1MiB"', f"memory = {value}")
    for inline in ("", '[compartments.app.limits]\nmemory = "2MiB"\n'):
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(SYSTEM + inline, "/s/system.toml",
                         {"/s/p/client.toml": bad}.__getitem__)
        assert str(e.value).startswith(f"/s/p/client.toml:4: limits.memory: {reason}"), \
            str(e.value)


@pytest.mark.parametrize("grant, key, reason", [
    ('calc = { compartment = "nosuch" }', "grants.calc", "no compartment named 'nosuch'"),
    ('calc = { compartment = "app" }', "grants.calc", "compartment 'app' exports no interface"),
    ('x = { host = "nosuchhost" }', "grants.x", "unknown host capability 'nosuchhost'"),
    ('x = { host = "probe", on = "nobody" }', "grants.x.on", "a probe grant names"),
    ('x = { host = "probe", on = "app" }', "grants.x.on", "a compartment cannot read its own probes"),
    ('x = { host = "log", on = "calc" }', "grants.x.on", "applies only to probe grants"),
])
def test_what_a_policy_files_grant_names_is_reported_in_the_policy_file(grant, key, reason):
    """After the limits (above), the rest of a policy file's grant checks: what its
    grant names (a compartment, a host capability, a probe's `on`) was checked once
    the system's compartments were known, and reported at the system file's
    [compartments.NAME] line under compartments.NAME.grants.G, a key that file does
    not have."""
    bad = POLICY.replace('calc = { compartment = "calc", allow = ["add"] }', grant)
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(SYSTEM, "/s/system.toml", {"/s/p/client.toml": bad}.__getitem__)
    assert str(e.value).startswith(f"/s/p/client.toml:2: {key}: {reason}"), str(e.value)
    # the same grant written inline is still reported in the system file
    inline = SYSTEM.replace('policy = "p/client.toml"\n', "") + \
        f"[compartments.app.grants]\n{grant}\n"
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(inline, "/s/system.toml")
    assert str(e.value).startswith(f"/s/system.toml:7: compartments.app.{key}: {reason}"), \
        str(e.value)


def test_system_dir_alone_is_that_directory_and_other_variables_are_named_as_such():
    """`path = "${SYSTEM_DIR}"` (the system's own directory) was refused as
    "'${SYSTEM_DIR}' is relative", though "${SYSTEM_DIR}/" was that directory; and
    "${HOME}/data" or "~/data" were "relative" too, not told that no other variable
    (and no ~) is expanded."""
    s = policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     'd = { host = "directory", path = "${SYSTEM_DIR}" }\n',
                     "/srv/sys/system.toml")
    assert s.compartments["a"].grants[0].path == "/srv/sys"
    for bad in ('"${HOME}/data"', '"$SYSTEM_DIR/data"', '"~/data"', '"$XDG_DATA_HOME"'):
        with pytest.raises(policy.PolicyError, match=r"only \$\{SYSTEM_DIR\} is expanded"):
            policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                         f'd = {{ host = "directory", path = {bad} }}\n', "/srv/sys/s.toml")


def test_system_dir_names_the_same_directory_in_module_schema_and_other_paths():
    """Written as grant paths are, "${SYSTEM_DIR}/build/app.wasm" was taken as a
    directory named "${SYSTEM_DIR}" beside the system file (module file
    ".../${SYSTEM_DIR}/build/app.wasm" does not exist)."""
    s = policy.parse('[system]\naudit = "${SYSTEM_DIR}/audit.jsonl"\n'
                     '[compartments.a]\nmodule = "${SYSTEM_DIR}/build/a.wat"\n'
                     'policy = "${SYSTEM_DIR}/p/client.toml"\n', "/srv/sys/system.toml",
                     {"/srv/sys/p/client.toml": '[grants]\nlog = { host = "log" }\n'}.__getitem__)
    assert s.compartments["a"].module == "/srv/sys/build/a.wat"
    assert s.audit == "/srv/sys/audit.jsonl"
    assert [g.name for g in s.compartments["a"].grants] == ["log"]


@pytest.mark.parametrize("keys, key, reason", [
    ('args = ["-v"]', "args", "applies only to environment grants"),
    ('vars = { A = "b" }', "vars", "applies only to environment grants"),
    ('on = "a"', "on", "applies only to probe grants"),
    ('subdir = "x"', "subdir", "applies only to directory grants"),
    ('mount = "/x"', "mount", "applies only to directory grants"),
])
def test_a_host_grants_keys_on_a_grant_of_a_compartment_of_that_name_are_refused(
        keys, key, reason):
    """A compartment may be called `environment`, `probe` or `directory`: a grant of
    it that says `args`, `vars`, `on`, `subdir` or `mount` (keys of the host grants of
    that name) was taken, shown by `check` as attenuation (`e -> environment's Calc
    [args=['-v'], vars=A]`), and ignored; and `subdir`/`mount` were refused saying
    they apply only to directory and file grants, "not to 'directory'"."""
    for target in ("environment", "probe", "directory"):
        text = (f'[compartments.{target}]\nmodule = "a.wat"\nexports = "A"\n'
                '[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                f'g = {{ compartment = "{target}", {keys} }}\n')
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(text, "/s/system.toml")
        assert f"compartments.a.grants.g.{key}: {reason}" in str(e.value), str(e.value)


@pytest.mark.parametrize("keys, key", [
    ('read_only = true', "read_only"), ('path = "/srv"', "path"),
    ('max_bytes_written = 5', "max_bytes_written"),
    ('refuse_hard_links = true', "refuse_hard_links")])
def test_a_file_key_on_a_grant_of_a_compartment_named_file_says_what_it_is_granted(keys, key):
    """The keys of directory and file grants on a grant of a compartment called
    `file` or `directory` were refused saying they apply "only to directory and
    file grants, not to 'file'": the error contradicted itself (c813ab5 named the
    grant's kind for args, vars, on, subdir and mount; these were left).  It says
    the grant is one of a compartment now, and a host grant's capability."""
    for target in ("file", "directory"):
        text = (f'[compartments.{target}]\nmodule = "a.wat"\nexports = "A"\n'
                '[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                f'g = {{ compartment = "{target}", {keys} }}\n')
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(text, "/s/system.toml")
        assert f"compartments.a.grants.g.{key}: {key} applies only to directory and file " \
            f"grants (host = ...), not to a grant of compartment '{target}'" in str(e.value), \
            str(e.value)
    with pytest.raises(policy.PolicyError) as e:
        policy.parse('[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                     f'g = {{ host = "clock", {keys} }}\n', "/s/system.toml")
    assert "not to host capability 'clock'" in str(e.value), str(e.value)
