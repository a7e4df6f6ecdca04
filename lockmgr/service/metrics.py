"""Prometheus metrics of one shard (``lockmgr serve --metrics-port PORT``): off unless asked.

Interface:
    start(shard, port, host="127.0.0.1") -> Exporter    hooks the shard, serves /metrics
    Exporter.close()

Needs prometheus-client (the ``metrics`` extra). The exporter's HTTP thread
never reads the core's structures while the shard's loop changes them: a
scrape asks the shard itself, over its own socket, for STATS and INFO (the
answers are made in the loop thread, as any client's are), and reads the
histograms' bucket counts (lists of ints the loop thread only increments).

What it measures beyond the counters (hooks installed at start, on the shard
instance; none exists when metrics are off):
  * requests by type: each request handler is wrapped in a counting one;
  * wait time: from a request's parking to the end of its wait (granted, timed
    out, deadlock victim), through the probe engine's on_wait / on_wait_end;
  * hold time: from a transaction's first lock on this shard to its release;
  * the age of the oldest waiter and of the oldest transaction holding locks
    (what an operator alerts on when a holder is stuck);
  * fsync latency of the prepare log (its flusher thread reports each fsync).
"""

import bisect
import math
import threading
import time
from typing import Any, Dict, Iterator, List

__all__ = ["start", "Exporter", "Histogram", "BUCKETS"]

# seconds: 50 us .. 60 s
BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)


