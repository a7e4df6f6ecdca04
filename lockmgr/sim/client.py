"""A simulated client: the service client's transaction logic (the generators of
lockmgr/service/client/ops.py, unchanged) over a simulated session layer.

Interface:
    SimEngine(world, client, gen)   one session: what the ops generators ask of an engine
                                    (n, partition_depth, epoch, txns, check_session,
                                    lease_over, post, post_quiet, dead, request_timeout,
                                    reclaim_waiting, recorded) plus HELLO, heartbeats,
                                    retries with the same sequence number, acks, the
                                    lease, and the reclaim of a restarted shard's locks
    SimClient(world, index)         a workload: transactions of random locks, commits,
                                    aborts and 2PC, one ops generator at a time

The session layer mirrors lockmgr/service/client/engine.py's rules (docs/service.md,
"Client engine" and "Restarts: reclaim and grace"): a request is retried with its
sequence number until answered or past its deadline; any answer renews the lease
from the request's send time; "unknown session" parks the call, re-opens the
session with its secret and, if the shard's epoch changed, reclaims what the
transactions hold there before the parked calls go again. Time is the client's
own simulated monotonic clock (``world.client_clock``); randomness is the world's
seeded PRNG, so a seed replays the same trace.
"""

from ..errors import (DeadlockDetected, LockError, SessionExpired, ShardUnavailable)
from ..rules import ACTIVE, PREPARED
from ..service import wire
from ..service.client import ops
from ..service.client.engine import MAX_CLOCK_DRIFT
from ..service.client.hot import EngineBase

__all__ = ["SimEngine", "SimClient"]

_OK = wire.OK


class _SimCall:
    __slots__ = ("shard", "typ", "args", "seq", "deadline", "first_sent", "next_retry", "result", "error",
                 "done", "cb")

    def __init__(self, shard, typ, args, deadline, cb):
        self.shard, self.typ, self.args, self.deadline, self.cb = shard, typ, args, deadline, cb
        self.seq = 0
        self.first_sent = 0.0
        self.next_retry = 0.0
        self.result = self.error = None
        self.done = False


