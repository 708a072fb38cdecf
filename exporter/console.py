# SPDX-License-Identifier: Apache-2.0
"""The terminal consoles. User text (paths, names, messages) must print as written: rich would turn
':b:' in `--batch a:b:c` into an emoji and read '[/b]' in a folder name as a closing tag (and raise),
so emoji codes are off and callers escape user text inside their own markup (`escape`). Piped into a
log or a script, neither lines nor tables are wrapped at 80 columns (a bundle's path broken in two, a
table row over three lines that grep cannot find)."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["escape", "make"]

PIPED_WIDTH = 1000  # columns of a console that is not a terminal: rows stay whole


def make(stderr: bool = True) -> Console:
    """stderr: progress, warnings and errors; stdout: results (tables, the PASSED/FAILED line)."""
    console = Console(stderr=stderr, highlight=False, emoji=False)
    if not console.is_terminal:  # tables take their natural width too, instead of rich's 80 columns
        console.soft_wrap = True
        console.width = PIPED_WIDTH
    return console
