"""Text from models, made safe to print: names shown escaped and cut, messages bounded.

A model's names (nodes, values, the graph, symbolic dimensions, custom ops) are whatever
its author wrote: an escape sequence (``"\\x1b[31m"``, ``"\\x1b]0;title\\x07"``), a carriage
return, NUL, a bidi override (U+202E) or ten megabytes. Printed as they are, they recolour
or retitle the terminal, hide or reorder text, and make messages as large as the name.

- :func:`shown` is how a name enters a message, a plan's explanation or a CLI table:
  control characters (C0, DEL, C1, newline and tab included), Unicode format characters
  (bidi overrides and isolates, zero-width characters, BOM), line and paragraph separators
  and lone surrogates become Python's escapes (``\\x1b``, ``\\r``, ``\\u202e``), and a
  name longer than :data:`NAME_LIMIT` characters (as shown) is cut there with
  ``…(+N chars)``.
- :func:`safe_message` is the safety net for whole messages (:class:`BackplaneError` applies
  it to every message it carries): the same escapes, except newline and tab, which keep a
  multi-line vendor message readable and cannot rewrite what is on screen; and at most
  :data:`MESSAGE_LIMIT` characters, its head and tail kept around ``…(N chars cut)…``.

A backslash is left as it is, so paths stay readable; a name that itself holds the text
``\\x1b`` therefore reads like one holding ESC (a printed name is for people; the data, as
``Plan.to_dict()`` and ``--json`` give it, is the name itself).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

#: Characters a shown name keeps (as shown, escapes counted) before it is cut.
NAME_LIMIT = 80
#: Characters an error message keeps at most, marker included.
MESSAGE_LIMIT = 4000

#: Unicode categories escaped: controls, format characters (bidi overrides and isolates,
#: zero-width ones, BOM), surrogates, line and paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Escapes Python writes short.
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
#: Characters that may need escaping: everything but printable ASCII.
_SUSPECT = re.compile(r"[^\x20-\x7e]")
#: The same, but newline and tab (kept in messages).
_SUSPECT_IN_MESSAGE = re.compile(r"[^\x20-\x7e\n\t]")


def _piece(ch: str) -> str:
    """One character as shown: itself, or its Python escape."""
    if " " <= ch <= "~" or unicodedata.category(ch) not in _ESCAPED:
        return ch
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _taken(chars: Iterable[str], budget: int, keep: str) -> tuple[list[str], int]:
    """The pieces of ``chars`` as shown, as many as fit in ``budget`` characters, and how
    many characters of ``chars`` they are."""
    pieces: list[str] = []
    used = 0
    for ch in chars:
        piece = ch if ch in keep else _piece(ch)
        if used + len(piece) > budget:
            break
        pieces.append(piece)
        used += len(piece)
    return pieces, len(pieces)


def escaped(text: str, keep: str = "") -> str:
    """``text`` with every unsafe character as its Python escape, except those in ``keep``
    (not cut: see :func:`shown` and :func:`safe_message` for bounded text)."""
    return _SUSPECT.sub(lambda m: m[0] if m[0] in keep else _piece(m[0]), text)


def shown(name: object, limit: int = NAME_LIMIT) -> str:
    """A name from a model as it may be printed: escaped, and cut after ``limit`` characters
    with ``…(+N chars)`` (N: the characters of the name left out).

    Costs O(``limit``), whatever the name's length."""
    text = name if isinstance(name, str) else str(name)
    if len(text) <= limit:
        if not _SUSPECT.search(text):
            return text
        out = escaped(text)
        if len(out) <= limit:
            return out
    pieces, count = _taken(text, limit, "")
    cut = len(text) - count
    return "".join(pieces) + (f"…(+{cut} chars)" if cut else "")


def safe_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message as it may be printed: unsafe characters escaped (newline and tab
    kept), and, when longer than ``limit`` characters, its head (three quarters) and tail
    kept around ``…(N chars cut)…``, ``limit`` characters in all."""
    if len(text) <= limit:
        if not _SUSPECT_IN_MESSAGE.search(text):
            return text
        out = escaped(text, keep="\n\t")
        if len(out) <= limit:
            return out
    marker = f"…({len(text)} chars cut)…"  # (as long as the final marker, or longer)
    head_budget = (limit - len(marker)) * 3 // 4
    head, head_count = _taken(text, head_budget, "\n\t")
    tail, tail_count = _taken(reversed(text), limit - len(marker) - sum(map(len, head)),
                              "\n\t")
    cut = len(text) - head_count - tail_count
    return "".join(head) + f"…({cut} chars cut)…" + "".join(reversed(tail))


def first_line(text: object, limit: int = 300) -> str:
    """The first line of an error or reason (an exception with no message: its type's
    name), at most ``limit`` characters: what an event or a note quotes of it."""
    lines = str(text).splitlines()
    if not lines and isinstance(text, BaseException):
        return type(text).__name__
    return lines[0][:limit] if lines else ""
