"""Checks that need files or wasmtime, done before any process starts.

`prepare(system)` loads the schema files, resolves every `exports` interface
name to its Cap'n Proto interface id, and compiles each module once to check
that it is wasm and imports only the guest ABI.  Every failure is a
PolicyError naming the key in system.toml.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import attrs
import capnp

import capnp_schemas
from capnp_schemas import hosted
from capnp_schemas.text import first_line, quoted
from compartments import abi, protect, wasmbin, zygote

from .policy import PolicyError, System, _Where, grant_where, limit_where

if TYPE_CHECKING:                        # imported where a check needs it (_wasm)
    import wasmtime


def _wasm():
    """compartments.wasm, and with it wasmtime (~27 ms of CPU to import): imported
    where a check needs them, in the compiler child that runs it or here before
    the first child this process forks for one, never with this module (`wsuper
    up` checks its first module in a child that imports them itself: ChecksSoon,
    and runs on without them: docs/performance.md, "Start-up, sixth pass")."""
    from compartments import wasm
    return wasm


def _new_engine():
    """A wasmtime engine configured as the engines' (wasm.engine_config)."""
    import wasmtime
    return wasmtime.Engine(_wasm().engine_config())


@attrs.frozen
class Plan:
    system: System
    interfaces: dict        # interface name -> interface id
    main_interface: dict    # compartment name -> interface id | None
    names: dict = {}        # interface id -> (name, {method id: method name})
    interface_modules: dict = {}   # interface name -> pycapnp interface module
    extends: dict = {}      # interface id -> the ids of every interface it extends
    programs: frozenset = frozenset()   # the compartments whose module exports _start
    #: interface name -> capnp_schemas.fingerprint of the schema that declares it (and
    #: all it reads), as loaded: a running system tells `wsuper call` (op "socket")
    fingerprints: dict = {}


HOST_INTERFACES = hosted.KINDS          # host capability kind -> interface name



class ChecksSoon:
    """The check of a system's first module (_module_facts), started in its child
    (zygote.start_in_a_compiler) as soon as the policy is read: `wsuper up` imports
    what the system runs on (trio, the runtime: ~70 ms of its CPU) while that child
    compiles the module on the other core, and `prepare` takes its answer where it
    would have started it (docs/performance.md, "Start-up, sixth pass").  One
    child, as `prepare` runs one at a time: its memory is bounded as before."""

    def __init__(self, system: System):
        self.started: dict = {}          # module path -> zygote.InACompiler
        comp = next(iter(system.compartments.values()), None)
        if comp is None:
            return
        path = comp.module
        try:                # wasmtime imported and its engine made in the child
            self.started[path] = zygote.start_in_a_compiler(
                lambda: _module_facts(_new_engine(), path), path, system.engine_user)
        except zygote.CompilerFailed:
            pass                         # _prepare starts it again, and says why

    def take(self, path: str):
        """The child started for the module at `path`, or None."""
        return self.started.pop(path, None)

    def cancel(self):
        """End the children whose answers were not taken (a system refused first)."""
        while self.started:
            self.started.popitem()[1].cancel()


def prepare(system: System, modules_soon=None, checks: ChecksSoon | None = None) -> Plan:
    """The checked plan of `system`.  `modules_soon(system)`: called once the schemas
    are parsed, before the modules are checked (`wsuper up`: the zygote's compiles
    of them start then, beside these checks: launch.Launched.compile_soon).
    `checks`: module checks started already (ChecksSoon), whose answers are taken
    where each would have started."""
    # the file read again to name lines in errors, as load reads it (a regular file,
    # bounded, UTF-8): with open(), one replaced since load by a file that is not
    # UTF-8 was a UnicodeDecodeError traceback, and by a FIFO a wait for ever
    where = _Where.of_file(system.path)
    interfaces, origin, ifaces, every = _schemas(system, where)
    if modules_soon is not None:
        modules_soon(system)
    plan = _prepare(system, where, interfaces, origin, ifaces, every, checks)
    return attrs.evolve(plan, fingerprints=_fingerprints(interfaces, origin))


def _fingerprints(interfaces, origin) -> dict:
    """Interface name -> the fingerprint of the schema that declares it, as loaded."""
    return {name: capnp_schemas.fingerprint(origin[name]) for name in interfaces}


def exported_interfaces(system: System) -> dict:
    """Interface name -> pycapnp interface module of each interface the system's
    schemas declare: what `wsuper call` needs to call a running system's external
    compartment, and nothing else.  Not `prepare`'s checks of the modules, nor
    `policy.load`'s of the grants' paths: those look at the disk as it is now, where
    a compartment may have removed or renamed what another's grant names (through a
    writable grant of its own), and `wsuper call` of the system that runs, and serves,
    was refused ("... is not an existing directory")."""
    return exported(system)[0]


