#!/usr/bin/env python3
"""Generates src/data/unicode_tables.cpp: the Unicode classes of the pre-tokenizers.

GPT-2's pattern uses three classes: \\p{L} (letters: Lu Ll Lt Lm Lo), \\p{N} (numbers: Nd Nl
No) and \\s (the Unicode White_Space property). Tekken's (Mistral's) also tells letters by case
and knows marks: a second table holds the upper-case letters (Lu Lt), the lower-case ones (Ll)
and the marks (Mn Mc Me); the other letters (Lm Lo) count as both cases there. DeepSeek-V3's
also knows punctuation and symbols, \\p{P} and \\p{S}: a third table holds them (P* S*). Kimi
K2's tells the Han script, \\p{Han}, from the other letters: a fourth table holds it. DeepSeek
Coder's knows punctuation alone, \\p{P}: a fifth (P*). The
reference, tiktoken, matches them with the
Rust regex crate's tables, which are Unicode 16.0 (checked for tiktoken 0.14: every code
point's class agrees with Unicode 16.0.0 and differs from Python 3.11's own unicodedata,
14.0.0, on 9,272 letters and 120 numbers added in Unicode 15 and 16). So this script reads
the categories from the PyPI package `unicodedata2` at the same Unicode version, and the Han
script from the PyPI package `regex` (any version since Unicode 16: its Han code points that
Unicode 16.0 assigns; script data is not in unicodedata2):

    python3 -m venv /tmp/ucd && /tmp/ucd/bin/pip install unicodedata2==16.0.0 regex
    /tmp/ucd/bin/python src/data/gen_unicode_tables.py > src/data/unicode_tables.cpp

--verify additionally asks an installed tiktoken for every code point's class (by encoding
each character doubled under the patterns \\p{L}+, \\p{N}+ and \\s+ with a vocabulary that
holds every doubled character as one token) and fails on any difference; takes ~1 minute.
"""

import argparse
import sys

UNICODE_VERSION = "16.0.0"

# PropList.txt White_Space (unchanged since Unicode 6.3). Python's str.isspace() differs
# (it adds U+001C..U+001F), so the list is written out and checked below.
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NAMES = {LETTER: "kLetter", NUMBER: "kNumber", SPACE: "kSpace"}


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def classes(ucd):
    space = set()
    for a, b in WHITE_SPACE:
        space.update(range(a, b + 1))
    assert space == {c for c in range(0x110000) if chr(c).isspace()} - {0x1C, 0x1D, 0x1E, 0x1F}
    cls = [OTHER] * 0x110000
    for cp in range(0x110000):
        cat = ucd.category(chr(cp))
        if cat[0] == "L":
            cls[cp] = LETTER
        elif cat[0] == "N":
            cls[cp] = NUMBER
        if cp in space:
            assert cls[cp] == OTHER, hex(cp)
            cls[cp] = SPACE
    return cls


UPPER, LOWER, MARK = 1, 2, 3
CASE_NAMES = {UPPER: "kUpperCase", LOWER: "kLowerCase", MARK: "kMark"}


def cases(ucd):
    out = [OTHER] * 0x110000
    for cp in range(0x110000):
        cat = ucd.category(chr(cp))
        out[cp] = {"Lu": UPPER, "Lt": UPPER, "Ll": LOWER}.get(cat, MARK if cat[0] == "M" else OTHER)
    return out


def punct_symbols(ucd, kinds="PS"):
    return [1 if ucd.category(chr(cp))[0] in kinds else OTHER for cp in range(0x110000)]


def han(ucd):
    import regex
    pattern = regex.compile(r"\p{Han}")
    return [1 if ucd.category(chr(cp)) != "Cn" and pattern.match(chr(cp)) else OTHER
            for cp in range(0x110000)]


def ranges(cls):
    out = []
    cp = 0
    while cp < 0x110000:
        c = cls[cp]
        start = cp
        while cp + 1 < 0x110000 and cls[cp + 1] == c:
            cp += 1
        if c != OTHER:
            out.append((start, cp, c))
        cp += 1
    return out


