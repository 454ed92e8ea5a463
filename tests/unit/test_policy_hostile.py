"""A hostile system file, in pure logic: every number, every line, every error.

Each test here covers a class: every key that takes a number, every line the
error finder reads, every error line.  The same classes run through the real
command in tests/integration/test_bad_system.py, and fuzz/policy.py throws
random documents at all of it."""
import os
import re
import stat
import sys
from pathlib import Path

import pytest

import capnp_schemas
from compartments.limits import Limits
from supervisor import policy, probes

BASE = ('[compartments.a]\nmodule = "a.wat"\nexports = "A"\n'
        '[compartments.b]\nmodule = "b.wat"\n')


def _numeric_keys():
    """(where the key goes, its name, a size?) for every key that takes a number."""
    keys = [("system", k, False) for k in ("max_connections", "message_timeout", "audit_keep",
                                              "audit_share")]
    keys += [("system", "audit_max_size", True)]
    keys += [("external_limits", k, Limits.RANGES[k][2]) for k in sorted(policy.EXTERNAL_LIMIT_KEYS)]
    keys += [("compartment", k, False) for k in ("max_restarts", "restart_window",
                                                  "restart_delay")]
    keys += [("limits", k, size) for k, (_, _, size) in Limits.RANGES.items()]
    keys += [("grant", k, False) for k, *_ in policy.GRANT_QUOTAS]
    keys += [("file grant", "max_bytes_written", True)]
    return keys


def _document(place: str, key: str, value: str) -> tuple[str, str]:
    """A system file with `key = value` at `place`, and the dotted key an error names."""
    if place == "system":
        return f"[system]\n{key} = {value}\n" + BASE, f"system.{key}"
    if place == "external_limits":
        return f"[system.external_limits]\n{key} = {value}\n" + BASE, \
            f"system.external_limits.{key}"
    if place == "compartment":
        return BASE + f"{key} = {value}\n", f"compartments.b.{key}"
    if place == "limits":
        return BASE + f"[compartments.b.limits]\n{key} = {value}\n", \
            f"compartments.b.limits.{key}"
    if place == "grant":
        return BASE + f'[compartments.b.grants.g]\ncompartment = "a"\n{key} = {value}\n', \
            f"compartments.b.grants.g.{key}"
    return BASE + f'[compartments.b.grants.g]\nhost = "directory"\npath = "/srv"\n' \
        f"{key} = {value}\n", f"compartments.b.grants.g.{key}"


HOSTILE_NUMBERS = ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e400", "-1",
                   "99999999999999999999999999999", "-99999999999999999999999999999",
                   "true", "[]", "{}", '"1"', "0x7fffffffffffffffffff"]
HOSTILE_SIZES = ['"99999999999999999999999999 GiB"', '"١٢ MiB"', '"64 MiB MiB"', '" "',
                 '"-1"', '"nan"']


@pytest.mark.parametrize("place,key,size", _numeric_keys(),
                         ids=[f"{p}.{k}" for p, k, _ in _numeric_keys()])
def test_every_number_that_is_nan_inf_huge_or_no_number_is_refused_naming_its_key(place, key,
                                                                                   size):
    """nan passed every range check (each comparison with nan is false): a quota
    of nan was no quota at all.  Huge integers ran into OverflowError in
    `wsuper check`.  Every numeric key now goes through one check."""
    for value in HOSTILE_NUMBERS + (HOSTILE_SIZES if size else []):
        if size and value == '"1"':
            continue                      # a size may be a string: "1" is one byte
        text, dotted = _document(place, key, value)
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(text, "/x/s.toml")
        assert f": {dotted}: " in str(e.value), (value, str(e.value))
        assert e.value.line is not None and e.value.line > 1, (value, str(e.value))
        assert len(str(e.value)) < 400, str(e.value)


@pytest.mark.parametrize("place,key", [(p, k) for p, k, size in _numeric_keys() if size])
def test_a_size_out_of_range_padded_with_spaces_still_states_its_range(place, key):
    """An outside review: spaces around a size's number and unit are allowed
    ("  2 EiB "), and the range error quoted the whole string, uncut: a size
    padded with 3,000 spaces made an error line past SHOWN_ERROR, cut before
    the range it was refused for ("'2        ... (3,1xx characters)").  The value
    is shown cut, like every other value an error quotes, and the rule is said."""
    text, dotted = _document(place, key, '"2' + " " * 3000 + 'EiB"')
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert f": {dotted}: " in str(e.value), str(e.value)
    assert re.search(r"from [0-9,]+( MiB)? to [0-9,]+( PiB)?", str(e.value)), str(e.value)
    assert len(str(e.value)) < 400, str(e.value)


def test_the_numbers_that_are_allowed_still_are():
    for place, key, size in _numeric_keys():
        lo, hi = {**{k: v[:2] for k, v in Limits.RANGES.items()},
                  **{k: (lo, hi) for k, lo, hi, _ in policy.GRANT_QUOTAS},
                  "max_bytes_written": (0, policy.MAX_BYTES_WRITTEN),
                  "max_connections": (1, 100_000), "message_timeout": (0.1, 3600),
                  "audit_keep": (1, policy.AUDIT_KEEP_MOST), "audit_max_size": (1 << 20, 1 << 50),
                  "audit_share": (0.01, 1),
                  "max_restarts": (0, 1000), "restart_window": (0.1, 86_400),
                  "restart_delay": (0.0, 60)}[key]
        for value in (lo, hi):
            text, _ = _document(place, key, repr(value))
            policy.parse(text, "/x/s.toml")         # no error


def test_an_integer_of_more_digits_than_python_reads_is_a_clear_error():
    text = BASE + "[compartments.b.limits]\nhandles = " + "9" * 5000 + "\n"
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert str(e.value) == "/x/s.toml:7: invalid TOML: a number of more than 4,300 digits"


@pytest.mark.parametrize("line", [
    "[" + " " * 200_000 + "x",                # the header pattern backtracked: cubic
    "[[" + " " * 200_000 + "]",
    "[" + "a" * 100_000 + " " * 100_000 + "a]",
    "a" + ".a" * 100_000 + " =",
    "a" + " . a" * 100_000,
    '"a' * 100_000,
    '"a".' * 50_000 + "=",
])
def test_finding_an_errors_line_takes_no_time_on_hostile_lines(line):
    """Each line of the file is read to find where a key was written, even lines
    inside a multi-line string; a line of 200,000 characters once took hours.
    (Guarded by the suite's timeout, not by a timing.)"""
    text = BASE + 'x = """\n' + line + '\n"""\n'
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert e.value.line == 6 and "compartments.b.x: unknown key" in str(e.value)


@pytest.mark.parametrize("before, key", [
    ("", "'bogus'"),                                  # a literal key
    ("", '"b\\u006fgus"'),                          # a basic key with an escape
    ("", '"bogus"'),
    ("# a comment with a line separator \u2028 in it\n", "bogus"),
    ("# and one with a next line \u0085 in it\n", "bogus"),
    ('module = "a string \u2028 holding one.wat"\n', "bogus"),
    ('module = """\n[compartments.b]\nbogus = 1\n.wat"""\n', "bogus"),  # a header in a string
    ("module = \'\'\'\n[compartments.b]\nbogus = 1\n.wat\'\'\'\n", "bogus"),
    ('module = "a.wat"\ngrants.env.host = "environment"\n'
     'grants.env.args = [\n  "[compartments.b]",\n  "bogus = 1",\n]\n', "bogus"),
])
def test_an_error_names_the_line_toml_reads_its_key_on(before, key):
    """The error's line is the line the key is on as TOML reads the file: a key
    spelled quoted, literal or with escapes is that key (an error named the
    table's header, or line 1), only \\n ends a line (a U+2028 or U+0085 in a
    comment or a string moved every later error down a line), and what a string
    holds is no header or key (an error named a line inside a multi-line
    string)."""
    text = ('[compartments.a]\nexports = "A"\n' + (before or 'module = "a.wat"\n')
            + '[compartments.b]\nmodule = "b.wat"\n\n\n' + key + " = 1\n")
    if "module" not in text.split("[compartments.b]")[0]:
        text = text.replace('exports = "A"\n', 'exports = "A"\nmodule = "a.wat"\n', 1)
    lines = text.split("\n")
    want = len(lines) - lines[::-1].index(key + " = 1")      # the last: not in a string
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert "compartments.b." in str(e.value) and "unknown key" in str(e.value)
    assert e.value.line == want, str(e.value)


@pytest.mark.parametrize("header", ["['compartments'.'b'.grants]",
                                    '["compartments" . b . "grants"]',
                                    '[ compartments.b."gr\\u0061nts" ]'])
def test_an_error_in_a_table_whose_header_is_quoted_names_its_line(header):
    text = BASE + header + '\n\n\nx = { host = "nope" }\n'
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert "compartments.b.grants.x" in str(e.value)
    assert e.value.line == 9, str(e.value)


def test_a_key_of_many_dots_is_split_in_no_time():
    key = "compartments.b." + "a." * 200_000 + "z"
    where = policy._Where(BASE, "/x/s.toml")
    assert where.line_of(key) == 4       # compartments.b, the longest prefix written
    assert policy._split_key("a.b[x.y].c[.]") == ["a", "b[x.y]", "c[.]"]


def test_an_error_line_is_escaped_then_cut():
    """Escaping lengthens a line (a control character is shown as four to six
    characters): cut before it, a line reached 20,000 characters."""
    bad = "\x1b" * 10_000
    text = BASE + f'[compartments.b.grants.g]\nhost = "directory"\npath = "/{bad}"\n' \
        'read_only = true\nappend_only = true\n'
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    shown = str(e.value)
    assert shown.isprintable() and len(shown) <= policy.SHOWN_ERROR + 30, len(shown)
    many = "compartments.b." + ".".join(["\x07"] * 50_000)
    shown = str(policy.PolicyError("/x/s.toml", many, "bad"))
    assert shown.isprintable() and len(shown) <= policy.SHOWN_ERROR + 30


