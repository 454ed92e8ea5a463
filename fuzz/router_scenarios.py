"""Randomized scenarios of the router's call lifecycle, with every invariant checked.

    python -m fuzz.router_scenarios --seeds 1-5000 --steps 120

Pure logic, no processes: the router (supervisor/router.py) with the hand-driven
engines and clients of tests/unit/test_router.py.  Compartments a1 and a2 call
calc (through revocable grants), store, and a revocable host clock; external
clients call calc.  Random steps: calls (with capabilities, with a capability
promised in an unanswered call, pipelined on one), host calls answered late (only
while `host_call_live`, as the runtime does), a caller passing its calc grant on
to store, which calls it and hands it out, capabilities got in answers called,
calc calling back what it was passed, calc's answers (results, errors, a callback
first), revocations, calc, store and callers restarting or killed, clients that
cancel (Finish) or go, time passing (call_time), and peers releasing midway what
they were passed or what answers brought them (all their references or one; a
stream of its own, so a seed's scenario is what it was up to its first release).

Tail calls (rpc.capnp level 1): calc answers a call with a tail call of its own
(Call with sendResultsTo.yourself to store through its revocable grant calc.store,
or to a capability it was passed), store answers one with a tail call to a calc
grant it was given (chains: calc -> store -> calc ...), and external clients,
having passed calc objects of their own, answer calc's calls back with tail calls
to calc or to the gateway; each is taken (Return takeFromOtherQuestion) before its
outcome, after it, or never, and finished (with or without releaseResultCaps) at
once, later, before it ends (cancelled), or never; calls are pipelined on tail
calls and promises passed on them; and grants revoked, time passing and peers
going cut them short.  A tail call carries the tag of the call it answers (echoed
by whoever answers it: the outcome's tag says which question it reached) and a
mark of its own (for "nothing reaches a callee after its caller gave it up").

After each step:

* no call reaches calc once its caller was answered (revoked, timed out,
  cancelled, its caller gone);
* every answer goes to the call it belongs to (each call carries a tag that
  calc's answer echoes);
* no internal error was reported;
* no host call is live, no call waits and no call's membranes are still
  recorded (`_through`) once its caller is gone or answered (a reused id would
  then be matched);
* a question gets one answer: a Return or a tail call's outcome, handed once
  (FuzzRouter records every handler and forwarded call answered); a caller
  that never cancels is never told its call was cancelled (a tail call taken is
  not cancelled by the Finish that follows its take);
* `_tails` holds only open tail calls of live peers: an outcome only for one
  ended, untaken and unfinished (its bytes counted as kept, exactly), a waiting
  question only for one taken and running; every such ended call has its
  outcome held; every peer's kept bytes, unfinished and unanswered counts
  match its answers;
* every orphan counted is one question awaiting its callee's Return, counted
  once;

and at the end, once every tail call is finished: calc and store keep no bytes and
have nothing in flight; with everyone gone: no bytes still counted as waiting, no
call waiting, no audit record left open, no orphan, nothing pending, no tail call,
and the router imports nothing of calc's but its main and control objects.

tests/unit/test_fuzz_router_scenarios.py runs a few hundred seeds of it (written,
then extended, by outside reviews of the router's call lifecycle: each version
found holes, fixed since).
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capnp_schemas import wire  # noqa: E402
from capnp_schemas.protocol import RemoteRef  # noqa: E402
from tests.unit.test_router import CLOCK  # noqa: E402
from supervisor import effects as fx  # noqa: E402
from tests.unit.test_router import (CALC, NAMES, P, R, Content, FakeEngine,  # noqa: E402
                                    client, grant, start)


def content(tag, cap=False):
    if cap:
        return Content.standalone([struct.pack("<QQQ", (1 << 32) | (1 << 48), tag, wire.cap_pointer(0))])
    return Content.standalone([struct.pack("<QQ", 1 << 32, tag)])

def tag_of(payload):
    try:
        if isinstance(payload, fx.HostCall):
            return struct.unpack_from('<Q', wire.unframe(payload.content.single_segment_copy())[0], 8)[0]
        seg = wire.unframe(payload.content.single_segment_copy())[0]
        return struct.unpack_from("<Q", seg, 8)[0]
    except Exception:
        return None

def _gateway_list_word():
    """What tag_of reads in the gateway's answer to list (['calc']): a tail call to
    the gateway answers whatever question it is taken for, through any chain of
    tail calls, with that (not a tag)."""
    from capnp_schemas import hosted, payloads
    content = payloads.build(hosted.GATEWAY.method("list").results, {"names": ["calc"]})[0]
    return struct.unpack_from("<Q", wire.unframe(content.single_segment_copy())[0], 8)[0]


GATEWAY_LIST = _gateway_list_word()


class Violation(Exception):
    """A broken invariant, found as it happened."""


# ------------------------------------------------------------------ tail calls
#
# A peer's side of a tail call (rpc.capnp level 1): a Call with
# sendResultsTo.yourself, the supervisor's Return resultsSentElsewhere, and the
# peer's Return takeFromOtherQuestion answering a question of the supervisor's
# with that call's outcome.  The hand-driven peers' Connection does not speak it
# (the supervisor never sends such calls), so the peers that make tail calls get
# a Connection that does (TailConn), and the messages are built here.

def tail_content(tag, mark, cap=False):
    """A tail call's params: the tag of the call it answers (echoed by whoever
    answers it, so the outcome's tag says which question it reached) and `mark`,
    the tail call's own identity (for 'nothing reaches a callee after its caller
    gave it up')."""
    if cap:
        return Content.standalone([struct.pack("<QQQQ", (2 << 32) | (1 << 48), tag, mark,
                                               wire.cap_pointer(0))])
    return Content.standalone([struct.pack("<QQQ", 2 << 32, tag, mark)])