def exported(system: System, wanted: str | None = None) -> tuple[dict, dict]:
    """(exported_interfaces(system), interface name -> the fingerprint of the schema
    that declares it, as just loaded: Plan.fingerprints, to compare with the running
    system's).  `wanted`: the interface `wsuper call` needs; when a schema does not
    load, those that do are enough if one of them declares it (then only theirs are
    returned).  A schema broken since `up` (shared with another system, edited) that
    declares nothing the call needs locked the operator out of `wsuper call` of
    every compartment of the system that runs."""
    where = _Where.of_file(system.path)
    try:
        interfaces, origin, ifaces, _every = _schemas(system, where)
    except PolicyError as first:
        if wanted is None:
            raise
        for path in system.schemas:          # each alone: the one that declares it
            try:
                interfaces, origin, ifaces, _every = _schemas(
                    attrs.evolve(system, schemas=(path,)), where)
            except PolicyError:
                continue
            if wanted in interfaces:
                break
        else:
            raise first                      # the first error, as without `wanted`
    return {name: ifaces[name] for name in interfaces}, _fingerprints(interfaces, origin)


def _schemas(system: System, where) -> tuple[dict, dict, dict, list]:
    """The system's schemas loaded: (interface name -> id, name -> the schema file
    that declares it, name -> pycapnp interface module (the host's too), every
    (name, interface) with the nested ones)."""
    interfaces: dict[str, int] = {}
    origin: dict[str, str] = {}
    host = {**capnp_schemas.interfaces(capnp_schemas.host),
            **capnp_schemas.interfaces(capnp_schemas.probe)}
    ifaces = {name: host[name] for name in HOST_INTERFACES.values()}   # name -> module
    # every interface with its name, the host's and the schemas': a schema may declare
    # one named as a host interface (File, Probe), and each keeps its own id and name
    every = list(ifaces.items())
    files: dict[tuple, int] = {}        # (device, inode) -> where it is listed first
    for i, path in enumerate(system.schemas):
        key = f"system.schemas[{i}]"
        # one file under two names (a symbolic link, a hard link): policy.parse
        # compares spellings only, and the file loaded twice stopped at "Duplicate
        # ID @0x...", never saying the list repeats it
        try:
            st = os.stat(path)
        except OSError:
            st = None                       # load says why
        if st is not None:
            first = files.setdefault((st.st_dev, st.st_ino), i)
            if first != i:
                raise where.error(key, f"{quoted(path)} is listed already, at "
                                  f"system.schemas[{first}] ({quoted(system.schemas[first])}, "
                                  "the same file through a symbolic or hard link)")
        try:
            module = capnp_schemas.load(path)
        except capnp_schemas.SchemaError as e:
            if e.line is None:
                # nothing in a file's text to point at (its name, its size, the parser's
                # end): said at the line that lists the schema, as every other error of
                # the system file ("FILE:LINE: KEY: REASON"); it was "SCHEMA: REASON
                # (the schema is listed at system.schemas[0] in SYSTEM)", no line
                read = "" if e.path == path else f" (which {quoted(path)} reads)"
                raise where.error(key, f"{quoted(e.path)}{read}: {e.reason}") from None
            raise PolicyError(e.path, "", f"{e.reason} (the schema is listed at {key} in "
                              f"{quoted(system.path)})", e.line) from None
        except (capnp.KjException, OSError, ValueError) as e:
            raise where.error(key, f"cannot load schema {quoted(path)}: {first_line(e)}") from None
        for name, iface in capnp_schemas.interfaces(module).items():
            if name in interfaces:
                raise where.error(key, f"interface {name} is declared in both "
                                  f"{quoted(origin[name])} and {quoted(path)}")
            interfaces[name] = iface.schema.node.id
            origin[name] = path
            ifaces[name] = iface
            every.append((name, iface))
        # an interface declared inside another declaration (`Calc.Inner`, returned by
        # Calc.make) is reached through a grant like any other, but an allow list
        # could not name it ("unknown interface 'Calc.Inner'"): it passed every grant
        # unrestricted.  Named by its qualified name; it is no export.
        for name, iface in capnp_schemas.nested_interfaces(module).items():
            origin.setdefault(name, path)
            every.append((name, iface))
    # and one declared in a file a schema imports (Calc.newCounter returning
    # `import "lib.capnp".Counter`), which is no export either: an allow list could
    # not name it ("unknown interface 'Counter'"), so it passed every grant
    # unrestricted, and where a listed schema declared one of the same name (a
    # decoy Counter), the name was that one's alone and the real Counter's every
    # method passed.  Named as in its own file; a name several interfaces share
    # stands for each of them (_resolve_method restricts them all)
    known = {i.schema.node.id for _n, i in every}
    walked = set(system.schemas)        # each file once, however many schemas import it
    for i, path in enumerate(system.schemas):
        try:
            found = capnp_schemas.imported(path)
        except capnp_schemas.SchemaError as e:
            raise PolicyError(e.path, "", f"{e.reason} (imported by {quoted(path)}, listed at "
                              f"system.schemas[{i}] in {quoted(system.path)})", e.line) from None
        except (capnp.KjException, OSError, ValueError) as e:
            raise where.error(f"system.schemas[{i}]", f"cannot load a file {quoted(path)} "
                              f"imports: {first_line(e)}") from None
        for file, module in found.items():
            if file in walked:
                continue
            walked.add(file)
            for name, iface in {**capnp_schemas.interfaces(module),
                                **capnp_schemas.nested_interfaces(module)}.items():
                if iface.schema.node.id not in known:
                    known.add(iface.schema.node.id)
                    origin.setdefault(name, file)
                    every.append((name, iface))
    return interfaces, origin, ifaces, every


