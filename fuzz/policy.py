"""Fuzzing the system file: parse, the error line, and what `wsuper check` prints.

    python -m fuzz.policy --count 200000 --seed 1

Owns: a generator of system files (every key of docs/policy-reference.md,
written in every TOML form: tables, dotted keys, inline tables, quoted keys
with escapes) with hostile values (nan, inf, integers of 2^64 and beyond,
booleans and lists where numbers go, sizes with units of any size or
Unicode digits, strings with control characters, quotes, escape sequences,
line and paragraph separators, "#²"), and mutations of the text (lines of
brackets or spaces inside multi-line strings, keys of thousands of dots,
lines cut or repeated).  Must not: be imported by wsuper itself, or accept a
failure silently.

Checks on each input:
  parse     policy.parse returns a System or raises PolicyError; nothing else
            leaves it (no ValueError, OverflowError, TypeError, RecursionError).
  error     a PolicyError's text is one printable ASCII line of at most
            SHOWN_ERROR characters and a short "... (N characters)", and a
            refused number or size keeps the range it states on that line.
  values    in an accepted System every number is a finite int or float
            within its key's range (limits, grant quotas, restart, endpoint).
  types     in an accepted file a declared probe's `functions` is a list (the
            reference's type: a string was taken, split at its commas).
  check     what `wsuper check` prints of an accepted System (holdings, and
            the DOT graph) is printable line by line (the holdings ASCII), and the graph has one
            edge per grant (nothing in a value can draw one).
  where     in an accepted System, every grant and every limit written (in the
            system file or in the policy file a compartment names, which is
            fuzzed too) is found on a line of the file it says it came from:
            what `check` and `up` report about it names that file and line.
  time      no input takes more than a second of CPU.
"""
from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
import traceback

from compartments.limits import Limits
from supervisor import authority, policy, preflight

from . import run_and_report

HOSTILE_TEXT = ["", "a", "\n", "\r\n", "\x1b[2J", "\u2028", "\u202e", "\x00", '"', "'", "\\",
                '" ]; "a" -> "b" [label="x', "..", "/", "${SYSTEM_DIR}/x", "#²", "#12",
                "#١٢", "x" * 300, "\x07" * 50, "k=v", "=", "a.b", "[x]", "é", "\ud7ff"]
NUMBERS = ["nan", "-nan", "inf", "-inf", "0", "-1", "1", "0.0001", "1e400", "-0.0",
           "9223372036854775807", "18446744073709551616", "1" + "0" * 40, "true",
           "0x7fffffffffffffffffff", "1_000", "3.5", "[1]", "{}", "1979-05-27"]
SIZES = ['"64MiB"', '"99999999999999999999 GiB"', '"١٢ MiB"', '" 1 KiB "', '"1 TiB"',
         '"-1"', '"1e3"', '"nan"', '"1PiB"', '"1 EiB"', '"2EiB"', '"1eib"', '"1.5MiB"',
         '"64MB"', '"+1KiB"', '"1_024"', '"1\\u3000KiB"', '"' + "9" * 20 + ' EiB"',
         '"2' + " " * 3000 + 'EiB"', '"  ' + "\\t" * 50 + '64 MiB"']


class Failure(Exception):
    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


def _toml_string(rng: random.Random, text: str) -> str:
    """`text` as a TOML basic or literal string (escapes where it must)."""
    if rng.random() < 0.3 and not any(c in text for c in "'\n\r") and text.isprintable():
        return f"'{text}'"
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif not c.isprintable() or c in "\n\r\t":
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


#: keys that take a size ("64MiB"): a size string goes to them more often
SIZE_KEYS = {k for k, (_, _, size) in Limits.RANGES.items() if size} | {
    "audit_max_size", "max_bytes_written"}


def _value(rng: random.Random, key: str) -> str:
    pick = rng.random()
    if key in SIZE_KEYS and pick < 0.4:
        return rng.choice(SIZES)
    if pick < 0.35:
        return rng.choice(NUMBERS)
    if pick < 0.45:
        return rng.choice(SIZES)
    if pick < 0.75:
        return _toml_string(rng, rng.choice(HOSTILE_TEXT) + rng.choice(HOSTILE_TEXT))
    if pick < 0.85:
        return "[" + ", ".join(_toml_string(rng, rng.choice(HOSTILE_TEXT))
                               for _ in range(rng.randrange(4))) + "]"
    return rng.choice(["true", "false", "{}", '{ a = "b" }', "[[]]"])


