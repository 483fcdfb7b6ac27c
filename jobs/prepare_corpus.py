#!/usr/bin/env python3
"""Turn public-domain English prose shipped in Debian packages into plain UTF-8 text.

Input: a directory into which the Debian packages were unpacked with `dpkg-deb -x`
(jobs/setup.sh does the download and unpacking):

  bible-kjv + bible-kjv-text   usr/bin/bible, usr/lib/bible.data(.conc): the King James
                               Bible in the Bible Retrieval System's compressed format;
                               the package's own `bible` program decodes it.
  r-cran-janeaustenr           usr/lib/R/site-library/janeaustenr/data/Rdata.{rdx,rdb}: an
                               R lazy-load database (zlib-compressed R XDR serialization)
                               with one character vector (one element per printed line)
                               per novel; decoded by the small reader below.

Output (in --out):
  kjv.txt                              "Book N" chapter headings, one verse per line
                                       ("3 And God said, Let there be light: ...")
  austen_<novel>.txt (six novels)      one paragraph per line, a blank line between
                                       paragraphs; indented passages (verse, letters)
                                       keep their line breaks; Gutenberg's _italics_
                                       markers removed

Usage: prepare_corpus.py --root UNPACKED_DIR --out data/corpus [--only kjv|austen]
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

# --------------------------------------------------------------------------------------
# A minimal reader for R's XDR serialization format (version 2 and 3), enough for data
# objects: atomic vectors, lists, pairlists, attributes, symbols, ALTREP compact forms.
# --------------------------------------------------------------------------------------

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

NA_INTEGER = -(2**31)


class RFormatError(ValueError):
    pass


class RSymbol(str):
    """An R symbol (a name), distinct from a character string."""


class RObject:
    """An R value: `sexptype`, `value` (a Python list for vectors, dict for environments)
    and `attrs` (dict name -> value)."""

    __slots__ = ("sexptype", "value", "attrs")

    def __init__(self, sexptype, value, attrs=None):
        self.sexptype = sexptype
        self.value = value
        self.attrs = attrs or {}

    def __repr__(self):
        n = len(self.value) if hasattr(self.value, "__len__") else "?"
        return f"RObject(type={self.sexptype}, len={n}, attrs={list(self.attrs)})"


class RUnserializer:
    def __init__(self, data: bytes, what: str = "R data"):
        self.d = data
        self.i = 0
        self.what = what
        self.refs: list = []
        if data[:2] != b"X\n":
            raise RFormatError(f"{what}: not an R XDR serialization (starts {data[:2]!r})")
        self.i = 2
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            n = self.int()
            self.i += n  # native encoding name
        elif version != 2:
            raise RFormatError(f"{what}: unsupported serialization version {version}")

    # primitive readers
    def int(self) -> int:
        if self.i + 4 > len(self.d):
            raise RFormatError(f"{self.what}: truncated at byte {self.i}")
        (v,) = struct.unpack_from(">i", self.d, self.i)
        self.i += 4
        return v

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        if n < 0 or n > len(self.d):
            raise RFormatError(f"{self.what}: bad vector length {n} at byte {self.i}")
        return n

    def raw(self, n: int) -> bytes:
        if self.i + n > len(self.d):
            raise RFormatError(f"{self.what}: truncated at byte {self.i}")
        b = self.d[self.i:self.i + n]
        self.i += n
        return b

    # items
    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if t == NILVALUE_SXP:
            return None
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP,
                 MISSINGARG_SXP, BASENAMESPACE_SXP):
            return RObject(t, None)
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            if not 1 <= idx <= len(self.refs):
                raise RFormatError(f"{self.what}: bad reference {idx}")
            return self.refs[idx - 1]
        if t in (PERSISTSXP, NAMESPACESXP, PACKAGESXP):
            if self.int() != 0:
                raise RFormatError(f"{self.what}: unexpected string-vector header")
            names = [self.item() for _ in range(self.int())]
            obj = RObject(t, names)
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            name = self.item()
            sym = RSymbol(name if name is not None else "NA")
            self.refs.append(sym)
            return sym
        if t == ENVSXP:
            env = RObject(t, {})
            self.refs.append(env)
            self.int()  # locked
            enclos = self.item()
            frame = self.item()
            hashtab = self.item()
            attrs = self.item()
            env.value = {"enclos": enclos, "frame": frame, "hashtab": hashtab}
            env.attrs = self._attr_dict(attrs)
            return env
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # pairlist: walk the cdr chain iteratively
            items = []
            attrs = None
            while True:
                if has_attr or t in (ATTRLANGSXP, ATTRLISTSXP):
                    a = self.item()
                    if attrs is None:
                        attrs = a
                tag = self.item() if has_tag else None
                car = self.item()
                items.append((tag, car))
                flags = self.int()
                nt = flags & 0xFF
                if nt == NILVALUE_SXP:
                    break
                if nt not in (LISTSXP, LANGSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP):
                    self.i -= 4
                    items.append((None, self.item()))  # dotted tail
                    break
                t = nt
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
            return RObject(LISTSXP, items, self._attr_dict(attrs))
        if t == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            b = self.raw(n)
            if levels & (1 << 2):  # LATIN1
                return b.decode("latin-1")
            if levels & (1 << 1):  # BYTES
                return b.decode("utf-8", errors="replace")
            return b.decode("utf-8")
        if t == ALTREP_SXP:
            info = self.item()
            state = self.item()
            attrs = self.item()
            return self._altrep(info, state, attrs)

        if t in (LGLSXP, INTSXP):
            n = self.length()
            v = list(struct.unpack_from(f">{n}i", self.raw(4 * n)))
            v = [None if x == NA_INTEGER else x for x in v]
            if t == LGLSXP:
                v = [None if x is None else bool(x) for x in v]
        elif t == REALSXP:
            n = self.length()
            v = list(struct.unpack_from(f">{n}d", self.raw(8 * n)))
        elif t == CPLXSXP:
            n = self.length()
            f = struct.unpack_from(f">{2 * n}d", self.raw(16 * n))
            v = [complex(f[2 * k], f[2 * k + 1]) for k in range(n)]
        elif t == STRSXP:
            n = self.length()
            v = [self.item() for _ in range(n)]
        elif t in (VECSXP, EXPRSXP):
            n = self.length()
            v = [self.item() for _ in range(n)]
        elif t == RAWSXP:
            v = self.raw(self.length())
        elif t == S4SXP:
            v = None
        else:
            raise RFormatError(f"{self.what}: unsupported R object type {t} at byte {self.i}")
        attrs = self._attr_dict(self.item()) if has_attr else {}
        return RObject(t, v, attrs)

    def _attr_dict(self, pl):
        if pl is None:
            return {}
        if not isinstance(pl, RObject) or pl.sexptype != LISTSXP:
            raise RFormatError(f"{self.what}: attributes are not a pairlist")
        return {str(tag): val for tag, val in pl.value}

    def _altrep(self, info, state, attrs):
        try:
            cls = str(info.value[0][1])
        except Exception as e:  # noqa: BLE001
            raise RFormatError(f"{self.what}: malformed ALTREP header") from e
        a = self._attr_dict(attrs) if attrs is not None else {}
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, inc = state.value[:3]
            n = int(n)
            v = [start + k * inc for k in range(n)]
            if cls == "compact_intseq":
                return RObject(INTSXP, [int(x) for x in v], a)
            return RObject(REALSXP, v, a)
        if cls.startswith("wrap_"):
            inner = state.value[0]
            return RObject(inner.sexptype, inner.value, {**inner.attrs, **a})
        if cls == "deferred_string":
            arg = state.value[0][1] if state.sexptype == LISTSXP else state.value[0]
            v = [None if x is None else (str(int(x)) if float(x).is_integer() else repr(x))
                 for x in arg.value]
            return RObject(STRSXP, v, a)
        raise RFormatError(f"{self.what}: unsupported ALTREP class {cls!r}")


def decompress_rds(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def unserialize(data: bytes, what: str = "R data"):
    return RUnserializer(decompress_rds(data), what).item()


def named_list(obj) -> dict:
    names = obj.attrs.get("names")
    if names is None:
        raise RFormatError("expected a named list")
    return dict(zip(names.value, obj.value))


def read_lazyload_db(data_dir: Path) -> dict:
    """Read an R lazy-load database (Rdata.rdx + Rdata.rdb) into {name: RObject}."""
    rdx_path, rdb_path = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    index = named_list(unserialize(rdx_path.read_bytes(), str(rdx_path)))
    variables = named_list(index["variables"])
    comp = index.get("compressed")
    comp = comp.value[0] if isinstance(comp, RObject) else True
    comp = 1 if comp is True else int(comp or 0)
    rdb = rdb_path.read_bytes()
    out = {}
    for name, pos in variables.items():
        off, n = (int(x) for x in pos.value[:2])
        blk = rdb[off:off + n]
        if len(blk) != n:
            raise RFormatError(f"{rdb_path}: entry {name!r} runs past the end of the file")
        if comp == 0:
            raw = blk
        elif comp == 1:
            raw = zlib.decompress(blk[4:])
        else:
            kind, body = blk[4:5], blk[5:]
            raw = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                   b"0": lambda x: x}[kind](body)
        (expected,) = struct.unpack(">I", blk[:4])
        if len(raw) != expected:
            raise RFormatError(f"{rdb_path}: entry {name!r} has {len(raw)} bytes, "
                               f"expected {expected}")
        out[name] = RUnserializer(raw, f"{rdb_path}:{name}").item()
    return out


# --------------------------------------------------------------------------------------
# Jane Austen
# --------------------------------------------------------------------------------------

AUSTEN_NAMES = {
    "emma": "austen_emma",
    "mansfieldpark": "austen_mansfield_park",
    "northangerabbey": "austen_northanger_abbey",
    "persuasion": "austen_persuasion",
    "prideprejudice": "austen_pride_and_prejudice",
    "sensesensibility": "austen_sense_and_sensibility",
}

_ITALIC = re.compile(r"_([^_\n]+?)_")


def clean_austen(lines: list) -> str:
    """Printed lines -> paragraphs (blank-line separated), one paragraph per line."""
    paras, cur = [], []
    for ln in lines + [""]:
        ln = "" if ln is None else ln.replace("\r", "").replace("\t", "    ").rstrip()
        if ln.strip():
            cur.append(ln)
            continue
        if cur:
            if any(l.startswith("  ") for l in cur):
                # verse, letters, tables: keep lines, drop the common indentation
                ind = min(len(l) - len(l.lstrip(" ")) for l in cur)
                paras.append("\n".join(l[ind:] for l in cur))
            else:
                paras.append(re.sub(r"\s+", " ", " ".join(l.strip() for l in cur)))
            cur = []
    text = "\n\n".join(paras)
    text = _ITALIC.sub(r"\1", text).replace("_", "")
    return text.strip() + "\n"


def austen(root: Path) -> dict:
    data_dir = root / "usr/lib/R/site-library/janeaustenr/data"
    if not (data_dir / "Rdata.rdb").is_file():
        raise SystemExit(f"prepare_corpus: {data_dir}/Rdata.rdb not found "
                         "(unpack r-cran-janeaustenr there)")
    objs = read_lazyload_db(data_dir)
    out = {}
    for rname, fname in AUSTEN_NAMES.items():
        obj = objs.get(rname)
        if obj is None or obj.sexptype != STRSXP:
            raise SystemExit(f"prepare_corpus: {data_dir}: no character vector {rname!r} "
                             f"(found {sorted(objs)})")
        out[fname + ".txt"] = clean_austen(obj.value)
    return out


# --------------------------------------------------------------------------------------
# King James Bible
# --------------------------------------------------------------------------------------

def kjv(root: Path) -> dict:
    prog = root / "usr/bin/bible"
    data = root / "usr/lib/bible.data"
    if not prog.is_file() or not data.is_file():
        raise SystemExit(f"prepare_corpus: {prog} or {data} not found "
                         "(unpack bible-kjv and bible-kjv-text there)")
    env = dict(os.environ)
    libdirs = [str(p) for p in (root / "lib/x86_64-linux-gnu", root / "usr/lib/x86_64-linux-gnu",
                                root / "lib", root / "usr/lib") if p.is_dir()]
    env["LD_LIBRARY_PATH"] = ":".join(libdirs + [env.get("LD_LIBRARY_PATH", "")]).strip(":")
    # pretty-printed ("Genesis 1" headings, indented numbered verses), no line wrapping
    cmd = [str(prog), "-l", "1000000", "-p", str(data.parent), "Gen1:1-Rev22:21"]
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"prepare_corpus: {' '.join(cmd)} failed ({r.returncode}): "
                         f"{r.stderr.decode(errors='replace').strip()}")
    raw = r.stdout.decode("utf-8")
    out_lines, verses = [], 0
    for ln in raw.splitlines():
        s = ln.strip()
        if not s:
            if out_lines and out_lines[-1] != "":
                out_lines.append("")
            continue
        m = re.match(r"^(\d+) (.*)$", s)
        if m and ln.startswith(" "):
            verses += 1
            out_lines.append(f"{m.group(1)} {m.group(2).strip()}")
        else:
            if out_lines and out_lines[-1] != "":
                out_lines.append("")
            out_lines.append(s)  # "Genesis 1"
            out_lines.append("")
    text = "\n".join(out_lines).strip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    if verses != 31102 or not text.startswith("Genesis 1\n\n1 In the beginning God created"):
        raise SystemExit(f"prepare_corpus: unexpected output of {prog}: {verses} verses "
                         "(expected 31102)")
    return {"kjv.txt": text}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, type=Path,
                    help="directory the Debian packages were unpacked into (dpkg-deb -x)")
    ap.add_argument("--out", required=True, type=Path, help="output directory, e.g. data/corpus")
    ap.add_argument("--only", choices=["kjv", "austen"], help="produce one source only")
    a = ap.parse_args(argv)

    files = {}
    if a.only in (None, "kjv"):
        files.update(kjv(a.root))
    if a.only in (None, "austen"):
        files.update(austen(a.root))
    a.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = a.out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, a.out / name)
        print(f"  {a.out / name}: {len(text.encode('utf-8')):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