@pytest.mark.parametrize("index", ["#²", "#١٢", "#", "#12a", "#" + "9" * 11, "#-1", "# 1"])
def test_a_probe_function_index_is_ascii_digits(index):
    """str.isdigit took "#²", which passed `check` and then crashed `up` (int())."""
    with pytest.raises(probes.ProbeError, match="an index is '#' and digits"):
        probes.spec("c", "p", "functions", [index])
    assert probes.spec("c", "p", "functions", ["#12"]).functions == ("#12",)


@pytest.mark.parametrize("functions", ['"store_*,load_*"', '""', '","'])
def test_a_declared_probes_functions_are_a_list_as_the_reference_says(functions):
    """docs/policy-reference.md: `functions` is a list of name patterns.  A string
    passed (probes.spec splits `wsuper probe --functions a,b` at its commas), and
    `functions = ""` was no pattern at all: the probe covered every function."""
    text = BASE.replace('exports = "A"\n', 'exports = "A"\ninstrument = ["functions"]\n') + \
        f'[compartments.a.probes.p]\npoint = "functions"\nfunctions = {functions}\n'
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml")
    assert e.value.key == "compartments.a.probes.p.functions" and e.value.line == 9, str(e.value)
    assert "must be a list" in e.value.reason, str(e.value)


@pytest.mark.parametrize("ref", ["s.toml", "./s.toml", "../x/s.toml"])
def test_a_compartment_whose_policy_is_the_system_file_itself_is_told_so(ref):
    """`policy = "system.toml"` in system.toml read the file again as a policy file,
    and its own [system] table was refused as "s.toml:1: system: unknown key
    'system' (allowed here: grants, limits)": an error about the system file's
    first line, as if [system] were wrong there, never naming the key that made
    it a policy file.  Now refused at that key."""
    text = BASE.replace('exports = "A"\n', f'exports = "A"\npolicy = "{ref}"\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/x/s.toml", read_policy=lambda p: text)
    assert e.value.key == "compartments.a.policy" and e.value.line == 4, str(e.value)
    assert "is this system file itself" in e.value.reason


# ------------------------------------------------------------ schema files


def _schema(path, body, ident):
    path.write_text(f"@0x{ident:016x};\n{body}")


def test_a_schema_whose_path_is_not_utf8_is_refused_saying_so(tmp_path):
    """The parser takes a schema's name as UTF-8 text: a schema in a directory named
    in another encoding failed as "UnicodeEncodeError: 'utf-8' codec can't encode
    character '\\udcff' in position 51: surrogates not allowed"."""
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/D\xffir")
    os.mkdir(folder)
    path = os.path.join(folder, "a.capnp")
    _schema(Path(path), "struct S { a @0 :Int32; }\n", 0xd1e7afc40966bc77)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(path)
    assert e.value.path == path and e.value.reason.startswith(
        "its path is not UTF-8, which the Cap'n Proto parser needs"), str(e.value)


def test_what_a_schema_reads_is_every_import_and_embed_and_no_more(tmp_path):
    (tmp_path / "sub").mkdir()
    _schema(tmp_path / "a.capnp", '# import "comment.capnp"\nusing B = import "sub/b.capnp";\n'
            'const s :Text = "import \\"string.capnp\\"";\n'
            'using C = import "/capnp/c++.capnp";\n', 0xd0a1b2c3d4e5f601)
    _schema(tmp_path / "sub" / "b.capnp", 'using A = import "../a.capnp";\n'
            'const d :Data = embed "blob";\nusing N = import "missing.capnp";\n',
            0xd0a1b2c3d4e5f602)
    (tmp_path / "sub" / "blob").write_bytes(b"\0\1")
    found = capnp_schemas.closure(str(tmp_path / "a.capnp"),
                                  capnp_schemas.import_path(str(tmp_path / "a.capnp")))
    cxx = os.path.join(capnp_schemas.IMPORT_PATH[0], "capnp", "c++.capnp")
    assert found[0] == (str(tmp_path / "a.capnp"), None, None)
    assert sorted(found[1:]) == sorted([
        (str(tmp_path / "sub" / "b.capnp"), str(tmp_path / "a.capnp"), 3),
        (cxx, str(tmp_path / "a.capnp"), 5),
        (str(tmp_path / "sub" / "blob"), str(tmp_path / "sub" / "b.capnp"), 3)])


def test_a_file_named_many_times_is_looked_up_and_read_once(tmp_path, monkeypatch):
    """A schema naming one file 20,000 times, in as many spellings as it likes
    (`b.capnp`, `./b.capnp`, `/b.capnp` through the import path), had each name
    looked up again (several system calls each; load() then read the file once
    per name): seconds per thousand names.  Each file is looked up once."""
    _schema(tmp_path / "b.capnp", "struct B {}\n", 0xd0a1b2c3d4e5f611)
    names = ["b.capnp", "./b.capnp", "/b.capnp", "x/../b.capnp"]
    _schema(tmp_path / "a.capnp", "".join(f'using B{i} = import "{names[i % 4]}";\n'
                                          for i in range(20000)), 0xd0a1b2c3d4e5f610)
    looked = []
    lexists = os.path.lexists
    monkeypatch.setattr(os.path, "lexists", lambda p: looked.append(p) or lexists(p))
    parsed: list = []
    found = capnp_schemas.closure(str(tmp_path / "a.capnp"),
                                  capnp_schemas.import_path(str(tmp_path / "a.capnp")), parsed)
    assert [f for f, _, _ in found] == [str(tmp_path / "a.capnp"), str(tmp_path / "b.capnp")]
    assert len(looked) < 10, len(looked)
    assert len(parsed) < 10, len(parsed)


def test_the_files_one_schema_reads_are_bounded_in_bytes_together(tmp_path, monkeypatch):
    """Each file a schema reads is at most MAX_SCHEMA_BYTES, and load() holds all of
    them at once and copies them to its private directory: a schema embedding
    1,000 sparse files of 16 MiB (free to make) took 16 GiB of the supervisor's
    memory and as much of its temporary directory (40 of them: 1.5 GB, 611 MB
    copied, 19 s).  Together they are bounded; the file that goes past is named
    where it is embedded, and nothing is copied or parsed."""
    for i in range(6):
        with open(tmp_path / f"b{i}.bin", "wb") as f:
            f.truncate(capnp_schemas.MAX_SCHEMA_BYTES)
    _schema(tmp_path / "a.capnp", "".join(f'const c{i} :Data = embed "b{i}.bin";\n'
                                          for i in range(6)), 0xd0a1b2c3d4e5f620)
    read = []
    read_regular = capnp_schemas.read_regular
    monkeypatch.setattr(capnp_schemas, "read_regular", lambda *a, **k: (
        lambda data: read.append(len(data or b"")) or data)(read_regular(*a, **k)))

    def parse_copy(path, imports, contents):
        raise AssertionError(f"copied {sum(map(len, contents.values())):,} bytes")
    monkeypatch.setattr(capnp_schemas, "_parse_copy", parse_copy)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "a.capnp"), 5)
    assert f"embeds {tmp_path / 'b3.bin'}" in e.value.reason
    assert "bytes together" in e.value.reason
    assert sum(read) <= 4 * capnp_schemas.MAX_SCHEMA_BYTES + 4096, read


def test_an_error_in_a_file_found_in_an_import_directory_names_that_file(tmp_path):
    """The parser names a file by its path beneath the directory it was found in: a
    syntax error in `inc/x/q.capnp`, imported as "/x/q.capnp" through an import
    directory, was said to be in `x/q.capnp` beside the schema, a file that does
    not exist (or another one).  The error names the file that was read."""
    (tmp_path / "s").mkdir()
    (tmp_path / "inc" / "x").mkdir(parents=True)
    _schema(tmp_path / "inc" / "x" / "q.capnp", "struct Q { a @0 :Int32 }\n",
            0xd0a1b2c3d4e5f631)
    _schema(tmp_path / "inc" / "x" / "r.capnp", 'using import "q.capnp".Q;\n'
            "struct R { q @0 :Q; }\n", 0xd0a1b2c3d4e5f632)
    for name in ("q", "r"):
        _schema(tmp_path / "s" / "m.capnp", f'using X = import "/x/{name}.capnp";\n'
                f"struct M {{ b @0 :X.{name.upper()}; }}\n", 0xd0a1b2c3d4e5f630)
        with pytest.raises(capnp_schemas.SchemaError) as e:
            capnp_schemas.load(str(tmp_path / "s" / "m.capnp"), [str(tmp_path / "inc")])
        assert (e.value.path, e.value.line) == (str(tmp_path / "inc" / "x" / "q.capnp"), 2)


def test_the_ids_a_schema_declares_are_its_written_ids_and_no_more():
    """An id is one declaration (capnp_schemas._claim): what counts as one written
    is `@0x` and 16 hex digits with the top bit set, outside comments and strings,
    with the line it is on; an ordinal written in hex (`@0x1`) is none."""
    text = (b'@0xd1c3f0a2b4e5f001;  # not @0xd1c3f0a2b4e5f002\n'
            b'const s :Text = "@0xd1c3f0a2b4e5f003";\n'
            b'struct S @0xd1c3f0a2b4e5f004 { a @0x0 :UInt8; b @0x1 :UInt8; }\n'
            b'# "an unended string in a comment\nstruct T @0xd1c3f0a2b4e5f005 {}\n')
    assert capnp_schemas._written_ids(text) == {0xd1c3f0a2b4e5f001: 1, 0xd1c3f0a2b4e5f004: 3,
                                                0xd1c3f0a2b4e5f005: 5}


@pytest.mark.parametrize("how", ["import", "embed"])
@pytest.mark.parametrize("kind", ["fifo", "zero", "directory"])
def test_a_schema_that_reads_a_file_that_never_ends_is_refused_naming_it(tmp_path, how, kind):
    """The parser waited for ever on a FIFO (60 s, then a line of 1,000
    characters with no key) and read /dev/zero to the end."""
    target = tmp_path / "t"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "zero":
        os.symlink("/dev/zero", target)
    else:
        target.mkdir()
    _schema(tmp_path / "a.capnp", f'\nconst x :Data = {how} "t";\n' if how == "embed"
            else '\nusing T = import "t";\n', 0xd0a1b2c3d4e5f603)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "a.capnp"), 3)
    assert e.value.reason.startswith(f"{how}s {target}, which ")
    assert stat.S_ISREG(os.stat(tmp_path / "a.capnp").st_mode)


