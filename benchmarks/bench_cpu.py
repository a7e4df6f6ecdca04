"""CPU-cost probes for the lock service (figures in benchmarks/RESULTS.md).

On 2 cores shared with other work, throughput swings with the load; CPU time
per operation moves much less, so these report CPU time, to be run side by
side (alternating) with another tree: ``PYTHONPATH=TREE python TREE/benchmarks/bench_cpu.py``.

    python benchmarks/bench_cpu.py --only inproc     # shard LOCK_MANY handling without sockets
    python benchmarks/bench_cpu.py --only roundtrip  # CPU per thread per begin+lock+commit

inproc     a Shard fed frames directly (_on_frame, then the replies packed as
           _flush would): 4 x (LOCK_MANY of 64 fresh keys + RELEASE) per
           frame; microseconds per granted lock, everything included but
           the sockets.
roundtrip  one client, one shard (LocalCluster), begin + lock(("k", 1, i), X) +
           commit in a loop; CPU time of every thread of the shard and of the
           client process (from /proc), per acquire+release (2 round trips).
"""

import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr import LocalCluster, Mode, shard as shard_mod
from lockmgr.service import wire


def inproc(nframes=2000, per_frame=4, batch=64):
    sh = shard_mod.Shard("tcp://127.0.0.1:0", tempfile.mkdtemp(prefix="bench-cpu-"))
    sid = 12345
    sh._on_frame([b"c", wire.pack_requests(sid, 0, [[wire.HELLO, 1, 600000, "b"]])])
    sh._out = {}
    seq, txn, key = 2, 1 << 40, 0
    frames = []
    for _ in range(nframes):
        reqs = []
        for _ in range(per_frame):
            txn += 1
            items = []
            for _ in range(batch):
                key += 1
                items.append([["b", 1, key], 5])
            reqs.append([wire.LOCK_MANY, seq, txn, items, False, None, 0])
            reqs.append([wire.RELEASE, seq + 1, txn, True])
            seq += 2
        frames.append(wire.pack_requests(sid, seq - 2 * per_frame, reqs))
    pack = sh._packer.pack
    t0 = time.process_time()
    for f in frames:
        sh._on_frame([b"c", f])
        for reps in sh._out.values():
            pack([wire.VERSION, reps])
        sh._out = {}
    el = time.process_time() - t0
    n = nframes * per_frame * batch
    assert sh._table.stats()["requests"] == 0
    print(f"inproc: {el / n * 1e6:.3f} us CPU per granted lock (LOCK_MANY of {batch} + its RELEASE, "
          f"unpack and reply packing included; {n / el:,.0f} locks per CPU-second)")
    sh.close()


def _cpu(path):
    with open(path) as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def roundtrip(n=4000):
    with LocalCluster(1) as c:
        cl = c.connect()
        pid = c.pids[0]

        def run():
            for i in range(n):
                t = cl.begin()
                t.lock(("k", 1, i), Mode.X)
                t.commit()
        run()   # warm-up; every thread exists after it
        tasks = sorted(glob.glob(f"/proc/{pid}/task/*/stat"))
        mine = sorted(glob.glob("/proc/self/task/*/stat"))
        a, b = [_cpu(p) for p in tasks], [_cpu(p) for p in mine]
        w0 = time.perf_counter()
        run()
        el = time.perf_counter() - w0
        a2, b2 = [_cpu(p) for p in tasks], [_cpu(p) for p in mine]
        sh = [round((y - x) / n * 1e6, 1) for x, y in zip(a, a2)]
        cli = [round((y - x) / n * 1e6, 1) for x, y in zip(b, b2)]
        print(f"roundtrip: {n / el:,.0f} acquire+release/s; CPU us per acquire+release: shard total {sum(sh):.1f} "
              f"(main thread {sh[0]}), client total {sum(cli):.1f} (main thread {cli[0]}); per thread: "
              f"shard {sh}, client {cli}")
        cl.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="inproc,roundtrip")
    args = ap.parse_args()
    what = set(args.only.split(","))
    if "inproc" in what:
        inproc()
    if "roundtrip" in what:
        roundtrip()


if __name__ == "__main__":
    main()
