"""Who holds what, and who could ever reach what (pure: a Plan in, text out).

Reachability is an over-approximation, on purpose: a compartment *could*
reach a capability if it holds it by a grant, or if some compartment that
could reach it can hand it over.  Capabilities travel only in calls: from a
caller to the compartment it calls (in params) and back (in results), and only
across grants of interfaces whose schema (or one it extends) has a capability
(or AnyPointer) somewhere in a method's params or results; once one crosses,
either way, it may be an object of any interface, so such a grant carries
capabilities both ways.  External clients are callers too (they hold every
external compartment's main object).  Guests may not do any of that; this says what the
policy and the interfaces allow, not what the code does.
"""
from __future__ import annotations


import attrs

from capnp_schemas.text import ascii_printable, quoted  # noqa: F401 (authority.quoted)

from .preflight import HOST_INTERFACES, Plan


@attrs.frozen
class Edge:
    holder: str            # compartment
    local: str             # its local name for the grant
    kind: str              # "compartment" | "host"
    target: str            # compartment name or host capability
    attenuation: tuple     # human-readable attenuation terms
    carries_in: bool       # params of the target's interface can carry capabilities
    carries_out: bool      # results can
    origin: str = ""       # where the grant was written
    grant: object = attrs.field(default=None, eq=False, repr=False)   # its policy.Grant


def edges(plan: Plan) -> list[Edge]:
    out = []
    carries: dict = {}      # interface name -> _carries (walked once, not once a grant)
    for comp in plan.system.compartments.values():
        for g in comp.grants:
            terms = []
            if g.allow is not None:
                terms.append(f"allow={','.join(g.allow)}")
            if g.revocable:
                terms.append("revocable")
            for k in ("max_uses", "expires_after", "calls_per_second"):
                if getattr(g, k) is not None:
                    terms.append(f"{k}={getattr(g, k):g}")
            if g.path is not None:
                terms.insert(0, f"path={quoted(g.path)}")
            if g.on is not None:                 # a probe grant: whose events it reads
                terms.insert(0, f"on={g.on}")
            for k in ("read_only", "append_only", "refuse_hard_links"):
                if getattr(g, k):
                    terms.append(k)
            for k in ("subdir", "mount"):
                if getattr(g, k) is not None:
                    terms.append(f"{k}={quoted(getattr(g, k))}")
            if g.max_bytes_written is not None:
                terms.append(f"max_bytes_written={g.max_bytes_written}")
            if g.args:
                terms.append(f"args={list(g.args)}")
            if g.vars:
                terms.append("vars=" + ",".join(name for name, _ in g.vars))
            if g.kind == "compartment":
                exports = plan.system.compartments[g.target].exports
                if exports not in carries:
                    carries[exports] = _carries(plan.interface_modules.get(exports))
                carries_in, carries_out = carries[exports]
            else:
                carries_in = carries_out = False
            out.append(Edge(comp.name, g.name, g.kind, g.target, tuple(terms),
                            carries_in, carries_out, g.origin, g))
    return out


def sealed(plan: Plan) -> frozenset:
    """The ids of the compartments' main interfaces through which no capability
    can pass (_carries: none anywhere in their schema, or one they extend).  A cap
    table is the sender's, whatever the schema says: the router refuses one on
    calls to such an object, and in its answers (Router(sealed=...)), so that what
    this module says of them holds."""
    out = set()
    for comp in plan.system.compartments.values():
        iid = plan.main_interface.get(comp.name)
        if iid is not None and comp.exports is not None \
                and _carries(plan.interface_modules.get(comp.exports)) == (False, False):
            out.add(iid)
    return frozenset(out)


