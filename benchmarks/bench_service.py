"""Benchmarks of the lock service (a script; figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_service.py                 # everything
    python benchmarks/bench_service.py --only latency,throughput,batch,shards,compare

latency     one client, uncontended lock+unlock round trips (p50/p99) next to a
            bare pyzmq DEALER/ROUTER echo round trip measured in the same run
throughput  one shard, pipelined raw-protocol clients (processes): LOCK requests/s
batch       the same with LOCK_MANY batches of 64: locks granted/s
shards      throughput with 1 shard vs 2 shards
compare     acquire+release of random uncontended keys, 1 and 8 clients: lockmgr
            (the real Client), Redis (redis-py Lock, local redis-server) and
            PostgreSQL advisory locks (psycopg, a throwaway cluster), in three
            client models (--model): processes, threads, asyncio.

`lockmgr bench --compare redis,postgres` is the product's form of this
comparison (more workloads, server CPU per op for every system); both use
lockmgr/bench/servers.py to find and start the servers and read /proc.

The comparison needs redis-server, PostgreSQL's initdb/pg_ctl and the python
packages redis and psycopg; install them with

    bash benchmarks/install_compare_deps.sh

(apt-get redis-server / postgresql if missing, pip the `bench` extra of
pyproject.toml). This script installs nothing: it starts a throwaway
redis-server and an initdb'd PostgreSQL (fsync=off) on 127.0.0.1 when they are
installed (initdb/pg_ctl on PATH or in Debian's /usr/lib/postgresql/*/bin) and
says which system it skipped and why when they are not. Run as root, it runs
PostgreSQL as the 'postgres' user (postgres refuses to run as root).
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

import lockmgr  # noqa: E402
from lockmgr import LocalCluster, Mode
from lockmgr.bench.servers import cpu_seconds, find_pg as _find_pg, free_port, pg_user as _pg_user  # noqa: E402

# (lockmgr.bench.servers: the one implementation of finding the peer servers and reading /proc)
from lockmgr.service import wire  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ------------------------------------------------------------------ latency

def _echo_server(port, ready):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        parts = s.recv_multipart()
        if parts[-1] == b"quit":
            break
        s.send_multipart(parts)


def bench_latency(n):
    """Bare pyzmq echo round trips and lockmgr calls, interleaved in blocks of
    50 so that the machine's noise (2 shared cores) hits both alike."""
    port = free_port()
    ready = mp.Event()
    p = mp.Process(target=_echo_server, args=(port, ready), daemon=True)
    p.start()
    ready.wait(10)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(f"tcp://127.0.0.1:{port}")
    payload = wire.pack_requests(1, 0, [[wire.LOCK, 1, 1, ["db", "t", 1], 5, False, None, 0]])
    bare, lk, ul = [], [], []
    with LocalCluster(1) as c:
        cl = c.connect()
        t = cl.begin()
        i = 0
        for block in range(n // 50 + 4):
            for _ in range(50):
                t0 = time.perf_counter()
                d.send(payload)
                d.recv()
                if block >= 4:
                    bare.append(time.perf_counter() - t0)
            for _ in range(50):
                r = ("db", "t", i)
                i += 1
                t0 = time.perf_counter()
                t.lock(r, Mode.X)
                t1 = time.perf_counter()
                t.unlock(r)
                t2 = time.perf_counter()
                if block >= 4:
                    lk.append(t1 - t0)
                    ul.append(t2 - t1)
        t.commit()
        cl.close()
    d.send(b"quit")
    d.close(0)
    p.join(5)
    us = 1e6
    b50 = pct(bare, .5)
    print(f"latency (n={len(lk)}, one client, one shard, uncontended; interleaved with the bare round trips):")
    print(f"  bare pyzmq DEALER/ROUTER round trip: p50 {b50 * us:7.1f} us  p99 {pct(bare, .99) * us:7.1f} us")
    print(f"  lockmgr lock()  (1 round trip):      p50 {pct(lk, .5) * us:7.1f} us  p99 {pct(lk, .99) * us:7.1f} us"
          f"   p50 = {pct(lk, .5) / b50:.2f}x bare")
    print(f"  lockmgr unlock() (1 round trip):     p50 {pct(ul, .5) * us:7.1f} us  p99 {pct(ul, .99) * us:7.1f} us"
          f"   p50 = {pct(ul, .5) / b50:.2f}x bare")
    pair = [a + b for a, b in zip(lk, ul)]
    print(f"  lock+unlock pair (2 round trips):    p50 {pct(pair, .5) * us:7.1f} us  p99 {pct(pair, .99) * us:7.1f} us"
          f"   p50 = {pct(pair, .5) / (2 * b50):.2f}x two bare round trips")


# --------------------------------------------------------------- throughput

_LOCK_PAIR = struct.Struct(">BBBIBQBBBBBIBBBBBBBIBQB")      # LOCK [.., ["b", cid, key], X, false, nil, 0] + RELEASE
_MANY_HEAD = struct.Struct(">BBBIBQBH")                       # LOCK_MANY [11, seq, txn, [items...]
_MANY_ITEM = struct.Struct(">BBBBBBIB")                      # [["b", cid, key], X]
_MANY_TAIL = struct.Struct(">BBBBBBIBQB")                     # false, nil, 0] + RELEASE [13, seq, txn, true]


def _raw_client(endpoint, seconds, window, per_frame, batch, cid, out):
    """Pipelined raw-protocol client: keeps ``window`` frames in flight; each frame
    has ``per_frame`` LOCK requests (or LOCK_MANY of ``batch``) on fresh keys,
    each followed by the RELEASE of its transaction.

    The load generator must not compete with the shard for the 2 cores more
    than it has to: frames are encoded by hand with ``struct`` (byte-for-byte
    the msgpack that ``wire.pack_requests`` produces for these requests, with
    fixed-width ints), not by building Python lists for msgpack."""
    assert cid < 128
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    session = (os.getpid() << 8) | cid | 1
    s.send(wire.pack_requests(session, 0, [[wire.HELLO, 1, 60000, "bench"]]))
    s.recv()
    seq = 2
    txn = (cid + 1) << 40
    key = 0
    locks = 0
    inflight = 0
    stop = time.monotonic() + seconds
    t0 = None
    nreq = 2 * per_frame
    header = struct.pack(">BBBQ", 0x94, 1, 0xcf, session)

    # The items of a batch in one go: their bytes, read as one big-endian
    # integer, are a constant template (keys 1..batch) plus ``key`` times a
    # constant with a 1 in the low byte of every item's 4-byte key field (no
    # carries while keys stay below 2**32). One bigint multiply-add per batch
    # instead of one struct.pack per item; the keys are still fresh.
    if batch:
        tmpl = b"".join(_MANY_ITEM.pack(0x92, 0x93, 0xa1, 0x62, cid, 0xce, j + 1, 5) for j in range(batch))
        nbytes = len(tmpl)
        tmpl_int = int.from_bytes(tmpl, "big")
        ones = sum(1 << (8 * (nbytes - 1 - (j * _MANY_ITEM.size + 9))) for j in range(batch))

    def frame():
        nonlocal seq, txn, key
        parts = [header, struct.pack(">BIBH", 0xce, seq, 0xdc, nreq)]
        if batch:
            for _ in range(per_frame):
                txn += 1
                parts.append(_MANY_HEAD.pack(0x97, wire.LOCK_MANY, 0xce, seq, 0xcf, txn, 0xdc, batch))
                parts.append((tmpl_int + key * ones).to_bytes(nbytes, "big"))
                key += batch
                parts.append(_MANY_TAIL.pack(0xc2, 0xc0, 0, 0x94, wire.RELEASE, 0xce, seq + 1, 0xcf, txn, 0xc3))
                seq += 2
        else:
            pack = _LOCK_PAIR.pack
            for _ in range(per_frame):
                txn += 1
                key += 1
                parts.append(pack(0x98, wire.LOCK, 0xce, seq, 0xcf, txn, 0x93, 0xa1, 0x62, cid, 0xce, key,
                                  5, 0xc2, 0xc0, 0, 0x94, wire.RELEASE, 0xce, seq + 1, 0xcf, txn, 0xc3))
                seq += 2
        return b"".join(parts)

    # the hand encoding must decode to what the shard expects
    probe = wire.unpack_requests(frame())
    assert probe[0] == session and len(probe[2]) == nreq and probe[2][1][0] == wire.RELEASE, probe[2][:2]
    if batch:
        keys = [it[0][2] for r in probe[2][::2] for it in r[3]]
        assert keys == list(range(1, per_frame * batch + 1)), keys[:5]
        assert all(it == [["b", cid, it[0][2]], 5] for r in probe[2][::2] for it in r[3])
    seq, txn, key = 2, (cid + 1) << 40, 0
    warm = time.monotonic() + 0.3
    counted = False
    unpack = wire.unpack_replies
    answered = 0
    while True:
        now = time.monotonic()
        if not counted and now >= warm:
            counted, t0, locks = True, time.perf_counter(), 0
        if now >= stop:
            break
        while inflight < window:
            s.send(frame())
            inflight += 1
        reps = unpack(s.recv())
        for r in reps:
            if r[1]:
                raise SystemExit(f"error reply {r}")
        # count answers, not reply frames (a shard may answer one frame in several)
        answered += len(reps)
        done, answered = divmod(answered, nreq)
        inflight -= done
        locks += done * per_frame * (batch or 1)
    el = time.perf_counter() - t0
    out.put(locks / el)
    s.close(0)
    ctx.term()


def _run_raw(endpoints, clients, seconds, window, per_frame, batch):
    q = mp.Queue()
    ps = [mp.Process(target=_raw_client, args=(endpoints[i % len(endpoints)], seconds, window, per_frame, batch, i, q))
          for i in range(clients)]
    for p in ps:
        p.start()
    rates = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join(10)
    return sum(rates)


def bench_throughput(seconds, clients):
    with LocalCluster(1) as c:
        r = _run_raw(c.endpoints, clients, seconds, window=4, per_frame=64, batch=0)
        print(f"throughput, 1 shard, {clients} pipelined raw clients (4 frames x 64 LOCK+RELEASE in flight): "
              f"{r:,.0f} LOCK requests/s")
        cl = c.connect()
        print(f"  shard backend: {cl.stats()[0]['backend']}")
        cl.close()


def bench_batch(seconds, clients):
    """LOCK_MANY throughput, and the shard's CPU time per granted lock: on 2
    shared cores the throughput moves with the other processes' load, the
    shard's CPU per lock much less (it is what a dedicated core would turn
    into capacity: 1 / (CPU per lock) locks per core-second)."""
    with LocalCluster(1) as c:
        pid = c.pids[0]
        cpu0, t0 = cpu_seconds([pid]), time.monotonic()
        r = _run_raw(c.endpoints, clients, seconds, window=4, per_frame=4, batch=64)
        cpu, wall = cpu_seconds([pid]) - cpu0, time.monotonic() - t0
        # the run includes process start-up and a 0.3 s warm-up; count the locks of the whole run
        print(f"batch, 1 shard, {clients} clients, LOCK_MANY of 64 (4 frames x 4 batches in flight): "
              f"{r:,.0f} locks granted/s; shard CPU {cpu / (r * seconds) * 1e6:.3f} us per lock "
              f"(~{r * seconds / cpu:,.0f} locks per shard CPU-second; shard busy {cpu / wall:.0%})")


def bench_shards(seconds, clients):
    for n in (1, 2):
        with LocalCluster(n) as c:
            r = _run_raw(c.endpoints, clients, seconds, window=4, per_frame=64, batch=0)
            print(f"shards={n}: {clients} raw clients: {r:,.0f} LOCK requests/s")


# ---------------------------------------------------------------- compare

def _lm_worker(endpoints, seconds, cid, out, shared=None, wait=True):
    """begin + lock + commit (``wait=False``: the release rides with the next LOCK)."""
    cl = shared["client"] if shared else lockmgr.connect(endpoints)
    i = 0
    stop = time.monotonic() + seconds
    n = 0
    t0 = time.perf_counter()
    while time.monotonic() < stop:
        t = cl.begin()
        t.lock(("k", cid, i), Mode.X)
        t.commit(wait=wait)
        i += 1
        n += 1
    out.put(n / (time.perf_counter() - t0))
    if not shared:
        cl.close()


def _lm_nowait_worker(endpoints, seconds, cid, out, shared=None):
    _lm_worker(endpoints, seconds, cid, out, shared, wait=False)


def _redis_worker(port, seconds, cid, out, shared=None):
    import redis
    if shared is not None:
        r = shared.get("redis") or shared.setdefault("redis", redis.Redis(host="127.0.0.1", port=port))
    else:
        r = redis.Redis(host="127.0.0.1", port=port)
    i = 0
    n = 0
    stop = time.monotonic() + seconds
    t0 = time.perf_counter()
    while time.monotonic() < stop:
        lk = r.lock(f"k:{cid}:{i}", timeout=10)
        lk.acquire()
        lk.release()
        i += 1
        n += 1
    out.put(n / (time.perf_counter() - t0))


def _pg_worker(port, seconds, cid, out, shared=None):
    import psycopg
    conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True)
    cur = conn.cursor()
    i = 0
    n = 0
    stop = time.monotonic() + seconds
    t0 = time.perf_counter()
    while time.monotonic() < stop:
        k = (cid << 32) | i
        cur.execute("SELECT pg_advisory_lock(%s)", (k,))
        cur.execute("SELECT pg_advisory_unlock(%s)", (k,))
        i += 1
        n += 1
    out.put(n / (time.perf_counter() - t0))
    conn.close()


