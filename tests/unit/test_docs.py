"""The docs against the code, as data: every key the system file takes is in
docs/policy-reference.md and every key there is taken, each number with the
default and the range the code holds it to (tried at both ends and one past
them); docs/guest-abi.md's error codes and host functions are abi.py's;
every Markdown table in the docs renders as one table (a blank line inside one
cuts it in two, and the rows after it show as text); and every constant, path
and test the docs name is there."""
import glob
import os
import re

import pytest

from compartments import abi
from compartments.limits import Limits
from supervisor import policy
from tests.conftest import ROOT

DOCS = os.path.join(ROOT, "docs")
REFERENCE = os.path.join(DOCS, "policy-reference.md")
BASE = ('[compartments.a]\nmodule = "a.wat"\nexports = "A"\n'
        '[compartments.b]\nmodule = "b.wat"\n')


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _tables(section: str) -> list[list[list[str]]]:
    """The tables of a Markdown section: rows of cells, header and separator left out."""
    tables, rows = [], None
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if rows is None:
                rows = []
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows is not None:
            tables.append(rows)
            rows = None
    return tables


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _keys(cell: str) -> set[str]:
    """The keys a table's first cell names: `key`, or `key = value, other = ...`."""
    keys = set()
    for code in re.findall(r"`([^`]*)`", cell):
        code = re.sub(r"\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", "", code)
        if re.fullmatch(r"\w+", code):
            keys.add(code)
        keys.update(re.findall(r"(\w+)\s*=", code))
    return keys


def _number(text: str):
    """A number as the reference writes it: 1000, 0.01, 10^7, 2^62, 64 KiB, "8MiB"."""
    text = text.strip().strip("`").strip('"')
    if text == "none":
        return None
    m = re.fullmatch(r"(\d+)\^(\d+)", text)
    if m:
        return int(m.group(1)) ** int(m.group(2))
    m = re.fullmatch(r"([0-9.]+)\s*(KiB|MiB|GiB|PiB)?", text)
    assert m, f"not a number: {text!r}"
    unit = {None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "PiB": 1 << 50}
    value = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    return value * unit[m.group(2)]


def _document(place: str, key: str, value: str) -> str:
    if place == "system":
        return f"[system]\n{key} = {value}\n" + BASE
    if place == "compartment":
        return BASE + f"{key} = {value}\n"
    return BASE + f"[compartments.b.limits]\n{key} = {value}\n"


def _taken(place: str, key: str, value) -> bool:
    try:
        policy.parse(_document(place, key, repr(value)), "/srv/system.toml")
    except policy.PolicyError as e:
        assert key in str(e), e
        return False
    return True


def _past(value, lo: bool):
    """A number just past a bound: the next whole one, or 1 % off a real one."""
    if isinstance(value, int):
        return value - 1 if lo else value + 1
    return value * (0.99 if lo else 1.01) if value else -0.001


REFERENCE_TEXT = _text(REFERENCE)
SYSTEM_ROWS = _tables(_section(REFERENCE_TEXT, "## `[system]`"))[0]
COMPARTMENT_ROWS = _tables(_section(REFERENCE_TEXT, "## `[compartments.NAME]`"))[0]
LIMIT_ROWS = _tables(_section(REFERENCE_TEXT, "## `[compartments.NAME.limits]`"))[0]
PROBE_ROWS = _tables(_section(REFERENCE_TEXT, "## `[compartments.NAME.probes.PROBE]`"))[0]
GRANT_TABLES = _tables(_section(REFERENCE_TEXT, "## `[compartments.NAME.grants]`"))


def test_every_key_the_system_file_takes_is_documented_and_no_other():
    assert set().union(*(_keys(r[0]) for r in SYSTEM_ROWS)) == policy.SYSTEM_KEYS
    # grants, limits and probes are tables of their own, with sections of their own
    assert set().union(*(_keys(r[0]) for r in COMPARTMENT_ROWS)) | {
        "grants", "limits", "probes"} == policy.COMPARTMENT_KEYS
    assert {r[0].strip("`") for r in LIMIT_ROWS} == set(Limits.RANGES)
    assert {r[0].strip("`") for r in PROBE_ROWS} == {"point", "functions", "events"}
    kinds, attenuation = GRANT_TABLES[0], GRANT_TABLES[1]
    rows = set().union(*(_keys(r[0]) for r in kinds + attenuation))
    # read_only and append_only are told in the directory grant's row
    told = set().union(*(_keys(r[1]) for r in kinds + attenuation))
    assert rows <= policy.GRANT_KEYS and policy.GRANT_KEYS <= rows | told, \
        (rows - policy.GRANT_KEYS, policy.GRANT_KEYS - rows - told)
    hosts = {m for r in kinds for m in re.findall(r'host = "(\w+)"', r[0])}
    assert hosts == set(policy.HOST_CAPS)
    external = next(r for r in SYSTEM_ROWS if r[0] == "`external_limits`")
    assert all(f"`{k}`" in external[3] for k in policy.EXTERNAL_LIMIT_KEYS), external


