"""Figures: the --out image path and --dpi checked before any input is read, and a figure
saved with an error that names the file."""

from __future__ import annotations

import os
from pathlib import Path

from .cli import AnalysisError


def check_figure_out(out: str | os.PathLike, dpi: int = 120) -> Path:
    """The figure's path when --out names an image file matplotlib writes and --dpi is sane;
    AnalysisError otherwise. The tools call it before reading their inputs, so that a wrong
    --out is told before minutes of loading rather than after."""
    from matplotlib.backend_bases import FigureCanvasBase

    # (matplotlib would write "<out>.png" for a name without a suffix, a directory's included,
    # and allocate whatever a huge dpi asks for.)
    if not str(out):
        raise AnalysisError("--out is empty: give an image file (.png, .pdf, .svg)")
    out = Path(out)
    if out.is_dir():
        raise AnalysisError(f"{out}: is a directory; give an image file (.png, .pdf, .svg)")
    if out.suffix.lower().lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise AnalysisError(f"{out}: not an image file name (.png, .pdf, .svg, ...)")
    if not 1 <= dpi <= 2400:
        raise AnalysisError(f"--dpi {dpi}: must be in [1, 2400]")
    return out


def save_figure(fig, out: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure (format from the suffix) and close it; AnalysisError naming
    the file when it cannot be written."""
    import matplotlib.pyplot as plt

    try:
        out = check_figure_out(out, dpi)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=dpi)
        except (OSError, ValueError, MemoryError) as e:
            raise AnalysisError(f"{out}: cannot write the figure: {e}") from None
    finally:
        plt.close(fig)
    return out
