"""Where a shard's CPU goes, by thread: the shard's own thread (the loop, the
core, the table) and ZeroMQ's I/O thread (TCP reads and writes, the wake-ups
between it and the loop), per begin + lock(X) + commit, read from
/proc/PID/task/TID/stat over a window in the middle of the run; and the same
for the client processes' threads, summed by name.

    python benchmarks/shard_threads.py [--clients 8] [--seconds 4] [--rounds 2]

Client processes each lock fresh rows (uncontended) on one shard of a
LocalCluster; throughput is counted over the same window.
"""

import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lockmgr  # noqa: E402
from lockmgr import LocalCluster, Mode  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")


def _worker(endpoints, start, stop, counts, k):
    c = lockmgr.connect(endpoints)
    n = 0
    in_window = 0
    base = (os.getpid() << 20)
    while True:
        now = time.monotonic()
        if now >= stop[1]:
            break
        t = c.begin()
        t.lock(("db", "t", base + n), Mode.X)
        t.commit()
        n += 1
        if start[0] <= now < stop[0]:
            in_window += 1
    c.close()
    counts[k] = in_window


def _threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        out[tid] = (name, int(fields[11]), int(fields[12]))     # utime, stime (clock ticks)
    return out


def run(clients, seconds):
    with LocalCluster(1) as cl:
        pid = cl.pids[0]
        t0 = time.monotonic() + 1.0                  # the clients connect meanwhile
        w0, w1 = t0 + seconds * 0.25, t0 + seconds * 0.75
        counts = mp.Array("l", clients)
        ps = [mp.Process(target=_worker, args=(cl.endpoints, (w0,), (w1, t0 + seconds), counts, k))
              for k in range(clients)]
        for p in ps:
            p.start()
        time.sleep(max(0.0, w0 - time.monotonic()))
        a = _threads(pid)
        ca = {p.pid: _threads(p.pid) for p in ps}
        time.sleep(max(0.0, w1 - time.monotonic()))
        b = _threads(pid)
        cb = {p.pid: _threads(p.pid) for p in ps}
        for p in ps:
            p.join()
        txns = sum(counts)
        if txns == 0:
            print("no transaction finished inside the window (the shard did not answer?)")
            return
        print(f"{clients} client processes, {txns / (w1 - w0):,.0f} txn/s in the window")
        _report("", _by_name([(a, b)]), txns, w1 - w0, "shard process", "")
        _report("client ", _by_name([(ca[p], cb[p]) for p in cb]), txns, w1 - w0, "client processes",
                ", all clients")


def _by_name(windows):
    """{thread name: [user s, sys s]} over (before, after) readings of _threads,
    summed across the processes (one Python thread and one ZeroMQ I/O thread each)."""
    by = {}
    for a, b in windows:
        for tid, (name, u, s) in b.items():
            if tid in a:
                x = by.setdefault(name, [0.0, 0.0])
                x[0] += (u - a[tid][1]) / TCK
                x[1] += (s - a[tid][2]) / TCK
    return by


def _report(prefix, by, txns, window, total_label, share_note):
    total = 0.0
    for name, (du, ds) in sorted(by.items()):
        if du + ds == 0:
            continue
        total += du + ds
        print(f"  {prefix}{name:14s} user {du * 1e6 / txns:6.1f}  sys {ds * 1e6 / txns:6.1f}  "
              f"µs per txn  ({(du + ds) / window * 100:.0f}% of a core{share_note})")
    print(f"  {total_label}  {total * 1e6 / txns:6.1f} µs per txn")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 256:
        ap.error(f"--clients must be in 1..256; got {args.clients}")
    if not 0.5 <= args.seconds <= 3600:
        ap.error(f"--seconds must be in 0.5..3600; got {args.seconds}")
    if not 1 <= args.rounds <= 100:
        ap.error(f"--rounds must be in 1..100; got {args.rounds}")
    for _ in range(args.rounds):
        run(args.clients, args.seconds)


if __name__ == "__main__":
    main()
