"""``lockmgr replica``: one replica of a replicated shard, in the foreground.

    lockmgr replica --etcd http://127.0.0.1:2379 --cluster NAME --shard I --shards N --replica J
                    --replicas R --endpoint tcp://HOST:PORT --data-dir DIR [--lease-ttl 2]
                    [--sync-standbys K] [--sync-timeout 1] [--on-standby-loss degrade|fail]

It is a standby (it follows the primary, answers clients E_NOT_PRIMARY with the
primary's endpoint) until it wins its shard's leader key in etcd, then the
primary, until its lease is lost. docs/replication.md; README "Replica sets".
"""

import json
import logging
import os
import signal
import sys

from .registry import command
from .serve import add_probe_args


def add_args(p):
    p.add_argument("--etcd", required=True, help="etcd endpoints, http://host:port[,http://...]")
    p.add_argument("--cluster", required=True, help="the cluster's name (etcd keys under /lockmgr/NAME/)")
    p.add_argument("--shard", type=int, required=True, help="the shard index this replica serves")
    p.add_argument("--shards", type=int, required=True, help="number of shards in the cluster")
    p.add_argument("--replica", type=int, required=True, help="this replica's index in its replica set")
    p.add_argument("--replicas", type=int, required=True, help="replicas in the set (standbys = replicas - 1)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:0", help="client endpoint to bind (127.0.0.1, port 0)")
    p.add_argument("--data-dir", required=True, help="this replica's own directory (prepare log, epoch)")
    p.add_argument("--partition-depth", type=int, default=2)
    p.add_argument("--lease-ttl", type=float, default=2.0, help="seconds of the leader lease in etcd (2)")
    p.add_argument("--sync-standbys", type=int, default=None,
                   help="standbys a prepare must be on before it is acknowledged (default: all, replicas - 1)")
    p.add_argument("--sync-timeout", type=float, default=1.0,
                   help="seconds to wait for a standby's acknowledgement before it leaves the sync set (1)")
    p.add_argument("--on-standby-loss", choices=("degrade", "fail"), default="degrade",
                   help="fewer standbys in sync than --sync-standbys: acknowledge anyway (degrade) or "
                        "refuse the prepare (fail)")
    p.add_argument("--grace", type=float, default=None, help="grace period after a failover (seconds)")
    add_probe_args(p)     # the peers come from etcd (each primary's leader key), not from --peers / PEERS
    p.add_argument("--cluster-key-file", default=None,
                   help="a file holding the cluster key (or set LOCKMGR_CLUSTER_KEY): as lockmgr serve")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --endpoint without CURVE, or several shards without a cluster key")
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--log-file", default=None)
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args):
    from ..errors import LockError
    from ..service.etcd import EtcdClient
    from ..service.replica import ReplicaNode, keys
    from .serve import cluster_key, probe_kw, setup_logging
    if args.parent_pid is not None and args.parent_pid != os.getppid():
        print(f"lockmgr replica: --parent-pid {args.parent_pid} is not this process's parent", file=sys.stderr)
        return 2
    bad = None
    if not 1 <= args.replicas <= 16:
        bad = f"--replicas must be in 1..16; got {args.replicas}"
    elif not 0 <= args.replica < args.replicas:
        bad = f"--replica must be in 0..{args.replicas - 1}; got {args.replica}"
    elif not 0 <= args.shard < args.shards:
        bad = f"--shard must be in 0..{args.shards - 1}; got {args.shard}"
    elif not 0.5 <= args.lease_ttl <= 60:
        bad = f"--lease-ttl must be seconds in 0.5..60; got {args.lease_ttl}"
    sync = args.replicas - 1 if args.sync_standbys is None else args.sync_standbys
    if bad is None and not 0 <= sync <= args.replicas - 1:
        bad = f"--sync-standbys must be in 0..{args.replicas - 1}; got {sync}"
    try:
        key = cluster_key(args.cluster_key_file)
    except ValueError as e:
        bad = str(e)
    if bad:
        print(f"lockmgr replica: {bad}", file=sys.stderr)
        return 2
    setup_logging(args.log_file, args.log_level)
    try:
        etcd = EtcdClient(args.etcd)
        etcd.put(keys(args.cluster, args.shard).config,
                 json.dumps({"shards": args.shards, "partition_depth": args.partition_depth,
                             "replicas": args.replicas}))
    except LockError as e:
        print(f"lockmgr replica: {e}", file=sys.stderr)
        return 2
    shard_kw = {"grace": args.grace, "cluster_key": key, "insecure": args.insecure, **probe_kw(args)}
    node = ReplicaNode(etcd, args.cluster, args.shard, args.shards, args.replica, args.endpoint, args.data_dir,
                       lease_ttl=args.lease_ttl, sync_standbys=sync, sync_timeout=args.sync_timeout,
                       on_standby_loss=args.on_standby_loss, partition_depth=args.partition_depth,
                       shard_kw=shard_kw)
    ep = node.bind()
    signal.signal(signal.SIGTERM, lambda *a: node.stop())
    signal.signal(signal.SIGINT, lambda *a: node.stop())
    sys.stdout.write(f"READY {ep} replica={args.replica} incarnation={node.incarnation}\n")
    sys.stdout.flush()
    try:
        node.run(args.parent_pid)
    finally:
        logging.getLogger("lockmgr.replica").info("replica %d of shard %d stopped", args.replica, args.shard)
    return 0


@command("replica", "Run one replica of a replicated shard (leadership in etcd) in the foreground.")
def cmd_replica(p, args):
    if p is not None:
        add_args(p)
        return None
    return run(args)
