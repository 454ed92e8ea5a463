"""The generated C decoder against hostile bytes, compiled natively with gcc
and run under AddressSanitizer and UBSan: malformed messages are reported
as malformed (r.bad), never read outside the buffer, never loop or recurse
without bound.  (In wsuper a plugin only ever receives the engine's single-segment
copy; this checks the C side holds on its own.)"""
import os
import random
import shutil
import subprocess

import pytest

import capnp_schemas
from capnp_schemas import wire
from supervisor import bindgen
from tests.conftest import GUESTS_C

NODE = """@0xd1f0a3b2c4e5f603;
struct Node { next @0 :Node; kids @1 :List(Node); value @2 :Int64; name @3 :Text; }
"""

# Lists whose elements take less room in the message than in C: bits (one byte
# each in C), empty structs (none at all on the wire) and wide structs (8 KiB each
# in wasm32's C, whatever their size on the wire).
HOLDER = """@0xd1f0a3b2c4e5f604;
struct Empty {}
struct Wide { %s }
struct Holder { flags @0 :List(Bool); empties @1 :List(Empty); wides @2 :List(Wide); pad @3 :Data;
                thing @4 :Thing; things @5 :List(Thing); }
interface Thing {}
""" % " ".join(f"f{i} @{i} :Int64;" for i in range(1024))

