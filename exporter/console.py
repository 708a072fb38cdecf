# SPDX-License-Identifier: Apache-2.0
"""The terminal consoles. User text (paths, names, messages) must print as written: rich would turn
':b:' in `--batch a:b:c` into an emoji and read '[/b]' in a folder name as a closing tag (and raise),
so emoji codes are off and callers escape user text inside their own markup (`escape`). Text from a bundle is
made inert before it is printed (`inert`: a terminal escape sequence in a recorded command is shown, not obeyed). Piped into a
log or a script, neither lines nor tables are wrapped at 80 columns (a bundle's path broken in two, a
table row over three lines that grep cannot find)."""
from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape as _markup_escape

__all__ = ["escape", "inert", "make"]

# C0 and C1 control characters (ESC starts a terminal's escape sequences: clearing the screen, OSC 52 clipboard
# writes, a title), DEL, and the bidirectional overrides that reorder what a reader sees ("Trojan Source")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

PIPED_WIDTH = 1000  # columns of a console that is not a terminal: rows stay whole


def inert(text: str, lines: bool = False) -> str:
    """`text` from a bundle (a recorded command, a manifest field, a file name), safe to print: every control
    character written as its escape (ESC as \\x1b), so a terminal shows it instead of acting on it. With `lines`,
    newlines and tabs are kept (a report of several lines)."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(lambda m: _escaped(m.group()), text)


def escape(text: str) -> str:
    """User or bundle text inside rich markup: inert (`inert`, lines kept) and with rich's markup escaped."""
    return _markup_escape(inert(text, lines=True))


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def make(stderr: bool = True) -> Console:
    """stderr: progress, warnings and errors; stdout: results (tables, the PASSED/FAILED line)."""
    console = Console(stderr=stderr, highlight=False, emoji=False)
    if not console.is_terminal:  # tables take their natural width too, instead of rich's 80 columns
        console.soft_wrap = True
        console.width = PIPED_WIDTH
    return console