# asyncio model: ``clients`` tasks of one event loop in one process; each
# coroutine returns its own rate. Same workload as the workers above.

async def _lm_task(cl, seconds, cid):
    i = n = 0
    stop = time.monotonic() + seconds
    t0 = time.perf_counter()
    while time.monotonic() < stop:
        t = cl.begin()
        await t.lock(("k", cid, i), Mode.X)
        await t.commit()
        i += 1
        n += 1
    return n / (time.perf_counter() - t0)


async def _lm_async(endpoints, seconds, clients):
    import lockmgr.aio
    cl = await lockmgr.aio.connect(endpoints)      # ONE client: every task pipelines on its connection
    try:
        return await asyncio.gather(*(_lm_task(cl, seconds, i) for i in range(clients)))
    finally:
        await cl.close()


async def _redis_task(r, seconds, cid):
    i = n = 0
    stop = time.monotonic() + seconds
    t0 = time.perf_counter()
    while time.monotonic() < stop:
        lk = r.lock(f"k:{cid}:{i}", timeout=10)
        await lk.acquire()
        await lk.release()
        i += 1
        n += 1
    return n / (time.perf_counter() - t0)


async def _redis_async(port, seconds, clients):
    import redis.asyncio
    r = redis.asyncio.Redis(host="127.0.0.1", port=port)   # one client; its pool gives each task a connection
    try:
        return await asyncio.gather(*(_redis_task(r, seconds, i) for i in range(clients)))
    finally:
        await r.aclose()


