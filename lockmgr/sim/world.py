"""The simulated cluster: shard cores, clients, a network and a clock, driven
by one seed (docs/simulation.md).

Interface:
    SimConfig(...)                       the knobs (shards, clients, fault rates, duration)
    World(seed, cfg)                     one run; ``.run() -> SimResult``
    SimResult(seed, ok, violation, events, sim_time, trace_hash, tail, stats)
    Violation(Exception)                 an invariant broken (the message names it)
    replay_command(seed, cfg) -> str     the one-line command that replays a seed

Everything happens in one thread from one event heap ordered by (simulated
time, sequence number). The shards are the real sans-IO ShardCore (with the
real deadlock probes, two-phase commit and reclaim plug-ins) over an in-memory
prepare log (memlog.py); the clients run the real transaction generators of
lockmgr/service/client/ops.py (client.py). Every host has its own monotonic
clock: a random offset (seconds to hours) and a rate within the clients' drift
allowance, so any comparison of two hosts' clock readings shows up as a
broken invariant. The seeded PRNG draws every delay, drop, duplicate, crash,
pause and partition; the same seed gives the same trace (``trace_hash``).

After every event the invariants of docs/simulation.md are checked
(invariants.py); the first broken one stops the run.
"""

import dataclasses
import hashlib
import heapq
import random

from ..service import wire
from ..service.shard import core as _core_mod
from .client import SimClient
from .invariants import Checker, TokenTable, Violation
from .memlog import Disk, MemoryLog

__all__ = ["SimConfig", "World", "SimResult", "Violation", "replay_command", "run_seed"]

MAX_BUDGET = 1 << 30


@dataclasses.dataclass
class SimConfig:
    """The knobs of a run (defaults: the test suite's)."""

    shards: int = 3
    clients: int = 4
    partition_depth: int = 2
    tables: int = 3
    rows: int = 3
    duration: float = 1.2            # simulated seconds
    max_events: int = 20000
    ttl: float = 0.4                 # session TTL (s)
    request_timeout: float = 0.2
    probe_delay: float = 0.01
    delay_min: float = 0.0002        # one-way network delay (s), uniform
    delay_max: float = 0.004
    drop: float = 0.01               # per message
    dup: float = 0.01
    crash_rate: float = 0.7         # shard crashes per simulated second (whole cluster)
    pause_rate: float = 0.7         # client pauses (SIGSTOP past the lease) per simulated second
    partition_rate: float = 0.7     # partitions per simulated second
    p_2pc: float = 0.25              # share of transactions that prepare (2PC)
    think: float = 0.003             # max pause between a client's operations (s)
    cycle_bound: float = 0.6         # a wait-for cycle lives at most this long after the last fault ends
    skew: bool = True                # per-host clock offsets and rates

    def changed(self):
        """{name: value} of the knobs that differ from the defaults."""
        d = SimConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(d, f.name)}


def replay_command(seed, cfg=None):
    opts = "".join(f" --set {k}={v}" for k, v in (cfg.changed() if cfg is not None else {}).items())
    return f"python -m lockmgr.sim --seed {seed}{opts} --trace"


@dataclasses.dataclass
class SimResult:
    seed: int
    ok: bool
    violation: str
    events: int
    sim_time: float
    trace_hash: str
    tail: list
    stats: dict


class _Shard:
    __slots__ = ("index", "disk", "log", "core", "up", "inc", "timer_at", "flush_at", "off", "rate", "restarts")

    def __init__(self, index, off, rate):
        self.index = index
        self.disk = Disk()
        self.log = None
        self.core = None
        self.up = False
        self.inc = 0                   # incarnation: events of an earlier one are void
        self.timer_at = None
        self.flush_at = None
        self.off = off
        self.rate = rate
        self.restarts = 0


