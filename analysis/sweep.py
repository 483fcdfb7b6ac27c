"""Hyper-parameter sweeps: the sweep file format (inputs/sweeps/*.ini), its expansion into
points, each point's triad-train arguments and status, and the `triad-sweep` command.

    triad-sweep list   inputs/sweeps/quickstart-lr.ini        # points, overrides, status
    triad-sweep args   inputs/sweeps/quickstart-lr.ini 1      # triad-train arguments, one a line
    triad-sweep submit inputs/sweeps/quickstart-lr.ini        # sbatch line for unfinished points

A sweep file::

    [sweep]
    name = quickstart-lr                 ; run names <name>-000, <name>-001, ...
    base = inputs/runs/quickstart.ini    ; config file(s), comma-separated; later ones win
    mode = cartesian                     ; or zip (value lists of equal length)
    max_parallel = 2                     ; the %K of sbatch --array (optional)
    run_dir = runs/sweeps                ; optional; default: run.dir of the base config(s)
    description = ...                    ; optional, free text

    [values]                             ; the swept keys, in order (cartesian: last fastest)
    train.lr = 3e-4, 1e-3, 3e-3

    [set]                                ; fixed overrides of every point (optional)
    train.steps = 20

Values are comma-separated; an item may be quoted ('a,b' or "a,b") to hold a comma. `;` and
`#` start comments (inline ones after a space). Relative paths (base, run_dir, and run.dir /
checkpoint.dir of the configs) are taken from the repository root: the nearest directory above
the sweep file that holds `jobs/` (else the current directory); triad-train runs there, as
its data paths are relative to it too.

Point i runs::

    triad-train --config BASE... [--KEY VALUE for [set], then for the point's values]
                --run.name <name>-<i:03d> --run.dir <run dir>

and is *finished* when its run directory holds the checkpoint of its final step,
ckpt/step_<train.steps:08d>.h5, with the root attribute complete = 1 (train.steps resolved as
triad-train does: later config files, then [set], then the point's values win; train.sequences
> 0 replaces it by the steps that train that many, a batch-size ramp's counted); *running* when
the run directory exists but that checkpoint does not (a run in progress, or one that
stopped); *missing* otherwise.

`list` and `submit` ask triad-train (`--plan`, which reads no data) whether it takes each
point's config: a point it refuses (a mistyped key, a bad value) is named with triad-train's
message and the command fails, before an array of jobs that would each fail is submitted.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import itertools
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .cli import AnalysisError, prog_name, run_main
from .hdf5_files import special_file_problem
from .tables import markdown_table

MODES = ("cartesian", "zip")
MAX_POINTS = 1_000_000
MAX_STEPS = 99_999_999  # train.steps' bound: a checkpoint's name holds the step in 8 digits
SWEEP_KEYS = ("name", "base", "mode", "max_parallel", "run_dir", "description")
SECTIONS = ("sweep", "values", "set")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Keys the sweep itself sets on every point
RESERVED = {"run.name": "the sweep names its runs <name>-NNN",
            "run.dir": "use run_dir in [sweep]"}
# triad-train's defaults of the keys the status needs (`triad-train --help`)
TRIAD_DEFAULTS = {"train.steps": "1000", "run.dir": "runs", "run.name": "run",
                  "checkpoint.dir": "", "train.sequences": "0", "train.batch_size": "8",
                  "train.batch_rampup": ""}


def run_steps(sequences: int, batch: int, rampup: str) -> int:
    """train.sequences resolved as triad-train does (docs/formats.md, "Run length"): the fewest
    steps after which at least `sequences` have been trained on, a batch-size ramp's steps
    (rampup "START, INCREMENT, SEQUENCES", Megatron's rule) counted by their batches. Raises
    ValueError where triad-train refuses the values (a batch below 1, a ramp not of three
    integers >= 1, more steps than train.steps' bound)."""
    done = steps = 0
    if batch < 1:
        raise ValueError("a batch below 1")
    if rampup.strip():
        start, inc, ramp_n = (int(x) for x in rampup.split(","))
        if min(start, inc, ramp_n) < 1:
            raise ValueError("not three integers >= 1")
        k = (batch - start) // inc
        # Step after step the batch is start + inc·(done·k // ramp_n): constant between the
        # counts where that quotient grows, so the steps of each batch are counted at once.
        while done < sequences and done < ramp_n and steps <= MAX_STEPS:
            j = done * k // ramp_n
            grows = -(-(j + 1) * ramp_n // k) if k > 0 else ramp_n  # the least done past j
            b = start + inc * j
            n = -(-(min(grows, ramp_n, sequences) - done) // b)
            done += n * b
            steps += n
    if done < sequences and steps <= MAX_STEPS:
        steps += -(-(sequences - done) // batch)
    if steps > MAX_STEPS:
        raise ValueError(f"more than {MAX_STEPS} steps")
    return steps

STATUSES = ("finished", "running", "missing")


class SweepError(AnalysisError):
    pass


# ---- triad's INI files -----------------------------------------------------------------------

def read_triad_ini(path: Path) -> dict[str, str]:
    """A triad config file -> {"section.key": "value"}, as triad-train (Boost's config file
    parser) reads it: `[section]`, `key = value`, `#` starts a comment anywhere, and lines
    starting with `;` are comments too."""
    if problem := special_file_problem(path):
        raise SweepError(problem)
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark is not text)
    except UnicodeDecodeError as e:
        raise SweepError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot read: {e.strerror or e}") from None
    out: dict[str, str] = {}
    section = ""
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise SweepError(f"{path}:{i}: bad section line {raw.strip()!r}")
            section = line[1:-1].strip()
            continue
        if "=" not in line:
            raise SweepError(f"{path}:{i}: expected 'key = value', got {raw.strip()!r}")
        k, v = line.split("=", 1)
        k = k.strip()
        out[f"{section}.{k}" if section else k] = v.strip()
    return out


# ---- sweep files -----------------------------------------------------------------------------

def find_root(start: Path) -> Path:
    """The repository root for `start` (a directory): the nearest directory at or above it
    holding jobs/, else the current directory."""
    for d in [start, *start.parents]:
        if (d / "jobs").is_dir():
            return d
    return Path.cwd()


def split_values(text: str) -> list[str]:
    """'a, b, "c,d"' -> ['a', 'b', 'c,d']; empty items are kept as '' (the caller rejects)."""
    items, cur, quote = [], [], None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "'\"" and not "".join(cur).strip():
            quote = ch
            cur = []
        elif ch == ",":
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise ValueError(f"unterminated quote {quote} in {text!r}")
    items.append("".join(cur).strip())
    return items


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


@dataclass
class Point:
    index: int
    run_name: str
    overrides: dict  # the swept keys' values of this point, in [values] order

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides.items()) or "(base)"


@dataclass
class Sweep:
    path: Path
    root: Path
    name: str
    bases: list            # resolved Paths
    mode: str
    max_parallel: int | None
    run_dir: Path          # resolved
    values: dict           # key -> list of values
    fixed: dict            # key -> value ([set])
    description: str = ""
    points: list = field(default_factory=list)
    base_config: dict = field(default_factory=dict)  # merged base files

    # -- per point ---------------------------------------------------------------------------
    def point(self, index: int) -> Point:
        if not 0 <= index < len(self.points):
            raise SweepError(f"{self.path}: point index {index} out of range (the sweep has "
                             f"{len(self.points)} point{'s' * (len(self.points) != 1)}: "
                             f"0-{len(self.points) - 1})")
        return self.points[index]

    def resolved(self, p: Point) -> dict[str, str]:
        """The point's config as triad-train resolves it (keys the files do not set: triad's
        defaults for those the status needs)."""
        cfg = dict(TRIAD_DEFAULTS)
        cfg.update(self.base_config)
        cfg.update(self.fixed)
        cfg.update(p.overrides)
        cfg["run.name"] = p.run_name
        cfg["run.dir"] = str(self.run_dir)
        return cfg

    def args(self, p: Point) -> list[str]:
        out: list[str] = []
        for b in self.bases:
            out += ["--config", str(b)]
        for k, v in list(self.fixed.items()) + list(p.overrides.items()):
            out += [f"--{k}", v]
        out += ["--run.name", p.run_name, "--run.dir", str(self.run_dir)]
        return out

    def run_path(self, p: Point) -> Path:
        return self.run_dir / p.run_name

    def steps(self, p: Point) -> int:
        """The point's final step: train.steps, or where train.sequences > 0 the steps that
        train that many (run_steps)."""
        cfg = self.resolved(p)

        def value(key, convert=lambda v: int(float(v))):
            try:
                return convert(cfg[key])
            except (ValueError, OverflowError) as e:  # (inf, NaN: OverflowError, ValueError)
                raise SweepError(f"{self.path}: point {p.index}: {key} = {cfg[key]!r} is not "
                                 f"what triad-train takes ({e})") from None

        sequences = value("train.sequences")
        if sequences <= 0:
            return value("train.steps")
        batch = value("train.batch_size")
        if batch < 1:
            raise SweepError(f"{self.path}: point {p.index}: train.batch_size = "
                             f"{cfg['train.batch_size']!r} is not what triad-train takes (>= 1)")
        return value("train.batch_rampup", lambda v: run_steps(sequences, batch, v))

    def final_checkpoint(self, p: Point) -> Path:
        cfg = self.resolved(p)
        d = cfg.get("checkpoint.dir", "")
        ckdir = self._path(d) if d else self.run_path(p) / "ckpt"
        return ckdir / f"step_{self.steps(p):08d}.h5"

    def status(self, p: Point) -> str:
        if checkpoint_complete(self.final_checkpoint(p)):
            return "finished"
        run = self.run_path(p)
        if run.is_dir() and any(run.iterdir()):
            return "running"
        return "missing"

    def _path(self, s: str) -> Path:
        p = Path(os.path.expanduser(s))
        return p if p.is_absolute() else self.root / p


def run_in_progress(run: Path) -> bool:
    """Whether a triad-train holds the run directory's lock now (its flock on <run>/.lock,
    docs/formats.md): the point's job is running, and another would stop at once."""
    import fcntl

    try:
        with open(run / ".lock", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:  # no lock file (never run, or run before the lock), or unreadable
        pass
    return False


def checkpoint_complete(path: Path) -> bool:
    """True when `path` is an HDF5 file whose root attribute complete = 1."""
    if not path.is_file():
        return False
    try:
        from .metrics import attr_value, open_h5

        with open_h5(path) as f:
            c = f.attrs.get("complete")
            return c is not None and int(attr_value(c)) == 1
    except Exception:  # noqa: BLE001 - unreadable / being written: not finished
        return False


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Parse and expand a sweep file; SweepError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"{path}: no such file")
    if path.is_dir():
        raise SweepError(f"{path}: is a directory, expected a sweep file")
    if problem := special_file_problem(path):
        raise SweepError(problem)

    def bad(msg: str) -> SweepError:
        return SweepError(f"{path}: {msg}")

    cp = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",),
                                   comment_prefixes=("#", ";"),
                                   inline_comment_prefixes=("#", ";"),
                                   empty_lines_in_values=False, default_section="\0none")
    cp.optionxform = str
    try:
        with open(path, encoding="utf-8-sig") as f:
            cp.read_file(f)
    except UnicodeDecodeError:
        raise bad("not a text file") from None
    except OSError as e:
        raise bad(f"cannot read: {e.strerror or e}") from None
    except configparser.MissingSectionHeaderError as e:
        raise bad(f"line {e.lineno}: text before the first [section] (expected [sweep], "
                  "[values], [set])") from None
    except configparser.DuplicateSectionError as e:
        raise bad(f"section [{e.section}] appears twice") from None
    except configparser.DuplicateOptionError as e:
        raise bad(f"[{e.section}] {e.option} appears twice") from None
    except configparser.ParsingError as e:  # (after its subclass MissingSectionHeaderError)
        lineno, line = e.errors[0]  # (the line as repr() writes it)
        try:
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        raise bad(f"line {lineno}: {str(line).strip()!r} is not 'key = value'") from None
    except configparser.Error as e:
        msg = str(e).splitlines()[0]
        raise bad(f"cannot parse: {msg}") from None

    unknown = [s for s in cp.sections() if s not in SECTIONS]
    if unknown:
        raise bad(f"unknown section [{unknown[0]}] (expected [sweep], [values], [set])")
    if not cp.has_section("sweep"):
        raise bad("no [sweep] section")
    sw = dict(cp.items("sweep"))
    for k in sw:
        if k not in SWEEP_KEYS:
            raise bad(f"[sweep] has unknown key '{k}' (known: {', '.join(SWEEP_KEYS)})")
    name = sw.get("name", "").strip()
    if not name:
        raise bad("[sweep] has no name")
    if not NAME_RE.match(name):
        raise bad(f"[sweep] name {name!r}: use letters, digits and . _ + - only (it starts "
                  "the run names)")
    base_text = sw.get("base", "").strip()
    if not base_text:
        raise bad("[sweep] has no base (the config file(s) every point starts from)")
    mode = sw.get("mode", "cartesian").strip().lower() or "cartesian"
    if mode not in MODES:
        raise bad(f"[sweep] mode {sw['mode']!r} is unknown (use cartesian or zip)")
    max_parallel = None
    if sw.get("max_parallel", "").strip():
        try:
            max_parallel = int(sw["max_parallel"])
        except ValueError:
            max_parallel = 0
        if max_parallel <= 0:
            raise bad(f"[sweep] max_parallel {sw['max_parallel']!r} is not a positive integer")

    root = find_root(path.resolve().parent)
    sweep = Sweep(path=path, root=root, name=name, bases=[], mode=mode,
                  max_parallel=max_parallel, run_dir=root, values={}, fixed={},
                  description=sw.get("description", "").strip())
    try:
        base_items = split_values(base_text)
    except ValueError as e:
        raise bad(f"[sweep] base: {e}") from None
    for b in base_items:
        if not b:
            raise bad(f"[sweep] base {base_text!r} has an empty item")
        bp = sweep._path(b)
        if not bp.is_file():
            raise bad(f"base config {b} not found (looked for {bp})")
        sweep.bases.append(bp)
        sweep.base_config.update(read_triad_ini(bp))

    def check_key(section: str, k: str) -> None:
        if not KEY_RE.match(k):
            raise bad(f"[{section}] key '{k}' is not of the form section.name "
                      "(e.g. train.lr)")
        if k in RESERVED:
            raise bad(f"[{section}] {k} cannot be set by a sweep: {RESERVED[k]}")

    def check_line(section, k, v):
        # (sweep.sbatch reads a point's arguments a line each: a value of two lines would be
        # two arguments in every job.)
        if "\n" in v or "\r" in v:
            raise bad(f"[{section}] {k}: a value of several lines ({v!r}); give it on one line")
        if "\0" in v:  # (no command line can carry one: it ended the argument)
            raise bad(f"[{section}] {k}: a value with a NUL byte ({v!r})")

    if cp.has_section("set"):
        for k, v in cp.items("set"):
            check_key("set", k)
            sweep.fixed[k] = _unquote(v)
            check_line("set", k, sweep.fixed[k])
    if cp.has_section("values"):
        for k, v in cp.items("values"):
            check_key("values", k)
            if k in sweep.fixed:
                raise bad(f"{k} is both in [set] and in [values]")
            try:
                items = split_values(v)
            except ValueError as e:
                raise bad(f"[values] {k}: {e}") from None
            if not v.strip():
                raise bad(f"[values] {k} has an empty value list")
            if any(i == "" for i in items):
                raise bad(f"[values] {k} = {v.strip()!r} has an empty item")
            for i in items:
                check_line("values", k, i)
            sweep.values[k] = items
    if mode == "zip" and sweep.values:
        lens = {k: len(v) for k, v in sweep.values.items()}
        if len(set(lens.values())) > 1:
            raise bad("mode = zip needs value lists of one length, got "
                      + ", ".join(f"{k}: {n}" for k, n in lens.items()))

    rd = sw.get("run_dir", "").strip()
    if rd:
        sweep.run_dir = sweep._path(_unquote(rd))
    else:
        sweep.run_dir = sweep._path(sweep.base_config.get("run.dir") or TRIAD_DEFAULTS["run.dir"])
    # What every job would fail on at its start (triad-train --plan, which submit runs, makes no
    # directory): a run_dir that is a file, runs' names longer than a file name can be.
    if sweep.run_dir.exists() and not sweep.run_dir.is_dir():
        raise bad(f"run_dir {sweep.run_dir} is not a directory (each run's goes in it)")
    if len(f"{name}-000".encode()) > 255:
        raise bad(f"name is {len(name.encode())} bytes: its runs' directories (<name>-NNN) would "
                  f"be longer than a file name can be (255 bytes)")

    keys = list(sweep.values)
    count = math.prod(len(v) for v in sweep.values.values()) if mode != "zip" else 0
    if count > MAX_POINTS:  # (listed one by one, they took minutes and all the memory)
        raise bad(f"[values] the lists' lengths multiply to {count} points; a sweep has at most "
                  f"{MAX_POINTS} (a job array's indices)")
    if mode == "zip":
        combos = list(zip(*sweep.values.values())) if keys else [()]
    else:
        combos = list(itertools.product(*sweep.values.values()))
    first_of: dict[tuple, int] = {}
    for i, c in enumerate(combos):
        j = first_of.setdefault(tuple(c), i)
        if j != i:
            raise bad(f"[values] points {j} and {i} are the same run (" +
                      ", ".join(f"{k}={v}" for k, v in zip(keys, c)) + ")")
    sweep.points = [Point(i, f"{name}-{i:03d}", dict(zip(keys, c))) for i, c in enumerate(combos)]
    # One checkpoint directory for several points: each would resume from another's checkpoints
    # (a point found the last one's final step and trained nothing at its own values).
    shared: dict[str, int] = {}
    for p in sweep.points:
        given = sweep.resolved(p).get("checkpoint.dir", "")
        d = os.path.normpath(sweep._path(given)) if given else ""  # (ck, ./ck and ck/ alike)
        if d and shared.setdefault(d, p.index) != p.index:
            raise bad(f"checkpoint.dir = {given!r} is points {shared[d]} and {p.index}'s: each "
                      "would resume from the other's checkpoints; leave checkpoint.dir unset "
                      "(each run's go in its own run directory) or give each point its own")
    return sweep


def find_triad_train(sweep: Sweep) -> Path | None:
    """The triad-train the sweep's jobs would run (jobs/slurm/launch.sh: $TRIAD_TRAIN, else
    build/triad-train of the repository), or this checkout's; None where none is built."""
    candidates = [os.environ.get("TRIAD_TRAIN", ""),
                  os.path.join(os.environ["TRIAD_BUILD_DIR"], "triad-train")
                  if os.environ.get("TRIAD_BUILD_DIR") else "",
                  sweep.root / "build" / "triad-train",
                  Path(__file__).resolve().parent.parent / "build" / "triad-train"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def _grid_ranks(sweep: Sweep, p: Point) -> int:
    """The fewest ranks the point's grid runs on (tp·pp·cp·ep: data parallelism of ep): a
    config refused there is refused on every grid."""
    cfg = sweep.resolved(p)
    n = 1
    for k in ("parallel.tp", "parallel.pp", "parallel.cp", "parallel.ep"):
        try:
            n *= max(1, int(cfg.get(k, "1")))
        except ValueError:
            return 1  # triad-train names the bad value
    return n


def config_problems(sweep: Sweep, points: list[Point], triad_train: Path) -> list[str]:
    """Each point whose arguments triad-train refuses (an unknown key, a bad value, a model the
    grid cannot split), as "point I (run name: overrides): triad-train's message". Checked with
    `triad-train --plan`, which reads no data and starts no peers (milliseconds a point)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    # --plan starts no peers: Open MPI's singleton start-up without its runtime daemon (seconds
    # less a point).
    env = dict(os.environ, OMPI_MCA_ess_singleton_isolated="1")

    def check(p: Point) -> str | None:
        cmd = [str(triad_train), *sweep.args(p), "--plan", "--plan-ranks",
               str(_grid_ranks(sweep, p))]
        # Each its own Open MPI session directory: where OMPI_MCA_orte_tmpdir_base is set,
        # triad's singletons use it as it is (include/triad/core/mpi_session.h), and two
        # started at once can remove it under each other (MPI_Init then aborts).
        base = env.get("OMPI_MCA_orte_tmpdir_base")
        session = tempfile.mkdtemp(prefix="triad-sweep-",
                                   dir=base if base and os.path.isdir(base) else None)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=sweep.root,
                               env=dict(env, OMPI_MCA_orte_tmpdir_base=session), timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SweepError(f"cannot run {triad_train} --plan to check point {p.index}: "
                             f"{e}") from None
        finally:
            shutil.rmtree(session, ignore_errors=True)
        if r.returncode == 0:
            return None
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        msg = next((ln.split(" error: ", 1)[1] for ln in lines if " error: " in ln),
                   lines[-1] if lines else f"exit status {r.returncode}")
        return f"point {p.index} ({p.run_name}: {p.describe()}): {msg}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return [m for m in pool.map(check, points) if m is not None]


def check_configs(prog: str, sweep: Sweep, points: list[Point]) -> None:
    """SweepError when triad-train refuses a point's config (each named on stderr first); a
    note on stderr where no triad-train is built to ask."""
    exe = find_triad_train(sweep)
    if exe is None:
        print(f"{prog}: note: the points' configs are not checked (no triad-train built: "
              "jobs/build.sh, or set TRIAD_TRAIN)", file=sys.stderr)
        return
    problems = config_problems(sweep, points, exe)
    for line in problems:
        print(f"{prog}: {line}", file=sys.stderr)
    if problems:
        raise SweepError(f"{sweep.path}: triad-train refuses {len(problems)} of "
                         f"{len(points)} point{'s' * (len(points) != 1)} (listed above)")


def array_spec(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts = []
    for _, grp in itertools.groupby(enumerate(sorted(indices)), lambda t: t[1] - t[0]):
        g = [v for _, v in grp]
        parts.append(str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}")
    return ",".join(parts)


# ---- command line ----------------------------------------------------------------------------

def _display(path: Path) -> str:
    """A path as a user in the current directory would type it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def default_sbatch_script(sweep: Sweep) -> str:
    """jobs/slurm/sweep.sbatch of the sweep's repository, else of the repository this tool
    lives in, as the user would type it from the current directory."""
    rel = Path("jobs") / "slurm" / "sweep.sbatch"
    for root in (sweep.root, Path(__file__).resolve().parent.parent):
        if (root / rel).is_file():
            return _display(root / rel)
    return str(rel)


def format_list(sweep: Sweep) -> str:
    rows, counts = [], {s: 0 for s in STATUSES}
    for p in sweep.points:
        st = sweep.status(p)
        counts[st] += 1
        rows.append([str(p.index), p.run_name, p.describe(), st])
    head = (f"sweep {sweep.name}: {len(sweep.points)} point{'s' * (len(sweep.points) != 1)} "
            f"({sweep.mode}), runs in {sweep.run_dir}, base "
            + ", ".join(_display(b) for b in sweep.bases))
    if sweep.fixed:
        head += "\nevery point: " + " ".join(f"{k}={v}" for k, v in sweep.fixed.items())
    table = markdown_table(["index", "run", "overrides", "status"], rows,
                           align_right=[True, False, False, False])
    tail = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
    return f"{head}\n\n{table}\n\n{tail}"


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.sweep")
    ap = argparse.ArgumentParser(
        prog=prog, description="Expand a sweep file (inputs/sweeps/*.ini) into triad-train "
        "runs: list its points, print one point's arguments, or the sbatch line for the "
        "unfinished points.")
    sub = ap.add_subparsers(dest="cmd", metavar="{list,args,submit}", required=True)
    p_list = sub.add_parser("list", help="table of points: index, run name, overrides, status")
    p_list.add_argument("sweep", metavar="SWEEP.ini")
    p_args = sub.add_parser("args", help="triad-train arguments of point I, one per line")
    p_args.add_argument("sweep", metavar="SWEEP.ini")
    p_args.add_argument("index", metavar="I")
    p_sub = sub.add_parser("submit",
                           help="print the sbatch --array line for the unfinished points")
    p_sub.add_argument("sweep", metavar="SWEEP.ini")
    p_sub.add_argument("--sbatch-script", default=None,
                       help="the array job script (default: jobs/slurm/sweep.sbatch of the "
                            "repository)")
    a = ap.parse_args(argv)

    def body() -> int:
        sweep = load_sweep(a.sweep)
        if a.cmd == "list":
            print(format_list(sweep), flush=True)
            check_configs(prog, sweep, sweep.points)
            return 0
        if a.cmd == "args":
            try:
                if not re.fullmatch(r"-?[0-9]+", a.index):  # (int() reads "1_0" as 10)
                    raise ValueError
                i = int(a.index)
            except ValueError:
                raise SweepError(f"{sweep.path}: point index {a.index!r} is not an integer "
                                 f"(0-{len(sweep.points) - 1})") from None
            print("\n".join(sweep.args(sweep.point(i))))
            return 0
        # submit
        if a.sbatch_script is not None and not Path(a.sbatch_script).is_file():
            raise SweepError(f"--sbatch-script '{a.sbatch_script}': no such file (the job "
                             "script sbatch runs, e.g. jobs/slurm/sweep.sbatch)")
        todo = [p.index for p in sweep.points if sweep.status(p) != "finished"]
        # A point whose job runs now is not submitted again (its second job would stop at once).
        busy = [i for i in todo if run_in_progress(sweep.run_path(sweep.points[i]))]
        for i in busy:
            print(f"{prog}: point {i} ({sweep.points[i].run_name}) is running now (its run "
                  "directory is locked): left out", file=sys.stderr)
        todo = [i for i in todo if i not in busy]
        if not todo:
            print(f"{prog}: {a.sweep}: all {len(sweep.points)} points are finished"
                  f"{' or running' if busy else ''}; nothing to submit", file=sys.stderr)
            return 0
        # Before anything is submitted: a mistyped key would fail every job of the array.
        check_configs(prog, sweep, [sweep.points[i] for i in todo])
        script = a.sbatch_script or default_sbatch_script(sweep)
        spec = array_spec(todo) + (f"%{sweep.max_parallel}" if sweep.max_parallel else "")
        print(f"sbatch --array={spec} {script} {a.sweep}")
        print(f"{prog}: {len(todo)} of {len(sweep.points)} points unfinished", file=sys.stderr)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
