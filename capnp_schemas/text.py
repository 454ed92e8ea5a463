"""Text helpers every layer shares: errors as one line, and text made safe to show.

`first_line(e)`: the first line of an exception's message (or its type's
name), bounded, for one-line errors; `kj_text(e)`: what a pycapnp (KJ)
exception says, without its C++.  `bounded(text, limit)`: text cut at
`limit` characters, saying how many more there were (error reasons any side
sends, event lines, log lines).  `listed(names)`: names joined, as many as fit
in a bounded text, the rest counted (what an error names from a list the
policy made: the methods an allow list allows, the compartments exported).
`printable(text)`: guest-controlled
text made harmless for a terminal or a log: control characters, escape
sequences, line and paragraph separators and other invisible or
direction-changing characters, and letters and marks that show as nothing (a
Hangul filler), are shown escaped (`\\n`, `\\x1b`, `\\u202e`, `\\u3164`), so no
guest can start a line of its own, rewrite what is on the screen, or pass a
line off as empty.
"""
from __future__ import annotations

import json
import re


#: Characters of an error reason sent to a peer (a Return's exception, an Abort):
#: reasons carry text a peer chose (a name it asked for, a callee's own reason, a
#: function name from a module), and answers are kept until Finish.
REASON_LIMIT = 2000
#: Characters of a reason kept when one is read or held (a peer's Return exception
#: or Abort, a CallError, an audit record): room for a sender's own cut, which
#: says how many characters more there were, so a reason cut once reads the same.
KEPT_REASON_LIMIT = REASON_LIMIT + 100


def bounded(text: str, limit: int = REASON_LIMIT) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


#: Characters of a list an error names (`listed`): half a reason, so the words
#: around it are never what the reason's own cut takes.
LISTED_LIMIT = REASON_LIMIT // 2


def listed(names, limit: int = LISTED_LIMIT, sep: str = ", ") -> str:
    """`names` (a sequence of str) joined by `sep`, as many of them as fit in about
    `limit` characters, and how many more there were: "a, b, ... (9998 more)".
    Its work is bounded by `limit`, not by the list: an error that named a whole
    list the policy made (an allow list of 10,000 methods with long names, 20,000
    exported compartments) built all of its text for every refusal, megabytes,
    of which the reason's cut (`bounded`) then kept 2,000 characters."""
    parts, size = [], 0
    for i, name in enumerate(names):
        size += len(name) + (len(sep) if parts else 0)
        if size > limit:
            parts.append(f"... ({len(names) - i} more)")
            break
        parts.append(name)
    return sep.join(parts)


def first_line(e, limit: int = 300) -> str:
    if isinstance(e, BaseExceptionGroup) and e.exceptions:
        # a nested nursery's: what it holds, not "Exceptions from Trio nursery (1
        # sub-exception)", which named no fault
        leaf = e.exceptions[0]
        return f"{type(leaf).__name__}: {first_line(leaf, limit)}"[:limit]
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def kj_text(e) -> str:
    """What a KJ exception (pycapnp's) says, without the C++ it comes from:
    "capnp/message.c++:99: failed: expected segment != nullptr && ...; Message did
    not contain a root pointer." is "Message did not contain a root pointer." (a
    peer hears it, in an Abort or a failed call, and the operator reads it).  Any
    other exception: its text."""
    text = getattr(e, "description", None)
    if not isinstance(text, str) or not text.strip():
        return str(e)
    if text.startswith("expected ") and "; " in text:
        text = text.split("; ", 1)[1]               # the condition that failed: C++
    elif text.startswith("expected ") and "'\\0'" in text:
        # pycapnp's description stops at its first NUL character, and the check of
        # a text's NUL prints one ("[c == \0]; Message contains text that is not
        # NUL-terminated."): what was left was a cut C++ condition, never the words
        text = "Message contains text that is not NUL-terminated."
    return text.strip() or str(e)


#: What Python calls printable and a terminal shows as nothing: the characters of
#: Unicode's Default_Ignorable_Code_Point that str.isprintable() passes (the Hangul
#: fillers U+115F, U+1160, U+3164, U+FFA0, which are letters; the combining grapheme
#: joiner; Khmer's inherent vowels; Mongolian's and the other variation selectors),
#: and the braille pattern blank (U+2800).  Shown as they were, a guest's log line
#: of them read as an empty one, and one that began with them looked indented
#: like another line's continuation; they are escaped (\u3164) as the invisible
#: format characters always were.
_BLANK = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800"
                    "\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def shows(c: str) -> bool:
    """Whether the character `c` is shown as it is by `printable` (else escaped)."""
    return c.isprintable() and not _BLANK.match(c)


