"""Runs one workload against one System with N clients and measures it.

Interface:
    Spec(workload, clients, model, duration, seed, params)
    run(system, spec, progress=None) -> dict     the result (fields: docs/operations.md, "lockmgr bench")

Clients are threads of this process, asyncio tasks of one event loop in a
thread of this process, or forked processes. Every client connects first;
then the parent reads the server's CPU time and counters, starts the clock,
samples the clients' counters every SAMPLE seconds (the live progress line
and the throughput timeline) until the deadline, and reads the server's CPU
again when the clients have finished and the server has dropped their
connections (_settled_cpu).
Client k draws its transactions from random.Random(seed * 1000 + k).
"""

import asyncio
import gc
import multiprocessing as mp
import random
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

from .servers import cpu_seconds, process_tree
from .systems import OK, OUTCOMES, System
from .workloads import Params, make_generator

__all__ = ["Spec", "run", "percentile", "SAMPLE"]

SAMPLE = 0.25                 # seconds between samples of the clients' counters
SETTLE = 5.0                  # seconds at most for the servers to drop the clients' connections
START_TIMEOUT = 60.0          # for every client to connect
STOP_GRACE = 30.0             # after the deadline, for every client to finish its transaction
NOUT = len(OUTCOMES)


@dataclass
class Spec:
    workload: str = "uniform"
    clients: int = 4
    model: str = "threads"
    duration: float = 5.0
    seed: int = 1
    params: Params = field(default_factory=Params)


def percentile(sorted_xs: List[float], q: float) -> Optional[float]:
    if not sorted_xs:
        return None
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


class _Clock:
    """The run's start signal and deadline, shared with the clients."""

    def __init__(self, mp_ctx: Any = None) -> None:
        self.started = mp_ctx.Event() if mp_ctx else threading.Event()
        self._deadline = mp_ctx.Value("d", 0.0, lock=False) if mp_ctx else None
        self.deadline = 0.0

    def start(self, duration: float) -> float:
        t0 = time.monotonic()
        self.deadline = t0 + duration
        if self._deadline is not None:
            self._deadline.value = self.deadline
        self.started.set()
        return t0

    def wait(self) -> float:
        if not self.started.wait(START_TIMEOUT + 5):
            raise TimeoutError("the run did not start")
        return self._deadline.value if self._deadline is not None else self.deadline


def _client_loop(system: System, conn: Any, gen: Callable[[], Any], k: int, seed: int, deadline: float,
                 counts: Any, base: int, lat: "array[float]") -> None:
    """Run transactions until ``deadline``; counts[base + outcome] += 1 each."""
    i = 0
    now = time.monotonic
    perf = time.perf_counter
    while now() < deadline:
        plan = gen()
        t0 = perf()
        out = system.txn(conn, plan, f"bench-{seed}-{k}-{i}", deadline)
        if out == OK:
            lat.append(perf() - t0)
        counts[base + out] += 1
        i += 1


async def _aclient_loop(system: System, conn: Any, gen: Callable[[], Any], k: int, seed: int, deadline: float,
                        counts: Any, base: int, lat: "array[float]") -> None:
    i = 0
    now = time.monotonic
    perf = time.perf_counter
    while now() < deadline:
        plan = gen()
        t0 = perf()
        out = await system.atxn(conn, plan, f"bench-{seed}-{k}-{i}", deadline)
        if out == OK:
            lat.append(perf() - t0)
        counts[base + out] += 1
        i += 1


def _gen(spec: Spec, k: int) -> Callable[[], Any]:
    return make_generator(spec.workload, spec.params, random.Random(spec.seed * 1000 + k))


def _threads(system: System, spec: Spec, ks: List[int], clock: _Clock, counts: Any, lats: Dict[int, Any],
             ready: Callable[[], None], errors: List[BaseException]) -> None:
    """Clients ``ks`` as threads of this process (sharing ``system.shared()``)."""
    shared = system.shared()
    conns: Dict[int, Any] = {}
    try:
        for k in ks:
            conns[k] = system.conn(shared)

        def body(k: int) -> None:
            try:
                deadline = clock.wait()
                _client_loop(system, conns[k], _gen(spec, k), k, spec.seed, deadline, counts, k * NOUT, lats[k])
            except BaseException as e:     # reported by the parent: one line
                errors.append(e)
        ths = [threading.Thread(target=body, args=(k,), daemon=True) for k in ks]
        for th in ths:
            th.start()
        ready()
        for th in ths:
            th.join()
    finally:
        for c in conns.values():
            system.close(c)
        system.close_shared(shared)