class SimEngine(EngineBase):
    """One client session over the simulated network (see the module docstring)."""

    def __init__(self, world, client, gen):
        self.world = world
        self.client = client
        self.n = world.nshards
        self.partition_depth = world.partition_depth
        self.ttl = world.cfg.ttl
        self.ttl_ms = int(self.ttl * 1000)
        self.lease = self.ttl * (1.0 - 2 * MAX_CLOCK_DRIFT)
        self.request_timeout = world.cfg.request_timeout
        self.retry_interval = self.request_timeout / 4
        self.prefix = f"c{client.index}.{gen}".encode()
        self.session = world.rng.getrandbits(63) | 1
        self.name = f"sim-client-{client.index}"
        self.epoch = [0] * self.n
        self.gen = 0                       # (the real engine's session generation; one session here)
        self.last_dead = None
        self.txns = {}
        self.dead = None
        self.closed = False
        self.reclaim_waiting = False
        self.reclaims = 0
        now = client.now()
        self._lease_base = [now] * self.n
        self._seq = [1] * self.n
        self._pending = [{} for _ in range(self.n)]
        self._parked = [{} for _ in range(self.n)]
        self._secret = [None] * self.n
        self._hello_pending = [False] * self.n
        self._hb_at = [now + self.ttl / 4] * self.n
        self._hb_out = [False] * self.n
        self._reclaim = {}                 # shard -> [old, new, {tid: core}]
        for i in range(self.n):
            self._send_hello(i)

    # ------------------------------------------------ what the ops generators use

    def check_session(self):
        if self.dead is not None:
            raise SessionExpired(self.dead)
        if self.client.now() > min(self._lease_base) + self.lease:
            self.dead = "the session's lease ran out (no heartbeat acknowledged within its TTL)"
            raise SessionExpired(self.dead)

    def lease_over(self):
        try:
            self.check_session()
        except SessionExpired:
            return True
        return False

    def post(self, shard, typ, args):
        if self.dead is None:
            self.submit(shard, typ, args, 0.0, None)

    def post_quiet(self, shard, typ, args):
        self.post(shard, typ, args)

    def recorded(self):
        pass

    # ------------------------------------------------------------- calls

    def submit(self, shard, typ, args, extra, cb):
        now = self.client.now()
        c = _SimCall(shard, typ, args, None if extra is None else now + self.request_timeout + extra, cb)
        if self.dead is not None:
            self._finish(c, SessionExpired(self.dead))
            return c
        if self._hello_pending[shard] or shard in self._reclaim:
            c.seq = self._next_seq(shard)
            self._pending[shard][c.seq] = c
            self._parked[shard][c.seq] = c
            c.first_sent = now
            return c
        self._send(c, now)
        return c

    def _next_seq(self, i):
        s = self._seq[i]
        self._seq[i] = s + 1
        return s

    def _send(self, c, now, resend=False):
        i = c.shard
        if not resend:
            if not c.seq:
                c.seq = self._next_seq(i)
            c.first_sent = now
            self._pending[i][c.seq] = c
        c.next_retry = now + self.retry_interval
        pend = self._pending[i]
        ack = min(pend) if pend else self._seq[i]
        req = [c.typ, c.seq]
        req.extend(c.args)
        self.world.client_send(self.client, self, i, wire.pack_requests(self.session, ack, [req]))

    def _finish(self, c, err=None, result=None):
        if c.done:
            return
        c.done = True
        c.error, c.result = err, result
        self._pending[c.shard].pop(c.seq, None)
        self._parked[c.shard].pop(c.seq, None)
        if c.cb is not None:
            c.cb(c)

    def on_frame(self, i, data):
        """A reply frame from shard ``i``."""
        try:
            reps = wire.unpack_replies(data)
        except Exception:
            return
        now = self.client.now()
        for rep in reps:
            if type(rep) is not list or len(rep) != 3:
                continue
            seq, status, payload = rep
            c = self._pending[i].get(seq)
            if c is None or c.done:
                continue
            if status == _OK:
                if c.first_sent > self._lease_base[i] and not self._hello_pending[i] and self.epoch[i]:
                    self._lease_base[i] = c.first_sent
                self._finish(c, None, payload)
                continue
            if status == wire.E_UNKNOWN_SESSION and c.typ not in (wire.HELLO, wire.HEARTBEAT) and self.dead is None:
                self._parked[i][seq] = c                 # sent again once the session is back there
                if not self._hello_pending[i]:
                    self._send_hello(i)
                continue
            err = wire.error_for(status, payload)
            if status == wire.E_SESSION_EXPIRED and self.dead is None:
                self.dead = str(payload)
            if status == wire.E_DEADLOCK:
                self.world.on_victim(c.args[0] if c.args else None, self.client, now)
            self._finish(c, err)

    def tick(self, now):
        """Retries, deadlines, heartbeats (the client's housekeeping)."""
        if self.dead is None and now > min(self._lease_base) + self.lease:
            self.dead = "the session's lease ran out (no heartbeat acknowledged within its TTL)"
        for i in range(self.n):
            for c in list(self._pending[i].values()):
                if c.done:
                    continue
                if c.deadline is not None and now >= c.deadline:
                    self._finish(c, ShardUnavailable(f"shard {i} did not answer {wire.TYPE_NAMES.get(c.typ)} "
                                                     f"within the request timeout"))
                elif now >= c.next_retry and c.seq not in self._parked[i]:
                    self._send(c, now, resend=True)
            if self.dead is None and not self._hb_out[i] and not self._hello_pending[i] and now >= self._hb_at[i]:
                self._hb_out[i] = True
                self.submit(i, wire.HEARTBEAT, [], 0.0, self._on_heartbeat)

    def _on_heartbeat(self, c):
        i = c.shard
        self._hb_out[i] = False
        self._hb_at[i] = self.client.now() + self.ttl / 4
        if c.error is None:
            if c.first_sent > self._lease_base[i]:
                self._lease_base[i] = c.first_sent
        elif isinstance(c.error, SessionExpired):
            self.dead = self.dead or str(c.error)
        elif isinstance(c.error, ShardUnavailable) and not self._hello_pending[i] and self.dead is None:
            self._send_hello(i)

    # --------------------------------------------------- HELLO and reclaim

    def _send_hello(self, i):
        self._hello_pending[i] = True
        args = [self.ttl_ms, self.name]
        if self._secret[i] is not None:
            args.append(self._secret[i])
        c = _SimCall(i, wire.HELLO, args, self.client.now() + self.request_timeout, self._on_hello)
        self._send(c, self.client.now())

    def _on_hello(self, c):
        i = c.shard
        self._hello_pending[i] = False
        if c.error is not None:
            if isinstance(c.error, SessionExpired):
                self.dead = self.dead or str(c.error)
            elif self.dead is None:
                self._send_hello(i)                       # (unanswered: try again)
            return
        epoch, _index, _n, _depth, secret = c.result[:5]
        self._secret[i] = secret
        old = self.epoch[i]
        if old and epoch != old:
            if c.first_sent > self._lease_base[i] + self.lease:
                self.dead = "the session's lease ran out before the shard answered HELLO"
                return
            self._lease_base[i] = max(self._lease_base[i], c.first_sent)
            self._start_reclaim(i, old, epoch)
            return
        self.epoch[i] = epoch
        self._lease_base[i] = max(self._lease_base[i], c.first_sent)
        self._resend_parked(i)

    def _resend_parked(self, i):
        now = self.client.now()
        for _, c in sorted(self._parked[i].items()):
            if not c.done:
                self._send(c, now, resend=True)
        self._parked[i].clear()

    def _start_reclaim(self, i, old, new):
        if i in self._reclaim and self._reclaim[i][1] == new:     # (a second answer to HELLO)
            return
        inflight = {c.args[0] for c in self._pending[i].values()
                    if c.typ in (wire.LOCK, wire.LOCK_MANY) and not c.done}
        txns = []
        cores = {}
        for tid, core in list(self.txns.items()):
            if core.state is not ACTIVE:
                if core.state is not PREPARED:
                    self.txns.pop(tid, None)
                continue
            if core.touched.get(i) != old or core.doom:
                continue
            if i in core.busy and tid not in inflight:
                # an answer received but not recorded by its generator yet: not reclaimed
                core.doom = (f"shard {i} restarted (epoch {old} -> {new}) before the answer of a lock of "
                             f"transaction {tid} was recorded; the transaction has been aborted")
                continue
            items = sorted(([list(p), m, t] for p, (m, t) in core.locks.get(i, {}).items()), key=lambda x: len(x[0]))
            txns.append([tid, items])
            cores[tid] = core
        self.reclaims += 1
        self.world.stats["reclaims"] += 1
        c = _SimCall(i, wire.RECLAIM, [old, True, txns], self.client.now() + self.request_timeout, self._on_reclaim)
        self._reclaim[i] = (old, new, cores, c)
        self._send(c, self.client.now())

    def _on_reclaim(self, c):
        i = c.shard
        r = self._reclaim.get(i)
        if r is None or r[3] is not c:
            return
        del self._reclaim[i]
        old, new, cores, _ = r
        if c.error is not None:
            for core in cores.values():
                core.doom = core.doom or (f"shard {i} restarted (epoch {old} -> {new}) and the locks of transaction "
                                          f"{core.id} could not be reclaimed ({c.error})")
        else:
            for tid, why in c.result[1]:
                if tid in cores:
                    cores[tid].doom = why
        for core in cores.values():
            if not core.doom and core.touched.get(i) == old:
                core.touched[i] = new
        self.epoch[i] = new
        self._resend_parked(i)