def _prepare(system: System, where, interfaces, origin, ifaces, every,
             checks: ChecksSoon | None = None) -> Plan:
    names = {i.schema.node.id: (n, _method_names(i)) for n, i in every}
    gateway = hosted.GATEWAY                # not granted, but called: named in the audit
    names[gateway.id] = (gateway.name, {m.ordinal: m.name for m in gateway.methods})
    by_name: dict[str, list[int]] = {}      # name -> the id of each interface so named
    for n, i in every:
        by_name.setdefault(n, []).append(i.schema.node.id)
    # id -> the ids of every interface it extends (transitively): an inherited method
    # is called with its own interface's id, so an allow list that restricts Counter
    # must restrict the methods Counter inherits too (Base.reset on a Counter passed
    # an allow list of Counter.inc as a call on an interface it did not mention)
    supers = {}
    for n, i in every:
        try:
            supers[i.schema.node.id] = _superclasses(i.schema, names)
        except ExtendsTooMany as e:
            path = origin.get(n, "")
            key = f"system.schemas[{system.schemas.index(path)}]" \
                if path in system.schemas else "system.schemas"
            raise where.error(key, f"{quoted(path)}: {e}" if path else str(e)) from None

    main = {}
    wheres = {where.path: where}    # a grant is reported where it is written (grant_where)
    checked = {}        # module path -> (import problem, imports WASI, exports dispatch,
    #                     exports _start, ...)
    programs = set()    # the compartments whose module exports _start: a program's
    #                     start that always fails still ends the system (Lifecycle)
    engine = None       # as the engines will compile them: made before the first child

    def new_engine():
        nonlocal engine
        if engine is None:
            engine = _new_engine()
        return engine
    for comp in system.compartments.values():
        key = f"compartments.{comp.name}"
        if comp.exports is not None and comp.exports not in interfaces:
            known = ", ".join(sorted(interfaces)) or "none: list schema files in system.schemas"
            raise where.error(f"{key}.exports", f"unknown interface {comp.exports!r} "
                              f"(known: {known})")
        main[comp.name] = interfaces.get(comp.exports) if comp.exports else None
        if comp.module not in checked:          # each module file once
            started = checks.take(comp.module) if checks else None
            if started is None:
                new_engine()
            facts = _bounded(where, f"{key}.module", comp.module,
                             lambda: _module_facts(engine, comp.module), _facts_problem,
                             system.engine_user, started=started)
            if "error" in facts:
                raise where.error(f"{key}.module", facts["error"])
            checked[comp.module] = (facts["problem"], facts["wasi"], facts["dispatch"],
                                    facts["program"], facts["pages"], tuple(facts["tables"]))
        problem, is_wasi, dispatch, has_start, pages, tables = checked[comp.module]
        if has_start:
            programs.add(comp.name)
        if problem:
            raise where.error(f"{key}.module", f"{quoted(comp.module)} {problem}")
        if pages * 65536 > comp.limits.memory:
            lwhere, lkey = limit_where(comp, "memory", wheres, where)
            raise lwhere.error(lkey,
                              f"{quoted(comp.module)}'s memory starts at {pages} pages "
                              f"({pages * 65536} bytes), more than the limit of "
                              f"{comp.limits.memory} bytes")
        for i, elements in enumerate(tables):
            if elements > comp.limits.table_elements:
                lwhere, lkey = limit_where(comp, "table_elements", wheres, where)
                raise lwhere.error(lkey,
                                  f"{quoted(comp.module)}'s table {i} starts at {elements} elements, "
                                  f"more than the limit of {comp.limits.table_elements} "
                                  f"(each table)")
        if is_wasi:
            _check_wasi_grants(wheres, comp)
        _check_environment_fits(wheres, comp)
        _check_start_fits(wheres, comp)
        if comp.protect is not None and comp.protect.required:   # the default is never an error
            new_engine()
            refused = _bounded(where, f"{key}.module", comp.module,
                               lambda: _protect_refusal(engine, comp), _refusal_problem,
                               system.engine_user)
            if refused:
                # a limit where it was written (limits.memory, maybe in the policy file)
                rwhere, rkey = limit_where(comp, refused[0][len("limits."):], wheres, where) \
                    if refused[0].startswith("limits.") else (where, f"{key}.{refused[0]}")
                raise rwhere.error(rkey, f"{quoted(comp.module)}: {refused[1]}")
        if comp.instrument:
            # as every start compiles it (wasm.compile_binary_for): probe sites, then
            # protection.  A module the rewriting refuses (more than 8 MiB, more than
            # 2^20 sites, an import of wsuper_probe's) passed check, and failed every
            # start ("cannot instrument it: ...") until it failed for good; and each
            # declared probe must cover a site (a pattern no function matched passed
            # check, and every start said "cannot add declared probe").  After the
            # protection check above: a protection refused is said at its own key
            new_engine()
            refused = _bounded(where, f"{key}.instrument", comp.module,
                               lambda: _instrument_refusal(engine, comp),
                               lambda r: _probe_refusal_problem(r, len(comp.probes)),
                               system.engine_user, probes=True)
            if refused and refused[0] == _PROBE_MEMORY:
                lwhere, lkey = limit_where(comp, "memory", wheres, where)
                raise lwhere.error(lkey, f"{quoted(comp.module)}: {refused[1]} (every start "
                                   f"of {comp.name} would fail: it could never start)")
            if refused and refused[0] < 0:
                raise where.error(f"{key}.instrument", f"{quoted(comp.module)} cannot be "
                                  f"compiled with the probe sites of "
                                  f"{', '.join(comp.instrument)} as every start of "
                                  f"{comp.name} compiles it (it could never start): "
                                  f"{refused[1]}")
            if refused:
                probe = comp.probes[refused[0]]
                raise where.error(f"{key}.probes.{probe.name}.functions",
                                  f"{refused[1]}: every start of {comp.name} would leave "
                                  f"this declared probe out")
        if comp.exports and not dispatch:
            raise where.error(f"{key}.exports", f"{quoted(comp.module)} does not export "
                              f"{abi.EXPORT_DISPATCH}, so it cannot serve {comp.exports}")
    resolved = {}
    index: dict = {}        # interface id -> its methods by name (_methods_by_name)
    for comp in system.compartments.values():
        grants = []
        for g in comp.grants:
            if g.allow is not None:
                # the interface granted, by its id: by its name, a schema's File or
                # Directory stood for the host's
                granted = (interfaces[system.compartments[g.target].exports]
                           if g.kind == "compartment" else hosted.BY_KIND[g.target].id)
                methods, mentioned = set(), {granted, *supers.get(granted, ())}
                gwhere, gkey = grant_where(g, wheres)
                for m in g.allow:
                    ids, pairs = _resolve_method(gwhere, f"{gkey}.allow", m, granted,
                                                 by_name, names, supers, index)
                    methods |= pairs
                    mentioned |= ids
                g = attrs.evolve(g, methods=frozenset(methods), mentioned=frozenset(mentioned))
            grants.append(g)
        resolved[comp.name] = attrs.evolve(comp, grants=tuple(grants))
    system = attrs.evolve(system, compartments=resolved)
    return Plan(system, interfaces, main, names, ifaces, supers, frozenset(programs))