HARNESS = r"""
#include <stdio.h>
#define WSUPER_NATIVE_TEST
/* a native stack (8 MiB), and ASan's larger frames: the depth limit is what these
 * messages test (test_a_deep_message_cannot_run_a_plugins_stack_into_its_data
 * tests the stack budget, in wasm) */
#define WSUPER_STACK_BUDGET (1u << 20)
#include "echo.h"
#include "node.h"
#include "holder.h"
/* the guest ABI's imports, for a native build (never called here) */
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { (void)t; return 1; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return -8; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

static unsigned long depth(const node *n) { unsigned long d = 0; while (n) { d++; n = n->next; } return d; }

int main(int argc, char **argv) {
  static uint8_t buf[1 << 23];
  int32_t caps[4] = {11, 12, 13, 14};
  for (int i = 2; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    /* the message in a block of its own size: a read past its end is AddressSanitizer's
     * to report (inside the static buffer it read leftovers, unnoticed) */
    uint8_t *msg = malloc(len ? len : 1);
    memcpy(msg, buf, len);
    wsuper_reader r;
    wsuper_arena a = {0, 0};
    if (wsuper_reader_init(&r, msg, (uint32_t)len, caps, 4) != 0) {
      printf("reject\n");
      free(msg);
      continue;
    }
    if (argv[1][0] == 'h') {
      holder v;
      memset(&v, 0, sizeof v);
      holder_load(&r, &a, wsuper_root(&r), &v);
      unsigned ones = 0;
      for (uint32_t k = 0; k < v.flags.len; k++) ones += v.flags.items[k];
      printf("%s flags=%u ones=%u empties=%u wides=%u pad=%u", r.bad ? "bad" : "ok",
             v.flags.len, ones, v.empties.len, v.wides.len, v.pad.len);
      if (v.thing || v.things.len) {
        printf(" thing=%d things=", v.thing);
        for (uint32_t k = 0; k < v.things.len; k++) printf("%d,", v.things.items[k]);
      }
      printf("\n");
    } else if (argv[1][0] == 'e') {
      everything v;
      memset(&v, 0, sizeof v);
      everything_load(&r, &a, wsuper_root(&r), &v);
      /* what was decoded can be encoded again */
      wsuper_builder b;
      wsuper_builder_init(&b);
      everything_fill(&b, wsuper_new_struct(&b, 0, EVERYTHING_DWORDS, EVERYTHING_PTRS), &v);
      printf("%s %u %u%s%s\n", r.bad ? "bad" : "ok", v.texts.len, b.words,
             r.bad ? " why=" : "", r.bad && r.why ? r.why : "");
      wsuper_builder_free(&b);
    } else {
      node v;
      memset(&v, 0, sizeof v);
      node_load(&r, &a, wsuper_root(&r), &v);
      printf("%s depth=%lu\n", r.bad ? "bad" : "ok", depth(&v));
    }
    wsuper_arena_free(&a);
    free(msg);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    d = tmp_path_factory.mktemp("creader")
    (d / "node.capnp").write_text(NODE)
    bindgen.generate(os.path.join(GUESTS_C, "echo.capnp"), str(d))
    bindgen.generate(str(d / "node.capnp"), str(d))
    (d / "holder.capnp").write_text(HOLDER)
    bindgen.generate(str(d / "holder.capnp"), str(d))
    (d / "h.c").write_text(HARNESS)
    exe = d / "h"
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    cmd = ["gcc", "-O1", "-g", "-Wall", "-Wno-attributes", "-I", str(d), "-o", str(exe),
           str(d / "h.c")]
    r = subprocess.run(cmd[:1] + flags + cmd[1:], capture_output=True, text=True)
    if r.returncode != 0:      # no sanitizer runtime: still worth running plain
        r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(exe), d


def _run(harness, kind, messages):
    exe, d = harness
    paths = []
    for i, m in enumerate(messages):
        p = d / f"m{kind}{i}.bin"
        p.write_bytes(m)
        paths.append(str(p))
    r = subprocess.run([exe, kind, *paths], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert len(lines) == len(messages)
    return lines


def _framed(words: bytes) -> bytes:
    return (0).to_bytes(4, "little") + (len(words) // 8).to_bytes(4, "little") + words


def test_valid_messages_decode_and_mutations_are_caught(harness):
    schema = capnp_schemas.load(os.path.join(GUESTS_C, "echo.capnp"))
    msg = schema.Everything.new_message(
        i64=5, text="hello", data=b"xyz", texts=["a", "b"], inners=[{"n": 1, "label": "x"}],
        ints=[1, 2, 3], flags=[True, False], inner={"n": 2, "label": "y"}).to_bytes()
    rng = random.Random(7)
    mutants = [msg]
    for _ in range(400):
        m = bytearray(msg)
        for _ in range(rng.randint(1, 6)):
            m[rng.randrange(8, len(m))] = rng.randrange(256)
        mutants.append(bytes(m))
    mutants += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))) for _ in range(200)]
    lines = _run(harness, "e", mutants)
    assert lines[0].startswith("ok 2 ")
    assert all(l.split()[0] in ("ok", "bad", "reject") for l in lines)
    assert sum(l.startswith("bad") for l in lines) > 50     # the checks do fire
    # and each says what it found (r.why: the skeleton's "malformed params of ...: WHY")
    assert all(" why=" in l and not l.endswith(" why=") for l in lines if l.startswith("bad"))


def test_pointer_aware_mutants_of_every_harness_schema_are_caught(harness):
    """Mutants as fuzz/protocol.py makes them (pointer words: offsets, sizes, counts,
    kinds, far and capability pointers; interesting integers; words dropped or
    repeated) of messages of all three schemas, as a plugin gets them (one segment):
    bit lists, empty and wide structs and capabilities (Holder), recursion (Node),
    and every field kind (Everything).  Byte flips of one Everything message were
    all this reader met before; 200,000 such mutants ran clean under ASan and UBSan
    (reviewer 223)."""
    from fuzz import protocol as F
    from fuzz.seeds import Seed
    d = harness[1]
    one = lambda b: wire.single_segment_copy(wire.unframe(b), (0, 0))      # noqa: E731
    echo = capnp_schemas.load(os.path.join(GUESTS_C, "echo.capnp"))
    holder = capnp_schemas.load(str(d / "holder.capnp"))
    node = capnp_schemas.load(str(d / "node.capnp"))
    seeds = {
        "e": Seed(one(echo.Everything.new_message(
            i64=5, text="hello", data=b"xyz", texts=["a", "b", ""], ints=[1, 2, 3],
            inners=[{"n": 1, "label": "x"}, {"n": 3}], flags=[True, False, True],
            inner={"n": 2, "label": "y"}).to_bytes())),
        "h": Seed(one(holder.Holder.new_message(flags=[True, False] * 40, empties=[{}] * 5,
                                                pad=b"pad", wides=[{"f0": 1}, {"f1023": 2}])
                      .to_bytes())),
        "n": Seed(one(node.Node.new_message(value=1, name="a", next={
            "value": 2, "kids": [{"value": 3}, {"name": "k"}]}).to_bytes()))}
    rng = random.Random(223)
    for kind, seed in seeds.items():
        mutants = []
        for _ in range(300):
            seg = bytearray(seed.segs[0])
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(4)
                if op < 2:
                    _s, p = rng.choice(seed.ptrs)
                    w = int.from_bytes(seg[8 * p:8 * p + 8], "little")
                    seg[8 * p:8 * p + 8] = F._mutate_pointer(rng, w, 1).to_bytes(8, "little")
                elif op == 2:
                    at = rng.randrange(len(seg) // 4) * 4
                    seg[at:at + 4] = (rng.choice(F.INTERESTING) & 0xFFFFFFFF).to_bytes(4, "little")
                else:
                    p = 8 * rng.randrange(len(seg) // 8)
                    seg[p:p] = seg[p:p + 8] if rng.randrange(2) else b""
                    if not rng.randrange(2):
                        del seg[p:p + 8]
            mutants.append(_framed(bytes(seg[:len(seg) & ~7])))
        lines = _run(harness, kind, mutants)         # under ASan and UBSan: no error
        assert all(line.split()[0] in ("ok", "bad", "reject") for line in lines)
        assert sum(line.startswith("bad") for line in lines) > 50, kind
        assert sum(line.startswith("ok") for line in lines) > 10, kind


def test_a_text_of_no_bytes_is_no_text(harness):
    """Text is a list of bytes ending in NUL: one of no bytes at all has no NUL,
    and Cap'n Proto refuses it ("text that is not NUL-terminated"), as pycapnp
    does.  The C reader took it for "" (the same as a null Text), so a plugin
    and a pycapnp peer read one message two ways.  Now it is malformed; a null
    Text, and "" with its NUL, are still "".  (Data of no bytes is fine.)"""
    def everything(text_word, data_word=0, extra=()):
        words = [(0 << 2) | (7 << 32) | (9 << 48)] + [0] * 7       # root -> word 1
        words += [text_word, data_word] + [0] * 7 + list(extra)
        return _framed(b"".join(w.to_bytes(8, "little") for w in words))
    empty_list = 1 | (2 << 32)                                      # bytes, 0 of them, at 10
    with_nul = (8 << 2) | 1 | ((2 | 1 << 3) << 32)                  # 1 byte at word 17
    lines = _run(harness, "e", [everything(0), everything(with_nul, extra=[0]),
                                everything(0, empty_list), everything(empty_list)])
    assert [l.split()[0] for l in lines] == ["ok", "ok", "ok", "bad"], lines
    assert lines[3].endswith("why=text without its NUL"), lines



def test_cycles_depth_and_amplification_are_bounded(harness):
    # a struct whose `next` points at itself: word 0 root -> word 1 struct (1 data, 4 ptrs)
    root = (0 << 2 | (1 << 32) | (4 << 48)).to_bytes(8, "little")
    self_ptr = ((-1 & 0x3FFFFFFF) << 2 | (1 << 32) | (4 << 48)).to_bytes(8, "little")  # to word 1
    cycle = _framed(root + (7).to_bytes(8, "little") + self_ptr + bytes(24))
    # an honest chain: node i (1 data word, 4 pointers) right after node i-1's `next`
    def chain(n):
        words = [(0 << 2) | (1 << 32) | (4 << 48)]                  # root -> word 1
        for i in range(n):
            nxt = (0 << 2) | (1 << 32) | (4 << 48) if i < n - 1 else 0
            words += [i, nxt, 0, 0, 0]
            # node i's `next` is at its word 1, the next node starts 3 words later
            if nxt:
                words[-4] = (3 << 2) | (1 << 32) | (4 << 48)
        return _framed(b"".join(w.to_bytes(8, "little") for w in words))
    deep, shallow = chain(200), chain(2)
    lines = _run(harness, "n", [cycle, deep, shallow])
    assert lines[0].startswith("bad depth=")       # stopped, not a stack overflow
    assert lines[1].startswith("bad depth=65")     # deeper than WSUPER_MAX_DEPTH is refused
    assert lines[2] == "ok depth=2"


def test_every_valid_message_decodes_whatever_its_lists_hold(harness, tmp_path):
    """The decoding budget charges each object what it takes in the message: a
    valid message is never refused for holding a long list of bits (1/64 of a word
    per element) or of empty structs (none), as pycapnp reads them all."""
    schema = capnp_schemas.load(str(harness[1] / "holder.capnp"))
    cases = [dict(flags=[i % 3 == 0 for i in range(n)]) for n in (1, 63, 64, 65, 100, 1000, 100000)]
    cases += [dict(empties=[{}] * n) for n in (1, 100, 5000, 60000)]
    cases += [dict(flags=[True] * 5000, empties=[{}] * 3000, pad=b"x" * 100)]
    # as a plugin gets them: the engine's single-segment copy (pycapnp spreads a
    # large message over several segments)
    messages = [wire.single_segment_copy(wire.unframe(schema.Holder.new_message(**c).to_bytes()),
                                         (0, 0)) for c in cases]
    for c, line in zip(cases, _run(harness, "h", messages)):
        flags = c.get("flags", [])
        assert line == (f"ok flags={len(flags)} ones={sum(flags)} "
                        f"empties={len(c.get('empties', []))} wides=0 "
                        f"pad={len(c.get('pad', b''))}"), c.keys()


def _empty_elements(n: int, pad_words: int) -> bytes:
    """Holder with `wides` a list of n elements of no words each (each a 8 KiB C
    struct on wasm32), and `pad` enough Data for the message to be as long as it
    must be for n to be within the decoding budget."""
    words = [(0 << 2) | (0 << 32) | (4 << 48),             # root -> word 1: 0 data, 4 ptrs
             0, 0,                                          # flags, empties: null
             (1 << 2) | 1 | ((7 | 0 << 3) << 32),           # wides -> word 5, 0 words
             (1 << 2) | 1 | ((2 | (pad_words * 8) << 3) << 32),   # pad -> word 6
             (n << 2)]                                      # the tag: n elements, 0 + 0 words
    words += [0] * pad_words
    return _framed(b"".join(w.to_bytes(8, "little") for w in words))


def test_an_element_count_cannot_overflow_an_allocation_on_wasm32(harness, tmp_path):
    """The reader in a real plugin (wasm32, a 32-bit size_t): 2^19 empty elements of
    an 8 KiB C struct are 4 GiB, which wrapped around to a block of a few bytes that
    the decoder then wrote 4 GiB into (a trap at the end of memory, after the
    plugin's heap was overwritten).  Now the array is refused: malformed."""
    import wasmtime

    from supervisor import toolchain
    exe, d = harness
    wasm = d / "h.wasm"
    if not wasm.exists():
        toolchain.build([str(d / "h.c")], str(wasm), include=[str(d)], protect=False,
                        extra=["-Wno-attributes", "-O1"])
    messages = [_empty_elements(1 << 19, 1 << 19), _empty_elements(3, 0)]
    for i, m in enumerate(messages):
        (tmp_path / f"w{i}.bin").write_bytes(m)
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    config.argv = ["h", "h", *(f"/m/w{i}.bin" for i in range(len(messages)))]
    config.preopen_dir(str(tmp_path), "/m")
    config.stdout_file = str(tmp_path / "out.txt")
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        assert e.code == 0
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines == ["bad flags=0 ones=0 empties=0 wides=0 pad=0",
                     "ok flags=0 ones=0 empties=0 wides=3 pad=0"]
    # natively too (a 64-bit size_t does not overflow; the message is still read)
    assert _run(harness, "h", messages[1:]) == [lines[1]]


def _with_caps(thing: int | None, things: list[int]) -> bytes:
    """Holder whose `thing` is cap index `thing` and `things` those indexes."""
    def cap(i):
        return 3 | (i << 32)
    words = [(0 << 2) | (0 << 32) | (6 << 48), 0, 0, 0, 0,        # root -> 6 ptrs at word 1
             0 if thing is None else cap(thing),
             (0 << 2) | 1 | ((6 | len(things) << 3) << 32)]       # things -> word 7
    words += [cap(i) for i in things]
    return _framed(b"".join(w.to_bytes(8, "little") for w in words))


def test_a_capability_is_handed_out_once(harness):
    """Two fields that point to one capability of the message would be one handle
    in two places: releasing one released the other's, and once the number was
    reused, some other capability.  The reader hands each out once; a message
    that names one twice (which no Cap'n Proto builder writes: each cap pointer
    set gets its own index) is malformed.  Out of range is malformed too."""
    lines = _run(harness, "h", [_with_caps(0, [1, 2, 3]), _with_caps(0, [0]),
                                _with_caps(None, [1, 2, 1]), _with_caps(2, [2]),
                                _with_caps(None, [4]), _with_caps(7, [])])
    assert lines[0] == "ok flags=0 ones=0 empties=0 wides=0 pad=0 thing=11 things=12,13,14,"
    assert all(line.startswith("bad ") for line in lines[1:]), lines



def test_a_reserved_other_pointer_is_no_capability(harness):
    """An "other" pointer (kind 3) is a capability only when the rest of its low
    word is zero: Cap'n Proto reserves the other values of those 30 bits, and its
    reader refuses them ("non-capability pointer where capability pointer was
    expected"), as the engine's copy does ("unknown 'other' pointer").  The C
    reader looked at the kind alone: `3 | 1 << 2 | 1 << 32` was handed out as the
    message's capability 1, a pointer of some later version of the format read as
    something it is not.  Now it is malformed, in a field and in a list."""
    def with_other(word, in_list):
        words = [(0 << 2) | (0 << 32) | (6 << 48), 0, 0, 0, 0,
                 0 if in_list else word,
                 (0 << 2) | 1 | ((6 | (1 if in_list else 0) << 3) << 32)]
        words += [word] if in_list else []
        return _framed(b"".join(w.to_bytes(8, "little") for w in words))
    reserved = [3 | (1 << 2) | (1 << 32), 3 | (0x3FFFFFFF << 2), 3 | (1 << 31) | (2 << 32)]
    lines = _run(harness, "h", [with_other(3 | (1 << 32), False), with_other(3 | (2 << 32), True)]
                 + [with_other(w, l) for w in reserved for l in (False, True)])
    assert lines[0] == "ok flags=0 ones=0 empties=0 wides=0 pad=0 thing=12 things="
    assert lines[1] == "ok flags=0 ones=0 empties=0 wides=0 pad=0 thing=0 things=13,"
    assert all(line.startswith("bad ") for line in lines[2:]), lines


PAIR = """@0xd1f0a3b2c4e5f6c1;
interface Thing {}
interface Pair { get @0 () -> (a :Thing, b :Thing, n :Int64); }
"""

PAIR_HARNESS = r"""
#include <stdio.h>
#include "pair.h"
/* the guest ABI's imports: wsuper_call answers with the reply in argv[i] and caps
 * 21, 22, 23; wsuper_release prints what it releases */
static uint8_t reply[4096];
static int32_t reply_len;
static const int32_t reply_caps[3] = {21, 22, 23};
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; int32_t out[2] = {reply_len, 3}; memcpy(o, out, 8); return 0; }
int32_t wsuper_reply_read(void *b, int32_t *c) {
  memcpy(b, reply, (size_t)reply_len); memcpy(c, reply_caps, sizeof reply_caps); return 0; }
int32_t wsuper_release(int32_t h) { printf("release %d; ", h); return 0; }
int32_t wsuper_object(int32_t t) { (void)t; return 1; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return -8; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    reply_len = (int32_t)fread(reply, 1, sizeof reply, f);
    fclose(f);
    wsuper_arena a = {0, 0};
    pair_get_results out;
    memset(&out, 0x55, sizeof out);
    int rc = pair_get(&a, 1, &out);
    printf("rc=%d a=%d b=%d n=%lld\n", rc, out.a, out.b, (long long)out.n);
    wsuper_arena_free(&a);
  }
  return 0;
}
"""


def test_results_that_fail_to_decode_hold_no_handle(tmp_path):
    """A reply whose results are malformed (two fields naming one capability, or a
    bad pointer after a good one) is WSUPER_E_MESSAGE, and the stub releases every
    handle of the reply.  The results used to keep the fields decoded before the
    fault: a handle already released, which a caller that cleans up what its
    results hold released a second time (once the number was reused, some other
    capability).  Failed results are now all zero (and so are those of a reply too
    short to be a message); good ones keep their handles."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "pair.capnp").write_text(PAIR)
    bindgen.generate(str(tmp_path / "pair.capnp"), str(tmp_path))
    (tmp_path / "p.c").write_text(PAIR_HARNESS)
    r = subprocess.run(["gcc", "-O1", "-g", "-Wall", "-Wno-attributes", "-I", str(tmp_path),
                        "-o", str(tmp_path / "p"), str(tmp_path / "p.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def results(a: int, b: int) -> bytes:     # (a, b, n = 7): a, b whole pointer words
        return _framed((0 | (1 << 32) | (2 << 48)).to_bytes(8, "little")
                       + (7).to_bytes(8, "little") + a.to_bytes(8, "little")
                       + b.to_bytes(8, "little"))

    def cap(i):
        return 3 | (i << 32)
    far = 2 | (5 << 3)
    replies = [results(cap(0), cap(1)), results(cap(0), cap(0)), results(cap(1), far),
               results(cap(2), cap(7)), b"\0" * 12]
    paths = []
    for i, m in enumerate(replies):
        (tmp_path / f"r{i}.bin").write_bytes(m)
        paths.append(str(tmp_path / f"r{i}.bin"))
    r = subprocess.run([str(tmp_path / "p"), *paths], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "release 23; rc=0 a=21 b=22 n=7", lines
    for line in lines[1:]:
        assert line == "release 21; release 22; release 23; rc=-6 a=0 b=0 n=0", lines
    assert len(lines) == len(replies)


BUILDER_HARNESS = r"""
#include <stdio.h>
#include "wsuper.h"
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { (void)t; return 1; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return -8; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

int main(void) {
  wsuper_builder b;
  /* a Text whose length is 2^32 - 1 (a length computed as 0 - 1): with its NUL, a
   * list of 0 bytes, into which the whole length was copied */
  wsuper_text t = {"abc", UINT32_MAX};
  wsuper_builder_init(&b);
  wsuper_set_text(&b, wsuper_new_struct(&b, 0, 0, 1), t);
  printf("text failed=%d words=%u\n", b.failed, b.words);
  wsuper_builder_free(&b);
  /* 2^30 + 3 empty structs: the tag's 30-bit count said 3 */
  uint32_t counts[] = {3, (1u << 29) - 1, 1u << 29, (1u << 30) + 3, UINT32_MAX};
  for (int k = 0; k < 5; k++) {
    wsuper_builder_init(&b);
    uint32_t first = wsuper_new_struct_list(&b, 0, counts[k], 0, 0);
    uint64_t tag = 0;
    if (!b.failed) memcpy(&tag, wsuper_word(&b, first - 1), 8);
    printf("list %u failed=%d count=%u\n", counts[k], b.failed, (uint32_t)(tag & 0xFFFFFFFFu) >> 2);
    wsuper_builder_free(&b);
  }
  /* 257 capabilities: one message carries 256; the failure says so (wsuper_unsent) */
  wsuper_builder_init(&b);
  uint32_t at = wsuper_new_struct(&b, 0, 0, 257);
  for (int k = 0; k < 257; k++) wsuper_set_cap(&b, at + k, 100 + k);
  printf("caps failed=%d ncaps=%u why=%s\n", b.failed, b.ncaps, wsuper_unsent(&b, WSUPER_E_MESSAGE));
  wsuper_builder_free(&b);
  return 0;
}
"""


def test_the_builder_refuses_counts_that_do_not_fit_the_wire(tmp_path):
    """wsuper_set_bytes counted a Text's NUL in 32 bits: a length of 2^32 - 1 (one
    computed as 0 - 1) made a list of 0 bytes, into which the whole length was
    then copied (past the builder's buffer: the plugin's heap overwritten until
    it trapped).  wsuper_new_struct_list put the count in the tag as `n << 2` in
    32 bits, and a list of empty structs is bounded by no word count: 2^30 + 3
    elements were sent as 3.  Each is now refused (the builder fails: the call
    is WSUPER_E_MESSAGE) past what a Cap'n Proto list can hold (2^29 - 1)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "b.c").write_text(BUILDER_HARNESS)
    cmd = ["gcc", "-O1", "-g", "-Wall", "-Wno-attributes", "-I", os.path.dirname(bindgen.SDK_HEADER),
           "-o", str(tmp_path / "b"), str(tmp_path / "b.c")]
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    r = subprocess.run(cmd[:1] + flags + cmd[1:], capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [
        "text failed=1 words=2",
        "list 3 failed=0 count=3",
        f"list {(1 << 29) - 1} failed=0 count={(1 << 29) - 1}",
        f"list {1 << 29} failed=1 count=0",
        f"list {(1 << 30) + 3} failed=1 count=0",
        f"list {(1 << 32) - 1} failed=1 count=0",
        "caps failed=1 ncaps=256 why=more than 256 capabilities"]


WIDE_NODE = "@0xd1f0a3b2c4e5f605;\nstruct Wnode { %s }\n" % " ".join(
    f"f{i} @{i} :Wnode;" for i in range(120))

STACK_HARNESS = r"""
#include <stdio.h>
#include "wnode.h"
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
/* (wsuper_arena_free releases the handles of wsuper_release_later: none here) */
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
/* the plugin's own data, just below its stack: no message may change it */
char data[16384] = {1};
int main(int argc, char **argv) {
  static int32_t caps[1];
  uint8_t *buf = malloc(1 << 22);
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    size_t len = fread(buf, 1, 1 << 22, f);
    fclose(f);
    wsuper_reader r;
    wsuper_arena a = {0, 0};
    if (wsuper_reader_init(&r, buf, (uint32_t)len, caps, 0)) { printf("reject\n"); continue; }
    wnode v;
    memset(&v, 0, sizeof v);
    wnode_load(&r, &a, wsuper_root(&r), &v);
    unsigned changed = 0;
    for (int k = 1; k < 16384; k++) changed += data[k] != 0;
    printf("%s changed=%u\n", r.bad ? "bad" : "ok", changed);
    wsuper_arena_free(&a);
  }
  return 0;
}
"""


def _wide_chain(depth: int) -> bytes:
    """Wnode inside Wnode `depth` deep, each the first field of the one before."""
    ptrs = 120
    words = [(0 << 2) | (ptrs << 48)]                   # root -> word 1: 0 data, 120 ptrs
    for i in range(depth):
        node = [0] * ptrs
        if i < depth - 1:                               # f0 -> the next node, right after
            node[0] = ((ptrs - 1) << 2) | (ptrs << 48)
        words += node
    return _framed(b"".join(w.to_bytes(8, "little") for w in words))


def test_a_deep_message_cannot_run_a_plugins_stack_into_its_data(tmp_path):
    """The decoder in a real plugin (wasm32, wasm-ld's 64 KiB stack, which nothing
    guards: below it lie the plugin's globals).  Each struct inside another is a
    frame of its _load function, and a struct of 120 struct fields has one of about
    2 KiB: 40 nested (well within WSUPER_MAX_DEPTH) ran the stack past its end and
    the decode wrote over the plugin's data, then said the message was fine; 64
    trapped.  The decode now refuses (malformed) what would take more than
    WSUPER_STACK_BUDGET of stack, and the data is untouched."""
    import wasmtime

    from supervisor import toolchain
    (tmp_path / "wnode.capnp").write_text(WIDE_NODE)
    bindgen.generate(str(tmp_path / "wnode.capnp"), str(tmp_path))
    (tmp_path / "s.c").write_text(STACK_HARNESS)
    wasm = tmp_path / "s.wasm"
    toolchain.build([str(tmp_path / "s.c")], str(wasm), include=[str(tmp_path)],
                    extra=["-Wno-attributes"])
    depths = (3, 40, 64)
    for d in depths:
        (tmp_path / f"d{d}.bin").write_bytes(_wide_chain(d))
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    config.argv = ["s", *(f"/m/d{d}.bin" for d in depths)]
    config.preopen_dir(str(tmp_path), "/m")
    config.stdout_file = str(tmp_path / "out.txt")
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        assert e.code == 0
    assert (tmp_path / "out.txt").read_text().splitlines() == [
        "ok changed=0", "bad changed=0", "bad changed=0"]



DEEP = """@0xd1f0a3b2c4e5f606;
interface Deep { go @0 (n :Int32) -> (n :Int32); }
"""

NESTED_HARNESS = r"""
#include <stdio.h>
#define WSUPER_SERVE_DEEP
#include "deep.h"
/* the guest ABI's imports, as the host would answer them: a call to the handle
 * the plugin serves enters its dispatch again (a peer calling back), up to the
 * host's 32 levels of nesting */
static uint8_t params[4096], results[4096];
static int32_t params_len, results_len, level, levels;
static uintptr_t lowest = UINTPTR_MAX;
static void mark(void) {
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  if (here < lowest) lowest = here;
}
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { (void)t; return 1; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; mark(); return 0; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)c; mark(); memcpy(b, params, (size_t)params_len); return 0; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)c; (void)n; mark(); memcpy(results, b, (size_t)l); results_len = l; return 0; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)c; mark(); memcpy(b, results, (size_t)results_len); return 0; }
int32_t wsuper_call(int32_t h, int64_t iface, int32_t method, const void *p, int32_t len,
                    const int32_t *caps, int32_t ncaps, void *out) {
  (void)h; (void)caps; (void)ncaps;
  int32_t *o = (int32_t *)out;
  mark();
  if (level >= 32) { o[0] = 0; o[1] = 0; return WSUPER_E_OVERLOADED; }
  memcpy(params, p, (size_t)len);
  params_len = len;
  level++;
  if (level > levels) levels = level;
  int32_t rc = deep_dispatch(1, iface, method, len, 0);
  level--;
  o[0] = rc == 0 ? results_len : 0;
  o[1] = 0;
  return rc;
}
int deep_serve_go(wsuper_arena *a, int32_t object, const deep_go_params *in, deep_go_results *out) {
  (void)object;
  mark();
  /* a line to log, say: 2 KiB, so that 32 levels do not fit (the dispatch's own
   * frame lost its results' builder, 1 KiB, to the call's arena) */
  char note[2048];
  snprintf(note, sizeof note, "level %d", (int)in->n);
  deep_go_results r;
  int rc = deep_go(a, 1, in->n + 1, &r);     /* call the peer, which calls back */
  out->n = rc == 0 ? r.n : in->n;
  if (note[0] != 'l') return 1;
  return 0;
}
int main(void) {
  deep_go_results r;
  wsuper_arena a = {0, 0};
  int rc = deep_go(&a, 1, 0, &r);
  extern char __data_end;
  printf("used=%lu floor_gap=%lu ", (unsigned long)((uintptr_t)__builtin_frame_address(0) - lowest), (unsigned long)(lowest - (uintptr_t)&__data_end));
  printf("rc=%d n=%d levels=%d below=%d\n", rc, rc == 0 ? r.n : -1, levels,
         lowest < (uintptr_t)&__data_end);
  return 0;
}
"""


def test_calls_nested_back_and_forth_cannot_run_a_plugins_stack_into_its_data(tmp_path):
    """A plugin that calls a peer while serving (a callback, a listener) is entered
    again for each call the peer makes back, up to the host's 32 levels, each
    level's frames below the last on wasm's 64 KiB stack, which has nothing below
    it but the plugin's own data.  A serving function with a 1 KiB buffer (a line
    to log) took 2.1 KiB a level: at 32 the stack was 3.7 KiB into the plugin's
    data, and every call said it succeeded.  The skeleton now refuses a call
    (E_OVERLOADED, 'out of stack') when less than WSUPER_STACK_RESERVE is left
    above the data: the peer's chain ends there, the data untouched.  (The
    harness plays the host: its wsuper_call enters the dispatch again.)"""
    import wasmtime

    from supervisor import toolchain
    (tmp_path / "deep.capnp").write_text(DEEP)
    bindgen.generate(str(tmp_path / "deep.capnp"), str(tmp_path))
    (tmp_path / "d.c").write_text(NESTED_HARNESS)
    wasm = tmp_path / "d.wasm"
    toolchain.build([str(tmp_path / "d.c")], str(wasm), include=[str(tmp_path)],
                    extra=["-Wno-attributes"])
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    config.stdout_file = str(tmp_path / "out.txt")
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        assert e.code == 0
    words = dict(w.split("=") for w in (tmp_path / "out.txt").read_text().split())
    assert words["below"] == "0", words          # no frame below the end of the data
    assert words["rc"] == "0" and 1 < int(words["levels"]) < 32, words


SERVED_CUT_SHORT = r"""#include <stdio.h>
#include <setjmp.h>
#include "wsuper.h"
/* the guest ABI's imports, natively: release counts, and "traps" (longjmp: the
 * code that called it never returns, as after a trap or running out of fuel)
 * at the call numbered `trap_at` */
static jmp_buf trap;
static int releases[64], nrelease, trap_at = -1;
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_release(int32_t h) {
  releases[h]++;
  if (nrelease++ == trap_at) longjmp(trap, 1);
  return 0;
}
static int32_t next_handle = 1;
int32_t wsuper_object(int32_t t) { (void)t; return next_handle++; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return -8; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

/* one call served at `frame`: an arena with some blocks and handles 1..4 to go with it */
static void serve(uintptr_t frame, int trap_in_end) {
  uint32_t slot;
  wsuper_arena *a = wsuper_served_begin(frame, &slot);
  if (!a) { printf("refused\n"); return; }
  for (int i = 0; i < 4; i++) if (!wsuper_alloc(a, 5000)) printf("nomem\n");
  for (int32_t i = 0; i < 4; i++) wsuper_release_later(a, wsuper_object(i));
  trap_at = trap_in_end >= 0 ? nrelease + trap_in_end : -1;
  if (setjmp(trap) == 0) wsuper_served_end(slot);
  trap_at = -1;
}

int main(void) {
  /* each call's arena is freed, and each handle released once, even when the
   * code freeing it is cut short at its n-th release */
  for (int cut = 0; cut < 4; cut++) {
    memset(releases, 0, sizeof releases);
    next_handle = 1;
    serve(1000, cut);          /* cut short in its own end */
    serve(1000, -1);           /* the next call at its depth frees what is left */
    for (int h = 1; h <= 8; h++) printf("%d", releases[h]);
    printf(" %u\n", wsuper__nserved);
  }
  return 0;
}
"""


def test_an_arena_whose_free_is_cut_short_is_freed_by_the_next_call(tmp_path):
    """The skeleton frees a served call's arena (its blocks, the handles given to
    wsuper_release_later) as the call ends, in wsuper_served_end: code that can
    be cut short there (fuel_per_call spent in it: a client chooses its input so
    that it is).  The arena was taken off the table of calls served before it was
    freed, so one cut short leaked its blocks (up to message_size of params each
    time) and the handles it had not released yet, for good: the class the table
    is there to close.  Each record and block is now taken off before it is
    released or freed, and the arena stays in the table until it is all freed:
    the next call at its depth frees the rest, every handle released once, no
    block leaked (LeakSanitizer) nor freed twice.  A release that does not return
    (longjmp) plays the trap here, natively."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "t.c").write_text(SERVED_CUT_SHORT)
    exe = tmp_path / "t"
    cmd = ["gcc", "-g", "-Wall", "-Wno-attributes", "-I", os.path.dirname(bindgen.SDK_HEADER),
           "-o", str(exe), str(tmp_path / "t.c")]
    r = subprocess.run(cmd[:1] + ["-fsanitize=address,undefined"] + cmd[1:],
                       capture_output=True, text=True)
    sanitized = r.returncode == 0
    if not sanitized:       # no sanitizer runtime: the counts still tell
        r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]           # LeakSanitizer: nothing leaked
    # handles 1-4 the cut call's, 5-8 the next one's: each released once, none held
    assert r.stdout.splitlines() == ["11111111 0"] * 4


BIG = """@0xd1f0a3b2c4e5f6a1;
interface Big { get @0 () -> (items :List(UInt64)); }
"""

RESULTS_CUT_SHORT = r"""#include <stdio.h>
#include <setjmp.h>
#define WSUPER_SERVE_BIG
#include "big.h"
/* the guest ABI's imports, natively; results_set "traps" (longjmp: the dispatch
 * never returns, as after a trap or running out of fuel_per_call) while `trap` */
static jmp_buf trap;
static int trapping, sent;
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { return t; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return 0; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)c; (void)n;
  if (trapping) longjmp(trap, 1);
  sent += l;
  return 0;
}
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

/* results of 100,000 words, the size of the client's choosing */
int big_serve_get(wsuper_arena *a, int32_t object, const struct big_get_params *in,
                  struct big_get_results *out) {
  (void)object; (void)in;
  out->items.len = 100000;
  out->items.items = WSUPER_ARRAY(a, uint64_t, out->items.len);
  if (!out->items.items) return WSUPER_E_NOMEM;
  for (uint32_t i = 0; i < out->items.len; i++) out->items.items[i] = i;
  return WSUPER_OK;
}

static int32_t call(int cut) {
  trapping = cut;
  if (setjmp(trap)) return -999;      /* cut short in its results */
  return big_dispatch(0, (int64_t)BIG_ID, 0, 0, 0);
}

int main(void) {
  for (int i = 0; i < 3; i++) printf("%d ", call(1));  /* each cut short */
  int32_t rc = call(0);                                 /* then one that ends */
  printf("%d %d %u\n", rc, sent > 800000, wsuper__nserved);
  return 0;
}
"""


def test_results_of_a_call_cut_short_are_freed_by_the_next_call(tmp_path):
    """The generated dispatch built a call's results in a builder of its frame,
    whose buffer (up to message_size, its size the client's to choose) was freed
    once they were sent: a call cut short while they were built or sent (fuel_per_call
    spent in the fill of a large list) lost it for good, each time, until every
    caller's calls failed out of memory.  The builder is now the call's arena's
    (wsuper_served_results), and its buffer freed with it: by the next call at its
    depth.  A results_set that does not return (longjmp) plays the trap here,
    natively; LeakSanitizer says whether anything was lost."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "big.capnp").write_text(BIG)
    bindgen.generate(str(tmp_path / "big.capnp"), str(tmp_path))
    (tmp_path / "t.c").write_text(RESULTS_CUT_SHORT)
    exe = tmp_path / "t"
    cmd = ["gcc", "-g", "-Wall", "-Wno-attributes", "-I", str(tmp_path), "-o", str(exe),
           str(tmp_path / "t.c")]
    r = subprocess.run(cmd[:1] + ["-fsanitize=address,undefined"] + cmd[1:],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("no sanitizer runtime: a leak cannot be seen")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]           # LeakSanitizer: nothing leaked
    # three calls cut short, then one answered in full; no call left in the table
    assert r.stdout.split() == ["-999", "-999", "-999", "0", "1", "0"]


BIG_AGAIN = BIG.replace("@0xd1f0a3b2c4e5f6a1", "@0xd1f0a3b2c4e5f6b7")    # ids: once a process

GROWTH_CUT_SHORT = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <setjmp.h>
/* The allocator, with the points where wasmtime checks fuel: the entry of each
 * function (a plugin's malloc, realloc and free are wasm functions of its libc).
 * `cut` > 0: the cut-th entry while the results are built "traps" (longjmp: the
 * dispatch never returns, as after running out of fuel_per_call there).  realloc
 * is wasi-libc's dlmalloc's when the block cannot grow in place: malloc a new
 * one, copy, free the old one. */
static jmp_buf trap;
static int cut, entries, filling;
static void entry(void) { if (filling && ++entries == cut) longjmp(trap, 1); }
static void *t_malloc(size_t n) { entry(); return malloc(n); }
static void t_free(void *p) { entry(); free(p); }
static void *t_realloc(void *p, size_t n) {
  entry();
  if (!p) return t_malloc(n);
  void *q = t_malloc(n);
  if (!q) return NULL;
  size_t had = malloc_usable_size(p);
  memcpy(q, p, had < n ? had : n);
  t_free(p);
  return q;
}
#define malloc t_malloc
#define free t_free
#define realloc t_realloc
#define WSUPER_SERVE_BIG
#include "big.h"
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { return t; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return 0; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n;
#ifndef TO_THE_END
  filling = 0;          /* the results are built: the cuts looked at end here */
#endif
  return 0;
}
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

/* results of 20,000 words: the builder grows a dozen times while they are filled */
int big_serve_get(wsuper_arena *a, int32_t object, const struct big_get_params *in,
                  struct big_get_results *out) {
  (void)object; (void)in;
  out->items.len = 20000;
  out->items.items = WSUPER_ARRAY(a, uint64_t, out->items.len);
  if (!out->items.items) return WSUPER_E_NOMEM;
  for (uint32_t i = 0; i < out->items.len; i++) out->items.items[i] = i;
  filling = 1;          /* from here to results_set: the results are built */
  entries = 0;
  return WSUPER_OK;
}

static int32_t call(int at) {
  cut = at;
  filling = 0;
  if (setjmp(trap)) return -999;      /* cut short while its results grew */
  return big_dispatch(0, (int64_t)BIG_ID, 0, 0, 0);
}

int main(void) {
  int cuts = 0;
  for (int at = 1; at < 200; at++) {
    int32_t rc = call(at);
    if (rc != -999) break;            /* past the last allocator entry */
    cuts++;
  }
  int32_t rc = call(0);               /* then one that ends: frees what was left */
  printf("%d %d %u\n", cuts, rc, wsuper__nserved);
  return 0;
}
"""


def test_results_growing_when_a_call_is_cut_short_leave_nothing_lost(tmp_path, defines=(),
                                                                      schema=BIG_AGAIN):
    """The results builder grew its buffer with realloc, which (dlmalloc, when the
    block cannot grow in place) mallocs the new block, copies and frees the old
    one: a call that ran out of fuel_per_call at the entry of that free (wasmtime
    checks fuel at each function's entry; the client picks the results' size, so
    where the budget ends) left the builder holding the old buffer and nobody the
    new, twice as large: lost for good, each time.  The builder now names the new
    buffer before anything can cut it short, and the old one until it is freed.
    Every allocator entry while the results grow is cut in turn; LeakSanitizer
    says whether anything was lost, AddressSanitizer whether anything was freed
    twice."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "big.capnp").write_text(schema)
    bindgen.generate(str(tmp_path / "big.capnp"), str(tmp_path))
    (tmp_path / "t.c").write_text(GROWTH_CUT_SHORT)
    exe = tmp_path / "t"
    cmd = ["gcc", "-g", "-Wall", "-Wno-attributes", "-fsanitize=address,undefined",
           "-I", str(tmp_path), "-o", str(exe), str(tmp_path / "t.c"), *defines]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("no sanitizer runtime: a leak cannot be seen")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]           # LeakSanitizer: nothing leaked
    cuts, rc, left = r.stdout.split()
    assert int(cuts) >= 4 and (rc, left) == ("0", "0"), r.stdout   # cut in turn; then served


def test_a_call_cut_short_as_it_frees_what_it_held_leaves_nothing_lost(tmp_path):
    """The skeleton frees a call's results buffer and arena blocks as the call
    ends, each taken off before its free() so that code cut short there never
    frees it twice; but wasmtime checks fuel at free's entry, where the client can
    make the call's budget end (its input sets the work before): cut there, the
    buffer or block (up to message_size) was named nowhere and lost for good, each
    time.  Each is now named (the builder's `spare`, the arena's `freeing`) until
    free() has returned, and the next call frees it.  The cuts of the test above,
    swept on to the end of the dispatch (the results sent, the arena freed)."""
    test_results_growing_when_a_call_is_cut_short_leave_nothing_lost(
        tmp_path, defines=("-DTO_THE_END",),
        schema=BIG.replace("@0xd1f0a3b2c4e5f6a1", "@0xd1f0a3b2c4e5f6b8"))


OBJECT_FOR_CUT_SHORT = r"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
/* malloc "traps" (longjmp) at its cut-th entry, where wasmtime checks fuel */
static jmp_buf trap;
static int cut, entries;
static void *t_malloc(size_t n) { if (++entries == cut) longjmp(trap, 1); return malloc(n); }
#define malloc t_malloc
#include "wsuper.h"
static int made, released;
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) { (void)h; (void)i; (void)m; (void)p; (void)l; (void)c;
                    (void)n; (void)o; return -1; }