def test_a_schema_file_that_is_too_large_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(capnp_schemas, "MAX_SCHEMA_BYTES", 1000)
    _schema(tmp_path / "a.capnp", "# " + "x" * 2000 + "\n", 0xd0a1b2c3d4e5f604)
    with pytest.raises(capnp_schemas.SchemaError, match="more than 1,000"):
        capnp_schemas.load(str(tmp_path / "a.capnp"))


def test_a_key_of_too_many_dotted_parts_is_refused_before_tomllib_reads_it():
    """tomllib takes time cubic in a dotted key's parts: 20 s for 40,000, hours
    for a file of 16 MiB.  Such a key is refused first, at its line; what a
    string holds is no key."""
    ok = BASE + "a" + ".a" * (policy.MAX_KEY_PARTS - 1) + " = 1.5\n"
    with pytest.raises(policy.PolicyError, match="unknown key 'a'"):
        policy.parse(ok, "/x/s.toml")
    for text, line in ((BASE + "\n" + "a" + " . a" * 200_000 + " = 1\n", 7),
                       (BASE + "[" + "a." * 200_000 + "a]\n", 6),
                       (BASE + "x = { " + '"a".' * 200_000 + "b = 1 }\n", 6),
                       ("[compartments." + "b." * 40 + "c]\n" + BASE, 1)):
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(text, "/x/s.toml")
        assert str(e.value) == f"/x/s.toml:{line}: a dotted key of more than 32 parts"
    for quoted in ('x = """\n' + "a." * 100 + '\n"""\n', "x = '''\n" + "a." * 100 + "\n'''\n",
                   'x = "' + "a." * 100 + '"\n', "x = '" + "a." * 100 + "'\n",
                   "x = 1 # " + "a." * 100 + "\n"):
        with pytest.raises(policy.PolicyError, match="compartments.b.x: unknown key"):
            policy.parse(BASE + quoted, "/x/s.toml")


@pytest.mark.parametrize("text", ['"\\' * 100_000, '\\"""\n' * 50_000, "'" * 200_001,
                                  '"""\\', "x = '''" + "a" * 200_000])
def test_strings_never_closed_are_scanned_once(text):
    """The scan for dotted keys tried an unclosed string again from each next
    character: 80 KB of `"\\` took 17 s.  (Guarded by the suite's timeout.)"""
    with pytest.raises(policy.PolicyError, match="invalid TOML"):
        policy.parse(text, "/x/s.toml")


def test_a_schema_with_strings_never_closed_is_scanned_once(tmp_path):
    _schema(tmp_path / "x.capnp", "#\n" + '"\\' * 100_000, 0xd0a1b2c3d4e5f605)
    assert capnp_schemas.closure(str(tmp_path / "x.capnp")) == \
        [(str(tmp_path / "x.capnp"), None, None)]


@pytest.mark.parametrize("between", [" # why\n  ", "\n# one\n#two \"x\"\n", "#\n", "\t\r\n\f"])
@pytest.mark.parametrize("how", ["import", "embed"])
def test_a_comment_between_import_and_its_file_hides_no_file(tmp_path, how, between):
    """The parser takes comments between `import` (or `embed`) and its file name as it
    takes them between any two tokens; the scan took only spaces there, and missed
    the file: a FIFO so named hung the parse (60 s), and the file was kept out of no
    writable grant.  A string inside such a comment is no file name."""
    os.mkfifo(tmp_path / "t")
    (tmp_path / "fake").write_text("")
    use = "const x :Data = " if how == "embed" else "using T = "
    _schema(tmp_path / "a.capnp", f'\n{use}{how}{between}"t";\n', 0xd0a1b2c3d4e5f606)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "a.capnp"), 3)
    assert e.value.reason.startswith(f"{how}s {tmp_path / 't'}, which is a FIFO")


def test_a_string_inside_a_comment_after_import_is_not_its_file(tmp_path):
    (tmp_path / "fake.capnp").write_text("")
    _schema(tmp_path / "b.capnp", "struct B {}\n", 0xd0a1b2c3d4e5f607)
    _schema(tmp_path / "a.capnp", 'using B = import # "fake.capnp"\n  "b.capnp";\n',
            0xd0a1b2c3d4e5f608)
    assert [f for f, _, _ in capnp_schemas.closure(str(tmp_path / "a.capnp"))] == \
        [str(tmp_path / "a.capnp"), str(tmp_path / "b.capnp")]
    capnp_schemas.load(str(tmp_path / "a.capnp"))


@pytest.mark.parametrize("name", ["b.capnp", "b.schema", "sub/b", "b.capnp.txt"])
def test_an_error_in_an_imported_file_names_it_and_its_line(tmp_path, name):
    """An imported file whose name does not end in .capnp had its error shown as
    the parser printed it, under the importing file: its line counted from 0."""
    (tmp_path / "sub").mkdir()
    (tmp_path / name).write_text("@0xd0a1b2c3d4e5f60a;\n\nstruct B { x @0 :Int32 }\n")
    _schema(tmp_path / "a.capnp", f'using B = import "{name}";\n', 0xd0a1b2c3d4e5f609)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / name), 3), str(e.value)
    assert e.value.reason == "Parse error."


@pytest.mark.parametrize("text, line, column, char", [
    ("\ufeff[system]\n", 1, 1, "U+FEFF ZERO WIDTH NO-BREAK SPACE, a byte order mark"),
    ("[system]\nschemas\u00a0= []\n", 2, 8, "U+00A0 NO-BREAK SPACE"),
    ("[system]\n\u200b[compartments.a]\n", 2, 1, "U+200B ZERO WIDTH SPACE"),
    ('[compartments.c\u0430lc]\nmodule = "a.wat"\n', 1, 16,
     "U+0430 CYRILLIC SMALL LETTER A")])
def test_a_toml_error_at_a_character_past_ascii_names_it(text, line, column, char):
    """A byte order mark, a no-break or zero-width space (an editor's, a web page's)
    or a Cyrillic letter in a key cannot be told from what it passes for: the error
    said only "Invalid statement (at line 1, column 1)" of a line that read
    `[system]`, or "Expected '=' after a key" of `schemas = []`."""
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text)
    assert e.value.line == line
    assert f"(column {column} holds {char}, which may be invisible" in str(e.value)
    assert str(e.value).isprintable() and str(e.value).isascii()


def test_a_toml_error_elsewhere_names_no_character():
    """A character past ASCII in a string or a comment is TOML's: no note names it."""
    with pytest.raises(policy.PolicyError) as e:
        policy.parse('a = "\u00a0" # \u200b\nb = \n')
    assert e.value.line == 2 and "holds U+" not in str(e.value)


def test_a_schema_error_at_a_byte_that_is_not_utf8_names_the_byte(tmp_path):
    """A schema whose line holds a byte that is not UTF-8 (0xFF in a name: a file
    saved in Latin-1) was said to hold "U+FFFD REPLACEMENT CHARACTER" there (its
    text was decoded with "replace"), a character the file does not hold and an
    operator searching for it would not find: the byte itself is named."""
    (tmp_path / "z.capnp").write_bytes(b"@0xd0a1b2c3d4e5f651;\n# \xe9 caf\xc3\xa9\n"
                                       b"interface C\xfflc { f @0 () -> (); }\n")
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "z.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "z.capnp"), 3), str(e.value)
    assert "column 12 holds the byte 0xFF, which is not UTF-8" in e.value.reason, e.value.reason
    assert "FFFD" not in e.value.reason, e.value.reason


def test_a_schema_error_at_a_character_past_ascii_names_it(tmp_path):
    """The parser says "Parse error." of a line with a zero-width space between two
    tokens, or a no-break space for a space: the character is named, not one that
    a string or a comment on the line holds."""
    _schema(tmp_path / "z.capnp", '# \u00a0\nstruct Z {}\n'
            'const s :Text = "\u00a0"; # \u200b\nconst t :Int32 =\u200b 1; # \u00a0\n',
            0xd0a1b2c3d4e5f650)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "z.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "z.capnp"), 5), str(e.value)
    assert e.value.reason.startswith("Parse error. (column 17 holds U+200B ZERO WIDTH "
                                     "SPACE, which may be invisible"), e.value.reason


@pytest.mark.parametrize("grant, shown", [
    ('{ compartment = "c\u0430lc" }', "no compartment named 'c\\u0430lc' (declared: calc, app)"),
    ('{ host = "l\u043eg" }', "unknown host capability 'l\\u043eg' (available: log,")])
