"""Checks that need files or wasmtime, done before any process starts.

`prepare(system)` loads the schema files, resolves every `exports` interface
name to its Cap'n Proto interface id, and compiles each module once to check
that it is wasm and imports only the guest ABI.  Every failure is a
PolicyError naming the key in system.toml.
"""
from __future__ import annotations

import attrs
import capnp
import wasmtime

import capnp_schemas
from compartments import abi
from compartments.wasm import compile_module, describe_imports, engine_config

from .policy import System, _Where


@attrs.frozen
class Plan:
    system: System
    interfaces: dict        # interface name -> interface id
    main_interface: dict    # compartment name -> interface id | None
    names: dict = {}        # interface id -> (name, {method id: method name})
    allow: dict = {}        # (compartment, grant name) -> frozenset of (interface id, method id)
    interface_modules: dict = {}   # interface name -> pycapnp interface module


HOST_INTERFACES = {"log": "Log", "clock": "Clock", "random": "Random",
                   "directory": "Directory", "file": "File", "environment": "Environment"}



def prepare(system: System) -> Plan:
    with open(system.path, encoding="utf-8") as f:
        where = _Where(f.read(), system.path)
    interfaces: dict[str, int] = {}
    origin: dict[str, str] = {}
    host = capnp_schemas.interfaces(capnp_schemas.host)
    ifaces = {name: host[name] for name in HOST_INTERFACES.values()}   # name -> module
    for i, path in enumerate(system.schemas):
        key = f"system.schemas[{i}]"
        try:
            module = capnp_schemas.load(path)
        except (capnp.KjException, OSError, ValueError) as e:
            raise where.error(key, f"cannot load schema {path}: {_first(e)}") from None
        for name, iface in capnp_schemas.interfaces(module).items():
            if name in interfaces:
                raise where.error(key, f"interface {name} is declared in both "
                                  f"{origin[name]} and {path}")
            interfaces[name] = iface.schema.node.id
            origin[name] = path
            ifaces[name] = iface

    names = {i.schema.node.id: (n, _method_names(i)) for n, i in ifaces.items()}
    by_name = {n: i.schema.node.id for n, i in ifaces.items()}

    main = {}
    checked = {}        # module path -> (import problem, imports WASI, export names)
    engine = wasmtime.Engine(engine_config())      # as the engines will compile them
    for comp in system.compartments.values():
        key = f"compartments.{comp.name}"
        if comp.exports is not None and comp.exports not in interfaces:
            known = ", ".join(sorted(interfaces)) or "none: list schema files in system.schemas"
            raise where.error(f"{key}.exports", f"unknown interface {comp.exports!r} "
                              f"(known: {known})")
        main[comp.name] = interfaces.get(comp.exports) if comp.exports else None
        if comp.module not in checked:          # each module file once
            try:
                module = compile_module(engine, comp.module)
            except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as e:
                raise where.error(f"{key}.module", f"{comp.module} is not a valid wasm module: "
                                  f"{_first(e)}") from None
            imports = list(describe_imports(module))
            checked[comp.module] = (abi.check_imports(imports),
                                    any(m == abi.WASI_MODULE for m, *_ in imports),
                                    {e.name for e in module.exports})
        problem, is_wasi, exported = checked[comp.module]
        if problem:
            raise where.error(f"{key}.module", f"{comp.module} {problem}")
        if is_wasi:
            _check_wasi_grants(where, key, comp)
        if comp.exports and abi.EXPORT_DISPATCH not in exported:
            raise where.error(f"{key}.exports", f"{comp.module} does not export "
                              f"{abi.EXPORT_DISPATCH}, so it cannot serve {comp.exports}")
    allow = {}
    for comp in system.compartments.values():
        for g in comp.grants:
            if g.allow is None:
                continue
            granted = (system.compartments[g.target].exports if g.kind == "compartment"
                       else HOST_INTERFACES[g.target])
            allow[(comp.name, g.name)] = frozenset(
                _resolve_method(where, f"compartments.{comp.name}.grants.{g.name}.allow",
                                m, granted, by_name, names) for m in g.allow)
    return Plan(system, interfaces, main, names, allow, ifaces)


def _check_wasi_grants(where, key, comp):
    """What a WASI program takes from its grants must be unambiguous (compartments/wasi.py)."""
    seen = {}
    for g in comp.grants:
        target = g.target if g.kind == "host" else "compartment"
        if target in ("clock", "random", "environment"):
            if target in seen:
                raise where.error(f"{key}.grants.{g.name}", f"a WASI program takes its {target} "
                                  f"from one grant, and {seen[target]!r} is one already")
            seen[target] = g.name
        wanted = {"stdin": ("file",), "stdout": ("log", "file"), "stderr": ("log", "file")}
        if g.name in wanted and target not in wanted[g.name]:
            raise where.error(f"{key}.grants.{g.name}", f"a WASI program's {g.name} must be a "
                              f"{' or '.join(wanted[g.name])} grant, not {target}")


def _method_names(iface) -> dict:
    """method id -> name, for one interface."""
    out = {}
    node = iface.schema.node
    for i, method in enumerate(node.interface.methods):
        out[i] = method.name
    return out


def _resolve_method(where, key, entry, granted, by_name, names) -> tuple:
    """'add' (a method of the granted interface) or 'Counter.inc' -> (interface id, method id)."""
    iface, _, method = entry.rpartition(".")
    iface = iface or granted
    if iface not in by_name:
        raise where.error(key, f"unknown interface {iface!r} in {entry!r}")
    iid = by_name[iface]
    methods = names[iid][1]
    for mid, name in methods.items():
        if name == method:
            return (iid, mid)
    raise where.error(key, f"{iface} has no method {method!r} "
                      f"(methods: {', '.join(methods.values())})")


def _first(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
