"""Embedded micro-benchmarks (pytest-benchmark). Figures, not timed tests.

Run:  python -m pytest benchmarks/bench_embedded.py --benchmark-only \
          --benchmark-columns=mean,median,ops,rounds --benchmark-sort=name

Each benchmark does INNER operations per round so per-call overhead of the
harness is amortised; ops/s in the table must be multiplied by INNER
(benchmarks/report.py prints the per-operation figures and the ratios).
"""

import threading

import pytest

from lockmgr import LockManager, Mode
from lockmgr._core import available_backends

INNER = 1000
X = Mode.X


@pytest.mark.parametrize("backend", available_backends())
def test_lock_unlock_1component(benchmark, backend):
    m = LockManager(_backend=backend)
    t = m.begin()

    def run():
        lock, unlock = t.lock, t.unlock
        for _ in range(INNER):
            lock("k", X)
            unlock("k")

    benchmark.extra_info["ops_per_round"] = INNER
    benchmark(run)


@pytest.mark.parametrize("backend", available_backends())
def test_txn_3level_lock_commit(benchmark, backend):
    m = LockManager(_backend=backend)
    path = ("db", "orders", 42)

    def run():
        begin = m.begin
        for _ in range(INNER):
            t = begin()
            t.lock(path, X)
            t.commit()

    benchmark.extra_info["ops_per_round"] = INNER
    benchmark(run)


def test_threading_lock_floor(benchmark):
    lk = threading.Lock()

    def run():
        acquire, release = lk.acquire, lk.release
        for _ in range(INNER):
            acquire()
            release()

    benchmark.extra_info["ops_per_round"] = INNER
    benchmark(run)


@pytest.mark.parametrize("backend", available_backends())
def test_release_all_100k(benchmark, backend):
    m = LockManager(_backend=backend, escalation_threshold=10**9)

    def setup():
        t = m.begin()
        for i in range(100_000):
            t.lock(i, X)
        return (t,), {}

    benchmark.extra_info["ops_per_round"] = 1
    benchmark.pedantic(lambda t: t.commit(), setup=setup, rounds=5 if backend == "c" else 2)
