"""One line on stderr, for the errors and notes that end or accompany a command.

A stderr whose reader is gone (`wsuper up ... 2>&1 | head -1`, a log collector that
died) cannot be told anything more; the exit code is then the only answer, and it
must be the error's.  Raised, the write's BrokenPipeError reached `cli.main`'s
handler for a reader of stdout that went away (`wsuper status | head`), which
returns 0: a system that `up` refused (2), or one it stopped at start for a signal
(143), exited 0, or 1 in a traceback.  No imports beyond the standard library's:
`cli.main` uses it before anything heavy is loaded."""
from __future__ import annotations

import os
import sys


def line(text: str):
    """`text` and a newline on stderr, now; nothing (and no exception) if stderr is
    gone or cannot be written, which from then on is /dev/null (the interpreter's
    own flush at exit would complain of it otherwise)."""
    stream = sys.stderr
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError, AttributeError):
        # any write that fails loses the line, never the exit code: not only a reader
        # gone (EPIPE, ECONNRESET) but a terminal hung up (EIO: the ssh session that
        # ran `up` dropped), a stderr on a full disk (ENOSPC, /dev/full) or opened
        # read-only (EBADF, `2</dev/null`): raised, a refused `check` or `up` exited
        # 1 ("lost sys.stderr"), not 2, and a signal at start-up 1, not 143
        gone(stream)


def gone(stream):
    """`stream` (stdout, stderr) points at /dev/null from now on: its reader went
    away, and the interpreter's own flush at exit would complain of it.  Nothing
    if that cannot be done."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)
