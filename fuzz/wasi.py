"""Fuzzing the WASI layer with hostile calls, differentially against wasmtime's own WASI.

    python -m fuzz.wasi --seeds 1-200 --calls 60

Owns: the check that compartments/wasi.py (and the supervisor's hostfs behind
it) answers every `wasi_snapshot_preview1` call a guest can make, with any
arguments, with an errno or a trap that names the function, and the same
errno, out-values and effect on the directory tree as wasmtime-py's WASI,
except where docs/guest-abi.md documents a difference (`documented`).  Must
not: be imported by wsuper itself, or accept a difference it has not named.

Each seed is one program: a generated WAT module whose `_start` makes a
sequence of WASI calls (`calls`) with hostile arguments (pointers and lengths
at and past the end of memory and past 2^31 and 2^32, iovec and subscription
counts from 0 to huge, bad descriptors, closed and renumbered ones, paths with
NUL, `..` (after a link too, to the preopen and past it), absolute, through
links of each kind (dangling, chained, looping alone and in pairs, with an
absolute target, leading out), 4 KiB long, not UTF-8, with trailing slashes, flags and
rights with bits witx has not, whence, advice and clock ids out of range,
poll_oneoff subscriptions of every kind, readdir cookies of any value,
args/environ into small buffers) and, after each call, writes a record to
fd 1: the call's number, its errno and the first WINDOW bytes of the area its
out-values go to (filled with 0xAA first).  The same module runs under
wasmtime-py's WASI (in this process) and under `wsuper up` (real supervisor,
real engines: one system of `--batch` compartments, one per seed), each on a
fresh copy of the same tree (`make_tree`) preopened as /sandbox.

Checks, per seed:
1. wsuper: the program ends (exit 0) or traps, and a trap's reason names the
   WASI function whose arguments were out of memory (`compartment app7
   failed: trapped: wasi_snapshot_preview1.fd_write: guest passed out-of-range memory
   ...`); no Python traceback or internal error, no engine gone, no hang (a
   generous timeout: 300 s for a system whose calls take a few seconds).
2. each call's errno, its out-values where both succeeded (what `_decode`
   reads: numbers, bytes read, names listed; never inodes, times or rights,
   which differ by design), whether it trapped, and at the end the tree
   (names, kinds, contents, link targets), the same as under wasmtime,
   unless `documented` names the difference (DOCUMENTED: each rule quotes
   docs/guest-abi.md, or policy-reference.md).  A documented difference ends
   the comparison of its seed when it leaves the two runs in states that
   differ (`parts`: a trap, or one did what the other refused); others go on.
   So that most calls are compared, the arguments that trap under wasmtime
   (pointers past memory, flag and enum values witx has not) are rare but in
   each seed's last call (`Gen.scale`).

Figures are printed at the end: seeds, calls made under wsuper, answers
compared, seeds whose trees were compared, documented differences, findings.
`--trace SEED` prints one seed's calls and both runs' answers; `--show SEED`
its calls only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from compartments import wasi as W
from compartments.abi import WASI_IMPORTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E = W.ERRNO
NAMES = {v: k for k, v in E.items()}
PAGES = 2
MEM = PAGES * 65536
IN, IN_SIZE = 4096, 12288          # each call's input (paths, iovecs, subscriptions)
OUT, OUT_SIZE = 16384, 4096        # where its out-values go, 0xAA before each call
WINDOW = 1032                      # bytes of OUT each record carries (nread at OUT + 1024)
REC = 32768                        # the record: magic, call number, errno, window
KIND_AT = OUT + 512                # a path_open's fd_fdstat_get after it (its filetype)
MAGIC = b"WSFZrec\0"
REC_SIZE = len(MAGIC) + 8 + WINDOW
IOV, NWRITTEN = REC - 16, REC - 8
ARGS = ["one", "two words", ""]
ENV = {"K": "V", "EMPTY": "", "LONG": "x" * 100}

# ------------------------------------------------------------------ the tree


def make_tree(parent: str) -> str:
    """The tree each run starts from, in parent/sandbox (and parent/outside.txt)."""
    d = os.path.join(parent, "sandbox")
    os.makedirs(os.path.join(d, "d", "e"))
    with open(os.path.join(parent, "outside.txt"), "w") as f:
        f.write("outside\n")
    for name, text in (("a.txt", "hello world\n"), ("d/f", "f\n"), ("empty", "")):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    for name, target in LINKS:
        os.symlink(target, os.path.join(d, name))
    return d


#: the tree's symbolic links (name, target)
LINKS = (("ln", "a.txt"), ("dl", "nothing"), ("dd", "d"), ("loop", "loop"),
         ("up", "../outside.txt"), ("d/back", "../a.txt"),
         ("ll", "ln"), ("la", "lb"), ("lb", "la"), ("abs", "/etc/passwd"))
#: those at the tree's top that lead out of it (followed: EPERM under both)
LEAVING = {name.encode() for name, target in LINKS
           if "/" not in name and (target.startswith("/") or target.startswith("../"))}


def _leaves(p: bytes) -> bool:
    """Whether resolving `p` in the tree's top directory may leave it: an absolute
    path, a `..` past the top, or one of the tree's links that lead out (LEAVING)."""
    if p.startswith(b"/"):
        return True
    depth = 0
    for part in p.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif depth == 0 and part in LEAVING:
            return True
        else:
            depth += 1
    return False


def tree(d: str) -> list:
    """What a run left: (path, kind, content or link target) of everything under d."""
    out = []
    for base, dirs, files in os.walk(d):
        for name in sorted(dirs + files):
            p = os.path.join(base, name)
            rel = os.path.relpath(p, d)
            if os.path.islink(p):
                out.append((rel, "link", os.readlink(p)))
            elif os.path.isdir(p):
                out.append((rel, "dir", ""))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    data = f.read(1 << 16)
                out.append((rel, "file", f"{os.path.getsize(p)}:{data[:4096]!r}"))
            else:
                out.append((rel, "other", ""))
    return sorted(out)


# ------------------------------------------------------------------ arguments

FDS = [0, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 6, 7, 8, 9, 1023, 1024, 0x7FFFFFFF, 0xFFFFFFFF]
PATHS = [b"a.txt", b"a.txt", b"d", b"d/f", b"d/e", b"ln", b"dl", b"dd", b"loop", b"up",
         b"d/back", b"empty", b"new", b"new", b"n2", b"d/new", b"d/e/new", b".", b"..",
         b"../x", b"/etc/passwd", b"/", b"", b"a.txt/", b"d/", b"d/..", b"d/../a.txt",
         b"dd/", b"ln/", b"dl/", b"new/", b"a\0b", b"\xff\xfe", b"d\xc3(", b"x" * 300,
         b"a/" * 2100, b"./" * 2047 + b"a.txt", b"d/e/..", b"new/x", b"loop/x",
         # chains, two links in a loop, an absolute target; '..' after a link, to the
         # preopen's own directory and past it from deeper down
         b"ll", b"ll/", b"la", b"abs", b"abs/", b"dd/..", b"dd/../a.txt", b"d/e/../..",
         b"d/e/../../..", b"d/./e/."]
EDGE_PTRS = [MEM - 1, MEM - 4, MEM - 8, MEM, MEM + 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFC,
             0xFFFFFFFF]