def _bounded(where, key: str, path: str, work, problem, user=None, probes: bool = False,
             started=None):
    """`work()` in a child under the limits of the zygote's compilers: a module can be
    made to take minutes and tens of GB to compile, or abort the process that
    compiles it when memory runs out, and this process is `wsuper check`'s or the
    supervisor's.  A child that failed is a PolicyError at `key`, and so is an
    answer `problem(answer)` finds fault with: the child parsed a hostile module,
    and its answer is hostile input here (not JSON, or a list for a dict, was a
    traceback out of `wsuper check` and `up`).  `started`: that child, started
    already (ChecksSoon)."""
    try:
        answer = started.result() if started is not None else \
            zygote.in_a_compiler(work, path, user, probes)
    except zygote.CompilerFailed as e:
        raise where.error(key, f"cannot compile {quoted(path)}: {e}") from None
    wrong = problem(answer)
    if wrong:
        raise where.error(key, f"cannot compile {quoted(path)}: its compiler's answer {wrong}")
    return answer


#: Characters at most of a text a compiler child answers (a problem names an import,
#: whose name may be 100,000 bytes; a refusal's reason)
TEXT_MAX = 2000


def _is_text(value, limit: int = TEXT_MAX) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _is_count(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


def _facts_problem(facts) -> str | None:
    """What is wrong with an answer of _module_facts, or None."""
    if not isinstance(facts, dict):
        return "is no object"
    if set(facts) == {"error"}:
        return None if _is_text(facts["error"], 2 * TEXT_MAX) else "has a bad error"
    if set(facts) != {"problem", "wasi", "dispatch", "program", "pages", "tables"}:
        return f"has the wrong keys ({', '.join(sorted(map(str, facts)))[:200]})"
    if not (facts["problem"] is None or _is_text(facts["problem"])) \
            or type(facts["wasi"]) is not bool or type(facts["dispatch"]) is not bool \
            or type(facts["program"]) is not bool \
            or not _is_count(facts["pages"]) or not isinstance(facts["tables"], list) \
            or len(facts["tables"]) > 100_000 or not all(map(_is_count, facts["tables"])):
        return "has a value of the wrong kind"
    return None


def _refusal_problem(refused) -> str | None:
    """What is wrong with an answer of _protect_refusal, or None."""
    if refused is None:
        return None
    if not (isinstance(refused, list) and len(refused) == 2 and _is_text(refused[0], 100)
            and refused[0].replace(".", "").replace("_", "").isalnum()
            and refused[0].isascii() and _is_text(refused[1])):
        return "is no refusal"
    return None


def _module_facts(engine, path: str) -> dict:
    """What the checks need of the module at `path` (JSON values, made in a child):
    {"error": why it is no module} or its import problem, whether it imports WASI,
    whether it exports the dispatch entry, its memory and its tables.  (Not every
    export name: a module of 256 MiB may have 100,000 of 100 KB each.)"""
    import wasmtime
    wasm = _wasm()
    try:
        module, binary = _compile(engine, path)
    except _NoModule as e:
        return {"error": _clip(str(e), 2 * TEXT_MAX)}
    # a function type holding a v128 or a GC reference is read from the binary: asked
    # of wasmtime it aborts this child ("its compiler was killed by SIGABRT",
    # naming neither the function nor its type)
    try:
        known_imports, known_exports = wasmbin.function_types(binary)
    except (wasmbin.BinaryError, wasmbin.Unsupported):
        known_imports, known_exports = {}, {}
    imports = list(wasm.describe_imports(module, known_imports))
    # only the entry points' types (wasm.export_types: reading a type that holds a
    # v128 or a GC reference aborts this child)
    entries = {e.name: wasm._signature(e.type, known_exports.get(e.name))
               if isinstance(e.type, wasmtime.FuncType)
               else abi.MEMORY_KIND if isinstance(e.type, wasmtime.MemoryType)
               else None for e in module.exports
               if e.name in abi.ENTRY_TYPES or e.name == abi.EXPORT_MEMORY}
    problem = (abi.check_imports(imports) or abi.check_entries(entries)
               or _instantiation_problem(binary))
    return {"problem": None if problem is None else _clip(problem, TEXT_MAX),
            "wasi": any(m == abi.WASI_MODULE for m, *_ in imports),
            "dispatch": abi.EXPORT_DISPATCH in entries,
            "program": abi.EXPORT_START in entries,
            "pages": _memory_pages(binary, module), "tables": list(_tables(binary))}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _protect_refusal(engine, comp):
    """[key, reason] of a required protection setting the module cannot meet, or
    None (made in a child: it compiles the module as rewritten)."""
    try:
        protect.check_file(engine, comp.module, comp.protect, comp.limits.memory)
    except protect.ProtectError as e:
        return [e.key, _clip(e.reason, TEXT_MAX)]
    return None


#: _instrument_refusal's answer for probe sites that need more probe memory than
#: the compartment's limits.memory lets any of its memories have
_PROBE_MEMORY = -2


def _instrument_refusal(engine, comp) -> list | None:
    """[-1, why] if the module of `comp` cannot be compiled with its probe sites
    (and its protection) as its engine compiles it at every start (engine._load);
    [_PROBE_MEMORY, why] if those sites need a probe memory larger than
    limits.memory (the engine refuses every start: Sites.memory_problem);
    [i, why] if its i-th declared in-module probe covers no site there (the
    supervisor adds it at every start: probes.Registry.add); else None.  Made in a
    child: it runs wasm-tools."""
    import wasmtime

    from compartments import instrument

    from .probes import IN_MODULE, Registry
    wasm = _wasm()
    try:
        module, sites, layout, binary = wasm.compile_binary_for(
            engine, comp.module, comp.instrument, comp.protect, comp.limits.memory)
    except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError,
            instrument.InstrumentError) as e:
        return [-1, _clip(first_line(e) or type(e).__name__, TEXT_MAX)]
    problem, _description = wasm.describe(module, sites, layout, binary)
    if problem is not None:
        return [-1, _clip(problem, TEXT_MAX)]
    too_big = sites.memory_problem(comp.limits.memory) if sites is not None else None
    if too_big:
        return [_PROBE_MEMORY, _clip(too_big, TEXT_MAX)]
    for i, spec in enumerate(comp.probes):
        if spec.point in IN_MODULE and not Registry.select(sites, spec):
            return [i, _clip(f"no function of {comp.name} matches "
                             f"{', '.join(spec.functions) or 'any'} (with {spec.point} "
                             f"sites)", TEXT_MAX)]
    return None


