"""``lockmgr deadlocks ENDPOINTS``: the latest detected deadlocks of a cluster
(like InnoDB's LATEST DETECTED DEADLOCK), read from every shard's report ring."""

import datetime
import json
import sys

from .registry import command
from .util import CliError, add_endpoints, endpoints
from ..service.reports import merge_reports


def format_report(rep):
    ts = datetime.datetime.fromtimestamp(rep["detected_at"]).isoformat(sep=" ", timespec="milliseconds")
    lines = [f"*** DEADLOCK {rep['id']} at {ts} ({rep['kind']}, decided by shard {rep['detected_by']}"
             + (f", {rep['detection_ms']:.1f} ms after the closing wait began" if rep.get("detection_ms") is not None
                else "") + ")"]
    for k, m in enumerate(rep["members"], 1):
        path, mode = m["waits_for"]
        lines.append(f"  ({k}) TRANSACTION {m['txn']} (session {m.get('session')}) on shard {m['shard']}, "
                     f"waiting {m.get('waited_ms')} ms")
        lines.append(f"      WAITING FOR {mode} on {tuple(path) if path is not None else None!r}")
        how = (f"holds {m['blocker_holds']}" if m.get("blocker_holds") else "") + \
              (f"{' and ' if m.get('blocker_holds') else ''}is queued ahead for {m['blocker_queued']}"
               if m.get("blocker_queued") else "")
        lines.append(f"      BLOCKED BY transaction {m['blocker']}, which {how or 'blocks it'} there")
        if m.get("blocking"):
            lines.append("      HOLDS (blocking the cycle): " + ", ".join(
                f"{md} {tuple(p)!r} on shard {s}" for s, p, md in m["blocking"]))
        if m.get("holds"):
            lines.append("      HOLDS on this shard: " + ", ".join(f"{md} {tuple(p)!r}" for p, md in m["holds"]))
    lines.append(f"  *** WE ROLL BACK TRANSACTION {rep['victim']} (the youngest on the cycle)")
    return "\n".join(lines)


@command("deadlocks", "Show the latest detected deadlocks on every shard (cycle, resources, modes, victim).")
def cmd_deadlocks(p, args):
    if p is not None:
        add_endpoints(p)
        p.add_argument("--timeout", type=float, default=2.0)
        p.add_argument("--json", action="store_true", help="print the reports as JSON")
        p.add_argument("--last", type=int, default=None, metavar="N", help="only the N latest reports")
        p.add_argument("--stats", action="store_true", help="also print each shard's probe counters")
        return None
    from ..service import wire
    from ..service.admin import admin_query
    eps = endpoints(args)
    if args.last is not None and args.last < 1:
        raise CliError("--last must be >= 1")
    res = admin_query(eps, wire.DEADLOCKS, args.timeout)
    bad = 0
    for i, r in enumerate(res):
        if isinstance(r, Exception):
            print(f"lockmgr deadlocks: shard {i} ({eps[i]}): {type(r).__name__}: {r}", file=sys.stderr)
            bad += 1
    if bad == len(res):
        return 1
    reps = merge_reports(res)
    if args.last is not None:
        reps = reps[-args.last:]
    if args.json:
        print(json.dumps(reps, indent=1))
    else:
        for rep in reps:
            print(format_report(rep))
            print()
        print(f"{len(reps)} deadlock report(s) from {len(res) - bad} shard(s)")
    if args.stats:
        for i, s in enumerate(admin_query(eps, wire.STATS, args.timeout)):
            if not isinstance(s, Exception):
                keys = ("probes_sent", "probes_forwarded", "probes_dropped_stale", "probes_dropped_dup",
                        "cycles_found", "confirms_failed", "deadlocks_found", "deadlocks_local",
                        "victims_aborted_remote", "probe_msgs_sent", "timeouts_deferred")
                print(f"shard {i}: " + ", ".join(f"{k}={s.get(k, 0)}" for k in keys))
    return 1 if bad else 0