def test_an_error_shows_a_letter_of_another_script_escaped(grant, shown):
    """A value from the file that passes for another, a Cyrillic letter in place of a
    Latin one, was shown as it is: "no compartment named 'cаlc' (declared: calc,
    app)" read as if calc were not declared.  Every error line shows what is past
    ASCII escaped, as paths are."""
    text = ('[compartments.calc]\nmodule = "c.wat"\nexports = "Calc"\n'
            f'[compartments.app]\nmodule = "a.wat"\ngrants.x = {grant}\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text)
    assert shown in str(e.value) and str(e.value).isascii(), str(e.value)
    assert e.value.line == 6


@pytest.mark.parametrize("name", ["caf\u00e9", "c\u0430lc", "na\u00efve", "a\U0001f600"])
def test_a_name_an_error_shows_escaped_can_be_copied_back_into_the_file(name):
    """An error showed a character past ASCII as Python escapes one: 'caf\\xe9' for
    U+00E9 (and U+00EF as \\xef), which no TOML string takes ("Unescaped '\\'
    in a string"), while the same character in a path is \\u00e9 (quoted,
    JSON's form).  Each is shown as TOML writes it now: the name copied from the
    error into a string of the file is the name the file holds."""
    import tomllib
    text = ('[compartments.calc]\nmodule = "c.wat"\nexports = "Calc"\n'
            f'[compartments.app]\nmodule = "a.wat"\ngrants.x = {{ compartment = "{name}" }}\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text)
    shown = re.search(r"no compartment named '([^']*)'", str(e.value)).group(1)
    assert shown.isascii() and shown != name, str(e.value)
    assert tomllib.loads(f'n = "{shown}"\n')["n"] == name, shown


def test_an_error_of_the_parsers_own_source_names_the_schema_without_a_line():
    text = ("terminate called after throwing an instance of 'kj::ExceptionImpl'\n"
            "  what():  kj/filesystem-disk-unix.c++:1703: failed: open(/x): Permission denied\n")
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas._check_parsed("/s/a.capnp", 134, text)
    assert (e.value.path, e.value.line, e.value.reason) == \
        ("/s/a.capnp", None, "open(/x): Permission denied")


@pytest.mark.parametrize("how", ["import", "embed"])
def test_a_name_leading_above_where_the_parser_reads_is_refused_naming_it(tmp_path, how):
    """The parser reads nothing above the schema's directory: `import "../x"` in a
    file it imports was refused with "expected parts.size() > 0 [0 > 0]; can't use
    \\"..\\" to break out of starting directory", naming the schema and no line.
    Inside that directory, `..` is fine."""
    n = 0x10 if how == "import" else 0x20        # one id to one file in a process
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "outside.capnp").write_text(f"@{0xd0a1b2c3d4e5f60b + n:x};\nstruct O {{}}\n")
    (tmp_path / "top" / "blob").write_text("x")
    _schema(tmp_path / "top" / "sub" / "b.capnp", 'using A = import "../ok.capnp";\n'
            'const d :Data = embed "../blob";\n'
            + ('using O = import "../../outside.capnp";\nstruct B { o @0 :O.O; }\n'
               if how == "import" else 'const e :Data = embed "../../outside.capnp";\n'),
            0xd0a1b2c3d4e5f60c + n)
    _schema(tmp_path / "top" / "ok.capnp", "struct Ok {}\n", 0xd0a1b2c3d4e5f60d + n)
    _schema(tmp_path / "top" / "a.capnp", 'using B = import "sub/b.capnp";\n'
            "const x :Data = B.d;\n", 0xd0a1b2c3d4e5f60e + n)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "top" / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "top" / "sub" / "b.capnp"), 4)
    assert e.value.reason == (f'{how} ../../outside.capnp leads above {tmp_path / "top"}, the '
                              "directory the parser reads it beneath: it reads nothing "
                              "outside that directory")
    # what stays inside is read as before
    _schema(tmp_path / "top" / "c.capnp", 'using B = import "sub/../ok.capnp";\n'
            'const x :Data = embed "sub/../blob";\n', 0xd0a1b2c3d4e5f60f + n)
    assert capnp_schemas.load(str(tmp_path / "top" / "c.capnp")).x == b"x"


ABOVE = ["/../outside.capnp", "/sub/../../outside.capnp", "//../x"]


@pytest.mark.parametrize("how", ["import", "embed"])
@pytest.mark.parametrize("name", ABOVE)
def test_an_absolute_name_leading_above_the_import_path_is_refused_naming_it(tmp_path, how,
                                                                            name):
    """An absolute name is read beneath a directory of the import path, and the
    parser reads nothing above it: `import "/../x.capnp"` was read here from beside
    the schema's directory (its checks, its imports) and then refused by the parser
    with "can't use \"..\" to break out of starting directory", naming the schema
    and no line.  Inside the directory, `..` is fine."""
    # one id to one file in a process
    n = (0x40 if how == "import" else 0x80) + 0x10 * ABOVE.index(name)
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "outside.capnp").write_text(f"@{0xd0a1b2c3d4e5f60b + n:x};\nstruct O {{}}\n")
    (tmp_path / "top" / "blob").write_text("x")
    _schema(tmp_path / "top" / "ok.capnp", "struct Ok {}\n", 0xd0a1b2c3d4e5f60d + n)
    use = f'using O = import "{name}";\n' if how == "import" else \
        f'const e :Data = embed "{name}";\n'
    _schema(tmp_path / "top" / "a.capnp", 'using A = import "/sub/../ok.capnp";\n' + use,
            0xd0a1b2c3d4e5f60e + n)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "top" / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "top" / "a.capnp"), 3)
    assert e.value.reason == (f"{how} {name} leads above the import path's directories, "
                              "which the parser reads it beneath: it reads nothing outside "
                              "them")
    # what stays inside is read as before
    _schema(tmp_path / "top" / "c.capnp", 'using B = import "/sub/../ok.capnp";\n'
            'const x :Data = embed "/sub/../blob";\n', 0xd0a1b2c3d4e5f60f + n)
    assert capnp_schemas.load(str(tmp_path / "top" / "c.capnp")).x == b"x"


def test_a_schema_that_crashes_the_parser_is_refused_saying_so(tmp_path):
    """The parser recurses on nested types: 3,000 nested lists overflow its stack
    (in the child that checks a schema first).  That said 'the schema parser
    failed (exit -11)'."""
    t = "Int32"
    for _ in range(3000):
        t = f"List({t})"
    _schema(tmp_path / "deep.capnp", f"struct S {{ l @0 :{t}; }}\n", 0xd0a1b2c3d4e5f630)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "deep.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "deep.capnp"), None)
    assert e.value.reason.startswith("the schema parser crashed (SIG"), \
        e.value.reason


def test_the_child_that_checks_a_schema_is_bounded_in_memory_and_says_so(tmp_path, monkeypatch):
    """The child that checks a schema had a time limit only: what the parser makes
    of a file (constants, nested types) took as much memory as it liked, in the
    child and then in the supervisor that loads the schema after it.  The child may
    map PARSE_MEMORY beyond what it began with (here a few MiB, so that 12 MB of
    constants are too much, pycapnp's own loading counted), and running out is
    said as such.  By a new interpreter, whatever runs the test: with pytest -n 0
    the test process runs one thread, so the check forked it, and a fork has
    pycapnp loaded already (the bound counts from what the child had mapped when
    it began): the 40 MiB were all the parser's, 12 MB of constants fit in them,
    and the schema loaded."""
    small = capnp_schemas.PARSE_BOUND.replace(str(capnp_schemas.PARSE_MEMORY), str(40 << 20))
    assert small != capnp_schemas.PARSE_BOUND
    monkeypatch.setattr(capnp_schemas, "PARSE_BOUND", small)
    monkeypatch.setattr(capnp_schemas, "_one_thread", lambda: False)
    data = "ab" * (2 << 20)
    _schema(tmp_path / "big.capnp", f'const x :Data = 0x"{data}";\n'
            f'const y :List(Data) = [0x"{data}", 0x"{data}"];\n', 0xd0a1b2c3d4e5f631)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "big.capnp"))
    assert e.value.reason.startswith("the schema parser ran out of memory reading it"), \
        e.value.reason


_NAME_PLACES = {
    "compartment": lambda n: f'[compartments.{n}]\nmodule = "x.wat"\n' + BASE,
    "grant": lambda n: BASE + f'[compartments.b.grants]\n{n} = {{ host = "clock" }}\n',
    "probe": lambda n: BASE + f'[compartments.b.probes.{n}]\npoint = "calls"\n',
}


@pytest.mark.parametrize("place", sorted(_NAME_PLACES))
def test_every_names_error_states_the_rule_the_name_is_held_to(place):
    """Compartment, grant and probe names are held to one rule (a letter or '_'
    first): the compartment's and the probe's errors said "starting with a letter"
    of names that may start with '_', and a grant's said nothing at all."""
    document = _NAME_PLACES[place]
    policy.parse(document("_x-1"), "/srv/system.toml")          # '_' first is fine
    for bad in ("-x", "1x", "x" * 65):
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(document(bad), "/srv/system.toml")
        assert "(letters, digits, '_' and '-', starting with a letter or '_', at most 64)" \
            in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", [b"\xff", b"\x00"], ids=["not UTF-8", "NUL"])