async def _pg_task(port, seconds, cid):
    import psycopg
    conn = await psycopg.AsyncConnection.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                                 autocommit=True)
    try:
        cur = conn.cursor()
        i = n = 0
        stop = time.monotonic() + seconds
        t0 = time.perf_counter()
        while time.monotonic() < stop:
            k = (cid << 32) | i
            await cur.execute("SELECT pg_advisory_lock(%s)", (k,))
            await cur.execute("SELECT pg_advisory_unlock(%s)", (k,))
            i += 1
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def _pg_async(port, seconds, clients):
    # one AsyncConnection per task (a connection runs one statement at a time)
    return await asyncio.gather(*(_pg_task(port, seconds, i) for i in range(clients)))


_ASYNC = {}     # the sync worker -> its asyncio counterpart (filled below)


def _asyncio_host(target, arg, seconds, clients, q):
    """One process, one event loop, ``clients`` tasks (see the _*_async functions)."""
    for rate in asyncio.run(_ASYNC[target](arg, seconds, clients)):
        q.put(rate)


def _parallel(target, arg, clients, seconds, model="processes"):
    """``clients`` concurrent clients running ``target``: one process each
    (model "processes"), threads of one process ("threads") or asyncio tasks
    of one process ("asyncio"), run in a child process so every system starts
    from the same clean interpreter."""
    q = mp.Queue()
    if model == "asyncio":
        ps = [mp.Process(target=_asyncio_host, args=(target, arg, seconds, clients, q))]
    elif model == "threads":
        ps = [mp.Process(target=_threads_host, args=(target, arg, seconds, clients, q))]
    else:
        ps = [mp.Process(target=target, args=(arg, seconds, i, q)) for i in range(clients)]
    for p in ps:
        p.start()
    rates = [q.get(timeout=seconds + 60) for _ in range(clients)]
    for p in ps:
        p.join(10)
    return sum(rates)


