"""The cost of the k-th waiter on one hot row, for k = 10, 100, 1,000, 10,000:
in the lock table as the embedded manager drives it (lock, then the deadlock
search of the new wait) and in a shard core (a LOCK request that parks).

    python benchmarks/hot_row.py [--backend c|python] [--mix]

One holder has X on the row; waiters queue behind it one by one (in the
shard, PER_SESSION of them per session, as many clients' waiters: one session
may park at most 10,000, the waits_per_session quota, and the 10,001st is
refused instead). For each k
the time of waiters k-4..k+5 is averaged (ten waiters); the ratio of the
10,000th to the 10th is the figure (1.0: the cost does not grow with the
queue). ``--mix``: waiters alternate S and X.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr._core import table_class  # noqa: E402
from lockmgr.service import wire  # noqa: E402
from lockmgr.service.shard.core import ShardCore  # noqa: E402

X, S = 5, 3
SIZES = (10, 100, 1000, 10000)


def table_costs(backend, mix):
    t = table_class(backend)()
    t.lock(1, ("db", "t", 0), X)
    out = {}
    for k in range(1, max(SIZES) + 6):
        mode = S if mix and k % 2 else X
        t0 = time.perf_counter()
        t.lock(k + 1, ("db", "t", 0), mode)
        t.find_cycle(k + 1)
        el = time.perf_counter() - t0
        for n in SIZES:
            if n - 4 <= k <= n + 5:
                out.setdefault(n, []).append(el)
    return {n: sum(v) / len(v) for n, v in out.items()}


PER_SESSION = 1000     # waiters queued by one session (a session may park 10,000: the waits_per_session quota)


def shard_costs(mix):
    core = ShardCore(epoch=1, probe_delay=None)
    core.now = 0.0
    core.frame((b"c",), 9, 0, [[wire.HELLO, 1, 3_600_000, "hot"]], 10)
    core.frame((b"c",), 9, 0, [[wire.LOCK, 2, 1, ["db", "t", 0], X, False, None, 0]], 10)
    core.take_replies()
    out = {}
    for k in range(1, max(SIZES) + 6):
        mode = S if mix and k % 2 else X
        # the waiters of many clients: session 10 + k // PER_SESSION, opened by its first request
        sid, seq = 10 + k // PER_SESSION, 2 + k % PER_SESSION
        prefix = (b"c%d" % sid,)
        if k == 1 or k % PER_SESSION == 0:
            core.frame(prefix, sid, 0, [[wire.HELLO, 1, 3_600_000, "hot"]], 10)
            core.take_replies()
        req = [[wire.LOCK, seq, 1 + k, ["db", "t", 0], mode, False, None, 0]]
        t0 = time.perf_counter()
        core.frame(prefix, sid, 0, req, 10)
        el = time.perf_counter() - t0
        for n in SIZES:
            if n - 4 <= k <= n + 5:
                out.setdefault(n, []).append(el)
    waits = core.counters["waits"]
    if waits != max(SIZES) + 5:       # every LOCK parked (none refused, e.g. by a quota)
        raise SystemExit(f"only {waits} of {max(SIZES) + 5} LOCKs parked: the figures would be wrong")
    return {n: sum(v) / len(v) for n, v in out.items()}


def show(what, costs):
    base = costs[SIZES[0]]
    cells = ", ".join(f"k={n}: {costs[n] * 1e6:.1f} us ({costs[n] / base:.2f}x)" for n in SIZES)
    print(f"{what}: {cells}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="c")
    ap.add_argument("--mix", action="store_true")
    a = ap.parse_args()
    tag = "S/X mix" if a.mix else "X"
    show(f"table ({a.backend}), {tag} waiters: lock + deadlock search of the k-th waiter",
         table_costs(a.backend, a.mix))
    show(f"shard core (default table), {tag} waiters: LOCK that parks", shard_costs(a.mix))


if __name__ == "__main__":
    main()