def test_a_byte_the_file_may_not_hold_is_said_with_its_line(tmp_path, bad):
    """`wsuper: error: FILE:LINE: ...` (policy-reference.md): a byte that is not
    UTF-8 was said as 'FILE: ... (byte 27)', with no line; in a policy file, the
    line the system file names it on is the one shown, and the reason has its own."""
    (tmp_path / "system.toml").write_bytes(
        b'[compartments.a]\n\nmodule = "' + bad + b'a.wat"\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.read(str(tmp_path / "system.toml"))
    assert e.value.line == 3 and f"{tmp_path / 'system.toml'}:3: " in str(e.value)
    (tmp_path / "p.toml").write_bytes(b'[grants]\n\nlog = { host = "' + bad + b'log" }\n')
    (tmp_path / "system.toml").write_text('[compartments.a]\nmodule = "a.wat"\n'
                                          'policy = "p.toml"\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.read(str(tmp_path / "system.toml"))
    assert f"{tmp_path / 'p.toml'}:3: " in str(e.value) or (
        "compartments.a.policy" in str(e.value) and "(line 3, byte 26)" in str(e.value))


@pytest.mark.parametrize("value,size", [("0", 0), ('"0"', 0), ('"0 MiB"', 0), ('"0B"', 0),
                                        ('"1MiB"', 1 << 20), ("1048576", 1 << 20),
                                        ('"1048576 GiB"', 1 << 50), ("1048575", None),
                                        ('"1023 KiB"', None), ("1125899906842625", None),
                                        ('"2000000 GiB"', None), ("-1", None), ("true", None),
                                        ("0.0", None), ('"64 PiB"', None), ("[]", None)])
def test_audit_max_size_is_0_or_from_1_mib_to_1_pib_however_written(value, size):
    """policy-reference.md: a size 1 MiB .. 1 PiB, or 0 (never rotated). "0 MiB" was
    refused as below 1 MiB, and a size below it did not say that 0 would do.  Every
    refusal states that rule: one past 1 PiB, -1 or true said "from 0 to
    1,125,899,906,842,624", as if 512 would do."""
    text = f"[system]\naudit_max_size = {value}\n" + BASE
    if size is None:
        with pytest.raises(policy.PolicyError, match="system.audit_max_size") as e:
            policy.parse(text, "/srv/system.toml")
        assert "must be 0 (never rotated) or a size from 1 MiB to 1 PiB" in str(e.value)
        assert "from 0 to" not in str(e.value) and e.value.line == 2, str(e.value)
        if value in ("1048575", '"1023 KiB"'):
            with pytest.raises(policy.PolicyError, match=r"must be 0 \(never rotated\) or"):
                policy.parse(text, "/srv/system.toml")
    else:
        assert policy.parse(text, "/srv/system.toml").audit_max_size == size


@pytest.mark.parametrize("tail", ["garbage = [\n", "garbage = [", "garbage = [1,\n\n",
                                  'garbage = """\n'])
def test_a_file_that_ends_in_the_middle_of_a_value_is_said_with_a_line(tail):
    """tomllib says "(at end of document)" with no line: the error was 'FILE:
    invalid TOML: ...', the one kind of error without FILE:LINE.  It is the last."""
    text = BASE + tail
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/srv/system.toml")
    assert e.value.line == text.count("\n") + (not text.endswith("\n")) > 5, str(e.value)
    assert str(e.value).startswith(f"/srv/system.toml:{e.value.line}: invalid TOML: ")


@pytest.mark.parametrize("change", ["not UTF-8", "gone", "a directory"])
def test_a_system_file_changed_before_its_error_line_is_found_is_no_traceback(tmp_path, change):
    """What `up` would refuse (`check` says it, cli._refused_by_up) reads the system
    file again to find the line of the key: a file changed since it was loaded (not
    UTF-8 now, removed, a directory) raised its own PolicyError out of `check`, a
    traceback.  The problem is said, without a line."""
    from supervisor import cli
    from tests.conftest import EXAMPLES
    logs = tmp_path / "logs"
    logs.mkdir()
    os.chmod(logs, 0o777)                        # a log directory others may write: refused
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[system]\nlogs = "{logs}"\n[compartments.app]\n'
                           f'module = "{EXAMPLES}/hello.wat"\n')
    system = policy.load(str(system_file))
    problem = cli._refused_by_up(system)
    assert problem.key == "system.logs" and problem.line == 2, problem
    system_file.unlink()
    if change == "not UTF-8":
        system_file.write_bytes(b"\xff\xfe [system]\n")
    elif change == "a directory":
        system_file.mkdir()
    problem = cli._refused_by_up(system)
    assert isinstance(problem, policy.PolicyError), problem
    assert problem.key == "system.logs" and "must belong to you" in str(problem), problem


@pytest.mark.parametrize("name", ['"x.y"', "'x.y'", '"g[0]"', '"g]"', '"["', '"a.b[1]"',
                                  '"log.x"', '"a"."b.c"'])
def test_an_error_about_a_key_of_a_dot_or_a_bracket_names_its_line(name):
    """The error's key was split again at its dots and brackets to find its line: a
    key written `"x.y" = 1` (one part, with a dot) or a grant named "g]" was not
    found, and the error named its table's line, or no line at all."""
    for text in (BASE + "[system]\n\n\n" + f"{name} = 1\n",
                 BASE + "[compartments.b.grants]\nlog = { host = \"log\" }\n\n" +
                 f"{name} = {{ host = \"log\" }}\n"):
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(text, "/x/s.toml")
        assert e.value.line == text.count("\n"), str(e.value)


def test_a_standard_stream_file_grant_is_read_or_appended_unless_it_says_otherwise():
    """stdin is read only, stdout and stderr append only (what a WASI program does
    with them); a file grant of another name, or one that says, keeps its own."""
    text = BASE + (
        '[compartments.b.grants]\n'
        'stdin = { host = "file", path = "/x/in" }\n'
        'stdout = { host = "file", path = "/x/out" }\n'
        'stderr = { host = "file", path = "/x/err", append_only = false }\n'
        'other = { host = "file", path = "/x/other" }\n'
        'log = { host = "log" }\n')
    grants = {g.name: (g.read_only, g.append_only)
              for g in policy.parse(text, "/x/s.toml").compartments["b"].grants}
    assert grants == {"stdin": (True, False), "stdout": (False, True),
                      "stderr": (False, False), "other": (False, False), "log": (False, False)}


@pytest.mark.parametrize("second", ["x.capnp", "./x.capnp", "sub/../x.capnp", "/sys/x.capnp"])
def test_a_schema_listed_twice_is_named_as_listed_twice(second):
    """The same schema file listed twice (under any spelling of its path) failed at
    load with "interface Calc is declared in both /sys/x.capnp and /sys/x.capnp",
    one file named as if it were two.  It is refused where it is listed again,
    naming where it was listed first."""
    text = f'[system]\nschemas = ["x.capnp", "y.capnp", "{second}"]\n' + BASE
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/sys/system.toml")
    assert e.value.key == "system.schemas[2]" and e.value.line == 2
    assert "/sys/x.capnp is listed already, at system.schemas[0]" in str(e.value)


@pytest.mark.parametrize("how", ["import", "embed"])
@pytest.mark.parametrize("via", ["file", "directory", "absolute"])
def test_a_name_leading_outside_through_a_symbolic_link_is_refused_naming_it(tmp_path, how,
                                                                           via):
    """A name inside the schema's directory that is a symbolic link to a file outside
    it (`embed "pw"`, pw -> /etc/passwd; or lib -> /elsewhere, `import "lib/x"`)
    passed every check: `wsuper check` accepted it and its parser read the file
    outside, while `wsuper up`, whose parser may read only beneath the schema's
    directories (Landlock), refused it with "openat(fd, path, O_RDONLY):
    Permission denied; path = pw", naming no line and no reason.  Refused here,
    whichever command, naming the file, the line and where the link leads."""
    n = {"import": 0, "embed": 0x100}[how] + {"file": 0, "directory": 0x10,
                                               "absolute": 0x20}[via]
    (tmp_path / "top").mkdir()
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "elsewhere" / "x.capnp"
    outside.write_text(f"@{0xd0a1b2c3d4e5f70b + n:x};\nstruct O {{}}\n")
    if via == "file":
        os.symlink(outside, tmp_path / "top" / "x.capnp")
        name = "x.capnp"
    else:
        os.symlink(tmp_path / "elsewhere", tmp_path / "top" / "lib")
        name = "lib/x.capnp" if via == "directory" else "/lib/x.capnp"
    use = f'using O = import "{name}";\nstruct B {{ o @0 :O.O; }}\n' if how == "import" \
        else f'const e :Data = embed "{name}";\n'
    (tmp_path / "top" / "blob").write_text("x")
    _schema(tmp_path / "top" / "a.capnp", 'const d :Data = embed "blob";\n' + use,
            0xd0a1b2c3d4e5f70e + n)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "top" / "a.capnp"))
    assert (e.value.path, e.value.line) == (str(tmp_path / "top" / "a.capnp"), 3)
    assert e.value.reason.startswith(f"{how} {name} leads outside {tmp_path / 'top'} through "
                                     f"a symbolic link (to {outside})")
    # a link that stays inside is read as before
    os.symlink("blob", tmp_path / "top" / "inside")
    _schema(tmp_path / "top" / "c.capnp", 'const x :Data = embed "inside";\n',
            0xd0a1b2c3d4e5f70f + n)
    assert capnp_schemas.load(str(tmp_path / "top" / "c.capnp")).x == b"x"


@pytest.mark.parametrize("name, says, want", [
    # a false of the other key is the default said aloud: the attenuation stays
    ("stdout", "read_only = false", (False, True)),
    ("stderr", "read_only = false", (False, True)),
    ("stdin", "append_only = false", (True, False)),
    # only a key that contradicts the attenuation lifts it
    ("stdout", "append_only = false", (False, False)),
    ("stdout", "read_only = true", (True, False)),
    ("stdin", "read_only = false", (False, False)),
    ("stdin", "append_only = true", (False, True)),
])
def test_a_standard_stream_file_grant_keeps_its_attenuation_unless_it_says_the_opposite(
        name, says, want):
    """`stdout = { ..., read_only = false }` (the grant is written to, not only read)
    made the grant the whole File: overwritten, truncated and read, as if it had
    said `append_only = false`; so did `append_only = false` for stdin."""
    text = BASE + ('[compartments.b.grants]\n'
                   f'{name} = {{ host = "file", path = "/x/f", {says} }}\n')
    (g,) = policy.parse(text, "/x/s.toml").compartments["b"].grants
    assert (g.read_only, g.append_only) == want


