"""A/B: run one benchmark command in two checkouts, alternating, and print
each run's output side by side (the machines are shared and noisy: compare
within one sitting, as ratios).

    python benchmarks/ab.py --base ../base-checkout --rounds 3 -- \\
        benchmarks/bench_service.py --only latency,throughput --seconds 2

The command is run as ``python COMMAND...`` with the checkout as the working
directory, so each side's script imports its own ``lockmgr`` (the benchmark
scripts put their checkout first on sys.path; build the compiled table in
place in the base checkout first: ``python setup.py build_ext --inplace``).
Lines matching ``--grep`` (a regex; default: every line with a digit) are
collected per side and printed after the last round.
"""

import argparse
import os
import re
import subprocess
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the other checkout (A); B is this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grep", default=r"\d")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = [c for c in args.cmd if c != "--"]
    if not cmd:
        ap.error("no command")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sides = {"A (base)": os.path.abspath(args.base), "B (this)": here}
    lines = {k: [] for k in sides}
    pat = re.compile(args.grep)
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))   # ABBA...
        for side in order:
            env = {**os.environ, "PYTHONPATH": sides[side]}
            out = subprocess.run([sys.executable, *cmd], cwd=sides[side], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"--- {side} round {r + 1} FAILED:\n{out.stdout}\n{out.stderr}")
                return 1
            got = [ln for ln in out.stdout.splitlines() if pat.search(ln)]
            lines[side].append(got)
            print(f"--- {side}, round {r + 1}", flush=True)
            print("\n".join(got), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