def _threads_host(target, arg, seconds, clients, q):
    """One process, ``clients`` threads. lockmgr: the threads share ONE Client
    (one pipelined connection per shard, the service's intended use); Redis:
    one redis-py client whose pool gives each thread a connection; PostgreSQL:
    one connection per thread (a connection runs one statement at a time)."""
    shared = {}
    if target is _lm_worker:
        shared["client"] = lockmgr.connect(arg)
    ths = [threading.Thread(target=target, args=(arg, seconds, i, q, shared)) for i in range(clients)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    if "client" in shared:
        shared["client"].close()


_ASYNC.update({_lm_worker: _lm_async, _redis_worker: _redis_async, _pg_worker: _pg_async})


def bench_compare(seconds, shards, model="processes"):
    rows = {}
    with LocalCluster(shards) as c:
        for n in (1, 8):
            rows[("lockmgr", n)] = _parallel(_lm_worker, c.endpoints, n, seconds, model)
            if model != "asyncio":
                rows[("lockmgr nowait", n)] = _parallel(_lm_nowait_worker, c.endpoints, n, seconds, model)
    redis_bin = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
        have_redis_py = True
    except ImportError:
        have_redis_py = False
    if redis_bin and have_redis_py:
        port = free_port()
        p = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import redis
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(host="127.0.0.1", port=port).ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print(f"started redis-server ({redis_bin}) on 127.0.0.1:{port}")
            for n in (1, 8):
                rows[("redis", n)] = _parallel(_redis_worker, port, n, seconds, model)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    else:
        print("redis: skipped (" + ("redis-server not installed" if not redis_bin else "redis-py not installed")
              + "; bash benchmarks/install_compare_deps.sh installs it)")
    pg = _find_pg()
    try:
        import psycopg  # noqa: F401
        have_psycopg = True
    except ImportError:
        have_psycopg = False
    runas = _pg_user() if pg else {}
    if pg and have_psycopg and runas is not None:
        initdb, pg_ctl = pg
        d = tempfile.mkdtemp(prefix="bench-pg-")
        port = free_port()
        if runas:
            os.chown(d, runas["user"], runas["group"])     # mkdtemp made it 0700, root's
        kw = dict(runas, cwd=d, check=True, stdout=subprocess.DEVNULL)
        try:
            subprocess.run([initdb, "-D", d + "/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"], **kw)
            subprocess.run([pg_ctl, "-D", d + "/data", "-o",
                            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} "
                            f"-c fsync=off -c max_connections=50", "-w", "-l", d + "/log", "start"], **kw)
            print(f"started a throwaway postgres ({initdb}{', as user postgres' if runas else ''}) "
                  f"on 127.0.0.1:{port}")
            for n in (1, 8):
                rows[("postgres", n)] = _parallel(_pg_worker, port, n, seconds, model)
        finally:
            kw.update(check=False, stderr=subprocess.DEVNULL)
            subprocess.run([pg_ctl, "-D", d + "/data", "-m", "immediate", "stop"], **kw)
            shutil.rmtree(d, ignore_errors=True)
    else:
        print("postgresql: skipped (" + ("initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin"
                                         if not pg else "psycopg not installed" if not have_psycopg
                                         else "running as root and there is no 'postgres' user to run it as")
              + "; bash benchmarks/install_compare_deps.sh installs it)")
    print(f"acquire+release of random uncontended keys ({seconds:g}s per cell; clients = {model}; "
          f"lockmgr: {shards} shard(s), begin+lock+commit):")
    print(f"  {'system':14} {'1 client':>14} {'8 clients':>14}   lockmgr/system at 1 / 8")
    for sysname in ("lockmgr", "lockmgr nowait", "redis", "postgres"):
        if (sysname, 1) in rows:
            r1, r8 = rows[(sysname, 1)], rows[(sysname, 8)]
            print(f"  {sysname:14} {r1:>12,.0f}/s {r8:>12,.0f}/s   "
                  f"{rows[('lockmgr', 1)] / r1:5.2f}x / {rows[('lockmgr', 8)] / r8:5.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="latency,throughput,batch,shards,compare")
    ap.add_argument("--n", type=int, default=3000, help="latency samples")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=2, help="raw pipelined client processes")
    ap.add_argument("--compare-shards", type=int, default=1)
    ap.add_argument("--model", default="processes,threads,asyncio",
                    help="client concurrency model(s) for compare: processes (one client per process), "
                         "threads (8 threads of one process), asyncio (8 tasks of one event loop)")
    args = ap.parse_args()
    what = set(args.only.split(","))
    print(f"python {sys.version.split()[0]}, lockmgr backend {lockmgr.BACKEND}, {os.cpu_count()} cpus")
    if "latency" in what:
        bench_latency(args.n)
    if "throughput" in what:
        bench_throughput(args.seconds, args.clients)
    if "batch" in what:
        bench_batch(args.seconds, args.clients)
    if "shards" in what:
        bench_shards(args.seconds, args.clients)
    if "compare" in what:
        for model in args.model.split(","):
            bench_compare(args.seconds, args.compare_shards, model)


if __name__ == "__main__":
    main()