def mark_of(payload):
    """The tail-call mark of a call's params, or None (not a tail call's)."""
    try:
        seg = wire.unframe(payload.content.single_segment_copy())[0]
        root = struct.unpack_from("<Q", seg, 0)[0]
        if (root >> 32) & 0xFFFF < 2:
            return None
        return struct.unpack_from("<Q", seg, 16)[0]
    except Exception:
        return None


def to_yourself(data: bytes) -> bytes:
    """A Call made by Connection.send_call, with sendResultsTo.yourself instead."""
    segs = [bytearray(sg) for sg in wire.unframe(data)]
    _k, s, start, _w = wire.resolve(segs, (0, 0))                  # the Message
    dw = (_w >> 32) & 0xFFFF
    _k, s, start, _w = wire.resolve(segs, (s, start + dw))         # its Call
    word = struct.unpack_from("<Q", segs[s], 8 * start)[0]
    word = (word & ~(0xFFFF << 48)) | (1 << 48)      # sendResultsTo (bits 48-63): yourself
    struct.pack_into("<Q", segs[s], 8 * start, word)
    out = wire.frame([bytes(sg) for sg in segs])
    assert P.rpc.Message.from_segments(wire.unframe(out)).call.sendResultsTo.which() \
        == "yourself"
    return out


def send_take(conn, answer_id: int, tail_qid: int) -> bytes:
    """Return answer `answer_id` with takeFromOtherQuestion = `tail_qid`."""
    a = conn._answer_for_return(answer_id)
    conn._answer_done(answer_id, a)
    msg = P.rpc.Message.new_message()
    r = msg.init("return")
    r.answerId = answer_id
    r.releaseParamCaps = False
    r.takeFromOtherQuestion = tail_qid
    return wire.frame(msg.to_segments())


def send_finish(conn, qid: int, release: bool) -> bytes:
    """Finish, with releaseResultCaps as asked (Cap'n Proto's C++ RPC sends true
    for a call it gives up)."""
    if not release:
        return conn.send_finish(qid)
    q = conn.questions[qid]
    q.finished = True
    if q.returned:
        conn._drop_question(qid)
    msg = P.rpc.Message.new_message()
    f = msg.init("finish")
    f.questionId = qid
    f.releaseResultCaps = True
    return wire.frame(msg.to_segments())


class TailConn(P.Connection):
    """A peer's Connection that reads resultsSentElsewhere (into `elsewhere`)."""

    def _on_return(self, segs, m, events):
        if m.kind != "resultsSentElsewhere":
            return super()._on_return(segs, m, events)
        q = self.questions.get(m.id)
        if q is None or q.returned:
            raise Violation(f"{self.name}: resultsSentElsewhere for question {m.id}, "
                            f"which awaits no return")
        q.returned = True
        self.__dict__.setdefault("elsewhere", []).append(m.id)
        if q.finished:
            self._drop_question(m.id)


def tailify(e):
    e.conn.__class__ = TailConn
    return e