@pytest.mark.parametrize("row", LIMIT_ROWS, ids=[r[0].strip("`") for r in LIMIT_ROWS])
def test_each_limit_has_the_default_and_the_range_the_reference_gives(row):
    key = row[0].strip("`")
    assert _number(row[1]) == getattr(Limits(), key), row[:3]
    lo, hi = (_number(v) for v in row[2].split(".."))
    assert (lo, hi) == Limits.RANGES[key][:2], row[:3]
    assert _taken("limits", key, lo) and _taken("limits", key, hi)
    assert not _taken("limits", key, _past(lo, True))
    assert not _taken("limits", key, _past(hi, False))


_RANGED = [("system", r) for r in SYSTEM_ROWS] + [("compartment", r) for r in COMPARTMENT_ROWS]
_RANGED = [(p, r) for p, r in _RANGED if re.match(r"(int|seconds) [0-9.]+\s*\.\.", r[1])]


@pytest.mark.parametrize("place,row", _RANGED, ids=[r[0].strip("`") for _, r in _RANGED])
def test_each_number_of_the_system_and_compartment_tables_has_its_range_and_default(place, row):
    key = row[0].strip("`")
    lo, hi = (_number(v) for v in row[1].split(" ", 1)[1].split(".."))
    assert _taken(place, key, lo) and _taken(place, key, hi), row[:3]
    assert not _taken(place, key, _past(lo, True)), row[:3]
    assert not _taken(place, key, _past(hi, False)), row[:3]
    system = policy.parse(BASE, "/srv/system.toml")
    default = getattr(system, key) if place == "system" else \
        getattr(system.compartments["b"].restart, key)
    assert _number(row[2]) == default, row[:3]


def test_the_error_codes_of_the_guest_abi_are_abi_pys():
    rows = _tables(_section(_text(os.path.join(DOCS, "guest-abi.md")), "## Errors"))[0]
    documented = {int(code): name.strip("`") for code, name, _ in rows}
    assert documented == abi.ERROR_NAMES


def test_the_host_functions_of_the_guest_abi_are_abi_pys():
    rows = _tables(_section(_text(os.path.join(DOCS, "guest-abi.md")), "## Imports"))[0]
    documented = {}
    for call, types, _ in rows:
        name = re.match(r"`(\w+)\(", call).group(1)
        params, results = re.fullmatch(r"`\(([^)]*)\) -> (\w*)`", types).groups()
        documented[name] = (tuple(params.split()), (results,) if results else ())
    assert documented == abi.IMPORTS
    exports = _tables(_section(_text(os.path.join(DOCS, "guest-abi.md")), "## Exports"))[0]
    dispatch = next(r for r in exports if r[0] == f"`{abi.EXPORT_DISPATCH}`")
    params, result = re.search(r"`\(([^)]*)\) -> (\w+)`", dispatch[2]).groups()
    assert (tuple(p.split()[-1] for p in params.split(",")), (result,)) == abi.DISPATCH_TYPE


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DOCS, "*.md")))
                         + [os.path.join(ROOT, "README.md")], ids=os.path.basename)
def test_every_table_in_the_docs_renders_as_one(path):
    """A blank line between two rows ends the table: what follows shows as text."""
    lines = _text(path).splitlines()
    for i in range(1, len(lines) - 2):
        if lines[i] == "" and lines[i - 1].startswith("|") and lines[i + 1].startswith("|") \
                and not re.fullmatch(r"\|[-:| ]+\|", lines[i + 2]):
            pytest.fail(f"{os.path.basename(path)}:{i + 1}: a blank line inside a table")


