"""How long a busy shard takes to stop on SIGTERM, and how long one call into
the core runs while it works through one frame that queues N waiters on one
row.

    python benchmarks/busy_shard.py [--waiters 5000] [--busy 1.0] [--runs 3]

Per run: a 1-shard LocalCluster is sent thirty ~4 MiB frames (64 PINGs of
65,000 empty arrays each: some 0.3-1 s of decoding apiece); after ``--busy``
seconds SIGTERM; the time from SIGTERM to the process's exit is printed. Then,
in-process (no sockets): one transaction holds X on a row and one frame of N
LOCKs from N other transactions queues behind it, through the server's
batching: the longest single call into the core, and the whole frame's time.
"""

import argparse
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from lockmgr import LocalCluster  # noqa: E402
from lockmgr.service import wire  # noqa: E402
from lockmgr.service.shard.server import Shard  # noqa: E402


def frame_of_waiters(sid, n):
    return wire.pack_requests(sid, 0, [[wire.LOCK, 3 + i, 2 + i, ["db", "t", 0], 5, False, None, 0]
                                       for i in range(n)])


def slow_frame():
    return msgpack.packb([wire.VERSION, 0, 0, [[wire.PING, k, [[]] * 65000] for k in range(64)]])


def sigterm_latency(busy):
    c = LocalCluster(1)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(c.endpoints[0])
    try:
        frame = slow_frame()
        for _ in range(30):
            s.send(frame)
        time.sleep(busy)
        proc = c._procs[0]
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
        return time.monotonic() - t0
    finally:
        s.close(0)
        ctx.term()
        c.stop()


def longest_call(n, busy):
    sh = Shard("tcp://127.0.0.1:0", tempfile.mkdtemp())
    try:
        ident = b"\x00busy"
        for payload in (wire.pack_requests(7, 0, [[wire.HELLO, 1, 600_000, "x"]]),
                        wire.pack_requests(7, 0, [[wire.LOCK, 2, 1, ["db", "t", 0], 5, False, None, 0]]),
                        frame_of_waiters(7, n)):
            sh.core.now = time.monotonic()
            sh._on_frame([ident, payload])
        worst = 0.0
        calls = 0
        stop = time.monotonic() + busy
        while sh.core.backlog and time.monotonic() < stop:
            t = time.perf_counter()
            sh._resume()
            worst = max(worst, time.perf_counter() - t)
            calls += 1
        return worst, calls, sh.core.handled
    finally:
        sh.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--waiters", type=int, default=5000)
    ap.add_argument("--busy", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for r in range(a.runs):
        print(f"run {r + 1}: SIGTERM {a.busy:g} s into thirty 4 MiB frames: the shard exited in "
              f"{sigterm_latency(a.busy) * 1000:.0f} ms", flush=True)
    t0 = time.perf_counter()
    worst, calls, handled = longest_call(a.waiters, 120)
    print(f"in-process, a frame of {a.waiters} waiters on one row: {handled} requests in {calls} core calls, "
          f"{time.perf_counter() - t0:.2f} s in all, the longest call {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