@pytest.mark.parametrize("system_keys, deciding, key, said", [
    # the audit is a module, the system file, a schema or a policy file
    ('audit = "calc.wat"', {}, "system.audit", "is compartment calc's module"),
    ('audit = "system.toml"', {}, "system.audit", "is the system file"),
    ('audit = "calc.capnp"', {}, "system.audit", "is the schema file"),
    ('audit = "p.toml"', {"policy": "p.toml"}, "system.audit", "is the policy file"),
    # ... or its rotation reaches one (AUDIT.N, .AUDIT.rotating)
    ('audit = "p"', {"policy": "p.2"}, "system.audit", "would rotate its files over"),
    ('audit = "p"', {"policy": ".p.rotating"}, "system.audit",
     "would make its next file (rotating) over"),
    # ... through a symbolic link to it
    ('audit = "link.wat"', {"link": "calc.wat"}, "system.audit", "is compartment calc's module"),
    # a log file (or a rotation of one) in the log directory is a policy file or a schema
    ('logs = "."', {"policy": "app.log"}, "system.logs", "the policy file"),
    ('logs = "."', {"policy": "supervisor.log.2"}, "system.logs", "the policy file"),
    ('logs = "."', {"schema": "calc.log"}, "system.logs", "the schema file"),
])
def test_a_file_the_supervisor_writes_is_no_file_that_decides_what_runs(
        tmp_path, monkeypatch, system_keys, deciding, key, said):
    """`check` passed `audit = "calc.wat"`, and `up` appended every call's record to
    calc's module: its next start failed, and every later one (the module was
    lost).  With `logs = "."` and `policy = "app.log"`, app's log lines went into
    its policy file, which the next `up` refused (and its rotation renamed it
    away).  Refused by `check` and `up` at the key that moves the supervisor's file."""
    import shutil

    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    os.chmod(tmp_path, 0o700)
    for f in ("calc.wat", "calc.capnp", "hello.wat"):
        shutil.copy(os.path.join(EXAMPLES, f), tmp_path / f)
    schema = deciding.get("schema", "calc.capnp")
    if schema != "calc.capnp":
        shutil.copy(tmp_path / "calc.capnp", tmp_path / schema)
    policy_line = ""
    if "policy" in deciding:
        (tmp_path / deciding["policy"]).write_text('[grants]\ncalc = { compartment = "calc" }\n')
        policy_line = f'policy = "{deciding["policy"]}"\n'
    if "link" in deciding:
        os.symlink(deciding["link"], tmp_path / "link.wat")
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[system]\nschemas = ["{schema}"]\n{system_keys}\n'
                           '[compartments.calc]\nmodule = "calc.wat"\nexports = "Calc"\n'
                           f'[compartments.app]\nmodule = "hello.wat"\n{policy_line}')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    assert e.value.key == key and e.value.line == 3, str(e.value)
    assert said in e.value.reason, str(e.value)


def test_an_audit_and_logs_beside_the_files_that_decide_what_runs_are_fine(tmp_path,
                                                                           monkeypatch):
    """Beside them, under names of their own, the audit and the logs are allowed."""
    import shutil

    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.chmod(tmp_path, 0o700)
    for f in ("calc.wat", "calc.capnp"):
        shutil.copy(os.path.join(EXAMPLES, f), tmp_path / f)
    (tmp_path / "calc.wat.log").write_text("")     # no log file's name: calc's is calc.log
    system_file = tmp_path / "system.toml"
    system_file.write_text('[system]\nschemas = ["calc.capnp"]\naudit = "calc.jsonl"\n'
                           'logs = "."\n[compartments.calc]\nmodule = "calc.wat"\n'
                           'exports = "Calc"\n')
    assert policy.load(str(system_file)).audit == str(tmp_path / "calc.jsonl")


@pytest.mark.parametrize("system_keys, key", [
    ('socket = "x.sock"\naudit = "x.sock"', "system.audit"),
    ('socket = "calc.log"\nlogs = "."', "system.logs"),
])
def test_the_external_socket_is_neither_the_audit_nor_a_log_file(tmp_path, monkeypatch,
                                                                 system_keys, key):
    """`check` passed `audit` and `socket` both "x.sock": `up` made the audit there,
    then refused its own audit file as "not a socket", naming no key."""
    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.chmod(tmp_path, 0o700)
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n{system_keys}\n'
                           f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n'
                           'exports = "Calc"\nexternal = true\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    assert e.value.key == key and "the external socket" in e.value.reason, str(e.value)


def _one_grant_system(tmp_path, grant: str) -> str:
    from tests.conftest import EXAMPLES
    os.chmod(tmp_path, 0o700)
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[system]\n[compartments.app]\nmodule = "{EXAMPLES}/hello.wat"\n'
                           f'[compartments.app.grants]\ng = {grant}\n')
    return str(system_file)


def test_a_file_grant_refusing_hard_links_of_a_file_of_two_links_is_refused_by_check(
        tmp_path, monkeypatch):
    """`check` passed it, and every start of its holder failed ("... has 2 hard links
    (refuse_hard_links)") until it failed for good: check opens each file and
    directory grant as a start does."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    os.link(tmp_path / "data" / "f", tmp_path / "data" / "f2")
    path = _one_grant_system(tmp_path, f'{{ host = "file", path = "{tmp_path}/data/f", '
                                       'refuse_hard_links = true }')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(path)
    assert (e.value.key, e.value.line) == ("compartments.app.grants.g.path", 5), str(e.value)
    assert "could never start" in e.value.reason and "2 hard links" in e.value.reason
    os.unlink(tmp_path / "data" / "f2")              # one link: it starts, and check passes
    assert policy.load(path).compartments["app"].grants[0].checked is not None


@pytest.mark.skipif(not os.path.ismount("/dev/shm") or os.path.ismount("/dev") is False,
                    reason="needs /dev/shm mounted beneath /dev")
def test_a_subdir_that_is_a_mount_point_is_refused_by_check(tmp_path, monkeypatch):
    """A directory grant opens its subdir beneath its path, crossing no mount: a
    subdir that is a mount point passed `check` and failed every start."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    path = _one_grant_system(tmp_path, '{ host = "directory", path = "/dev", subdir = "shm", '
                                       'read_only = true }')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(path)
    assert e.value.key == "compartments.app.grants.g.subdir", str(e.value)
    assert "could never start" in e.value.reason, str(e.value)


@pytest.mark.parametrize("suffix", [".admin.sock", ".lock", ".sock", ".lock.grants",
                                    ".lock.grants.4242.tmp"])
def test_the_audit_takes_no_name_the_runtime_directory_keeps_for_a_system(tmp_path, monkeypatch,
                                                                         suffix):
    """`audit` at the system's own admin socket passed `check`; `up` made the audit
    file there, then could not bind its admin socket (exit 2), and the regular file
    it left refused every later `up` of the system.  At its lock, `up` refused its
    own lock as "written by another running system"; at another system's lock, that
    system's `up` truncated the audit as its lock.  At the grants file beside its
    lock (or that file's temporary name), `up` replaced the audit with its grants
    file at each start: the records of every run before were lost (r266)."""
    from supervisor import endpoint
    from tests.conftest import EXAMPLES
    run = tmp_path / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    os.chmod(tmp_path, 0o700)
    system_file = tmp_path / "system.toml"
    own = endpoint.admin_socket_path(str(system_file)).removesuffix(".admin.sock") + suffix
    system_file.write_text(f'[system]\naudit = "{own}"\n[compartments.calc]\n'
                           f'module = "{EXAMPLES}/calc.wat"\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    assert (e.value.key, e.value.line) == ("system.audit", 2), str(e.value)
    assert "has the name of a system's own socket, admin socket or lock" in e.value.reason
    assert not os.path.lexists(own)
    system_file.write_text(f'[system]\naudit = "{run}/wsuper/audit.jsonl"\n'     # another name
                           f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n')
    assert policy.load(str(system_file)).audit == f"{run}/wsuper/audit.jsonl"
    system_file.write_text(f'[system]\nlogs = "{own}"\n'         # the log directory neither
                           f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    assert (e.value.key, e.value.line) == ("system.logs", 2), str(e.value)
    assert not os.path.lexists(own)


@pytest.mark.parametrize("name_bytes, keep, refused", [
    (253, 8, False), (254, 8, True), (253, 10, True), (255, 8, True)])
def test_an_audit_whose_rotated_names_are_too_long_is_refused(tmp_path, monkeypatch,
                                                              name_bytes, keep, refused):
    """An audit named with 254 bytes passed `check`; at audit_max_size its rotation
    made AUDIT.1 (256 bytes, "File name too long"), the audit write failed, and the
    system stopped."""
    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    os.chmod(tmp_path, 0o700)
    system_file = tmp_path / "system.toml"
    text = (f'[system]\naudit = "{"a" * name_bytes}"\naudit_keep = {keep}\n'
            f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n')
    system_file.write_text(text)
    if refused:
        with pytest.raises(policy.PolicyError) as e:
            policy.load(str(system_file))
        assert (e.value.key, e.value.line) == ("system.audit", 2), str(e.value)
        assert "choose a shorter name" in e.value.reason
        system_file.write_text(text.replace("[compartments", "audit_max_size = 0\n[compartments"))
    assert policy.load(str(system_file)).audit.endswith("a" * name_bytes)    # never rotated


def test_no_more_probes_are_declared_than_a_compartment_may_have():
    """65 declared probes passed `check`; every start added 64 and said "cannot add
    declared probe ...: ... has 64 probes already" of the rest."""
    def system(n):
        return BASE + "".join(f'[compartments.a.probes.p{i}]\npoint = "calls"\n'
                              for i in range(n))
    assert len(policy.parse(system(probes.MAX_PROBES)).compartments["a"].probes) == 64
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(system(probes.MAX_PROBES + 1))
    assert e.value.key == "compartments.a.probes.p64" and e.value.line == 6 + 2 * 64, str(e.value)


def test_an_error_line_cut_keeps_what_was_wrong_at_its_end(tmp_path):
    """A grant path of 3,000 characters filled the line, cut at SHOWN_ERROR: it
    named the file, line and key, and the path, but not what was wrong with it."""
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
                           f'd = {{ host = "directory", path = "/{"q" * 3000}" }}\n')
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    shown = str(e.value)
    assert len(shown) <= policy.SHOWN_ERROR + 40, len(shown)
    assert shown.startswith(f"{system_file}:4: compartments.a.grants.d.path: /qqq"), shown[:200]
    assert shown.endswith("qqq is not an existing directory"), shown[-200:]
    assert "characters) ..." in shown


def test_a_writable_grant_cannot_reach_the_libraries_the_supervisor_runs(tmp_path, monkeypatch):
    """A writable grant of libc's directory (or of /etc, where ld.so.preload goes)
    passed `check`: what a compartment put there ran as the supervisor (root, maybe)
    at the next `wsuper up`, as wsuper's own packages would; read only, it is fine."""
    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    libc = next(p for p in policy._mapped_libraries() if "/libc.so" in p or "/libc-" in p)
    for path, said in ((os.path.dirname(os.path.realpath(libc)), "a shared library"),
                       ("/etc", "the dynamic loader's configuration /etc/ld.so")):
        system_file = tmp_path / "system.toml"
        grant = f'd = {{ host = "directory", path = "{path}", mount = "/x" }}\n'
        system_file.write_text(f'[compartments.a]\nmodule = "{EXAMPLES}/hello.wat"\n'
                               f'[compartments.a.grants]\n{grant}')
        with pytest.raises(policy.PolicyError) as e:
            policy.load(str(system_file))
        assert e.value.key == "compartments.a.grants.d.path" and said in e.value.reason, \
            str(e.value)
        system_file.write_text(system_file.read_text().replace(' }', ', read_only = true }'))
        assert policy.load(str(system_file)).compartments["a"].grants[0].read_only



def _granted(tmp_path, target: str, path: str, extra: str = "") -> Path:
    from tests.conftest import EXAMPLES
    system_file = tmp_path / "system.toml"
    system_file.write_text(f'[compartments.a]\nmodule = "{EXAMPLES}/hello.wat"\n'
                           f'[compartments.a.grants]\n'
                           f'd = {{ host = "{target}", path = "{path}"{extra} }}\n')
    return system_file


def _refused_as_start_up(system_file, said: str):
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system_file))
    assert e.value.key == "compartments.a.grants.d.path" and said in e.value.reason and \
        "runs as the supervisor at the next start" in e.value.reason, str(e.value)


def _start_up_cases(tmp_path):
    """(grant target, path, what the refusal says) for each kind of file the
    supervisor's start reads or runs, outside the directories wsuper runs from."""
    cases = []
    cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.executable))),
                       "pyvenv.cfg")
    if os.path.isfile(cfg):            # the suite runs in .venv: its pyvenv.cfg
        cases.append(("file", cfg, "start-up configuration of the Python"))
    # OpenSSL's configuration ($OPENSSL_CONF, as libcrypto reads it) and what it names
    conf_dir = tmp_path / "ssl"
    conf_dir.mkdir()
    (conf_dir / "more.cnf").write_text("# included\n")
    (conf_dir / "provider.so").write_bytes(b"\x7fELF")
    (conf_dir / "openssl.cnf").write_text(
        f".include {conf_dir}/more.cnf\nopenssl_conf = init\n[init]\nproviders = p\n"
        f"[p]\nx = x_sect\n[x_sect]\nmodule = {conf_dir}/provider.so\nactivate = 1\n")
    cases += [("file", str(conf_dir / "openssl.cnf"), "OpenSSL's configuration"),
              ("file", str(conf_dir / "more.cnf"), "a file OpenSSL's configuration names"),
              ("file", str(conf_dir / "provider.so"), "a file OpenSSL's configuration names"),
              ("directory", str(conf_dir), "OpenSSL's configuration")]
    ldconfig = os.path.realpath("/sbin/ldconfig")     # ctypes.util runs it by this name
    if os.path.isfile(ldconfig):
        cases += [("file", ldconfig, "a program the supervisor runs"),
                  ("directory", os.path.dirname(ldconfig), "a program the supervisor runs")]
    return cases