class FuzzRouter(R.Router):
    """The router, recording every handler a return is handed to (at most once each)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.fz_handed = {}            # id(handler) -> handler (kept: ids stay unique)
        self.fz_bad = []
        self.fz_peers = {}             # peer id -> (kind, name), gone ones too

    def _new_peer(self, name, kind, limits):
        peer = super()._new_peer(name, kind, limits)
        self.fz_peers[peer.id] = (kind, name)
        return peer

    def _handed(self, handler, how):
        if handler is None:
            return
        if id(handler) in self.fz_handed:
            self.fz_bad.append(f"a return handed twice to one question's handler "
                               f"({self.fz_handed[id(handler)][1]}, then {how})")
        self.fz_handed[id(handler)] = (handler, how)

    def _on_return(self, peer, ev):
        self._handed(self._pending.get((peer.id, ev.question_id)), "a Return")
        return super()._on_return(peer, ev)

    def _hand_outcome(self, handler, peer, question_id, outcome):
        self._handed(handler, "a tail call's outcome")
        return super()._hand_outcome(handler, peer, question_id, outcome)

    def forward_returned(self, peer, ev, reply, *rest):
        # one forwarded call, one answer to pass on (a Return, or an outcome handed)
        if id(reply) in self.fz_handed:
            self.fz_bad.append(f"the answer to a call of {reply[0].name}'s (#{reply[1]}) "
                               f"came twice from {peer.name}")
        self.fz_handed[id(reply)] = (reply, "forwarded")
        return super().forward_returned(peer, ev, reply, *rest)

def scenario(seed: int, steps: int = 60, ops=None) -> str | None:
    """One random scenario (or the given `ops`); None if every check held, else what
    broke, where, and the operations that led there."""
    rng = random.Random(seed)
    rel = random.Random(f"releases {seed}")  # a stream of its own: a seed's scenario is
    #                                          the same as before releases, up to the first
    now = [0.0]
    names = dict(NAMES); names[CLOCK] = ("Clock", {0: "wall"})
    router = FuzzRouter({"calc": CALC, "a1": None, "a2": None, "store": CALC}, external=("calc",), names=names,
                      audit=True, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=5.0)},
                      external_limits=R.Limits(in_flight=4, call_time=5.0))
    FakeEngine.all = {}
    # calc.store: tail calls; a quota that never runs out, but is spent and refunded
    calc_grants = [grant("store", "store", revocable=True, max_uses=1 << 40)]
    state = {"calc": tailify(start(router, "calc", calc_grants, exports=True)),
             "starting": None}
    store = tailify(start(router, "store", exports=True))
    callers = {n: start(router, n, [grant("calc", "calc", revocable=True), grant("store", "store"),
                                    grant("time", "clock", "host", revocable=True,
                                          max_uses=1 << 40)],
                        answer_hosts=False)
               for n in ("a1", "a2")}
    store_held = []    # import ids (in store) of capabilities passed to store
    got_caps = []      # (caller, import id) capabilities a caller got in a return
    exts = []
    sent = {}          # (id(caller), qid) -> tag, open questions
    done = set()       # tags answered to their callers
    tagc = [0]
    # tail calls: (id(peer), question id) -> [peer, the _Answer it is for (the
    # supervisor's question it answers, while open), its answer id, taken?, its mark,
    # its _Question (ids are reused: a record is good while this is the peer's)]
    tails = {}
    calc_sent = {}     # (id(calc), question id) -> tag its answer must carry (None: any)
    obs_tags = set()   # tags of the calls in which clients passed calc objects of their own
    seen, keep = set(), []
    log = []

    def new_tag():
        tagc[0] += 1
        return tagc[0]

    def store_pending():
        """The calls store received and has not answered yet."""
        latest = {}
        for ev in store.inbox:
            if isinstance(ev, P.CallReceived):
                latest[ev.answer_id] = ev
        return [ev for ev in latest.values() if ev.answer_id in store.conn.answers
                and not store.conn.answers[ev.answer_id].returned]

    def ask(c, target, method, with_cap=False, caps=(), interface=CALC):
        """`c` calls `target` with a new tag (and `caps`), remembered with the question."""
        t = new_tag()
        q, data = c.conn.send_call(target, interface, method, content(t, with_cap), list(caps))
        sent[(id(c), q)] = t
        c.send(data)

    def collect():
        for c in [state["calc"], store] + exts:      # resultsSentElsewhere: ended
            for q in c.conn.__dict__.pop("elsewhere", ()):
                if (id(c), q) not in tails:
                    raise Violation(f"{c.name}: resultsSentElsewhere for question {q}, "
                                    f"not a tail call")
        for c in list(callers.values()) + exts + [store]:
            rest = []
            for ev in c.inbox:
                if isinstance(ev, P.ReturnReceived):
                    key = (id(c), ev.question_id)
                    t = sent.pop(key, None)
                    if t is None:
                        raise Violation(f"{c.name}: return for unknown question {ev.question_id}")
                    if ev.payload is not None:
                        got = tag_of(ev.payload)
                        if got != t and got is not None and got != GATEWAY_LIST:
                            raise Violation(f"{c.name}: answer to tag {t} carries tag {got}")
                    elif c in callers.values() and "cancelled by its caller" in ev.error:
                        # a1 and a2 never cancel; a tail call taken is not cancelled
                        raise Violation(f"{c.name}: its call (tag {t}) failed as cancelled "
                                        f"by its caller: {ev.error}")
                    done.add(t)
                    if ev.payload is not None and c is not store:
                        for cp in ev.payload.caps:
                            if isinstance(cp, P.Imported):
                                got_caps.append((c, cp.import_id))
                    if ev.finish_needed and c.pid in router.peers:
                        try:
                            c.send(c.conn.send_finish(ev.question_id))
                        except KeyError:
                            pass
                elif c is store and isinstance(ev, P.CallReceived):
                    m = mark_of(ev.payload)
                    if m is not None and m in done and id(ev) not in seen:
                        raise Violation(f"store received tail call {m} after its caller "
                                        f"gave it up")
                    seen.add(id(ev)); keep.append(ev)
                    rest.append(ev)
                    for cp in ev.payload.caps:
                        if isinstance(cp, P.Imported) and cp.import_id not in store_held:
                            store_held.append(cp.import_id)
                else:
                    rest.append(ev)
            c.inbox = rest
        calc = state["calc"]
        for ev in calc.inbox:       # calc finishes the answers it gets (as an engine does)
            if isinstance(ev, P.ReturnReceived) and id(ev) not in seen:
                seen.add(id(ev)); keep.append(ev)
                want = calc_sent.pop((id(calc), ev.question_id), None)
                if want is not None and ev.payload is not None:
                    got = tag_of(ev.payload)
                    if got != want and got is not None and got != GATEWAY_LIST:
                        raise Violation(f"calc: answer to its call tagged {want} carries "
                                        f"tag {got}")
                if ev.finish_needed and calc.pid in router.peers \
                        and ev.question_id in calc.conn.questions \
                        and not calc.conn.questions[ev.question_id].finished:
                    calc.send(calc.conn.send_finish(ev.question_id))
        for ev in calc.inbox:
            if isinstance(ev, P.CallReceived) and id(ev) not in seen:
                t = tag_of(ev.payload)
                m = mark_of(ev.payload)
                seen.add(id(ev)); keep.append(ev)
                if m is not None:
                    if m in done:
                        raise Violation(f"calc received tail call {m} after its caller "
                                        f"gave it up")
                elif t in done:
                    raise Violation(f"calc received tag {t} after its caller was answered")

    def host_invariant():
        for token, (call, host) in router._host_calls.items():
            peer, aid = call.reply
            if not peer.alive or not peer.conn.awaiting_return(aid):
                raise Violation(f"host call {token} still live but its caller "
                                f"{peer.name} is {'gone' if not peer.alive else 'answered'}")
        for key in router._through:        # a stale key: a reused id would be revoked
            if not key[0].alive or not key[0].conn.awaiting_return(key[1]):
                raise Violation(f"_through holds a call of {key[0].name} that ended "
                                f"({'gone' if not key[0].alive else 'answered'})")
        for key in router._spent:          # a quota spent by a call that neither reached
            if key not in router._waiting:  # its callee nor waits: a reused id refunds it
                raise Violation(f"_spent holds a call of {key[0].name} that does not wait")
        held = {}                          # each membrane's count of calls holding
        for ms in router._spent.values():  # its quotas is exactly the calls that do
            for m in ms:
                held[m] = held.get(m, 0) + 1
        for label, m in router.membranes.items():
            if m.held != held.get(m, 0):
                raise Violation(f"{label} counts {m.held} calls holding its quotas, "
                                f"{held.get(m, 0)} do")
        for key, w in router._waiting.items():
            if not key[0].alive:
                raise Violation(f"call of gone {key[0].name} still waiting")

    def tail_invariant():
        if router.fz_bad:
            raise Violation(router.fz_bad[0])
        for (pid, aid), t in router._tails.items():
            peer = router.peers.get(pid)
            if peer is None or not peer.alive:
                raise Violation(f"_tails holds tail call {aid} of a peer that is gone")
            a = peer.conn.answers.get(aid)
            if a is None or not a.elsewhere:
                raise Violation(f"_tails holds {peer.name}'s tail call {aid}, which is "
                                f"not open (finished: its outcome is held for nobody)")
            if isinstance(t, R._Outcome):
                size = t.content.size() if t.content is not None else 0
                if a.kept != size:
                    raise Violation(f"{peer.name}'s tail call {aid}: its outcome holds "
                                    f"{size} bytes, {a.kept} counted (max_kept_bytes)")
                if not a.returned or a.taken or a.finished:
                    raise Violation(f"{peer.name}'s tail call {aid}: an outcome held, but "
                                    f"returned={a.returned} taken={a.taken} "
                                    f"finished={a.finished}")
            elif not a.taken or a.returned:
                raise Violation(f"{peer.name}'s tail call {aid}: a question waits on it, "
                                f"but taken={a.taken} returned={a.returned}")
        held = {}
        for (pid, _aid), t in router._tails.items():
            if isinstance(t, R._Outcome):
                held[pid] = held.get(pid, 0) + t.held
        for pid, peer in router.peers.items():
            if peer.alive and peer.tail_caps != held.get(pid, 0):
                raise Violation(f"{peer.name}: {peer.tail_caps} capabilities of tail calls "
                                f"counted against its handles, {held.get(pid, 0)} held")
        for peer in list(router.peers.values()):
            # each peer's per-caller share of its c-list (Peer.passed, passed_by):
            # only entries it really holds, each counted once to one caller
            if not peer.alive:
                continue
            held_ids = {id(e.obj) for e in peer.conn.exports.values()}
            stale = [k for k in peer.passed if k not in held_ids]
            if stale:
                raise Violation(f"{peer.name}: {len(stale)} capabilities counted as passed "
                                f"to it by callers are not in its c-list")
            by = {}
            for who in peer.passed.values():
                by[who] = by.get(who, 0) + 1
            if by != peer.passed_by:
                raise Violation(f"{peer.name}: passed_by {peer.passed_by}, its passed "
                                f"entries count {by}")
            # what callers gone since passed it: counted together by pool (the
            # external clients; each compartment's instances)
            gone = {k for k in by if k not in router.peers}
            pools = {}
            for k in gone:
                kind, name = router.fz_peers[k]
                pool = ("external",) if kind == "external" else ("compartment", name)
                pools[pool] = pools.get(pool, 0) + by[k]
                if peer.gone_by.get(k) != pool:
                    raise Violation(f"{peer.name}: gone caller {k} in pool "
                                    f"{peer.gone_by.get(k)}, not {pool}")
            if set(peer.gone_by) != gone or peer.passed_gone != pools:
                raise Violation(f"{peer.name}: gone callers {peer.gone_by} with "
                                f"{peer.passed_gone} counted, {gone} with {pools} there")
        sums, gone = {}, {}
        for (pid, _q), h in router._pending.items():
            if type(h) is R.control.Forward and h.size:
                k = (pid, h.reply[0].id)
                sums[k] = sums.get(k, 0) + h.size
        for (pid, _q), n in router._orphan_bytes.items():
            gone[pid] = gone.get(pid, 0) + n
        if sums != router._pending.forwarded or {k: v for k, v in gone.items() if v} \
                != router._orphan_bytes_at:
            raise Violation(f"bytes forwarded {router._pending.forwarded} (counted {sums}), "
                            f"orphans' {router._orphan_bytes_at} (counted {gone})")
        at = {}
        for (pid, _q) in dict.keys(router._pending):
            at[pid] = at.get(pid, 0) + 1
        if at != router._pending.at:
            raise Violation(f"questions open per peer {router._pending.at} (counted {at})")
        # a live client's cancelled calls count to its in_flight (_cancelled_of), the
        # others to orphans_limit (_orphans_at): each orphan to exactly one of them
        if len(router._orphans) != sum(router._orphans_at.values()) + len(router._cancelled_by):
            raise Violation(f"orphans {len(router._orphans)} counted "
                            f"{sum(router._orphans_at.values())} ({router._orphans_at}) "
                            f"+ {len(router._cancelled_by)} cancelled by live clients")
        by = {}
        for key, cid in router._cancelled_by.items():
            by[cid] = by.get(cid, 0) + 1
            caller = router.peers.get(cid)
            if key not in router._orphans or caller is None or not caller.alive:
                raise Violation(f"a cancelled call {key} counted to {cid}, which is gone "
                                f"or whose call is no orphan")
        if by != router._cancelled_of:
            raise Violation(f"cancelled calls per caller {router._cancelled_of} "
                            f"(counted {by})")
        for (pid, qid) in router._orphans:
            peer = router.peers.get(pid)
            q = peer.conn.questions.get(qid) if peer is not None else None
            if q is None or q.returned:
                raise Violation(f"an orphan counted for question {qid} to "
                                f"{peer.name if peer else pid}, which awaits no Return")
        for peer in list(router.peers.values()):
            if not peer.alive:
                continue
            conn = peer.conn
            kept = sum(a.kept for a in conn.answers.values() if a.returned)
            if conn._kept != kept:
                raise Violation(f"{peer.name}: {conn._kept} bytes counted as kept, its "
                                f"unfinished answers hold {kept}")
            unfinished = sum(1 for a in conn.answers.values() if a.returned and not a.finished)
            if conn.unfinished != unfinished:
                raise Violation(f"{peer.name}: unfinished counts {conn.unfinished}, "
                                f"{unfinished} answers are returned and not finished")
            unanswered = sum(1 for a in conn.answers.values() if not a.returned)
            if conn.unanswered != unanswered:
                raise Violation(f"{peer.name}: unanswered (in flight) counts "
                                f"{conn.unanswered}, {unanswered} answers are not returned")
            for aid, a in conn.answers.items():
                if a.elsewhere and a.returned and not a.taken and not a.finished \
                        and not isinstance(router._tails.get((peer.id, aid)), R._Outcome):
                    raise Violation(f"{peer.name}'s tail call {aid} ended, untaken and "
                                    f"unfinished, and its outcome is not held")

    def new_tail(c, aid, target, tag, cap=None):
        """`c` answers its open answer `aid` (a question of the supervisor's) with a
        tail call to `target`; taken now, later or never, finished now or later."""
        mark = new_tag()
        caps = [cap] if cap is not None else []
        q, data = c.conn.send_call(target, CALC, rng.randrange(3),
                                   tail_content(tag, mark, bool(caps)), caps)
        tails[(id(c), q)] = [c, c.conn.answers[aid], aid, False, mark, c.conn.questions[q]]
        c.send(to_yourself(data))
        k = rng.random()
        if k < 0.4:
            take(c, q)
            if rng.random() < 0.6:           # as Cap'n Proto's C++ RPC does
                finish_tail(c, q)
        elif k < 0.5:
            finish_tail(c, q)                # cancelled before it is taken

    def take(c, q):
        t = tails.get((id(c), q))
        if t is None or t[3] or c.pid not in router.peers:
            return
        a, aid = t[1], t[2]
        if c.conn.answers.get(aid) is not a or a.returned:
            return                           # answered otherwise: never taken
        qq = c.conn.questions.get(q)
        if qq is None or qq is not t[5] or qq.finished:
            return                           # gone, or given up (C++ takes before Finish)
        t[3] = True
        c.send(send_take(c.conn, aid, q))

    def finish_tail(c, q):
        qq = c.conn.questions.get(q)
        t = tails.get((id(c), q))
        if t is None or qq is not t[5] or qq.finished or c.pid not in router.peers:
            return
        if not t[3] and not qq.returned:
            for e in (state["calc"], store):     # what arrived so far arrived in time
                for ev in e.inbox:
                    if isinstance(ev, P.CallReceived):
                        seen.add(id(ev)); keep.append(ev)
            done.add(t[4])                   # given up: must not reach its callee now
        c.send(send_finish(c.conn, q, rng.random() < 0.5))

    def open_tails(c):
        return [q for (cid, q), t in tails.items() if cid == id(c)
                and c.conn.questions.get(q) is t[5] and not t[5].finished]

    def tails_gone(c):
        """`c` is gone: its tail calls have no caller any more."""
        for key in [k for k in tails if k[0] == id(c)]:
            done.add(tails.pop(key)[4])

    def internal():
        for e in FakeEngine.all.values():
            for x in e.effects:
                if isinstance(x, fx.Notice) and "internal error" in x.text:
                    raise Violation("internal error: " + x.text)

    def calls_at_calc():
        latest = {}
        for ev in state["calc"].inbox:
            if isinstance(ev, P.CallReceived):
                latest[ev.answer_id] = ev
        return list(latest.values())

    for step in range(steps):
        if ops is not None:
            if step >= len(ops):
                break
            op = ops[step]
        else:
            op = rng.choice(["host", "host", "host_done", "pass_store", "store_use", "store_give",
                         "use_got", "cb_self", "revoke", "kill_caller", "store_kill", "pipe", "pipe",
                          "call", "call", "call_cap", "answer", "answer", "revoke", "restart",
                         "up", "ext_new", "ext_call", "ext_gone", "ext_finish", "tick",
                         "promise", "call_store", "store_answer", "kill", "ext_pipe",
                         "ext_promise", "ext_call",
                         "calc_tail", "calc_tail", "store_tail", "ext_obs", "ext_answer",
                         "ext_answer", "ext_answer", "tail_take", "tail_finish", "tail_pipe",
                         "cb_ext", "cb_ext", "cb_ext", "store_answer", "store_answer",
                         "ext_obs", "ext_new"])
            if rel.random() < 0.04:
                op = rel.choice(["release_got", "store_release", "calc_release"])
        log.append(op)
        calc = state["calc"]
        try:
            if op == "host":
                c = callers[rng.choice(["a1", "a2"])]
                if c.pid in router.peers:
                    ask(c, c.grants[2].import_id, 0, interface=CLOCK)
            elif op == "host_done":
                pend = [(c, h) for c in callers.values() for h in c.host_calls]
                if pend:
                    c, h = rng.choice(pend)
                    c.host_calls.remove(h)
                    if router.host_call_live(h.token):     # as runtime._host_job
                        if rng.random() < 0.7:
                            c.deliver(router.host_returned(h.token, content(tag_of(h) or 0)))
                        else:
                            c.deliver(router.host_failed(h.token, "EIO"))
            elif op == "pass_store":      # a caller passes its calc grant on to store
                c = callers[rng.choice(["a1", "a2"])]
                if c.pid in router.peers:
                    ask(c, c.grants[1].import_id, 0, with_cap=True, caps=[RemoteRef(c.grants[0].import_id)])
            elif op == "store_use" and store_held:
                imp = rng.choice(store_held)
                if imp in store.conn.imports:
                    ask(store, imp, rng.randrange(3))
            elif op == "store_give" and store_held:    # store answers a call with a held cap
                sp = store_pending()
                imp = rng.choice(store_held)
                if sp and imp in store.conn.imports:
                    ev = rng.choice(sp)
                    store.send(store.conn.send_return(ev.answer_id, content(tag_of(ev.payload) or 0, True),
                                                      [RemoteRef(imp)]))
            elif op == "use_got" and got_caps:
                c, imp = rng.choice(got_caps)
                if c.pid in router.peers and imp in c.conn.imports:
                    ask(c, imp, rng.randrange(3))
            elif op in ("cb_self", "cb_ext"):   # calc calls a cap it was passed, passing it back
                caps = [cp for ev in calls_at_calc() for cp in ev.payload.caps
                        if isinstance(cp, P.Imported) and cp.import_id in calc.conn.imports
                        and (op == "cb_self" or tag_of(ev.payload) in obs_tags)]
                if caps:
                    cp = rng.choice(caps)
                    t = new_tag()
                    q, data = calc.conn.send_call(cp.import_id, 0xC0FFEE0000000003, 0,
                                                  content(t, True), [RemoteRef(cp.import_id)])
                    calc_sent[(id(calc), q)] = t
                    calc.send(data)
            elif op == "pipe":             # an engine pipelines (a compromised one may)
                c = callers[rng.choice(["a1", "a2"])]
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens and c.pid in router.peers:
                    ask(c, (rng.choice(opens), (0,)), rng.randrange(3))
            elif op == "store_kill":         # store crashes and comes back
                store.deliver(router.stop_engine("store", "crash"))
                for key in [k for k in sent if k[0] == id(store)]:
                    done.add(sent.pop(key))
                tails_gone(store)
                store = tailify(start(router, "store", exports=True))
                store_held.clear()
            elif op == "kill_caller":      # a1 or a2 crashes and comes back
                n = rng.choice(["a1", "a2"])
                c = callers[n]
                c.deliver(router.stop_engine(n, "crash"))
                for key in [k for k in sent if k[0] == id(c)]:
                    done.add(sent.pop(key))
                got_caps[:] = [g for g in got_caps if g[0] is not c]
                callers[n] = start(router, n, [grant("calc", "calc", revocable=True),
                                               grant("store", "store"),
                                               grant("time", "clock", "host", revocable=True,
                                                     max_uses=1 << 40)],
                                   answer_hosts=False)
                callers[n].host_calls.extend(c.host_calls)    # the host layer still has them
            elif op == "call":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[0].import_id, rng.randrange(3))
            elif op == "call_store":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[1].import_id, 0)
            elif op == "store_answer":
                sp = store_pending()
                if sp:
                    ev = rng.choice(sp)
                    store.send(store.conn.send_return(ev.answer_id, content(tag_of(ev.payload) or 0)))
            elif op == "kill" and state["starting"] is None:
                calc.deliver(router.disconnected(calc.pid, "killed"))
                tails_gone(calc)
                e, starts = start(router, "calc", calc_grants, exports=True, later=True)
                tailify(e)
                state["calc"], state["starting"] = e, starts
            elif op == "ext_pipe" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens:
                    ask(c, (rng.choice(opens), (0,)), 0)
            elif op == "ext_promise" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens:
                    ask(c, c.grants[0].import_id, 1, with_cap=True, caps=[P.ReceiverAnswer(rng.choice(opens), (0,))])
            elif op == "call_cap":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[0].import_id, 0, with_cap=True, caps=[object()])
            elif op == "promise":
                c = callers[rng.choice(["a1", "a2"])]
                opens = [q for (cid, q) in sent if cid == id(c)]
                if opens:
                    ask(c, c.grants[0].import_id, 1, with_cap=True, caps=[P.ReceiverAnswer(rng.choice(opens), (0,))])
            elif op == "answer":
                pend = [ev for ev in calls_at_calc() if ev.answer_id in calc.conn.answers
                        and not calc.conn.answers[ev.answer_id].returned]
                if pend:
                    ev = rng.choice(pend)
                    t = tag_of(ev.payload) or 0
                    k = rng.random()
                    if k < 0.3:
                        calc.send(calc.conn.send_exception(ev.answer_id, "nope"))
                    elif k < 0.6 and ev.payload.caps:
                        # call the promise/cap it was passed (a callback), then answer
                        cap = ev.payload.caps[0]
                        if isinstance(cap, P.Imported) and cap.import_id in calc.conn.imports:
                            tc = new_tag()
                            q, data = calc.conn.send_call(cap.import_id, 0xC0FFEE0000000003,
                                                          0, content(tc))
                            calc_sent[(id(calc), q)] = tc
                            calc.send(data)
                        calc.send(calc.conn.send_return(ev.answer_id, content(t)))
                    else:
                        calc.send(calc.conn.send_return(ev.answer_id,
                                                        content(t, True), [object()]))
            elif op == "revoke":
                name = rng.choice(["a1.calc", "a2.calc", "a1.time", "a2.time"])
                if rng.random() < 0.1:
                    name = "calc.store"     # what calc's tail calls to store go through
                for c in [callers["a1"]]:
                    c.deliver(router.revoke(name))
            elif op == "restart" and state["starting"] is None:
                calc.deliver(router.stop_engine("calc", "restart"))
                tails_gone(calc)
                e, starts = start(router, "calc", calc_grants, exports=True, later=True)
                tailify(e)
                state["calc"], state["starting"] = e, starts
            elif op == "up" and state["starting"] is not None:
                starts, state["starting"] = state["starting"], None
                state["calc"].deliver(starts)
            elif op == "ext_new" and len(exts) < 3 and state["starting"] is None:
                exts.append(tailify(client(router, f"x{seed}_{step}")))
            elif op == "ext_call" and exts:
                c = rng.choice(exts)
                ask(c, c.grants[0].import_id, 0)
            elif op == "ext_gone" and exts:
                c = exts.pop(rng.randrange(len(exts)))
                tails_gone(c)
                c.deliver(router.disconnected(c.pid, "gone"))
                for key in [k for k in sent if k[0] == id(c)]:
                    done.add(sent.pop(key))
            elif op == "ext_finish" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].finished]
                if opens:
                    q = rng.choice(opens)
                    c.send(c.conn.send_finish(q))
                    done.add(sent[(id(c), q)])   # cancelled: must not reach calc from now
            elif op == "calc_tail":     # calc answers a call with a tail call
                pend = [ev for ev in calls_at_calc() if ev.answer_id in calc.conn.answers
                        and not calc.conn.answers[ev.answer_id].returned]
                if pend and calc.pid in router.peers and 0 in calc.grants:
                    ev = rng.choice(pend)
                    t = tag_of(ev.payload) or 0
                    caps = [cp for cp in ev.payload.caps if isinstance(cp, P.Imported)
                            and cp.import_id in calc.conn.imports]
                    target = calc.grants[0].import_id             # store, via calc.store
                    if caps and rng.random() < 0.3:
                        target = caps[0].import_id                # what it was passed
                    if target in calc.conn.imports:
                        new_tail(calc, ev.answer_id, target, t,
                                 RemoteRef(caps[0].import_id) if caps and rng.random() < 0.3
                                 else None)
            elif op == "store_tail" and store_held:    # store: a tail call to a held calc grant
                sp = store_pending()
                imp = rng.choice(store_held)
                if sp and imp in store.conn.imports:
                    ev = rng.choice(sp)
                    new_tail(store, ev.answer_id, imp, tag_of(ev.payload) or 0)
            elif op == "ext_obs" and exts:     # a client passes calc an object of its own
                c = rng.choice(exts)
                ask(c, c.grants[0].import_id, 2, with_cap=True, caps=[object()])
                obs_tags.add(tagc[0])
            elif op == "ext_answer" and exts:  # a client answers calc's call back
                c = rng.choice(exts)
                latest = {ev.answer_id: ev for ev in c.inbox if isinstance(ev, P.CallReceived)}
                pend = [ev for ev in latest.values()         # (ids are reused)
                        if c.conn.answers.get(ev.answer_id) is not None
                        and not c.conn.answers[ev.answer_id].returned]
                if pend and c.pid in router.peers:
                    ev = rng.choice(pend)
                    t = tag_of(ev.payload) or 0
                    k = rng.random()
                    if k < 0.2:
                        c.send(c.conn.send_return(ev.answer_id, content(t)))
                    elif k < 0.3:
                        c.send(c.conn.send_exception(ev.answer_id, "no"))
                    elif k < 0.4:                        # a tail call to the gateway
                        gw = [i for i in c.conn.imports if i != c.grants[0].import_id]
                        if gw:
                            mark = new_tag()
                            q, data = c.conn.send_call(gw[0], R.hosted.GATEWAY.id,
                                                       R.hosted.GATEWAY.method("list").ordinal)
                            tails[(id(c), q)] = [c, c.conn.answers[ev.answer_id],
                                                 ev.answer_id, False, mark,
                                                 c.conn.questions[q]]
                            c.send(to_yourself(data))
                            if rng.random() < 0.5:
                                take(c, q)
                    else:                                # a tail call to calc
                        new_tail(c, ev.answer_id, c.grants[0].import_id, t)
            elif op == "tail_take":
                cands = [(t[0], q) for (cid, q), t in tails.items() if not t[3]]
                if cands:
                    take(*rng.choice(cands))
            elif op == "tail_finish":
                cands = [(c, q) for c in [calc, store] + exts for q in open_tails(c)]
                if cands:
                    finish_tail(*rng.choice(cands))
            elif op == "tail_pipe":     # a call pipelined on a tail call, or a promise on one
                cands = [(c, q) for c in [calc] + exts for q in open_tails(c)]
                if cands:
                    c, q = rng.choice(cands)
                    if c.pid in router.peers:
                        if c is calc:
                            calc.send(calc.conn.send_call((q, (0,)), CALC, 0, content(0))[1])
                        elif rng.random() < 0.5:
                            ask(c, (q, (0,)), 0)
                        else:
                            ask(c, c.grants[0].import_id, 1, with_cap=True,
                                caps=[P.ReceiverAnswer(q, (0,))])
            elif op in ("release_got", "store_release", "calc_release"):
                # a peer lets go of a capability it got (all its references, or one),
                # not one of its grants: its c-list entry (and whoever's share it
                # counts to) goes with it
                if op == "release_got":      # the one reference an answer brought
                    cands = [(c, i) for c, i in got_caps if c.pid in router.peers]
                elif op == "store_release":
                    cands = [(store, i) for i in store_held]
                else:
                    cands = [(calc, i) for i in calc.conn.imports if calc.pid in router.peers]
                cands = [(c, i) for c, i in cands if i in c.conn.imports]
                if cands:
                    c, imp = rel.choice(cands)
                    grants = {g.import_id for g in getattr(c, "grants", {}).values()
                              if hasattr(g, "import_id")}
                    if imp in grants and c.conn.imports[imp] < 2:
                        pass                       # its grant's own reference: kept
                    elif op == "release_got" or imp in grants:
                        if (c, imp) in got_caps:
                            got_caps.remove((c, imp))
                        c.send(c.conn.send_release(imp, 1))
                    else:
                        c.send(c.conn.send_release(imp, None if rel.random() < 0.7 else 1))
            elif op == "tick":
                now[0] += rng.choice([0.5, 2.0, 6.0])
                calc.deliver(router.expire())
            collect()
            internal()
            host_invariant()
            tail_invariant()
            for ev in calls_at_calc():
                seen.add(id(ev)); keep.append(ev)
        except Violation as e:
            return f"seed {seed} step {step} op {op}: {e}\n  ops: {' '.join(log)}"
    # wind down
    try:
        if state["starting"] is not None:
            state["calc"].deliver(state["starting"])
            state["starting"] = None
            collect()
        for c in [state["calc"], store] + exts:   # tail calls: finished, taken or not
            for q in open_tails(c):
                finish_tail(c, q)
        collect()
        tail_invariant()
        for _ in range(20):
            calc = state["calc"]
            pend = [ev for ev in calls_at_calc() if ev.answer_id in calc.conn.answers
                    and not calc.conn.answers[ev.answer_id].returned]
            for ev in pend:
                calc.send(calc.conn.send_exception(ev.answer_id, "end"))
            collect()
        for ev in [ev for ev in store.inbox if isinstance(ev, P.CallReceived)
                   and ev.answer_id in store.conn.answers and not store.conn.answers[ev.answer_id].returned]:
            try:
                store.send(store.conn.send_exception(ev.answer_id, "end"))
            except KeyError:
                pass
        collect()
        for c in list(callers.values()) + exts:
            c.deliver(router.disconnected(c.pid, "end"))
        for c in list(callers.values()):       # the host layer finishes what it was given
            for h in c.host_calls:
                if router.host_call_live(h.token):
                    c.deliver(router.host_failed(h.token, "end"))
        collect()
        for imp in list(store.conn.imports):     # store lets go of what it was given
            store.send(store.conn.send_release(imp))
        collect()
        for imp in list(state["calc"].conn.imports):
            state["calc"].send(state["calc"].conn.send_release(imp))
        collect()
        cpeer = router.engines["calc"]
        leak = [i for i in cpeer.conn.imports if not (router.proxies["calc"].target is not None
                and router.proxies["calc"].target.import_id == i)
                and not (cpeer.control is not None and cpeer.control.import_id == i)]
        if leak:
            return f"seed {seed} end: router still imports {len(leak)} of calc's objects after every caller left\n  ops: {' '.join(log)}"
        if router._pipelined or router._promises or router.proxies["calc"].queue:
            return f"seed {seed} end: pipelined {len(router._pipelined)} promises {len(router._promises)} queue {len(router.proxies['calc'].queue)}\n  ops: {' '.join(log)}"
        tail_invariant()
        for e in (state["calc"], store):
            conn = router.peers[e.pid].conn
            if conn._kept or conn.unanswered or router._tails:
                return (f"seed {seed} end: {e.name} keeps {conn._kept} bytes, "
                        f"{conn.unanswered} calls in flight, tails {router._tails}"
                        f"\n  ops: {' '.join(log)}")
        state["calc"].deliver(router.disconnected(state["calc"].pid, "end"))
        store.deliver(router.disconnected(store.pid, "end"))
        now[0] += 1000
        router.expire()
        internal()
    except Violation as e:
        return f"seed {seed} wind-down: {e}\n  ops: {' '.join(log)}"
    probs = []
    if router.pipelined_bytes or router.pipelined_pooled or router.pipelined_external:
        probs.append(f"pipelined_bytes {router.pipelined_bytes} pooled {router.pipelined_pooled}"
                     f" external {router.pipelined_external}")
    if router._waiting:
        probs.append(f"_waiting {router._waiting}")
    if router.audit._open:
        probs.append(f"audit records never closed: {len(router.audit._open)}")
    if router._orphans or router._orphans_at or router._cancelled_by or router._cancelled_of:
        probs.append(f"orphans {router._orphans} {router._orphans_at} "
                     f"{router._cancelled_by} {router._cancelled_of}")
    if router._through:
        probs.append(f"_through {len(router._through)}")
    if router._spent:
        probs.append(f"_spent {len(router._spent)}")
    if router._pending:
        probs.append(f"_pending {len(router._pending)}")
    if router._tails:
        probs.append(f"_tails {router._tails}")
    if probs:
        return f"seed {seed} end: {'; '.join(probs)}\n  ops: {' '.join(log)}"
    return None


def run(seeds, steps: int = 60) -> dict:
    """kind of failure -> the reports of the seeds that failed so."""
    fails: dict = {}
    for s in seeds:
        try:
            r = scenario(s, steps)
        except Exception:  # noqa: BLE001 - a crash is a finding like any other
            r = f"seed {s}: crash\n" + traceback.format_exc()
        if r:
            first = r.splitlines()[0]
            kind = first.split(": ", 1)[1][:50] if ": " in first else first
            fails.setdefault(kind, []).append(r)
    return fails


def _seeds(text: str) -> range:
    a, _, b = text.partition("-")
    return range(int(a), int(b or a) + 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-1000", help="a range, e.g. 1-5000")
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args(argv)
    seeds = _seeds(args.seeds)
    return report(run(seeds, args.steps), seeds, args.steps)


def report(fails: dict, seeds: range, steps: int) -> int:
    """A scenario fuzzer's failures, one of each kind, and its exit code (1: some)."""
    for kind, reports in fails.items():
        print(f"== {len(reports)} x {kind}\n{reports[0][-1500:]}\n")
    print(f"{len(seeds)} scenarios of {steps} steps: "
          + (f"{sum(map(len, fails.values()))} failed" if fails else "no failures"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
