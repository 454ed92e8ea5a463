"""A sans-IO Cap'n Proto RPC connection (level 1: no three-party handoff).

The h11 pattern: `Connection.receive(bytes)` returns events, the `send_*`
methods return bytes.  No sockets, no event loop, no threads: the supervisor
drives it from trio, the engine from a blocking loop, the tests back to back.

The four tables of the protocol live here:
  questions  calls we made that are not finished        (question id -> _Question)
  answers    calls we received that are not finished    (answer id   -> _Answer)
  exports    objects we host that the peer may call      (export id   -> _Export)
  imports    objects the peer hosts that we may call     (import id   -> refcount)
The export table of the supervisor's connection to an engine *is* that
compartment's c-list: the integer a guest calls through is an import id of its
engine, i.e. an export id here, and anything else is an error.

Owns: the protocol's rules and tables, and the one choke point for a peer's
bytes.  Each incoming message is decoded completely (rpcwire: by hand, or
through pycapnp) while it is handled, so its events carry plain values only:
ints, str, tuples, and payload `Content`, which is located and bounds-checked
but spliced, never decoded.  Must not: do I/O, or let anything but a
`ProtocolError` out of `receive`/`receive_iter`.

Errors: `ProtocolError` means the peer broke the protocol (unknown ids, double
returns, releases below zero, malformed bytes, a limit passed), and is the
only exception that handling a peer's bytes raises: whatever else goes wrong
while one message is handled (a malformed field, a bug) becomes one, in
`receive_iter`.  The connection is then closed; the owner answers by sending
`abort()` and dropping this one connection; nothing else is affected.  A
well-formed Call or Return that merely passes a per-message limit (more than
MAX_CAPS_PER_MESSAGE capabilities, a pipeline transform past its bound) is not
one: it fails that call or answer (CallReceived.over, a failed
ReturnReceived), and the references it gave are released (RefsReleased).
Nor is a call that comes while the peer holds too many answers unfinished
(CallReceived.overloaded: a Cap'n Proto peer finishes a call only when its
response is let go of), up to twice max_unfinished.
"""
from __future__ import annotations

import struct

import attrs
import capnp

from . import rpc, rpcwire, wire
from .rpcwire import (CAP_NONE, CAP_RECEIVER_ANSWER, CAP_RECEIVER_HOSTED, CAP_SENDER_HOSTED,
                      CAP_SENDER_PROMISE, CAP_THIRD_PARTY_HOSTED, MAX_CAPS_PER_MESSAGE,
                      NESTING_LIMIT, TRAVERSAL_LIMIT_WORDS)
from .text import KEPT_REASON_LIMIT, bounded, first_line, kj_text

#: Question ids from here up are the supervisor's native forwarding path's
#: (supervisor/fastlane.py); the allocator here never reaches them.
NATIVE_QID_BASE = 1 << 31
#: Answers we returned that the peer has not finished, per connection.
MAX_UNFINISHED = 4096
#: Bytes that answers returned with capabilities (kept for pipelining) and never
#: finished may hold, per connection.
MAX_KEPT_BYTES = 64 << 20

# pointer-field indices (from rpc.capnp's layout; checked in tests)
_MSG_BODY = 0          # Message.<union member> is pointer 0
_CALL_PARAMS = 1       # Call.params
_PAYLOAD_CONTENT = 0   # Payload.content


class ProtocolError(Exception):
    """The peer violated the Cap'n Proto RPC protocol."""


# ------------------------------------------------------------------ values
# Values: never changed once made.  The ones made on every call (Content, Payload,
# CallReceived, ReturnReceived) are not frozen only for speed (see effects.py).


@attrs.define
class Content:
    """Payload content: a pointer inside some message's segments.

    `loc` is where the content pointer lives; for a standalone message (as a
    guest or a pycapnp builder produces it) that is the root, (0, 0).  With no
    segments, `word` is written as the content pointer itself (null, or a
    capability pointer for a bootstrap answer).
    """
    segments: tuple = ()
    loc: tuple | None = None
    word: int = 0
    #: what wire.resolve(segments, loc) gives, once the protocol core has resolved
    #: it (the pointer is not resolved again); False: not known
    root: object = attrs.field(default=False, eq=False, repr=False)

    @classmethod
    def standalone(cls, segments) -> "Content":
        return cls(tuple(segments), (0, 0))

    @classmethod
    def capability(cls, index: int) -> "Content":
        return cls(word=wire.cap_pointer(index))

    def size(self) -> int:
        """Bytes of the segments the content lies in: what a message of it weighs
        (one segment, nearly always: no generator for it)."""
        segs = self.segments
        return len(segs[0]) if len(segs) == 1 else sum(len(s) for s in segs)

    def message(self) -> list:
        """The content as a standalone message (segment list, root = content)."""
        if not self.segments:
            return [_word_segment(self.word)]
        return wire.with_root_at(self.segments, self.loc)

    def single_segment_copy(self, max_words: int = wire.MAX_MESSAGE_WORDS) -> bytes:
        """The content as a framed single-segment message, objects in pre-order
        (wire.single_segment_copy; not Cap'n Proto's canonical form)."""
        if not self.segments:
            return wire.single_segment_copy([_word_segment(self.word)], (0, 0), max_words)
        return wire.single_segment_copy(self.segments, self.loc, max_words)

    def follow(self, transform) -> tuple | None:
        """Location reached by applying a pipeline transform (pointer-field path)."""
        if not self.segments:
            return None
        return wire.follow_path(self.segments, self.loc, transform)

    def cap_index(self, transform) -> int | None:
        """Cap-table index of the capability found by following `transform`."""
        if not self.segments:
            return wire.capability_index([_word_segment(self.word)], (0, 0)) \
                if not transform else None
        return wire.capability_index(self.segments, self.follow(transform))


EMPTY = Content()
_NO_RESULT = (EMPTY, ())


def _word_segment(word: int) -> bytes:
    return word.to_bytes(8, "little")


@attrs.frozen
class RemoteRef:
    """An outgoing capability that the *peer* hosts (sent as receiverHosted)."""
    import_id: int


@attrs.frozen
class ReceiverAnswer:
    """An outgoing capability promised in the result of a call the *peer* has not
    answered yet (sent as receiverAnswer): what a pipelining client passes."""
    question_id: int
    transform: tuple = (0,)


# Incoming capability references, after decoding the capTable.
@attrs.frozen
class Imported:
    """The peer hosts it (senderHosted): we now hold one more reference."""
    import_id: int


@attrs.frozen
class Exported:
    """One of our own exports, handed back to us (receiverHosted)."""
    obj: object


@attrs.frozen
class PromisedAnswer:
    """A capability inside the (future) result of one of the peer's calls to us.

    `result` and `error` are the answer's state when the message arrived (a
    Finish later in the same read may already have removed the answer).
    """
    answer_id: int
    transform: tuple
    result: tuple | None = attrs.field(default=None, eq=False)
    error: str | None = None
    #: the failed answer's exception type: a call pipelined on it fails with the
    #: same type, as on a broken promise (a client retries "overloaded" and
    #: "disconnected", not "failed")
    error_type: str = "failed"


@attrs.define
class Payload:
    content: Content
    caps: tuple  # of None | Imported | Exported | PromisedAnswer


# ------------------------------------------------------------------ events


@attrs.frozen
class BootstrapRequested:
    answer_id: int
    #: the Bootstrap named an object (deprecatedObjectId, Cap'n Proto 0.4's
    #: named exports): not the bootstrap capability the peer would get without it
    named: bool = False
    #: the peer holds too many answers unfinished (Connection._overloaded), and this
    #: says so: the owner refuses it `overloaded` with it
    overloaded: str | None = None


