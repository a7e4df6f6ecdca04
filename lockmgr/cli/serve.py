"""``lockmgr serve``: one shard in the foreground (argument parsing and start-up
only; the shard is lockmgr/service/shard/server.py around the sans-IO core).

    main(argv)               ``python -m lockmgr serve`` / ``lockmgr serve``
"""

import argparse
import logging
import os
import signal
import sys

import zmq

from .._core import BACKEND
from ..errors import InvalidRequest
from ..service.probes import DEFAULT_PROBE_DELAY
from ..service.shard import events
from ..service.shard.server import Shard
from ..wal import CorruptLog

__all__ = ["Shard", "main", "add_serve_args", "run_serve"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="lockmgr serve", description="Run one lock shard in the foreground.")
    add_serve_args(ap)
    args = ap.parse_args(argv)
    return run_serve(args)


def add_serve_args(ap):
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7400",
                    help="ZeroMQ endpoint to bind (default tcp://127.0.0.1:7400; port 0 picks a free one)")
    ap.add_argument("--data-dir", default="lockmgr-shard-data",
                    help="directory holding the shard's epoch file and its prepare log (2PC)")
    ap.add_argument("--index", type=int, default=0, help="this shard's index in the cluster (0-based)")
    ap.add_argument("--shards", type=int, default=1, help="number of shards in the cluster")
    ap.add_argument("--partition-depth", type=int, default=2, help="routing depth the clients must use")
    ap.add_argument("--escalation-threshold", type=int, default=5000)
    add_probe_args(ap)
    ap.add_argument("--cluster-key-file", default=None,
                    help="a file holding the cluster key that shard-to-shard messages (and PEERS, FAULTS) "
                         "must carry; or set LOCKMGR_CLUSTER_KEY. Without one, any local process can send them")
    ap.add_argument("--peer-endpoint", default=None,
                    help="also bind this ipc://PATH for messages from the other shards (they must list "
                         "it in --peers / PEERS)")
    ap.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                    help="after a restart, how long the sessions that were open may reclaim their locks "
                         "while new requests wait (default: the largest session TTL granted, at most 30; "
                         "0: no grace period, no reclaim and no session records in the log)")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="stop when this process (the one that started the shard) is gone")
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0: a free port; "
                         "needs prometheus-client); off by default")
    ap.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint binds (127.0.0.1)")
    ap.add_argument("--log-file", default=None,
                    help="also append the shard's log lines to this file (they always go to stderr)")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                    help="the least severe events logged (INFO)")
    sec = ap.add_argument_group("security (docs/security.md)")
    sec.add_argument("--curve-secret-file", default=None, metavar="FILE",
                     help="CURVE: this shard's secret key (NAME.key_secret from lockmgr keygen); clients and "
                          "peer shards must then authenticate, and all traffic is encrypted")
    sec.add_argument("--client-keys", default=None, metavar="DIR",
                     help="CURVE: directory of the public keys (*.key) of the clients admitted")
    sec.add_argument("--admin-keys", default=None, metavar="DIR",
                     help="CURVE: directory of the public keys of admins (admitted; may use SNAPSHOT, INDOUBT, "
                          "STATS, INFO, GRAPH, DEADLOCKS, PEERS, FAULTS, DECIDE any transaction)")
    sec.add_argument("--peer-keys", default=None, metavar="DIR",
                     help="CURVE: directory of the other shards' public keys (not needed when the shards share "
                          "one key pair: a shard's own key is always a peer key)")
    sec.add_argument("--key-reload-interval", type=float, default=5.0, metavar="SECONDS",
                     help="re-read the key directories when a file changed, checked this often (5); SIGHUP "
                          "re-reads them at once")
    sec.add_argument("--insecure", action="store_true",
                     help="without CURVE, allow binding a non-loopback address and running a multi-shard "
                          "cluster without a cluster key (anyone who can reach the shard can use it)")
    sec.add_argument("--quota", default=None, metavar="NAME=VALUE,...",
                     help="quotas (lockmgr/service/shard/quotas.py): sessions_per_identity, sessions, "
                          "locks_per_session, locks, waits_per_session, inflight_per_session, "
                          "reply_cache_bytes, message_bytes, answer_rows")
    ap.add_argument("--peers", default=None,
                    help="comma-separated endpoints of every shard, in shard order (127.0.0.1 only); "
                         "or send PEERS later (LocalCluster does)")


def add_probe_args(ap):
    """--probe-delay-ms and --probe-interval-ms (lockmgr serve and lockmgr replica); ``probe_kw`` reads them."""
    ap.add_argument("--probe-delay-ms", type=float, default=DEFAULT_PROBE_DELAY * 1000,
                    help="a wait lasting this long starts a cross-shard deadlock probe (default 10; "
                         "negative: no cross-shard detection)")
    ap.add_argument("--probe-interval-ms", type=float, default=None,
                    help="re-probe period while a wait lasts (default max(50, 5 x probe delay))")


def probe_kw(args):
    """Shard's probe_delay and probe_interval (seconds) from ``add_probe_args``' options."""
    return {"probe_delay": None if args.probe_delay_ms < 0 else args.probe_delay_ms / 1000.0,
            "probe_interval": None if args.probe_interval_ms is None else args.probe_interval_ms / 1000.0}


