"""How long a busy shard takes to stop on SIGTERM, and how long one loop turn
runs, while it works through one frame that queues N waiters on one row (each
new waiter costs O(queue) today, so the frame as a whole is quadratic).

    python benchmarks/busy_shard.py [--waiters 5000] [--busy 2.0] [--runs 3]

Per run: a 1-shard LocalCluster; one transaction holds X on a row; one frame of
N LOCKs from N other transactions is sent; after ``--busy`` seconds SIGTERM;
the time from SIGTERM to the process's exit is printed. Then, in-process (no
sockets), the same frame through the server's batching: the longest single
call into the core while the frame is worked through for ``--busy`` seconds.
"""

import argparse
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from lockmgr import LocalCluster  # noqa: E402
from lockmgr.service import wire  # noqa: E402
from lockmgr.service.shard.server import Shard  # noqa: E402


def frame_of_waiters(sid, n):
    return wire.pack_requests(sid, 0, [[wire.LOCK, 3 + i, 2 + i, ["db", "t", 0], 5, False, None, 0]
                                       for i in range(n)])


def sigterm_latency(n, busy):
    c = LocalCluster(1)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(c.endpoints[0])
    try:
        s.send(wire.pack_requests(7, 0, [[wire.HELLO, 1, 600_000, "busy"]]))
        s.recv()
        s.send(wire.pack_requests(7, 0, [[wire.LOCK, 2, 1, ["db", "t", 0], 5, False, None, 0]]))
        s.recv()
        s.send(frame_of_waiters(7, n))
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
    ap.add_argument("--busy", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for r in range(a.runs):
        print(f"run {r + 1}: SIGTERM after {a.busy:g} s of a {a.waiters}-waiter frame: the shard exited in "
              f"{sigterm_latency(a.waiters, a.busy) * 1000:.0f} ms", flush=True)
    worst, calls, handled = longest_call(a.waiters, a.busy * 5)
    print(f"in-process, {a.busy * 5:g} s into the frame: {handled} requests in {calls} core calls, "
          f"the longest call {worst * 1000:.1f} ms")


if __name__ == "__main__":
    main()
