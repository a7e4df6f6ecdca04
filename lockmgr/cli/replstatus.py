"""``lockmgr status --etcd URL --cluster NAME``: each shard's replica set -- the
primary, the standbys, each one's epoch, and how far behind each standby is
(from etcd's keys and each replica's REPL_ROLE answer; docs/replication.md).

    replica_rows(etcd_url, cluster, timeout) -> (rows, primaries)
    print_replicas(rows)
"""

import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from .util import CliError, table

__all__ = ["replica_rows", "print_replicas"]


def replica_rows(etcd_url: str, cluster: str, timeout: float) -> Tuple[List[Dict[str, Any]], List[Optional[str]]]:
    from ..errors import LockError
    from ..service import wire
    from ..service.admin import request
    from ..service.etcd import EtcdClient, keys
    try:
        etcd = EtcdClient(etcd_url, timeout=timeout)
        cfg = etcd.get(keys(cluster, 0).config)
    except LockError as e:
        raise CliError(str(e)) from None
    if cfg is None:
        raise CliError(f"no cluster named {cluster!r} in etcd at {etcd_url}")
    nshards = int(json.loads(cfg.value)["shards"])
    rows: List[Dict[str, Any]] = []
    primaries: List[Optional[str]] = []
    for i in range(nshards):
        k = keys(cluster, i)
        leader = etcd.get(k.leader)
        lv = json.loads(leader.value) if leader is not None else {}
        primaries.append(lv.get("endpoint"))
        sync = etcd.get(k.sync)
        members = json.loads(sync.value).get("members", []) if sync is not None else []
        prim_role: Dict[str, Any] = {}
        if lv.get("endpoint"):
            try:
                prim_role = request(lv["endpoint"], wire.REPL_ROLE, (), timeout=timeout)
            except LockError as e:
                print(f"lockmgr status: shard {i} primary {lv['endpoint']}: {e}", file=sys.stderr)
        followers = {f["replica"]: f for f in (prim_role.get("replication") or {}).get("followers", [])}
        for kv in etcd.get_prefix(k.replicas):
            info = json.loads(kv.value)
            j = info.get("replica")
            role: Dict[str, Any] = {}
            try:
                role = request(info["endpoint"], wire.REPL_ROLE, (), timeout=timeout)
            except LockError:
                role = {}
            f = followers.get(j)
            rows.append({"shard": i, "replica": j, "endpoint": info.get("endpoint"),
                         "role": role.get("role", "DOWN"), "epoch": role.get("epoch", info.get("epoch")),
                         "in_sync": f"{j}:{role.get('incarnation', info.get('incarnation'))}" in members,
                         "lag": (0 if role.get("role") == "primary" else f["lag"] if f else None),
                         "pid": role.get("pid")})
    return rows, primaries


def print_replicas(rows: List[Dict[str, Any]]) -> None:
    print(table(("shard", "replica", "role", "epoch", "in sync", "behind (batches)", "endpoint", "pid"),
                [(r["shard"], r["replica"], r["role"], r["epoch"], "yes" if r["in_sync"] else "no",
                  "-" if r["lag"] is None else r["lag"], r["endpoint"], r["pid"] or "-") for r in rows]))
    print()
