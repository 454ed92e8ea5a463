import os
import socket

import pytest

from tests.conftest import EXAMPLES, read_line


def test_wsuper_call_says_a_full_backlog_is_a_busy_system_not_a_silent_one(tmp_path):
    """`wsuper call` waits, within its timeout, for room in a full backlog of the
    external socket (a local process that keeps it full).  When none came, it said
    'no answer within 0.5 s', as if the system had taken the call and not answered;
    the operator's commands say the system is busy (endpoint.connect_admin), and so
    does a call now."""
    import capnp_schemas
    from supervisor import client
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)                # never accepts
    queued = []
    try:
        while True:                                  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        calc = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp")).Calc
        with pytest.raises(client.CallFailed) as e:
            client.call(path, "calc", calc, "add", {"a": 1, "b": 2}, timeout=0.5)
        assert "is busy: its socket took no connection within 0.5 s" in str(e.value)
        assert path in str(e.value)
        # one the backlog takes, but that is never answered, is told so
        for s in queued:
            s.close()
        queued.clear()
        server, _ = listener.accept()       # one of those closed: room again
        server.close()
        with pytest.raises(client.CallFailed) as e:
            client.call(path, "calc", calc, "add", {"a": 1, "b": 2}, timeout=0.5)
        assert str(e.value) == "no answer within 0.5 s", e.value
    finally:
        for s in queued:
            s.close()
        listener.close()


INHERITS = """@0xd1e0a5b5c0f0e1b1;
interface D { f @0 (d :Int32) -> (r :Text); }
interface A extends(D) { }
interface B { f @0 (b :Text) -> (r :Text); }
interface C extends(A, B) { }
""" + "".join(f"interface L{i}a extends(L{i + 1}a, L{i + 1}b) {{ }}\n"
              f"interface L{i}b extends(L{i + 1}a, L{i + 1}b) {{ }}\n" for i in range(7)) + """
interface L7a { }
interface L7b { }
interface T extends(L0a, B) { }
"""

SERVER = """
import asyncio, sys
import capnp
import capnp_schemas
capnp.remove_import_hook()
m = capnp.load(sys.argv[1])

class Impl(m.C.Server):            # D.f and B.f both come to f: told apart by their params
    async def f(self, _context, **params):
        d = m.D.schema.methods["f"].param_type.node.id
        which = "D" if _context.params.schema.node.id == d else "B"
        return f"{which}.f " + " ".join(map(str, params.values()))

class OnlyB(m.B.Server):
    async def f(self, b, **_):
        return f"B.f {b}"

class Gateway(capnp_schemas.host.Gateway.Server):
    async def get(self, name, **_):
        return Impl() if name == "c" else OnlyB()

async def main():
    async def serve(stream):
        await capnp.TwoPartyServer(stream, bootstrap=Gateway()).on_disconnect()
    server = await capnp.AsyncIoStream.create_unix_server(serve, sys.argv[2])
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(capnp.run(main()))
"""


@pytest.fixture
def inherits(tmp_path):
    import subprocess
    import sys
    schema, path = tmp_path / "inh.capnp", str(tmp_path / "s.sock")
    schema.write_text(INHERITS)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(schema), path],
                              stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert read_line(server).strip() == "ready"
        yield str(schema), path
    finally:
        server.kill()
        server.wait()


CALL = """
import sys
import capnp_schemas
from supervisor import captext, client
interface = getattr(capnp_schemas.load(sys.argv[1]), sys.argv[3])
declared_by, found = captext.find(interface.schema, "f")
params = captext.typed(captext.parse(sys.argv[4]), found.param_type)
print(client.call(sys.argv[2], sys.argv[3].lower(), interface, "f", params, 10,
                  declared_by=declared_by))
"""


@pytest.mark.parametrize("interface, params, answer", [
    ("C", "(d = 5)", "D.f 5"), ("T", '(b = "x")', "B.f x")])