def test_every_size_the_reference_writes_with_a_unit_is_one_the_file_takes():
    """A range or default written "1 PiB" must be a size a user can write so:
    audit_max_size's "1 MiB .. 1 PiB" was refused as "1PiB" (the units stopped
    at GiB), and max_bytes_written's 2^60 could not be written "1EiB"."""
    unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
            "PiB": 1 << 50, "EiB": 1 << 60}
    told = set(re.findall(r"\b(\d+) ?([KMGTPE]iB)\b", REFERENCE_TEXT)) | {("1", "EiB")}
    assert ("1", "PiB") in told
    for n, u in sorted(told):
        for text in (f"{n}{u}", f"{n} {u}"):
            doc = BASE + ("[compartments.b.grants]\n"
                          f'd = {{ host = "directory", path = "/srv", max_bytes_written = "{text}" }}\n')
            system = policy.parse(doc, "/srv/system.toml")
            assert system.compartments["b"].grants[0].max_bytes_written == int(n) * unit[u], text
    size = policy.parse('[system]\naudit_max_size = "1PiB"\n' + BASE, "/srv/system.toml")
    assert size.audit_max_size == 1 << 50


def test_the_limits_section_says_once_how_a_size_is_written_and_its_examples_hold():
    """An outside review: two reviews' merges had kept both versions of the
    limits section's opening (its "nobody else is affected" and its "Sizes are
    bytes" twice, the first one's sentence cut mid-way). The way of writing a
    size is said once, and each string it calls refused is refused, each
    it shows is taken."""
    assert REFERENCE_TEXT.count("Sizes are\nbytes, written as a number") == 1
    assert REFERENCE_TEXT.count("nobody else is affected") == 1
    section = REFERENCE_TEXT.split("## `[compartments.NAME.limits]`")[1].split("\n| key")[0]
    refused = re.findall(r'`"([^`]*)"`', section.split("are refused)")[0].split("In a string")[1]) \
        + re.findall(r'`"([^`]*)"`', section.split("are refused)")[1])
    assert {"1.5MiB", "-1", "1e6", "64mib", "64MB"} <= set(refused), refused
    for text in refused:
        with pytest.raises(policy.PolicyError, match="must be a size in bytes"):
            policy.parse(BASE + f'[compartments.b.limits]\nmemory = "{text}"\n', "/s/s.toml")
    system = policy.parse(BASE + '[compartments.b.limits]\nmemory = " 64 MiB "\n', "/s/s.toml")
    assert system.compartments["b"].limits.memory == 64 << 20
    with pytest.raises(policy.PolicyError, match=r"'5GiB' is 5,368,709,120 bytes; it must be "
                                                 r"from 65,536 to 4,294,967,296"):
        policy.parse(BASE + '[compartments.b.limits]\nmemory = "5GiB"\n', "/s/s.toml")


_GRANT_RANGES = [(k, m.groups()) for r in GRANT_TABLES[0] + GRANT_TABLES[1]
                 for m in [re.search(r"\b(\d[\d.^]*) to (\d[\d.^]*)\b", r[1])] if m
                 for k in _keys(r[0]) if k in policy.GRANT_KEYS]


@pytest.mark.parametrize("key,bounds", _GRANT_RANGES, ids=[k for k, _ in _GRANT_RANGES])
def test_each_number_of_a_grant_has_the_range_the_reference_gives(key, bounds):
    """The grant tables write a range in prose ("1 to 2^62"): each end is taken,
    and one past it refused, naming the key."""
    assert {k for k, _ in _GRANT_RANGES} >= {"max_uses", "expires_after",
                                               "calls_per_second", "max_bytes_written"}
    target = 'host = "directory", path = "/srv"' if key == "max_bytes_written" \
        else 'compartment = "a"'

    def taken(value) -> bool:
        doc = BASE + f"[compartments.b.grants]\ng = {{ {target}, {key} = {value!r} }}\n"
        try:
            policy.parse(doc, "/srv/system.toml")
        except policy.PolicyError as e:
            assert f"compartments.b.grants.g.{key}" in str(e), e
            return False
        return True
    lo, hi = (_number(v) for v in bounds)
    assert taken(lo) and taken(hi), (key, lo, hi)
    assert not taken(_past(lo, True)) and not taken(_past(hi, False)), (key, lo, hi)


