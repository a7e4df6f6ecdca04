"""Benchmarks of 2PC on the lock service (figures: benchmarks/RESULTS.md).

    python benchmarks/bench_2pc.py                       # everything
    python benchmarks/bench_2pc.py --only prepare,restart,interference

prepare       prepares/s on one shard with 1 and with 32 concurrent preparing
              clients (threads sharing one Client, each: lock a row, prepare,
              commit), and the fsyncs/s of the shard's prepare log that carried
              them (prepare and decision records share fsyncs: group commit)
restart       a shard with 100,000 prepared locks in its log (1,000 transactions
              x 100 rows): time from SIGKILL+spawn to READY, and the shard's own
              replay time (the "restored ... in N ms" line of its log)
interference  pipelined LOCK+RELEASE throughput of one raw-protocol client
              process on a shard, alone / next to a process running plain
              lock+commit transactions / next to the same process running
              lock+prepare+commit (32 threads)
"""

import argparse
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_service import _run_raw  # noqa: E402

import lockmgr  # noqa: E402
from lockmgr import LocalCluster, Mode  # noqa: E402


def _stats(client):
    return client.stats()[0]


def _prepare_loop(client, tag, k, stop, counts, prepare=True):
    j = 0
    n = 0
    while not stop.is_set():
        j += 1
        t = client.begin(gtrid=f"{tag}-{k}-{j}")
        t.lock(("bench", f"p{k}", j), Mode.X)
        if prepare:
            t.prepare()
        t.commit()
        n += 1
    counts[k] = n


def run_preparers(client, nthreads, seconds, tag, prepare=True):
    stop = threading.Event()
    counts = [0] * nthreads
    ths = [threading.Thread(target=_prepare_loop, args=(client, tag, k, stop, counts, prepare), daemon=True)
           for k in range(nthreads)]
    for th in ths:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in ths:
        th.join(30)
    return sum(counts)


def bench_prepare(seconds):
    res = {}
    with LocalCluster(1) as c:
        cl = c.connect(request_timeout=10.0)
        run_preparers(cl, 4, 0.3, "warm")
        for n in (1, 32):
            s0 = _stats(cl)
            t0 = time.perf_counter()
            done = run_preparers(cl, n, seconds, f"c{n}")
            el = time.perf_counter() - t0
            s1 = _stats(cl)
            fs = s1["log_fsyncs"] - s0["log_fsyncs"]
            recs = (s1["prepares"] - s0["prepares"]) + (s1["decisions"] - s0["decisions"])
            res[n] = done / el
            print(f"prepare: {n:>2} concurrent preparing client(s): {done / el:8,.0f} prepares/s "
                  f"(each lock+prepare+commit), {fs / el:7,.0f} fsyncs/s, {recs / max(fs, 1):5.1f} log records "
                  f"per fsync, mean prepare+commit cycle {n * el / max(done, 1) * 1000:.2f} ms")
        print(f"prepare: ratio 32/1 = {res[32] / res[1]:.1f}x")
        cl.close()
    # the fsync cost of this disk, for reference
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        ts = []
        for _ in range(50):
            f.write(b"x" * 200)
            f.flush()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            ts.append(time.perf_counter() - t0)
        print(f"prepare: one fsync of a small append on this disk: median {statistics.median(ts) * 1e3:.2f} ms")


def bench_restart(rounds=3, txns=1000, rows=100):
    d = tempfile.mkdtemp(prefix="lockmgr-bench-2pc-")
    with LocalCluster(1, data_dir=d) as c:
        cl = c.connect(request_timeout=30.0)
        t0 = time.perf_counter()
        for k in range(txns):
            t = cl.begin(gtrid=f"r-{k}")
            t.lock_many([(("bench", f"t{k}", r), Mode.X) for r in range(rows)])
            t.prepare()
        print(f"restart: set-up: {txns} transactions x {rows} row locks prepared in {time.perf_counter() - t0:.1f} s; "
              f"log {os.path.getsize(os.path.join(c.shard_dir(0), 'prepared.wal')) / 1e6:.1f} MB")
        cl._eng.shutdown()
        spawn, replay = [], []
        logf = os.path.join(c.shard_dir(0), "shard.log")
        for _ in range(rounds):
            c.kill(0)
            t0 = time.perf_counter()
            c._start(0)
            spawn.append(time.perf_counter() - t0)
            with open(logf) as f:
                m = re.findall(r"restored (\d+) prepared transaction\(s\) with (\d+) lock\(s\) .* in ([\d.]+) ms",
                               f.read())
            replay.append(float(m[-1][2]))
            assert int(m[-1][0]) == txns and int(m[-1][1]) >= txns * rows, m[-1]
        with c.connect() as o:
            assert len(o.recover()) == txns
        print(f"restart: {m[-1][1]} prepared locks ({txns * rows} rows + their intention locks): "
              f"replay (read log + re-lock) median {statistics.median(replay):.0f} ms "
              f"[{', '.join(f'{x:.0f}' for x in replay)}]; SIGKILL -> READY (process start, imports, replay, bind) "
              f"median {statistics.median(spawn) * 1000:.0f} ms [{', '.join(f'{x * 1000:.0f}' for x in spawn)}]")


def _bg(endpoints, mode, seconds, ready, out):
    cl = lockmgr.connect(endpoints, request_timeout=10.0)
    ready.set()
    n = run_preparers(cl, 32, seconds, f"bg{os.getpid()}", prepare=(mode == "2pc"))
    st = cl.stats()[0]
    out.put((n / seconds, st["log_fsyncs"]))
    cl.close()


def bench_interference(seconds):
    rows = []
    for mode in ("alone", "plain", "2pc"):
        with LocalCluster(1) as c:
            bg = None
            if mode != "alone":
                ready, q = mp.Event(), mp.Queue()
                bg = mp.Process(target=_bg, args=(c.endpoints, mode, seconds + 1.0, ready, q))
                bg.start()
                ready.wait(30)
                time.sleep(0.3)
            r = _run_raw(c.endpoints, 1, seconds, window=4, per_frame=64, batch=0)
            extra = ""
            if bg is not None:
                rate, fs = q.get(timeout=60)
                bg.join(30)
                extra = f"; background: {rate:,.0f} txns/s" + (f", {fs} fsyncs" if mode == "2pc" else "")
            rows.append((mode, r))
            print(f"interference: LOCK+RELEASE throughput, {mode:>5}: {r:10,.0f} LOCK requests/s{extra}")
    base = rows[0][1]
    print("interference: ratios to alone: " + ", ".join(f"{m} {r / base:.2f}" for m, r in rows)
          + f"; 2pc vs plain background: {rows[2][1] / rows[1][1]:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="prepare,restart,interference")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "prepare" in only:
        bench_prepare(args.seconds)
    if "restart" in only:
        bench_restart()
    if "interference" in only:
        bench_interference(args.seconds)


if __name__ == "__main__":
    main()
