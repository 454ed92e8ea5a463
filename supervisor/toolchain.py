"""Building plugins: C to wasm32-wasi with Debian's clang, lld and wasi-libc.

wsuper does not ship a compiler.  `scripts/setup` installs the Debian
packages (clang, lld, wasi-libc, libclang-rt-14-dev-wasm32); this module
only finds them and runs them, so `wsuper build` and the tests use one
command line.  Set WSUPER_CLANG to use another clang (a wasi-sdk one, say).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile

from compartments import wasmbin
from compartments.protect import rodata_extent

DEBIAN_PACKAGES = ("clang", "lld", "wasi-libc", "libclang-rt-14-dev-wasm32")
RUST_PACKAGES = ("rustc", "libstd-rust-dev-wasm32")
TARGET = "wasm32-wasi"


#: Memory protection (docs/memory-protection.md): every plugin `build` makes is laid
#: out with a null page below its data and its read-only data (.rodata) on pages
#: of its own, and says so in a wsuper.protect custom section.
PROTECT_PAGE = 4096
#: wasm-ld puts data at 1024 by default; from PROTECT_PAGE, the page below is free
#: (wasm-ld places .rodata first, then .data, .bss, the stack and the heap).
LAYOUT_FLAGS = (f"-Wl,--global-base={PROTECT_PAGE}",)
#: The C stack's pointer (wasm-ld's global), exported under its own name: a call
#: that traps or runs out of fuel leaves it where that call's frames had moved it,
#: and the engine puts it back (compartments/engine.py, Engine._guest); each such
#: call's frames stayed taken for good, and a few made every later call of every
#: caller fail "out of stack"
STACK_POINTER_FLAGS = ("-Wl,--export=__stack_pointer",)
#: wasi-libc's clock(), times() and getrusage(), which read the process's CPU time
#: (clock_time_get of CLOCK_PROCESS_CPUTIME_ID, which wsuper serves through the
#: `clock` grant): declared only with the macro, and in a library of their own (a
#: plugin that called clock() did not compile, though the docs say it works)
PROCESS_CLOCKS_FLAGS = ("-D_WASI_EMULATED_PROCESS_CLOCKS",)
PROCESS_CLOCKS_LIBRARY = "-lwasi-emulated-process-clocks"
#: One more source: a variable that page-aligns the start of .data (wasm-ld aligns an
#: output segment as its most aligned input), so .rodata ends on a page of its own.
LAYOUT_SOURCE = (f"__attribute__((aligned({PROTECT_PAGE}), used))\n"
                 f"char wsuper_layout_data_page = 1;\n")

#: futimens and utimensat (which utimes and utime reach) as POSIX says them.  Debian's
#: wasi-libc (2022) got both wrong: a NULL `times` ("both to now", what touch does)
#: was read at address 0, so under the null page a build protects the program
#: trapped (elsewhere the file got the time held there: 1970), and UTIME_NOW or
#: UTIME_OMIT for the modification time was EINVAL (only the access time's were
#: read).  These replace libc's (--wrap: the calls reach them; wasm-ld keeps them
#: only in a program that calls one), each one WASI call as libc's was.
#: And __secs_to_zone, which says UTC (that libc has no time zones) by storing
#: through each pointer it is given, the NULL localtime_r passes for the offset it
#: does not need included: every localtime wrote 0 at address 0 (under the null
#: page: a trap "in __secs_to_zone").  Its wrapper gives it a place for that, as
#: clock_getres's does for the NULL POSIX lets a program pass (that libc wrote the
#: resolution through it).  And __tm_to_tzname (strftime's %Z) gave back the
#: struct tm's zone as it was, NULL for one the program filled in itself (memset,
#: strptime), which strftime then read at address 0: it is "UTC", musl's answer
#: for a zone it does not know when there are no time zones.
#: Each fix is linked in only where the program does not define the function itself:
#: a program's own futimens (in another source file or a static library) was
#: silently never called (--wrap sent its callers to the toolchain's), and one
#: whose function was named __wrap_clock_getres failed to build ("duplicate
#: symbol", in a file of the toolchain's).  The first link traces each wrapped
#: name and its __wrap_ name (LIBC_FIXES_TRACE); a definition from the program's
#: inputs (libc.a's and the fixes' own aside) drops that fix, and it is linked
#: again as plain clang would link it (build).  The fixes are weak for that.
LIBC_FIXES_PRELUDE = """\
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <wasi/api.h>
/* wsuper build: libc's functions as POSIX says them; see toolchain.py */
__attribute__((unused))
static int wsuper_times(const struct timespec *t, __wasi_timestamp_t *at,
                        __wasi_timestamp_t *mt, __wasi_fstflags_t *how) {
    *at = *mt = 0;
    *how = 0;
    if (t == NULL) {
        *how = __WASI_FSTFLAGS_ATIM_NOW | __WASI_FSTFLAGS_MTIM_NOW;
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        if (t[i].tv_nsec == UTIME_NOW) {
            *how |= i ? __WASI_FSTFLAGS_MTIM_NOW : __WASI_FSTFLAGS_ATIM_NOW;
        } else if (t[i].tv_nsec != UTIME_OMIT) {
            __wasi_timestamp_t ns;
            if (t[i].tv_nsec < 0 || t[i].tv_nsec >= 1000000000 || t[i].tv_sec < 0
                    || __builtin_mul_overflow((uint64_t)t[i].tv_sec, 1000000000u, &ns)
                    || __builtin_add_overflow(ns, (uint64_t)t[i].tv_nsec, &ns))
                return 0;
            *(i ? mt : at) = ns;
            *how |= i ? __WASI_FSTFLAGS_MTIM : __WASI_FSTFLAGS_ATIM;
        }
    }
    return 1;
}
"""
#: The wrapped functions (wasm-ld --wrap=NAME) and each one's replacement.
LIBC_FIXES = {
    "futimens": """\
