"""Send N fuzzed frames (default 1,000,000) to a LocalCluster and report frames/s,
crashes, internal errors and each shard's memory (RSS) before and after.

    python benchmarks/fuzz_wire.py [--frames N] [--shards 2] [--seed 1] [--senders 4]

Frames come from a seeded generator: a third raw bytes (random, or a valid frame
with bytes flipped or cut), two thirds structured (valid msgpack of the frame's
shape: any version, session -- 0, random, or the legitimate client's --, ack, and
requests of every message type with random arguments). A legitimate client holds
an X lock throughout; at the end it must still hold it and its session must work.
The senders pipeline without waiting (a receive drains the answers every 256
frames, so the shard's send queue stays bounded). Exit status 1 on any crash,
internal error or lost lock. Results: benchmarks/RESULTS.md, "Issue 13:
simulation and fuzzing".
"""

import argparse
import os
import random
import sys
import tempfile
import time

import msgpack
import zmq

from lockmgr import Mode
from lockmgr.service import wire
from lockmgr.service.admin import admin_query
from lockmgr.service.cluster import LocalCluster

ROW = ("db", "fuzz", 1)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _value(rng, depth=0):
    k = rng.randrange(10 if depth < 2 else 7)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice((0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, rng.randrange(-1000, 1 << 40)))
    if k == 3:
        return rng.random() * 10 ** rng.randrange(-3, 20)
    if k == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if k == 5:
        return rng.randbytes(rng.randrange(12))
    if k == 6:
        return rng.choice(("db", "t", 1, 2, 5))
    if k in (7, 8):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {str(_value(rng, depth + 1)): _value(rng, depth + 1) for _ in range(rng.randrange(3))}


def frame(rng, types, legit):
    r = rng.random()
    if r < 0.66:
        reqs = []
        for _ in range(rng.randrange(1, 5)):
            typ = rng.choice(types) if rng.random() < 0.9 else rng.randrange(-2, 90)
            reqs.append([typ, rng.randrange(-1, 1 << 20)] + [_value(rng) for _ in range(rng.randrange(7))])
        sid = rng.choice((0, legit, rng.getrandbits(64), rng.getrandbits(16)))
        ver = wire.VERSION if rng.random() < 0.95 else _value(rng)
        return msgpack.packb([ver, sid, rng.randrange(0, 1 << 20), reqs], use_bin_type=True)
    if r < 0.83:
        return rng.randbytes(rng.randrange(0, 300))
    good = bytearray(wire.pack_requests(rng.getrandbits(63), 0, [[wire.LOCK, 1, 5, ["db", "x", 1], 5, False,
                                                                    None, 0]]))
    for _ in range(rng.randrange(1, 4)):
        good[rng.randrange(len(good))] = rng.randrange(256)
    return bytes(good[:rng.randrange(1, len(good) + 1)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    types = sorted(wire.TYPE_NAMES)
    with tempfile.TemporaryDirectory() as d, LocalCluster(args.shards, data_dir=d) as cl, cl.connect() as client:
        t = client.begin()
        t.lock(ROW, Mode.X)
        legit = client._eng.session
        pids = list(cl.pids)
        before = [rss_kb(p) for p in pids]
        ctx = zmq.Context()
        socks = []
        for ep in cl.endpoints:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 10_000)
            s.connect(ep)
            socks.append(s)
        sent = 0
        answers = 0
        t0 = time.perf_counter()
        while sent < args.frames:
            s = socks[sent % len(socks)]
            s.send(frame(rng, types, legit))
            sent += 1
            if sent % 256 == 0:
                for x in socks:
                    while x.poll(0):
                        x.recv()
                        answers += 1
                if sent % 100_000 == 0:
                    print(f"  {sent} frames, {sent / (time.perf_counter() - t0):.0f} frames/s", flush=True)
        # every frame handled: a PING behind them on each shard is answered last
        for x in socks:
            x.send(wire.pack_requests(0, 0, [[wire.PING, 424242]]))
        for x in socks:
            deadline = time.monotonic() + 120
            done = False
            while not done and time.monotonic() < deadline:
                if x.poll(1000):
                    reps = wire.unpack_replies(x.recv())
                    answers += 1
                    done = any(type(r) is list and r and r[0] == 424242 for r in reps)
        dt = time.perf_counter() - t0
        after = [rss_kb(p) for p in pids]
        alive = [p is not None and os.path.exists(f"/proc/{p}") for p in pids]
        stats = admin_query(cl.endpoints, wire.STATS, timeout=30.0)
        ierr = [st.get("internal_errors", 0) if isinstance(st, dict) else repr(st) for st in stats]
        for s_ in socks:
            s_.close(0)
        ctx.term()
        held = t.held().get(ROW)
        t.lock(("db", "fuzz", 2), Mode.X)
        t.commit()
    print(f"{sent} frames in {dt:.1f}s: {sent / dt:.0f} frames/s ({answers} answer frames)")
    print(f"crashes: {alive.count(False)}; internal errors per shard: {ierr}; "
          f"memory RSS per shard before {before} kB, after {after} kB")
    print(f"legitimate lock still held: {held == Mode.X}")
    return 0 if all(alive) and held == Mode.X and all(e == 0 for e in ierr) else 1


if __name__ == "__main__":
    sys.exit(main())
