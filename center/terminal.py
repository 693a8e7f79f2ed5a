"""Text from units, made safe to print on an operator's terminal.

Whatever a unit (or anyone who can publish on a broker) sends ends up in
front of an operator: a command's ``reason`` and ``detail``, a card id, a
topic. Printed raw, an escape sequence clears the screen, sets the window
title or draws lines that were never sent. Every centre tool passes such
text through :func:`clean` before printing or logging it.
"""

from __future__ import annotations

__all__ = ["clean"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(text: str, limit: int = 60) -> str:
    """Printable, one line, at most ``limit`` characters: safe on any terminal.

    Control characters (C0, DEL, C1, and Unicode format characters such as
    bidirectional overrides) become visible escapes: ``\\x1b``, ``\\n``,
    ``\\u202e``. Longer text is cut, ending in ``…``.
    """
    out = []
    for ch in text:
        if ch.isprintable() and ch not in "\x1b\x7f":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ord(ch) < 256:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"
