"""The command-line contract every analysis tool keeps: an input problem is AnalysisError, told
as one line with exit status 1 and no traceback (run_main); the program's name in messages;
argparse types that refuse a bad value by name; the shared command line of one-run figures."""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence


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

    from .figures import check_figure_out

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