def _probe_refusal_problem(answer, probes: int) -> str | None:
    """What is wrong with an answer of _instrument_refusal, or None."""
    if answer is None:
        return None
    if not (isinstance(answer, list) and len(answer) == 2 and type(answer[0]) is int
            and _PROBE_MEMORY <= answer[0] < probes and _is_text(answer[1])):
        return "is no refusal"
    return None


def _instantiation_problem(binary: bytes) -> str | None:
    """What would make every engine of this module fail to start although it compiles
    (wasmbin.instantiation_problem); nothing if the module cannot be walked here
    (wasmtime has validated it: the engine says why at start)."""
    try:
        problem = wasmbin.instantiation_problem(binary)
    except ValueError:                   # BinaryError, Unsupported
        return None
    # said after the module's path, as the import and export problems are ("m.wasm
    # imports env.open, ..."): "m.wasm its data segment 0 ..." read as no sentence
    return None if problem is None else f"cannot be instantiated: {problem}"


def _memory_pages(binary: bytes, module) -> int:
    """The initial size of the module's largest memory, in pages: exported or not,
    every memory is held to limits.memory (one not exported as `memory` passed
    here, and failed every start)."""
    try:
        return max(wasmbin.memory_minimums(binary), default=0)
    except ValueError:                   # BinaryError, Unsupported: what it exports
        import wasmtime
        return next((e.type.limits.min for e in module.exports
                     if e.name == abi.EXPORT_MEMORY
                     and isinstance(e.type, wasmtime.MemoryType)), 0)