def test_the_rewriters_bounds_the_docs_give_are_instruments():
    """Each place the docs give the largest module the probe rewriting takes, and
    its most sites, says instrument.MAX_MODULE_BYTES and MAX_SITES (security.md
    said 32 MiB, where the code, the reference and instrumentation.md said 8)."""
    from compartments import instrument
    mib, sites = instrument.MAX_MODULE_BYTES >> 20, instrument.MAX_SITES.bit_length() - 1
    said = []
    for path in sorted(glob.glob(os.path.join(DOCS, "*.md"))):
        text = re.sub(r"\s+", " ", _text(path))
        for m in re.finditer(r"(?:over|more than) (\d+) MiB\W{0,3}(?:\([^)]*\) )?(?:or|and|,) "
                             r"(?:with )?more than 2\^(\d+) sites", text, re.I):
            said.append((os.path.basename(path), int(m.group(1)), int(m.group(2))))
    assert {p for p, _m, _s in said} >= {"security.md", "policy-reference.md",
                                          "instrumentation.md"}, said
    assert all((m, s) == (mib, sites) for _p, m, s in said), said


_PACKAGES = ("supervisor", "compartments", "capnp_schemas")
_DOC_FILES = sorted(glob.glob(os.path.join(DOCS, "*.md"))) + [os.path.join(ROOT, "README.md")]


def test_every_constant_path_and_test_the_docs_name_is_there():
    """The docs name the code by `module.CONSTANT` (`zygote.COMPILES`), by path
    (`supervisor/cmacros.py`) and by test (security.md's tables: some 600 tests
    that show a fix holds). A name the code no longer has (renamed, moved, a test
    split in two) sends a reader to nothing: each one named is there. A test
    named with `...` after it stands for the tests its name begins."""
    import importlib
    tests = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True):
        tests.update(re.findall(r"^(?:async )?def (test_\w+)", _text(path), re.M))
    missing = []
    for doc in _DOC_FILES:
        text, name = _text(doc), os.path.basename(doc)
        for mod, attr in set(re.findall(r"`([a-z_]+)\.([A-Z][A-Z0-9_]+)`", text)):
            modules = [importlib.import_module(f"{p}.{mod}") for p in _PACKAGES
                       if os.path.exists(os.path.join(ROOT, p, f"{mod}.py"))] + \
                      [importlib.import_module(mod) for p in _PACKAGES if p == mod]
            if not any(hasattr(m, attr) for m in modules):
                missing.append(f"{name}: `{mod}.{attr}`")
        for ref in set(re.findall(r"`((?:supervisor|compartments|capnp_schemas|tests|examples|"
                                  r"policies|scripts|benchmarks|fuzz|docs)/[\w./-]+)`", text)):
            ref = ref.rstrip("/")
            if os.path.exists(os.path.join(ROOT, ref)):
                continue
            module, _, attr = ref.rpartition(".")       # fuzz/seeds._tiny_segments
            source = os.path.join(ROOT, module + ".py")
            if not (os.path.exists(source) and re.search(rf"^(?:def|class) {attr}\b|^{attr} =",
                                                         _text(source), re.M)):
                missing.append(f"{name}: `{ref}`")
        for test, cut in set(re.findall(r"\b(test_\w+)\b(\.\.\.)?", text)):
            if os.path.exists(os.path.join(ROOT, "tests", "unit", f"{test}.py")) or \
                    os.path.exists(os.path.join(ROOT, "tests", "integration", f"{test}.py")):
                continue
            if test not in tests and not (cut and any(t.startswith(test) for t in tests)):
                missing.append(f"{name}: {test}")
    assert not missing, "the docs name what the code does not have:\n" + "\n".join(sorted(missing))


def test_a_repository_file_the_docs_show_is_that_file():
    """A TOML block the docs introduce with a file of the repository ("for example
    `policies/calc-client.toml`:") holds what that file holds: the reference showed
    calc-client.toml without its `fuel_per_call`, which the file has (an outside
    review of the docs against the code)."""
    import tomllib
    shown = []
    for doc in _DOC_FILES:
        for path, block in re.findall(r"`((?:policies|examples)/[\w./-]+\.toml)`:\n\n```toml\n"
                                      r"(.*?)```", _text(doc), re.S):
            shown.append(path)
            with open(os.path.join(ROOT, path), "rb") as f:
                assert tomllib.loads(block) == tomllib.load(f), (os.path.basename(doc), path)
    assert "policies/calc-client.toml" in shown, shown


