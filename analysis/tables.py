"""Text output of the tools: table cells (fmt), GitHub-flavoured Markdown tables that also
read as text, and writing a text file with an error that names it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .cli import AnalysisError


def fmt(x: Any, digits: int = 4) -> str:
    """A table cell: '' for None/NaN, integers as they are, floats: >= 1000 rounded to an
    integer, [100, 1000) with one decimal, [1, 100) with `digits` decimals, below 1 with `digits` significant digits."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int,)) or (hasattr(x, "dtype") and getattr(x, "dtype").kind in "iu"):
        return str(int(x))
    if isinstance(x, float) or hasattr(x, "dtype"):
        v = float(x)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.{digits}f}"
        return f"{v:.{digits}g}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                   align_right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table, columns padded so that it also reads as text."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                           for r in rows]
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in cells]
    n = len(headers)
    width = [max(3, *(len(r[i]) for r in cells)) for i in range(n)]
    if align_right is None:
        align_right = [False] * n

    def line(r):
        return "| " + " | ".join(c.rjust(width[i]) if align_right[i] else c.ljust(width[i])
                                 for i, c in enumerate(r)) + " |"

    sep = "| " + " | ".join(("-" * (width[i] - 1) + ":") if align_right[i] else "-" * width[i]
                            for i in range(n)) + " |"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise AnalysisError(f"{path}: cannot write: {e}") from None
    return path
