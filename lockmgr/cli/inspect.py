"""``lockmgr status | locks | graph``: what a running cluster holds, who waits, how it is.

    lockmgr status ENDPOINTS                 per shard: epoch, uptime, sessions, transactions, locks,
                                             waiters, in-doubt, prepare-log size
    lockmgr locks ENDPOINTS [--prefix db/orders] [--txn ID] [--session HEX] [--waiting]
                                             held and waiting locks in tree order (like pg_locks), with
                                             the transaction and client names
    lockmgr graph ENDPOINTS [--dot]          the global wait-for graph (text, or Graphviz)

ENDPOINTS defaults to $LOCKMGR_ENDPOINTS; every command takes --json. A shard that
does not answer is one line on stderr and exit status 1 (the others are still shown).
"""

import json
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from .registry import command
from .util import CliError, add_endpoints, endpoints, table

__all__ = ["query", "tree_key", "parse_prefix"]


def query(cmd: str, eps: List[str], typ: int, timeout: float) -> List[Any]:
    """Each shard's answer (None for a shard that failed: reported on stderr, one line each)."""
    from ..service.admin import admin_query
    out: List[Any] = []
    for i, r in enumerate(admin_query(eps, typ, timeout)):
        if isinstance(r, Exception):
            print(f"lockmgr {cmd}: shard {i} ({eps[i]}): {type(r).__name__}: {r}", file=sys.stderr)
            out.append(None)
        else:
            out.append(r)
    return out


