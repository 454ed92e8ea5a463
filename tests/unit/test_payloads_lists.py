"""Results with lists of Text or of flat structs (Directory.list, Environment.args
and vars) are built without pycapnp (payloads._build_lists): to the very bytes
pycapnp's builder writes when it has one segment large enough, and so to the
values it reads back; and whatever this builder does not take as it is goes to
pycapnp, which builds it or raises as it always did."""
import os
import random

import pytest

from capnp_schemas import hosted, payloads
from supervisor import hostfs
from supervisor.hostfs import LIST_PAGE_BYTES, LIST_PAGE_ENTRIES

LISTY = [(f"{iface.name}.{m.name} {side}", sm)
         for iface in hosted.BY_KIND.values() for m in iface.methods
         for side, sm in (("params", m.params), ("results", m.results))
         if payloads._lists(sm) is not None]
DIR_LIST = next(m.results for m in hosted.BY_KIND["directory"].methods if m.name == "list")
KINDS = ("file", "directory", "other", "symlink")
ALPHABET = "aZ09._- \u00e9\u00df\u4e2d\U0001f600\u200b"


def _name(rng, length=None):
    length = rng.randrange(40) if length is None else length
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def _pycapnp_one_segment(sm, values) -> bytes:
    msg = sm.new_message(num_first_segment_words=1 << 20)
    payloads._fill(msg, values)
    segs = msg.to_segments()
    assert len(segs) == 1
    return bytes(segs[0])


def _ours(sm, values) -> bytes:
    built = payloads._build_lists(payloads._lists(sm), values)
    assert built is not None, "not built here (went to pycapnp)"
    content, caps = payloads.build(sm, values)
    assert not caps and content.segments == built.segments
    return bytes(built.segments[0])


def _same_as_pycapnp(sm, values):
    ours = _ours(sm, values)
    assert ours == _pycapnp_one_segment(sm, values)
    got = payloads._read_pycapnp(sm, payloads.build(sm, values)[0], 1 << 22)
    assert got == payloads._read_pycapnp(sm, payloads._build_pycapnp(sm, values)[0], 1 << 22)
    return got


def test_the_list_results_of_the_host_interfaces_are_built_here():
    names = {n for n, _sm in LISTY}
    assert {"Directory.list results", "Environment.args results",
            "Environment.vars results"} <= names


def _entry(rng, name):
    return {"name": name, "kind": rng.choice(KINDS), "inode": rng.randrange(1 << 64),
            "cursor": rng.randrange(1 << 63)}


def test_a_listing_page_is_the_bytes_pycapnp_writes_for_names_of_every_length():
    rng = random.Random("lengths")
    entries = [_entry(rng, _name(rng, n)) for n in range(0, 300)]       # every padding
    entries += [_entry(rng, "x" * 255), _entry(rng, "\u00e9" * 127), _entry(rng, "\U0001f600" * 63)]
    values = {"entries": entries, "cursor": 77, "done": False, "inode": 5}
    got = _same_as_pycapnp(DIR_LIST, values)
    assert got["entries"] == entries and got["cursor"] == 77 and got["inode"] == 5


@pytest.mark.parametrize("count", [0, 1, 2, 7, 8, 9, LIST_PAGE_ENTRIES])
def test_a_listing_page_of_any_count_is_the_bytes_pycapnp_writes(count):
    rng = random.Random(count)
    entries = [_entry(rng, _name(rng)) for _ in range(count)]
    for done in (True, False):
        values = {"entries": entries, "cursor": rng.randrange(1 << 64), "done": done,
                  "inode": rng.randrange(1 << 64)}
        assert _same_as_pycapnp(DIR_LIST, values)["entries"] == entries