def _carries(iface) -> tuple[bool, bool]:
    """Whether capabilities can cross a grant of `iface` into its target (params) /
    back to its holder (results).  Only the main object's interface is checked by
    the router (it and those it extends, whose methods count too); a capability
    that crosses once, either way, may be an object of any interface, and calls on
    it carry capabilities both ways (a Box returned takes one in `put`; an Observer
    passed in is called back with one in `notify`).  So any capability anywhere in
    the interface's methods, own or inherited, carries both ways; none, neither."""
    if iface is None:
        return True, True                    # unknown: assume the worst
    schema = getattr(iface, "schema", iface)
    seen: set = set()           # structs walked whole, none holding a capability
    for s in _supers_and_self(schema):
        for method in s.methods.values():
            if _has_cap(method.param_type, seen) or _has_cap(method.result_type, seen):
                return True, True
    return False, False


def _has_cap(struct_schema, seen) -> bool:
    """Whether a capability (or AnyPointer) is anywhere in the struct: in a field, a
    group, a list (of lists ...) or a struct it holds, at any depth.  Walked with
    a stack of its own: a chain of 3,000 structs each holding the next (or lists
    nested as deep) ended `check` and `up` in a RecursionError.  `seen`: structs
    walked already, with nothing found (shared by the calls of one question)."""
    todo = [struct_schema]
    while todo:
        st = todo.pop()
        if st.node.id in seen:
            continue
        seen.add(st.node.id)
        for field in st.node.struct.fields:
            if field.which() == "group":     # a group (or a named union) is a struct inside
                todo.append(st.fields[field.name].schema)
                continue
            t, lists = field.slot.type, 0
            while t.which() == "list":
                t, lists = t.list.elementType, lists + 1
            kind = t.which()
            if kind in ("interface", "anyPointer"):
                return True
            if kind == "struct":
                inner = st.fields[field.name].schema
                for _ in range(lists):
                    inner = inner.elementType
                todo.append(inner)
    return False


def holdings(plan: Plan, memory: dict[str, str] | None = None) -> str:
    """Each compartment and what it holds, with attenuation and origin.
    `memory`: a compartment's name -> how its memory is protected."""
    lines = []
    by_holder: dict[str, list[Edge]] = {}
    for e in edges(plan):
        by_holder.setdefault(e.holder, []).append(e)
    for comp in plan.system.compartments.values():
        what = []
        if comp.exports:
            what.append(f"serves {comp.exports}" + (" (external)" if comp.external else ""))
        if memory and comp.name in memory:
            what.append(memory[comp.name])
        lines.append(f"{comp.name}: {quoted(comp.module)}"
                     + (f"; {'; '.join(what)}" if what else ""))
        held = by_holder.get(comp.name, [])
        if not held:
            lines.append("  holds nothing")
        for e in held:
            target = f"{e.target}'s {plan.system.compartments[e.target].exports}" \
                if e.kind == "compartment" else f"host {HOST_INTERFACES[e.target]}"
            terms = f" [{', '.join(e.attenuation)}]" if e.attenuation else ""
            file, _, key = e.origin.rpartition(": ")
            lines.append(f"  {e.local} -> {target}{terms}  (from {quoted(file)}: {key})")
    # paths, mounts, arguments and names of variables come from the system file
    # (and from the names of directories): shown escaped, one line each
    # (past ASCII too, as paths are: a variable's name of a Cyrillic letter passed
    # for the Latin one the operator meant to grant)
    return "\n".join(ascii_printable(line) for line in lines)


def _dot(text: str) -> str:
    """`text` as the inside of a DOT string: escaped, so that no path or argument
    from the system file can end the string and write nodes or edges of its own;
    and past ASCII too, as `holdings` shows the same grants (a variable's name of a
    Cyrillic letter was drawn as the Latin name the operator meant to grant)."""
    return ascii_printable(text).replace("\\", "\\\\").replace('"', '\\"')


def _label(*lines) -> str:
    return "\\n".join(_dot(line) for line in lines if line)


