"""A few thousand inputs of the wire/protocol fuzz harness (fuzz/protocol.py),
and proof that each of its checks fails when the property it checks breaks."""
import os

import pytest

from capnp_schemas import protocol as P, rpcwire, wire
from fuzz import protocol as F

#: Inputs of the run below (fewer in its ASan/UBSan rerun, ~3x slower an input)
COUNT = int(os.environ.get("WSUPER_TEST_FUZZ_COUNT", 5_000))


def test_a_few_thousand_mutated_messages_break_nothing():
    done, failures = F.run(COUNT, seed=20261203)
    assert done == COUNT
    assert failures == {}, "\n".join(f"{k}: {v[0][:2]}" for k, v in failures.items())


def test_the_seeds_cover_every_message_kind_and_both_decoders():
    kinds, fast = set(), 0
    for seed in F._setup()["messages"]:
        plain = rpcwire.decode(seed.segs)
        fast += plain is not None
        kinds.add(rpcwire.decode_pycapnp(seed.segs).which)
    names = {rpcwire.MESSAGE_NAMES.get(k, k) for k in kinds}
    assert {"bootstrap", "call", "return", "finish", "release", "disembargo", "resolve",
            "abort", "unimplemented", 99} <= names
    assert fast >= 10
    assert len(F._setup()["contents"]) >= 16


def test_the_tiny_segment_seeds_are_spread_over_segments_with_far_pointers():
    """The seeds built in 1-to-3-word segments are many segments each, reached
    through far and double-far pointers (pycapnp gave them one segment of 1,024
    words, and the fuzzer never made a far pointer but by mutation)."""
    import struct
    multi, far, double = 0, 0, 0
    for seed in F._setup()["all"]:
        multi += len(seed.segs) > 1
        for s, p in seed.ptrs:
            if s < len(seed.segs) and 8 * p + 8 <= len(seed.segs[s]):
                w = struct.unpack_from("<Q", seed.segs[s], 8 * p)[0]
                if w & 3 == wire.FAR:
                    far += 1
                    double += (w >> 2) & 1
    assert multi >= 40
    assert far >= 200 and double >= 20, (far, double)
    # and content, calls and returns of as many segments as a message may have
    assert sum(len(seed.segs) == wire.MAX_SEGMENTS for seed in F._setup()["all"]) >= 3


def _first_failure(monkeypatch, count=400):
    _done, failures = F.run(count, seed=5)
    assert not any(k.startswith("harness") for k in failures), failures
    return failures


def test_an_exception_escaping_receive_is_caught(monkeypatch):
    real = P.Connection.receive

    def leaky(self, data):
        if len(data) % 7 == 0:
            raise KeyError("escaped")
        return real(self, data)
    monkeypatch.setattr(P.Connection, "receive", leaky)
    failures = _first_failure(monkeypatch)
    assert any(k.startswith("protocol: KeyError escaped") for k in failures)


def test_a_fast_decoder_that_reads_a_field_wrong_is_caught(monkeypatch):
    real = rpcwire.decode

    def wrong(segs):
        p = real(segs)
        if p is not None and hasattr(p, "method_id"):
            p.method_id ^= 1
        return p
    monkeypatch.setattr(rpcwire, "decode", wrong)
    failures = _first_failure(monkeypatch)
    assert any("rpcwire.decode and pycapnp disagree" in k for k in failures)


def test_a_copier_that_drops_a_word_is_caught(monkeypatch):
    real = wire.single_segment_copy

    def lossy(segs, loc, max_words=wire.MAX_MESSAGE_WORDS):
        out = bytearray(real(segs, loc, max_words))
        if len(out) > 24:
            out[-1] ^= 0x40                      # one bit of the last word
        return bytes(out)
    monkeypatch.setattr(wire, "single_segment_copy", lossy)
    failures = _first_failure(monkeypatch)
    assert any(k.startswith("copier:") for k in failures)


def test_content_that_cannot_be_forwarded_is_caught(monkeypatch):
    def refuse(segs, loc):
        raise wire.WireError("cannot re-root")
    monkeypatch.setattr(wire, "with_root_at", refuse)
    failures = _first_failure(monkeypatch)
    assert any(k.startswith("forward:") for k in failures)



