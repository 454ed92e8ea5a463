"""Each caller's share of the audit file, and the summaries of what passes it (pure).

The audit is rotated at `audit_max_size` and `audit_keep` rotated files are kept:
one window for every caller.  Without shares, one caller calling a harmless
method in a loop filled file after file, and the rotation deleted every other
caller's records with its own (a hostile plugin could wipe the evidence of what
it did before).  Here each caller's call records may fill at most `share` of each
file, counted apart for its calls that returned and for those that did not
(`failed`, `denied`: a flood of denied calls is a flood too, and a flood of plain
calls does not spend the room of the caller's first denials), once the window is
full (`full`: the next rotation deletes a file; until then no record is pushed
out, and a busy caller's records are all written, as they were).  Past that, its
records of the kind are not written one by one: they are counted, per caller,
capability, interface and method, and a summary record (`calls summarized`)
says how many returned, failed and were denied, the first and last time, at most
every `interval` seconds, and at once before `run stopped`.  Records that are
no calls (run started and stopped, revocations, the operator's, probes') are
never summarized.

`AuditShares` decides only: the audit writer (runtime._Audit) hands it each
record with the function that encodes it, tells it of each rotation, and
writes what it is given."""

#: Distinct (capability, interface, method) a caller's summaries of one interval
#: name; its calls of any other are counted in one more, whose capability,
#: interface and method are "*" (a caller with many objects made a record each)
SUMMARY_KINDS = 16
SUMMARY_SECONDS = 10.0          # at most this long between two summaries of a call
ALL = "*"


class AuditShares:
    """Who is past its share of the current audit file, and what is summarized.

    `max_size`: the audit file's size at rotation (0: never rotated; nothing is
    then ever pushed out, and nothing summarized); `share`: the part of it one
    caller's records of one kind may fill (1: a whole file, no summaries)."""

    def __init__(self, max_size: int, share: float, interval: float = SUMMARY_SECONDS,
                 kinds: int = SUMMARY_KINDS):
        self.limit = int(max_size * share) if max_size and share < 1 else None
        self.share = share
        self.interval = interval
        self.kinds = kinds
        self._used: dict[tuple, int] = {}       # (caller, returned?) -> bytes in this file
        self._over: set[tuple] = set()          # (caller, returned?) past its share of it
        # summary key -> [returned, failed, denied, first time, last time]
        self._counts: dict[tuple, list] = {}
        self._per_caller: dict[str, int] = {}   # caller -> summary keys of this interval
        self.due: float | None = None           # when the summaries waiting must be written
        #: whether the next rotation deletes a file (the writer says: _Audit._window_full):
        #: until then nothing is pushed out, and every record is written whole (a
        #: system whose one busy caller made most calls had them summarized past an
        #: eighth of the first file, which then never filled: every later call of the
        #: run counted, none recorded, with 500 MiB of the window unused)
        self.full = True
        #: calls counted into summaries not written yet (the writer takes off those it
        #: wrote: `written`); a stop whose last write fails or is cut short says them
        self.waiting = 0

    def admit(self, record: dict, now: float, encode):
        """`record` as written (`encode(record)`, bytes), or None: it is counted into
        a summary instead.  A caller's record of a kind is counted from the first
        one that would take it past its share of the file, and so is every later one
        of that kind in the file: `encode` (the writer's cost per record) is not
        even called for them.  `now`: the wall clock, seconds.  A summary record
        is never asked about: it is no call's."""
        caller = record.get("caller")
        if caller is None or self.limit is None:     # no call's (an event's), or no share
            return encode(record)
        outcome = record.get("outcome")
        kind = (caller, outcome == "returned")
        if kind not in self._over:
            line = encode(record)
            used = self._used.get(kind, 0) + len(line)
            if used <= self.limit or not self.full:
                self._used[kind] = used
                return line
            self._over.add(kind)
        self._count(caller, record, outcome, now)
        return None

    def _count(self, caller: str, record: dict, outcome, now: float):
        key = (caller, record.get("capability"), record.get("interface"), record.get("method"))
        counts = self._counts.get(key)
        if counts is None:
            n = self._per_caller.get(caller, 0)
            if n >= self.kinds:
                key = (caller, ALL, ALL, ALL)
                counts = self._counts.get(key)
            if counts is None:
                self._per_caller[caller] = n + 1
                counts = self._counts[key] = [0, 0, 0, None, None]
        counts[0 if outcome == "returned" else 2 if outcome == "denied" else 1] += 1
        self.waiting += 1
        at = record.get("time")
        at = now if at is None else at
        if counts[3] is None or at < counts[3]:
            counts[3] = at
        if counts[4] is None or at > counts[4]:
            counts[4] = at
        if self.due is None:
            self.due = now + self.interval

    def written(self, summaries: list[dict]):
        """These summary records (from `summaries`) are in the file now."""
        self.waiting -= sum(r["returned"] + r["failed"] + r["denied"] for r in summaries)

    def rotated(self, full: bool = True):
        """A new audit file: every caller's share of it is whole again; `full`: the
        window is full now (the next rotation deletes a file)."""
        self._used.clear()
        self._over.clear()
        self.full = full

    def summaries(self, now: float, all: bool = False) -> list[dict]:
        """The summary records due at `now` (every one waiting if `all`: at the
        run's end), in the order their first call was counted; none if not due."""
        if not self._counts or (not all and (self.due is None or now < self.due)):
            return []
        out = []
        for (caller, capability, interface, method), c in self._counts.items():
            out.append({"time": now, "event": "calls summarized", "caller": caller,
                        "capability": capability, "interface": interface, "method": method,
                        "returned": c[0], "failed": c[1], "denied": c[2],
                        "first": c[3], "last": c[4],
                        "reason": f"past {caller}'s share of the audit file "
                                  f"({self.limit:,} bytes each of returned and of other "
                                  f"calls: [system] audit_share = {self.share:g})"})
        self._counts = {}
        self._per_caller = {}
        self.due = None
        return out


__all__ = ["AuditShares", "SUMMARY_KINDS", "SUMMARY_SECONDS"]
