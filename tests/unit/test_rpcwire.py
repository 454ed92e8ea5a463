"""The hand-written RPC header codec against pycapnp's reading and writing of rpc.capnp."""
import pytest
from hypothesis import given, settings, strategies as st

from capnp_schemas import rpc, rpcwire, wire

ids = st.integers(0, (1 << 32) - 1)
caps = st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), ids), max_size=5)


def _read(head: bytes):
    return rpc.Message.from_segments([bytes(head)])


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF), caps)
def test_a_call_we_encode_is_the_call_pycapnp_reads(qid, imp, iface, method, descs):
    head, at = rpcwire.encode_call(qid, imp, iface, method, descs)
    call = _read(head).call
    assert (call.questionId, call.target.importedCap, call.interfaceId, call.methodId) == \
        (qid, imp, iface, method)
    assert call.sendResultsTo.which() == "caller" and not call.allowThirdPartyTailCall
    names = {0: "none", 1: "senderHosted", 2: "senderPromise", 3: "receiverHosted"}
    got = [(d.which(), getattr(d, d.which()) if d.which() != "none" else 0)
           for d in call.params.capTable]
    assert got == [(names[k], v if k else 0) for k, v in descs]
    assert wire.struct_pointer_field([head], wire.follow_path([head], (0, 0), (0, 1)), 0) \
        == (0, at)
    back = rpcwire.decode([bytes(head)])
    assert (back.id, back.import_id, back.interface_id, back.method_id) == \
        (qid, imp, iface, method)
    assert list(back.caps) == [(k, v if k else 0) for k, v in descs]


@settings(max_examples=100, deadline=None)
@given(ids, st.booleans(), caps)
def test_a_return_we_encode_is_the_return_pycapnp_reads(aid, no_finish, descs):
    head, _at = rpcwire.encode_return(aid, no_finish, descs)
    ret = _read(head).__getattr__("return")
    assert (ret.answerId, ret.releaseParamCaps, ret.noFinishNeeded, ret.which()) == \
        (aid, False, no_finish, "results")
    assert len(ret.results.capTable) == len(descs)
    back = rpcwire.decode([bytes(head)])
    assert (back.id, back.no_finish, back.kind, len(back.caps)) == \
        (aid, no_finish, "results", len(descs))


@given(ids)
def test_finish(qid):
    data = rpcwire.encode_finish(qid)
    fin = rpc.Message.from_segments(wire.unframe(data)).finish
    assert (fin.questionId, fin.releaseResultCaps) == (qid, False)


@settings(max_examples=100, deadline=None)
@given(ids, st.text(max_size=50), st.sampled_from(rpcwire.EXCEPTION_TYPES), st.booleans())
def test_pycapnp_encoded_headers_decode_the_same(aid, reason, type, release):
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    ret.answerId = aid
    ret.releaseParamCaps = False
    e = ret.init("exception")
    e.reason, e.type = reason, type
    back = rpcwire.decode(msg.to_segments())
    assert (back.kind, back.id, back.reason, back.type) == ("exception", aid, reason, type)
    fin = rpc.Message.new_message()
    fin.init("finish").questionId = aid
    fin.finish.releaseResultCaps = release
    back = rpcwire.decode(fin.to_segments())
    assert (back.which, back.id, back.release) == (rpcwire.MSG_FINISH, aid, release)


def test_what_the_fast_path_does_not_handle_falls_back():
    msg = rpc.Message.new_message()
    call = msg.init("call")
    call.target.init("promisedAnswer").questionId = 3           # pipelined: pycapnp's
    assert rpcwire.decode(msg.to_segments()) is None
    msg = rpc.Message.new_message()
    msg.init("bootstrap").questionId = 1
    assert rpcwire.decode(msg.to_segments()) is None
    msg = rpc.Message.new_message()
    msg.init("return").answerId = 1
    msg.__getattr__("return").canceled = None                   # canceled: pycapnp's
    assert rpcwire.decode(msg.to_segments()) is None
    assert rpcwire.decode([b"\xff" * 16]) is None               # garbage: pycapnp says why


def _fields(plain):
    return plain.fields()


@settings(max_examples=100, deadline=None)
@given(ids, st.booleans(), st.booleans(), st.binary(max_size=40),
       st.sampled_from([0, 1, 2, 3, 4, 5, 0x7FFF, 0xFFFF]))
def test_both_decoders_read_an_exception_the_same_lenient_way(aid, release, no_finish, reason,
                                                              type_value):
    """Reasons that are not UTF-8 read with replacement characters, and an
    exception type rpc.capnp does not define reads as 'failed', in both."""
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    ret.answerId, ret.releaseParamCaps, ret.noFinishNeeded = aid, release, no_finish
    ret.init("exception").reason = "x" * len(reason)
    seg = bytearray(msg.to_segments()[0])
    at = bytes(seg).rindex(b"x" * len(reason)) if reason else None
    if reason:
        seg[at:at + len(reason)] = reason
    exc = wire.follow_path([seg], (0, 0), (0,))
    exc = wire.struct_pointer_field([seg], exc, 0)
    _k, _s, start, _w = wire.resolve([seg], exc)
    seg[8 * start + 4:8 * start + 6] = type_value.to_bytes(2, "little")
    fast, slow = rpcwire.decode([bytes(seg)]), rpcwire.decode_pycapnp([bytes(seg)])
    assert fast is not None and _fields(fast) == _fields(slow)
    assert fast.reason == reason.decode("utf-8", "replace")
    assert fast.type == (rpcwire.EXCEPTION_TYPES[type_value] if type_value < 4 else "failed")