__attribute__((weak)) int __wrap_futimens(int fd, const struct timespec *t) {
    __wasi_timestamp_t at, mt;
    __wasi_fstflags_t how;
    if (!wsuper_times(t, &at, &mt, &how)) {
        errno = EINVAL;
        return -1;
    }
    __wasi_errno_t e = __wasi_fd_filestat_set_times(fd, at, mt, how);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}
""",
    "__wasilibc_nocwd_utimensat": """\
__attribute__((weak))
int __wrap___wasilibc_nocwd_utimensat(int fd, const char *path, const struct timespec *t,
                                      int flags) {
    __wasi_timestamp_t at, mt;
    __wasi_fstflags_t how;
    if (!wsuper_times(t, &at, &mt, &how) || (flags & ~AT_SYMLINK_NOFOLLOW) != 0) {
        errno = EINVAL;
        return -1;
    }
    __wasi_errno_t e = __wasi_path_filestat_set_times(
        fd, flags & AT_SYMLINK_NOFOLLOW ? 0 : __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, path,
        at, mt, how);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return 0;
}
""",
    "__secs_to_zone": """\
void __real___secs_to_zone(long long, int, int *, long *, long *, const char **);
__attribute__((weak))
void __wrap___secs_to_zone(long long t, int local, int *isdst, long *offset, long *oppoff,
                           const char **zonename) {
    long unused;
    __real___secs_to_zone(t, local, isdst, offset, oppoff ? oppoff : &unused, zonename);
}
""",
    "clock_getres": """\
int __real_clock_getres(clockid_t, struct timespec *);
__attribute__((weak)) int __wrap_clock_getres(clockid_t clock, struct timespec *res) {
    struct timespec unused;
    return __real_clock_getres(clock, res ? res : &unused);
}
""",
    "__tm_to_tzname": """\
