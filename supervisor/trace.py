"""Where probe events end up: a Chrome trace-event file, JSON lines, text (pure).

Owns: turning the event dicts of probes.py into the Chrome trace-event JSON
format that Perfetto and chrome://tracing open, into JSON lines, and into the
counts and histograms `wsuper probe ... list` prints.  No I/O.

The trace: one process per compartment (and one for the host capabilities,
one for external clients), with threads "calls in", "calls out",
"functions", "host calls".  A call is a complete ("X") slice on the caller's
"calls out" thread and one on the callee's "calls in" thread, linked by a
flow ("s" on the caller's slice, "f" with "bp": "e" on the callee's), which
Perfetto draws as an arrow from caller to callee.  Function entries and
exits are "B"/"E" slices; stores are instant ("i") events.  Times are
microseconds from the first event (every clock is CLOCK_MONOTONIC).

Events name the incarnation of their compartment's engine (probes.Registry:
`incarnation`, `engine_pid`).  A compartment whose engine changed within the
trace (a crash, a kill, a restart) gets an instant event ("engine N", process
scope) where the new one's events begin, and the functions the old engine was
in when it ended are closed there ("E" with `unwound` and `engine_ended`): a
killed engine reports no exits, and its open slices stayed open to the end of
the trace, every later function of the compartment drawn nested inside them.
`otherData.incarnations` lists, per compartment, the engines seen.
"""
from __future__ import annotations

import json

from capnp_schemas.text import printable

THREADS = {"in": (1, "calls in"), "out": (2, "calls out"), "functions": (3, "functions"),
           "host": (4, "host calls")}


def _process(name: str) -> str:
    if name.startswith("host:"):
        return "host capabilities"
    return name


def chrome(events: list, meta: dict | None = None) -> dict:
    """The trace-event JSON object for `events` (probes.py's dicts)."""
    events = [e for e in events if isinstance(e, dict) and isinstance(e.get("ts_ns"), int)]
    t0 = min((e["ts_ns"] for e in events), default=0)
    pids: dict[str, int] = {}

    def pid(name: str) -> int:
        p = _process(name)
        if p not in pids:
            pids[p] = len(pids) + 1
        return pids[p]

    def us(ns: int) -> float:
        return round((ns - t0) / 1000, 3)

    out = []
    seen_calls = set()
    stacks: dict[str, list] = {}        # compartment -> functions open, innermost last
    engine: dict[str, tuple] = {}       # compartment -> (incarnation, engine pid) seen last
    last_ts: dict[str, float] = {}      # compartment -> time of its engine's last event
    incarnations: dict[str, list] = {}  # compartment -> the engines seen, in order

    def incarnation(e: dict, ts: float, engine_event: bool):
        """Notes the engine `e` came from (of its compartment), in `incarnations`; a
        later one seen in an engine's own event (not a call's, which the router
        times from its start) closes the old one's open functions and is marked."""
        c, n = e.get("compartment"), e.get("incarnation")
        if not isinstance(c, str) or not isinstance(n, int) or isinstance(n, bool):
            return
        pid_ = e.get("engine_pid") if isinstance(e.get("engine_pid"), int) else None
        seen = incarnations.setdefault(c, [])
        if not seen or n > seen[-1]["incarnation"]:
            seen.append({"incarnation": n, "engine_pid": pid_, "from_us": ts})
        was = engine.get(c)
        if not engine_event or (was is not None and n <= was[0]):
            return
        engine[c] = (n, pid_)
        if was is None:
            return
        p, at = pid(c), last_ts.get(c, ts)
        for name in reversed(stacks.pop(c, [])):
            out.append({"ph": "E", "name": name, "cat": "function", "ts": at, "pid": p,
                        "tid": THREADS["functions"][0],
                        "args": {"unwound": True, "engine_ended": was[0]}})
        out.append({"ph": "i", "s": "p", "name": f"engine {n}", "cat": "incarnation",
                    "ts": ts, "pid": p, "tid": 0,
                    "args": {"incarnation": n, "engine_pid": pid_, "previous": was[0]}})

    for e in sorted(events, key=lambda e: e["ts_ns"]):
        kind = e.get("kind")
        incarnation(e, us(e["ts_ns"]), kind != "call")
        if kind == "call":
            if e.get("id") in seen_calls:
                continue
            seen_calls.add(e.get("id"))
            name = printable(str(e.get("name", "?")))
            ts, dur = us(e["ts_ns"]), max(round(e.get("dur_ns", 0) / 1000, 3), 0.001)
            args = {"caller": e.get("caller"), "callee": e.get("callee"),
                    "grant": e.get("grant"), "outcome": e.get("outcome")}
            if e.get("reason"):
                args["reason"] = e["reason"]
            caller, callee = pid(e.get("caller", "?")), pid(e.get("callee", "?"))
            out.append({"ph": "X", "name": name, "cat": "call", "ts": ts, "dur": dur,
                        "pid": caller, "tid": THREADS["out"][0], "args": args})
            out.append({"ph": "X", "name": name, "cat": "call", "ts": ts, "dur": dur,
                        "pid": callee, "tid": THREADS["in"][0], "args": args})
            at = round(ts + min(0.5, dur / 2), 3)      # inside both slices
            flow = {"name": "call", "cat": "call", "id": int(e.get("id", 0))}
            out.append({**flow, "ph": "s", "ts": at, "pid": caller, "tid": THREADS["out"][0]})
            out.append({**flow, "ph": "f", "bp": "e", "ts": at, "pid": callee,
                        "tid": THREADS["in"][0]})
        elif kind in ("enter", "exit"):
            c = e.get("compartment", "?")
            ev = {"ph": "B" if kind == "enter" else "E",
                  "name": printable(str(e.get("name", "?"))), "cat": "function",
                  "ts": us(e["ts_ns"]), "pid": pid(c), "tid": THREADS["functions"][0]}
            if e.get("unwound"):
                ev["args"] = {"unwound": True}
            stack = stacks.setdefault(c, []) if isinstance(c, str) else []
            if kind == "enter":
                stack.append(ev["name"])
            elif stack:
                stack.pop()
            out.append(ev)
        elif kind == "hostcall":
            out.append({"ph": "X", "name": printable(str(e.get("name", "?"))),
                        "cat": "hostcall", "ts": us(e["ts_ns"]),
                        "dur": max(round(e.get("dur_ns", 0) / 1000, 3), 0.001),
                        "pid": pid(e.get("compartment", "?")), "tid": THREADS["host"][0],
                        "args": {"result": e.get("result")}})
        elif kind == "store":
            out.append({"ph": "i", "s": "t", "name": "store", "cat": "store",
                        "ts": us(e["ts_ns"]), "pid": pid(e.get("compartment", "?")),
                        "tid": THREADS["functions"][0],
                        "args": {"address": e.get("address"), "size": e.get("size"),
                                 "function": printable(str(e.get("name", "?")))}})
        c = e.get("compartment")
        if kind != "call" and isinstance(c, str):
            last_ts[c] = us(e["ts_ns"])
    names = []
    for name, p in pids.items():
        names.append({"ph": "M", "name": "process_name", "pid": p, "tid": 0,
                      "args": {"name": printable(name)}})
        for tid, label in THREADS.values():
            names.append({"ph": "M", "name": "thread_name", "pid": p, "tid": tid,
                          "args": {"name": label}})
    other = {"generator": "wsuper trace", **(meta or {})}
    if incarnations:
        other["incarnations"] = {printable(c): v for c, v in incarnations.items()}
    return {"traceEvents": names + out, "displayTimeUnit": "ms", "otherData": other}