class _Client:
    """What ops._TxnCore reads of a client."""

    def __init__(self, eng):
        self._eng = eng
        self._default_timeout = None


class SimClient:
    """One client process of the simulation: sessions one after another, each
    running transactions built from the ops generators."""

    def __init__(self, world, index):
        self.world = world
        self.index = index
        self.rng = world.rng
        self.paused_until = None        # SIGSTOP: nothing runs, frames queue until then
        self.inbox = []
        self.gens = 0
        self.eng = None
        self.core = None                # the transaction in progress (ops._TxnCore)
        self.gen = None                 # the ops generator in progress, and its calls
        self.calls = None
        self.plan = []
        self.done_txns = 0
        self.new_session()

    def now(self):
        return self.world.client_clock(self)

    def new_session(self):
        self.gens += 1
        self.eng = SimEngine(self.world, self, self.gens)
        self.core = None
        self.gen = None
        self.calls = None

    # ----------------------------------------------------------- the workload

    def _resource(self):
        w = self.world
        r = self.rng.random()
        if r < 0.06:
            return ("db",)                                   # above the partition depth: every shard
        if r < 0.2:
            return ("db", self.rng.randrange(w.cfg.tables))
        return ("db", self.rng.randrange(w.cfg.tables), self.rng.randrange(w.cfg.rows))

    def _mode(self):
        return self.rng.choice((1, 2, 3, 3, 4, 5, 5, 5))      # IS IX S S SIX X X X

    def _begin(self):
        w = self.world
        gtrid = f"g{self.index}.{self.done_txns}.{self.gens}" if self.rng.random() < w.cfg.p_2pc else None
        core = ops._TxnCore(_Client(self.eng), None, gtrid)
        core.id = core.wid = w.new_txn_id()                   # deterministic, ordered by begin time
        self.core = core
        plan = []
        for _ in range(self.rng.randint(1, 4)):
            if self.rng.random() < 0.2:
                plan.append(("lock_many", [(self._resource(), self._mode()) for _ in range(2)]))
            else:
                plan.append(("lock", self._resource(), self._mode(), self.rng.random() < 0.1))
        r = self.rng.random()
        if gtrid is not None:
            plan.append(("prepare",))
            plan.append(("finish", r < 0.7))
        else:
            plan.append(("finish", r < 0.6))
        self.plan = plan

    def _start(self, gen, what):
        self.gen = gen
        self.what = what
        self._advance(None, first=True)

    def _advance(self, results, first=False):
        try:
            specs = next(self.gen) if first else self.gen.send(results)
        except StopIteration as e:
            self.gen = None
            self._op_done(e.value, None)
            return
        except LockError as e:
            self.gen = None
            self._op_done(None, e)
            return
        self.calls = []
        self.results = [None] * len(specs)
        self.left = len(specs)
        for k, (s, typ, args, extra) in enumerate(specs):
            self.calls.append(self.eng.submit(s, typ, args, extra, lambda c, k=k: self._on_result(k, c)))

    def _on_result(self, k, c):
        if self.gen is None or self.calls is None:
            return
        self.results[k] = c.error if c.error is not None else c.result
        self.left -= 1
        if self.left == 0:
            self.calls = None
            self.world.defer(self, self._advance, self.results)

    def _op_done(self, value, err):
        w = self.world
        core = self.core
        what = self.what
        if err is None:
            if what[0] == "lock":
                w.on_granted(core, [(what[1], what[2])], self)
            elif what[0] == "lock_many":
                w.on_granted(core, what[1], self)
            elif what[0] == "prepare":
                w.on_prepared(core, self)
        if err is not None and core.state is PREPARED:
            # in doubt: decide again (from a new session if this one is over: DECIDE goes by gtrid)
            if self.eng.dead is not None:
                self.world.on_session_end(self)
                self.new_session()
                core = self._adopt(core)
            self.core = core
            self.plan = [what if what[0] == "finish" else ("finish", False)]
            w.schedule_client(self, self.rng.uniform(0.0, w.cfg.think) + self.eng.retry_interval)
            return
        if err is not None or what[0] == "finish":
            w.on_txn_end(core, err, what)
            if err is not None and core.state is ACTIVE and what[0] != "finish":
                self.plan = [("finish", False)]             # abort what it holds, then a new one
            else:
                self.core = None
                self.done_txns += 1
            if isinstance(err, SessionExpired) or self.eng.dead is not None:
                self.core = None
                self.world.on_session_end(self)
                self.new_session()
            elif isinstance(err, DeadlockDetected):
                pass
        w.schedule_client(self, self.rng.uniform(0.0, w.cfg.think))

    def _adopt(self, old):
        """A prepared transaction of an ended session, to be decided from this one."""
        core = ops._TxnCore(_Client(self.eng), None, old.gtrid)
        core.id = core.wid = old.id
        core.touched = dict(old.touched)
        core.state = PREPARED
        return core

    def step(self):
        """Start the next operation (no generator is running)."""
        if self.gen is not None or self.paused_until is not None:
            return
        if self.eng.dead is not None:
            keep = self.core if self.core is not None and self.core.state is PREPARED else None
            self.world.on_session_end(self)
            self.new_session()
            if keep is not None:
                self.core = self._adopt(keep)
                self.plan = [("finish", False)]
        if self.core is None:
            self._begin()
        if not self.plan:
            self.plan = [("finish", True)]
        op = self.plan.pop(0)
        core = self.core
        if op[0] == "lock":
            gen = ops._g_lock(core, op[1], op[2], None, op[3])
        elif op[0] == "lock_many":
            gen = ops._g_lock_many(core, op[1], None, False)
        elif op[0] == "prepare":
            gen = ops._g_prepare(core)
        else:
            gen = ops._g_finish(core, op[1])
        self._start(gen, op)