def test_a_real_full_page_of_a_big_directory_is_the_bytes_pycapnp_writes(tmp_path):
    for i in range(3000):
        os.close(os.open(tmp_path / f"file-{i:06d}-\u00e9.txt", os.O_CREAT | os.O_WRONLY))
    d = hostfs.Directory.grant(str(tmp_path))
    try:
        page = d.list("", 0)
        assert not page["done"] and page["entries"]
        assert len(_same_as_pycapnp(DIR_LIST, page)["entries"]) == len(page["entries"])
        assert len(_ours(DIR_LIST, page)) <= LIST_PAGE_BYTES      # the page limit holds
    finally:
        d.close()


@pytest.mark.parametrize("name, sm", LISTY, ids=[n for n, _ in LISTY])
def test_random_values_build_to_the_bytes_pycapnp_writes(name, sm):
    rng = random.Random(name)
    layout = payloads._lists(sm)
    for _ in range(40):
        values = {}
        for lname, lf in layout.lists.items():
            n = rng.choice((0, 1, 3, 17, 100))
            if lf.element is None:
                values[lname] = [_name(rng) for _ in range(n)]
            else:
                values[lname] = [_element_values(rng, lf.element) for _ in range(n)]
        for f in layout.head[2]:
            if rng.random() < 0.8:
                values[f.name] = _flat_value(rng, f)
        _same_as_pycapnp(sm, values)


def _element_values(rng, el):
    out = {}
    for name, (role, detail) in zip(el.names, el.roles):
        if role == "t":
            out[name] = _name(rng)
        elif role == "e":
            out[name] = rng.choice(list(detail))
        else:
            out[name] = rng.randrange(1 << 16)
    # the dict in the schema's pointer order for its Text (as the host code makes them)
    texts = sorted((detail, name) for name, (role, detail) in zip(el.names, el.roles)
                   if role == "t")
    return {**{n: out[n] for _d, n in texts}, **out}


def _flat_value(rng, f):
    if f.kind == "bool":
        return rng.random() < 0.5
    if f.kind == "text":
        return _name(rng)
    if f.kind == "data":
        return rng.randbytes(rng.randrange(20))
    if f.values is not None:
        return rng.choice(list(f.values))
    return rng.randrange(1 << (8 * f.codec.size - 1))


BAD = [
    ("an enum value the schema lacks", {"kind": "pipe"}),
    ("a number for an enum", {"kind": 1}),
    ("bytes for a name", {"name": b"x"}),
    ("a name pycapnp cannot encode", {"name": "a\ud800b"}),
    ("an inode past 64 bits", {"inode": 1 << 64}),
    ("a negative cursor", {"cursor": -1}),
    ("a float inode", {"inode": 1.0}),
    ("a field the schema lacks", {"size": 3}),
]


@pytest.mark.parametrize("what, change", BAD, ids=[w for w, _ in BAD])
def test_values_not_built_here_go_to_pycapnp_which_answers_as_before(what, change):
    rng = random.Random(what)
    entries = [_entry(rng, _name(rng)) for _ in range(5)]
    entries[3] = {**entries[3], **change}
    values = {"entries": entries, "cursor": 1, "done": True, "inode": 2}
    assert payloads._build_lists(payloads._lists(DIR_LIST), values) is None
    try:
        theirs = payloads._read_pycapnp(DIR_LIST, payloads._build_pycapnp(DIR_LIST, values)[0],
                                        1 << 20)
    except Exception as e:  # noqa: BLE001 - whatever pycapnp raises, build raises
        with pytest.raises(type(e)):
            payloads.build(DIR_LIST, values)
    else:
        assert payloads._read_pycapnp(DIR_LIST, payloads.build(DIR_LIST, values)[0],
                                      1 << 20) == theirs


def test_a_missing_field_of_an_element_goes_to_pycapnp_and_reads_as_its_default():
    values = {"entries": [{"name": "a", "kind": "file", "inode": 1}], "done": True}
    assert payloads._build_lists(payloads._lists(DIR_LIST), values) is None
    got = payloads._read_pycapnp(DIR_LIST, payloads.build(DIR_LIST, values)[0], 1 << 20)
    assert got["entries"] == [{"name": "a", "kind": "file", "inode": 1, "cursor": 0}]
