"""Fuzzing the schema loader (`capnp_schemas.load`) as one long-lived process
sees it: pycapnp's parser aborts the whole process on some schemas, so the
loader's promise is that no sequence of loads, whatever the files hold and
however they change between loads, ends the process.

    .venv/bin/python -m fuzz.schemas --count 3000 --seed 1

Each input is an action on a small tree of schema files, then a load of one of
them, in one process that has loaded everything before it:

* write a schema from a small grammar: file ids and declaration ids drawn from
  a pool the files share (so ids collide, within a file, across files, and
  with wsuper's own schemas), nested structs, enums and interfaces with and
  without ids, imports of the other files (relative, into `sub/`, absolute
  through the import path, `/capnp/c++.capnp`), embeds, `-> stream` methods,
  generics; sometimes with bytes changed (syntax errors, no id);
* or remove, rename, symbolic- or hard-link a file, or rewrite one in place
  keeping its size and times.

Checks: `load` returns a module or raises `SchemaError`, nothing else, and
never one whose reason is a Python exception's text (the loader's own failure); an
error is one line (the commands escape what is not printable when they print
it) naming a file of the tree or of wsuper, never the loader's private copy; a module's interfaces can be listed; and the process
never dies.  The inputs run in a child process (an abort there is the finding):
the parent names the input the child died at.  Same seed, same inputs (replay
with the same --seed and --count: each input depends on the ones before it).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

#: ids the files draw from (top bit set; two are wsuper's own: host.capnp's file
#: and probe.capnp's)
POOL = [0xd1c3f0a2b4e5f700 + i for i in range(10)]
#: (one not named *.capnp: a schema may import any name, and only that name is
#: refused as a schema of its own)
FILES = ["a.capnp", "b.capnp", "sub/c.capnp", "sub/d.schema"]


def _own_ids() -> list[int]:
    import capnp_schemas
    return [capnp_schemas.host.schema.node.id, capnp_schemas.probe.schema.node.id]


def _id(rng, own) -> str:
    return f"@0x{rng.choice(POOL + own):016x}"


def _maybe_id(rng, own) -> str:
    return f" {_id(rng, own)}" if rng.random() < 0.2 else ""


def schema_text(rng: random.Random, own: list[int], me: str) -> bytes:
    """A schema file from the grammar (`me`: its own name in the tree)."""
    lines = [f"{_id(rng, own)};"] if rng.random() < 0.97 else []
    others = [f for f in FILES if f != me]
    used = []
    for j, other in enumerate(rng.sample(others, rng.randint(0, len(others)))):
        if rng.random() < 0.3 or other.count("/") < me.count("/"):
            name = "/" + other          # through the import path (`..` leads out)
        else:
            name = os.path.relpath(other, os.path.dirname(me) or ".")
        lines.append(f'using I{j} = import "{name}";')
        used.append(f"I{j}")
    if rng.random() < 0.2:
        lines.append('using Cxx = import "/capnp/c++.capnp";')
    if rng.random() < 0.15:
        lines.append('const blob :Data = embed "blob.bin";')
    for k in range(rng.randint(0, 3)):
        kind = rng.choice(["struct", "struct", "interface", "enum", "generic"])
        if kind == "enum":
            lines.append(f"enum E{k}{_maybe_id(rng, own)} {{ a @0; b @1; }}")
        elif kind == "interface":
            extra = " s @1 (x :UInt8) -> stream;" if rng.random() < 0.3 else ""
            nested = f" interface Inner{_maybe_id(rng, own)} {{ p @0 () -> (); }}" \
                if rng.random() < 0.3 else ""
            lines.append(f"interface Q{k}{_maybe_id(rng, own)} {{ m @0 (x :UInt8) -> "
                         f"(y :UInt8);{extra}{nested} }}")
        elif kind == "generic":
            lines.append(f"struct G{k}{_maybe_id(rng, own)} (T) {{ v @0 :T; }}")
        else:
            field = ""
            if used and rng.random() < 0.25:
                field = f" b @1 :{rng.choice(used)}.S0;"    # may name nothing: an error
            nested = f" struct N{_maybe_id(rng, own)} {{ x @0 :Int32; }}" \
                if rng.random() < 0.4 else ""
            lines.append(f"struct S{k}{_maybe_id(rng, own)} {{ a @0 :UInt8;{field}{nested} }}")
    data = bytearray(("\n".join(lines) + "\n").encode())
    if rng.random() < 0.05 and data:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at:at + rng.randint(0, 3)] = bytes(rng.randrange(256)
                                                    for _ in range(rng.randint(0, 3)))
    return bytes(data)


def _act(rng: random.Random, own: list[int], tree: str) -> str:
    """Change the tree one way; what was done, for a failure's report."""
    name = rng.choice(FILES)
    path = os.path.join(tree, name)
    what = rng.random()
    try:
        if what < 0.6:
            tmp = path + ".new"
            with open(tmp, "wb") as f:
                f.write(schema_text(rng, own, name))
            os.replace(tmp, path)                           # a new inode
            return f"write {name}"
        if what < 0.68:
            os.remove(path)
            return f"remove {name}"
        if what < 0.76:
            other = rng.choice(FILES)
            os.replace(path, os.path.join(tree, other))
            return f"rename {name} {other}"
        if what < 0.84:
            other = rng.choice(FILES)
            if other != name:
                if os.path.lexists(path):
                    os.remove(path)
                os.symlink(os.path.relpath(os.path.join(tree, other), os.path.dirname(path)),
                           path)
            return f"symlink {name} -> {other}"
        if what < 0.88:
            other = rng.choice(FILES)
            if other != name and os.path.exists(os.path.join(tree, other)):
                if os.path.lexists(path):
                    os.remove(path)
                os.link(os.path.join(tree, other), path)
            return f"link {name} {other}"
        # rewritten in place, same size, times kept
        st = os.stat(path)
        with open(path, "rb") as f:
            old = f.read()
        new = schema_text(rng, own, name)[:len(old)].ljust(len(old), b" ")
        with open(path, "r+b") as f:
            f.write(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return f"rewrite in place {name}"
    except OSError as e:
        return f"({name}: {e.strerror})"


def _check_error(e, tree: str, mirror: str | None) -> str | None:
    import capnp_schemas
    text = str(e)
    if "\n" in text:
        return "error: more than one line"
    if mirror and mirror in text:
        return "error: names the private copy"
    if re.match(r"[A-Za-z]+(Error|Exception): ", e.reason):
        # a Python exception's text is the loader's failure, not the schema's (a
        # good file imported as "d.schema" was "ValueError: File does not end
        # with .capnp", from pycapnp's load())
        return f"error: an exception's text: {e.reason.split(':')[0]}"
    roots = [os.path.realpath(tree), tree, *capnp_schemas.IMPORT_PATH]
    if not any(str(e.path).startswith(r) for r in roots):
        return f"error: names {e.path!r}, outside the tree"
    return None


def child(count: int, seed: int, breakage: str | None) -> int:
    """Run the inputs in this process, saying each on stdout before it runs."""
    import capnp_schemas
    if breakage == "nocheck":                   # what the fuzzer must catch
        capnp_schemas._check_parsed = lambda *a, **k: None
    elif breakage == "mirror-names":
        original = capnp_schemas.SchemaError.__init__

        def naming_the_copy(self, path, line, reason):
            original(self, path, line, f"{reason} ({capnp_schemas._mirror()})")
        capnp_schemas.SchemaError.__init__ = naming_the_copy
    elif breakage == "capnp-names":             # pycapnp's load() as it is (2a207a8)
        capnp_schemas.PARSE_AFTER = capnp_schemas.PARSE_AFTER.replace("_AnyName(path)", "path")
        capnp_schemas.load_whole = lambda parser, path, imports: parser.load(
            path, imports=imports)
    launched = None
    try:
        if breakage == "capnp-names":
            raise RuntimeError("the check in this process's fork, which runs PARSE_AFTER")
        from supervisor.launch import Launched
        launched = Launched()
        capnp_schemas.parse_elsewhere = launched.parse_schema      # ~5 ms a check
    except Exception:   # noqa: BLE001 (no zygote: a new interpreter checks instead)
        pass
    own = _own_ids()
    loaded = 0
    tree = tempfile.mkdtemp(prefix="wsuper-fuzz-schemas-")
    try:
        os.makedirs(os.path.join(tree, "sub"))
        for name in ("blob.bin", "sub/blob.bin"):
            with open(os.path.join(tree, name), "wb") as f:
                f.write(b"\0\1\2")
        for i in range(count):
            rng = random.Random(seed * 1_000_003 + i)
            did = _act(rng, own, tree)
            name = rng.choice(FILES)
            print(f"input {i} {did}; load {name}", flush=True)
            try:
                module = capnp_schemas.load(os.path.join(tree, name))
            except capnp_schemas.SchemaError as e:
                mirror = (getattr(capnp_schemas, "_MIRROR", None) or [None])[0]
                problem = _check_error(e, tree, mirror)
                if problem:
                    print(f"fail {problem}\t{i}", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 (the finding)
                print(f"fail raised {type(e).__name__}\t{i}", flush=True)
                continue
            loaded += 1
            try:
                capnp_schemas.interfaces(module)
                capnp_schemas.nested_interfaces(module)
            except Exception as e:  # noqa: BLE001
                print(f"fail module: {type(e).__name__}\t{i}", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        if launched is not None:
            launched.popen.kill()
            launched.popen.wait()
    print(f"done {count} {loaded}", flush=True)
    return 0


def run(count: int, seed: int = 1, progress=None, breakage: str | None = None
        ) -> tuple[int, dict]:
    """(inputs done, {failure class: [inputs]}) of a child process running them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "fuzz.schemas", "--child", "--count", str(count),
            "--seed", str(seed)] + (["--break", breakage] if breakage else [])
    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    failures: dict[str, list] = {}
    done, last = 0, None
    for line in proc.stdout:
        if line.startswith("input "):
            last = line.split()[1]
            done = int(last)
            if progress and done and done % 500 == 0:
                progress(done, failures)
        elif line.startswith("fail "):
            key, _, i = line[5:].rstrip("\n").rpartition("\t")
            failures.setdefault(key, []).append(int(i))
        elif line.startswith("done "):
            done, loaded = (int(n) for n in line.split()[1:3])
            if progress:
                print(f"{loaded} of {done} loaded, the others refused", file=sys.stderr)
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        failures.setdefault(f"died: exit {proc.returncode} ({err.strip()[-300:]!r})",
                            []).append(int(last) if last is not None else -1)
    return done, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.schemas")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--break", dest="breakage", choices=["nocheck", "mirror-names", "capnp-names"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.count, args.seed, args.breakage)
    from fuzz import run_and_report
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