def test_wsuper_call_calls_the_inherited_method_cap_n_proto_means(inherits, interface,
                                                                   params, answer):
    """An inherited method is the one Cap'n Proto's search by name finds: own, then
    each interface extended in order, depth first (C extends(A, B), A extends(D):
    D's f, not B's).  `wsuper call` typed the params for B's f (found breadth
    first), then pycapnp made the call by name and took D's: `(d = 5)` was 'no
    such field', `(b = "x")` failed in pycapnp.  And pycapnp's own search gives up
    after visiting 64 interfaces (a diamond's counted as often as reached): on T,
    which extends a lattice of 16 without f before B, the call aborted the
    process ('Cyclic or absurdly-large inheritance graph').  The call is made on
    the interface that declares the method, as captext found it."""
    import subprocess
    import sys
    schema, path = inherits
    r = subprocess.run([sys.executable, "-c", CALL, schema, path, interface, params],
                       capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f'(r = "{answer}")', r.stdout


NAMES = """@0xd1e0a5b5c0f0e1b2;
struct S { which @0 :Int32; schema @1 :Text; init @2 :Int32; }
struct G { g :group { which @0 :Int32; u :union { which @1 :Int32; other @2 :Text; } } }
interface W {
  f @0 (which :Int32, schema :Text, s :S, l :List(S), ll :List(List(S)), p :G) -> (r :Text);
}
"""

ECHO = """
import asyncio, sys
import capnp
import capnp_schemas
capnp.remove_import_hook()
m = capnp.load(sys.argv[1])

class Echo(m.W.Server):            # answers the params it was sent, as text
    async def f_context(self, context):
        context.results.r = str(context.params)

class Gateway(capnp_schemas.host.Gateway.Server):
    async def get(self, name, **_):
        return Echo()

async def main():
    async def serve(stream):
        await capnp.TwoPartyServer(stream, bootstrap=Gateway()).on_disconnect()
    server = await capnp.AsyncIoStream.create_unix_server(serve, sys.argv[2])
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(capnp.run(main()))
"""

CALL_W = """
import sys
import capnp_schemas
from supervisor import captext, client
interface = capnp_schemas.load(sys.argv[1]).W
declared_by, found = captext.find(interface.schema, "f")
params = captext.typed(captext.parse(sys.argv[3]), found.param_type)
print(client.call(sys.argv[2], "w", interface, "f", params, 10, declared_by=declared_by))
"""


def test_wsuper_call_sends_a_field_named_which_or_schema_at_every_depth(tmp_path):
    """A field may be called `which` (or `schema`, `init`: Cap'n Proto has no word
    against it), but pycapnp's from_dict, which `wsuper call` set the params
    with, skips every key `which`, in the params, a group, a struct, a list's
    structs: `(which = 7)` was sent as which = 0, the call answered, and nobody
    was told.  Each field is set by its name (client.fill)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    schema, path = tmp_path / "names.capnp", str(tmp_path / "s.sock")
    schema.write_text(NAMES)
    server = subprocess.Popen([sys.executable, "-c", ECHO, str(schema), path],
                              stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert read_line(server).strip() == "ready"
        params = ('(which = 7, schema = "s", s = (which = 8, schema = "t", init = 9), '
                  'l = [(which = 10)], ll = [[(which = 11)]], p = (g = (which = 12, u = (which = 13))))')
        r = subprocess.run([sys.executable, "-c", CALL_W, str(schema), path, params],
                           capture_output=True, text=True, timeout=60, cwd=root)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    # the echo is the params' text inside the text of r: its newlines and quotes escaped
    sent = " ".join(r.stdout.replace("\\n", " ").replace('\\"', '"').split())
    sent = sent.replace("( ", "(").replace(" )", ")")
    for part in ("which = 7", 'schema = "s"', 's = (which = 8, schema = "t", init = 9)',
                 "l = [(which = 10", "ll = [[(which = 11", "p = (g = (which = 12, u = (which = 13)))"):
        assert part in sent, (part, sent)