@attrs.define
class CallReceived:
    answer_id: int
    target: object            # an exported object, or a PromisedAnswer
    interface_id: int
    method_id: int
    payload: Payload
    #: sendResultsTo.yourself (a tail call, rpc.capnp level 1): the results are
    #: not returned to the peer but kept for its Return ... takeFromOtherQuestion
    #: (send_elsewhere)
    elsewhere: bool = False
    #: the call passes a per-message limit (its params carry more than
    #: MAX_CAPS_PER_MESSAGE capabilities), and this says which: the owner fails the
    #: call with it, and the connection goes on.  `payload` is then empty: the
    #: references the params gave were released (RefsReleased, just before).
    over: str | None = None
    #: the call asks for what this level-1 peer does not implement
    #: (sendResultsTo.thirdParty, level 3, or a sendResultsTo rpc.capnp does not
    #: define), and this says what: the owner fails it `unimplemented` with it, as
    #: `over` (payload empty, references released), and the connection goes on.
    #: It was a protocol error, and the peer lost every call and capability it had.
    unsupported: str | None = None
    #: the peer holds too many answers it has not finished (max_unfinished,
    #: max_kept_bytes: Connection._overloaded), and this says so: the owner fails
    #: the call `overloaded` with it, as `over` (payload empty, references
    #: released), and the connection goes on.  It was a protocol error, and a
    #: conforming client keeping its results lost every call and capability.
    overloaded: str | None = None


@attrs.define
class ReturnReceived:
    question_id: int
    payload: Payload | None   # None when the call failed
    error: str | None = None
    error_type: str = "failed"
    finish_needed: bool = True   # False: the peer set noFinishNeeded; do not send Finish


@attrs.frozen
class RefsReleased:
    """The references to the peer's objects that a message we refused for a
    per-message limit gave us (its senderHosted, senderPromise and
    thirdPartyHosted descriptors: rpc.capnp makes the receiver own one each),
    released at once: the owner sends `data` (Release messages, one per id).
    They never entered the import table.  Comes just before the CallReceived (its
    `over` set) or the ReturnReceived (failed with the limit) of that message."""
    data: bytes
    count: int


@attrs.frozen
class ReturnTaken:
    """The peer answered our question `question_id` with the results of its own
    call `answer_id` to us, made with sendResultsTo.yourself (a tail call):
    Return with takeFromOtherQuestion.  The question is returned; the owner
    hands that call's outcome to whoever asked `question_id`."""
    question_id: int
    answer_id: int


@attrs.frozen
class FinishReceived:
    answer_id: int


@attrs.frozen
class ExportReleased:
    """The peer dropped its last reference to one of our exported objects."""
    obj: object


@attrs.frozen
class Unhandled:
    """A message we do not implement; `reply` (an 'unimplemented' echo) must be sent."""
    which: str
    reply: bytes


@attrs.frozen
class AbortReceived:
    reason: str


@attrs.frozen
class DisembargoReceived:
    """The peer asks us to reflect its embargo `embargo_id` once the calls it sent
    on `target` (an Exported or a PromisedAnswer) are delivered (senderLoopback)."""
    target: object
    embargo_id: int


# ------------------------------------------------------------------ tables


@attrs.define
class _Question:
    param_exports: list
    returned: bool = False
    finished: bool = False


class _Answer:
    """One answer's state.  Its defaults are the class's: `_Answer()` (one for
    every call received) runs no Python code, where attrs' __init__ set each of
    its ten fields (38 interpreter opcodes, a sixth of what the protocol core
    spent reading a plain call).  An instance holds only what was set on it."""
    returned = False
    finished = False
    result: tuple | None = None      # (Content, caps) once returned with results
    error: str | None = None
    error_type = "failed"
    #: the objects its return exported (released by a Finish with releaseResultCaps):
    #: a list of its own once a return with capabilities sets it (send_return)
    result_exports: tuple | list = ()
    kept = 0                         # bytes this answer holds until it is finished
    #: finished before its return, with releaseResultCaps: the peer will not import
    #: what the return carries (discards_results)
    discard = False
    #: sendResultsTo.yourself: returned with resultsSentElsewhere (send_elsewhere)
    elsewhere = False
    #: a Return ... takeFromOtherQuestion named it (at most once: rpc.capnp)
    taken = False

    def __repr__(self):
        return f"_Answer({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@attrs.define
class _Export:
    obj: object
    refcount: int


class _IdAllocator:
    """Ids are reused, most recently freed first, so they stay small."""

    def __init__(self):
        self._free: list[int] = []
        self._next = 0

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        self._next += 1
        return self._next - 1

    def give(self, i: int) -> None:
        self._free.append(i)


# ------------------------------------------------------------------ the connection


