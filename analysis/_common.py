"""Shared pieces of the analysis command-line tools: the error type every tool reports as one
line, the wrapper that turns it (and any other failure) into exit status 1 without a
traceback, file classification and table formatting."""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

# HDF5's file locking would make a reader wait for (or fail on) a metrics.h5 that triad-train
# still holds open; the readers here only read, so they never need the lock. This must be set
# before the HDF5 library is initialised, i.e. before the first `import h5py`.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class AnalysisError(Exception):
    """A problem with an input (missing, unreadable, incomplete or foreign file, bad sweep
    definition). The message names the file and the problem; the tools print it as one line
    and exit with status 1."""


def prog_name(default: str) -> str:
    """The name to print in messages: the console script's (triad-plot) when run as one,
    else `default` (e.g. "python -m analysis.plot_curves")."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return base if base.startswith("triad-") else default


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body; AnalysisError and unexpected exceptions become one line on stderr
    and exit status 1 (TRIAD_DEBUG=1 shows the traceback of unexpected ones)."""
    try:
        return body()
    except AnalysisError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the contract is: no traceback for users
        if os.environ.get("TRIAD_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: unexpected {type(e).__name__}: {e} "
              "(TRIAD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def plot_run_main(argv: list[str] | None, module: str, description: str, default_out: str,
                  plot: Callable[..., Path],
                  options: Sequence[tuple[str, dict[str, Any]]] = ()) -> int:
    """The command line of a one-run figure (triad-plot-norms, triad-plot-moe): RUN, --out,
    --title, --dpi and `options` (flag, argparse keywords with a dest); plot(run, out,
    title=..., dpi=..., <dest>=...) draws it; prints the path written."""
    import argparse

    prog = prog_name(f"python -m {module}")
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("run", metavar="RUN", help="run directory (holding metrics.h5) or metrics.h5")
    for flag, keywords in options:
        ap.add_argument(flag, **keywords)
    ap.add_argument("--out", "-o", default=default_out,
                    help=f"output image (.png, .pdf, .svg; default {default_out})")
    ap.add_argument("--title", default=None)
    ap.add_argument("--dpi", type=int, default=120)
    a = ap.parse_args(argv)

    def body() -> int:
        check_figure_out(a.out, a.dpi)
        more = {keywords["dest"]: getattr(a, keywords["dest"]) for _, keywords in options}
        print(plot(a.run, a.out, title=a.title, dpi=a.dpi, **more))
        return 0

    return run_main(prog, body)


def file_kind(path: str | os.PathLike) -> str:
    """'missing', 'directory', 'special' (a pipe, socket or device: reading one can wait
    forever), 'unreadable', 'empty', 'hdf5' (has HDF5's signature at offset 0) or 'other'."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "directory"
    if not p.is_file():
        return "special"
    try:
        with open(p, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head == HDF5_SIGNATURE:
        return "hdf5"
    # HDF5 allows a user block (the superblock at 512, 1024, ...); triad never writes one,
    # but h5py is the judge of those.
    try:
        import h5py

        return "hdf5" if h5py.is_hdf5(str(p)) else "other"
    except Exception:  # noqa: BLE001
        return "other"


def not_hdf5_message(path: str | os.PathLike, kind: str) -> str:
    return {
        "missing": f"{path}: no such file",
        "directory": f"{path}: is a directory, expected a file",
        "special": f"{path}: not a regular file (a pipe, socket or device)",
        "unreadable": f"{path}: cannot be read (permissions?)",
        "empty": f"{path}: empty file, not HDF5",
        "other": f"{path}: not an HDF5 file",
    }.get(kind, f"{path}: not an HDF5 file")


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


def count_arg(text: str) -> int:
    """argparse type: a whole number >= 0."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return v


def number_arg(low: float, low_included: bool = True) -> Callable[[str], float]:
    """argparse type: a finite number >= low (> low where not low_included)."""
    import argparse

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not (math.isfinite(v) and (v >= low if low_included else v > low)):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>=' if low_included else '>'} {low:g} (got {text})")
        return v
    return parse


def token_arg(text: str) -> str:
    """argparse type: a special token's text, never empty (an empty one would read as "not
    given" and quietly fall back to the default)."""
    import argparse

    if not text:
        raise argparse.ArgumentTypeError("empty: name a special token")
    return text


def is_number(s: str) -> bool:
    try:
        float(s)
    except (TypeError, ValueError):
        return False
    return True


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


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise AnalysisError(f"{path}: cannot write: {e}") from None
    return path