int32_t wsuper_reply_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_release(int32_t h) { (void)h; released++; return 0; }
int32_t wsuper_object(int32_t t) { (void)t; return ++made; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return -8; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return -8; }
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

int main(void) {
  int cuts = 0;
  for (int at = 1; at < 20; at++) {
    wsuper_arena a = {0, 0};
    cut = at;
    entries = 0;
    if (setjmp(trap) == 0) {            /* a server function handing out objects */
      for (int32_t i = 0; i < 3; i++) wsuper_object_for(&a, i);
    } else {
      cuts++;
    }
    cut = 0;
    wsuper_arena_free(&a);              /* what the next call frees */
  }
  printf("%d %d\n", cuts, made - released);
  return 0;
}
"""


def test_an_object_handed_out_by_a_call_cut_short_is_released(tmp_path):
    """wsuper_object_for made the handle (wsuper_object) and then allocated the
    record that releases it with the arena: a call that ran out of fuel_per_call
    at that malloc's entry (wasmtime checks fuel at each function's entry; the
    client sets the work before) left the handle in the plugin's c-list, named
    nowhere, for good: one a call, until the c-list was full and every caller's
    calls that take or hand out a capability failed.  The record is allocated
    first, and the handle made and recorded with no function entry between."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "t.c").write_text(OBJECT_FOR_CUT_SHORT)
    exe = tmp_path / "t"
    cmd = ["gcc", "-g", "-Wall", "-Wno-attributes", "-I", os.path.dirname(bindgen.SDK_HEADER),
           "-o", str(exe), str(tmp_path / "t.c")]
    r = subprocess.run(cmd[:1] + ["-fsanitize=address,undefined"] + cmd[1:],
                       capture_output=True, text=True)
    if r.returncode != 0:       # no sanitizer runtime: the counts still tell
        r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    cuts, held = r.stdout.split()
    assert int(cuts) == 3 and held == "0", r.stdout     # each malloc cut; none held