class Connection:
    """One RPC connection's state and rules.

    Counts for the owner's per-peer limits: `unanswered` (calls from the peer
    not yet returned), `unfinished` (returned, and not finished by the peer;
    bounded here by `max_unfinished`), `len(imports)` (capabilities the peer
    hosts that we hold), `len(exports)`.  `partial_message` tells whether a
    message is half received, for a deadline on it.
    """

    def __init__(self, name: str = "peer", *,
                 max_message_words: int = wire.MAX_MESSAGE_WORDS,
                 max_segments: int = wire.MAX_SEGMENTS,
                 max_unfinished: int = MAX_UNFINISHED,
                 max_kept_bytes: int = MAX_KEPT_BYTES):
        self.name = name
        self._framer = wire.Framer(max_segments, max_message_words)
        self.questions: dict[int, _Question] = {}
        self.answers: dict[int, _Answer] = {}
        self.exports: dict[int, _Export] = {}
        self.imports: dict[int, int] = {}
        #: the imports that came first in the results of a Return (and have not been
        #: released since): objects the peer handed out in answers, which whoever
        #: asked for them holds (its own c-list bounds them), not the peer
        #: (`own_imports`)
        self.answered: set[int] = set()
        self._export_ids: dict[int, int] = {}   # id(obj) -> export id
        # answers returned with noFinishNeeded, oldest first: a Finish for one
        # of them is allowed and ignored.  Bounded: the oldest are forgotten.
        self._no_finish: dict[int, None] = {}
        self.unanswered = 0                     # calls from the peer we have not returned
        # our questions we sent Finish for (cancelled, or past call_time) that the peer
        # has not returned: each stays in `questions` until its Return comes, which a
        # peer that never answers never sends (the owner bounds them: Router, overdue)
        self.overdue = 0
        self.max_unfinished = max_unfinished
        self.max_kept_bytes = max_kept_bytes
        self._unfinished = 0
        self._kept = 0
        self._qids = _IdAllocator()
        self._eids = _IdAllocator()
        self.closed: str | None = None
        # objects a message that then failed released (_unheard): drop_all's too
        self._released_unheard: list = []
        # The supervisor's native forwarding path (supervisor/fastlane.NativeSide),
        # or None: answer ids open natively count as open here, answers it
        # returned and the peer has not finished count against max_unfinished
        # here, and native question ids (>= 2^31) are never this side's to allocate.
        self.native = None

    @property
    def unfinished(self) -> int:
        """Answers we returned that the peer has not finished yet."""
        return self._unfinished

    @property
    def kept(self) -> int:
        """Bytes of results the answers we returned and the peer has not finished
        keep (for calls pipelined on them: max_kept_bytes)."""
        return self._kept

    @property
    def partial_message(self) -> int | None:
        """None, or the number of the message that is partly received (it
        changes when another one begins): a deadline on it bounds how long a
        peer may hold memory with half a message."""
        return self._framer.messages if self._framer.partial else None

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message buffered."""
        return self._framer.pending

    # -------------------------------------------------------------- incoming

    def receive(self, data: bytes) -> list:
        """Feed bytes from the peer; returns the events they complete."""
        return list(self.receive_iter(data))

    def plain_calls(self, data: bytes, kind: type) -> list | None:
        """The Calls that `data` is, whole, if every one is plain (one segment, to
        an object of type `kind` that we export, no capabilities: the native
        decoder's reading, rpcwire.decode) and nothing is partly received:
        received as receive() receives them (the messages counted, their answers
        opened, in order), as (answer id, target, interface id, method id,
        content) each.  None for anything else, with nothing changed: receive()
        then takes the bytes, and says what is wrong with them, if anything.
        For an engine's loop, which serves such calls without events
        (Engine._serve_plain)."""
        # the native decoder's reading of the read, framing and all (_fastwire.c,
        # plain_calls: None unless it is whole one-segment Calls, none passing a
        # capability as its content); the targets and ids are checked here
        read, framer = getattr(wire._native, "plain_calls", None), self._framer
        if read is None or self.native is not None or self.closed is not None \
                or framer.failed is not None or framer.pending or framer.partial:
            return None
        got = read(data, framer.max_words)
        if got is None:
            return None
        view, calls = memoryview(data), []
        exports, answers = self.exports, self.answers
        for aid, eid, interface_id, method_id, content, at, start, end in got:
            e = exports.get(eid)
            if e is None or type(e.obj) is not kind or aid in answers:
                return None
            # its root not resolved for it (False: not known, as Content has it): an
            # engine's guest gets a copy of the content (wire.single_segment_copy),
            # and no reader of it there asks, where the supervisor's flat reader
            # does (receive() resolves it for that)
            calls.append((aid, e.obj, interface_id, method_id, Content(
                (view[start:end],), (0, at)) if content else EMPTY))
        if not calls or len({c[0] for c in calls}) != len(calls):
            return None
        try:
            # its checks, before any change; the limits it checks do not change as
            # answers open (the answers returned and not finished, the bytes they
            # keep), so that the first passing them, all do (past them, receive()
            # refuses each, or says what is wrong)
            if self._overloaded() is not None:
                return None
            self._new_answer(calls[0][0])
        except ProtocolError:
            return None
        # and the others: opened as _new_answer opens one, without its checks again
        # (their ids are new, checked above, and this side has no native path)
        no_finish = self._no_finish
        for c in calls[1:]:
            aid = c[0]
            no_finish.pop(aid, None)
            answers[aid] = _Answer()
        self.unanswered += len(calls) - 1
        framer.messages += len(calls)
        return calls

    def receive_iter(self, data: bytes):
        """Like receive(), but decodes each message only after the events of the
        previous one were consumed, so the caller sees table states in protocol
        order (a pipelined call decoded before its target's return is handled
        sees that return; a later Finish cannot hide the answer from it).

        The choke point: whatever goes wrong while one message is handled
        raises ProtocolError, and nothing else, and closes the connection."""
        if self.closed is not None:
            raise ProtocolError(f"connection already closed: {self.closed}")
        try:
            messages = self._framer.feed(data)
        except Exception as e:
            raise self._broken(f"bad framing: {_short(e)}") from None
        for segs in messages:
            events: list = []
            try:
                self._handle(segs, events)
                if self.native is not None:
                    self.native_check()
            except (ProtocolError, rpcwire.PastBound) as e:
                self._unheard(events)
                raise self._broken(str(e)) from None
            except Exception as e:
                self._unheard(events)
                raise self._broken(f"malformed message: {_short(e)}") from None
            yield from events
            if self.closed is not None:
                return
        if self._framer.failed is not None:      # after the messages whole before it
            raise self._broken(f"bad framing: {_short(self._framer.failed)}")

    def _broken(self, reason: str) -> ProtocolError:
        self.closed = f"protocol error: {reason}"
        return ProtocolError(reason)

    def _unheard(self, events):
        """The events of a message that failed halfway are never seen: the exports
        it released already (a Return's releaseParamCaps is applied before its
        results are read) are out of the table, and the owner, who holds each
        exported object until it hears it released, would let go of them neither
        then nor at the loss (`drop_all`).  They are handed back with the rest."""
        for ev in events:
            if isinstance(ev, ExportReleased):
                self._released_unheard.append(ev.obj)

    def _handle(self, segs, events: list):
        """One message, decoded into plain values, then applied to the tables; its
        events go into `events` as they happen."""
        if type(segs) is wire.Oversized:
            self._on_oversized(segs, events)
            return
        m = rpcwire.decode(segs)
        if m is None:
            m = rpcwire.decode_pycapnp(segs)
        which = m.which
        if which == rpcwire.MSG_CALL:
            self._on_call(segs, m, events)
        elif which == rpcwire.MSG_RETURN:
            self._on_return(segs, m, events)
        elif which == rpcwire.MSG_FINISH:
            self._finished(m.id, m.release, events)
        elif which == rpcwire.MSG_RELEASE:
            self._on_release(m.id, m.count, events)
        elif which == rpcwire.MSG_BOOTSTRAP:
            overloaded = self._overloaded()
            self._new_answer(m.id)
            events.append(BootstrapRequested(m.id, m.named, overloaded))
        elif which == rpcwire.MSG_ABORT:
            self.closed = "aborted by peer"
            events.append(AbortReceived(bounded(m.reason, KEPT_REASON_LIMIT)))
        elif which == rpcwire.MSG_DISEMBARGO and m.kind == "senderLoopback":
            target = Exported(self._export_obj(m.import_id)) if m.promise is None \
                else self._promised(*m.promise)
            events.append(DisembargoReceived(target, m.id))
        elif which == rpcwire.MSG_DISEMBARGO and m.kind == "receiverLoopback":
            raise ProtocolError("Disembargo (receiverLoopback) of an embargo we never asked "
                                "for")
        elif which == rpcwire.MSG_UNIMPLEMENTED:
            # The peer did not understand something we sent; we only send what
            # level-1 peers must implement (and no Resolve, the one echo Cap'n
            # Proto's C++ RPC takes), so this is the peer's problem (as C++ has it)
            raise ProtocolError(f"peer answered 'unimplemented' to {_echoed(segs)}: this "
                                f"peer sends only what every level-1 peer implements")
        else:
            name = rpcwire.MESSAGE_NAMES.get(which, f"#{which} (not in rpc.capnp)")
            events.append(Unhandled(name, _resolve_reply(segs) if which == rpcwire.MSG_RESOLVE
                                    else _unimplemented_reply(segs)))

    def _on_oversized(self, o: wire.Oversized, events: list):
        """A message past this connection's limit of bytes, skipped (wire.Framer):
        a Call fails alone, a Return fails its question, as a Call or Return past
        a per-message limit does (Plain.over), named from the first bytes of its
        segments, where a peer puts the header (Cap'n Proto's C++ RPC among
        them); the references its cap table gave are released.  Until r236 it
        was a protocol error, and a conforming client's large call cut it off.
        Anything else is still one: no other message is large from a conforming
        peer (a Resolve, Bootstrap, Finish, Release or Disembargo is a few words;
        an Abort ends the connection anyway), nor is a header that does not lie
        in those bytes (whose call cannot be named without buffering the message
        the limit is there to refuse)."""
        over = (f"a message of {o.size} bytes is more than this connection takes "
                f"(limit {o.limit} bytes: message_size and 64 KiB of header)")
        segs = [memoryview(k) for k in o.segments]
        if o.has_tails():
            # not all in the first bytes: a peer that builds its content first puts
            # the header after it, at a segment's end, which is kept too (r243: such
            # a call aborted the connection, where Cap'n Proto's layout fails alone)
            sparse = o.sparse()
            try:
                if not rpcwire.header_kept(
                        sparse, lambda s, start, n: 0 <= start
                        and 8 * (start + n) <= len(o.segments[s])):
                    if not rpcwire.header_kept(sparse, o.inside):
                        raise ProtocolError(
                            f"{over}, and its header does not lie in the bytes kept of it "
                            f"(the first and the last {wire.OVERSIZED_KEPT_BYTES // 1024} "
                            f"KiB of its segments, wire.OVERSIZED_KEPT_BYTES), where it is "
                            f"read to fail it alone")
                    segs = sparse         # read only where header_kept found it
            except wire.WireError as e:
                # as within the limit: the same message, read whole, is malformed
                raise ProtocolError(f"malformed message: {_short(e)}") from None
        try:
            which = rpcwire._message_which(segs)
        except wire.WireError:
            which = None
        if which != rpcwire.MSG_CALL and which != rpcwire.MSG_RETURN:
            name = rpcwire.MESSAGE_NAMES.get(which, f"#{which}") if which is not None \
                else "message"
            article = "an" if name[:1] in "aeiou" else "a"
            raise ProtocolError(f"{over}, {article} {name}: only a Call or a Return past it fails "
                                f"alone")
        try:
            if which == rpcwire.MSG_RETURN and _return_kind(segs) == "exception":
                m = _unread_exception(segs, over)
            else:
                m = rpcwire.decode_pycapnp(segs)
        except Exception as e:
            # its header lies in the bytes kept (above): as within the limit, the
            # message is malformed (an unknown descriptor kind, an unknown Return
            # kind ...).  It said its header was not kept (r243).
            raise ProtocolError(f"malformed message: {_short(e)}") from None
        if m.which == rpcwire.MSG_CALL or m.kind == "results":
            if getattr(m, "over", None) is None:           # its table: as Plain.over has it
                m.caps = _refs_named(m.caps)
            m.over = over
            m.content_loc = None
        if m.which == rpcwire.MSG_CALL:
            self._on_call(segs, m, events)
        else:
            self._on_return(segs, m, events)

    def _overloaded(self) -> str | None:
        """Why the peer's next Call or Bootstrap is refused (`overloaded`), or None:
        it holds max_unfinished answers returned and not finished, or answers
        that keep more than max_kept_bytes.  A conforming peer may: Cap'n Proto's
        C++ RPC sends a Finish only once the response is let go of, and a pycapnp
        client that kept 4096 results (in a list, to read later) was cut off,
        every call and capability of its lost.  The refusal is an exception,
        which such a peer finishes at once; the refusals count too, and a peer
        that finishes not even those is cut off at twice max_unfinished."""
        unfinished = self._unfinished
        if self.native is not None:          # one count: the native path's answers too
            unfinished += self.native.unfinished()
        if unfinished < self.max_unfinished and self._kept <= self.max_kept_bytes:
            return None
        if unfinished >= 2 * self.max_unfinished:
            raise ProtocolError(
                f"{unfinished} answers were returned and never finished, refusals of "
                f"calls past max_unfinished = {self.max_unfinished} among them "
                f"(limit twice that): send Finish for them")
        if unfinished >= self.max_unfinished:
            return (f"{unfinished} answers were returned to {self.name} and not finished "
                    f"(limit max_unfinished = {self.max_unfinished}): no more calls until "
                    f"it finishes some (lets go of results it holds)")
        return (f"answers returned to {self.name} and not finished hold {self._kept} "
                f"bytes (limit max_kept_bytes = {self.max_kept_bytes}): no more calls "
                f"until it finishes some (lets go of results it holds)")

    def _new_answer(self, aid):
        """Open answer `aid` (its bounds are _overloaded's, asked first)."""
        if aid in self.answers:
            raise ProtocolError(f"question id {aid} is already in use")
        if self.native is not None and not self.native.open(aid):
            raise ProtocolError(f"question id {aid} is already in use")
        self._no_finish.pop(aid, None)
        self.answers[aid] = _Answer()
        self.unanswered += 1

    def _on_call(self, segs, m, events):
        if m.promise is None:
            e = self.exports.get(m.import_id)             # _export_obj, inline
            if e is None:
                raise ProtocolError(f"export id {m.import_id} was never issued or was released")
            target = e.obj
        else:
            target = self._promised(*m.promise)
        over = getattr(m, "over", None)
        overloaded = self._overloaded()
        if overloaded is not None and m.send_to in ("caller", "yourself"):
            # refused as a call past a per-message limit is (below), for its reason
            self._release_given(m.caps if over is not None else _refs_named(m.caps), events)
            self._new_answer(m.id)
            yourself = m.send_to == "yourself"
            if yourself:
                self.answers[m.id].elsewhere = True
            events.append(CallReceived(m.id, target, m.interface_id, m.method_id,
                                       Payload(EMPTY, ()), yourself, over,
                                       overloaded=overloaded))
            return
        if m.send_to != "caller" and m.send_to != "yourself":
            # results to a third party (level 3), or a member of a newer schema: not
            # this peer's to do, and the caller is told so for this call alone
            # (rpc.capnp asks a peer to answer what it does not implement, not to
            # abort); what the params gave is released as past a limit
            self._release_given(m.caps if over is not None else _refs_named(m.caps), events)
            self._new_answer(m.id)
            what = ("sendResultsTo.thirdParty (level 3: results sent to a third vat) is not "
                    "implemented: this peer implements level 1" if m.send_to == "thirdParty"
                    else "a Call.sendResultsTo that rpc.capnp does not define is not "
                         "implemented")
            events.append(CallReceived(m.id, target, m.interface_id, m.method_id,
                                       Payload(EMPTY, ()), over=over, unsupported=what))
            return
        if over is not None:
            # well-formed, past a per-message limit: this call fails, not the
            # connection (as a conforming peer, Cap'n Proto's C++ RPC among them,
            # which has no such limit, may send it); what it gave us is released
            self._release_given(m.caps, events)
            self._new_answer(m.id)
            yourself = m.send_to == "yourself"
            if yourself:
                self.answers[m.id].elsewhere = True
            events.append(CallReceived(m.id, target, m.interface_id, m.method_id,
                                       Payload(EMPTY, ()), yourself, over))
            return
        payload = self._payload(segs, m.caps, m.content_loc, getattr(m, "content_root", False))
        self._new_answer(m.id)
        if m.send_to == "yourself":
            self.answers[m.id].elsewhere = True
            events.append(CallReceived(m.id, target, m.interface_id, m.method_id, payload,
                                       True))
            return
        events.append(CallReceived(m.id, target, m.interface_id, m.method_id, payload))

    def _release_given(self, caps, events):
        """Release the references a message refused for a per-message limit gave us
        (`caps`: Plain.over's (refs, named), refs export ids), one Release per id,
        without their entering the import table.  What it names of ours (named:
        receiverHosted export ids, receiverAnswer question ids) is checked first,
        as within the limit: one we never issued is a protocol error there, and
        was let through here (an outside review of the limit)."""
        refs, named = caps
        for kind, value in named:
            if kind == rpcwire.CAP_RECEIVER_HOSTED:
                self._export_obj(value)
            else:
                self._promised(value, ())
        if refs:
            events.append(RefsReleased(rpcwire.encode_releases(refs), len(refs)))

    def _promised(self, qid, transform) -> PromisedAnswer:
        a = self.answers.get(qid)
        if a is None and self.native is not None:
            a = self._native_answer(qid)
        if a is None:
            raise ProtocolError(f"promisedAnswer names unknown question {qid}")
        return PromisedAnswer(qid, transform, a.result, a.error, a.error_type)

    def _export_obj(self, eid):
        e = self.exports.get(eid)
        if e is None:
            raise ProtocolError(f"export id {eid} was never issued or was released")
        return e.obj

    def _payload(self, segs, descs, content_loc, root=False, results=False) -> Payload:
        """A payload from its capability descriptors, (kind, value) pairs, and
        the location of its content pointer, which is checked here so that
        forwarding the content later cannot fail.  `root`: the pointer resolved
        already (by the native decoder, as wire.resolve does), or False."""
        if len(descs) > MAX_CAPS_PER_MESSAGE:
            raise ProtocolError(f"{len(descs)} capabilities in one message "
                                f"(limit {MAX_CAPS_PER_MESSAGE})")
        caps = []
        for which, value in descs:
            if which == CAP_SENDER_HOSTED or which == CAP_SENDER_PROMISE \
                    or which == CAP_THIRD_PARTY_HOSTED:
                # thirdPartyHosted (level 3): its vine, the sender's export that
                # forwards to the third party, which "level 1 and 2 implementations
                # ... may simply send calls to" (rpc.capnp), as Cap'n Proto's C++ RPC
                # does; it was a protocol error, and cut the sender off
                held = self.imports.get(value, 0)
                if results and not held:
                    self.answered.add(value)
                self.imports[value] = held + 1
                caps.append(Imported(value))
            elif which == CAP_RECEIVER_HOSTED:
                caps.append(Exported(self._export_obj(value)))
            elif which == CAP_RECEIVER_ANSWER:
                caps.append(self._promised(*value))
            elif which == CAP_NONE:
                caps.append(None)
            else:
                raise ProtocolError(f"capability descriptor #{which} is not supported "
                                    f"(none, senderHosted, senderPromise, receiverHosted, "
                                    f"receiverAnswer, and thirdPartyHosted by its vine)")
        if content_loc is None:
            return Payload(EMPTY, tuple(caps))
        if content_loc == (0, 0):
            raise ProtocolError("payload content aliases the message root")
        r = wire.resolve(segs, content_loc) if root is False else root
        if r is None:
            return Payload(EMPTY, tuple(caps))
        if r[0] == wire.OTHER and r[3] & 0xFFFFFFFC:
            raise ProtocolError("payload content is an 'other' pointer that is not a capability")
        return Payload(Content(tuple(segs), content_loc, root=r), tuple(caps))

    def _on_return(self, segs, m, events):
        qid = m.id
        q = self.questions.get(qid)
        if q is None and self.native is not None:
            self.native.claim(qid)          # a native call's return: Python's from now on
            q = self.questions.get(qid)
        if q is None or q.returned:
            raise ProtocolError(f"return for question {qid}, which is not awaiting one")
        q.returned = True
        if q.finished:
            self.overdue -= 1
        if m.release:
            for obj in q.param_exports:
                self._release_export_obj(obj, 1, events)
        q.param_exports = []
        finish = not m.no_finish
        kind = m.kind
        over = getattr(m, "over", None) if kind == "results" else None
        if over is not None:
            # well-formed results past a per-message limit: the question fails with
            # it, and what the results gave us is released
            if not finish and (m.caps[0] or m.caps[1]):
                raise ProtocolError("noFinishNeeded on a return that carries capabilities")
            self._release_given(m.caps, events)
            # (a message past the connection's limit may carry none, and need no
            # Finish: the owner must then send none, the question being gone)
            events.append(ReturnReceived(qid, None, f"results refused: {over}", "failed",
                                         finish_needed=finish))
        elif kind == "results":
            payload = self._payload(segs, m.caps, m.content_loc,
                                    getattr(m, "content_root", False), results=True)
            if not finish and payload.caps:
                raise ProtocolError("noFinishNeeded on a return that carries capabilities")
            events.append(ReturnReceived(qid, payload, finish_needed=finish))
        elif kind == "exception":
            # cut where it is read: the router copies a reason into every call and
            # promise that fails with it, and into the audit
            events.append(ReturnReceived(qid, None, bounded(m.reason, KEPT_REASON_LIMIT) or "(no reason)", m.type,
                                         finish_needed=finish))
        elif kind == "canceled":
            events.append(ReturnReceived(qid, None, "call canceled", "failed",
                                         finish_needed=finish))
        elif kind == "takeFromOtherQuestion":
            # A tail call: the results of its call m.take (sendResultsTo.yourself)
            # are this question's.  We always send Finish for it.
            a = self.answers.get(m.take)
            if a is None and self.native is not None:
                a = self._native_answer(m.take)
            if a is None or not a.elsewhere or a.taken:
                raise ProtocolError(f"takeFromOtherQuestion names question {m.take}, which "
                                    f"is not an open call with sendResultsTo.yourself, or "
                                    f"was taken already")
            a.taken = True
            finish = True
            events.append(ReturnTaken(qid, m.take))
        else:
            raise ProtocolError(f"return of kind '{kind}' is not supported")
        if not finish:
            q.finished = True
        if q.finished:
            self._drop_question(qid)

    def _finished(self, aid, release_results, events):
        a = self.answers.get(aid)
        if a is None and self.native is not None:
            # The native side first: an id it holds (a call in flight, an answer
            # returned and not finished, a Finish allowance) was used there after any
            # allowance of ours for it, which the reuse made stale (this side never
            # saw that call): it goes too.  Asked second, it let a Finish spend the
            # stale allowance, and then another one the lane's (two for one answer).
            if self.native.finish_ok(aid):
                self._no_finish.pop(aid, None)
                return                       # allowed, for an answer returned natively
            a = self._native_answer(aid)
            if a is not None:
                self._no_finish.pop(aid, None)
        if a is None and aid in self._no_finish:
            del self._no_finish[aid]         # allowed, and ignored (rpc.capnp)
            return
        if a is None or a.finished:
            raise ProtocolError(f"finish for question {aid}, which is not open")
        a.finished = True
        if not a.returned:
            a.discard = release_results
        if release_results:
            for obj in a.result_exports:
                self._release_export_obj(obj, 1, events)
        a.result_exports = ()
        if a.returned:
            del self.answers[aid]
            self._unfinished -= 1
            self._kept -= a.kept
            if self.native is not None:
                self.native.close(aid)
        events.append(FinishReceived(aid))

    def _on_release(self, eid, count, events):
        e = self.exports.get(eid)
        if e is None:
            raise ProtocolError(f"release of export id {eid}, which was never issued or was released")
        if count > e.refcount:
            raise ProtocolError(f"release of {count} references to export {eid}, "
                                f"which has only {e.refcount}")
        self._release_export_obj(e.obj, count, events)

    def _release_export_obj(self, obj, count, events):
        eid = self._export_ids.get(id(obj))
        if eid is None:
            return
        e = self.exports[eid]
        e.refcount -= count
        if e.refcount <= 0:
            del self.exports[eid]
            del self._export_ids[id(obj)]
            self._eids.give(eid)
            events.append(ExportReleased(obj))

    # -------------------------------------------------------------- outgoing

    def send_bootstrap(self) -> tuple[int, bytes]:
        qid = self._new_question([])
        msg = rpc.Message.new_message()
        msg.init("bootstrap").questionId = qid
        return qid, wire.frame(msg.to_segments())

    def send_call(self, target, interface_id: int, method_id: int,
                  content: Content = EMPTY, caps=()) -> tuple[int, bytes]:
        """Call `target`: an import id (int) or a (question_id, transform) promise."""
        exported: list = []
        qid = self._new_question(exported)
        if isinstance(target, int):
            if target not in self.imports:
                self._drop_question(qid)
                raise KeyError(f"import id {target} is not held")
            if not any(isinstance(c, ReceiverAnswer) for c in caps):
                head, at = rpcwire.encode_call(qid, target, interface_id, method_id,
                                               self._cap_descs(caps, exported))
                return qid, self._splice(head, at, content)
        msg = rpc.Message.new_message()     # pipelined, or passing a promise: pycapnp
        call = msg.init("call")
        call.questionId = qid
        if isinstance(target, int):
            call.target.importedCap = target
        else:
            pq, transform = target
            pa = call.target.init("promisedAnswer")
            pa.questionId = pq
            _set_transform(pa, transform)
        call.interfaceId = interface_id
        call.methodId = method_id
        call.sendResultsTo.caller = None
        self._encode_caps(call.init("params"), caps, exported)
        return qid, self._with_content(msg, (_MSG_BODY, _CALL_PARAMS), content)

    def send_return(self, answer_id: int, content: Content = EMPTY, caps=(),
                    no_finish: bool = False) -> bytes:
        """Return results.  `no_finish`: the peer never pipelines on this answer, so
        when there are no capabilities in it, tell it not to send Finish and forget
        the answer now (one message less per call)."""
        a = self._answer_for_return(answer_id)
        no_finish = no_finish and not caps
        if no_finish:
            self._finish_not_needed(answer_id, a)
        if caps:
            a.result_exports = []
        head, at = rpcwire.encode_return(answer_id, no_finish,
                                         self._cap_descs(caps, a.result_exports) if caps else ())
        # kept for calls pipelined on it, which need it only to find a capability
        a.result = (content, tuple(caps)) if caps else _NO_RESULT
        if caps and not no_finish:
            a.kept = content.size()
        data = self._splice(head, at, content)
        self._answer_done(answer_id, a)
        if not caps and not a.finished and self.native is not None \
                and self.native.returned(answer_id):
            # The native path keeps it until the peer's Finish, which it can then take
            # without Python; if Python meets the id again (that Finish behind a
            # message Python handles, a pipelined call), _native_answer takes it back
            # exactly as it is here: returned, no capabilities, nothing kept.
            del self.answers[answer_id]
            self._unfinished -= 1
        return data

    def send_elsewhere(self, answer_id: int, kept: int = 0) -> bytes:
        """Return resultsSentElsewhere for a call made with sendResultsTo.yourself
        (its outcome goes to the question the peer answers with
        takeFromOtherQuestion, which the owner delivers).  Calls pipelined on it
        find no results.  `kept`: bytes the owner holds for it until the peer's
        Finish (counted against max_kept_bytes)."""
        a = self._answer_for_return(answer_id)
        a.error = "its results were sent elsewhere (sendResultsTo.yourself)"
        a.kept = kept
        msg = rpc.Message.new_message()
        ret = msg.init("return")
        ret.answerId = answer_id
        ret.releaseParamCaps = False
        ret.resultsSentElsewhere = None
        self._answer_done(answer_id, a)
        return wire.frame(msg.to_segments())

    def sends_elsewhere(self, answer_id: int) -> bool:
        """Whether `answer_id` was asked with sendResultsTo.yourself (a tail call)."""
        a = self.answers.get(answer_id)
        return a is not None and a.elsewhere

    def send_exception(self, answer_id: int, reason: str, type: str = "failed",
                       no_finish: bool = False) -> bytes:
        """Return an exception; its reason is cut at text.REASON_LIMIT characters."""
        reason = bounded(reason)
        a = self._answer_for_return(answer_id)
        msg = rpc.Message.new_message()
        ret = msg.init("return")
        ret.answerId = answer_id
        ret.releaseParamCaps = False
        if no_finish:
            ret.noFinishNeeded = True
            self._finish_not_needed(answer_id, a)
        e = ret.init("exception")
        e.reason = reason
        e.type = type
        a.error = reason
        a.error_type = type
        self._answer_done(answer_id, a)
        return wire.frame(msg.to_segments())

    def send_canceled(self, answer_id: int) -> bytes:
        """Return 'canceled': the peer sent Finish before we returned, and the call
        was not carried out (rpc.capnp's cancellation)."""
        a = self._answer_for_return(answer_id)
        msg = rpc.Message.new_message()
        ret = msg.init("return")
        ret.answerId = answer_id
        ret.releaseParamCaps = False
        ret.canceled = None
        a.error = "call canceled"
        self._answer_done(answer_id, a)
        return wire.frame(msg.to_segments())

    def send_finish(self, question_id: int) -> bytes:
        q = self.questions.get(question_id)
        if q is None or q.finished:
            raise KeyError(f"question {question_id} is not open")
        q.finished = True
        if q.returned:
            self._drop_question(question_id)
        else:
            self.overdue += 1
        return rpcwire.encode_finish(question_id)

    def send_disembargo(self, import_id: int, embargo_id: int) -> bytes:
        """The reflection of the peer's Disembargo (senderLoopback): its embargo
        `embargo_id`, on its own object `import_id` the promise resolved to."""
        msg = rpc.Message.new_message()
        d = msg.init("disembargo")
        d.target.importedCap = import_id
        d.context.receiverLoopback = embargo_id
        return wire.frame(msg.to_segments())

    def send_release(self, import_id: int, count: int | None = None) -> bytes:
        """Drop `count` of the references we hold to `import_id` (None: every one)."""
        held = self.imports[import_id]
        if count is None or count >= held:
            count = self.imports.pop(import_id)
            self.answered.discard(import_id)
        else:
            self.imports[import_id] = held - count
        if self.native is not None:
            self.native_check()
        msg = rpc.Message.new_message()
        rel = msg.init("release")
        rel.id = import_id
        rel.referenceCount = count
        return wire.frame(msg.to_segments())

    def send_abort(self, reason: str, type: str = "failed") -> bytes:
        """Abort the connection; the reason is cut at text.REASON_LIMIT characters."""
        reason = bounded(reason)
        self.closed = reason
        msg = rpc.Message.new_message()
        e = msg.init("abort")
        e.reason = reason
        e.type = type
        return wire.frame(msg.to_segments())

    def _native_answer(self, aid: int):
        """An answer id the native path holds (a call in flight, or returned and not
        finished): this side's from now on, so that a Finish or a pipelined call
        on it is handled here.  None: no such answer anywhere."""
        if self.native.claim_answer(aid) == "returned":
            a = self.answers[aid] = _Answer()
            a.returned, a.result = True, _NO_RESULT
            self._unfinished += 1
            return a
        return self.answers.get(aid)

    def adopt_answer(self, aid: int):
        """A call from the peer that the native path accepted becomes ours (its id
        stays open on the native side's books, now as ours)."""
        self.answers[aid] = _Answer()
        self.unanswered += 1

    def adopt_question(self, qid: int):
        """A call a native path sent the peer becomes ours, as if send_call had sent
        it: the supervisor's lane's (supervisor/fastlane.py), or an engine's call out
        (compartments/_fastcall.c, native_call_out).  Its id is NATIVE_QID_BASE or
        above, never the allocator's (_drop_question)."""
        self.questions[qid] = _Question([])

    def native_check(self):
        """Tell the native path whether the peer is within the limits this side
        enforces on new calls (kept bytes, capabilities it passed us)."""
        n = self.native
        if n is not None:
            n.limits_ok(self._kept <= self.max_kept_bytes and self.own_imports <= n.imports_limit)

    @property
    def own_imports(self) -> int:
        """How many of the capabilities the peer hosts that we hold are its own doing:
        all of `imports` but those it handed out in the results of a Return
        (`answered`), which are held for whoever asked for them and count to that
        one's c-list.  Counted against the peer's own bound, an object factory whose
        callers kept what it handed them (each within its own `handles`) had its own
        calls refused: two clients keeping 700 Counters each had every call calc
        made refused, an honest caller's callbacks with them."""
        return len(self.imports) - len(self.answered)

    def discards_results(self, answer_id: int) -> bool:
        """The peer gave up `answer_id`: it sent Finish before our return, with
        releaseResultCaps (as Cap'n Proto's C++ RPC does for a call it cancels or
        drops), so it will not import the capabilities a return would carry, nor
        ever release them: return `canceled` (send_canceled) instead."""
        return self.gave_up(answer_id) and self.answers[answer_id].discard

    def awaiting_return(self, answer_id: int) -> bool:
        a = self.answers.get(answer_id)
        return a is not None and not a.returned

    def question_returned(self, question_id: int) -> bool:
        """Our question `question_id` is open and the peer returned it (it waits for
        our Finish only: a Return with takeFromOtherQuestion whose outcome has not
        come yet)."""
        q = self.questions.get(question_id)
        return q is not None and q.returned

    def gave_up(self, answer_id: int) -> bool:
        """The peer sent Finish for `answer_id` before our return: it cancelled the
        call (rpc.capnp), and still expects a Return."""
        a = self.answers.get(answer_id)
        # a tail call whose results a question of ours took: the peer's Finish gives
        # up only its own view of the call (C++ sends it at once), not the results
        return a is not None and a.finished and not a.returned and not a.taken

    def export_id(self, obj) -> int | None:
        return self._export_ids.get(id(obj))

    def drop_all(self) -> list:
        """Forget every table entry (the connection is gone); returns exported objects
        (one for each entry, and those a message that failed released: _unheard)."""
        objs = [e.obj for e in self.exports.values()] + self._released_unheard
        self._released_unheard = []
        self.unanswered = 0
        self.overdue = 0
        self._unfinished = 0
        self._kept = 0
        self._no_finish.clear()
        self.questions.clear()
        self.answers.clear()
        self.exports.clear()
        self.imports.clear()
        self.answered.clear()
        self._export_ids.clear()
        return objs

    # -------------------------------------------------------------- helpers

    def _new_question(self, exported) -> int:
        qid = self._qids.take()
        self.questions[qid] = _Question(exported)
        return qid

    def _drop_question(self, qid):
        if self.questions.pop(qid, None) is not None:
            if self.native is not None and qid >= NATIVE_QID_BASE:
                self.native.dropped(qid)     # a native call Python took over
            elif qid < NATIVE_QID_BASE:      # an adopted one was never the allocator's
                self._qids.give(qid)

    def _answer_for_return(self, aid) -> _Answer:
        a = self.answers.get(aid)
        if a is None or a.returned:
            raise KeyError(f"question {aid} is not awaiting our return")
        a.returned = True
        self.unanswered -= 1
        return a

    def _answer_done(self, aid, a):
        if a.finished:
            del self.answers[aid]
            if self.native is not None:
                self.native.close(aid)
        else:
            self._unfinished += 1
            self._kept += a.kept
            if self.native is not None:
                self.native_check()

    def _finish_not_needed(self, aid, a):
        a.finished = True
        if self.native is not None and self.native.allow_finish(aid):
            # the native side's books, with its own: kept here too, the peer had
            # max_unfinished allowances on each side, twice the bound
            self._no_finish.pop(aid, None)
            return
        self._no_finish[aid] = None
        if len(self._no_finish) > self.max_unfinished:
            del self._no_finish[next(iter(self._no_finish))]

    def _export(self, obj) -> int:
        eid = self._export_ids.get(id(obj))
        if eid is None:
            eid = self._eids.take()
            self._export_ids[id(obj)] = eid
            self.exports[eid] = _Export(obj, 0)
        self.exports[eid].refcount += 1
        return eid

    def _cap_descs(self, caps, exported: list) -> list:
        """(kind, id) descriptors for capabilities we send, exporting ours."""
        if len(caps) > MAX_CAPS_PER_MESSAGE:
            raise ValueError(f"{len(caps)} capabilities in one message "
                             f"(limit {MAX_CAPS_PER_MESSAGE})")
        descs = []
        for cap in caps:
            if cap is None:
                descs.append((CAP_NONE, 0))
            elif isinstance(cap, RemoteRef):
                descs.append((CAP_RECEIVER_HOSTED, cap.import_id))
            elif isinstance(cap, ReceiverAnswer):
                descs.append((CAP_RECEIVER_ANSWER, cap))
            else:
                descs.append((CAP_SENDER_HOSTED, self._export(cap)))
                exported.append(cap)
        return descs

    def _encode_caps(self, payload, caps, exported: list):
        """The cap table of a header built with pycapnp (a pipelined call)."""
        descs = self._cap_descs(caps, exported)
        table = payload.init("capTable", len(descs))
        for i, (kind, ident) in enumerate(descs):
            if kind == CAP_NONE:
                table[i].none = None
            elif kind == CAP_RECEIVER_HOSTED:
                table[i].receiverHosted = ident
            elif kind == CAP_RECEIVER_ANSWER:
                ra = table[i].init("receiverAnswer")
                ra.questionId = ident.question_id
                _set_transform(ra, ident.transform)
            else:
                table[i].senderHosted = ident

    @classmethod
    def _with_content(cls, msg, path, content: Content) -> bytes:
        head = msg.to_segments()
        if len(head) != 1:
            raise ValueError("message header does not fit one segment")
        head = bytearray(head[0])
        loc = wire.struct_pointer_field([head], wire.follow_path([head], (0, 0), path),
                                        _PAYLOAD_CONTENT)
        return cls._splice(head, loc[1], content)

    @staticmethod
    def _splice(head: bytearray, at: int, content: Content) -> bytes:
        """Frame header segment `head` (its root pointer at word 0, its Message
        right after), whose word `at` is the content pointer.

        The content's segments travel unchanged but for one word: the sender's
        root pointer (segment 0, word 0), which now points at the new header.
        Every other word keeps its segment and position, so content that was
        well-formed means exactly what it meant: its near and far pointers
        reach the same words.  Only content that was not well-formed may read
        otherwise: one that reaches the sender's root word sees the new root
        there, and content whose objects ran past the end of its (last)
        segment may now reach the header that follows it, i.e. this message's
        own header, which the recipient reads anyway.  The message has as many
        segments as the content.  The content pointer itself never goes
        through a word the sender chose."""
        if not content.segments:
            wire.set_word(head, at, content.word)
            return wire.frame([head])
        if len(content.segments) == 1:
            # One segment (what engines send, and most peers): the header follows
            # the content in the same segment.  No far pointers for anyone.
            seg = content.segments[0]
            if wire._native is not None and content.loc[0] == 0:
                spliced = wire._native.splice(head, at, seg, content.loc[1])
                if spliced is not None:      # the same bytes as below
                    return spliced
            r = wire.resolve([seg], content.loc)
            if r is None or r[0] == wire.OTHER:            # null, or a capability
                wire.set_word(head, at, 0 if r is None else r[3])
                return wire.frame([head])
            _kind, _s, start, w = r
            n = len(seg) // 8
            wire.set_word(head, at, wire.near_pointer(n + at, start, w))
            out = bytearray(seg)
            out += head
            root = wire._U64.unpack_from(head, 0)[0]
            wire.set_word(out, 0, wire.near_pointer(0, n + 1 + wire._signed30(root), root))
            return wire.frame([out])
        # Append the header to the end of the last segment (as after one-segment
        # content above); the old root is replaced by a far pointer to it.  Never
        # as a segment of its own: content of as many segments as a message may
        # have (wire.MAX_SEGMENTS, what the peer's framing just took) was sent on
        # as one segment more, which the recipient's framing refuses, and a
        # forwarded call or answer cut the recipient off (an engine: its whole
        # compartment) for one peer's message.  The content pointer reaches the
        # content's object through a double-far landing pad in the header, never
        # through the content's own pointer words: one of those may be the old
        # root word, which a hostile sender can make the content's landing pad.
        segs = list(content.segments)
        last = len(segs) - 1
        base = len(segs[last]) // 8                     # the header's first word there
        r = wire.resolve(segs, content.loc)
        if r is None or r[0] == wire.OTHER:                # null, or a capability
            pointer = 0 if r is None else r[3]
        else:
            _kind, s, start, w = r
            pad = base + len(head) // 8
            head += wire.far_pointer(s, start).to_bytes(8, "little")
            head += (w & ~0xFFFFFFFC).to_bytes(8, "little")   # the tag: offset 0
            pointer = wire.far_pointer(last, pad, double=True)
        wire.set_word(head, at, pointer)
        first = bytearray(segs[0])
        wire.set_word(first, 0, wire.far_pointer(last, base))
        segs[0] = first
        return wire.frame(segs, tail=head)


#: what an 'unimplemented' echo adds to the message it copies (its own root
#: pointer and Message struct; the frame's segment table may differ), in bytes,
#: and what reading a message for a copy counts beyond its words
_ECHO_OVERHEAD = 64


def _unimplemented_reply(segs) -> bytes:
    """The 'unimplemented' echo of a message we do not handle, never larger than
    the message: the copy reads at most the message's own words (and 8 more).  A message
    whose pointers alias (two pointers to one struct, at each level) reads, and
    copies, as every path through it: 240 bytes were echoed as 262 KB, which a
    peer that does not read left waiting for it by the megabyte."""
    data = wire.frame(segs)
    words = sum(len(s) for s in segs) // 8
    msg = rpc.Message.new_message()
    try:
        with rpc.Message.from_bytes(data,
                                    traversal_limit_in_words=min(words + _ECHO_OVERHEAD // 8,
                                                                 TRAVERSAL_LIMIT_WORDS),
                                    nesting_limit=NESTING_LIMIT) as original:
            msg.unimplemented = original
    except capnp.KjException as e:
        if words + _ECHO_OVERHEAD // 8 < TRAVERSAL_LIMIT_WORDS \
                and "traversal limit" in kj_text(e):
            raise _echo_too_large(len(data)) from None
        raise
    reply = wire.frame(msg.to_segments())
    if len(reply) > len(data) + _ECHO_OVERHEAD:
        raise _echo_too_large(len(data))
    return reply


def _resolve_reply(segs) -> bytes:
    """The 'unimplemented' echo of a Resolve: its promise id and its capability
    copied, or its exception with the reason cut (text.REASON_LIMIT), read by
    hand.  A conforming peer sends Resolve for every promise it exported that
    settles, with what was thrown, whatever its length; the whole echo of one
    whose reason passed the header's traversal limit (512 KiB) could not be built,
    and the peer was cut off for it.  The peer reads of the echo only which
    Resolve it was and, for a capability, the reference to release (Cap'n
    Proto's C++ RPC, handleUnimplemented): the reason it wrote need not come back
    whole.  A capability is copied as any echo is (_unimplemented_reply)."""
    msg = rpc.Message.from_segments(segs, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS,
                                    nesting_limit=NESTING_LIMIT)
    res = msg.resolve
    if rpcwire._which(res, "Resolve") != "exception":
        return _unimplemented_reply(segs)
    reason, type = rpcwire._exception(res.exception, segs, (0, 0))
    out = rpc.Message.new_message()
    echo = out.init("unimplemented").init("resolve")
    echo.promiseId = res.promiseId
    e = echo.init("exception")
    e.reason = bounded(reason)
    e.type = type
    return wire.frame(out.to_segments())


def _echoed(segs) -> str:
    """What an 'unimplemented' message says it echoes: 'a Call', 'a message #N'."""
    try:
        loc = wire.struct_pointer_field(segs, (0, 0), 0)
        r = wire.resolve(segs, loc) if loc is not None else None
        which = _U16.unpack_from(segs[r[1]], 8 * r[2])[0] \
            if r is not None and r[0] == wire.STRUCT and (r[3] >> 32) & 0xFFFF else 0
    except (wire.WireError, IndexError):
        return "a message it did not say"
    name = rpcwire.MESSAGE_NAMES.get(which)
    if name is None:
        return f"a message #{which}"
    name = name[:1].upper() + name[1:]
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


_U16 = struct.Struct("<H")


def _echo_too_large(size: int) -> ProtocolError:
    return ProtocolError(f"its 'unimplemented' echo would be larger than the message it "
                         f"echoes ({size} bytes): the message reads larger than it is "
                         f"(pointers to the same object)")


def _return_kind(segs) -> str:
    """Which Return a message's head holds (pycapnp's reading, within the limits)."""
    msg = rpc.Message.from_segments(segs, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS,
                                    nesting_limit=NESTING_LIMIT)
    return rpcwire._which(msg.__getattr__("return"), "Return")


def _unread_exception(segs, over: str):
    """The Plain of a Return of an exception in a message past the connection's
    limit: its reason is not read (it is what made the message so large, most
    likely, and lies past the head); the question fails naming the limit."""
    msg = rpc.Message.from_segments(segs, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS,
                                    nesting_limit=NESTING_LIMIT)
    ret = msg.__getattr__("return")
    m = rpcwire.Plain()
    m.which, m.kind = rpcwire.MSG_RETURN, "exception"
    m.id, m.release, m.no_finish = ret.answerId, ret.releaseParamCaps, ret.noFinishNeeded
    m.reason, m.type = f"an exception not read: {over}", "failed"
    return m


def _refs_named(caps) -> tuple:
    """A decoded cap table (Plain.caps) as Plain.over has one: (the references it
    gives, what it names of the receiver's)."""
    refs = [v for k, v in caps
            if k == CAP_SENDER_HOSTED or k == CAP_SENDER_PROMISE or k == CAP_THIRD_PARTY_HOSTED]
    named = [(k, v if k == CAP_RECEIVER_HOSTED else v[0]) for k, v in caps
             if k == CAP_RECEIVER_HOSTED or k == CAP_RECEIVER_ANSWER]
    return refs, named


def _set_transform(pa, transform):
    ops = pa.init("transform", len(transform))
    for i, f in enumerate(transform):
        ops[i].getPointerField = f


def _short(e) -> str:
    """One line naming what went wrong (with the exception's class, when it is not
    one of the decoders' own errors)."""
    if isinstance(e, capnp.KjException):
        return first_line(kj_text(e), 200)
    if isinstance(e, wire.WireError):
        return first_line(e, 200)
    return f"{type(e).__name__}: {first_line(e, 200)}" if str(e).strip() \
        else type(e).__name__