def _key(rng: random.Random, name: str) -> str:
    if rng.random() < 0.1:
        return _toml_string(rng, rng.choice([name, name + rng.choice(HOSTILE_TEXT)]))
    return name


#: a declared probe's functions: a list; strings, which probes.spec splits at commas
FUNCTIONS = ['""', '","', '"store_*,load_*"', '[]', '["store_*", "#3"]']

GRANT_BASES = ['compartment = "calc"', 'host = "log"', 'host = "clock"', 'host = "random"',
               'host = "environment"', 'host = "directory", path = "/srv"',
               'host = "file", path = "/srv/f"', 'host = "probe", on = "calc"']


def document(rng: random.Random) -> str:
    """A system file: mostly well formed, with one to four hostile values; or
    (`friendly`, two in five) one that passes, with hostile text where text goes."""
    lines = []
    friendly = rng.random() < 0.4
    if not friendly and rng.random() < 0.5:
        lines.append("[system]")
        for k in rng.sample(sorted(policy.SYSTEM_KEYS), rng.randrange(3)):
            lines.append(f"{_key(rng, k)} = {_value(rng, k)}")
        if rng.random() < 0.3:
            lines.append("[system.external_limits]")
            for k in rng.sample(sorted(policy.EXTERNAL_LIMIT_KEYS), rng.randrange(1, 3)):
                lines.append(f"{k} = {_value(rng, k)}")
    lines += ["[compartments.calc]", 'module = "calc.wat"', 'exports = "Calc"']
    if not friendly and rng.random() < 0.5:
        k = rng.choice(sorted(policy.COMPARTMENT_KEYS - {"module", "grants", "limits",
                                                          "probes"}))
        lines.append(f"{_key(rng, k)} = {_value(rng, k)}")
    lines += ["[compartments.app]", 'module = "app.wat"']
    if not friendly and rng.random() < 0.6:
        lines.append("[compartments.app.limits]")
        for k in rng.sample(sorted(Limits.RANGES), rng.randrange(1, 4)):
            lines.append(f"{k} = {_value(rng, k)}")
    if friendly:
        def text():
            return _toml_string(rng, (rng.choice(HOSTILE_TEXT) + rng.choice(HOSTILE_TEXT))
                                .replace("\0", "") or "x")
        lines += ["[compartments.app.grants]",
                  f'd = {{ host = "directory", path = "/srv", mount = {text()} }}',
                  f'e = {{ host = "environment", args = [{text()}, {text()}], '
                  f'vars = {{ {text()} = {text()} }} }}',
                  f'c = {{ compartment = "calc", max_uses = '
                  f'{rng.choice(["1", "4611686018427387904"])}, calls_per_second = 1e9 }}']
    elif rng.random() < 0.8:
        lines.append("[compartments.app.grants]")
        for i in range(rng.randrange(1, 4)):
            extra = rng.sample(sorted(policy.GRANT_KEYS - {"compartment", "host"}),
                               rng.randrange(3))
            body = [rng.choice(GRANT_BASES)] + [f"{_key(rng, k)} = {_value(rng, k)}"
                                                 for k in extra]
            lines.append(f"g{i} = {{ {', '.join(body)} }}")
    if rng.random() < 0.2:
        # friendly: a calls probe, whose functions may only be empty
        point = '"calls"' if friendly else \
            rng.choice(['"functions"', '"calls"', _value(rng, "point")])
        functions = rng.choice(FUNCTIONS) if friendly else \
            rng.choice(FUNCTIONS + [_value(rng, "functions")] * 4)
        lines += ["[compartments.app.probes.p]", f"point = {point}",
                  f"functions = {functions}"]
    return "\n".join(lines) + "\n"


def policy_document(rng: random.Random) -> str:
    """A policy file: [grants] and [limits], as the system file's, with hostile values
    (or, one in two, values that pass)."""
    lines = []
    friendly = rng.random() < 0.5
    if rng.random() < 0.7:
        lines.append("[limits]")
        for k in rng.sample(sorted(Limits.RANGES), rng.randrange(1, 4)):
            lo, hi, size = Limits.RANGES[k]
            good = f"{hi}" if k not in Limits.REAL else f"{hi / 2}"
            lines.append(f"{_key(rng, k)} = {good if friendly else _value(rng, k)}")
    if rng.random() < 0.7:
        lines.append("[grants]")
        for i in range(rng.randrange(1, 3)):
            lines.append(f"p{i} = {{ {rng.choice(GRANT_BASES)} }}")
    return "\n".join(lines) + "\n"


