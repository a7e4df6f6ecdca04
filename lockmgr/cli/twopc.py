"""``lockmgr indoubt | resolve``: in-doubt (prepared) 2PC transactions of a cluster.

    lockmgr indoubt tcp://127.0.0.1:7400,tcp://127.0.0.1:7401        (age, shards, locks)
    lockmgr resolve tcp://127.0.0.1:7400,... GTRID --commit|--abort
"""

import sys

from .registry import command
from .util import CliError, add_endpoints, curve_from_env, endpoints


def _fmt_age(s):
    if s < 120:
        return f"{s:.1f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


@command("indoubt", "List the prepared (in-doubt) 2PC transactions of a cluster, with their age and locks.")
def cmd_indoubt(p, args):
    if p is not None:
        add_endpoints(p)
        p.add_argument("--timeout", type=float, default=2.0)
        p.add_argument("--max-locks", type=int, default=20, help="locks shown per transaction (default 20)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return None
    from ..service import wire
    from ..service.admin import admin_query
    from ..service.client.ops import _merge_indoubt
    eps = endpoints(args)
    res = admin_query(eps, wire.INDOUBT, args.timeout)
    bad = [(i, r) for i, r in enumerate(res) if isinstance(r, Exception)]
    for i, r in bad:
        print(f"lockmgr indoubt: shard {i} ({eps[i]}): {type(r).__name__}: {r}", file=sys.stderr)
    if len(bad) == len(res):
        return 1
    rows = _merge_indoubt([[] if isinstance(r, Exception) else r for r in res])
    if args.json:
        import json
        print(json.dumps([dict(d, locks=[[list(path), mode.name] for path, mode in d["locks"].items()])
                          for d in rows], indent=1, default=str))
        return 1 if bad else 0
    if not rows:
        print("no in-doubt transactions" + (" on the shards that answered" if bad else ""))
    for d in rows:
        state = "complete" if d["complete"] else "PARTIAL (not prepared on every participant: abort it)"
        print(f"{d['gtrid']}  txn {d['txn']}  age {_fmt_age(d['age'])}  prepared on shards "
              f"{d['shards']} of participants {d['participants']}  {state}"
              + (f"  session {d['session']:#x} alive" if d["session"] else ""))
        locks = sorted(d["locks"].items(), key=lambda kv: (len(kv[0]), repr(kv[0])))
        for path, mode in locks[:args.max_locks]:
            print(f"    {mode.name:<3} {path!r}")
        if len(locks) > args.max_locks:
            print(f"    ... and {len(locks) - args.max_locks} more")
    print(f"{len(rows)} in-doubt transaction(s)")
    return 1 if bad else 0


@command("resolve", "Commit or abort one in-doubt 2PC transaction on every shard of a cluster.")
def cmd_resolve(p, args):
    if p is not None:
        p.add_argument("target", nargs="+", metavar="[ENDPOINTS] GTRID",
                       help="the shard endpoints (comma-separated, in shard order; default: $LOCKMGR_ENDPOINTS) "
                            "and the global transaction id (see `lockmgr indoubt`)")
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--commit", action="store_true")
        g.add_argument("--abort", action="store_true")
        p.add_argument("--timeout", type=float, default=5.0)
        return None
    from ..service.client.sync import connect
    from ..errors import LockError
    if len(args.target) > 2:
        raise CliError("takes [ENDPOINTS] GTRID")
    args.endpoints, args.gtrid = (None, args.target[0]) if len(args.target) == 1 else args.target
    try:
        with connect(endpoints(args), request_timeout=args.timeout, name="lockmgr-resolve",
                     **curve_from_env()) as c:
            c.resolve(args.gtrid, bool(args.commit))
    except LockError as e:
        print(f"lockmgr resolve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{args.gtrid}: {'committed' if args.commit else 'aborted'} on every shard")
    return 0