def dot(plan: Plan) -> str:
    """The authority graph in Graphviz DOT."""
    out = ["digraph authority {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for comp in plan.system.compartments.values():
        shape = "doubleoctagon" if comp.external else "box"
        out.append(f'  "{_dot(comp.name)}" [shape={shape}, '
                   f'label="{_label(comp.name, comp.exports)}"];')
    hosts = set()
    for e in edges(plan):
        target = e.target if e.kind == "compartment" else f"{e.holder}:{e.target}"
        if e.kind == "host" and target not in hosts:
            hosts.add(target)
            out.append(f'  "{_dot(target)}" [shape=ellipse, label="{_label(e.target, "(host)")}"];')
        label = _label(e.local, ", ".join(e.attenuation))
        style = ", style=dashed" if e.attenuation else ""
        out.append(f'  "{_dot(e.holder)}" -> "{_dot(target)}" [label="{label}"{style}];')
    out.append("}")
    return "\n".join(out) + "\n"


def could_reach(plan: Plan, target: str) -> tuple[list[str], str]:
    """Compartments that could ever call `target` ("calc", "calc.add", "app:log").

    Returns (names, explanation).  Over-approximates (see the module docstring).
    """
    comp_name, dot, method = target.partition(".")
    if dot and not method:
        raise KeyError(f"{target!r} names no method after its '.' (COMPARTMENT, "
                       f"COMPARTMENT.METHOD or COMPARTMENT:HOSTCAP)")
    host = None
    if ":" in comp_name:
        comp_name, host = comp_name.split(":", 1)
    if comp_name not in plan.system.compartments:
        raise KeyError(f"no compartment named {comp_name!r} (compartments: "
                       f"{', '.join(plan.system.compartments)})")
    exports = plan.system.compartments[comp_name].exports
    if method and host is None:
        if not exports:
            # "app.log" for the log app holds: "app's interface (none) has no method"
            raise KeyError(f"{comp_name} exports no interface, so it has no method "
                           f"{method!r} to reach (a host capability it holds is "
                           f"COMPARTMENT:HOSTCAP: {comp_name}:log, {comp_name}:directory, ...)")
        methods = _method_names(plan.interface_modules[exports].schema)
        if method not in methods:
            raise KeyError(f"{comp_name}'s interface {exports} has no method "
                           f"{method!r} (methods: {', '.join(methods) or 'none'})")
    if host is not None and method:
        raise KeyError(f"{target!r}: name a host capability as COMPARTMENT:HOSTCAP, "
                       f"with no method")
    # external clients are callers too: the gateway hands each of them every external
    # compartment's main object (no allow list), and what they get they may pass on
    # in params to another, or have passed back in results
    all_edges = edges(plan) + _client_edges(plan)
    if host is not None:
        start = {e.holder for e in all_edges
                 if e.holder == comp_name and e.kind == "host" and e.target == host}
        if not start:
            kinds = sorted({e.target for e in all_edges
                            if e.holder == comp_name and e.kind == "host"})
            raise KeyError(f"{comp_name} holds no host {host!r} (COMPARTMENT:HOSTCAP names "
                           f"the kind of host capability, not a grant's name; "
                           f"{comp_name} holds: {', '.join(kinds) or 'none'})")
    else:
        if plan.system.compartments[comp_name].exports is None:
            raise KeyError(f"{comp_name} exports nothing")
        start = set()
        for e in all_edges:
            if e.kind == "compartment" and e.target == comp_name and _allows(e, plan, method):
                start.add(e.holder)
    # the target's own compartment holds its main object (it serves it) and can
    # hand it on like anything it holds (wsuper.object(0), in a call or an answer)
    reach = set(start) | ({comp_name} if host is None else set())
    # capabilities flow along calls: a walk of the graph, each edge looked at once
    # (a loop over every edge until nothing changed took one pass a compartment on
    # a chain written in the other order: 20,000 compartments, a minute of `check` a target)
    flows: dict[str, list] = {}
    for e in all_edges:
        if e.kind != "compartment":
            continue
        if e.carries_in:                       # passed in params
            flows.setdefault(e.holder, []).append((e.target, None))
        if e.carries_out:                      # passed back in results (its allow-list)
            flows.setdefault(e.target, []).append((e.holder, e))
    todo = list(reach)
    while todo:
        for to, e in flows.get(todo.pop(), ()):
            if to not in reach and (e is None or not _blocks(e, plan, comp_name, method)):
                reach.add(to)
                todo.append(to)
    if host is None:
        reach.discard(comp_name)        # its own code needs no capability to run
        start.discard(comp_name)
    clients = CLIENTS in reach
    reach.discard(CLIENTS)
    start.discard(CLIENTS)
    why = ("held by grant: " + (", ".join(sorted(start)) or "nobody") +
           "; could be passed on to: " + (", ".join(sorted(reach - start)) or "nobody"))
    if clients:
        why += "; and any client of the external socket"
    return sorted(reach), why + " (an over-approximation: what the policy and interfaces " \
                                "allow, not what the code does" + \
        (f"; {comp_name} itself runs its own code, of course" if host is None else "") + ")"


#: could_reach's holder of what external clients hold (no compartment has this name)
CLIENTS = "(external clients)"


def _client_edges(plan: Plan) -> list[Edge]:
    """The gateway's: external clients hold each external compartment's main object."""
    out = []
    for comp in plan.system.compartments.values():
        if comp.external and comp.exports is not None:
            carries_in, carries_out = _carries(plan.interface_modules.get(comp.exports))
            out.append(Edge(CLIENTS, "", "compartment", comp.name, (), carries_in,
                            carries_out, "the gateway (external)"))
    return out


def _blocks(e: Edge, plan: Plan, target: str, method: str) -> bool:
    """Results crossing e's membrane carry its allow-list: does it forbid the method?"""
    return bool(method) and not _passes(e, plan, target, method)


def _grant(e: Edge, plan: Plan):
    if e.grant is not None:
        return e.grant
    comp = plan.system.compartments[e.holder]
    return next(g for g in comp.grants if g.name == e.local)


def _allows(e: Edge, plan: Plan, method: str) -> bool:
    return not method or _passes(e, plan, e.target, method)


def _passes(e: Edge, plan: Plan, target: str, method: str) -> bool:
    """Whether a call of `method` on `target`'s interface may pass e's membrane: decided
    as the running system decides it (membrane.Membrane.allows, on the (interface
    id, method id) pairs preflight resolved the allow list to), never again from the
    list's names, which said `Calc.add` was not `add`, and knew nothing of what an
    interface inherits (an inherited method is called with its declarer's id)."""
    from .membrane import Membrane
    if e.holder == CLIENTS:
        return True                     # the gateway's objects carry no allow list
    g = _grant(e, plan)
    if g.allow is None:
        return True
    granted = plan.interface_modules[plan.system.compartments[e.target].exports].schema.node.id
    m = Membrane.for_grant(e.local, g, granted, 0.0)
    pairs = _method_ids(plan.interface_modules[plan.system.compartments[target].exports]
                        .schema, method)
    return any(m.allows(i, j) for i, j in pairs)


def _supers_and_self(schema) -> list:
    """`schema` and every interface it extends, transitively, each once."""
    out, seen, todo = [], set(), [schema]
    while todo:
        s = todo.pop(0)
        if s.node.id in seen:
            continue
        seen.add(s.node.id)
        out.append(s)
        todo += list(s.superclasses)
    return out


def _method_names(schema) -> list[str]:
    """The methods an interface declares, then those it inherits."""
    return list(dict.fromkeys(m.name for s in _supers_and_self(schema)
                              for m in s.node.interface.methods))


def _method_ids(schema, method: str) -> set:
    """(interface id, method id) of each method so named that `schema` declares or
    inherits (the id a call of it carries is its declarer's)."""
    return {(s.node.id, j) for s in _supers_and_self(schema)
            for j, m in enumerate(s.node.interface.methods) if m.name == method}