def mutate_text(rng: random.Random, text: str) -> str:
    """Text-level mutations: what no structured writer would produce."""
    n = rng.randrange(2000, 40_000)
    choice = rng.randrange(8)
    lines = text.splitlines()
    if choice == 0:          # a long line inside a multi-line string
        line = rng.choice(["[" + " " * n + "x", "[[" + " " * n, '"a' * (n // 2),
                           "a" + ".a" * (n // 2) + " =", "[" * n])
        return text + 'x = """\n' + line + '\n"""\n'
    if choice == 1:          # a key of many dots
        return text + "a" + ".a" * (n // 2) + " = 1\n"
    if choice == 2 and lines:   # a line cut
        i = rng.randrange(len(lines))
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
    elif choice == 3 and lines:  # a line repeated
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif choice == 4:        # a very long key or value
        return text + f'{"k" * n} = "{"v" * n}"\n'
    elif choice == 5:        # an integer of more digits than Python reads
        return text + f"[compartments.app.limits.x]\ny = {'9' * (4300 + rng.randrange(3))}\n"
    return "\n".join(lines) + "\n"


def _ranges() -> dict:
    out = {k: (lo, hi) for k, (lo, hi, _) in Limits.RANGES.items()}
    out.update({k: (lo, hi) for k, lo, hi, _ in policy.GRANT_QUOTAS})
    out["max_bytes_written"] = (0, policy.MAX_BYTES_WRITTEN)
    return out


RANGES = _ranges()


def _number_ok(name, v) -> bool:
    if v is None:
        return True
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    lo, hi = RANGES.get(name, (-math.inf, math.inf))
    return lo <= v <= hi


POLICY_PATH = "/fuzz/p.toml"


def _read(files: dict, path: str) -> str:
    """A policy file's text, as policy.load's reader: a PolicyError if there is none."""
    if path not in files:
        raise policy.PolicyError(path, "", f"cannot read policy file {path}: no such file")
    return files[path]


def check(text: str, policy_text: str = "") -> None:
    start = time.process_time()
    files = {"/fuzz/system.toml": text, POLICY_PATH: policy_text}
    try:
        system = policy.parse(text, "/fuzz/system.toml", lambda p: _read(files, p))
    except policy.PolicyError as e:
        shown = str(e)
        if "\n" in shown or not shown.isprintable() or len(shown) > policy.SHOWN_ERROR + 40:
            raise Failure("error", f"not one short printable line ({len(shown)}): "
                          f"{shown[:100]!r}") from None
        if not shown.isascii():
            # a letter of another script passes for a Latin one ('c\u0430lc' for calc)
            raise Failure("error", f"a character past ASCII shown as it is: "
                          f"{shown[:100]!r}") from None
        # a refused number or size states its range on the line, whatever the value
        # quoted before it (a size padded with 3,000 spaces pushed it past the cut)
        for rule in (" it must be from ", "must be a whole number from ",
                     "must be a number from "):
            if rule in e.reason and rule not in shown:
                raise Failure("error", f"the line lost {rule.strip()!r}: {shown[:100]!r}")
        system = None
    except Exception as e:  # noqa: BLE001 - anything else is the bug this looks for
        raise Failure("parse", f"{type(e).__name__}: {str(e)[:100]}") from None
    if system is not None:
        _check_values(system)
        _check_types(text)
        _check_output(system)
        _check_where(system, files)
    if time.process_time() - start > 1.0:
        raise Failure("time", f"{time.process_time() - start:.1f} s of CPU")


def _check_values(system) -> None:
    for comp in system.compartments.values():
        for k in Limits.RANGES:
            if not _number_ok(k, getattr(comp.limits, k)):
                raise Failure("values", f"{comp.name}.limits.{k} = {getattr(comp.limits, k)!r}")
        r = comp.restart
        for k in ("max_restarts", "restart_window", "restart_delay"):
            v = getattr(r, k)
            if isinstance(v, float) and not math.isfinite(v):
                raise Failure("values", f"{comp.name}.{k} = {v!r}")
        for g in comp.grants:
            for k in ("max_uses", "expires_after", "calls_per_second", "max_bytes_written"):
                if not _number_ok(k, getattr(g, k)):
                    raise Failure("values", f"{comp.name}.grants.{g.name}.{k} = "
                                  f"{getattr(g, k)!r}")
    if not math.isfinite(system.message_timeout):
        raise Failure("values", f"message_timeout = {system.message_timeout!r}")


def _check_types(text: str) -> None:
    """In an accepted file, each value is of the type docs/policy-reference.md gives
    its key, where a wider one was once taken silently: a declared probe's
    `functions` is a list (a string was split at its commas, and "" was a probe of
    every function)."""
    import tomllib
    doc = tomllib.loads(text)
    for name, body in doc.get("compartments", {}).items():
        for pname, spec in body.get("probes", {}).items():
            if "functions" in spec and not isinstance(spec["functions"], list):
                raise Failure("types", f"compartments.{name}.probes.{pname}.functions = "
                              f"{spec['functions']!r:.60} accepted: not a list")


def _check_where(system, files: dict) -> None:
    """Each grant's and each written limit's origin is a key written in its own file."""
    import functools
    written = functools.cache(lambda file: policy._written_keys(files[file]))
    for comp in system.compartments.values():
        origins = [(f"grant {g.name}", g.origin) for g in comp.grants]
        origins += [(f"limit {k}", o) for k, o in comp.limit_origins.items()]
        for what, origin in origins:
            file, _, key = origin.rpartition(": ")
            if file not in files:
                raise Failure("where", f"{comp.name}'s {what} comes from {file!r}, no file read")
            # written there as it is (line_of finds the line of a prefix too: the
            # compartment's header for a key that file does not have)
            if tuple(key.split(".")) not in {k for k, _line in written(file)}:
                raise Failure("where", f"{comp.name}'s {what}: {key!r} is not written in "
                              f"{file}")


def _check_output(system) -> None:
    interfaces = {c.exports: 1 for c in system.compartments.values() if c.exports}
    plan = preflight.Plan(system, interfaces, {c.name: None for c in
                                               system.compartments.values()})
    for line in authority.holdings(plan).splitlines():
        if not line.isprintable() or not line.isascii():
            raise Failure("check", f"holdings line not printable ASCII: {line[:100]!r}")
    dot = authority.dot(plan)
    if not all(line.isprintable() for line in dot.splitlines()):
        raise Failure("check", "DOT not printable")
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', dot)
    grants = sum(len(c.grants) for c in system.compartments.values())
    if bare.count("->") != grants:
        raise Failure("check", f"DOT has {bare.count('->')} edges for {grants} grants")


def inputs(seed: int, i: int) -> tuple[str, str]:
    """Input `i` of run `seed`: (system file, policy file).  The policy file, and
    whether app names it, come from a generator of their own: the system files
    are those the same seed gave before policy files were fuzzed."""
    rng = random.Random(seed * 1_000_003 + i)
    text = document(rng)
    if rng.random() < 0.3:
        text = mutate_text(rng, text)
    side = random.Random(f"policy {seed} {i}")
    if side.random() < 0.4:
        text = text.replace('module = "app.wat"\n', 'module = "app.wat"\npolicy = "p.toml"\n', 1)
    return text, policy_document(side)


def run(count: int, seed: int = 1, progress=None) -> tuple[int, dict]:
    failures: dict = {}
    for i in range(count):
        try:
            check(*inputs(seed, i))
        except Failure as f:
            failures.setdefault(f"{f.check}: {f.detail[:120]}", []).append(i)
        except Exception:  # noqa: BLE001 - a bug in the harness itself
            failures.setdefault("harness: " + traceback.format_exc(limit=2)[-200:],
                                []).append(i)
        if progress and i % 10000 == 9999:
            progress(i + 1, failures)
    return count, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.policy")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--show", type=int, metavar="INPUT", help="print input INPUT and stop")
    args = ap.parse_args(argv)
    if args.show is not None:
        text, policy_text = inputs(args.seed, args.show)
        print(text, end="")
        if 'policy = "p.toml"' in text:
            print(f"# {POLICY_PATH}:\n{policy_text}", end="")
        return 0
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