def test_a_writable_grant_cannot_reach_what_the_supervisors_start_reads_or_runs(
        tmp_path, monkeypatch):
    """A writable grant of the virtual environment's pyvenv.cfg, of OpenSSL's
    configuration (or a file it includes, or a provider it loads), or of
    /sbin/ldconfig passed `check`, though each decides what code the supervisor's
    process runs as it starts: `home = DIR` in pyvenv.cfg is where Python takes
    its standard library from (a `site.py` of the compartment's ran), libcrypto
    loads the configuration in the supervisor (hashlib, ssl) and every provider
    it names, and trio's thread cache runs `ldconfig -p` (ctypes.util.find_library)
    at every `wsuper up`.  Append-only is no better (the last `home` wins);
    read only, each is fine."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    cases = _start_up_cases(tmp_path)
    monkeypatch.setenv("OPENSSL_CONF", str(tmp_path / "ssl" / "openssl.cnf"))
    assert len(cases) >= 4
    for target, path, said in cases:
        for extra in ("", ", append_only = true"):
            _refused_as_start_up(_granted(tmp_path, target, path, extra), said)
        system_file = _granted(tmp_path, target, path, ", read_only = true")
        assert policy.load(str(system_file)).compartments["a"].grants[0].read_only, path


@pytest.mark.parametrize("given", [False, True])
def test_openssls_own_configuration_is_found_without_openssl_conf(tmp_path, monkeypatch,
                                                                  given):
    """Without $OPENSSL_CONF, libcrypto reads openssl.cnf in its OPENSSLDIR (Debian:
    /usr/lib/ssl/openssl.cnf, a link to /etc/ssl/openssl.cnf): a grant of the
    directory of the link, or of the file it leads to, is refused.  So it is with
    $OPENSSL_CONF set for the supervisor: its zygote and engines, started with an
    empty environment, read OpenSSL's own (strace)."""
    if given:
        (tmp_path / "mine.cnf").write_text("# the operator's\n")
        monkeypatch.setenv("OPENSSL_CONF", str(tmp_path / "mine.cnf"))
    else:
        monkeypatch.delenv("OPENSSL_CONF", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    import ssl
    config = os.path.join(os.path.dirname(ssl.get_default_verify_paths().openssl_capath),
                          "openssl.cnf")
    if not os.path.exists(config):
        pytest.skip(f"no {config} here")
    for path in {os.path.dirname(config), os.path.dirname(os.path.realpath(config))}:
        _refused_as_start_up(_granted(tmp_path, "directory", path), "OpenSSL's configuration")
    assert policy.openssl_config({}) == config


@pytest.mark.parametrize("text, names", [
    (".include /etc/ssl/more.cnf\n", ["/etc/ssl/more.cnf"]),
    (".include = /etc/ssl/conf.d\n", ["/etc/ssl/conf.d"]),
    ("  include /a/b.cnf # a comment\n", ["/a/b.cnf"]),
    ('[p]\nmodule = "/opt/p.so"\n[e]\ndynamic_path=/opt/e.so\n', ["/opt/p.so", "/opt/e.so"]),
    ("openssl_conf = init\nHOME = /root\nfoo = /bar\n.include rel.cnf\n", []),
])
def test_the_files_an_openssl_configuration_names(text, names):
    assert policy.openssl_config_names(text) == names


# ------------------------------------------------------------ many compartments


def test_a_policy_file_named_by_many_compartments_is_read_and_parsed_once():
    """Each compartment's `policy` was read and parsed anew: one policy file of
    8 MiB named by 200 compartments took 50 s of `check` (and of `status`, `stop`,
    which read the system too), hours for thousands."""
    reads = []
    text = "[system]\n" + "".join(f'[compartments.c{i}]\nmodule = "c.wat"\n'
                                  f'policy = "p.toml"\n' for i in range(50))

    def read_policy(path):
        reads.append(path)
        return '[grants]\nlog = { host = "log" }\n[limits]\nmemory = "1MiB"\n'
    system = policy.parse(text, "/x/s.toml", read_policy)
    assert reads == ["/x/p.toml"]
    assert all(c.grants[0].origin == "/x/p.toml: grants.log" and c.limits.memory == 1 << 20
               for c in system.compartments.values())


@pytest.mark.parametrize("modules", ["shared", "one each"])
def test_what_load_looks_at_grows_with_the_compartments_not_their_square(tmp_path,
                                                                        monkeypatch, modules):
    """load looked at every file that decides what runs for each writable grant: a
    module shared by N compartments was N entries, each looked at for each grant
    (a thousand compartments with a writable grant each: 22 s of `check`, and of
    `up`), and N modules of their own were N files, each looked at for each grant
    (27 s).  The files are searched by name now: twice the compartments, twice
    the looks."""
    import shutil

    from supervisor import endpoint
    from tests.conftest import EXAMPLES
    for i in range(40):
        shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / f"m{i}.wat")
    (tmp_path / "data").mkdir()
    looks = [0]
    reaches = endpoint.reaches

    def counted(*args):
        looks[0] += 1
        return reaches(*args)
    monkeypatch.setattr(endpoint, "reaches", counted)

    def looks_for(n):
        path = tmp_path / f"s{n}.toml"
        path.write_text("".join(
            f'[compartments.c{i}]\nmodule = "m{0 if modules == "shared" else i}.wat"\n'
            f'[compartments.c{i}.grants]\nd = {{ host = "directory", '
            f'path = "{tmp_path}/data" }}\n' for i in range(n)))
        looks[0] = 0
        policy.load(str(path))
        return looks[0]
    # a first load imports and maps what the directories it protects are found from
    # (_imported_packages, _mapped_libraries): only from then are they all there,
    # and the test depended on another having loaded a system before it
    looks_for(1)
    assert looks_for(40) == 2 * looks_for(20)


def test_a_schema_whose_name_does_not_end_in_capnp_is_refused_saying_so(tmp_path):
    """The parser takes only names that end in .capnp: `greeter.schema` (or a C file
    listed by mistake) was refused with its Python exception as the reason,
    "ValueError: File does not end with .capnp, PATH", after a parser child."""
    _schema(tmp_path / "greeter.schema", "interface G { f @0 () -> (); }\n",
            0xd0a1b2c3d4e5f640)
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "greeter.schema"))
    assert e.value.path == str(tmp_path / "greeter.schema") and e.value.line is None
    assert "ValueError" not in e.value.reason
    assert "a schema file's name must end in .capnp" in e.value.reason, e.value.reason


def test_a_schema_in_a_directory_whose_name_is_not_ascii_finds_its_absolute_imports(tmp_path):
    """pycapnp gives the C++ parser each import directory as a pointer to its UTF-8
    bytes and a length counted in characters: a directory whose name is not ASCII
    (`/home/josé`) was cut short, so an absolute import ("/t.capnp", looked for in
    the schema's own directory) from a schema there failed "Import failed", and the
    same schema in `/home/jose` loaded.  Import directories are given as bytes."""
    folder = tmp_path / "d\u00e9j\u00e0 \u00fc"
    folder.mkdir()
    _schema(folder / "t.capnp", "struct T { a @0 :Int32; }\n", 0xd0a1b2c3d4e5f641)
    _schema(folder / "m.capnp", 'using T = import "/t.capnp";\n'
            'using Cxx = import "/capnp/c++.capnp";\n'
            "struct M { t @0 :T.T; }\n", 0xd0a1b2c3d4e5f640)
    module = capnp_schemas.load(str(folder / "m.capnp"))
    assert [n.name for n in module.schema.node.nestedNodes] == ["M"]