def _common(p: Any) -> None:
    add_endpoints(p)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each shard (2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _component_key(c: Any) -> Tuple[int, Any]:
    return (0, c) if isinstance(c, int) else (1, c) if isinstance(c, str) else (2, bytes(c))


def tree_key(path: Any) -> Tuple[Tuple[int, Any], ...]:
    """Sort key putting a node right before its descendants (tree order)."""
    return tuple(_component_key(c) for c in path)


def parse_prefix(s: str) -> Tuple[Any, ...]:
    """'db/orders/42' -> ('db', 'orders', 42): components split on '/', all-digit ones as ints."""
    parts = [x for x in s.split("/") if x != ""]
    if not parts:
        raise CliError(f"--prefix {s!r} has no components (use e.g. db/orders)")
    return tuple(int(x) if x.lstrip("-").isdigit() else x for x in parts)


def _fmt_age(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


@command("status", "Show each shard's state: epoch, uptime, sessions, transactions, locks, waiters, in-doubt.")
def cmd_status(p: Any, args: Any) -> Optional[int]:
    if p is not None:
        _common(p)
        p.add_argument("--stats", action="store_true", help="also print every counter of each shard")
        p.add_argument("--etcd", default=None, help="replica sets: etcd endpoints (with --cluster); shows "
                                                     "each shard's primary, standbys, epochs and lag")
        p.add_argument("--cluster", default=None, help="replica sets: the cluster's name in etcd")
        return None
    from ..service import wire
    if args.etcd or args.cluster:
        from .replstatus import print_replicas, replica_rows
        if not (args.etcd and args.cluster):
            raise CliError("--etcd and --cluster go together")
        reps, primaries = replica_rows(args.etcd, args.cluster, args.timeout)
        if args.json:
            print(json.dumps(reps, indent=1, default=str))
        else:
            print_replicas(reps)
        args.endpoints = ",".join(e or "tcp://127.0.0.1:1" for e in primaries)
    eps = endpoints(args)
    stats = query("status", eps, wire.STATS, args.timeout)
    infos = query("status", eps, wire.INFO, args.timeout) if any(s is not None for s in stats) else [None] * len(eps)
    rows: List[Dict[str, Any]] = []
    now = time.time()
    for i, (ep, s, info) in enumerate(zip(eps, stats, infos)):
        if s is None or info is None:
            rows.append({"shard": i, "endpoint": ep, "up": False})
            continue
        rows.append({"shard": i, "endpoint": ep, "up": True, "epoch": s["epoch"], "pid": info.get("pid"),
                     "host": info.get("host"), "uptime_s": round(now - info.get("started_at", now), 3),
                     "sessions": s["sessions"], "transactions": info.get("transactions"),
                     "locks": s.get("requests"), "resources": s.get("resources"), "waiters": info.get("waiters"),
                     "indoubt": s.get("indoubt", 0), "log_bytes": info.get("log_bytes"), "backend": s.get("backend"),
                     "stats": s})
    bad = sum(1 for r in rows if not r["up"])
    if bad == len(rows):
        return 1
    for r in rows:     # a shard restarted on its data directory: in its grace period (reclaim.py)?
        s = r.get("stats") or {}
        r["grace"] = bool(s.get("grace"))
        if r["grace"]:
            r["grace_left_s"] = s.get("grace_left_ms", 0) / 1000
            r["grace_waiting_sessions"] = s.get("grace_waiting_sessions", [])
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(table(("shard", "endpoint", "state", "epoch", "uptime", "sessions", "txns", "locks", "waiters",
                     "in-doubt", "log size", "pid"),
                    [(r["shard"], r["endpoint"], f"GRACE {r['grace_left_s']:.1f}s" if r["grace"] else "up",
                      r["epoch"], _fmt_age(r["uptime_s"]), r["sessions"], r["transactions"], r["locks"],
                      r["waiters"], r["indoubt"], _fmt_bytes(r["log_bytes"]), r["pid"])
                     if r["up"] else (r["shard"], r["endpoint"], "DOWN", *["-"] * 9) for r in rows]))
        waiting = [(r["shard"], sid, name) for r in rows if r.get("grace")
                   for sid, name in r["grace_waiting_sessions"]]
        if waiting:
            print("\nsessions a shard in its grace period still waits for (to reclaim their locks):")
            for i, sid, name in waiting:
                print(f"  shard {i}: session {sid:#x} ({name})")
        if args.stats:
            for r in rows:
                if r["up"]:
                    print(f"\nshard {r['shard']}:")
                    for k in sorted(r["stats"]):
                        print(f"  {k}: {r['stats'][k]}")
    return 1 if bad else 0


def _names(infos: List[Any]) -> Tuple[Dict[int, str], Dict[int, str]]:
    """(session id -> client name, txn id -> txn name) from the shards' INFO answers."""
    sessions: Dict[int, str] = {}
    txns: Dict[int, str] = {}
    for info in infos:
        if info is None:
            continue
        for sid, name, *_ in info.get("sessions", []):
            sessions[sid] = name
        for tid, name in info.get("txn_names", []):
            txns[tid] = name
    return sessions, txns


@command("locks", "Show held and waiting locks on every shard in tree order, with transaction and client names.")
def cmd_locks(p: Any, args: Any) -> Optional[int]:
    if p is not None:
        _common(p)
        p.add_argument("--prefix", default=None, help="only resources under this path, e.g. db/orders")
        p.add_argument("--txn", type=int, default=None, help="only this transaction's requests")
        p.add_argument("--session", default=None, help="only this session's requests (hex, as shown)")
        p.add_argument("--waiting", action="store_true", help="only waiting requests")
        return None
    from ..modes import Mode
    from ..service import wire
    eps = endpoints(args)
    prefix = parse_prefix(args.prefix) if args.prefix else None
    session = None
    if args.session is not None:
        try:
            session = int(args.session, 16)
        except ValueError:
            raise CliError(f"--session takes the hex id shown by lockmgr locks; got {args.session!r}") from None
    snaps = query("locks", eps, wire.SNAPSHOT, args.timeout)
    if all(s is None for s in snaps):
        return 1
    infos = query("locks", eps, wire.INFO, args.timeout)
    graphs = query("locks", eps, wire.GRAPH, args.timeout)
    snames, tnames = _names(infos)
    rows = []
    for i, snap in enumerate(snaps):
        for path, txn, mode, granted, sid in snap or ():
            path = tuple(path)
            if prefix is not None and path[:len(prefix)] != prefix:
                continue
            if args.txn is not None and txn != args.txn:
                continue
            if session is not None and sid != session:
                continue
            if args.waiting and granted:
                continue
            rows.append({"shard": i, "resource": list(path), "mode": Mode(mode).name, "granted": bool(granted),
                         "txn": txn, "txn_name": tnames.get(txn), "session": f"{sid:#x}" if sid else None,
                         "client": snames.get(sid) if sid else None})
    rows.sort(key=lambda r: (tree_key(r["resource"]), r["shard"], not r["granted"], r["txn"]))
    edges = []
    filtered = prefix is not None or args.txn is not None or session is not None or args.waiting
    shown = {r["txn"] for r in rows}
    for i, g in enumerate(graphs):
        for waiter, holders in g or ():
            if not filtered or waiter in shown or shown.intersection(holders):
                edges.append({"shard": i, "waiter": waiter, "blockers": holders})
    bad = sum(1 for s in snaps if s is None)
    if args.json:
        print(json.dumps({"locks": rows, "wait_for": edges}, indent=1, default=str))
        return 1 if bad else 0
    print(table(("shard", "resource", "mode", "granted", "txn", "txn name", "session", "client"),
                [(r["shard"], "  " * (len(r["resource"]) - 1) + repr(tuple(r["resource"])), r["mode"],
                  "yes" if r["granted"] else "WAITING", r["txn"], r["txn_name"] or "-", r["session"] or "-",
                  r["client"] or "-") for r in rows]))
    if edges:
        print("\nwait-for edges:")
        for e in edges:
            print(f"  {e['waiter']} -> {', '.join(map(str, e['blockers']))}  (shard {e['shard']})")
    print(f"\n{len(rows)} request(s) on {len(snaps) - bad} shard(s)"
          + (" (intention locks IS/IX on ancestors included)" if rows else ""))
    return 1 if bad else 0


@command("graph", "Show the cluster's global wait-for graph (text, or Graphviz with --dot).")
def cmd_graph(p: Any, args: Any) -> Optional[int]:
    if p is not None:
        _common(p)
        p.add_argument("--dot", action="store_true", help="print it in Graphviz dot")
        return None
    from ..service import wire
    eps = endpoints(args)
    graphs = query("graph", eps, wire.GRAPH, args.timeout)
    if all(g is None for g in graphs):
        return 1
    infos = query("graph", eps, wire.INFO, args.timeout)
    snames, tnames = _names(infos)
    edges: Dict[Tuple[int, int], List[int]] = {}
    for i, g in enumerate(graphs):
        for waiter, holders in g or ():
            for h in holders:
                edges.setdefault((waiter, h), []).append(i)
    bad = sum(1 for g in graphs if g is None)
    nodes = sorted({t for e in edges for t in e})
    if args.json:
        print(json.dumps({"nodes": [{"txn": t, "name": tnames.get(t)} for t in nodes],
                          "edges": [{"waiter": w, "blocker": h, "shards": s} for (w, h), s in sorted(edges.items())]},
                         indent=1))
    elif args.dot:
        print("digraph wait_for {")
        print('  node [shape=box];')
        for t in nodes:
            label = f"{t}" + (f"\\n{tnames[t]}" if t in tnames else "")
            print(f'  t{t} [label="{label}"];')
        for (w, h), s in sorted(edges.items()):
            print(f'  t{w} -> t{h} [label="shard {",".join(map(str, s))}"];')
        print("}")
    else:
        def name(t: int) -> str:
            return f"{t}" + (f" ({tnames[t]})" if t in tnames else "")
        for (w, h), s in sorted(edges.items()):
            print(f"{name(w)} waits for {name(h)} on shard {','.join(map(str, s))}")
        print(f"{len(edges)} wait-for edge(s) among {len(nodes)} transaction(s) on {len(graphs) - bad} shard(s)")
    return 1 if bad else 0