SINK = """@0xd1f0a3b2c4e5f6c3;
interface Sink { put @0 (items :List(UInt64)) -> (); }
"""

PARAMS_CUT_SHORT = r"""#include <stdio.h>
#include <string.h>
#include <setjmp.h>
#include "sink.h"
/* the guest ABI's imports, natively; call "traps" (longjmp: the code making it
 * never returns, as when the engine cuts off a call past its call_time at its
 * next host call, or fuel_per_call runs out) while `trapping` */
static jmp_buf trap;
static int trapping, sent;
int32_t wsuper_lookup(const char *n, int32_t l) { (void)n; (void)l; return -7; }
int32_t wsuper_call(int32_t h, int64_t i, int32_t m, const void *p, int32_t l, const int32_t *c,
                    int32_t n, void *o) {
  (void)h; (void)i; (void)m; (void)p; (void)c; (void)n;
  if (trapping) longjmp(trap, 1);
  sent += l;
  ((int32_t *)o)[0] = 16; ((int32_t *)o)[1] = 0;     /* empty results */
  return 0;
}
int32_t wsuper_reply_read(void *b, int32_t *c) {
  (void)c;
  static const uint8_t empty[16] = {0, 0, 0, 0, 1, 0, 0, 0};
  memcpy(b, empty, 16);
  return 0;
}
int32_t wsuper_keep(int32_t h) { (void)h; return 0; }
int32_t wsuper_release(int32_t h) { (void)h; return 0; }
int32_t wsuper_object(int32_t t) { return t; }
int32_t wsuper_params_read(void *b, int32_t *c) { (void)b; (void)c; return 0; }
int32_t wsuper_results_set(const void *b, int32_t l, const int32_t *c, int32_t n) {
  (void)b; (void)l; (void)c; (void)n; return 0;
}
int32_t wsuper_fail(const char *m, int32_t l) { (void)m; (void)l; return 0; }

static uint64_t items[100000];

static int put(wsuper_arena *a, int cut) {
  trapping = cut;
  if (setjmp(trap)) return -999;      /* cut short as its params went out */
  wsuper_list_u64 l = {items, 100000};
  return sink_put(a, 5, l);
}

int main(void) {
  wsuper_arena a = {0};
  for (int i = 0; i < 3; i++) printf("%d ", put(&a, 1));   /* each cut short */
  printf("%d ", put(&a, 0));                               /* then one that ends */
  wsuper_arena_free(&a);      /* a served call's arena: freed by the next call */
  wsuper_arena b = {0};
  printf("%d ", put(&b, 1));                               /* cut short, freed with it */
  wsuper_arena_free(&b);
  printf("%d\n", sent > 800000);
  return 0;
}
"""