def test_an_echo_larger_than_its_message_is_caught(monkeypatch):
    def as_it_reads(segs):                       # the echo before it was bounded
        msg = P.rpc.Message.new_message()
        with P.rpc.Message.from_bytes(wire.frame(segs),
                                      traversal_limit_in_words=rpcwire.TRAVERSAL_LIMIT_WORDS,
                                      nesting_limit=rpcwire.NESTING_LIMIT) as original:
            msg.unimplemented = original
        return wire.frame(msg.to_segments())
    monkeypatch.setattr(P, "_unimplemented_reply", as_it_reads)
    failures = _first_failure(monkeypatch, 1200)
    assert any("the unimplemented echo (N bytes) is larger" in k for k in failures)

def _later_ids_unchecked(real):
    """Connection.plain_calls as if it checked only the first call of a read for an
    id in use (the others opened without _new_answer's checks, 4a05a58): a later
    call reusing an open answer's id takes that answer over."""
    def plain_calls(self, data, kind):
        got = wire._native.plain_calls(data, self._framer.max_words) or []
        later = {t[0] for t in got[1:]} - {got[0][0]} if got else set()
        hidden = {aid: self.answers.pop(aid) for aid in list(self.answers) if aid in later}
        calls = real(self, data, kind)
        if calls is None:
            self.answers.update(hidden)
        return calls
    return plain_calls


def _limits_unchecked(real):
    """Connection.plain_calls as if it opened answers past max_unfinished and
    max_kept_bytes."""
    def plain_calls(self, data, kind):
        limits = self.max_unfinished, self.max_kept_bytes
        self.max_unfinished = self.max_kept_bytes = 1 << 62
        try:
            return real(self, data, kind)
        finally:
            self.max_unfinished, self.max_kept_bytes = limits
    return plain_calls


def _segments_a_word_long(real):
    """Connection.plain_calls as if it gave each call's content its segment and the
    word after it: the next message's first word, another call's bytes."""
    def plain_calls(self, data, kind):
        calls = real(self, data, kind)
        if calls is None:
            return None
        bounds = wire._native.plain_calls(data, self._framer.max_words)
        return [c[:4] + (P.Content((memoryview(data)[t[6]:t[7] + 8],), c[4].loc)
                         if c[4].segments else c[4],) for c, t in zip(calls, bounds)]
    return plain_calls


@pytest.mark.parametrize("broken", [_later_ids_unchecked, _limits_unchecked,
                                    _segments_a_word_long])
def test_a_plain_reading_that_differs_from_receive_is_caught(monkeypatch, broken):
    """The plain check finds a reading of plain calls that lets a later call of a
    read reuse the id of an answer still open, opens answers past the limits, or
    gives a call's guest bytes of the message after it.  It found none of them in
    3,000 inputs (seed 7) while it read only the input itself as calls: every
    Call seed passes capabilities, so plain_calls accepted 3 inputs of those
    3,000; it reads the input as a plain call's params too (_as_params), as a
    hostile caller's params reach the engine that serves them."""
    if getattr(wire._native, "plain_calls", None) is None:
        pytest.skip("the native reading of plain calls is not built")
    monkeypatch.setattr(P.Connection, "plain_calls", broken(P.Connection.plain_calls))
    failures = _first_failure(monkeypatch)
    assert any(k.startswith("plain:") for k in failures), failures


@pytest.mark.parametrize("i", [0, 1, 2])
def test_inputs_are_reproducible(i):
    assert F.one(3, i) == F.one(3, i)


def test_fastwire_under_asan_and_ubsan(tmp_path):
    """_fastwire.c built with AddressSanitizer and UBSan (any error ends the process),
    once for both of its native readers: the run above, on its first 3,000 inputs
    (Connection.plain_calls on every input, on it twice over and between a peer's
    plain calls: plain_calls, which frames and decodes a whole read, never reads
    outside it, whatever the segment tables say), and test_payloads_flat's tests of
    the flat reader (built, mutated and hand-made messages: it never reads outside
    a segment, whatever the pointers say)."""
    from tests import sanitized
    if getattr(wire._native, "plain_calls", None) is None \
            or getattr(wire._native, "read_flat", None) is None:
        pytest.skip("the native readers are not built")
    sanitized.rerun(tmp_path, "capnp_schemas/_fastwire.c",
                    ("tests/unit/test_fuzz_protocol.py", "tests/unit/test_payloads_flat.py"),
                    select="a_few_thousand or (native and not asan)", timeout=600,
                    env={"WSUPER_TEST_FUZZ_COUNT": "3000"})