def _asyncio(system: System, spec: Spec, ks: List[int], clock: _Clock, counts: Any, lats: Dict[int, Any],
             ready: Callable[[], None], errors: List[BaseException]) -> None:
    async def main() -> None:
        shared = await system.ashared()
        conns: Dict[int, Any] = {}
        try:
            for k in ks:
                conns[k] = await system.aconn(shared)
            loop = asyncio.get_running_loop()
            ready()
            deadline = await loop.run_in_executor(None, clock.wait)
            res = await asyncio.gather(*(_aclient_loop(system, conns[k], _gen(spec, k), k, spec.seed, deadline,
                                                       counts, k * NOUT, lats[k]) for k in ks),
                                       return_exceptions=True)
            errors.extend(r for r in res if isinstance(r, BaseException))
        finally:
            for c in conns.values():
                await system.aclose(c)
            await system.aclose_shared(shared)
    try:
        asyncio.run(main())
    except BaseException as e:
        errors.append(e)


def _process_main(system: System, spec: Spec, k: int, clock: _Clock, counts: Any, ready_q: Any,
                  result_q: Any) -> None:
    # The parent's objects (every module it imported, the peers' drivers among
    # them) are this forked child's too: out of the collector's sight, or a
    # full collection walks them all, copying each page it touches, and stalls
    # this client mid-run (30-50 ms, once a run, in each lockmgr client process
    # with --compare redis,postgres: benchmarks/RESULTS.md).
    gc.freeze()
    lat: "array[float]" = array("d")
    errors: List[BaseException] = []
    try:
        _threads(system, spec, [k], clock, counts, {k: lat}, lambda: ready_q.put(k), errors)
    except BaseException as e:
        errors.append(e)
        ready_q.put(k)
    result_q.put((k, lat.tobytes(), [f"{type(e).__name__}: {e}" for e in errors]))


def _settled_cpu(pids: List[Optional[int]], tree0: Set[int], timeout: float = SETTLE) -> float:
    """The servers' CPU seconds once the clients' connections are gone from them.
    A PostgreSQL backend exits after its client closes, and the postmaster
    reaps it: its time moves into the postmaster's cutime as it leaves the
    children list, so a walk that reads the postmaster's stat and then its
    children while backends are reaped (the clients stop at the deadline)
    counts them in neither (seen: runs that read 0.13-0.62x PostgreSQL's CPU
    per operation, and once the next run the rest). Waits until the trees hold
    no process that was not there before the clients connected (at most
    ``timeout`` s; a process tree changes with no event to wait on), so the
    reading also covers the clients' last transactions and disconnects, as the
    counts do."""
    end = time.monotonic() + timeout
    while process_tree(pids) - tree0 and time.monotonic() < end:
        time.sleep(0.005)
    return cpu_seconds(pids)