def _as_system(block: str) -> str:
    """A TOML example of the docs as a whole system file: a policy file's [grants]
    and [limits] as a compartment's; a module for each compartment that has none
    (and a compartment, if the example declares none); each compartment a grant
    names but the example does not declare, declared, exporting an interface."""
    import textwrap
    import tomllib
    text = re.sub(r"^\[(grants|limits)\]", r"[compartments.x.\1]", textwrap.dedent(block),
                  flags=re.M)
    compartments = tomllib.loads(text).get("compartments", {})
    for name, body in compartments.items():
        if "module" in body:
            continue
        header = f"[compartments.{name}]\n"
        text = text.replace(header, header + 'module = "m.wasm"\n') if header in text \
            else text + f'\n{header}module = "m.wasm"\n'
    named = {g.get("compartment") or g.get("on") for body in compartments.values()
             for g in body.get("grants", {}).values() if isinstance(g, dict)}
    for name in sorted(n for n in named - set(compartments) if n) or \
            ([] if compartments else ["x"]):
        text += f'\n[compartments.{name}]\nmodule = "m.wasm"\nexports = "E"\n'
    return text


def test_every_toml_example_of_the_docs_is_taken():
    """Each ```toml example in the docs, made a whole system file (_as_system),
    is one `policy.parse` takes: instrumentation.md's declared probe was a
    `calls` probe with `functions = [...]`, which `check` and `up` refuse
    ("functions applies to the points functions, blocks, stores, not calls"),
    so a reader who copied it could not start the system (an outside review of
    the docs against the code)."""
    examples = 0
    for doc in _DOC_FILES:
        for block in re.findall(r"```toml\n(.*?)```", _text(doc), re.S):
            examples += 1
            try:
                policy.parse(_as_system(block), "/srv/system.toml")
            except policy.PolicyError as e:
                pytest.fail(f"{os.path.basename(doc)}: the example that begins "
                            f"{block.strip().splitlines()[0]!r} is refused: {e}")
    assert examples >= 10, examples


def _command_synopsis() -> dict[str, str]:
    """The README's "Commands" block: each command's lines (its usage and what is
    said of it), by the command's name."""
    block = _section(_text(os.path.join(ROOT, "README.md")), "## Commands")
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        m = re.match(r"    wsuper (--\w+|\w+)\b", line)
        if m:
            name = m.group(1)
        elif not line.startswith("     "):
            name = None if line.strip() else name
            continue
        if name is not None:
            entries[name] = entries.get(name, "") + line + "\n"
    return entries


def test_every_command_and_option_of_the_command_line_is_in_the_readme_and_no_other():
    """The README's "Commands" is the command line's reference: each command the
    parser has is there, with each of its options (a choice among values with
    every value), and no option the command does not take. It had left out
    `call --socket` and `--timeout`, `probe ... --json`, `trace --format`,
    `--compartments` and `--functions`, `build -I`, `--include-dir`, `--reactor`
    and `--command`, the other three probe points and `--version` (an outside
    review of the docs against `wsuper --help`)."""
    import argparse
    from supervisor import cli
    ap = cli.parser()
    commands = next(a for a in ap._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    synopsis = _command_synopsis()
    assert set(synopsis) == set(commands) | {"--version"}, sorted(synopsis)
    wrong = []
    for name, command in commands.items():
        text = synopsis[name]
        takes = set()
        for action in command._actions:
            spelled = [o for o in action.option_strings if o not in ("-h", "--help")]
            takes.update(spelled)
            if spelled and not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)
                                   for o in spelled):
                wrong.append(f"wsuper {name}: {'/'.join(spelled)} is not there")
            for choice in (action.choices or ()) if spelled else ():
                if not re.search(rf"(?<![\w-]){re.escape(str(choice))}(?![\w-])", text):
                    wrong.append(f"wsuper {name}: {spelled[0]} {choice} is not there")
        for option in set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text)) - takes:
            wrong.append(f"wsuper {name}: {option} is said, but not taken")
        # and `wsuper NAME --help` says what each option is (trace --seconds and -o,
        # bindgen -o and build -I said nothing)
        wrong += [f"wsuper {name} --help: {'/'.join(a.option_strings)} says nothing"
                  for a in command._actions if a.option_strings and not a.help]
    assert not wrong, "\n".join(wrong)


def test_the_clang_line_plugins_md_gives_for_a_makefile_is_wsuper_builds():
    """plugins.md's "equivalent by hand" is what `wsuper build` runs for a reactor
    laid out for protection (the libc fixes are told apart, below it): every flag
    of toolchain.command is on it. It left out `-Wl,--export=__stack_pointer`,
    without which a call that traps or runs out of fuel keeps its stack frames
    taken for good in a shared instance (an outside review of the docs)."""
    from supervisor import toolchain
    text = _text(os.path.join(DOCS, "plugins.md"))
    line = re.search(r"^    (clang --target=.*?)\n\n", text, re.M | re.S).group(1)
    said = line.replace("\\\n", " ").split()
    built = toolchain.command(["store.c"], "build/store.wasm", reactor=True,
                              include=["build/include"], layout="layout.c")
    missing = [f for f in built[1:] if f != "-Wall" and f not in said]
    assert not missing, missing
    assert said[0] == "clang" and set(said[1:]) <= set(built[1:]), said


