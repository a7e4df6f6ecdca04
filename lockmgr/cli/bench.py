"""``lockmgr bench``: run workloads against lockmgr (a local cluster it starts, the
embedded manager, or given shards) and, with ``--compare redis,postgres``, against
Redis locks and PostgreSQL advisory locks on the same machine in the same run.

    lockmgr bench                                         (uniform workload, a 3-shard LocalCluster)
    lockmgr bench --workload all --duration 1 --json out.json
    lockmgr bench --compare redis,postgres --clients 1,2,4,8,16,32 --plot bench.png
"""

import contextlib
import json
import sys
import tempfile
from typing import Any, Dict, List

from .registry import command
from .util import CliError


def _ints(s: str) -> List[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--clients takes comma-separated positive integers; got {s!r}") from None
    if not out or min(out) < 1 or max(out) > 1024:
        raise CliError(f"--clients takes comma-separated integers in 1..1024; got {s!r}")
    return out


@command("bench", "Measure lockmgr on a workload (local cluster by default); --compare redis,postgres.")
def cmd_bench(p, args):
    from ..bench.workloads import WORKLOADS
    if p is not None:
        p.add_argument("--target", default="cluster",
                       help="cluster (a LocalCluster started here; default), embedded, or the shards' "
                            "endpoints (tcp://HOST:PORT,...)")
        p.add_argument("--workload", default="uniform",
                       help="comma-separated, or 'all': "     # (argparse formats help with %: escape it)
                       + "; ".join(f"{k}: {v}" for k, v in WORKLOADS.items()).replace("%", "%%"))
        p.add_argument("--clients", default="4", help="number of clients; a comma-separated list runs each (4)")
        p.add_argument("--model", default="threads", choices=("threads", "asyncio", "processes"),
                       help="clients as threads of one process (sharing one lockmgr client), asyncio tasks "
                            "of one event loop, or one process each (threads)")
        p.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
        p.add_argument("--shards", type=int, default=3, help="shards of the local cluster (3)")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--nowait", action="store_true", help="refuse instead of waiting for a lock")
        p.add_argument("--release-nowait", action="store_true",
                       help="lockmgr commits and aborts with wait=False (the releases leave with the client's "
                            "next request to the shard); the peers release as always")
        p.add_argument("--timeout", type=float, default=1.0,
                       help="seconds a lock request waits at most (1; 0: wait forever)")
        p.add_argument("--tables", type=int, default=8)
        p.add_argument("--rows", type=int, default=10_000, help="rows per table (10000)")
        p.add_argument("--rows-per-txn", type=int, default=4, help="multi: rows per transaction (4)")
        p.add_argument("--tables-per-txn", type=int, default=2, help="multi: tables per transaction (2)")
        p.add_argument("--compare", default="", help="also run the workloads on these: redis,postgres")
        p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
        p.add_argument("--plot", metavar="FILE.png", help="plot throughput over time and latencies (matplotlib)")
        p.add_argument("--quiet", action="store_true", help="no live progress line")
        return None
    return _run(args)


def _run(args: Any) -> int:
    from .._core import BACKEND
    from .._version import __version__
    from ..bench import report
    from ..bench.runner import Spec, run
    from ..bench.servers import PostgresServer, RedisServer, Unavailable
    from ..bench.systems import LockmgrEmbedded, LockmgrService, PostgresAdvisory, RedisLocks, System
    from ..bench.workloads import PEER_WORKLOADS, WORKLOADS, Params
    from ..service.routing import parse_endpoints

    workloads = list(WORKLOADS) if args.workload == "all" else [w.strip() for w in args.workload.split(",")]
    for w in workloads:
        if w not in WORKLOADS:
            raise CliError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)} or all")
    clients = _ints(args.clients)
    peers = [x.strip() for x in args.compare.split(",") if x.strip()]
    for x in peers:
        if x not in ("redis", "postgres"):
            raise CliError(f"--compare takes redis and/or postgres; got {x!r}")
    if args.duration <= 0 or args.duration > 24 * 3600:
        raise CliError(f"--duration must be in (0, 86400] seconds; got {args.duration:g}")
    if args.timeout < 0:
        raise CliError("--timeout must be >= 0 (0: wait forever)")
    if not 1 <= args.shards <= 256:
        raise CliError("--shards must be in 1..256")
    if args.tables < 1 or args.rows < 1:
        raise CliError("--tables and --rows must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'lockmgr[plot]'") from None
    timeout = args.timeout or None
    kw: Dict[str, Any] = dict(timeout=timeout, nowait=args.nowait, release_wait=not args.release_nowait)
    params = Params(tables=args.tables, rows=args.rows, rows_per_txn=args.rows_per_txn,
                    tables_per_txn=args.tables_per_txn)
    out = sys.stderr if args.json == "-" else sys.stdout
    results: List[Dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        systems: List[System] = []
        target = args.target
        if target == "cluster":
            from ..service.cluster import LocalCluster
            c = stack.enter_context(LocalCluster(args.shards))
            systems.append(LockmgrService(c.endpoints, partition_depth=c.partition_depth, pids=c.pids,
                                          label=" (LocalCluster on 127.0.0.1)", **kw))
        elif target == "embedded":
            if args.model != "threads":
                raise CliError("the embedded target runs its clients as threads (--model threads)")
            from ..embedded.manager import LockManager
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="lockmgr-bench-"))
            mgr = LockManager(data_dir=d)
            stack.callback(mgr.close)
            systems.append(LockmgrEmbedded(mgr, **kw))
        else:
            try:
                eps = parse_endpoints(target)
            except Exception as e:
                raise CliError(f"--target: {e} (or use cluster / embedded)") from None
            systems.append(LockmgrService(eps, pids=_local_pids(eps), label=f" at {','.join(eps)}", **kw))
        for peer in peers:
            try:
                if peer == "redis":
                    srv: Any = stack.enter_context(RedisServer())
                    systems.append(RedisLocks(srv.port, pids=srv.pids(), label=srv.describe(), **kw))
                else:
                    srv = stack.enter_context(PostgresServer(max_connections=max(100, 2 * max(clients) + 10)))
                    systems.append(PostgresAdvisory(srv.port, pids=srv.pids(), label=srv.describe(), **kw))
            except Unavailable as e:
                print(f"lockmgr bench: {e}; skipped", file=sys.stderr)
        print(f"lockmgr {__version__} ({BACKEND} backend); clients as {args.model}; {args.duration:g}s per run; "
              f"seed {args.seed}; " + ("nowait" if args.nowait else f"lock timeout {timeout or 'none'}")
              + ("; lockmgr releases without waiting (commit/abort(wait=False))" if args.release_nowait else ""),
              file=out)
        for s in systems:
            print(f"  {s.name}: {s.describe()}", file=out)
        tty = sys.stderr.isatty()
        for wl in workloads:
            for n in clients:
                for s in systems:
                    if s.name != "lockmgr" and wl not in PEER_WORKLOADS:
                        print(f"  {s.name}: no {wl} workload (no intention locks / prepare); skipped", file=out)
                        continue
                    spec = Spec(workload=wl, clients=n, model=args.model, duration=args.duration, seed=args.seed,
                                params=params)
                    results.append(run(s, spec, None if args.quiet else _progress(s.name, wl, n, tty, args.duration)))
                    if not args.quiet and tty:
                        sys.stderr.write("\n")
    print(file=out)
    print(report.table(results), file=out)
    lines = report.ratios(results)
    if lines:
        print(file=out)
        for line in lines:
            print(line, file=out)
    if args.json:
        meta = {"lockmgr_version": __version__, "backend": BACKEND, "target": args.target, "model": args.model,
                "duration": args.duration, "seed": args.seed, "nowait": args.nowait,
                "release_nowait": args.release_nowait, "timeout": timeout,
                "shards": args.shards if args.target == "cluster" else None, "params": params.__dict__,
                "workloads": workloads, "clients": clients, "compare": peers}
        doc = json.dumps(report.to_json(meta, results), indent=1)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w") as f:
                f.write(doc + "\n")
    if args.plot:
        report.plot(results, args.plot)
        print(f"plot written to {args.plot}", file=out)
    return 0