def _tables(binary: bytes) -> tuple[int, ...]:
    """Each table's initial size; none known if the module cannot be walked here
    (wasmtime has validated it: the engine's own limit still holds at start)."""
    try:
        return wasmbin.table_minimums(binary)
    except ValueError:                   # BinaryError, Unsupported
        return ()


class _NoModule(Exception):
    """The file is no module that compiles (the text says why, after its path)."""


def _compile(engine, path) -> tuple[wasmtime.Module, bytes]:
    """Compile a module file, with an error that says what the file is when it is not
    WebAssembly (a .wasm is binary; a .wat is UTF-8 text).  Returns the module and
    its binary (a .wat's, made from its text)."""
    import wasmtime
    wasm = _wasm()
    try:
        # as every start reads it (wasm.read_file): a regular file of at most
        # MAX_MODULE_BYTES, opened without blocking; it may have changed since
        # policy.load looked at it (a FIFO there held check and up in open())
        data = wasm.read_file(path)
    except wasm.ModuleFileError as e:
        raise _NoModule(f"module file {quoted(path)} {str(e).removeprefix('the file ')}") from None
    except OSError as e:
        raise _NoModule(f"cannot read {quoted(path)}: {e.strerror or e}") from None
    if path.endswith(".wat") and not data.startswith(b"\0asm"):
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _NoModule(f"{path} is not WebAssembly text: it is not UTF-8 "
                            f"(byte {e.start}){_what(data)}") from None
    elif not data.startswith(b"\0asm"):
        raise _NoModule(f"{path} is not a WebAssembly binary: it does not start with "
                        f"\\0asm{_what(data)}")
    else:
        source = data
    try:
        binary = source if isinstance(source, bytes) else bytes(wasmtime.wat2wasm(source))
        return wasmtime.Module(engine, binary), binary
    except wasmtime.WasmtimeError as e:
        raise _NoModule(f"{path} is not a valid wasm module: {_why_invalid(e)}") from None


def _why_invalid(e) -> str:
    """wasmtime's reason in one line: its first line, the innermost cause (its first
    line says only "failed to compile: wasm[0]::function[0]"), and, for text, the
    line and column (its first line says only "unknown operator or unexpected
    token").  The source lines it quotes are left out."""
    import re
    lines = [l.strip() for l in str(e).splitlines()]
    head = lines[0] if lines and lines[0] else type(e).__name__
    causes = []
    if "Caused by:" in lines:
        for line in lines[lines.index("Caused by:") + 1:]:
            if line:
                causes.append(re.sub(r"^\d+: ", "", line))
    where = next((m for m in (re.match(r"--> .*?:(\d+):(\d+)$", l) for l in lines) if m), None)
    text = f"{head}: {causes[-1]}" if causes else head
    if where:
        text += f" (line {where.group(1)}, column {where.group(2)})"
    return text[:500]