def verify_with_tiktoken(cls, han_cls):
    import tiktoken
    cps = [c for c in range(0x110000) if not is_surrogate(c)]
    ranks = {bytes([b]): b for b in range(256)}
    for c in cps:
        ranks.setdefault((chr(c) * 2).encode(), len(ranks))
    texts = [chr(c) * 2 for c in cps]
    bad = 0
    for pat, of, want in ((r"\p{L}+|[\s\S]", cls, LETTER), (r"\p{N}+|[\s\S]", cls, NUMBER),
                          (r"\s+|[\s\S]", cls, SPACE), (r"\p{Han}+|[\s\S]", han_cls, 1)):
        enc = tiktoken.Encoding(name="probe", pat_str=pat, mergeable_ranks=ranks,
                                special_tokens={})
        for c, ids in zip(cps, enc.encode_ordinary_batch(texts)):
            if (len(ids) == 1) != (of[c] == want):
                bad += 1
                if bad <= 20:
                    print(f"tiktoken differs at U+{c:04X} for {pat}", file=sys.stderr)
    if bad:
        sys.exit(f"{bad} differences from tiktoken")
    print(f"verified against tiktoken {tiktoken.__version__}: all {len(cps)} code points agree",
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify", action="store_true", help="check every code point with tiktoken")
    args = ap.parse_args()
    try:
        import unicodedata2 as ucd
    except ImportError:
        sys.exit(f"needs the PyPI package unicodedata2=={UNICODE_VERSION} (see this file's doc)")
    if ucd.unidata_version != UNICODE_VERSION:
        sys.exit(f"unicodedata2 has Unicode {ucd.unidata_version}; tiktoken's tables are "
                 f"{UNICODE_VERSION}: pip install unicodedata2=={UNICODE_VERSION}")
    cls = classes(ucd)
    han_cls = han(ucd)
    if args.verify:
        verify_with_tiktoken(cls, han_cls)
    table = ranges(cls)
    case_table = ranges(cases(ucd))
    ps_table = ranges(punct_symbols(ucd))
    han_table = ranges(han_cls)
    punct_table = ranges(punct_symbols(ucd, "P"))
    w = sys.stdout.write
    w("// GENERATED by src/data/gen_unicode_tables.py — do not edit. Regenerate with\n")
    w(f"//   pip install unicodedata2=={UNICODE_VERSION} regex\n")
    w("//   python3 src/data/gen_unicode_tables.py > src/data/unicode_tables.cpp\n")
    w(f"// Unicode {UNICODE_VERSION} (the Rust regex crate's tables that tiktoken uses): the\n")
    w("// code point ranges of \\p{L} (L*), \\p{N} (N*) and \\s (White_Space), sorted and\n")
    w("// disjoint; every other code point is 'other'. Then the ranges of upper-case letters\n")
    w("// (Lu Lt), lower-case letters (Ll) and marks (M*), for tekken's pattern, and those of\n")
    w("// punctuation and symbols (P* S*), for DeepSeek-V3's, of the Han script, for Kimi K2's,\n")
    w("// and of punctuation (P*), for DeepSeek Coder's.\n")
    w('#include "triad/data/pretokenize.h"\n\n')
    w("namespace triad::pretok {\n\n")
    def array(decl, cells):
        w("// clang-format off\n")
        w(decl + " = {\n")
        line = ""
        for cell in cells:  # as many per line as fit in 100 columns
            if line and len(line) + 1 + len(cell) > 100:
                w(line + "\n")
                line = ""
            line = (line + " " + cell) if line else "    " + cell
        w(line + "\n")
        w("};\n")
        w("// clang-format on\n")

    array("const UnicodeRange kUnicodeRanges[]",
          [f"{{0x{a:X}, 0x{b:X}, {NAMES[c]}}}," for a, b, c in table])
    w("const size_t kUnicodeRangeCount = sizeof(kUnicodeRanges) / sizeof(kUnicodeRanges[0]);\n\n")
    array("const CaseRange kCaseRanges[]",
          [f"{{0x{a:X}, 0x{b:X}, {CASE_NAMES[c]}}}," for a, b, c in case_table])
    w("const size_t kCaseRangeCount = sizeof(kCaseRanges) / sizeof(kCaseRanges[0]);\n\n")
    array("const CodeRange kPunctSymbolRanges[]",
          [f"{{0x{a:X}, 0x{b:X}}}," for a, b, _ in ps_table])
    w("const size_t kPunctSymbolRangeCount = sizeof(kPunctSymbolRanges) / "
      "sizeof(kPunctSymbolRanges[0]);\n\n")
    array("const CodeRange kHanRanges[]", [f"{{0x{a:X}, 0x{b:X}}}," for a, b, _ in han_table])
    w("const size_t kHanRangeCount = sizeof(kHanRanges) / sizeof(kHanRanges[0]);\n\n")
    array("const CodeRange kPunctRanges[]", [f"{{0x{a:X}, 0x{b:X}}}," for a, b, _ in punct_table])
    w("const size_t kPunctRangeCount = sizeof(kPunctRanges) / sizeof(kPunctRanges[0]);\n\n")
    w("}  // namespace triad::pretok\n")
    print(f"{len(table)} + {len(case_table)} + {len(ps_table)} + {len(han_table)} + "
          f"{len(punct_table)} ranges", file=sys.stderr)


if __name__ == "__main__":
    main()