def _local_pids(eps: List[str]) -> List[Any]:
    """The PIDs the shards report (STATS 'pid'), when they run on this host; else []."""
    import os
    from ..service import wire
    from ..service.admin import admin_query
    pids = []
    for s in admin_query(eps, wire.STATS, 2.0):
        if isinstance(s, Exception):
            raise CliError(f"--target: {s}")
        pid = s.get("pid")
        if not pid or s.get("host") != os.uname().nodename or not os.path.exists(f"/proc/{pid}"):
            return []
        pids.append(pid)
    return pids


def _progress(system: str, wl: str, n: int, tty: bool, duration: float) -> Any:
    """A terminal gets the line redrawn in place; a pipe or a file a line a second and at the end."""
    state = {"next": 1.0}

    def show(el: float, totals: Dict[str, int]) -> None:
        if not tty and el < state["next"] and el < duration - 1e-3:
            return
        state["next"] = el + 1.0
        refused = totals["timeouts"] + totals["not_available"]
        line = (f"  {el:5.1f}s  {system:8} {wl:8} clients {n:>3}  txns {totals['ok']:>9,} "
                f"({totals['ok'] / max(el, 1e-9):>9,.0f}/s)  timeouts {refused:>6,}"
                f"  deadlocks {totals['deadlocks']:>6,}")
        sys.stderr.write("\r" + line if tty else line + "\n")
        sys.stderr.flush()
    return show
