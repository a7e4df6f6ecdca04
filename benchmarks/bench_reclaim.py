"""Lock reclaim after a shard restart (issue 11): what a SIGKILL costs.

    python benchmarks/bench_reclaim.py [--quick] [--only recovery|records]

recovery: one shard; S sessions (1 or 100) hold N locks in all (10, 1,000,
100,000), one transaction each, spread over tables of 1,000 rows (below the
escalation threshold). The shard is SIGKILLed and restarted (``grace`` 30 s);
each client notices on its next call and reclaims in one frame. Reported:
  - up:        SIGKILL -> the restarted shard prints READY (process start, log replay)
  - reclaimed: shard up -> grace period over (every session reclaimed), from the shard's log
  - reclaiming: first RECLAIM received -> grace period over (the shard's reclaim work)
  - first:     SIGKILL -> the first new grant to a new session (it waited out the grace period)
  - after:     lock+commit per second by one client in the second after the grace period
               (during the grace period new requests wait: 0 by design)
records: lock+commit/s of one client, and session open+lock+commit+close/s,
with session records in the log (the default) and without (--grace 0).
"""

import argparse
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lockmgr import LocalCluster, Mode  # noqa: E402

X = Mode.X


def _grace_line(cl):
    """The shard's "grace period over" log line (it may be written just after the answers)."""
    end = time.monotonic() + 3.0
    while True:
        with open(os.path.join(cl.shard_dir(0), "shard.log")) as f:
            lines = [ln for ln in f if "grace period over" in ln]
        if lines or time.monotonic() > end:
            return lines[-1] if lines else ""
        time.sleep(0.01)


def recovery(nlocks, nsessions):
    with LocalCluster(1, grace=30) as cl:
        clients = [cl.connect(session_ttl=10.0, request_timeout=5.0) for _ in range(nsessions)]
        txns = []
        per = nlocks // nsessions
        for k, c in enumerate(clients):
            t = c.begin()
            items = [(("db", f"s{k}t{i // 1000}", i), X) for i in range(per)]
            for j in range(0, len(items), 4096):
                t.lock_many(items[j:j + 4096])
            txns.append(t)
        t0 = time.monotonic()
        cl.kill(0)
        cl.restart(0)
        up = time.monotonic() - t0
        # every client's next call finds the restarted shard and reclaims first
        # (HELD waits for the grace period's end, as every request does)
        pokes = [threading.Thread(target=t.held) for t in txns]
        for p in pokes:
            p.start()
        probe = cl.connect(session_ttl=10.0, request_timeout=5.0)
        u = probe.begin()
        u.lock(("db", "probe", 1), X, timeout=60)
        first = time.monotonic() - t0
        u.commit()
        for p in pokes:
            p.join(60)
        line = _grace_line(cl)
        m = re.search(r"\(([0-9.]+)s; ([0-9.]+)s after the first reclaim\): (\d+) session\(s\) reclaimed (\d+) lock",
                      line)
        reclaimed = float(m.group(1)) if m else float("nan")
        work = float(m.group(2)) if m else float("nan")
        nrec = int(m.group(4)) if m else -1
        n = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            v = probe.begin()
            v.lock(("db", "after", n), X)
            v.commit()
            n += 1
        for t in txns:
            t.commit()
        for c in clients + [probe]:
            c.close()
    return up, reclaimed, work, first, n, nrec


def records(grace, seconds):
    with LocalCluster(1, grace=grace) as cl:
        c = cl.connect()
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = c.begin()
            t.lock(("db", "r", n % 1000), X)
            t.commit()
            n += 1
        c.close()
        m = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with cl.connect() as d:
                t = d.begin()
                t.lock(("db", "s", m % 1000), X)
                t.commit()
            m += 1
    return n / seconds, m / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["recovery", "records"])
    a = ap.parse_args()
    if a.only in (None, "recovery"):
        print("recovery after SIGKILL (1 shard, grace 30 s)")
        print(f"{'locks':>8} {'sessions':>8} {'up s':>7} {'reclaimed s':>12} {'reclaiming s':>13} "
              f"{'first grant s':>14} {'after lock/s':>13} {'reclaimed locks':>16}")
        for nlocks in ([10, 1000] if a.quick else [10, 1000, 100_000]):
            for ns in (1, 100):
                if ns > nlocks:
                    continue
                up, rec, work, first, after, nrec = recovery(nlocks, ns)
                print(f"{nlocks:>8} {ns:>8} {up:>7.3f} {rec:>12.3f} {work:>13.3f} {first:>14.3f} {after:>13} "
                      f"{nrec:>16}", flush=True)
    if a.only in (None, "records"):
        secs = 1.0 if a.quick else 3.0
        print("\ncost of the session records (1 shard, 1 client)")
        print(f"{'log':>22} {'lock+commit/s':>14} {'open+lock+commit+close/s':>26}")
        for grace, label in ((0, "no session records"), (None, "session records")):
            lk, sess = records(grace, secs)
            print(f"{label:>22} {lk:>14.0f} {sess:>26.1f}", flush=True)


if __name__ == "__main__":
    main()