class Histogram:
    """Cumulative-on-read bucket counts; ``observe`` is one bisect and two adds."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, v)] += 1
        self.total += v
        self.n += 1

    def read(self) -> "tuple[List[Any], float]":
        counts = list(self.counts)
        total = self.total
        acc = 0
        out = []
        for b, c in zip(BUCKETS + (math.inf,), counts):
            acc += c
            out.append((str(b) if b != math.inf else "+Inf", acc))
        return out, total


class _Hooks:
    """The instrumentation installed on the shard (loop thread only, but for fsync)."""

    def __init__(self, shard: Any) -> None:
        from . import wire
        core = shard.core
        clock = time.monotonic
        self.by_type: Dict[str, int] = {}
        self.wait = Histogram()
        self.hold = Histogram()
        self.fsync = Histogram()
        self.waiting: Dict[int, float] = {}     # txn -> wait start
        self.born: Dict[int, float] = {}        # txn -> first lock here
        names = wire.TYPE_NAMES
        by_type = self.by_type
        born = self.born
        lock_types = (wire.LOCK, wire.LOCK_MANY)

        def counting(typ: int, h: Any) -> Any:
            name = names.get(typ, str(typ))
            by_type[name] = 0
            if typ in lock_types:
                def wrapped(sess: Any, seq: Any, args: Any) -> Any:
                    by_type[name] += 1
                    res = h(sess, seq, args)
                    if args and args[0] not in born:
                        born[args[0]] = core.now
                    return res
            else:
                def wrapped(sess: Any, seq: Any, args: Any) -> Any:
                    by_type[name] += 1
                    return h(sess, seq, args)
            return wrapped
        for typ, h in list(core._handlers.items()):
            core._handlers[typ] = counting(typ, h)
        for typ, h in list(core._admin.items()):
            name = names.get(typ, str(typ))
            by_type[name] = 0

            def admin(args: Any, h: Any = h, name: str = name) -> Any:
                by_type[name] += 1
                return h(args)
            core._admin[typ] = admin

        probes = core.probes
        on_wait, on_wait_end = probes.on_wait, probes.on_wait_end
        waiting = self.waiting
        wait_hist, hold_hist = self.wait, self.hold

        def _on_wait(t: Any, w: Any) -> Any:
            waiting.setdefault(t.id, core.now)
            return on_wait(t, w)

        def _on_wait_end(tid: int) -> Any:
            t0 = waiting.pop(tid, None)
            if t0 is not None:
                wait_hist.observe(max(0.0, core.now - t0))
            return on_wait_end(tid)
        probes.on_wait, probes.on_wait_end = _on_wait, _on_wait_end

        drop_txn = core.drop_txn

        def _drop_txn(t: Any) -> Any:
            t0 = born.pop(t.id, None)
            if t0 is not None:
                hold_hist.observe(max(0.0, core.now - t0))
            return drop_txn(t)
        core.drop_txn = _drop_txn

        # a LOCK refused before its transaction existed leaves a birth behind: drop those once a second
        txns = core._txns

        def sweep() -> None:
            for tid in [t for t in born if t not in txns]:
                born.pop(tid, None)
        from .shard.events import _chain_tick
        _chain_tick(shard, sweep)

        plog = getattr(shard, "_plog", None)
        if plog is not None and hasattr(plog, "on_fsync"):
            plog.on_fsync = self.fsync.observe
        self.clock = clock


class Exporter:
    def __init__(self, shard: Any, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import start_http_server
            from prometheus_client.core import REGISTRY, CollectorRegistry  # noqa: F401
        except ImportError:
            raise RuntimeError("--metrics-port needs prometheus-client: pip install 'lockmgr[metrics]'") from None
        from prometheus_client.core import CollectorRegistry as Registry
        self.shard = shard
        self.endpoint = shard.endpoint
        self.index = shard.index
        self.hooks = _Hooks(shard)
        self.registry = Registry(auto_describe=False)
        self.registry.register(self)    # type: ignore[arg-type]
        res = start_http_server(port, addr=host, registry=self.registry)
        # prometheus-client >= 0.17 returns (server, thread)
        self._server = res[0] if isinstance(res, tuple) else None
        self.port = self._server.server_address[1] if self._server is not None else port
        self._mu = threading.Lock()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _ask(self, typ: int) -> Any:
        from .admin import request
        return request(self.endpoint, typ, (), timeout=2.0)

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from . import wire
        from .probes import COUNTERS as PROBE_COUNTERS
        from .shard.counters import CORE_COUNTERS
        lbl = ["shard"]
        sv = [str(self.index)]
        up = GaugeMetricFamily("lockmgr_up", "1 if the shard answered this scrape's STATS/INFO", labels=lbl)
        with self._mu:
            try:
                stats = self._ask(wire.STATS)
                info = self._ask(wire.INFO)
            except Exception:
                up.add_metric(sv, 0)
                yield up
                return
        up.add_metric(sv, 1)
        yield up
        h = self.hooks
        now = h.clock()

        def counter(name: str, doc: str, value: float) -> Any:
            m = CounterMetricFamily(f"lockmgr_{name}", doc, labels=lbl)
            m.add_metric(sv, value)
            return m

        def gauge(name: str, doc: str, value: float) -> Any:
            m = GaugeMetricFamily(f"lockmgr_{name}", doc, labels=lbl)
            m.add_metric(sv, value)
            return m

        req = CounterMetricFamily("lockmgr_requests", "requests handled, by message type", labels=lbl + ["type"])
        for name, v in sorted(dict(h.by_type).items()):
            req.add_metric(sv + [name], v)
        yield req
        yield counter("grants", "lock requests granted (each level of a path counts)", stats.get("granted", 0))
        yield counter("waits", "lock requests that had to wait", stats.get("waits", 0))
        yield counter("timeouts", "lock waits that timed out", stats.get("timeouts", 0))
        yield counter("deadlocks", "deadlocks found on this shard (local cycles)", stats.get("deadlocks", 0))
        yield counter("deadlocks_distributed", "cross-shard deadlocks this shard decided",
                      stats.get("deadlocks_found", 0))
        yield counter("escalations", "lock escalations", stats.get("escalations", 0))
        yield counter("probes", "deadlock probes sent", stats.get("probes_sent", 0))
        yield counter("probe_messages", "shard-to-shard probe messages sent", stats.get("probe_msgs_sent", 0))
        yield counter("sessions_opened", "sessions opened", stats.get("sessions_opened", 0))
        yield counter("sessions_expired", "sessions expired (no heartbeat within their TTL)",
                      stats.get("sessions_expired", 0))
        yield counter("prepares", "2PC prepares", stats.get("prepares", 0))
        yield counter("decisions", "2PC decisions (commit/abort of prepared transactions)",
                      stats.get("decisions", 0))
        yield counter("errors", "requests answered with an error", stats.get("errors", 0))
        yield counter("log_fsyncs", "prepare-log fsyncs", stats.get("log_fsyncs", 0))
        other = CounterMetricFamily("lockmgr_core_events", "every other counter of the shard (STATS)",
                                    labels=lbl + ["counter"])
        for k in CORE_COUNTERS + PROBE_COUNTERS:
            other.add_metric(sv + [k], stats.get(k, 0))
        yield other
        yield gauge("sessions", "live sessions", stats.get("sessions", 0))
        yield gauge("transactions", "transactions with state on this shard", info.get("transactions", 0))
        yield gauge("lock_requests", "held and waiting lock requests", stats.get("requests", 0))
        yield gauge("resources", "locked resources", stats.get("resources", 0))
        yield gauge("waiters", "transactions waiting for a lock", info.get("waiters", 0))
        yield gauge("prepared_transactions", "prepared (in-doubt) transactions", stats.get("indoubt", 0))
        yield gauge("epoch", "this start's epoch", stats.get("epoch", 0))
        yield gauge("uptime_seconds", "seconds since the shard started", time.time() - info.get("started_at", 0))
        if info.get("log_bytes") is not None:
            yield gauge("prepare_log_bytes", "size of the prepare log", info["log_bytes"])
        waiting = list(h.waiting.values())
        born = dict(h.born)
        yield gauge("oldest_waiter_seconds", "age of the oldest wait in progress (0: none)",
                    max(0.0, now - min(waiting)) if waiting else 0.0)
        yield gauge("oldest_holder_seconds", "age of the oldest transaction holding locks here, since its first "
                    "lock on this shard (0: none)", max(0.0, now - min(born.values())) if born else 0.0)
        for name, doc, hist in (("wait_seconds", "time lock requests waited (granted, timed out or victim)", h.wait),
                                ("hold_seconds", "time from a transaction's first lock here to its release", h.hold),
                                ("fsync_seconds", "prepare-log fsync latency", h.fsync)):
            buckets, total = hist.read()
            m = HistogramMetricFamily(f"lockmgr_{name}", doc, labels=lbl)
            m.add_metric(sv, buckets, total)
            yield m


def start(shard: Any, port: int, host: str = "127.0.0.1") -> Exporter:
    """Serve the shard's metrics on http://HOST:PORT/metrics (port 0: a free one, see .port)."""
    return Exporter(shard, port, host)