def test_wsuper_installed_beneath_a_directory_whose_name_is_not_ascii_starts(tmp_path):
    """The same cut, in the import path of wsuper's own schemas: installed (or
    checked out, with its .venv) beneath a home such as `/home/josé`, every
    `wsuper` command aborted as it began, `terminate called after throwing an
    instance of 'kj::ExceptionImpl' ... rpc.capnp:111: failed: Import failed:
    /capnp/c++.capnp`, exit 134: rpc.capnp's import of /capnp/c++.capnp was looked
    for in a directory cut short."""
    import shutil
    import subprocess
    import sys
    import capnp
    site = tmp_path / "h\u00f4me \u00fc" / "site-packages"
    site.mkdir(parents=True)
    # the files copied (the schemas' imports may not lead outside by a link), the
    # directories (the compiled library among them) linked
    for package in (Path(capnp.__file__), Path(capnp_schemas.__file__)):
        (site / package.parent.name).mkdir()
        for entry in package.resolve().parent.iterdir():
            if entry.is_dir():
                (site / package.parent.name / entry.name).symlink_to(entry)
            else:
                shutil.copy(entry, site / package.parent.name / entry.name)
    r = subprocess.run([sys.executable, "-I", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import capnp_schemas; "
                        "print(capnp_schemas.rpc.Message)", str(site)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Import failed" not in r.stderr, r.stderr


def test_up_says_an_engine_user_it_cannot_use(tmp_path, monkeypatch):
    """An `engine_user` written in the system file, read by a wsuper that is not
    root (which cannot use it: engines keep its uid): what `up` says at start and
    `check` warns, naming the key, the uid engines do run as, and what would use
    it; nothing as root, or when the key is not written."""
    (tmp_path / "a.toml").write_text('[system]\nengine_user = "4242:4243"\n'
                                     '[compartments.calc]\nmodule = "calc.wasm"\n')
    (tmp_path / "b.toml").write_text('[compartments.calc]\nmodule = "calc.wasm"\n')
    given, default = policy.read(str(tmp_path / "a.toml")), policy.read(str(tmp_path / "b.toml"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert given.engine_user_unused() == (
        "[system] engine_user 4242:4243 is not used: wsuper does not run as root, so engines "
        "run as your uid (1000), each in a user namespace of its own (start wsuper as root "
        "for engines of that user)")
    assert default.engine_user_unused() is None
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert given.engine_user_unused() is None


def test_keys_the_system_would_never_use_are_said_not_silently_passed_over():
    """Each key below was taken and ignored without a word: `audit_keep = 5` with
    no `audit` (no call recorded), `socket`, `max_connections` or `external_limits`
    in a system with no external compartment (nothing listens), `max_restarts` of a
    compartment that is never restarted, `run_time` of one that runs no program
    (nothing bounded).  `check` warns of each, `up` says it at start."""
    text = ('[system]\naudit_keep = 5\naudit_max_size = "2MiB"\naudit_share = 0.5\n'
            'socket = "/srv/x.sock"\nmax_connections = 3\nexternal_limits = { in_flight = 4 }\n'
            'message_timeout = 3\n'
            '[compartments.a]\nmodule = "a.wat"\nexports = "A"\nrestart = "never"\n'
            'max_restarts = 2\nrestart_window = 5\nrestart_delay = 1\ncritical = true\n'
            '[compartments.a.limits]\nrun_time = 5\nrun_cpu = 1\n'
            '[compartments.b]\nmodule = "b.wat"\n[compartments.b.limits]\nrun_time = 5\n')
    said = policy.parse(text, "/srv/system.toml").unused(programs=frozenset({"b"}))
    unused = [line.split(" is not used")[0] for line in said]
    assert unused == ["[system] audit_max_size", "[system] audit_keep",
                      "[system] audit_share", "[system] socket",
                      "[system] max_connections", "[system] external_limits",
                      "compartments.a.max_restarts", "compartments.a.restart_window",
                      "compartments.a.restart_delay",
                      "limits.run_time of compartment a (/srv/system.toml: "
                      "compartments.a.limits.run_time)",
                      "limits.run_cpu of compartment a (/srv/system.toml: "
                      "compartments.a.limits.run_cpu)"], said
    # a write quota of a grant nothing is written through
    text3 = BASE + '[compartments.b.grants]\nd = { host = "directory", path = "/srv", ' \
        'read_only = true, max_bytes_written = "1MiB" }\n' \
        'stdin = { host = "file", path = "/srv/in", max_bytes_written = 5 }\n' \
        'w = { host = "file", path = "/srv/in", max_bytes_written = 5 }\n'
    assert [line.split(" is not used")[0] for line in policy.parse(
        text3, "/srv/system.toml").unused(frozenset())] == [
        "compartments.b.grants.d.max_bytes_written (/srv/system.toml)",
        "compartments.b.grants.stdin.max_bytes_written (/srv/system.toml)"]
    # audit_keep of an audit never rotated
    text2 = ('[system]\naudit = "/srv/a.jsonl"\naudit_max_size = 0\naudit_keep = 3\n'
             'audit_share = 0.5\n' + BASE)
    assert [line.split(" is not used")[0] for line in policy.parse(
        text2, "/srv/system.toml").unused(frozenset())] == ["[system] audit_keep",
                                                            "[system] audit_share"]
    # each of them used: nothing said (message_timeout bounds the engines too)
    used = ('[system]\naudit = "/srv/a.jsonl"\naudit_keep = 5\naudit_max_size = "2MiB"\n'
            'audit_share = 0.5\n'
            'socket = "/srv/x.sock"\nmax_connections = 3\nexternal_limits = { in_flight = 4 }\n'
            'message_timeout = 3\n[compartments.a]\nmodule = "a.wat"\nexports = "A"\n'
            'external = true\nmax_restarts = 2\nrestart_window = 5\nrestart_delay = 1\n'
            '[compartments.a.limits]\nrun_time = 5\nrun_cpu = 1\n')
    assert policy.parse(used, "/srv/system.toml").unused(frozenset({"a"})) == []


def test_keys_never_used_are_said_with_their_files_shown_as_errors_show_them(tmp_path):
    """`check`'s warnings (and `up`'s notes) of keys never used named the file they
    are written in as it is: a policy file 'p\u043el.toml' (a Cyrillic 'о') beside
    the operator's pol.toml was warned of as '/srv/pol.toml: limits.run_time', and
    a path with a control character or a line separator was shown raw to `up`'s
    log, where every error, and check's holdings, show it quoted and escaped."""
    folder = tmp_path / "d\u0430ta"
    folder.mkdir()
    (folder / "p\u043el.toml").write_text("[limits]\nrun_time = 5\n")
    text = ('[system]\naudit_keep = 3\n[compartments.app]\nmodule = "lib.wat"\n'
            'policy = "p\u043el.toml"\n[compartments.app.grants]\n'
            'f = { host = "file", path = "/srv/in", read_only = true, max_bytes_written = 5 }\n')
    (folder / "system.toml").write_text(text)
    said = policy.read(str(folder / "system.toml")).unused(programs=frozenset())
    assert len(said) == 3, said
    assert all(line.isascii() and line.isprintable() for line in said), said
    shown = '"' + str(folder).replace("\u0430", "\\u0430")
    assert f'{shown}/p\\u043el.toml": limits.run_time)' in said[2], said
    assert f'({shown}/system.toml")' in said[1], said


def test_a_key_never_used_in_a_shared_policy_file_is_said_once(tmp_path):
    """A policy file's grant is the grant of every compartment that names the file:
    its max_bytes_written on a read_only grant was warned of once per compartment,
    the same line each time (500 alike for a policy of 500 compartments, the other
    warnings lost among them).  It is said once."""
    (tmp_path / "shared.toml").write_text(
        '[grants]\nf = { host = "file", path = "/srv/in", read_only = true, '
        'max_bytes_written = 5 }\n')
    text = "[system]\naudit_keep = 2\n" + "".join(
        f'[compartments.c{i}]\nmodule = "app.wat"\npolicy = "shared.toml"\n' for i in range(50))
    (tmp_path / "system.toml").write_text(text)
    said = policy.read(str(tmp_path / "system.toml")).unused(frozenset())
    assert [line.split(" is not used")[0] for line in said] == [
        "[system] audit_keep", f"grants.f.max_bytes_written ({tmp_path / 'shared.toml'})"], said


def test_a_schema_refused_for_no_line_of_its_own_is_said_at_the_line_that_lists_it(tmp_path):
    """A schema refused for something that is no line of its text (a name that does
    not end in .capnp, a parser that crashed or ran out of memory, a copy that could
    not be made) was said as "SCHEMA: REASON (the schema is listed at
    system.schemas[1] in SYSTEM)": the schema file first, no line, no key, where
    every other error of the system file is "FILE:LINE: KEY: REASON"."""
    from supervisor import preflight
    _schema(tmp_path / "a.capnp", "interface A { f @0 () -> (); }\n", 0xe7c41a9d3b5f2861)
    _schema(tmp_path / "greeter.schema", "interface G { f @0 () -> (); }\n",
            0xe7c41a9d3b5f2862)
    (tmp_path / "m.wat").write_text("(module)\n")
    system = tmp_path / "system.toml"
    system.write_text('[system]\nschemas = [\n  "a.capnp",\n  "greeter.schema",\n]\n'
                      '[compartments.m]\nmodule = "m.wat"\n')
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(policy.load(str(system)))
    assert str(e.value).startswith(
        f"{system}:2: system.schemas[1]: {tmp_path / 'greeter.schema'}: a schema file's "
        f"name must end in .capnp"), str(e.value)