def test_params_of_a_call_out_cut_short_are_freed_with_the_arena(tmp_path):
    """A generated client stub built a call's params in a builder of its own frame,
    its buffer (up to message_size: a list the caller's to size, often a client's
    data passed on) freed once wsuper_call had returned: a call cut short there
    lost it for good, each time, the class of the results' builder
    (wsuper_served_results).  The engine cuts a call past its call_time off at its
    next host call, so at exactly that wsuper_call: a client that makes a plugin's
    call wait (an observer it passed in that answers late) before the plugin passes
    its data on had 800 KB lost in the plugin's shared instance each time, until
    every caller's calls failed out of memory.  The stub's builder is now the
    arena's (wsuper_params_builder): freed with it, by the next call at its depth
    for a served call's.  A call that does not return (longjmp) plays the cut
    here, natively; LeakSanitizer says whether anything was lost."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (every supported machine has it)")
    (tmp_path / "sink.capnp").write_text(SINK)
    bindgen.generate(str(tmp_path / "sink.capnp"), str(tmp_path))
    (tmp_path / "t.c").write_text(PARAMS_CUT_SHORT)
    exe = tmp_path / "t"
    cmd = ["gcc", "-g", "-Wall", "-Wno-attributes", "-I", str(tmp_path), "-o", str(exe),
           str(tmp_path / "t.c")]
    r = subprocess.run(cmd[:1] + ["-fsanitize=address,undefined"] + cmd[1:],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("no sanitizer runtime: a leak cannot be seen")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]           # LeakSanitizer: nothing leaked
    assert r.stdout.split() == ["-999", "-999", "-999", "0", "-999", "1"]