def run(system: System, spec: Spec, progress: Optional[Callable[[float, Dict[str, int]], None]] = None
        ) -> Dict[str, Any]:
    """Run ``spec`` against ``system``; returns the measured figures (see the module docstring)."""
    if spec.model not in system.models:
        raise ValueError(f"{system.describe()} runs clients as {' or '.join(system.models)}, not {spec.model}")
    n = spec.clients
    errors: List[BaseException] = []
    lats: Dict[int, Any] = {k: array("d") for k in range(n)}
    pids = system.server_pids()
    tree0 = process_tree(pids) if pids else set()     # before the clients connect
    procs: List[Any] = []
    host: Optional[threading.Thread] = None
    if spec.model == "processes":
        ctx = mp.get_context("fork")
        clock = _Clock(ctx)
        counts: Any = ctx.RawArray("q", n * NOUT)
        ready_q, result_q = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_process_main, args=(system, spec, k, clock, counts, ready_q, result_q),
                             daemon=True) for k in range(n)]
        for p in procs:
            p.start()
        for _ in range(n):
            ready_q.get(timeout=START_TIMEOUT)
    else:
        clock = _Clock()
        counts = [0] * (n * NOUT)
        ev = threading.Event()
        target = _threads if spec.model == "threads" else _asyncio
        host = threading.Thread(target=target, args=(system, spec, list(range(n)), clock, counts, lats, ev.set,
                                                     errors), daemon=True)
        host.start()
        while not ev.wait(0.1):
            if not host.is_alive():
                break
        if not ev.is_set():
            raise errors[0] if errors else RuntimeError("the clients did not start")
    if errors:
        clock.start(0.0)
        raise errors[0]
    cpu0 = cpu_seconds(pids) if pids else None
    srv0 = system.server_counters()
    t0 = clock.start(spec.duration)
    timeline: List[List[float]] = []
    last_ops = 0
    last_t = t0
    for _ in range(int(spec.duration / SAMPLE) + 10):
        left = clock.deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(SAMPLE, left))          # the sampling period itself
        now = time.monotonic()
        totals = [sum(counts[k * NOUT + j] for k in range(n)) for j in range(NOUT)]
        timeline.append([round(now - t0, 3), (totals[OK] - last_ops) / max(now - last_t, 1e-9)])
        last_ops, last_t = totals[OK], now
        if progress is not None:
            progress(now - t0, dict(zip(OUTCOMES, totals)))
    elapsed = time.monotonic() - t0
    srv1 = system.server_counters()
    # the clients stop at the deadline, after the transaction they are in
    if spec.model == "processes":
        got = 0
        for _ in range(n):
            try:
                k, raw, errs = result_q.get(timeout=STOP_GRACE)
            except Exception:
                break
            lats[k] = array("d", raw)
            errors.extend(RuntimeError(e) for e in errs)
            got += 1
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        if got < n:
            raise RuntimeError(f"{n - got} client process(es) did not finish within {STOP_GRACE:g}s of the end")
    else:
        assert host is not None
        host.join(STOP_GRACE)
        if host.is_alive():
            raise RuntimeError(f"the clients did not finish within {STOP_GRACE:g}s of the end")
    if errors:
        raise errors[0]
    cpu1 = _settled_cpu(pids, tree0) if pids else None
    totals = [sum(counts[k * NOUT + j] for k in range(n)) for j in range(NOUT)]
    lat = sorted(x for a in lats.values() for x in a)
    ops = totals[OK]
    res: Dict[str, Any] = {
        "system": system.name, "describe": system.describe(), "workload": spec.workload, "clients": n,
        "model": spec.model, "duration": round(elapsed, 3), "ops": ops, "ops_per_s": ops / elapsed,
        "attempts": sum(totals),
        "locks_per_op": None,
        "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None, "mean": None},
        "waits": None, "escalations": None,
        "timeouts": totals[OUTCOMES.index("timeouts")],
        "not_available": totals[OUTCOMES.index("not_available")],
        "deadlocks": totals[OUTCOMES.index("deadlocks")],
        "server_cpu_s": None, "server_cpu_us_per_op": None,
        "timeline": timeline,
        "latency_histogram": _histogram(lat),
    }
    if lat:
        res["latency_ms"] = {"p50": percentile(lat, 0.5) * 1e3, "p95": percentile(lat, 0.95) * 1e3,  # type: ignore
                             "p99": percentile(lat, 0.99) * 1e3, "max": lat[-1] * 1e3,  # type: ignore
                             "mean": sum(lat) / len(lat) * 1e3}
    if srv0 is not None and srv1 is not None:
        res["waits"] = srv1["waits"] - srv0["waits"]
        res["escalations"] = srv1["escalations"] - srv0["escalations"]
    if cpu0 is not None and cpu1 is not None:
        res["server_cpu_s"] = cpu1 - cpu0
        res["server_cpu_us_per_op"] = (cpu1 - cpu0) / ops * 1e6 if ops else None
    return res


def _histogram(sorted_lat: List[float]) -> List[List[float]]:
    """[[upper bound ms, count], ...] over buckets 2^(k/4) us wide (about 19 % each)."""
    import math
    if not sorted_lat:
        return []
    out: Dict[int, int] = {}
    for x in sorted_lat:
        b = max(0, math.ceil(4 * math.log2(max(x * 1e6, 1.0))))
        out[b] = out.get(b, 0) + 1
    return [[round(2 ** (b / 4) / 1e3, 6), c] for b, c in sorted(out.items())]
