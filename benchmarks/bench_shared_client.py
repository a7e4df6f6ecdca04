"""Acquire+release throughput of N threads sharing one Client (one shard): the
client engine's leader/follower cost with short calls only.

    PYTHONPATH=. python benchmarks/bench_shared_client.py [--threads 8] [--seconds 3]

Used for the A/B of the long-wait hand-off (docs/service.md, "Client engine"): calls
shorter than 2 ms never hand off, so this figure must not move.
"""

import argparse
import sys
import threading
import time

from lockmgr import LocalCluster, Mode


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    with LocalCluster(1) as c:
        cl = c.connect()
        counts = [0] * a.threads
        stop = time.monotonic() + a.seconds

        def worker(k):
            i = 0
            while time.monotonic() < stop:
                t = cl.begin()
                t.lock(("k", k, i), Mode.X)
                t.commit()
                i += 1
            counts[k] = i

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(a.threads)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        el = time.perf_counter() - t0
        print(f"{a.threads} threads, one Client, one shard: {sum(counts) / el:,.0f} acquire+release/s "
              f"(hand-offs: {getattr(cl._eng, 'handoffs', 'n/a')})")
        cl.close()


if __name__ == "__main__":
    sys.exit(main())