def _what(data: bytes) -> str:
    for magic, name in ((b"\x7fELF", "an ELF executable"), (b"MZ", "a Windows executable"),
                        (b"#!", "a script"), (b"PK\x03\x04", "a zip archive"),
                        (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file")):
        if data.startswith(magic):
            return f" (it looks like {name})"
    return ""


def _check_wasi_grants(wheres, comp):
    """What a WASI program takes from its grants must be unambiguous (compartments/wasi.py).
    Each error names the grant where it is written (the system file or a policy file)."""
    import posixpath
    seen, places = {}, {}
    for g in comp.grants:
        gwhere, gkey = grant_where(g, wheres)
        target = g.target if g.kind == "host" else "compartment"
        if target == "directory":
            # wasi-libc strips a preopen's leading "/" and "./" ("." and "/" are one
            # place) and takes one preopen of a name, the last: a second grant there
            # hid the first, which stayed granted and listed, out of reach
            mount = g.mount if g.mount is not None else f"/{g.name}"
            place = posixpath.normpath("/" + mount.lstrip("/"))
            if place in places:
                raise gwhere.error(f"{gkey}.mount" if g.mount is not None else gkey,
                                   f"a WASI program would see this directory where it sees "
                                   f"{places[place]!r} ({place}), and only one of them: "
                                   f"give one of them another mount")
            places[place] = g.name
        if target in ("clock", "random", "environment"):
            if target in seen:
                raise gwhere.error(gkey, f"a WASI program takes its {target} from one grant, "
                                   f"and {seen[target]!r} is one already")
            seen[target] = g.name
        wanted = {"stdin": ("file",), "stdout": ("log", "file"), "stderr": ("log", "file")}
        if g.name in wanted and target not in wanted[g.name]:
            raise gwhere.error(gkey, f"a WASI program's {g.name} must be a "
                               f"{' or '.join(wanted[g.name])} grant, not {target}")
        # a file its program could never use as the stream: every printf (or read) of
        # it failed EBADF, the output lost without a word
        if target == "file" and g.name == "stdin" and g.append_only:
            raise gwhere.error(gkey, "a WASI program reads its stdin: an append_only file "
                               "gives none of it; leave append_only out (a stdin file "
                               "is read_only)")
        if target == "file" and g.name in ("stdout", "stderr") and g.read_only:
            raise gwhere.error(gkey, f"a WASI program writes its {g.name}: a read_only file "
                               f"takes none of it; leave read_only out (a {g.name} file is "
                               f"append_only)")


def _check_environment_fits(wheres, comp):
    """An environment grant's arguments and variables must fit in one answer to its
    holder (limits.message_size): a larger one was refused at every Environment
    call (E2BIG), and a WASI program, which reads them before main, ended with exit
    code 71 and no word of why."""
    from capnp_schemas import payloads
    env = hosted.BY_KIND["environment"]
    for g in comp.grants:
        if g.kind != "host" or g.target != "environment":
            continue
        for method, key, values in (
                ("args", "args", {"args": list(g.args)}),
                ("vars", "vars", {"vars": [{"name": k, "value": v} for k, v in g.vars]})):
            size = payloads.build(env.method(method).results, values)[0].size()
            if size > comp.limits.message_size:
                gwhere, gkey = grant_where(g, wheres)
                raise gwhere.error(f"{gkey}.{key}", f"its {key} take {size:,} bytes in a "
                                   f"message, more than compartment {comp.name} accepts "
                                   f"(limits.message_size = {comp.limits.message_size:,}): "
                                   f"it could never read them")


def _check_start_fits(wheres, comp):
    """The message that starts a compartment (Engine.start: each grant's name, kind
    and mount, as control.Bootstrap sends it) must fit in what it accepts
    (limits.message_size): a larger one failed every start ("a message of N bytes
    is more than app accepts") until max_restarts, naming no grant, after check
    had passed it (a directory grant's mount has no bound of its own).  It carries
    each grant as a capability, and its engine holds each in its c-list: more than
    one message carries (protocol.MAX_CAPS_PER_MESSAGE) or than limits.handles
    failed every start too ("internal error, connection aborted: ... 257
    capabilities in one message", "app would hold more than 3 capabilities")."""
    from capnp_schemas import payloads, protocol
    n = len(comp.grants)
    if n > min(protocol.MAX_CAPS_PER_MESSAGE, comp.limits.handles):
        if comp.limits.handles < protocol.MAX_CAPS_PER_MESSAGE:
            limit, what = comp.limits.handles, (f"capabilities it may hold (limits.handles "
                                                f"= {comp.limits.handles:,})")
        else:
            limit, what = protocol.MAX_CAPS_PER_MESSAGE, "capabilities one message carries"
        gwhere, gkey = grant_where(comp.grants[limit], wheres)
        raise gwhere.error(gkey, f"compartment {comp.name} has {n:,} grants, more than the "
                                 f"{limit:,} {what}: it could never start")
    names = [(g.name, "compartment" if g.kind == "compartment" else g.target,
              (g.mount or f"/{g.name}") if g.kind == "host" and g.target == "directory" else "")
             for g in comp.grants]
    size = payloads.grants_content(names).size()
    if size <= comp.limits.message_size:
        return
    g, (_n, _k, mount) = max(zip(comp.grants, names), key=lambda p: sum(map(len, p[1])))
    gwhere, gkey = grant_where(g, wheres)
    raise gwhere.error(f"{gkey}.mount" if g.mount is not None and len(mount) > len(g.name)
                       else gkey,
                       f"compartment {comp.name}'s grants take {size:,} bytes in "
                       f"the message that starts it, more than it accepts "
                       f"(limits.message_size = {comp.limits.message_size:,}): it could "
                       f"never start" + (f"; this grant's mount is {len(mount.encode()):,} "
                                         f"bytes" if g.mount is not None else ""))


def _method_names(iface) -> dict:
    """method id -> name, for one interface."""
    out = {}
    node = iface.schema.node
    for i, method in enumerate(node.interface.methods):
        out[i] = method.name
    return out


#: interfaces one interface may extend, transitively: an allow list, the router and
#: `check --reach` each walk them, for every interface (a chain of 3,000 ended
#: `check` and `up` in a RecursionError; a chain that long costs its square)
MAX_EXTENDS = 64


class ExtendsTooMany(Exception):
    """An interface extends more than MAX_EXTENDS interfaces (str names it)."""


def _superclasses(schema, names: dict) -> tuple:
    """The ids of every interface `schema` extends, transitively, depth first, each
    once (each named in `names`, which gains those that are not: one a schema
    imports, say).  Kept on a stack of its own, and at most MAX_EXTENDS of them:
    ExtendsTooMany says so."""
    seen: set = set()
    out: list = []
    stack = [iter(schema.superclasses)]
    while stack:
        sup = next(stack[-1], None)
        if sup is None:
            stack.pop()
            continue
        sid = sup.node.id
        if sid in seen:
            continue
        seen.add(sid)
        if len(seen) > MAX_EXTENDS:
            raise ExtendsTooMany(f"interface {schema.node.displayName} extends more than "
                                 f"{MAX_EXTENDS} interfaces (counting those they extend)")
        if sid not in names:
            short = sup.node.displayName.rpartition(":")[2].rpartition(".")[2]
            names[sid] = (short, {i: m.name for i, m in enumerate(sup.node.interface.methods)})
        out.append(sid)
        stack.append(iter(sup.superclasses))
    return tuple(out)


def _methods_by_name(index: dict, names: dict, iid: int) -> dict:
    """Interface `iid`'s methods by name (name -> [method ids]), made once an
    interface and kept in `index`: every name of an allow list was looked for
    among all the interface's methods, twice (20,000 methods and a grant of
    10,000 of them took `check` and `up` 48 s before anything started)."""
    found = index.get(iid)
    if found is None:
        found = index[iid] = {}
        for mid, name in names[iid][1].items():
            found.setdefault(name, []).append(mid)
    return found


def _resolve_method(where, key, entry, granted, by_name, names,
                    supers=None, index: dict | None = None) -> tuple[set, set]:
    """'add' (a method of the granted interface, `granted` its id) or 'Counter.inc' ->
    (the ids of every interface it names, its (interface id, method id) pairs).

    An interface name may stand for two interfaces: a host one (File, Probe) and
    one a schema declares by the same name.  `File.read` then restricts both, each
    to its `read` if it has one: resolved to the schema's File alone, the host's
    File, which a directory grant returns, passed unrestricted (every write of a
    grant that allowed File.read only went through; an outside review)."""
    iface, _, method = entry.rpartition(".")
    ids = by_name.get(iface, []) if iface else [granted]
    if not ids:
        raise where.error(key, f"unknown interface {iface!r} in {entry!r}")
    # each with what it inherits: `Counter.reset` names Base's reset, and restricts it.
    # A name is the one method Cap'n Proto means by it: the interface's own, else the
    # first that what it extends declares, depth first (its `supers` order): with C
    # extends(A, B), A extends(D), `f` is D's f; B's f, which shares its name, was
    # allowed too.  That one is named by its own interface (`B.f`).
    named = ids
    ids = list(dict.fromkeys(x for iid in ids for x in (iid, *(supers or {}).get(iid, ()))))
    if index is None:
        index = {}
    pairs = set()
    for iid in named:
        for x in (iid, *(supers or {}).get(iid, ())):
            found = _methods_by_name(index, names, x).get(method)
            if found:
                pairs |= {(x, mid) for mid in found}
                break
    if not pairs:
        known = dict.fromkeys(n for iid in ids for n in names[iid][1].values())
        raise where.error(key, f"{iface or names[granted][0]} has no method {method!r} "
                          f"(methods: {', '.join(known)})")
    return set(ids), pairs