const char *__real___tm_to_tzname(const struct tm *);
__attribute__((weak)) const char *__wrap___tm_to_tzname(const struct tm *tm) {
    const char *zone = __real___tm_to_tzname(tm);
    return zone ? zone : "UTC";
}
""",
}
LIBC_FIXES_FLAGS = tuple(f"-Wl,--wrap={name}" for name in LIBC_FIXES)
LIBC_FIXES_SOURCE = LIBC_FIXES_PRELUDE + "".join(LIBC_FIXES.values())
LIBC_FIXES_TRACE = tuple(f"-Wl,--trace-symbol={prefix}{name}" for name in LIBC_FIXES
                         for prefix in ("", "__wrap_"))


def fixes_source(names) -> str:
    """LIBC_FIXES_SOURCE with only the fixes of `names`."""
    return LIBC_FIXES_PRELUDE + "".join(LIBC_FIXES[n] for n in names)


def defined_by_program(said: str, fixes: str) -> set[str]:
    """The wrapped names (LIBC_FIXES) the program's own inputs define, itself or as
    __wrap_NAME, in what a link with LIBC_FIXES_TRACE said; not libc.a's, nor
    those of `fixes` (the fixes' object, told by its name alone: the linker's words
    are decoded with backslashreplace, so a directory whose name is not UTF-8, a
    TMPDIR, never matched, its __wrap_ names were taken for the program's, and
    every fix was dropped without a word).  A static library's NAME counts whether
    the link took it or not ("lazy": without --wrap, the program's calls would take
    it); its __wrap_NAME only if taken (the fixes' own, weak, keep it out)."""
    names = "|".join(re.escape(n) for n in LIBC_FIXES)
    found = re.findall(rf"^(?!.*/libc\.a[:(])(?!(?:.*/)?{re.escape(os.path.basename(fixes))}: )"
                       rf".*: (?:lazy definition of ({names})|definition of (?:__wrap_)?({names}))$",
                       said, re.M)
    return {a or b for a, b in found}


#: The start of a program linked as a reactor (see build): wasm-ld wraps every export
#: of a *command* but `_start` in __wasm_call_ctors/__wasm_call_dtors, so a C program
#: that also serves calls (a callback, a Listener: wsuper_dispatch) ran libc's
#: exit-time code after every call it served: its atexit handlers at the first one,
#: and stdout flushed from inside whatever stdio call was waiting (lines written
#: twice).  As a reactor, its constructors run once (`_initialize`, which the engine
#: calls at start) and its exit-time code once, at the end of `_start`.
START_SOURCE = ("#include <stdlib.h>\n"
                "int __main_void(void);\n"
                "__attribute__((export_name(\"_start\"))) void _start(void) "
                "{ exit(__main_void()); }\n")


class ToolchainError(Exception):
    """The compiler is missing or the build failed; the text says which and why."""


class NoMain(ToolchainError):
    """Built as a program (a command), it has no `main` to run: the linker says so."""


class DefinesMain(ToolchainError):
    """Guessed a reactor (no `main(` in its text), yet its inputs define main (a
    macro's name for it, a header or an object file that holds it): a program.
    The linker says so (TRACE_MAIN)."""


#: Asked of a reactor's link when it was only guessed one: where main is defined.
#: `int main(void)` defines main (and __main_void), `int main(int, char **)`
#: __main_argc_argv; wasi-libc's own (its fallbacks, in libc.a) are never the
#: sources'.  A static library given to `build` that holds main defines it too:
#: a reactor's link only says "lazy definition" (nothing pulls it in), which a
#: command's would pull in and run; it was not counted, so a program whose main
#: is in its library was built a reactor, "(reactor)", and its main never ran.
TRACE_MAIN = ("-Wl,--trace-symbol=main", "-Wl,--trace-symbol=__main_argc_argv",
              "-Wl,--trace-symbol=__main_void")
_DEFINES_MAIN = re.compile(r"^(?!.*/libc\.a[:(])"
                           r".*: (?:lazy )?definition of (?:main|__main_argc_argv|__main_void)$",
                           re.M)


def clang() -> str:
    path = shutil.which(os.environ.get("WSUPER_CLANG", "clang"))
    if path is None:
        raise ToolchainError("clang not found: run ./scripts/setup (it installs the Debian "
                             f"packages {' '.join(DEBIAN_PACKAGES)}) or set WSUPER_CLANG")
    return path


def command(sources, output: str, *, reactor: bool = False, include=(), exports=(),
            optimize: str = "-O2", extra=(), layout: str | None = None,
            fixes: str | None = None, wrapped=None) -> list[str]:
    """The clang command line that builds `sources` into the module `output`.

    A plugin that serves an interface is a *reactor* (no main; it exports
    `_initialize` and `wsuper_dispatch`); a program with `main` is a command.
    `layout`: the path of a file holding LAYOUT_SOURCE, to lay the plugin out
    for memory protection (None: wasm-ld's own layout).  `fixes`: the path of an
    object compiled from LIBC_FIXES_SOURCE (None: libc as it is), or fixes_source(wrapped)
    when `wrapped` names the functions it wraps (None: all of LIBC_FIXES).
    """
    cmd = [clang(), f"--target={TARGET}", optimize, "-Wall", "-o", as_operand(output)]
    if reactor:
        cmd.append("-mexec-model=reactor")
    cmd += [f"-I{d}" for d in include]
    cmd += [f"-Wl,--export={e}" for e in exports]
    cmd += STACK_POINTER_FLAGS
    cmd += PROCESS_CLOCKS_FLAGS
    if layout is not None:
        cmd += LAYOUT_FLAGS
    if fixes is not None:
        cmd += LIBC_FIXES_FLAGS if wrapped is None else [f"-Wl,--wrap={n}" for n in wrapped]
    return cmd + list(extra) + [as_operand(s) for s in sources] \
        + ([layout] if layout is not None else []) + ([fixes] if fixes is not None else []) \
        + [PROCESS_CLOCKS_LIBRARY]      # after the objects that use it, as ld takes them


def _own_object(tmp: str, name: str, text: str, output: str) -> str:
    """The object file of the toolchain's own C `text` (the libc fixes, a reactor's
    _start), compiled in `tmp` on its own: on the program's command line it was
    compiled with the program's -I directories, so a header of the program's named
    like libc's (a time.h, an errno.h of its own) was the one it included, and a
    program that built before the fixes failed "in" a file of the toolchain's."""
    source, obj = os.path.join(tmp, f"{name}.c"), os.path.join(tmp, f"{name}.o")
    with open(source, "w") as f:
        f.write(text)
    r = _run([clang(), f"--target={TARGET}", "-O2", "-Wall", "-c", source, "-o", obj], output)
    if r.returncode != 0:
        raise ToolchainError(f"building {output} failed: compiling {name}.c, wsuper's own:\n"
                             f"{(r.stderr or r.stdout).strip()}")
    return obj


def as_operand(path: str) -> str:
    """`path` as clang takes it for a file, whatever its name: a name that begins
    with - is an option to it (a source `-Dputs=abort.c` defined a macro and was
    never compiled), and one that begins with @ a response file, whose text it
    reads as options (`@p.c` read p.c's C as its command line): either way the
    module was built without the source, "wrote p.wasm (reactor)", and no word.
    As ./-Dputs=abort.c or ./@p.c they are only files."""
    return os.path.join(".", path) if path.startswith(("-", "@")) else path


def build(sources, output: str, *, protect: bool = True, guessed: bool = False,
          **options) -> str:
    """Compile and link; returns `output` (its directory is made if missing).  Raises
    ToolchainError with clang's messages, or naming a source that is not there.
    `protect`: lay it out for memory protection and declare that layout.
    `guessed`: the kind (reactor or command) is only a guess from the sources'
    text, and the linker has the last word: NoMain for a command without main,
    DefinesMain for a reactor whose inputs define main."""
    check_sources(sources)
    check_output(output, sources)
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ToolchainError(f"cannot make {folder} for {output}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="wsuper-build-") as tmp:
        layout = None
        if protect:
            layout = os.path.join(tmp, "wsuper-layout.c")
            with open(layout, "w") as f:
                f.write(LAYOUT_SOURCE)
        # a name of its own in any directory: the trace tells its object by it
        fixes_name = f"wsuper-libc-fixes-{secrets.token_hex(8)}"
        fixes = _own_object(tmp, fixes_name, LIBC_FIXES_SOURCE, output)
        first = {**options, "extra": (*options.get("extra", ()), *LIBC_FIXES_TRACE)}
        if guessed and options.get("reactor"):
            first = {**first, "extra": (*first["extra"], *TRACE_MAIN)}
        said = _link(command(sources, output, layout=layout, fixes=fixes, **first), output)
        if guessed and options.get("reactor") and _DEFINES_MAIN.search(said):
            raise DefinesMain(f"{output}: its inputs define main: a program, not a reactor")
        own = defined_by_program(said, fixes)
        wrapped = [n for n in LIBC_FIXES if n not in own]
        if own:
            # the program's own function is the one its callers reach, as without wsuper
            fixes = _own_object(tmp, fixes_name, fixes_source(wrapped), output)
            _link(command(sources, output, layout=layout, fixes=fixes, wrapped=wrapped,
                          **options), output)
        if not options.get("reactor") and _serves(output):
            # a program that serves calls: again, as a reactor with a _start of its own
            start = _own_object(tmp, "wsuper-start", START_SOURCE, output)
            _link(command([*sources, start], output, layout=layout, fixes=fixes,
                          wrapped=wrapped, **{**options, "reactor": True}), output)
    if protect:
        declare_layout(output)
    return output


_C_TOKENS = re.compile(r'/\*.*?(?:\*/|\Z)|//(?:[^\n\\]|\\.)*|"(?:[^"\\\n]|\\.)*"?|'
                       r"'(?:[^'\\\n]|\\.)*'?", re.S)


def mentions_main(texts) -> bool:
    """Whether C sources may define `main`: the first guess between a command and a
    reactor when neither is asked for; the linker has the last word (`wsuper
    build` links a program that turns out to have no main as a reactor).  Any
    `main(` outside comments and string and character literals counts, whatever
    comes before it: `int32_t main(` and `signed main(` were guessed reactors, so
    their main never ran and nothing said why.  Comments and literals do not: a
    reactor whose comment said "no int main(void)" failed to link as a command."""
    return any(re.search(r"\bmain\s*\(", _C_TOKENS.sub(" ", text)) for text in texts)


def check_sources(sources) -> None:
    """Refuse a source that is not there, or is there and is no regular file: a
    directory, a FIFO or a device given as a source was "no such source file",
    which it is not."""
    for src in sources:
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise ToolchainError(f"{src}: no such source file") from None
        except OSError as e:
            raise ToolchainError(f"{src}: cannot read the source: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ToolchainError(f"{src} is {_kind(st.st_mode)}: not a source file")


def _kind(mode: int) -> str:
    return next((k for test, k in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                                   (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                                   (stat.S_ISBLK, "a device")) if test(mode)),
                "no regular file")


def check_output(output: str, inputs) -> None:
    """Refuse an output that is one of the inputs (a source, a schema): clang writes
    the module over its own input without a word (`wsuper build kv.c -o kv.c`).
    And one that is there and is no regular file: the linker writes into what is
    not one (a FIFO planted as build/p.wasm: it waited for a reader, the build
    until COMPILE_SECONDS), where it replaces a file.  And a name that is no file's:
    `-o ''` and `-o build/` reached the linker, which said "no output file
    specified" or "cannot open output file build/", after `build/` was made."""
    if not output or output.endswith(("/", os.sep)):
        raise ToolchainError(f"{'-o is empty' if not output else output + ' names a directory'}"
                             ": -o names the .wasm to write")
    try:
        st = os.stat(output)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                                       (stat.S_ISBLK, "a device")) if test(st.st_mode)),
                    "no regular file")
        raise ToolchainError(f"{output} is {kind}: not writing the module to it (-o names "
                             "the .wasm to write)")
    for path in inputs:
        try:
            same = os.path.samefile(path, output)
        except OSError:
            continue
        if same:
            raise ToolchainError(f"{output} is the input {path}: not writing the module over "
                                 "it (-o names the .wasm to write)")


