"""The hand-written RPC header codec against pycapnp's reading and writing of rpc.capnp."""
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
    msg.init("return").answerId = 1                             # releaseParamCaps = true
    assert rpcwire.decode(msg.to_segments()) is None
    assert rpcwire.decode([b"\xff" * 16]) is None               # garbage: pycapnp says why
