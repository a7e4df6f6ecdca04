"""Where a callgrind profile's instructions go, by line of the .py sources that
Cython compiled (the generated C marks each statement with its .py line).

    valgrind --tool=callgrind --callgrind-out-file=OUT python SCRIPT ...
    python benchmarks/callgrind_lines.py OUT NOPS [--match engine.py] [--top 60]

For every C line of a compiled module it adds the line's own cost (self) and
the cost of the calls made from it (inclusive), maps the C line to the .py
line whose marker comes before it, and prints the lines with the largest
inclusive cost divided by NOPS (the operations the run did). Cython's shared
helpers (argument parsing, calls between modules) come after a module's last
marker, so that line collects them. Interpreted
code and libpython's own recursion are not resolved: use it to find the
expensive statements of compiled code, not for totals (benchmarks/
callgrind_client.py and callgrind_shard.py give those).
"""

import argparse
import collections
import os
import re

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = re.compile(r'\s*/\* "([^"]+\.pyx?)":(\d+)')


def costs(path):
    """{(C file, line): self}, {(C file, line): inclusive} of a callgrind output file."""
    files = {}
    own, incl = collections.Counter(), collections.Counter()
    cur, last, in_call = None, 0, False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                p = parts[0]
                ln = (last + int(p[1:]) if p[0] == "+" else last - int(p[1:]) if p[0] == "-"
                      else last if p == "*" else int(p))
                last = ln
                cost = int(parts[1]) if len(parts) > 1 else 0
                if cur and cur.endswith(".c"):
                    incl[(cur, ln)] += cost
                    if not in_call:
                        own[(cur, ln)] += cost
                in_call = False
                continue
            key, _, rest = line.partition("=")
            if key in ("fl", "fi", "fe", "cfl", "cfi"):
                m = re.match(r"\((\d+)\)(?:\s+(.*))?", rest)
                name = rest
                if m:
                    if m.group(2):
                        files[m.group(1)] = m.group(2)
                    name = files.get(m.group(1))
                if key in ("fl", "fi", "fe"):
                    cur = name
            elif key == "calls":
                in_call = True
    return own, incl


_C_LINES = {}


def py_lines(cfile):
    """{C line: (py file, py line)} of a Cython-generated C file (None if not found)."""
    cache = _C_LINES
    if cfile not in cache:
        p = cfile if os.path.isabs(cfile) else os.path.join(HERE, cfile)
        m, at = {}, None
        if os.path.exists(p):
            with open(p, errors="replace") as f:
                for i, text in enumerate(f, 1):
                    mm = _MARK.match(text)
                    if mm:
                        at = (mm.group(1), int(mm.group(2)))
                    m[i] = at
        cache[cfile] = m or None
    return cache[cfile]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("nops", type=int)
    ap.add_argument("--match", default="", help="only .py files whose path contains this")
    ap.add_argument("--top", type=int, default=60)
    a = ap.parse_args()
    if a.nops <= 0:
        ap.error(f"NOPS must be a positive number of operations; got {a.nops}")
    if not os.path.isfile(a.out):
        ap.error(f"no callgrind output file {a.out!r}")
    own, incl = costs(a.out)
    by_self, by_incl = collections.Counter(), collections.Counter()
    for src, dst in ((own, by_self), (incl, by_incl)):
        for (cf, ln), v in src.items():
            m = py_lines(cf)
            if m and m.get(ln):
                dst[m[ln]] += v
    print(f"{'incl':>9} {'self':>8}  line   (instructions per operation)")
    shown = 0
    for k, v in by_incl.most_common():
        if a.match not in k[0]:
            continue
        p = os.path.join(HERE, k[0])
        text = ""
        if os.path.exists(p):
            with open(p) as f:
                lines = f.read().splitlines()
            text = lines[k[1] - 1].strip()[:80] if 0 < k[1] <= len(lines) else ""
        print(f"{v / a.nops:9.0f} {by_self[k] / a.nops:8.0f}  {os.path.basename(k[0])}:{k[1]}  {text}")
        shown += 1
        if shown >= a.top:
            break


if __name__ == "__main__":
    main()