def printable(text: str) -> str:
    if text.isprintable() and (text.isascii() or not _BLANK.search(text)):
        return text
    # str.translate, from what each character was shown as before: escaped one
    # character at a time in Python, a Log line of 4,096 control characters (or
    # bidi overrides) cost the supervisor's loop ~1.5 ms, 300 times a printable
    # line, at every compartment's log_rate; ~0.2 ms now
    return text.translate(_SHOWN)


class _Shown(dict):
    """Code point -> the character as `printable` shows it, made on first sight.
    Every character of the Basic Multilingual Plane is kept (at most 65,536); past
    it, only until the table holds _SHOWN_KEPT in all (there are a million code
    points), and the others are made again each time (as every one was before)."""

    def __missing__(self, n: int) -> str:
        c = chr(n)
        shown = c if shows(c) else _escape(c)
        if n < 0x10000 or len(self) < _SHOWN_KEPT:
            self[n] = shown
        return shown


_SHOWN_KEPT = 0x20000
_SHOWN = _Shown()


def _escape(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{n:02x}")
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def ascii_printable(text: str) -> str:
    """`printable(text)` with every character past ASCII escaped too (`\\u0430`), as
    `quoted` shows a path: what the operator reads to decide (an error about the
    system file, what `check` says each compartment holds) quotes names and
    values from a file that may be hostile, and a letter of another script that
    looks like a Latin one made "no compartment named 'c\u0430lc' (declared:
    calc, app)" read as if calc were not declared."""
    if not text.isascii():
        # as TOML and JSON escape a character (and quoted() a path): \u00e9, never
        # Python's \xe9, which no TOML string takes, so a name an error shows can
        # be copied into the file; escaped before printable(), which then meets
        # ASCII alone (a C1 control too is \u0085, as in TOML)
        text = _PAST_ASCII.sub(_toml_escape, text)
    return printable(text)


_PAST_ASCII = re.compile(r"[^\x00-\x7f]")


def _toml_escape(m) -> str:
    n = ord(m.group())
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


#: what is shown of a path as it is: ASCII alone (\\w took every script's letters,
#: so '/srv/d\u0430ta', its 'а' Cyrillic, was shown exactly as /srv/data)
_PLAIN = re.compile(r"[A-Za-z0-9_./@:+=%,~-]+")


def quoted(text: str) -> str:
    """A path or name from the system file (or a directory's name) as shown to the
    operator (by `check`, and in the errors and warnings about it): as it is if it
    is plain (ASCII), else in double quotes with JSON's escapes (every character
    past ASCII as \\uXXXX), so that no name can pass for the text around it (a
    directory named 'x  (from other.toml: ...)') nor for another name (a letter of
    another script that looks like a Latin one).  The one choke point: policy's
    errors and check's warnings use it as `check`'s holdings do."""
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


# what may hold a character past ASCII on a line of a schema: a comment, a string
# (Cap'n Proto has no string of several lines); else the character itself
_OUTSIDE_TEXT = re.compile(r'#.*|"(?:[^"\\]|\\.)*"?|([^\x00-\x7f])')


def unseen_character(line: str, column: int | None, grammar: str) -> str:
    """A note for an error a parser reports at `line` (its text) and `column`
    (1-based; None if the parser gives none: then the first such character of the
    line outside a comment or a string) that names the character past ASCII
    there, which neither Cap'n Proto nor TOML takes outside a string or a comment,
    by its code point and name, or "" if there is none.  What such a character
    is cannot be seen: a no-break space, a zero-width space or a byte order mark
    (which an editor or a web page adds) shows as nothing or as a space, and a
    Cyrillic "а" as a Latin "a", so the parser's "Parse error." or "Invalid
    statement" pointed at a line that looked right."""
    import unicodedata
    if column is not None:
        c = line[column - 1] if 0 < column <= len(line) else ""
        at = column
    else:
        m = next((m for m in _OUTSIDE_TEXT.finditer(line) if m.group(1)), None)
        c, at = (m.group(1), m.start() + 1) if m else ("", None)
    if not c or ord(c) < 0x80:
        return ""
    if "\udc80" <= c <= "\udcff":
        # a byte that is not UTF-8, decoded with surrogateescape: named as the byte
        return (f" (column {at} holds the byte 0x{ord(c) - 0xdc00:02X}, which is not UTF-8: "
                f"{grammar} takes no character past ASCII outside a string or a comment)")
    name = unicodedata.name(c, "")
    bom = ", a byte order mark" if c == "\ufeff" else ""
    return (f" (column {at} holds U+{ord(c):04X}{' ' + name if name else ''}{bom}, which "
            f"may be invisible or look like an ASCII one: {grammar} takes no character past ASCII outside a string "
            f"or a comment)")