def setup_logging(log_file=None, level="INFO"):
    """Shard log lines to stderr and, with ``log_file``, appended to that file too."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s lockmgr[%(process)d] %(name)s: %(message)s")
    root = logging.getLogger("lockmgr")
    root.setLevel(getattr(logging, level))
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.propagate = False


def cluster_key(path):
    """The cluster key: from the file ``path`` if given, else LOCKMGR_CLUSTER_KEY, else None.
    ValueError (naming the problem) for an unreadable or empty file."""
    if not path:
        return os.environ.get("LOCKMGR_CLUSTER_KEY") or None
    try:
        with open(path) as f:
            key = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read --cluster-key-file: {e}") from None
    if not key:
        raise ValueError(f"--cluster-key-file {path} is empty")
    return key


def run_serve(args):
    parent = getattr(args, "parent_pid", None)
    if parent is not None and parent != os.getppid():
        print(f"lockmgr shard {args.index}: --parent-pid {parent} is not this process's parent "
              f"({os.getppid()}); nothing started", file=sys.stderr)
        return 2
    try:
        setup_logging(getattr(args, "log_file", None), getattr(args, "log_level", "INFO"))
    except OSError as e:
        print(f"lockmgr shard {args.index}: cannot open --log-file: {e}", file=sys.stderr)
        return 2
    log = logging.getLogger("lockmgr.shard")
    try:
        key = cluster_key(args.cluster_key_file)
    except ValueError as e:
        print(f"lockmgr shard {args.index}: {e}", file=sys.stderr)
        return 2
    curve = None
    quotas = None
    try:
        from ..service.shard.quotas import Quotas
        quotas = Quotas.from_options(getattr(args, "quota", None))
        if getattr(args, "curve_secret_file", None):
            from ..service.security import ServerCurve
            if not args.client_keys and not args.admin_keys:
                raise InvalidRequest("--curve-secret-file needs --client-keys DIR (and/or --admin-keys DIR): "
                                     "the public keys the shard admits")
            curve = ServerCurve(args.curve_secret_file, client_keys_dir=args.client_keys,
                                admin_keys_dir=args.admin_keys, peer_keys_dir=args.peer_keys,
                                reload_interval=args.key_reload_interval)
        elif getattr(args, "client_keys", None) or getattr(args, "admin_keys", None):
            raise InvalidRequest("--client-keys/--admin-keys need --curve-secret-file (the shard's key pair)")
    except InvalidRequest as e:
        print(f"lockmgr shard {args.index}: {e}", file=sys.stderr)
        return 2
    if key is None and args.shards > 1 and curve is None and getattr(args, "insecure", False):
        print(f"lockmgr shard {args.index}: warning: no cluster key and no CURVE (--insecure): any process that "
              f"can reach this shard can send it shard-to-shard messages (deadlock victims, PEERS)", file=sys.stderr)
    try:
        shard = Shard(args.endpoint, args.data_dir, index=args.index, nshards=args.shards,
                      partition_depth=args.partition_depth, escalation_threshold=args.escalation_threshold,
                      **probe_kw(args),
                      peers=[e.strip() for e in args.peers.split(",")] if args.peers else None,
                      cluster_key=key, peer_endpoint=args.peer_endpoint, grace=args.grace,
                      curve=curve, insecure=getattr(args, "insecure", False), quotas=quotas)
    except CorruptLog as e:
        print(f"lockmgr shard {args.index}: FATAL: corrupt prepare log, not starting: {e}", file=sys.stderr)
        sys.stderr.flush()
        return 3
    except InvalidRequest as e:      # a bad option (e.g. --peer-endpoint): nothing was started
        print(f"lockmgr shard {args.index}: {e}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:        # the endpoint is in use, or not a local address
        print(f"lockmgr shard {args.index}: cannot bind {args.endpoint}: {e}", file=sys.stderr)
        return 2
    except OSError as e:             # the data directory
        print(f"lockmgr shard {args.index}: {e}", file=sys.stderr)
        return 2
    events.install(shard)
    metrics_url = ""
    if getattr(args, "metrics_port", None) is not None:
        from ..service import metrics
        try:
            exp = metrics.start(shard, args.metrics_port, args.metrics_host)
        except (RuntimeError, OSError) as e:
            shard.close()
            print(f"lockmgr shard {args.index}: metrics: {e}", file=sys.stderr)
            return 2
        metrics_url = f" metrics=http://{args.metrics_host}:{exp.port}/metrics"
    log.info("shard %d of %d serving on %s (epoch %d, %s backend, data dir %s%s)", args.index, args.shards,
             shard.endpoint, shard.epoch, BACKEND, os.path.abspath(args.data_dir), metrics_url)

    def _term(signum, frame):
        shard.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    if curve is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: shard.request_reload())
    # The one line a parent waits for (LocalCluster); nothing else goes to stdout.
    sys.stdout.write(f"READY {shard.endpoint} epoch={shard.epoch} backend={BACKEND}{metrics_url}\n")
    sys.stdout.flush()
    try:
        shard.serve_forever(getattr(args, "parent_pid", None))
    finally:
        shard.close()
        log.info("shard %d stopped", args.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