HUGE = [MEM, MEM + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
FLAG16 = [0x10, 0x20, 0x8000, 0x10000, 0xFFFFFFFF]     # bits witx has not (u16 flags)
U64S = [0, 1, 5, 4096, 1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


class Call:
    """One call: its function, its arguments, the input bytes placed at IN, and its
    out-values (label, kind, address) for _decode."""

    def __init__(self, name, args, blob=b"", outs=(), note=""):
        self.name, self.args, self.blob, self.outs, self.note = name, args, blob, list(outs), note
        self.wild = False       # an argument may reach past linear memory
        self.on_empty = False   # its descriptor is an empty standard one (compare sets it)
        self.climbing = set()   # names of links whose target has '..', now (compare sets it)
        self.rights = None      # the rights its descriptor was opened with, if known (too)
        self.paths = []         # the paths in its input, in order (None: not known)
        self.empty = False      # its iovecs, if any, hold no bytes
        self.changed = False    # a call before it changed the tree (compare sets it)
        self.after_unseen = False   # an open whose number was not seen came before (too)
        # what each descriptor paths are resolved from (`_dirfds`; fd_ and sock_ calls:
        # their descriptor) is, as far as compare knows: "dir", "other" (open, not a
        # directory), "open" (of a kind not seen) or None (not open, or opened with
        # its number not seen: then after_unseen)
        self.kinds = ()
        self.stdio = {}         # where the standard descriptors are now: fd -> "in"/"out"
        self.poll = []          # poll_oneoff: its subscriptions, as compare knows them

    def describe(self) -> str:
        shown = [hex(a) if isinstance(a, int) and a > 4096 else a for a in self.args]
        return f"{self.name}({', '.join(map(str, shown))}){' ' + self.note if self.note else ''}"


class Gen:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.wilds = 0
        self.scale = 1          # 150 in a seed's last call: every kind of trap

    def pick(self, xs):
        return self.rng.choice(xs)

    def hostile(self, p=0.06) -> bool:
        return self.rng.random() < p

    def wild(self) -> bool:
        """Whether a pointer goes past memory: rarely but in a seed's last call, since
        the first that does ends the program (a trap), and the seed's comparison."""
        if self.rng.random() < 0.002 * self.scale:
            self.wilds += 1
            return True
        return False

    def odd(self, p: float) -> bool:
        """Whether a flag or enum argument takes a value witx has not: wasmtime traps
        on one, so rarely but in a seed's last call."""
        return self.rng.random() < p * self.scale / 20

    def fd(self):
        return self.pick(FDS)

    def out(self, size: int, at: int = 0):
        """An out pointer: in OUT mostly, now and then at or past the end of memory,
        unaligned, or on the input."""
        if self.wild():
            return self.pick(EDGE_PTRS + [MEM - size + 1])
        if self.hostile():
            return self.pick([MEM - size, 0, 3, IN, OUT + at + 1])
        return OUT + at

    def path(self, blob: bytearray, note: list):
        """(ptr, len) of a path put in the input."""
        p = self.pick(PATHS) if self.rng.random() < 0.9 else bytes(
            self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 12)))
        at = IN + len(blob)
        blob += p
        note.append(repr(p[:40]) + (f"+{len(p) - 40}" if len(p) > 40 else ""))
        n = len(p)
        if self.hostile():
            what = self.rng.randrange(4)
            if what == 0 and self.wild():
                n = self.pick(HUGE)
            elif what == 1 and self.wild():
                at = self.pick(EDGE_PTRS)
            elif what == 2:
                at, n = MEM - len(p), len(p)          # valid, at the very end
                p = None                              # (whatever is there)
                note.append("at the end of memory")
            else:
                n = max(0, n - 1)
                p = p[:n]
                note.append(f"cut to {n}")
        self.paths.append(p)
        return at, n

    def iovecs(self, blob: bytearray, reading: bool, note: list):
        """(ptr, count) of an iovec array, and the data a write sends, in the input."""
        count = self.pick([0, 1, 1, 1, 2, 3])
        if self.hostile(0.05):
            count = 1024
        elif self.odd(0.2):
            count = self.pick([1025, 4096, 0x7FFFFFFF, 0xFFFFFFFF])
        data = bytes(self.rng.choice(b"abcdef\n") for _ in range(self.rng.randrange(0, 40)))
        vecs = []
        for i in range(min(count, 8 if count < 1024 else 1024)):
            if reading:
                ptr, n = OUT + 64 * i, self.pick([0, 1, 5, 32, 64])
            else:
                ptr, n = IN + IN_SIZE - 256, len(data)
            if self.wild():
                ptr = self.pick(EDGE_PTRS)
            if self.wild():
                n = self.pick(HUGE)
            elif self.hostile():
                n = MEM - ptr if ptr < MEM else 0          # up to the very end
            vecs.append((ptr & 0xFFFFFFFF, n & 0xFFFFFFFF))
        self.empty = not any(n for _, n in vecs)
        while len(blob) % 4:
            blob.append(0)
        at = IN + len(blob)
        for ptr, n in vecs:
            blob += struct.pack("<II", ptr, n)
        if not reading:
            blob += b"\0" * (IN_SIZE - 256 - len(blob))
            blob += data
        note.append(f"iovs={vecs[:4]}{'...' if len(vecs) > 4 else ''}")
        if self.wild():
            at = self.pick(EDGE_PTRS + [MEM - 8 * max(1, count) + 4])
        return at, count

    def rights(self):
        return self.pick([W.ALL_RIGHTS, W.ALL_RIGHTS, W.RIGHT_FD_READ, W.RIGHT_FD_WRITE,
                          W.RIGHT_FD_READ | W.RIGHT_FD_WRITE, 0, W.FILE_RIGHTS, W.DIR_RIGHTS,
                          W.ALL_RIGHTS & ~W.RIGHT_FD_SEEK]
                         + ([1 << 30, (1 << 64) - 1] if self.odd(0.3) else []))

    def call(self) -> Call:
        name = self.pick(FUNCS)
        self.wilds, self.paths, self.empty = 0, [], False
        c = getattr(self, "g_" + name, self.g_any)(name)
        c.wild, c.paths = self.wilds > 0, self.paths
        c.empty = self.empty
        return c

    # each g_NAME returns a Call ---------------------------------------------------

    def g_any(self, name):
        params, _ = WASI_IMPORTS[name]
        args = [self.fd() if i == 0 else self.pick([0, 1, OUT]) for i, _ in enumerate(params)]
        return Call(name, args)

    def _sizes(self, name):
        a, b = self.out(4), self.out(4, 8)
        return Call(name, [a, b], outs=[("count", "u32", a), ("size", "u32", b)])

    g_args_sizes_get = g_environ_sizes_get = _sizes

    def _strings(self, name):
        argv = self.out(16)
        buf = self.pick([MEM - 2, MEM - 8, MEM - 24, MEM - 40]) if self.wild() else OUT + 64
        return Call(name, [argv, buf], outs=[("strings", "strings", OUT + 64)]
                    if buf == OUT + 64 else [])

    g_args_get = g_environ_get = _strings

    def _clock(self, name):
        clock = self.pick([0, 1, 2, 3, 0, 1] + ([4, 0xFFFFFFFF, 0x100] if self.odd(0.4)
                                                 else []))
        args = [clock, self.out(8)] if name == "clock_res_get" else \
            [clock, self.pick(U64S), self.out(8)]
        return Call(name, args)

    g_clock_res_get = g_clock_time_get = _clock

    def g_fd_advise(self, name):
        return Call(name, [self.fd(), self.pick(U64S), self.pick(U64S),
                           self.pick([0, 1, 2, 3, 4, 5] + ([6, 256, 0xFFFFFFFF]
                                                           if self.odd(0.4) else []))])

    def g_fd_allocate(self, name):
        return Call(name, [self.fd(), self.pick(U64S), self.pick(U64S)])

    def g_fd_close(self, name):
        return Call(name, [self.pick([0, 2, 3, 4, 4, 5, 5, 6, 7, 1024, 0xFFFFFFFF])])

    def g_fd_renumber(self, name):
        return Call(name, [self.pick([0, 2, 3, 4, 5, 6, 9, 0xFFFFFFFF]),
                           self.pick([0, 2, 3, 4, 5, 6, 7, 9, 1024, 0xFFFFFFFF])])

    def _fd_only(self, name):
        return Call(name, [self.fd()])

    g_fd_datasync = g_fd_sync = _fd_only

    def g_fd_fdstat_get(self, name):
        o = self.out(24)
        return Call(name, [self.fd(), o], outs=[("filetype", "u8", o), ("flags", "u16", o + 2)])

    def g_fd_fdstat_set_flags(self, name):
        return Call(name, [self.fd(), self.pick([0, 1, 1, 4, 5, 2, 8, 16]
                                                + (FLAG16 if self.odd(0.4) else []))])

    def g_fd_fdstat_set_rights(self, name):
        return Call(name, [self.fd(), self.rights(), self.rights()])

    def g_fd_filestat_get(self, name):
        o = self.out(64)
        return Call(name, [self.fd(), o], outs=[("stat", "filestat", o)])

    def g_fd_filestat_set_size(self, name):
        return Call(name, [self.fd(), self.pick([0, 3, 100, 1 << 20, (1 << 63) - 1, 1 << 63,
                                                 (1 << 64) - 1])])

    def _fst(self):
        return self.pick([0, 1, 2, 4, 8, 5, 10, 3, 12, 15]
                         + ([16, 0x10000, 0xFFFFFFFF] if self.odd(0.4) else []))

    def g_fd_filestat_set_times(self, name):
        return Call(name, [self.fd(), self.pick(U64S), self.pick(U64S), self._fst()])

    def _rw(self, name):
        blob, note = bytearray(), []
        reading = name in ("fd_read", "fd_pread")
        iovs, n = self.iovecs(blob, reading, note)
        args = [self.fd(), iovs, n]
        if name in ("fd_pread", "fd_pwrite"):
            args.append(self.pick(U64S[:6] + [3, 12]))
        o = self.out(4, 1024)
        args.append(o)
        outs = [("n", "u32", o)]
        if reading:
            outs.append(("data", "iovdata", (iovs, n, blob)))
        return Call(name, args, bytes(blob), outs, " ".join(note))

    g_fd_read = g_fd_pread = g_fd_write = g_fd_pwrite = _rw

    def g_fd_prestat_get(self, name):
        o = self.out(8)
        return Call(name, [self.fd(), o], outs=[("tag", "u8", o), ("len", "u32", o + 4)])

    def g_fd_prestat_dir_name(self, name):
        n = self.pick([0, 1, 7, 8, 9, 100] + (HUGE if self.wild() else []))
        o = self.out(max(0, min(n, 256)))
        return Call(name, [self.fd(), o, n], outs=[("name", "bytes8", o)])

    def g_fd_readdir(self, name):
        n = self.pick([0, 1, 23, 24, 30, 64, 128, 256, 500] + (HUGE if self.wild() else []))
        buf = self.out(n)
        used = self.out(4, 1024)
        cookie = self.pick([0, 0, 0, 1, 2, 3, 5, 8, 100, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
                            1 << 63, (1 << 64) - 1])
        return Call(name, [self.fd(), buf, n, cookie, used],
                    outs=[("used", "u32", used), ("entries", "dirents", (buf, n, used))])

    def g_fd_seek(self, name):
        o = self.out(8)
        off = self.pick([0, 0, 1, 5, -1, -5, 100, 1 << 40, (1 << 63) - 1, -(1 << 63)])
        whence = self.pick([0, 1, 2, 0, 1, 2] + ([3, 255, 256, 0xFFFFFFFF]
                                                 if self.odd(0.4) else []))
        return Call(name, [self.fd(), off & ((1 << 64) - 1), whence, o],
                    outs=[("offset", "u64", o)])

    def g_fd_tell(self, name):
        o = self.out(8)
        return Call(name, [self.fd(), o], outs=[("offset", "u64", o)])

    def _path1(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        return Call(name, [self.pick([3, 3, 3, 4, 5, 0, 9]), p, n], bytes(blob),
                    note=" ".join(note))

    g_path_create_directory = g_path_remove_directory = g_path_unlink_file = _path1

    def _lookup(self):
        return self.pick([0, 1, 1] + ([2, 3, 0xFFFFFFFF] if self.odd(0.3) else []))

    def g_path_filestat_get(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        o = self.out(64)
        return Call(name, [self.pick([3, 3, 4, 5, 9]), self._lookup(), p, n, o], bytes(blob),
                    [("stat", "filestat", o)], " ".join(note))

    def g_path_filestat_set_times(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        return Call(name, [self.pick([3, 3, 4, 5, 9]), self._lookup(), p, n, self.pick(U64S),
                           self.pick(U64S), self._fst()], bytes(blob), note=" ".join(note))

    def g_path_link(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        q, m = self.path(blob, note)
        return Call(name, [self.pick([3, 3, 4, 5]), self._lookup(), p, n,
                           self.pick([3, 3, 4, 5]), q, m], bytes(blob), note=" ".join(note))

    def g_path_open(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        oflags = self.pick([0, 0, 1, 1, 2, 4, 5, 8, 9, 3, 13, 15]
                           + (FLAG16 if self.odd(0.3) else []))
        fdflags = self.pick([0, 0, 0, 0, 0, 1, 1, 4, 5, 4, 0, 1] + [2, 8, 16] * self.hostile(0.3)
                            + (FLAG16 if self.odd(0.3) else []))
        o = self.out(4, 8)
        return Call(name, [self.pick([3, 3, 3, 3, 4, 5, 6, 0, 9]), self._lookup(), p, n, oflags,
                           self.rights(), self.rights(), fdflags, o], bytes(blob),
                    [("fd", "u32", o)], " ".join(note))

    def g_path_readlink(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        size = self.pick([0, 1, 4, 5, 64, 256] + (HUGE if self.wild() else []))
        buf, used = self.out(size), self.out(4, 1024)
        return Call(name, [self.pick([3, 3, 4, 9]), p, n, buf, size, used], bytes(blob),
                    [("used", "u32", used), ("text", "readlink", (buf, used))], " ".join(note))

    def g_path_rename(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        q, m = self.path(blob, note)
        return Call(name, [self.pick([3, 3, 4, 5]), p, n, self.pick([3, 3, 4, 5]), q, m],
                    bytes(blob), note=" ".join(note))

    def g_path_symlink(self, name):
        blob, note = bytearray(), []
        p, n = self.path(blob, note)
        q, m = self.path(blob, note)
        return Call(name, [p, n, self.pick([3, 3, 4, 5]), q, m], bytes(blob), note=" ".join(note))

    def g_poll_oneoff(self, name):
        count = self.pick([1, 1, 2, 3, 4] + ([0] if self.hostile(0.3) else [])
                          + ([4097, 0x7FFFFFFF, 0xFFFFFFFF] if self.odd(0.3) else []))
        blob = bytearray()
        subs = []
        for i in range(min(count, 4)):
            tag = self.pick([0, 0, 1, 2] + ([3, 255] if self.hostile(0.3) else []))
            sub = bytearray(48)
            struct.pack_into("<QB", sub, 0, 1000 + i, tag)
            if tag == 0:
                flags = self.pick([0, 0, 1] + ([2, 0xFFFF] if self.hostile(0.3) else []))
                clock = self.pick([0, 1, 1, 2, 3] + ([4, 0xFFFFFFFF] if self.hostile(0.3)
                                                     else []))
                timeout = self.pick([0, 1, 1000, 1_000_000]) if not flags & 1 else \
                    self.pick([0, 1, 1000])          # absolute: long past
                struct.pack_into("<I", sub, 16, clock)
                struct.pack_into("<Q", sub, 24, timeout)
                struct.pack_into("<Q", sub, 32, self.pick([0, 1, 1 << 63]))
                struct.pack_into("<H", sub, 40, flags)
            else:
                struct.pack_into("<I", sub, 16, self.fd())
            subs.append((tag, struct.unpack_from("<I", sub, 16)[0]))
            blob += sub
        ins = IN if not self.wild() else self.pick(EDGE_PTRS)
        events = self.out(32 * 4)
        nev = self.out(4, 1024)
        c = Call(name, [ins, events, count, nev], bytes(blob),
                 [("nevents", "u32", nev), ("events", "events", (events, nev))],
                 f"subs={subs}")
        c.subs = [(1000 + i, tag) for i, (tag, _) in enumerate(subs)]
        c.sub_args = [(tag, x, struct.unpack_from("<H", blob, 48 * i + 40)[0])
                      for i, (tag, x) in enumerate(subs)]
        return c

    def g_proc_raise(self, name):
        return Call(name, [self.pick([0, 1, 9, 15, 30] + ([31, 100, 0xFFFFFFFF]
                                                         if self.odd(0.5) else []))])

    def g_random_get(self, name):
        n = self.pick([0, 1, 16, 256] + (HUGE if self.wild() else []))
        return Call(name, [self.out(min(n, 256)), n])

    def g_sched_yield(self, name):
        return Call(name, [])

    def g_sock_accept(self, name):
        return Call(name, [self.fd(), self.pick([0, 4] + ([0x20] if self.odd(0.5) else [])),
                           self.out(4)])

    def g_sock_recv(self, name):
        blob, note = bytearray(), []
        iovs, n = self.iovecs(blob, True, note)
        fd = self.fd()
        riflags = self.pick([0, 1, 2, 3] + ([4] if self.odd(0.5) else []))
        return Call(name, [fd, iovs, n, riflags, self.out(4),
                           self.out(4, 8)], bytes(blob))

    def g_sock_send(self, name):
        blob, note = bytearray(), []
        iovs, n = self.iovecs(blob, False, note)
        return Call(name, [self.fd(), iovs, n, self.pick([0, 1, 0xFFFF]), self.out(4)],
                    bytes(blob))

    def g_sock_shutdown(self, name):
        return Call(name, [self.fd(), self.pick([0, 1, 2, 3] + ([4] if self.odd(0.5) else []))])


#: the functions called, weighted toward those that do most
FUNCS = sorted(n for n in WASI_IMPORTS if n != "proc_exit")
FUNCS += ["path_open"] * 8 + ["fd_read", "fd_write", "fd_pwrite", "fd_pread", "fd_seek",
                              "fd_readdir", "path_rename", "path_unlink_file",
                              "path_create_directory", "path_symlink", "fd_close",
                              "fd_renumber", "poll_oneoff"] * 2


def sequence(seed: int, calls: int) -> list[Call]:
    rng = random.Random(seed)
    g = Gen(rng)
    out = []
    for i in range(calls):
        g.scale = 150 if i == calls - 1 else 1
        c = g.call()
        if 1 in c.args[:1] and c.name.startswith(("fd_", "sock_")):
            c.args[0] = 2            # fd 1 carries the records: never touched
        if c.name == "fd_renumber" and c.args[1] == 1:
            c.args[1] = 2
        out.append(c)
    return out


# ------------------------------------------------------------------ the module


def _const(kind, v):
    bits = 64 if kind == "i64" else 32
    v &= (1 << bits) - 1
    if v >= 1 << (bits - 1):
        v -= 1 << bits
    return f"({kind}.const {v})"


def module(calls: list[Call]) -> str:
    used = sorted({c.name for c in calls} | {"fd_write", "fd_fdstat_get"})
    lines = ["(module"]
    for name in used:
        params, results = WASI_IMPORTS[name]
        lines.append(f'  (import "wasi_snapshot_preview1" "{name}" (func ${name} '
                     f'(param {" ".join(params)}) (result i32)))' if params else
                     f'  (import "wasi_snapshot_preview1" "{name}" (func ${name} '
                     f'(result i32)))')
    lines.append(f'  (memory (export "memory") {PAGES} {PAGES})')
    for i, c in enumerate(calls):
        lines.append(f'  (data $d{i} "{_escape(c.blob)}")')
    lines.append('  (func (export "_start")')
    for i, c in enumerate(calls):
        params, _ = WASI_IMPORTS[c.name]
        args = " ".join(_const(k, a) for k, a in zip(params, c.args))
        lines.append(f"    (memory.fill (i32.const {IN}) (i32.const 0) (i32.const {IN_SIZE}))")
        lines.append(f"    (memory.fill (i32.const {OUT}) (i32.const 0xAA) "
                     f"(i32.const {OUT_SIZE}))")
        if c.blob:
            lines.append(f"    (memory.init $d{i} (i32.const {IN}) (i32.const 0) "
                         f"(i32.const {len(c.blob)}))")
        lines.append(f"    (i32.store (i32.const {REC + 12}) (call ${c.name} {args}))")
        if c.name == "path_open" and c.args[8] == OUT + 8:
            # the kind of what it opened, for the rules that hold only for a
            # directory, or only for what is not one (`kinds` in compare)
            lines.append(f"    (if (i32.eqz (i32.load (i32.const {REC + 12}))) (then (drop "
                         f"(call $fd_fdstat_get (i32.load (i32.const {OUT + 8})) "
                         f"(i32.const {KIND_AT})))))")
        # the record's iovec and magic again: a call may have written over them (a
        # read of the rest of memory: seed 263 of 300 calls), and its record, and
        # every one after it, went nowhere
        lines.append(f"    (i32.store (i32.const {IOV}) (i32.const {REC}))")
        lines.append(f"    (i32.store (i32.const {IOV + 4}) (i32.const {REC_SIZE}))")
        lines.append(f"    (i64.store (i32.const {REC}) "
                     f"(i64.const {int.from_bytes(MAGIC, 'little')}))")
        lines.append(f"    (i32.store (i32.const {REC + 8}) (i32.const {i}))")
        lines.append(f"    (memory.copy (i32.const {REC + 16}) (i32.const {OUT}) "
                     f"(i32.const {WINDOW}))")
        lines.append(f"    (drop (call $fd_write (i32.const 1) (i32.const {IOV}) (i32.const 1) "
                     f"(i32.const {NWRITTEN})))")
    lines.append("  ))")
    return "\n".join(lines) + "\n"


def _escape(b: bytes) -> str:
    return "".join(f"\\{x:02x}" for x in b)


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(call number, errno, window) of each record a run wrote to fd 1."""
    out, at = [], 0
    while True:
        at = data.find(MAGIC, at)
        if at < 0 or at + REC_SIZE > len(data):
            return out
        i, errno = struct.unpack_from("<II", data, at + len(MAGIC))
        out.append((i, errno, data[at + 16:at + 16 + WINDOW]))
        at += REC_SIZE


# ------------------------------------------------------------------ out-values


def _win(window, addr, size):
    if isinstance(addr, int) and OUT <= addr and addr + size <= OUT + WINDOW:
        return window[addr - OUT:addr - OUT + size]
    return None


def _decode(c: Call, window: bytes) -> dict:
    """The out-values of a call that succeeded, as far as the window shows them."""
    got = {}
    for label, kind, addr in c.outs:
        if kind in ("u8", "u16", "u32", "u64"):
            size = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}[kind]
            b = _win(window, addr, size)
            if b is not None:
                got[label] = int.from_bytes(b, "little")
        elif kind == "filestat":
            b = _win(window, addr, 64)
            if b is not None:
                _dev, _ino, ftype, nlink, size = struct.unpack_from("<QQB7xQQ", b)
                got[label] = (ftype, nlink, size if ftype != W.FILETYPE_DIR else None)
        elif kind == "strings":
            b = _win(window, addr, WINDOW - 64)
            if b is not None:
                got[label] = b.split(b"\xaa")[0]
        elif kind == "bytes8":
            b = _win(window, addr, 8)
            if b is not None:
                got[label] = b
        elif kind == "iovdata":               # the buffers are in OUT, 64 bytes apart
            got[label] = bytes(window[:WINDOW])
        elif kind == "readlink":
            buf, used = addr
            u = _win(window, used, 4)
            if u is not None:
                u = int.from_bytes(u, "little")
                b = _win(window, buf, min(u, 256))
                if b is not None:
                    got[label] = b
        elif kind == "dirents":
            buf, n, used = addr
            u = _win(window, used, 4)
            if u is None or _win(window, buf, min(n, 256)) is None:
                continue
            u = int.from_bytes(u, "little")
            if u >= n:                    # cut short: which entries depends on the order
                continue
            b, names, at = window[buf - OUT:buf - OUT + u], [], 0
            while at + 24 <= len(b):
                _next, _ino, namlen, dtype = struct.unpack_from("<QQIB", b, at)
                names.append((b[at + 24:at + 24 + namlen], dtype))
                at += 24 + namlen
            got[label] = sorted(names)
        elif kind == "events":
            ev, nev = addr
            k = _win(window, nev, 4)
            b = _win(window, ev, 32 * 4)
            if k is not None and b is not None:
                k = int.from_bytes(k, "little")
                got[label] = sorted(struct.unpack_from("<QHB", b, 32 * j)
                                    for j in range(min(k, 4)))
    return got


# ------------------------------------------------------------------ the runs


def run_wasmtime(wat: str, sandbox: str, name: str):
    """(records, trap or None) under wasmtime-py's own WASI."""
    import wasmtime
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    config.argv = [name, *ARGS]
    config.env = list(ENV.items())
    out = sandbox + ".wasmtime-out"
    config.stdout_file = out
    config.preopen_dir(sandbox, "/sandbox")
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    trap = None
    try:
        instance = linker.instantiate(store, wasmtime.Module(engine, wat))
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as e:
        trap = f"exit {e.code}"
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
        trap = str(e).splitlines()[0]
    with open(out, "rb") as f:
        return records(f.read()), trap


def _toml(table: dict) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items()) + " }"


def run_wsuper(programs: list[tuple[str, str, str]], work: str, timeout: float = 300):
    """{name: (records, trap reason or None, its lines)} of each (name, wat path,
    sandbox) as a compartment of one system under `wsuper up`; and the run's stderr."""
    system = [f'[system]\naudit = "{work}/audit.jsonl"\n']
    for name, wat, sandbox in programs:
        out = sandbox + ".wsuper-out"
        open(out, "wb").close()
        system.append(f"""
[compartments.{name}]
module = "{wat}"
restart = "never"
[compartments.{name}.grants]
stdout = {{ host = "file", path = "{out}" }}
sandbox = {{ host = "directory", path = "{sandbox}", mount = "/sandbox" }}
clock = {{ host = "clock" }}
random = {{ host = "random" }}
env = {{ host = "environment", args = {json.dumps(ARGS)}, vars = {_toml(ENV)} }}
""")
    path = os.path.join(work, "system.toml")
    with open(path, "w") as f:
        f.write("".join(system))
    try:
        r = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:      # a hang: what it wrote, and no end
        r = subprocess.CompletedProcess(e.cmd, "hang", e.stdout or "", (
            e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes)
            else e.stderr or "") + f"\nwsuper up did not end within {timeout} s")
    got = {}
    for name, _wat, sandbox in programs:
        with open(sandbox + ".wsuper-out", "rb") as f:
            recs = records(f.read())
        mine = [l for l in r.stderr.splitlines() if f" {name} " in l or f" {name}:" in l]
        trap = next((l.split("trapped: ", 1)[1] for l in mine
                     if f"compartment {name} failed: trapped: " in l), None)
        got[name] = (recs, trap, mine)
    return got, r


# ------------------------------------------------------------------ documented differences


DIR_OPS = ("path_create_directory", "path_filestat_get", "path_filestat_set_times",
           "path_link", "path_open", "path_readlink", "path_remove_directory", "path_rename",
           "path_symlink", "path_unlink_file", "fd_readdir")
DATA_OPS = ("fd_read", "fd_pread", "fd_write", "fd_pwrite", "fd_filestat_set_size",
            "fd_advise", "fd_allocate")


def _path_errnos(c: Call) -> set:
    """The errnos the paths of the call would fail with by themselves."""
    out = set()
    for p in c.paths:
        if p is None:                     # at the end of memory: whatever is there
            out |= {E["EINVAL"], E["EILSEQ"], E["ENAMETOOLONG"], E["ENOENT"], E["EPERM"]}
            continue
        if b"\0" in p:
            out.add(E["EINVAL"])
        try:
            p.decode()
        except UnicodeDecodeError:
            out.add(E["EILSEQ"])
        if len(p) > W.MAX_PATH or any(len(x) > 255 for x in p.split(b"/")):
            out.add(E["ENAMETOOLONG"])
        if not p:
            out.add(E["ENOENT"])
        if _leaves(p):
            out.add(E["EPERM"])
        if p.rstrip(b"/").split(b"/")[-1] in (b".", b".."):   # what Linux says of those
            out |= {E["EBUSY"], E["EINVAL"], E["ENOTEMPTY"], E["EEXIST"], E["EPERM"]}
    return out


def _faults(c: Call) -> set:
    """The errnos the call's arguments would fail with by themselves: its paths',
    a descriptor's (not open, not a directory: only where it may be), a time past
    2^63, flags that contradict each other."""
    out = _path_errnos(c) | _desc_faults(c)
    if c.name == "path_open" and c.args[4] & W.OFLAGS_DIRECTORY and \
            c.args[4] & (W.OFLAGS_CREAT | W.OFLAGS_TRUNC):
        out.add(E["EINVAL"])
    if c.name in ("path_filestat_set_times", "fd_filestat_set_times"):
        out |= {E["EOVERFLOW"], E["EINVAL"]}
    return out


def _out_of_range(c: Call) -> bool:
    """Whether a flag or enum argument of the call has a value witx has not."""
    if c.name in ("clock_res_get", "clock_time_get"):
        return c.args[0] > W.CLOCK_THREAD
    narrow = W._NARROW.get(c.name)
    return bool(narrow) and not W._narrow_ok(c.args, narrow)


def _unaligned(c: Call) -> bool:
    """Whether a pointer of the call to a number (an out-value, argv or environ's
    pointers) is not aligned to its size."""
    for _label, kind, addr in c.outs:
        size = {"u16": 2, "u32": 4, "u64": 8, "filestat": 8, "events": 8}.get(kind)
        if size and isinstance(addr, int) and addr % size:
            return True
    at = {"args_get": ((0, 4),), "environ_get": ((0, 4),), "clock_res_get": ((1, 8),),
          "clock_time_get": ((2, 8),), "fd_read": ((1, 4), (3, 4)),
          "fd_write": ((1, 4), (3, 4)), "fd_pread": ((1, 4), (4, 4)),
          "fd_pwrite": ((1, 4), (4, 4)), "fd_readdir": ((4, 4),),
          "poll_oneoff": ((0, 8), (1, 8), (3, 4)), "sock_accept": ((2, 4),),
          "sock_recv": ((1, 4), (4, 4), (5, 2)), "sock_send": ((1, 4), (4, 4))}
    return any(c.args[i] % size for i, size in at.get(c.name, ()))


def _dirfds(c: Call) -> tuple:
    """Where the call's descriptors are among its arguments: those its paths are
    resolved from, or an fd_ or sock_ call's one."""
    return {"path_link": (0, 4), "path_rename": (0, 3), "path_symlink": (2,),
            "poll_oneoff": (), "proc_raise": (), "random_get": (), "sched_yield": (),
            "args_get": (), "args_sizes_get": (), "environ_get": (),
            "environ_sizes_get": (), "clock_res_get": (), "clock_time_get": ()
            }.get(c.name, (0,))


def _first(c: Call):
    """What compare knows the call's (first) descriptor is (None: not open)."""
    return c.kinds[0] if c.kinds else None


def _may_be(c: Call, kind: str, k) -> bool:
    """Whether a descriptor compare knows as k may be a directory (kind "dir"), open
    and not one ("other"), or not open (None)."""
    if k is None:
        return kind is None or c.after_unseen       # (an open whose number was not seen)
    return k == kind or k == "open" and kind is not None


def _desc_faults(c: Call) -> set:
    """The errnos the call's descriptors would fail with by themselves: EBADF for
    one that may not be open, ENOTDIR (or wasmtime's EBADF) for one a path is
    resolved from that may be open and not a directory."""
    out = set()
    for k in c.kinds:
        if _may_be(c, None, k):
            out.add(E["EBADF"])
        if c.paths and _may_be(c, "other", k):
            out |= {E["ENOTDIR"], E["EBADF"]}
    return out


def _slash(c: Call) -> bool:
    return any(p is None or p.endswith((b"/", b"/..")) for p in c.paths)


#: what resolving a path that is well formed may fail with
RESOLVING = {E["ENOENT"], E["EEXIST"], E["ENOTDIR"], E["ELOOP"], E["EISDIR"], E["ENOTEMPTY"]}


def _climbs_out(c: Call) -> bool:
    """Whether path_symlink's target is absolute or climbs out of the directory
    of the descriptor it is made through."""
    target, name = c.paths
    if target is None or name is None:
        return True
    if target.startswith(b"/"):
        return True
    up = 0
    for part in target.split(b"/"):
        if part != b"..":
            break
        up += 1
    depth = len([p for p in name.rstrip(b"/").split(b"/")[:-1] if p not in (b"", b".")])
    return up > depth


SET_TIMES = ("fd_filestat_set_times", "path_filestat_set_times")


def _past_2_63(c: Call) -> bool:
    """Whether a time the call sets (its flag ATIM or MTIM on) is at or past 2^63 ns."""
    atim, mtim, fst = c.args[1:4] if c.name == "fd_filestat_set_times" else c.args[4:7]
    return bool(fst & 1 and atim >> 63 or fst & 4 and mtim >> 63)


def _cpu_sleep(c: Call) -> bool:
    """Whether a poll_oneoff subscription sleeps a relative time on a CPU-time clock
    (an absolute one fails the call, EINVAL, as under wasmtime)."""
    return any(tag == 0 and x in (2, 3) and not f & 1 for tag, x, f, _k, _s in c.poll)


def _poll_ebadf(c: Call) -> bool:
    """Whether a poll_oneoff subscription is one wasmtime fails the call for with
    EBADF: on a descriptor that may not be open, or is a directory, reading stdout
    or stderr, writing stdin."""
    return _stdio_crossed(c) or any(tag in (1, 2) and (_may_be(c, None, k) or
                                                      _may_be(c, "dir", k))
                                    for tag, _x, _f, k, _s in c.poll)


def _stdio_crossed(c: Call) -> bool:
    """Whether a poll_oneoff subscription reads stdout or stderr or writes stdin."""
    return any(tag == 1 and std == "out" or tag == 2 and std == "in"
               for tag, _x, _f, _k, std in c.poll)


#: (why, rule) of each difference docs/guest-abi.md documents: rule(call, wsuper's
#: answer, wasmtime's) -> bool.  An answer is an errno or "trap".
DOCUMENTED = [
    ("a flag, whence or enum value out of range is EINVAL (wasmtime traps)",
     lambda c, o, t: t == "trap" and o == E["EINVAL"] and _out_of_range(c)),
    ("a pointer out of linear memory traps the program as under wasmtime, when the "
     "engine reaches it (wasmtime refuses a length past memory with ENOMEM)",
     lambda c, o, t: c.wild and "trap" in (o, t) or c.wild and t == E["ENOMEM"]),
    ("reading, writing, truncating or advising a directory, EISDIR (wasmtime: EBADF)",
     lambda c, o, t: c.name in DATA_OPS and o == E["EISDIR"] and t == E["EBADF"]
     and _may_be(c, "dir", _first(c))),
    ("a directory operation on a descriptor that is not one, ENOTDIR (wasmtime: EBADF)",
     lambda c, o, t: c.name in DIR_OPS and o == E["ENOTDIR"] and t == E["EBADF"]
     and any(_may_be(c, "other", k) for k in c.kinds)),
    ("O_SYNC/O_DSYNC/O_RSYNC and the CPU-time clocks work (wasmtime: ENOTSUP, EBADF)",
     lambda c, o, t: (c.name in ("clock_time_get", "clock_res_get") and c.args[0] in (2, 3)
                      and o == 0 and t == E["EBADF"])
     or (c.name == "path_open" and c.args[7] & W.FDFLAGS_SYNCS and t == E["ENOTSUP"]
         and (o == 0 or o in _faults(c) | RESOLVING))),
    ("poll_oneoff sleeps a relative timeout on a CPU-time clock (wasmtime: EINVAL, and "
     "so before a descriptor not open after it, which wsuper says EBADF); a "
     "subscription to read stdout or write stdin is ready (wasmtime: EBADF); one on a "
     "directory, without POLL_FD_READWRITE, reports ENOTCAPABLE in its event (wasmtime "
     "fails the call: EBADF)",
     lambda c, o, t: c.name == "poll_oneoff" and (
         o == 0 and t == E["EINVAL"] and _cpu_sleep(c)
         or o == 0 and t == E["EBADF"] and _stdio_crossed(c)
         or o == 0 and t == E["EBADF"] and any(tag in (1, 2) and _may_be(c, "dir", k)
                                               for tag, _x, _f, k, _s in c.poll)
         or o == E["EBADF"] and t == E["EINVAL"] and _cpu_sleep(c))),
    ("fsync and fdatasync of a directory work (wasmtime: EBADF)",
     lambda c, o, t: c.name in ("fd_sync", "fd_datasync") and o == 0 and t == E["EBADF"]
     and (_may_be(c, "dir", _first(c)) or c.args[0] in c.stdio)),
    ("an empty standard descriptor is like /dev/null: seeking, telling, pread and pwrite "
     "in it and setting O_NONBLOCK work (wasmtime: ESPIPE, EBADF); O_APPEND is ENOTSUP, "
     "advising it ESPIPE, "
     "truncating it EINVAL, setting its times ENOTCAPABLE (wasmtime: EBADF)",
     lambda c, o, t: c.on_empty and (
         c.name in ("fd_seek", "fd_tell", "fd_pread", "fd_pwrite") and o == 0
         and t == E["ESPIPE"]
         or c.name == "fd_advise" and o == E["ESPIPE"] and t == E["EBADF"]
         or c.name == "fd_fdstat_set_flags" and o in (0, E["ENOTSUP"]) and t == E["EBADF"]
         or c.name == "fd_filestat_set_size" and o == E["EINVAL"] and t == E["EBADF"]
         or c.name == "fd_filestat_set_times" and o == E["ENOTCAPABLE"] and t == E["EBADF"])),
    ("a call with more than one thing wrong may fail for either (a descriptor that is "
     "not open or not a directory, a path with a NUL, not UTF-8, too long or empty, a "
     "poll_oneoff subscription wsuper cannot read: it reads every one before it looks "
     "at their descriptors; wasmtime answers them in order)",
     lambda c, o, t: 0 not in (o, t) and "trap" not in (o, t) and (
         (c.paths or c.name in SET_TIMES) and (
             len({o, t} & _faults(c)) == 2
             or bool({o, t} & _faults(c)) and bool({o, t} & RESOLVING)
             or len(c.paths) == 2 and len({o, t} & (RESOLVING | _faults(c))) == 2)
         or c.name == "poll_oneoff" and o == E["EINVAL"] and t == E["EBADF"]
         and _poll_ebadf(c))),
    ("fd_prestat_dir_name on an open descriptor that is not a preopen is EBADF, as "
     "fd_prestat_get is (wasmtime: ENOTDIR)",
     lambda c, o, t: c.name == "fd_prestat_dir_name" and o == E["EBADF"]
     and t == E["ENOTDIR"]),
    ("fcntl(F_SETFL) on a directory, ENOTCAPABLE (no FD_FDSTAT_SET_FLAGS right; "
     "wasmtime: EBADF)",
     lambda c, o, t: c.name == "fd_fdstat_set_flags" and o == E["ENOTCAPABLE"]
     and t == E["EBADF"] and _may_be(c, "dir", _first(c))),
    ("fd_fdstat_set_rights drops rights (wasmtime-py: ENOTSUP; EBADF on a standard "
     "descriptor)",
     lambda c, o, t: c.name == "fd_fdstat_set_rights" and (t == E["ENOTSUP"] or
                                                          c.on_empty and t == E["EBADF"])
     and (o in (0, E["ENOTCAPABLE"]) or o == E["EBADF"] and _may_be(c, None, _first(c))
          or o == E["EINVAL"] and (c.args[1] | c.args[2]) & ~W.ALL_RIGHTS)),
    ("changing O_SYNC/O_DSYNC/O_RSYNC on an open descriptor: ENOTSUP",
     lambda c, o, t: c.name == "fd_fdstat_set_flags" and c.args[1] & W.FDFLAGS_SYNCS
     and o == E["ENOTSUP"]),
    ("a path longer than 4096 bytes is ENAMETOOLONG (wasmtime resolves it)",
     lambda c, o, t: o == E["ENAMETOOLONG"]
     and any(p is None or len(p) > W.MAX_PATH for p in c.paths)),
    ("a time at or past 2^63 nanoseconds given to futimens/utimensat is EOVERFLOW "
     "(wasmtime sets what the file system can hold)",
     lambda c, o, t: o == E["EOVERFLOW"] and c.name in SET_TIMES and _past_2_63(c)),
    ("O_DIRECTORY without SYMLINK_FOLLOW on a link, ENOTDIR (wasmtime: ELOOP)",
     lambda c, o, t: c.name == "path_open" and c.args[4] & W.OFLAGS_DIRECTORY
     and not c.args[1] & 1 and o == E["ENOTDIR"] and t == E["ELOOP"]),
    ("a symbolic link whose target has a .. after a name is refused with EPERM "
     "(wasmtime makes it)",
     lambda c, o, t: c.name == "path_symlink" and o == E["EPERM"] and c.paths[0] is not None
     and re.search(rb"[^./]\.?/\.\.(/|$)|[^/.]/\.\.(/|$)", c.paths[0])),
    ("a file's rights are FD_READ and FD_WRITE only as it was opened: one opened without "
     "FD_WRITE cannot be written, one without either can do neither (EBADF; wasmtime "
     "reads and writes it, and a write of no bytes succeeds)",
     lambda c, o, t: c.name in ("fd_write", "fd_pwrite", "fd_read", "fd_pread")
     and o == E["EBADF"] and t == 0 and c.rights is not None and (
         not c.rights & (W.RIGHT_FD_READ | W.RIGHT_FD_WRITE)
         or c.name in ("fd_write", "fd_pwrite") and not c.rights & W.RIGHT_FD_WRITE)),
    ("renames and hard links that would move a link higher, where its .. would climb "
     "out, are refused with EPERM (policy-reference.md; wasmtime moves it)",
     lambda c, o, t: c.name in ("path_rename", "path_link") and o == E["EPERM"]
     and c.paths[0] is not None and c.paths[0].rstrip(b"/").split(b"/")[-1] in c.climbing),
    ("a symbolic link with an absolute target, or one that climbs out of the "
     "directory of the descriptor it is made through, is EPERM (wasmtime makes it)",
     lambda c, o, t: c.name == "path_symlink" and o == E["EPERM"] and _climbs_out(c)),
    ("advice at an offset or of a length past 2^63-1, EINVAL (wasmtime: advice works)",
     lambda c, o, t: c.name == "fd_advise" and o == E["EINVAL"]
     and (c.args[1] | c.args[2]) >> 63),
    ("one readv/writev takes at most 1024 buffers, one poll_oneoff 4096 "
     "subscriptions (more: EINVAL, as Linux's IOV_MAX; wasmtime says ENOMEM for counts "
     "it cannot allocate, and takes those it can)",
     lambda c, o, t: (t == E["ENOMEM"] and o != 0 or o == E["EINVAL"] and t == 0) and (
         c.name in ("fd_read", "fd_write", "fd_pread", "fd_pwrite", "sock_recv", "sock_send")
         and c.args[2] > W.MAX_IOVECS or c.name == "poll_oneoff" and c.args[2] > 4096)),
    ("an unaligned pointer is used as it is (wasmtime traps: pointer not aligned)",
     lambda c, o, t: t == "trap" and _unaligned(c)),
    ("rmdir(\"d/\") works and rmdir(\"d/..\") is ENOTEMPTY (wasmtime: EINVAL for both); "
     "unlink or rmdir of \"link-to-dir/\", \"link-to-nothing/\", "
     "\"link-that-leads-out/\", \"looping-link/\" is ENOTDIR (wasmtime: EISDIR, ENOENT, "
     "EINVAL, EPERM, ELOOP)",
     lambda c, o, t: c.name in ("path_unlink_file", "path_remove_directory") and _slash(c)
     and (o in (0, E["ENOTEMPTY"]) and t == E["EINVAL"]
          or o == E["ENOTDIR"] and t in (E["EISDIR"], E["ENOENT"], E["EINVAL"], E["EPERM"],
                                         E["ELOOP"]))),
    ("a seek whose offset would pass 2^63-1 is EINVAL, as lseek(2) says (wasmtime "
     "gives an offset past it)",
     lambda c, o, t: c.name == "fd_seek" and o == E["EINVAL"] and t == 0
     and c.args[2] in (1, 2) and (1 << 62) <= c.args[1] < (1 << 63)),
    ("one poll_oneoff takes at most 4096 subscriptions (more: EINVAL; wasmtime says "
     "ENOMEM for counts it cannot allocate)",
     lambda c, o, t: c.name == "poll_oneoff" and c.args[2] > 4096 and o == E["EINVAL"]
     and t == E["ENOMEM"]),
]


def same_values(c: Call, ours: dict, theirs: dict):
    """Whether the out-values of a call that succeeded under both agree: True; or
    why not, where docs/guest-abi.md documents it (a string: then
    `VALUES_PART` says whether the runs part there); or False."""
    if ours == theirs:
        return True
    if c.name in ("fd_fdstat_get", "fd_filestat_get") and c.on_empty:
        o, t = dict(ours), dict(theirs)
        if o.get("filetype") == W.FILETYPE_CHAR and t.get("filetype") == 0:
            o["filetype"] = 0
        if o.get("stat") == (W.FILETYPE_CHAR, 1, 0) and t.get("stat") == (0, 0, 0):
            o["stat"] = t["stat"]
        if o == t:
            return "an empty standard descriptor is a character device with one link"
    if c.name == "fd_fdstat_get" and ours.get("filetype") == theirs.get("filetype") \
            == W.FILETYPE_DIR and theirs.get("flags") == 0:
        return "a directory opened with fdflags reports them (wasmtime: 0)"
    if c.name in ("fd_read", "fd_pread", "fd_write", "fd_pwrite", "sock_recv") and \
            ours.get("n", 0) > theirs.get("n", 0):
        return "a readv fills and a writev writes every buffer (wasmtime: the first)"
    if c.name == "poll_oneoff" and ours.get("events") and theirs.get("events"):
        ready = {u for u, tag in getattr(c, "subs", ()) if tag in (1, 2)}
        if ready and {e[0] for e in ours["events"]} == ready:
            return ("descriptors are always ready, and when one is, clocks are not "
                    "reported (wasmtime reports a due clock instead, or leaves one out)")
        clocks = {u for u, tag in getattr(c, "subs", ()) if tag == 0}
        if not ready and all(e[1:] == (0, 0) and e[0] in clocks
                             for e in ours["events"] + theirs["events"]):
            return ("the clocks reported are those due when the sleep was to end "
                    "(wasmtime: those due when it looks, which depends on timing)")
    if c.name == "path_open" and ours.get("fd") is not None and theirs.get("fd") is not None \
            and (ours["fd"] < theirs["fd"] or c.after_unseen):
        # (after an open whose number was not seen, the two may have taken the same
        # two numbers the other way round: seed 393 of 300 calls)
        return "an open takes the lowest free number, as open(2) does (wasmtime: another)"
    if c.name == "fd_readdir" and (c.args[3] & W.U64) > 2 and c.changed:
        return LISTING_CHANGED
    return False


#: why a listing resumed at a cookie past '..' may differ once the tree changed
LISTING_CHANGED = ("a listing resumed at a cookie goes on after the entry the cookie "
                   "followed when it was read, from the page last read, after the tree "
                   "changed (wasmtime: after as many entries of the listing as it is now)")
#: why the runs part after an empty write to an O_APPEND descriptor
EMPTY_APPEND = ("an empty write to an O_APPEND descriptor leaves its offset where it "
                "was, as write(2) does (wasmtime moves it to the end)")
#: the calls that change the names in the tree when they succeed (and path_open's
#: O_CREAT)
CHANGES = {"path_create_directory", "path_rename", "path_symlink", "path_link",
           "path_unlink_file", "path_remove_directory"}


#: the documented differences of out-values after which the runs part
VALUES_PART = ("a readv", "an open takes")


#: calls that change nothing the two runs go on to compare (times are not compared)
STATELESS = {"clock_time_get", "clock_res_get", "poll_oneoff", "fd_sync", "fd_datasync",
             "fd_advise", "fd_allocate", "fd_filestat_set_times", "path_filestat_set_times",
             "fd_tell", "proc_raise", "fd_filestat_get", "path_filestat_get", "fd_fdstat_get",
             "sched_yield", "random_get", "args_get", "args_sizes_get", "environ_get",
             "environ_sizes_get", "fd_prestat_get", "fd_prestat_dir_name", "path_readlink",
             "fd_readdir", "fd_pread", "sock_accept", "sock_recv", "sock_send",
             "sock_shutdown"}


def parts(c: Call, ours, theirs) -> bool:
    """Whether a documented difference leaves the two runs in states that differ
    (then the seed's comparison ends there): a trap, or one of them did what
    the other refused, when that changes something later calls may see."""
    if "trap" in (ours, theirs):
        return True
    if 0 not in (ours, theirs):
        return False                     # both refused: neither did anything
    return not (c.name in STATELESS or c.empty and c.name in ("fd_write", "fd_pwrite")
                or c.on_empty and c.name in ("fd_seek", "fd_pwrite", "fd_write"))


def documented(c: Call, ours, theirs) -> str | None:
    """Why wsuper's answer `ours` and wasmtime's `theirs` (an errno, or "trap") may
    differ for call c, as docs/guest-abi.md says; None: a finding."""
    return next((why for why, rule in DOCUMENTED if rule(c, ours, theirs)), None)


# ------------------------------------------------------------------ one batch


def compare(seed: int, calls: list[Call], ours, theirs, trees, stats=None):
    """(findings, documented differences) of one seed.  `stats` counts the calls
    compared ("compared"), and the seeds whose trees were ("trees")."""
    (o_recs, o_trap, o_lines), (t_recs, t_trap) = ours, theirs
    findings, notes = [], []
    stats = {} if stats is None else stats
    if any("Traceback" in l or "internal error" in l for l in o_lines):
        findings.append(f"seed {seed}: wsuper said {o_lines}")
    k = len(o_recs)
    if o_trap and (k >= len(calls) or
                   f"wasi_snapshot_preview1.{calls[k].name}: " not in o_trap):
        findings.append(f"seed {seed} call {k} {calls[k].describe() if k < len(calls) else ''}:"
                        f" the trap does not name the function: {o_trap}")
    finished = any("finished" in l and "exit=0" in l for l in o_lines)
    if not o_trap and not finished:
        findings.append(f"seed {seed}: the program neither finished nor trapped: {o_lines}")
    empty = {0, 2}                 # the standard descriptors no grant fills, where now
    stdio = {0: "in", 1: "out", 2: "out"}   # the standard descriptors, where now
    kinds = {0: "other", 1: "other", 2: "other", 3: "dir"}   # what each open one is
    climbing = {b"back", b"up"}    # make_tree's links whose target has '..', and those made
    opened = {}                    # descriptor: the rights path_open gave it
    appending = set()              # descriptors opened or set O_APPEND
    changed = False                # a call before changed the names in the tree
    # the rights of opens that succeeded with their descriptor written out of the
    # window (an out pointer of 0, or past OUT): a descriptor not known is taken to be
    # the last of them (seed 1950: a file opened without FD_WRITE, its number written
    # at 0, then written to: wsuper EBADF, as documented, said a finding)
    unseen = []
    freed = set()                  # the first four descriptors, once closed (an open
    #                                may take one: seed 70 of 300 calls, fd 2)
    for i, c in enumerate(calls):
        c.on_empty = bool(c.args) and c.args[0] in empty and c.name.startswith(("fd_", "sock_"))
        c.climbing = climbing
        c.changed = changed
        c.after_unseen = bool(unseen)
        c.rights = opened.get(c.args[0]) if c.args else None
        c.kinds = tuple(kinds.get(c.args[j] & 0xFFFFFFFF) for j in _dirfds(c))
        c.stdio = dict(stdio)
        if c.name == "poll_oneoff":
            # each subscription: (tag, its clock or descriptor, its flags, what that
            # descriptor is, which standard one it is)
            c.poll = [(tag, x, flags, kinds.get(x), stdio.get(x))
                      for tag, x, flags in getattr(c, "sub_args", ())]
        if c.rights is None and unseen and c.args and (c.args[0] not in range(4)
                                                       or c.args[0] in freed):
            c.rights = unseen[-1]
        o = o_recs[i][1] if i < len(o_recs) else ("trap" if o_trap else "none")
        t = t_recs[i][1] if i < len(t_recs) else ("trap" if t_trap else "none")
        if o == "none" and t == "none":
            break
        stats["compared"] = stats.get("compared", 0) + 1
        if o != t:
            why = documented(c, o, t)
            show = lambda x: NAMES.get(x, x)                      # noqa: E731
            line = f"seed {seed} call {i} {c.describe()}: wsuper {show(o)}, wasmtime {show(t)}"
            if why is None:
                findings.append(line)
                return findings, notes
            notes.append(f"{line} (documented: {why})")
            if parts(c, o, t):
                return findings, notes            # the runs' states part here
            continue
        if o == "trap":
            return findings, notes
        if o == 0 and c.name in ("path_symlink", "path_rename", "path_link") and \
                None not in c.paths:
            name = c.paths[1].rstrip(b"/").split(b"/")[-1]
            if c.name == "path_symlink" and b".." in c.paths[0] or \
                    c.name != "path_symlink" and c.paths[0].rstrip(b"/").split(b"/")[-1] \
                    in climbing:
                climbing.add(name)
        if o == 0 and (c.name in CHANGES or c.name == "path_open" and c.args[4] & W.OFLAGS_CREAT):
            changed = True
        if o == 0 and c.name == "fd_write" and c.empty and c.args[0] in appending:
            notes.append(f"seed {seed} call {i} {c.describe()}: (documented: {EMPTY_APPEND})")
            return findings, notes            # the runs' offsets part here
        if o == 0 and c.name == "path_open":
            fd = _decode(c, o_recs[i][2]).get("fd")
            if fd is not None:
                opened[fd] = c.args[5] & W.ALL_RIGHTS
                ftype = t_recs[i][2][KIND_AT - OUT] if c.args[8] == OUT + 8 else None
                kinds[fd] = "open" if ftype in (None, 0xAA) else \
                    "dir" if ftype == W.FILETYPE_DIR else "other"
                stdio.pop(fd, None)
                appending.discard(fd)
                if c.args[7] & W.FDFLAGS_APPEND:
                    appending.add(fd)
            else:
                unseen.append(c.args[5] & W.ALL_RIGHTS)
        if o == 0 and c.name == "fd_fdstat_set_flags":
            (appending.add if c.args[1] & W.FDFLAGS_APPEND else appending.discard)(c.args[0])
        if o == 0 and c.name == "fd_close":
            kinds.pop(c.args[0], None)
            stdio.pop(c.args[0], None)
            freed.add(c.args[0])
            empty.discard(c.args[0])
            opened.pop(c.args[0], None)
            appending.discard(c.args[0])
        if o == 0 and c.name == "fd_renumber":
            a, b = (x & 0xFFFFFFFF for x in c.args)
            if a != b:
                for moved in (kinds, stdio):
                    moved.pop(b, None)
                    if a in moved:
                        moved[b] = moved.pop(a)
                freed.add(a)
                empty.discard(b)
                opened.pop(b, None)
                if a in empty:
                    empty.discard(a)
                    empty.add(b)
                if a in opened:
                    opened[b] = opened.pop(a)
                appending.discard(b)
                if a in appending:
                    appending.discard(a)
                    appending.add(b)
        if o == 0:
            a, b = _decode(c, o_recs[i][2]), _decode(c, t_recs[i][2])
            same = same_values(c, a, b)
            if same is False:
                findings.append(f"seed {seed} call {i} {c.describe()}: out-values differ: "
                                f"wsuper {_short(a)}, wasmtime {_short(b)}")
                return findings, notes
            if same is not True:
                notes.append(f"seed {seed} call {i} {c.describe()}: out-values differ "
                             f"(documented: {same})")
                if same.startswith(VALUES_PART):
                    return findings, notes
    stats["trees"] = stats.get("trees", 0) + 1
    if trees[0] != trees[1]:
        a, b = set(trees[0]), set(trees[1])
        findings.append(f"seed {seed}: the trees differ: only under wsuper {sorted(a - b)}, "
                        f"only under wasmtime {sorted(b - a)}")
    return findings, notes


def _short(values: dict) -> str:
    """Out-values as a finding shows them: the buffers read without their 0xAA."""
    return repr({k: v.rstrip(b"\xaa") if isinstance(v, bytes) else v for k, v in values.items()})


def batch(seeds: list[int], calls: int, keep: str | None = None, stats=None):
    """(findings, documented differences, calls made) of the seeds, run as one system;
    `stats` as compare's."""
    work = tempfile.mkdtemp(prefix="wsuper-fuzz-wasi-", dir=keep)
    try:
        programs, seqs, wts = [], {}, {}
        for s in seeds:
            name = f"app{s}"
            seqs[name] = (s, sequence(s, calls))
            wat = module(seqs[name][1])
            path = os.path.join(work, f"{name}.wat")
            with open(path, "w") as f:
                f.write(wat)
            ours_dir = make_tree(os.path.join(work, name, "wsuper"))
            theirs_dir = make_tree(os.path.join(work, name, "wasmtime"))
            wts[name] = (run_wasmtime(wat, theirs_dir, name), theirs_dir)
            programs.append((name, path, ours_dir))
        got, r = run_wsuper(programs, work)
        findings, notes, made = [], [], 0
        for name, path, ours_dir in programs:
            seed, seq = seqs[name]
            theirs, theirs_dir = wts[name]
            made += len(got[name][0]) + (1 if got[name][1] else 0)
            f, n = compare(seed, seq, got[name], theirs, (tree(ours_dir), tree(theirs_dir)),
                           stats)
            findings += f
            notes += n
        if r.returncode not in (0, 1):
            findings.append(f"seeds {seeds}: wsuper up exited {r.returncode}: {r.stderr[-2000:]}")
        if "Traceback" in r.stderr or "internal error" in r.stderr:
            findings.append(f"seeds {seeds}: wsuper said: {r.stderr[-2000:]}")
        return findings, notes, made
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(seeds: list[int], calls: int, per: int = 8, keep=None, progress=None, stats=None):
    """(findings, documented differences, calls made under wsuper) of the seeds, `per`
    compartments to a system."""
    findings, notes, made = [], [], 0
    for k in range(0, len(seeds), per):
        f, n, m = batch(seeds[k:k + per], calls, keep, stats)
        findings, notes, made = findings + f, notes + n, made + m
        if progress:
            progress(k + per, findings, made)
    return findings, notes, made


def trace(seed: int, calls: int) -> int:
    """Print each call of one seed with its answer and out-values under both."""
    work = tempfile.mkdtemp(prefix="wsuper-fuzz-wasi-")
    try:
        seq, name = sequence(seed, calls), f"app{seed}"
        wat = module(seq)
        path = os.path.join(work, f"{name}.wat")
        with open(path, "w") as f:
            f.write(wat)
        (t_recs, t_trap) = run_wasmtime(wat, make_tree(os.path.join(work, "wasmtime")), name)
        got, _r = run_wsuper([(name, path, make_tree(os.path.join(work, "wsuper")))], work)
        o_recs, o_trap, _lines = got[name]
        for i, c in enumerate(seq):
            show = []
            for recs, trap in ((o_recs, o_trap), (t_recs, t_trap)):
                if i < len(recs):
                    e = recs[i][1]
                    show.append(f"{NAMES.get(e, e)} {_decode(c, recs[i][2]) if e == 0 else ''}")
                else:
                    show.append(f"trap: {trap}" if trap and i == len(recs) else "-")
            print(f"{i} {c.describe()}\n    wsuper:   {show[0]}\n    wasmtime: {show[1]}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _seeds(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.wasi")
    ap.add_argument("--seeds", default="1-200", help="a seed or a range, e.g. 1-200")
    ap.add_argument("--calls", type=int, default=60, help="calls per seed")
    ap.add_argument("--batch", type=int, default=8, help="seeds (compartments) per system")
    ap.add_argument("--keep", help="keep the runs' files under this directory")
    ap.add_argument("--show", type=int, help="print the calls of this seed and exit")
    ap.add_argument("--notes", action="store_true", help="list the documented differences")
    ap.add_argument("--trace", type=int, help="run this seed and print each call's answers "
                    "under both")
    args = ap.parse_args(argv)
    if args.show is not None:
        for i, c in enumerate(sequence(args.show, args.calls)):
            print(i, c.describe())
        return 0
    if args.trace is not None:
        return trace(args.trace, args.calls)
    seeds, t = _seeds(args.seeds), time.monotonic()

    def progress(n, findings, made):
        print(f"{min(n, len(seeds))} seeds, {made} calls, {len(findings)} findings, "
              f"{time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    stats = {}
    findings, notes, made = run(seeds, args.calls, args.batch, args.keep, progress, stats)
    print(f"{len(seeds)} seeds, {made} calls made under wsuper, in {time.monotonic() - t:.1f} s: "
          f"{stats.get('compared', 0)} answers compared, {stats.get('trees', 0)} trees, "
          f"{len(notes)} documented differences, "
          f"{'no findings' if not findings else f'{len(findings)} findings'}")
    for line in (notes if args.notes else []) + findings:
        print("  " + line)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
