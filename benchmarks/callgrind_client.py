"""Instructions per acquire+release in the client process (all its threads,
ZeroMQ's I/O thread included), counted by valgrind's callgrind: repeatable
where timings on the shared 2-core machine are not (benchmarks/RESULTS.md,
"Service performance, round 3").

    python benchmarks/callgrind_client.py [--models sync,aio1,aio8]

A 1-shard LocalCluster runs natively; the client runs under
``valgrind --tool=callgrind`` twice per model, for 200 and for 1,000
acquire+releases (begin + lock(X) + commit on fresh keys), and the
difference of the two totals divided by 800 is printed, so start-up and
import costs cancel out. Models: ``sync`` (one thread), ``aioN`` (N tasks
sharing one ``lockmgr.aio`` client; N in 1..8), ``many8`` (one thread,
lock_many of 8 rows over 2 tables + commit: per transaction), ``threads8``
(8 threads sharing one Client). With N > 1 the count depends
on how calls coalesce into frames, i.e. on timing: expect a few % of spread.
"""

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import lockmgr  # noqa: E402
import lockmgr.aio  # noqa: E402
from lockmgr import LocalCluster, Mode  # noqa: E402

_TABLES = ("t0", "t1")
MODELS = ("sync", "many8", "threads8") + tuple(f"aio{k}" for k in range(1, 9))


def client(model, n, endpoint):
    if model == "sync":
        cl = lockmgr.connect([endpoint])
        for i in range(n):
            t = cl.begin()
            t.lock(("k", 0, i), Mode.X)
            t.commit()
        cl.close()
        return
    if model == "many8":
        cl = lockmgr.connect([endpoint])
        for i in range(n):
            t = cl.begin()
            t.lock_many([(("db", _TABLES[k % 2], i * 8 + k), Mode.X) for k in range(8)])
            t.commit()
        cl.close()
        return
    if model == "threads8":
        cl = lockmgr.connect([endpoint])

        def tw(cid):
            for i in range(n // 8):
                t = cl.begin()
                t.lock(("k", cid, i), Mode.X)
                t.commit()
        ths = [threading.Thread(target=tw, args=(c,)) for c in range(8)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        cl.close()
        return
    k = int(model[3:])

    async def main():
        cl = await lockmgr.aio.connect([endpoint])

        async def w(cid):
            for i in range(n // k):
                t = cl.begin()
                await t.lock(("k", cid, i), Mode.X)
                await t.commit()
        await asyncio.gather(*(w(c) for c in range(k)))
        await cl.close()
    asyncio.run(main())


def count(model, n, endpoint, functions=False):
    """The client's instruction total for ``n`` operations (and, with ``functions``,
    its per-function counts)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                        os.path.abspath(__file__), "--client", model, str(n), endpoint],
                       env=dict(os.environ, PYTHONPATH=HERE), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (callgrind_total(out), callgrind_functions(out)) if functions else callgrind_total(out)


def callgrind_functions(path):
    """{(shared object, function): self instructions} of a callgrind output file."""
    txt = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    out = collections.Counter()
    for line in txt.splitlines():
        m = re.match(r"\s*([\d,]+) \(.*?\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        lib = re.search(r"\[(.*?)\]\s*$", m.group(2))
        func = re.sub(r"\s*\[.*$", "", m.group(2)).split(":")[-1]
        out[(lib.group(1).split("/")[-1] if lib else "", func)] += int(m.group(1).replace(",", ""))
    return out


def print_profile(lo, hi, n, top):
    """Where the instructions per operation go: the difference of two runs'
    per-function self counts (``lo``, ``hi``: callgrind_functions of runs that
    did ``n`` operations apart), by shared object and the ``top`` functions."""
    d = collections.Counter({k: (hi[k] - lo[k]) / n for k in set(lo) | set(hi)})
    libs = collections.Counter()
    for (lib, _), v in d.items():
        libs[lib] += v
    print("  by shared object:")
    for lib, v in libs.most_common(12):
        print(f"    {v:9,.0f}  {lib or '(inlined headers)'}")
    print(f"  top {top} functions (self):")
    for (lib, func), v in d.most_common(top):
        print(f"    {v:9,.0f}  {lib[:28]:28s} {func[:100]}")


def callgrind_total(path):
    """The instruction total of a callgrind output file (benchmarks/callgrind_shard.py uses it too)."""
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def main():
    if sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sync,aio1,aio8")
    ap.add_argument("--functions", type=int, default=0, metavar="N",
                    help="also print where the instructions go: by shared object and the N costliest functions")
    args = ap.parse_args()
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {', '.join(bad)}; expected some of {', '.join(MODELS)}")
    with LocalCluster(1) as c:
        for model in args.models.split(","):
            if args.functions:
                (lo, flo), (hi, fhi) = (count(model, 200, c.endpoints[0], True),
                                        count(model, 1000, c.endpoints[0], True))
            else:
                lo, hi = count(model, 200, c.endpoints[0]), count(model, 1000, c.endpoints[0])
            print(f"{model}: {(hi - lo) / 800:,.0f} client instructions per acquire+release", flush=True)
            if args.functions:
                print_profile(flo, fhi, 800, args.functions)


if __name__ == "__main__":
    main()