def test_every_fuzzer_has_its_command_in_security_md():
    """Each fuzz/ module (but the shared seeds) is run by a command in security.md's
    "Fuzzing", where its last long run is said: a fuzzer nobody is told how to run
    is never run long."""
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "fuzz", "*.py"))}
    modules -= {"__init__", "seeds"}
    section = _section(_text(os.path.join(DOCS, "security.md")), "## Fuzzing")
    run = set(re.findall(r"python -m fuzz\.(\w+)", section))
    assert modules <= run, sorted(modules - run)


def test_the_c_sdks_error_codes_are_the_abis_and_its_own_are_in_plugins_md():
    """compartments/sdk/wsuper.h's codes: each WSUPER_E_NAME of the guest ABI has
    abi.py's value, and each of the C runtime's own is told in plugins.md, where C
    authors look (WSUPER_E_NOMEM, -100, was in no doc: a caller that printed its
    code saw a number documented nowhere)."""
    header = _text(os.path.join(ROOT, "compartments", "sdk", "wsuper.h"))
    codes = {n: int(v) for n, v in re.findall(r"^\s*WSUPER_(E_\w+|OK) = (-?\d+),", header, re.M)}
    assert codes.pop("OK") == abi.OK
    abi_codes = {name: code for code, name in abi.ERROR_NAMES.items()}
    assert {n: v for n, v in codes.items() if n in abi_codes} == abi_codes
    plugins = _text(os.path.join(DOCS, "plugins.md"))
    own = {n: v for n, v in codes.items() if n not in abi_codes}
    assert own, codes
    for name, value in own.items():
        assert re.search(rf"`WSUPER_{name}` \({value}\)", plugins), (name, value)


def test_every_module_is_in_the_module_map_of_design_md():
    """design.md's table of modules ("The modules, in the order a call meets
    them") names every module of the three packages, Python and C, with what it
    owns: supervisor/turns.py (who runs the supervisor's Python), cmacros.py and
    compartments/_fastcall.c were in no row (an outside review of the docs)."""
    text = _text(os.path.join(DOCS, "design.md"))
    table = text[text.index("| module | owns | must not |"):text.index("\nDependencies run one way")]
    named = set()
    for cell in (row[0] for row in _tables(table)[0]):
        paths = re.findall(r"`([\w/]+\.(?:py|c|h))`", cell)
        folder = os.path.dirname(paths[0])
        named |= {p if "/" in p else f"{folder}/{p}" for p in paths}
    named |= {f"{os.path.dirname(p)}/{n}" for row in _tables(table)[0] for p in
              re.findall(r"`([\w/]+\.py)`", row[0])[:1]
              for n in re.findall(r"`(\w+\.(?:py|c|h))`", row[1])}
    files = {os.path.relpath(p, ROOT) for pkg in _PACKAGES for ext in ("py", "c", "h")
             for p in glob.glob(os.path.join(ROOT, pkg, f"*.{ext}"))}
    files -= {f"{pkg}/__init__.py" for pkg in ("supervisor", "compartments")}
    assert not files - named, sorted(files - named)


def test_the_readme_says_what_each_column_of_wsuper_status_is():
    """`wsuper status` showed GEN and IN FLIGHT (with its "N out, M in"), which no
    doc explained; each column is named in the README's paragraph on status, and
    so is each state a compartment can be in."""
    from supervisor import cli
    text = _section(_text(os.path.join(ROOT, "README.md")), "## Commands")
    paragraph = re.search(r"`wsuper status` prints .*?\n\n", text, re.S).group(0)
    paragraph = " ".join(paragraph.split())
    missing = [c for c in cli.STATUS_COLUMNS[1:] if c not in paragraph]
    assert not missing, missing
    states = set(re.findall(r'self\.state\[\w+\] = "(\w+)"|dict\.fromkeys\(self\.policies, "(\w+)"\)',
                            _text(os.path.join(ROOT, "supervisor", "supervision.py"))))
    states = {a or b for a, b in states}
    assert len(states) >= 6 and not [s for s in states if f"`{s}`" not in paragraph], states