class World:
    """One seeded run of the simulated cluster."""

    def __init__(self, seed, cfg=None, trace=False):
        self.seed = seed
        self.cfg = cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.t = 0.0
        self.nshards = cfg.shards
        self.partition_depth = cfg.partition_depth
        self._heap = []
        self._n = 0
        self.events = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self.tail = []
        self.keep_trace = trace
        self.trace = [] if trace else None
        self.cut = set()               # nodes cut off from the rest (a partition)
        self.dirty = set()             # shards whose state changed since the last check
        self.last_fault_end = 0.0
        self._tid = 0
        self.stats = {"msgs": 0, "dropped": 0, "duplicated": 0, "crashes": 0, "pauses": 0, "partitions": 0,
                      "victims": 0, "commits": 0, "aborts": 0, "prepared": 0, "expired_sessions": 0,
                      "reclaims": 0}
        skew = cfg.skew
        self.shards = [_Shard(i, self.rng.uniform(10.0, 50000.0) if skew else 0.0,
                              1.0 + (self.rng.uniform(-5e-4, 5e-4) if skew else 0.0)) for i in range(cfg.shards)]
        self.checker = Checker(self)
        for s in self.shards:
            self._start_shard(s)
        self.clients = []
        for j in range(cfg.clients):
            c = SimClient.__new__(SimClient)
            c.off = self.rng.uniform(10.0, 50000.0) if skew else 0.0
            c.rate = 1.0 + (self.rng.uniform(-5e-4, 5e-4) if skew else 0.0)
            SimClient.__init__(c, self, j)
            self.clients.append(c)
            self.schedule_client(c, self.rng.uniform(0, 0.01))
            self._at(self.t + 0.01, self._client_tick, c)
        self._at(self._exp(cfg.crash_rate), self._fault_crash, None)
        self._at(self._exp(cfg.pause_rate), self._fault_pause, None)
        self._at(self._exp(cfg.partition_rate), self._fault_partition, None)

    # ------------------------------------------------------------- plumbing

    def _exp(self, rate):
        return self.t + (self.rng.expovariate(rate) if rate > 0 else 1e18)

    def _at(self, when, fn, arg):
        self._n += 1
        heapq.heappush(self._heap, (when, self._n, fn, arg))

    def note(self, *what):
        line = f"{self.t:.6f} " + " ".join(str(w) for w in what)
        self._hash.update(line.encode())
        self.tail.append(line)
        if len(self.tail) > 60:
            del self.tail[:20]
        if self.trace is not None:
            self.trace.append(line)

    def new_txn_id(self):
        """Transaction ids ordered by begin time across every client (as txnid.new_txn_id)."""
        self._tid += 1
        return (1 << 40) + (self._tid << 8)

    def shard_clock(self, s):
        return s.off + self.t * s.rate

    def client_clock(self, c):
        return c.off + self.t * c.rate

    def _to_sim(self, s, when):
        return (when - s.off) / s.rate

    # -------------------------------------------------------------- shards

    def _start_shard(self, s):
        s.log = MemoryLog(s.disk)
        s.inc += 1
        s.timer_at = s.flush_at = None
        core = _core_mod.ShardCore(
            epoch=s.log.epoch, index=s.index, nshards=self.nshards, partition_depth=self.partition_depth,
            log=s.log, probe_delay=self.cfg.probe_delay, now=self.shard_clock(s),
            peers=[f"inproc://sim-shard-{k}" for k in range(self.nshards)],
            random_bytes=lambda n: self.rng.getrandbits(8 * n).to_bytes(n, "big"))
        core.table = core._table = TokenTable(core.table, self.checker, s)
        s.core = core
        s.up = True
        self.checker.shard_started(s)
        self.note("start", f"s{s.index}", f"epoch={core.epoch}")
        self._after(s)

    def _after(self, s):
        """After the core handled something: replies, peer messages, timers, the log."""
        core = s.core
        self.dirty.add(s.index)
        if core.probes.inbox:
            core.peer_messages()
        for prefix, reps in core.take_replies().items():
            if prefix[0].startswith(b"c"):
                self._send(f"s{s.index}", prefix[0].split(b".")[0].decode(), ("reply", s.index, prefix[0],
                                                                wire.pack_replies(reps)))
        for dest, reqs in core.take_peer_messages().items():
            self._send(f"s{s.index}", f"s{dest}", ("peer", s.index, wire.pack_requests(core.peer_sid, 0, reqs)))
        due = core.next_timer()
        if due is not None:
            when = max(self.t, self._to_sim(s, due))
            if s.timer_at is None or when < s.timer_at:
                s.timer_at = when
                self._at(when, self._shard_timer, (s, s.inc))
        if s.log.pending and s.flush_at is None:
            s.flush_at = self.t + self.rng.uniform(0.0005, 0.004)       # group commit: one fsync
            self._at(s.flush_at, self._shard_flush, (s, s.inc))
        errs = core.internal_errors
        if errs:
            where, e = errs[0]
            raise Violation(f"shard {s.index}: internal error in {where}: {type(e).__name__}: {e}")

    def _shard_frame(self, s, prefix, data):
        core = s.core
        core.now = self.shard_clock(s)
        try:
            sid, ack, reqs = wire.unpack_requests(data)
        except wire.ProtocolError as e:
            core.reply((prefix,), [0, e.status, str(e)])
        else:
            core.frame((prefix,), sid, ack, reqs, MAX_BUDGET)
            core.process_woken()
            while core.backlog:
                core.resume(MAX_BUDGET)
        self._after(s)

    def _shard_timer(self, arg):
        s, inc = arg
        if not s.up or s.inc != inc or s.timer_at is None or self.t < s.timer_at:
            return
        s.timer_at = None
        core = s.core
        core.now = self.shard_clock(s)
        due = core.next_timer()
        if due is not None and due <= core.now:
            self.note("timers", f"s{s.index}")
            while core.fire_timers(64):
                pass
        self._after(s)

    def _shard_flush(self, arg):
        s, inc = arg
        if not s.up or s.inc != inc:
            return
        s.flush_at = None
        batch = s.log.flush()
        if not batch:
            return
        self.note("fsync", f"s{s.index}", len(batch))
        self.checker.durable(s, batch)
        core = s.core
        core.now = self.shard_clock(s)
        core.durable(batch)
        core.frame((b"wake",), 0, 0, [[wire.WAKE, 0]], MAX_BUDGET)    # as the server's WAKE frame
        core.process_woken()
        self._after(s)
        core.take_replies()    # (none left: _after sent them; the WAKE's own answer went to b"wake")

    # ------------------------------------------------------------- network

    def _send(self, src, dst, msg):
        self.stats["msgs"] += 1
        if self._blocked(src, dst) or self.rng.random() < self.cfg.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if self.rng.random() < self.cfg.dup else 1
        if copies == 2:
            self.stats["duplicated"] += 1
        for _ in range(copies):
            self._at(self.t + self.rng.uniform(self.cfg.delay_min, self.cfg.delay_max), self._deliver,
                     (src, dst, msg))

    def _blocked(self, a, b):
        return bool(self.cut) and ((a in self.cut) != (b in self.cut))

    def client_send(self, client, eng, shard, data):
        self._send(f"c{client.index}", f"s{shard}", ("frame", eng.prefix, data))

    def _deliver(self, arg):
        src, dst, msg = arg
        if self._blocked(src, dst):
            self.stats["dropped"] += 1
            return
        if dst[0] == "s":
            s = self.shards[int(dst[1:])]
            if not s.up:
                return
            if msg[0] == "frame":
                self.note("frame", src, dst, hashlib.blake2b(msg[2], digest_size=6).hexdigest())
                self._shard_frame(s, msg[1], msg[2])
            else:
                self.note("peer", src, dst, hashlib.blake2b(msg[2], digest_size=6).hexdigest())
                self._shard_frame(s, f"peer{msg[1]}".encode(), msg[2])
        else:
            c = self.clients[int(dst[1:])]
            if c.paused_until is not None:
                c.inbox.append((self._deliver, arg))
                return
            _, i, prefix, data = msg
            if prefix == c.eng.prefix:
                self.note("reply", src, dst, hashlib.blake2b(data, digest_size=6).hexdigest())
                c.eng.on_frame(i, data)

    # ------------------------------------------------------------- clients

    def schedule_client(self, c, delay):
        self._at(self.t + delay, self._client_step, c)

    def defer(self, c, fn, arg):
        self._at(self.t, self._client_call, (c, fn, arg))

    def _client_call(self, arg):
        c, fn, a = arg
        if c.paused_until is not None:
            c.inbox.append((self._client_call, arg))
            return
        fn(a)

    def _client_step(self, c):
        if c.paused_until is not None:
            c.inbox.append((self._client_step, c))
            return
        self.note("step", f"c{c.index}")
        c.step()

    def _client_tick(self, c):
        self._at(self.t + self.cfg.ttl / 12, self._client_tick, c)
        if c.paused_until is None:
            c.eng.tick(c.now())

    # -------------------------------------------------------------- faults

    def _fault_crash(self, _):
        self._at(self._exp(self.cfg.crash_rate), self._fault_crash, None)
        up = [s for s in self.shards if s.up]
        if not up:
            return
        s = self.rng.choice(up)
        s.up = False
        s.inc += 1
        s.log = None                       # what was not fsynced is lost
        self.dirty.add(s.index)
        self.stats["crashes"] += 1
        self.checker.shard_crashed(s)
        self.note("CRASH", f"s{s.index}")
        self._at(self.t + self.rng.uniform(0.05, 0.8), self._restart, s)

    def _restart(self, s):
        s.restarts += 1
        self._start_shard(s)
        self.last_fault_end = max(self.last_fault_end, self.t)

    def _fault_pause(self, _):
        self._at(self._exp(self.cfg.pause_rate), self._fault_pause, None)
        c = self.rng.choice(self.clients)
        if c.paused_until is not None:
            return
        d = self.rng.uniform(0.5, 2.5) * self.cfg.ttl
        c.paused_until = self.t + d
        self.stats["pauses"] += 1
        self.note("PAUSE", f"c{c.index}", f"{d:.3f}")
        self._at(self.t + d, self._resume, c)

    def _resume(self, c):
        c.paused_until = None
        self.note("RESUME", f"c{c.index}")
        inbox, c.inbox = c.inbox, []
        for fn, arg in inbox:
            fn(arg)
        c.eng.tick(c.now())

    def _fault_partition(self, _):
        self._at(self._exp(self.cfg.partition_rate), self._fault_partition, None)
        if self.cut:
            return
        nodes = [f"s{i}" for i in range(self.nshards)] + [f"c{j}" for j in range(len(self.clients))]
        k = self.rng.randint(1, max(1, len(nodes) // 2))
        self.cut = set(self.rng.sample(nodes, k))
        d = self.rng.uniform(0.1, 2.0) * self.cfg.ttl
        self.stats["partitions"] += 1
        self.note("PARTITION", sorted(self.cut), f"{d:.3f}")
        self._at(self.t + d, self._heal, None)

    def _heal(self, _):
        self.cut = set()
        self.last_fault_end = max(self.last_fault_end, self.t)
        self.note("HEAL")

    # ------------------------------------------------- what clients report

    def on_granted(self, core, items, client):
        self.checker.granted(core, items, client)

    def on_prepared(self, core, client):
        self.stats["prepared"] += 1
        self.checker.prepared(core)

    def on_txn_end(self, core, err, what):
        if core is None:
            return
        if err is None and what[0] == "finish":
            self.stats["commits" if what[1] else "aborts"] += 1
        self.checker.txn_end(core)

    def on_victim(self, tid, client, now):
        self.stats["victims"] += 1
        self.note("VICTIM", tid)
        self.checker.victim(tid)

    def on_session_end(self, c):
        self.stats["expired_sessions"] += 1

    # ----------------------------------------------------------------- run

    def run(self):
        cfg = self.cfg
        violation = None
        try:
            while self._heap and self.events < cfg.max_events:
                when, _, fn, arg = heapq.heappop(self._heap)
                if when > cfg.duration:
                    break
                self.t = max(self.t, when)
                self.events += 1
                fn(arg)
                self.checker.check()
        except Violation as v:
            violation = str(v)
            self.note("VIOLATION", violation)
        return SimResult(self.seed, violation is None, violation or "", self.events, self.t,
                         self._hash.hexdigest(), list(self.tail[-40:]), dict(self.stats))


def run_seed(seed, cfg=None, trace=False):
    """Run one seed; -> SimResult."""
    return World(seed, cfg, trace).run()