#: What wasm-ld says of a program with no main: the symbol `main` itself, whole.  A
#: substring test took "undefined symbol: main_loop" (a program's own link error)
#: for it, and `wsuper build` then made a reactor of the program, its main never run.
_NO_MAIN = re.compile(r"undefined symbol: main$", re.M)


#: How long one compiler run may take (a source may make it take for ever: a macro
#: whose expansion doubles at each level, an #include of a FIFO or of /dev/zero).
COMPILE_SECONDS = 300


def _compiler_env() -> dict:
    """The environment a compiler runs in: wsuper's, with TMPDIR the directory
    wsuper's own temporary files go to (tempfile.gettempdir: TMPDIR if one can
    write there, else /tmp, /var/tmp ...).  clang takes TMPDIR as it is: one gone,
    relative, on a kernel file system or another user's failed every build with
    only "clang: error: unable to make temporary file: Permission denied", where
    wsuper's own files had gone to /tmp."""
    return {**os.environ, "TMPDIR": tempfile.gettempdir()}


def _run(cmd: list[str], output: str) -> subprocess.CompletedProcess:
    """Run the compiler to its end, or for at most COMPILE_SECONDS: then (or on
    Ctrl-C) it is killed with every process it started (the linker).  A compile
    that took longer ended `wsuper build` in a subprocess.TimeoutExpired traceback,
    and only the driver was killed: the linker ran on.  (The compiler stays in
    wsuper's process group, so the terminal's signals reach it as before.)"""
    # A Ctrl-C while Popen was still returning (the compiler already started: on a
    # loaded machine, a test's fake compiler had run and said so) lost its pid, and the
    # compiler ran on: a child that was not there before is the compiler.
    before, proc = set(_descendants(os.getpid())), None
    try:
        try:
            # what it says quotes the sources (a file's name, a symbol's: `__asm__("\\xff")`),
            # which may be any bytes: decoded strictly, one that is not UTF-8 ended `wsuper
            # build` in a UnicodeDecodeError traceback, the compiler's words lost
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, errors="backslashreplace", env=_compiler_env())
        except OSError as e:
            raise ToolchainError(f"cannot run {cmd[0]}: {e}") from None
        out, err = proc.communicate(timeout=COMPILE_SECONDS)
    except BaseException as e:
        if proc is not None:
            started = [proc.pid, *_descendants(proc.pid)]     # not reaped yet: still theirs
        else:
            started = sorted(set(_descendants(os.getpid())) - before)
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc is not None:
            proc.communicate()
        for pid in started if proc is None else ():
            try:
                os.waitpid(pid, 0)          # ours (the others, the compiler's own, are not)
            except ChildProcessError:
                pass
        if isinstance(e, ToolchainError):
            raise
        if isinstance(e, subprocess.TimeoutExpired):
            raise ToolchainError(f"building {output} failed: {os.path.basename(cmd[0])} took "
                                 f"more than {COMPILE_SECONDS} s and was stopped") from None
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs (Linux's /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def _link(cmd: list[str], output: str) -> str:
    """Run clang; what it said (the linker's traces are on stdout) when it succeeded,
    ToolchainError if not."""
    r = _run(cmd, output)
    if r.returncode != 0:
        text = (r.stderr or r.stdout).strip()
        if "wasm-ld" in text and "not found" in text or "unable to execute" in text:
            text += f"\n(install the Debian packages {' '.join(DEBIAN_PACKAGES)})"
        elif _NO_MAIN.search(text) and "-mexec-model=reactor" not in cmd:
            raise NoMain(f"building {output} failed:\n{text}\n(built as a program, which "
                         f"needs main; a plugin that only serves calls is a reactor: "
                         f"--reactor)")
        raise ToolchainError(f"building {output} failed:\n{text}")
    return (r.stdout or "") + (r.stderr or "")


def _serves(path: str) -> bool:
    """Whether the command at `path` exports a function other than _start."""
    try:
        with open(path, "rb") as f:
            return any(n != "_start" for n in wasmbin.exported_functions(f.read()))
    except (OSError, ValueError):
        return False


def declared_layout(data: bytes, page: int = PROTECT_PAGE) -> tuple[int, int, int]:
    """(no_access_end, read_only_start, read_only_end) that a module linked with
    LAYOUT_FLAGS can declare: a null page if no data lies below `page`; its
    .rodata, to the end of its last page if the next data starts there."""
    f = wasmbin.facts(data)
    segments = sorted((s, e) for s, e, _name in f.segments if e > s)
    null = page if segments and all(s >= page for s, _e in segments) else 0
    if f.rodata is None or f.rodata[1] <= f.rodata[0]:
        return null, null, null
    # with the padding up to .data
    start, end = rodata_extent(f.segments, f.rodata, page, f.unknown_segments)
    return min(null, start), start, end


def declare_layout(path: str) -> None:
    """Write the module's wsuper.protect section (protect.py reads it).

    The new module goes to a file of its own, made (O_EXCL) beside `path`, then
    renamed over it.  Written to `path + ".tmp"`, a name fixed in advance and
    opened as it was, a symbolic link planted there (a plugin's source tree may
    ship build/p.wasm.tmp) had the module written into the file it named, that
    file's mode set to the module's, and `path` replaced by the link."""
    tmp = None
    try:
        with open(path, "rb") as f:
            data = f.read()
        out = wasmbin.with_declaration(data, *declared_layout(data))
        folder, name = os.path.split(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
        with open(fd, "wb") as f:
            f.write(out)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
        tmp = None
    except (OSError, ValueError) as e:
        raise ToolchainError(f"cannot declare the memory layout of {path}: {e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def rustc() -> str:
    """A rustc that has the wasm32-wasi standard library (Debian's, by default)."""
    for candidate in (os.environ.get("WSUPER_RUSTC"), "/usr/bin/rustc", shutil.which("rustc")):
        if not candidate or not os.path.exists(candidate):
            continue
        r = subprocess.run([candidate, "--print", "sysroot"], capture_output=True, text=True)
        if r.returncode == 0 and os.path.isdir(os.path.join(r.stdout.strip(), "lib", "rustlib",
                                                            "wasm32-wasi")):
            return candidate
    raise ToolchainError("no rustc with the wasm32-wasi standard library: run ./scripts/setup "
                         f"(it installs the Debian packages {' '.join(RUST_PACKAGES)}) or set "
                         "WSUPER_RUSTC")


def build_rust(source: str, output: str) -> str:
    """Compile one Rust file (no crates) to a wasm32-wasi program."""
    cmd = [rustc(), "--target", "wasm32-wasi", "-O", "-C", "debuginfo=0",
           "-C", "link-arg=--strip-debug", "-o", as_operand(output), as_operand(source)]
    r = _run(cmd, output)
    if r.returncode != 0:
        raise ToolchainError(f"building {output} failed:\n{(r.stderr or r.stdout).strip()}")
    return output