@settings(max_examples=100, deadline=None)
@given(ids, ids, st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF), caps)
def test_both_decoders_read_a_call_the_same(qid, imp, iface, method, descs):
    head, _at = rpcwire.encode_call(qid, imp, iface, method, descs)
    fast, slow = rpcwire.decode([bytes(head)]), rpcwire.decode_pycapnp([bytes(head)])
    assert _fields(fast) == _fields(slow)


def test_an_exceptions_reason_is_not_charged_to_the_traversal_limit_on_either_path():
    """A Return whose reason is larger than the traversal limit: pycapnp refused
    it (and the fast decoder with it), and the peer was cut off for a reason a
    conforming peer may give (Cap'n Proto's C++ RPC sends what was thrown).
    Both decoders read the reason by hand now, once, and read the same values;
    the rest of the header is still bounded."""
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    ret.releaseParamCaps = False
    for size in (8 * rpcwire.TRAVERSAL_LIMIT_WORDS - 200, 8 * rpcwire.TRAVERSAL_LIMIT_WORDS,
                 4 << 20):
        ret.init("exception").reason = "x" * size
        segs = msg.to_segments()
        got = rpcwire.decode(segs)
        assert got is not None and len(got.reason) == size
        assert _fields(got) == _fields(rpcwire.decode_pycapnp(segs))


def test_a_cap_table_past_its_segment_falls_back_instead_of_raising():
    """The struct-list tag bug, through the fast decoder: the last descriptor
    lies one word past the segment.  decode() must say None (never raise),
    and pycapnp refuses the message."""
    head, _at = rpcwire.encode_call(1, 2, 3, 4, [(1, 5), (1, 6)])
    short = bytes(head[:-8])
    assert rpcwire.decode([short]) is None
    with pytest.raises(Exception, match="out-of-bounds"):
        rpcwire.decode_pycapnp([short])


def _promised_caps(ncaps: int, steps: int, target_steps: int | None = None):
    """A Call whose params carry `ncaps` receiverAnswer capabilities of `steps`
    transform steps each (and, if `target_steps` is set, a promised-answer target
    of that many), as a hostile client writes it."""
    msg = rpc.Message.new_message()
    call = msg.init("call")
    call.questionId, call.interfaceId = 1, 7
    if target_steps is None:
        call.target.importedCap = 0
    else:
        pa = call.target.init("promisedAnswer")
        pa.questionId = 2
        for i, op in enumerate(pa.init("transform", target_steps)):
            op.getPointerField = i
    for d in call.params.init("capTable", ncaps):
        ra = d.init("receiverAnswer")
        ra.questionId = 3
        for i, op in enumerate(ra.init("transform", steps)):
            op.getPointerField = i
    return msg.to_segments()


def test_a_messages_transform_steps_are_bounded_together():
    """256 capabilities of 64 steps each took 20-25 ms to decode through pycapnp
    (every other peer waited): the steps of one message are bounded together, and
    the message is refused before its steps are read past the bound.  Refused as
    a call (Plain.over), not the connection: a conforming peer may pipeline that
    deep; the references it gave are still read (word by word), nothing else."""
    limit = rpcwire.MAX_TRANSFORM_STEPS_PER_MESSAGE
    ok = rpcwire.decode_pycapnp(_promised_caps(4, limit // 4))
    assert [len(path) for _kind, (_q, path) in ok.caps] == [limit // 4] * 4
    assert not hasattr(ok, "over")
    assert len(rpcwire.decode_pycapnp(_promised_caps(1, limit - 1, target_steps=1)).caps) == 1
    for segs in (_promised_caps(256, 64), _promised_caps(2, limit // 2 + 1),
                 _promised_caps(1, limit, target_steps=1)):
        got = rpcwire.decode_pycapnp(segs)
        assert got.over.startswith(f"more than {limit} pipeline transform steps")
        refs, named = got.caps          # what it names is still read, to be checked
        assert refs == () and got.content_loc is None
        assert {kind for kind, _q in named} == {rpcwire.CAP_RECEIVER_ANSWER}
    got = rpcwire.decode_pycapnp(_promised_caps(0, 0, target_steps=wire.MAX_PATH_DEPTH + 1))
    assert got.over == f"pipeline transform of {wire.MAX_PATH_DEPTH + 1} steps (limit " \
        f"{wire.MAX_PATH_DEPTH})"
    assert got.promise == (2, ())
    # a Return's capabilities are bounded the same way
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    table = ret.init("results").init("capTable", 3)
    for i in range(2):
        table[i].init("receiverAnswer").init("transform", limit // 2 + 1)
    table[2].senderHosted = 9
    got = rpcwire.decode_pycapnp(msg.to_segments())
    assert "pipeline transform steps" in got.over
    # (what it names, once each: an id named many times is checked once, r236)
    assert got.caps == ((9,), ((rpcwire.CAP_RECEIVER_ANSWER, 0),))
