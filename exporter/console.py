"""The terminal consoles. User text (paths, names, messages) must print as written: rich would turn
':b:' in `--batch a:b:c` into an emoji and read '[/b]' in a folder name as a closing tag (and raise),
so emoji codes are off and callers escape user text inside their own markup (`escape`). Piped into a
log or a script, lines are not wrapped at 80 columns, which would break a bundle's path in two."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["escape", "make"]


def make(stderr: bool = True) -> Console:
    """stderr: progress, warnings and errors; stdout: results (tables, the PASSED/FAILED line)."""
    console = Console(stderr=stderr, highlight=False, emoji=False)
    console.soft_wrap = not console.is_terminal
    return console
