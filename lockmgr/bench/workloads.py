"""The workloads of ``lockmgr bench``: seeded generators of transaction plans.

Interface:
    WORKLOADS                      name -> one-line description
    Plan(items, one_by_one, twopc) what one transaction does: lock ``items``
                                   ([(path, Mode)]), then commit (prepare first
                                   when ``twopc``); ``one_by_one``: one lock()
                                   per item in the given order, else one lock_many()
    Params(tables, rows, rows_per_txn, tables_per_txn, zipf_s, scan_share)
    make_generator(name, params, rnd) -> callable() -> Plan

Resources are ("db", "t<table>", row): a table is the partition unit of the
service (partition depth 2), rows are leaves. A plan is data, so the peer
systems (Redis, PostgreSQL) run exactly the same plans (lockmgr/bench/systems.py).
"""

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from ..modes import Mode

__all__ = ["WORKLOADS", "Plan", "Params", "make_generator", "PEER_WORKLOADS"]

WORKLOADS: Dict[str, str] = {
    "uniform": "one row per transaction, uniformly random over tables x rows, X (70%) or S",
    "hot": "one row per transaction from a Zipf-skewed hot set (s=1.1), X (70%) or S",
    "hier": "table scans (S or SIX on the table, 5%) beside row writers (X on a row)",
    "multi": "N rows over M tables per transaction (X), taken in one lock_many",
    "deadlock": "3 rows of a small table per transaction, X, one at a time in random order",
    "2pc": "2 rows in 2 tables (X), prepare, commit (a durable 2PC participant)",
}

# what Redis locks and PostgreSQL advisory locks can express (neither has intention
# locks or a lock-manager-side prepare)
PEER_WORKLOADS = ("uniform", "hot", "multi", "deadlock")

Item = Tuple[Tuple[object, ...], Mode]


@dataclass(frozen=True)
class Plan:
    items: Tuple[Item, ...]
    one_by_one: bool = True
    twopc: bool = False


@dataclass(frozen=True)
class Params:
    tables: int = 8
    rows: int = 10_000
    rows_per_txn: int = 4        # multi
    tables_per_txn: int = 2      # multi
    zipf_s: float = 1.1          # hot
    scan_share: float = 0.05     # hier


def _zipf_cdf(n: int, s: float) -> List[float]:
    acc = list(itertools.accumulate(1.0 / (k ** s) for k in range(1, n + 1)))
    return [a / acc[-1] for a in acc]


def make_generator(name: str, params: Params, rnd: random.Random) -> Callable[[], Plan]:
    """A function returning the next transaction plan of workload ``name``, drawn
    from ``rnd`` (one generator per client; seeded by the caller)."""
    p = params
    tables = [f"t{i}" for i in range(p.tables)]
    X, S, SIX = Mode.X, Mode.S, Mode.SIX

    def xs() -> Mode:
        return X if rnd.random() < 0.7 else S

    if name == "uniform":
        return lambda: Plan(((("db", rnd.choice(tables), rnd.randrange(p.rows)), xs()),))
    if name == "hot":
        cdf = _zipf_cdf(p.rows, p.zipf_s)

        def hot() -> Plan:
            row = min(bisect.bisect_left(cdf, rnd.random()), p.rows - 1)
            return Plan(((("db", tables[row % p.tables], row), xs()),))
        return hot
    if name == "hier":
        def hier() -> Plan:
            t = rnd.choice(tables)
            if rnd.random() < p.scan_share:
                return Plan(((("db", t), S if rnd.random() < 0.5 else SIX),))
            return Plan(((("db", t, rnd.randrange(p.rows)), X),))
        return hier
    if name == "multi":
        per = max(1, p.rows_per_txn)
        ntab = max(1, min(p.tables_per_txn, p.tables))

        def multi() -> Plan:
            ts = rnd.sample(tables, ntab)
            items = {("db", ts[k % ntab], rnd.randrange(p.rows)) for k in range(per)}
            return Plan(tuple((path, X) for path in sorted(items, key=repr)), one_by_one=False)
        return multi
    if name == "deadlock":
        rows = max(4, min(p.rows, 64))

        def deadlock() -> Plan:
            return Plan(tuple((("db", "t0", r), X) for r in rnd.sample(range(rows), 3)))
        return deadlock
    if name == "2pc":
        def twopc() -> Plan:
            ts = rnd.sample(tables, min(2, p.tables))
            return Plan(tuple((("db", t, rnd.randrange(p.rows)), X) for t in ts), twopc=True)
        return twopc
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