def jsonl(events: list) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)


def _percentile(hist: dict, q: float) -> str:
    total = sum(hist.values())
    if not total:
        return "-"
    seen = 0
    for label, n in hist.items():
        seen += n
        if seen >= q * total:
            return label
    return label


def text(probes: list, instrument=()) -> str:
    """What `wsuper probe SYSTEM COMPARTMENT list` prints."""
    if not probes:
        return "no probes" + (f" (compiled in: {', '.join(instrument)})" if instrument else
                              " (no probe sites compiled in: calls and hostcalls only)")
    lines = []
    for p in probes:
        what = p["point"] + (f" {','.join(p['functions'])}" if p["functions"] else "")
        how = "events" if p["events"] else "counts"
        flag = ", declared" if p["declared"] else ""
        lines.append(f"probe {p['name']} on {p['compartment']}: {what} ({how}{flag}); "
                     f"{p['seen']} events" + (f", {p['dropped']} dropped" if p["dropped"]
                                              else ""))
        if "sites" in p:
            lines.append(f"  covered {p['covered']} of {p['sites']} sites, "
                         f"{p['count']} hits")
            rows = sorted(((f, v) for f, v in p["functions_hit"].items() if v["count"]),
                          key=lambda kv: -kv[1]["count"])
            width = max((len(printable(f)) for f, _ in rows[:40]), default=8)
            for f, v in rows[:40]:
                lines.append(f"  {printable(f):<{width}}  {v['count']:>10}  "
                             f"{v['covered']}/{v['sites']} sites")
            unseen = len(p["functions_hit"]) - len(rows)
            if len(rows) > 40 or unseen:
                lines.append(f"  ({max(len(rows) - 40, 0)} more functions hit, {unseen} not hit)")
        for key, n in list(p["counts"].items())[:40]:
            if "sites" in p and p["point"] != "stores":
                break
            failed = p.get("failed", {}).get(key, 0)
            hist = p["histograms"].get(key)
            extra = f"  p50 {_percentile(hist, .5)}  p99 {_percentile(hist, .99)}" \
                if hist else ""
            lines.append(f"  {printable(key)}: {n}" + (f" ({failed} failed)" if failed
                                                         else "") + extra)
            if hist:
                lines.append("    " + "  ".join(f"{b}: {c}" for b, c in hist.items()))
        if p["point"] == "stores" and p.get("range"):
            lines.append(f"  {p['bytes']} bytes stored in [{p['range'][0]:#x}, "
                         f"{p['range'][1]:#x}); sizes: " +
                         ", ".join(f"{k} B: {v}" for k, v in p["sizes"].items()))
    return "\n".join(lines)
