"""Distributed deadlock detection by edge chasing (Chandy-Misra-Haas, AND model).

Interface (a plug-in of the sans-IO shard core, lockmgr/service/shard/core.py; design and
correctness argument: docs/probes.md):
    ProbeEngine(host, probe_delay=0.010, probe_interval=None, peers=None)
        ``host``: the core's ShardHost interface -- the only state of the shard it uses
        .on_wait(txn, wait)        a request of ``txn`` starts to wait (new wait epoch)
        .on_wait_end(tid)          that wait ended
        .on_local_victim(cycle, victim_tid)   the shard's local search chose a victim
        .hold_timeout(wait) -> bool   defer a lock-wait timeout while a cycle is confirmed
        .on_timer()                the core's TimerKind.PROBE timer fired
        .peer_types                message types exchanged between shards (no reply)
        .admin                     {type: handler} of DEADLOCKS, PEERS, FAULTS
        .accept(req), .turn()      queue / handle peer messages
        .take_outbox() -> {shard: [message, ...]}   what the driver sends to the other shards
        .peers, .peers_version     the peer endpoints (PEERS), for the driver's sockets

Outline. A wait lasting ``probe_delay`` is *registered* with the transaction's
directory shard (``directory(tid)``: a stable hash of the id) and starts a probe
(``initiator, initiator's shard, wait epoch, round``). A probe at a shard runs a
depth-first search over the local wait-for edges (hard edges to conflicting
holders, soft edges to waiters queued ahead) from the transaction it arrived
at; for every transaction reached that does not wait on this shard it sends one
message to that transaction's directory, which forwards it to each shard where
the transaction waits. An edge back to the initiator closes a cycle; then a
CONFIRM message walks the cycle's shards once more, re-checking every wait
(same epoch) and edge and holding the members' lock-wait timeouts, and ends at
the shard of the victim (the youngest transaction of the cycle: the largest
id), which aborts it there and tells every other shard to abort it too
(VICTIM). Each step is O(1) messages per edge; probes are deduplicated per
(probe, shard, transaction); stale probes are dropped and counted.
"""

import collections
import hashlib
import itertools
import random

from . import wire
from .routing import check_endpoint
from ..rules import ACTIVE, brief, choose_victim
from ..modes import Mode
from .shard.timers import TimerKind

__all__ = ["ProbeEngine", "directory", "DEFAULT_PROBE_DELAY"]

DEFAULT_PROBE_DELAY = 0.010     # seconds a wait lasts before it is registered and probes
MAX_PATH = 256                  # transactions a probe may carry; longer paths are dropped
SEEN_TTL = 5.0                  # seconds a probe's visited set is kept (dedup)
MAX_SEEN = 20_000               # probe rounds remembered per shard
HOLD = 0.25                     # seconds a confirmed member's timeout may be deferred (first round)
HOLD_MAX = 2.0                  # ... doubling with each re-probe round of the same wait, up to this
HOLD_MARGIN = 0.02              # the victim is aborted only this long before the holds lapse
REPORTS = 1024                  # deadlock reports kept per shard (a bounded ring)
DIR_TTL = 3                     # directory entries not refreshed within this many intervals expire
MAX_REG_EDGES = 64              # out-edges a registration carries; more: the directory forwards probes instead
PARK_PER_TXN = 8                # probes a directory keeps for one not-yet-registered transaction
MAX_PARKED = 10_000             # transactions with parked probes per shard (beyond: dropped as stale)

# every counter the engine keeps, reported (0 until it first moves) in STATS
COUNTERS = ("probes_sent", "probes_forwarded", "probes_direct", "probes_cache_miss", "probes_pruned",
            "probes_parked", "probes_unparked", "probes_dropped_stale", "probes_dropped_dup",
            "probes_dropped_long", "probe_regs_without_edges", "cycles_found", "confirms_failed",
            "confirms_late", "deadlocks_found", "deadlocks_local", "victims_aborted_remote",
            "timeouts_deferred", "deadlock_reports", "deadlock_reports_merged", "probe_msgs_sent",
            "probe_msgs_send_failed", "probe_msgs_malformed", "probe_msgs_fault_dropped")

# One report per victim: see docs/probes.md, "Deadlock reports".


def _cycle_key(tids):
    """A 64-bit fingerprint of a cycle's members in order (part of a confirm's id)."""
    return int.from_bytes(hashlib.blake2b(b"".join(t.to_bytes(8, "big") for t in tids),
                                          digest_size=8).digest(), "big")


def check_peer_endpoint(p):
    """A peer endpoint: tcp://HOST:PORT (any host), ipc://PATH, or inproc://NAME (one process)."""
    if p.startswith("inproc://") and len(p) > len("inproc://"):
        return
    check_endpoint(p)           # InvalidRequest (a ValueError) naming the problem


def _duration(x):
    """A duration (seconds) from a peer message: a number, else 0 (a malformed one changes nothing unsafe:
    a zero hold fails the confirm as late)."""
    return float(x) if type(x) in (int, float) and x == x else 0.0


def directory(tid, n):
    """The directory shard of transaction ``tid`` (stable across processes)."""
    return (((tid * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32) % n if n > 1 else 0


class _Pending:
    """A cycle being confirmed, at the victim's shard: the re-checked rows of its
    entries arrive from each shard on it; once all are in, the victim is aborted."""

    __slots__ = ("cycle", "vidx", "deadline", "t_found", "rows")

    def __init__(self, deadline):
        self.cycle = None        # [(tid, shard), ...], once the confirm itself arrives
        self.vidx = None         # the victim's index in ``cycle``
        self.deadline = deadline  # the members' timeouts are held until then
        self.t_found = None      # when the probe found the cycle (this host's monotonic clock)
        self.rows = {}           # entry index -> its row; None once a shard's check failed


class _WaitRec:
    __slots__ = ("w", "ep", "start", "wall", "registered", "round")

    def __init__(self, w, ep, start, wall, registered):
        self.w = w
        self.ep = ep
        self.start = start
        self.wall = wall
        self.registered = registered
        self.round = 0


def _mode_name(m):
    try:
        return Mode(m).name if m else None
    except ValueError:
        return str(m)


class ProbeEngine:
    def __init__(self, shard, probe_delay=DEFAULT_PROBE_DELAY, probe_interval=None, peers=None):
        self.host = shard      # the ShardHost interface of lockmgr/service/shard/core.py, nothing else
        self.me = shard.index
        self.n = shard.nshards
        self.enabled = probe_delay is not None and probe_delay >= 0
        self.delay = float(probe_delay) if self.enabled else 0.0
        if probe_interval is None:
            probe_interval = max(0.05, 5 * self.delay)
        self.interval = float(probe_interval)
        self.c = shard.counters
        self._ep = itertools.count(1)
        self.waits = {}                     # tid -> _WaitRec (waits on this shard)
        self.delay_q = collections.deque()  # (due, tid, ep): first probe
        self.again_q = collections.deque()  # (due, tid, ep): re-probe while still waiting
        self.delayed = collections.deque()  # (due, dest, req): fault injection (delay)
        self.dirmap = {}                    # tid -> {shard: (ep, refreshed, edges)}   (this shard as directory)
        self.multi = {}                     # tid -> set of other shards where tid waits too
        self.seen = {}                      # probe id -> set of tids visited here
        self.seen_order = collections.deque()
        self.holds = {}                     # tid -> {probe id: mono deadline}: its timeout waits
        self.pending = {}                   # probe id -> _Pending (victim's shard collects confirms)
        self.where = {}                     # tid -> (shard, learned at): cache of wait locations
        self.parked = {}                    # tid -> [(expires, pid, path)]: probes for tid, before its REG
        self.victims = collections.OrderedDict()   # victim -> its report here (recent, bounded)
        self.reports = collections.deque(maxlen=REPORTS)
        self.inbox = collections.deque()
        self.outbox = {}
        self._g = None
        self._armed = None
        self._armed_entry = None
        self._next_sweep = 0.0
        self.fault = {}
        self._rng = random.Random(0)
        self.peers = None
        self.peers_version = 0              # bumped when the peer list changes (the driver reconnects)
        if peers:
            self.set_peers(peers)
        self.peer_types = {wire.PROBE: self._m_probe, wire.PROBE_REG: self._m_reg,
                           wire.PROBE_UNREG: self._m_unreg, wire.PROBE_MULTI: self._m_multi,
                           wire.PROBE_CONFIRM: self._m_confirm, wire.PROBE_VICTIM: self._m_victim,
                           wire.PROBE_CONFIRMED: self._m_confirmed}
        self.admin = {wire.DEADLOCKS: self._a_deadlocks, wire.PEERS: self._a_peers, wire.FAULTS: self._a_faults}

    # ------------------------------------------------------------ transport

    def set_peers(self, peers):
        """The shards' endpoints for peer messages, in shard order: tcp://HOST:PORT on any
        address (shards may run on different hosts), ipc://PATH or inproc://NAME."""
        peers = [str(p) for p in peers]
        if len(peers) != self.n:
            raise ValueError(f"peers must list all {self.n} shard endpoints in shard order; got {len(peers)}")
        for p in peers:
            check_peer_endpoint(p)
        self.peers = peers
        self.peers_version += 1

    @property
    def distributed(self):
        return self.enabled and self.n > 1 and self.peers is not None

    def send(self, dest, req):
        if dest == self.me:
            self.inbox.append(req)
            return
        f = self.fault
        if f:
            types = f.get("types")
            if types is None or req[0] in types:
                if f.get("drop_next", 0) > 0:
                    f["drop_next"] -= 1
                    self.c["probe_msgs_fault_dropped"] += 1
                    return
                p = f.get("drop_prob", 0.0)
                if p and self._rng.random() < p:
                    self.c["probe_msgs_fault_dropped"] += 1
                    return
                d = f.get("delay_ms", 0)
                if d:
                    self.delayed.append((self.host.now + d / 1000.0, dest, req))
                    self._arm()
                    return
        lst = self.outbox.get(dest)
        if lst is None:
            self.outbox[dest] = [req]
        else:
            lst.append(req)

    def take_outbox(self):
        """{shard: [message, ...]} to send (the driver sends them, with the cluster key's session)."""
        out = self.outbox
        if out:
            self.outbox = {}
        return out

    # ---------------------------------------------------------------- timers

    def _arm(self):
        due = None
        waits = self.waits
        for q in (self.delay_q, self.again_q):
            # drop the entries of waits that already ended (most waits are shorter than
            # probe_delay): no timer fires for them
            while q:
                rec = waits.get(q[0][1])
                if rec is not None and rec.ep == q[0][2]:
                    break
                q.popleft()
        for q in (self.delay_q, self.again_q, self.delayed):
            if q and (due is None or q[0][0] < due):
                due = q[0][0]
        if self.dirmap or self.where or self.pending or self.parked:
            # the sweep of expired directory / cache / confirm / parked entries
            if due is None or self._next_sweep < due:
                due = self._next_sweep
        if due is None:
            return
        if self._armed is None or due < self._armed:
            host = self.host
            if self._armed_entry is not None:
                host.cancel_timer(self._armed_entry)     # one probe timer at a time
            self._armed = due
            self._armed_entry = host.add_timer(due, TimerKind.PROBE, None)

    def on_timer(self):
        self._armed = None
        self._armed_entry = None
        now = self.host.now
        self._g = None
        dl = self.delayed
        while dl and dl[0][0] <= now:
            _, dest, req = dl.popleft()
            lst = self.outbox.setdefault(dest, [])
            lst.append(req)
        for q, first in ((self.delay_q, True), (self.again_q, False)):
            while q and q[0][0] <= now:
                _, tid, ep = q.popleft()
                rec = self.waits.get(tid)
                if rec is None or rec.ep != ep:
                    continue                       # a newer wait of tid has its own timers
                if not self._valid(tid, rec):
                    self._forget(tid, rec)
                    continue
                if self.distributed:
                    # (re-)register: a lost REG must not hide this wait for good, and the
                    # directory forgets entries not refreshed within DIR_TTL intervals
                    rec.registered = True
                    self.send(directory(tid, self.n), [wire.PROBE_REG, 0, tid, self.me, ep, self._out_edges(tid)])
                    self._initiate(tid, rec)
                    self.again_q.append((now + self.interval, tid, ep))
                elif first:
                    self.again_q.append((now + self.interval, tid, ep))
        if now >= self._next_sweep and (self.dirmap or self.where or self.pending or self.parked):
            self._next_sweep = now + self.interval
            old = now - DIR_TTL * self.interval
            for tid, d in list(self.dirmap.items()):
                # each waiting shard refreshes its own entry: one lost UNREG must not keep a
                # shard's old entry (and its edges) alive beside another shard's live wait
                for s in [s for s, v in d.items() if v[1] < old]:
                    del d[s]
                if not d:
                    del self.dirmap[tid]
            old = now - self.interval
            for tid in [t for t, v in self.where.items() if v[1] < old]:
                del self.where[tid]
            for tid, lst in list(self.parked.items()):
                keep = [e for e in lst if e[0] > now]
                if len(keep) != len(lst):
                    self.c["probes_dropped_stale"] += len(lst) - len(keep)
                    if keep:
                        self.parked[tid] = keep
                    else:
                        del self.parked[tid]
            self._purge_pending(now)
        self._arm()
        if self.inbox:
            self.turn()

    def _out_edges(self, tid):
        """tid's wait-for edges here, for its registration: [[target, target's wait epoch
        here or 0], ...], or None if there are more than MAX_REG_EDGES."""
        out = self._graph().get(tid, ())
        if len(out) > MAX_REG_EDGES:
            self.c["probe_regs_without_edges"] += 1
            return None
        return [[x, self._local_ep(x)] for x in out]

    def _forget(self, tid, rec):
        del self.waits[tid]
        self.multi.pop(tid, None)
        if rec.registered and self.distributed:
            self.send(directory(tid, self.n), [wire.PROBE_UNREG, 0, tid, self.me])

    # ----------------------------------------------------------- shard hooks

    def on_wait(self, t, w):
        if not self.enabled:
            return
        tid = t.id
        old = self.waits.get(tid)
        now = self.host.now
        ep = next(self._ep)
        self.waits[tid] = _WaitRec(w, ep, now, self.host.wall(), old is not None and old.registered)
        self.delay_q.append((now + self.delay, tid, ep))
        if self._armed is None or now + self.delay < self._armed:
            self._arm()

    def on_wait_end(self, tid):
        """A wait of ``tid`` here ended (granted, timed out, aborted): unregister it now, so
        that its directory stops extending probes along its old edges."""
        rec = self.waits.get(tid)
        if rec is None:
            return
        self._forget(tid, rec)
        q = self.delay_q
        if q and q[0][1] == tid and self._armed_entry is not None and self._armed == q[0][0]:
            # the timer armed for this wait's probe_delay would fire for nothing: re-arm
            self.host.cancel_timer(self._armed_entry)
            self._armed = self._armed_entry = None
            self._arm()

    def hold_timeout(self, w):
        """True if ``w``'s timeout is deferred (its txn is on a cycle being confirmed)."""
        if not self.holds:
            return False
        tid = w.txn.id
        d = self.holds.get(tid)
        if d is None:
            return False
        now = self.host.now
        for k in [k for k, v in d.items() if v <= now]:
            del d[k]
        if not d:
            del self.holds[tid]
            return False
        until = max(d.values())
        w.timer = self.host.add_timer(until, TimerKind.WAIT, w)
        self.c["timeouts_deferred"] += 1
        return True

    def _hold(self, tid, pid, deadline):
        d = self.holds.get(tid)
        if d is None:
            d = self.holds[tid] = {}
        d[pid] = max(d.get(pid, 0.0), deadline)

    def _release_holds(self, tids, pid):
        """End the holds that the confirm ``pid`` placed (other confirms' holds stay)."""
        host = self.host
        for tid in tids:
            d = self.holds.get(tid)
            if d is None or d.pop(pid, None) is None:
                continue
            if d:
                continue                    # still held by another confirm: its timer re-checks
            del self.holds[tid]
            t = host.txn(tid)
            w = t.wait if t is not None else None
            if w is not None and w.timer is not None and w.deadline is not None and w.deadline <= host.now:
                host.cancel_timer(w.timer)
                w.timer = host.add_timer(host.now, TimerKind.WAIT, w)

    def on_local_victim(self, cycle, victim, closer=None):
        """Record a report for a cycle found by the local search (when ``closer``
        started to wait); abort the victim elsewhere."""
        rows = []
        k = len(cycle)
        v = cycle.index(victim)                        # the victim is a member (the youngest)
        cycle = list(cycle[v:]) + list(cycle[:v])      # the report's cycle starts at the victim
        for i, tid in enumerate(cycle):
            row = self._row(tid, cycle[(i + 1) % k])
            if tid == closer and row["wait_started"] is None:
                # the wait that closed the cycle began just now (it is not registered yet)
                row["wait_started"], row["waited_ms"] = self.host.wall(), 0.0
            rows.append(row)
        self._remember_victim(victim, self._report(victim, rows, "local"))
        if self.distributed:
            for s in range(self.n):
                if s != self.me:
                    self.send(s, [wire.PROBE_VICTIM, 0, victim, list(cycle), self.me, None])
        self.c["deadlocks_local"] += 1

    # ----------------------------------------------------------------- probes

    def _graph(self):
        g = self._g
        if g is None:
            g = self._g = self.host.table.wait_for_graph()
        return g

    def _valid(self, tid, rec):
        t = self.host.txn(tid)
        return t is not None and t.wait is rec.w and rec.w is not None

    def _local_ep(self, tid):
        rec = self.waits.get(tid)
        if rec is not None and self._valid(tid, rec):
            return rec.ep
        return 0

    def _initiate(self, tid, rec):
        rec.round += 1
        pid = (tid, self.me, rec.ep, rec.round)
        self.c["probes_sent"] += 1
        self._visit(pid, tid, [])

    def _seen(self, pid):
        s = self.seen.get(pid)
        if s is None:
            s = self.seen[pid] = set()
            now = self.host.now
            so = self.seen_order
            so.append((now, pid))
            while so and (so[0][0] < now - SEEN_TTL or len(so) > MAX_SEEN):
                self.seen.pop(so.popleft()[1], None)
        return s

    def _visit(self, pid, v, path):
        """The probe ``pid`` arrived at ``v``, which should wait on this shard."""
        rec = self.waits.get(v)
        if rec is None or not self._valid(v, rec):
            self.c["probes_dropped_stale"] += 1
            return
        seen = self._seen(pid)
        if v in seen:
            self.c["probes_dropped_dup"] += 1
            return
        seen.add(v)
        g = self._graph()
        init = pid[0]
        me = self.me
        n = self.n
        where = self.where
        fresh = self.host.now - self.interval
        stack = [(v, path)]
        while stack:
            u, p = stack.pop()
            urec = self.waits.get(u)
            uep = urec.ep if urec is not None and self._valid(u, urec) else 0
            if not uep:
                continue
            others = self.multi.get(u)
            if others and u != init and len(p) < MAX_PATH:
                for s in others:
                    self.send(s, [wire.PROBE, 0, list(pid), u, p, 0])
                    self.c["probes_forwarded"] += 1
            for x in g.get(u, ()):
                e = [u, me, uep, x, self._local_ep(x)]
                if x == init:
                    self._found(pid, p + [e])
                    return
                if x < init and p:
                    # the oldest member's probe closes every cycle (all other members are
                    # younger than it): beyond its first edge (which closes a 2-cycle at
                    # once from either end) a probe never follows an edge to an older one
                    self.c["probes_pruned"] += 1
                    continue
                if x in seen:
                    continue
                seen.add(x)
                if x in g:
                    stack.append((x, p + [e]))
                elif len(p) + 1 < MAX_PATH:
                    loc = where.get(x)
                    if loc is not None and loc[0] != me and loc[1] > fresh:
                        # cached: straight to the shard where x waits (a miss there goes on
                        # to the directory, so a stale entry only costs a hop)
                        self.send(loc[0], [wire.PROBE, 0, list(pid), x, p + [e], 2])
                        self.c["probes_direct"] += 1
                    else:
                        self.send(directory(x, n), [wire.PROBE, 0, list(pid), x, p + [e], 1])
                    self.c["probes_forwarded"] += 1
                else:
                    self.c["probes_dropped_long"] += 1

    def _learn(self, pid, path):
        """Note where the transactions on a probe's path wait (routing hints only)."""
        where = self.where
        now = self.host.now
        me = self.me
        if len(where) > 100_000:
            where.clear()
        if pid[1] != me:
            where[pid[0]] = (pid[1], now)
        for e in path:
            s = e[1]
            if s != me:
                where[e[0]] = (s, now)
                if e[4]:
                    where[e[3]] = (s, now)

    def _m_probe(self, args):
        pid, x, path, via_dir = args
        pid = tuple(pid)
        self._learn(pid, path)
        if via_dir == 2:                   # sent on a cached location: on a miss ask the directory
            rec = self.waits.get(x)
            if rec is None or not self._valid(x, rec):
                self.c["probes_cache_miss"] += 1
                self.c["probes_forwarded"] += 1
                self.send(directory(x, self.n), [wire.PROBE, 0, list(pid), x, path, 1])
                return
            via_dir = 0
        if via_dir:
            d = self.dirmap.get(x)
            if not d:
                # x waits nowhere registered: it runs (no edge out of it), or its wait is still
                # younger than probe_delay. Keep the probe until x registers (then it goes on at
                # once) or for two probe intervals (then it is dropped as stale).
                self._park(x, pid, path)
                return
            self._extend(pid, x, path, d)
            return
        self._visit(pid, x, path)

    def _extend(self, pid, x, path, d):
        """At x's directory: follow x's out-edges as its registrations reported them, each
        to the next transaction's directory (one message per edge, no visit to x's shard).
        A registration without its edges (too many) sends the probe to that shard instead."""
        seen = self._seen(pid)
        key = -1 - x            # (this shard's visits of x use the key x: a separate mark)
        if key in seen:
            self.c["probes_dropped_dup"] += 1
            return
        seen.add(key)
        if len(path) + 1 >= MAX_PATH:
            self.c["probes_dropped_long"] += 1
            return
        init = pid[0]
        n = self.n
        pidl = list(pid)
        for s, (ep, _, edges) in d.items():
            if edges is None:
                self.send(s, [wire.PROBE, 0, pidl, x, path, 0])
                self.c["probes_forwarded"] += 1
                continue
            for y, yep in edges:
                e = [x, s, ep, y, yep]
                if y == init:
                    self._found(pid, path + [e])
                    return
                if y < init:
                    self.c["probes_pruned"] += 1     # (never the initiator's first edge here)
                    continue
                self.send(directory(y, n), [wire.PROBE, 0, pidl, y, path + [e], 1])
                self.c["probes_forwarded"] += 1

    # -------------------------------------------------------------- directory

    def _park(self, x, pid, path):
        lst = self.parked.get(x)
        if lst is None:
            if len(self.parked) >= MAX_PARKED:
                self.c["probes_dropped_stale"] += 1
                return
            lst = self.parked[x] = []
        else:
            # one parked probe per initiator's wait: a later round replaces an earlier one
            lst[:] = [e for e in lst if e[1][:3] != pid[:3]]
            if len(lst) >= PARK_PER_TXN:
                lst.pop(0)
                self.c["probes_dropped_stale"] += 1
        # kept for two intervals: the initiator's next round (one interval later) replaces it,
        # so while the initiator waits one of its probes is always parked here
        lst.append((self.host.now + 2 * self.interval, pid, path))
        self.c["probes_parked"] += 1
        self._arm()                         # (the sweep drops it when it expires)

    def _m_reg(self, args):
        tid, s, ep, edges = args
        if edges is not None:
            edges = [(int(y), int(yep)) for y, yep in edges]     # (malformed: counted by turn())
        d = self.dirmap.setdefault(tid, {})
        d[s] = (ep, self.host.now, edges)
        if len(d) >= 2:
            self._tell_multi(tid, d)
        lst = self.parked.pop(tid, None)
        if lst:
            now = self.host.now
            for exp, pid, path in lst:
                if exp > now:
                    self.c["probes_unparked"] += 1
                    self._extend(pid, tid, path, d)
                else:
                    self.c["probes_dropped_stale"] += 1

    def _m_unreg(self, args):
        tid, s = args
        d = self.dirmap.get(tid)
        if d is None or s not in d:
            return
        del d[s]
        if not d:
            del self.dirmap[tid]
        else:
            self._tell_multi(tid, d)

    def _tell_multi(self, tid, d):
        for s in d:
            self.send(s, [wire.PROBE_MULTI, 0, tid, [o for o in d if o != s]])

    def _m_multi(self, args):
        tid, others = args
        if others and tid in self.waits:
            self.multi[tid] = set(others)
        else:
            self.multi.pop(tid, None)

    # ------------------------------------------------------- confirm & abort

    def _found(self, pid, cycle):
        """A probe came back to its initiator: confirm the cycle on all its shards at once,
        collect the answers at the victim's shard, which aborts the victim."""
        self.c["cycles_found"] += 1
        tids = [e[0] for e in cycle]
        # One probe round can close several different cycles (its branches run on), so the
        # confirm is keyed by the round *and* the cycle: collections and holds of two
        # cycles never mix (mixed rows would "confirm" a cycle that does not exist).
        pid = tuple(pid[:4]) + (_cycle_key(tids),)
        victim = choose_victim(tids)
        vidx = tids.index(victim)
        vshard = cycle[vidx][1]
        me = self.me
        # a cycle still there at a later round may have failed to confirm in time (an
        # overloaded machine): each round allows twice as long, so a confirm always fits
        deadline = self.host.now + min(HOLD * (1 << min(pid[3] - 1, 8)), HOLD_MAX)
        rows = self._check(pid, cycle, deadline)     # this shard's entries (none at a directory off the cycle)
        if rows is None:
            self.c["confirms_failed"] += 1
            return
        pidl = list(pid)
        now = self.host.now
        t_found = now                   # (this host's monotonic clock: it never leaves the host)
        for s in sorted({e[1] for e in cycle}):
            if s != me:
                # our own rows travel with the CONFIRM to the victim's shard (no extra message).
                # Times cross hosts only as durations (seconds of hold left, seconds since the
                # cycle was found): each host reads them against its own monotonic clock, so
                # detection never compares two hosts' clocks (docs/probes.md, "Clocks")
                self.send(s, [wire.PROBE_CONFIRM, 0, pidl, cycle, vidx, deadline - now, 0.0,
                              rows if s == vshard else []])
        if vshard == me:
            self._collect(pid, rows, cycle, vidx, deadline, t_found)

    def _m_confirm(self, args):
        pid, cycle, vidx, hold_left, found_ago, pre = args
        pid = tuple(pid)
        now = self.host.now
        deadline = now + _duration(hold_left)
        vshard = cycle[vidx][1]
        rows = self._check(pid, cycle, deadline)
        if rows is None:
            self.c["confirms_failed"] += 1
            if vshard == self.me:
                self._fail_pending(pid, deadline)
            else:
                self.send(vshard, [wire.PROBE_CONFIRMED, 0, list(pid), self.me, 0, [], deadline - now])
            return
        if vshard == self.me:
            self._collect(pid, pre + rows, cycle, vidx, deadline, now - _duration(found_ago))
        else:
            self.send(vshard, [wire.PROBE_CONFIRMED, 0, list(pid), self.me, 1, rows, deadline - now])

    def _m_confirmed(self, args):
        pid, _shard, ok, rows, hold_left = args
        pid = tuple(pid)
        deadline = self.host.now + _duration(hold_left)
        if not ok:
            self._fail_pending(pid, deadline)
            return
        self._collect(pid, rows, None, None, deadline, None)

    def _check(self, pid, cycle, deadline):
        """Re-check now every entry of ``cycle`` seen on this shard and hold those members'
        lock-wait timeouts until ``deadline``; -> [[index, report row], ...] or None."""
        me = self.me
        if self.host.now >= deadline:
            self.c["confirms_late"] += 1
            return None
        self._g = None
        out = []
        for i, e in enumerate(cycle):
            if e[1] != me:
                continue
            row = self._verify(e)
            if row is None:
                self._release_holds([cycle[j][0] for j, _ in out], pid)
                return None
            self._hold(e[0], pid, deadline)
            out.append([i, row])
        return out

    def _verify(self, e):
        """Entry ``e`` still holds here: its report row, else None."""
        return self._row(e[0], e[3]) if self._holds(e) else None

    def _holds(self, e):
        """The waiter is in the same wait (epoch) and the edge is in the table (for a soft
        edge, its target still in the same queued wait)."""
        tid, shard, ep, target, tgt_ep = e
        rec = self.waits.get(tid)
        if rec is None or rec.ep != ep or not self._valid(tid, rec):
            return False
        if target not in self._graph().get(tid, ()):
            return False
        return not tgt_ep or self._local_ep(target) == tgt_ep

    def _purge_pending(self, now):
        for k in [k for k, p in self.pending.items() if p.deadline <= now]:
            del self.pending[k]

    def _fail_pending(self, pid, deadline):
        p = self.pending.get(pid)
        if p is None:
            if len(self.pending) > 1000:
                self._purge_pending(self.host.now)
            p = self.pending[pid] = _Pending(deadline)
        p.rows = None                       # failed: later answers for it are ignored

    def _collect(self, pid, rows, cycle, vidx, deadline, t_found):
        """At the victim's shard: gather re-checked entries; all k in -> abort the victim."""
        p = self.pending.get(pid)
        if p is None:
            if len(self.pending) > 1000:
                self._purge_pending(self.host.now)
            p = self.pending[pid] = _Pending(deadline)
        got = p.rows
        if got is None:
            return                          # a shard's check failed
        if deadline < p.deadline:
            p.deadline = deadline           # the earliest hold to lapse decides
        if cycle is not None:
            p.cycle, p.vidx, p.t_found = cycle, vidx, t_found
        for i, row in rows:
            got[i] = row
        if p.cycle is None or len(got) < len(p.cycle):
            return
        del self.pending[pid]
        self._abort_victim(pid, p.cycle, p.vidx, p.deadline, p.t_found, got)

    def _row(self, tid, target):
        host = self.host
        table = host.table
        t = host.txn(tid)
        wo = table.waiting_on(tid)
        path, mode = wo if wo else (None, 0)
        held = table.mode_held(target, path) if path is not None else 0
        twait = table.waiting_on(target)
        queued = twait is not None and path is not None and tuple(twait[0]) == tuple(path)
        rec = self.waits.get(tid)
        return {
            "txn": tid, "shard": self.me,
            "session": t.session.name if t is not None else None,
            "waits_for": [list(path) if path is not None else None, _mode_name(mode)],
            "blocker": target, "blocker_holds": _mode_name(held),
            "blocker_queued": _mode_name(twait[1]) if queued else None,
            "holds": [[list(p), _mode_name(m)] for p, m in table.held(tid)[:16]],
            "wait_started": rec.wall if rec is not None else None,
            "waited_ms": round((host.now - rec.start) * 1000, 3) if rec is not None else None,
        }

    def _report(self, victim, rows, kind, t_found=None):
        now = self.host.wall()
        # what each member holds that blocks the cycle: its row's "holds" lists
        # only the shard where it waits, and in a cross-shard cycle the lock it
        # blocks with lives on another shard -- in the row of the member it blocks
        for r in rows:
            r["blocking"] = [[b["shard"], b["waits_for"][0], b["blocker_holds"]]
                             for b in rows if b["blocker"] == r["txn"] and b.get("blocker_holds")]
        # how long the cycle had existed: the shortest of its members' waits, each measured
        # on its own shard's monotonic clock (never a difference of two hosts' clocks)
        waited = [r["waited_ms"] for r in rows if r.get("waited_ms") is not None]
        rep = {
            "id": f"{self.me}:{self.host.epoch}:{self.c['deadlock_reports'] + 1}",
            "kind": kind, "detected_at": now, "detected_by": self.me,
            "cycle": [r["txn"] for r in rows], "victim": victim,
            "detection_ms": round(min(waited), 3) if waited else None,
            "members": rows,
        }
        if t_found is not None:        # a distributed cycle: found at t_found (this host's monotonic clock)
            rep["confirm_ms"] = round((self.host.now - t_found) * 1000, 3)
        self.c["deadlock_reports"] += 1
        self.reports.append(rep)
        return rep

    def _remember_victim(self, victim, rep):
        v = self.victims
        v[victim] = rep
        while len(v) > 256:
            v.popitem(last=False)

    def _abort_victim(self, pid, cycle, vidx, deadline, t_found, got):
        from .wire import E_DEADLOCK
        host = self.host
        me = self.me
        victim = cycle[vidx][0]
        t = host.txn(victim)
        # every member was re-checked (after the probe) and is held until ``deadline``; the
        # abort must come before any hold can lapse, and this shard's entries (the victim's
        # among them) are checked once more now, in the turn that aborts
        ok = t is not None and t.wait is not None
        if ok and host.now >= deadline - HOLD_MARGIN:
            self.c["confirms_late"] += 1
            ok = False
        if ok:
            self._g = None
            ok = all(self._holds(e) for e in cycle if e[1] == me)
        if not ok:
            self.c["confirms_failed"] += 1
            return
        k = len(cycle)
        rows = [got[(vidx + j) % k] for j in range(k)]    # starting at the victim, edge order
        rep = self._report(victim, rows, "distributed", t_found)
        self._remember_victim(victim, rep)
        self.c["deadlocks_found"] += 1
        cyc = rep["cycle"]
        host.end_wait(t.wait, E_DEADLOCK,
                     f"transaction {victim} was chosen as deadlock victim (youngest in the wait-for cycle "
                     f"{cyc} spanning shards {sorted({e[1] for e in cycle})}, found by a probe from "
                     f"transaction {pid[0]}); it has been aborted on every shard")
        host.drop_txn(t)
        self._g = None
        members = sorted(set(cyc))
        self._release_holds(members, pid)
        pidl = list(pid)
        for s in range(self.n):
            if s != me:
                self.send(s, [wire.PROBE_VICTIM, 0, victim, members, me, pidl])

    def _m_victim(self, args):
        from .wire import E_DEADLOCK
        victim, members, src, pid = args
        host = self.host
        t = host.txn(victim)
        if t is not None and t.state == ACTIVE:    # never a prepared (or preparing) 2PC txn
            msg = (f"transaction {victim} was chosen as deadlock victim (wait-for cycle {members}); "
                   f"it has been aborted on every shard")
            if t.wait is not None:
                host.end_wait(t.wait, E_DEADLOCK, msg)
            else:      # it waits elsewhere: tell its client now (a lock-lost notice), not at its next call
                host.push(t.session, [wire.N_TXN_LOST, victim, E_DEADLOCK, msg])
            host.drop_txn(t)
            self._g = None
            self.c["victims_aborted_remote"] += 1
        mine = self.victims.get(victim)
        if mine is not None and type(src) is int and src < self.me:
            # the same victim was also chosen here (it waited on both shards, each confirmed a
            # cycle through it) before the other's VICTIM arrived: one report per victim -- the
            # lower shard's stays, this one is withdrawn
            del self.victims[victim]
            try:
                self.reports.remove(mine)
            except ValueError:
                pass
            if mine["kind"] == "distributed":
                self.c["deadlocks_found"] -= 1
            else:
                self.c["deadlocks_local"] -= 1
            self.c["deadlock_reports_merged"] += 1
        if pid is not None:
            self._release_holds(members, tuple(pid))

    # ------------------------------------------------------------------ loop

    _ARITY = {wire.PROBE: 4, wire.PROBE_REG: 4, wire.PROBE_UNREG: 2, wire.PROBE_MULTI: 2,
              wire.PROBE_CONFIRM: 6, wire.PROBE_VICTIM: 4, wire.PROBE_CONFIRMED: 5}

    def accept(self, req):
        """Queue a peer message; for a malformed one return the error (an E_PROTOCOL reply)."""
        n = self._ARITY[req[0]]
        if len(req) != n + 2:
            return (f"{wire.TYPE_NAMES[req[0]]} takes {n} arguments (a shard-to-shard message, "
                    f"docs/protocol.md); got {len(req) - 2}")
        self.inbox.append(req)
        return None

    def turn(self):
        """Handle the queued peer messages (and what they cause)."""
        host = self.host
        self._g = None
        inbox = self.inbox
        types = self.peer_types
        while inbox:
            req = inbox.popleft()
            h = types.get(req[0])
            try:
                h(req[2:])
            except Exception:  # a malformed peer message must not stop the shard
                self.c["probe_msgs_malformed"] += 1
            host.process_woken()
            self._g = None
        self._g = None

    def gauges(self):
        """Every counter (0 if it never moved) and the current sizes, for STATS."""
        out = {k: self.c.get(k, 0) for k in COUNTERS}
        out.update(probe_waits_now=len(self.waits), probe_directory_now=len(self.dirmap),
                   probes_parked_now=sum(len(v) for v in self.parked.values()))
        return out

    # ------------------------------------------------------------------ admin

    # (an admin handler raises ValueError for bad arguments: the shard answers E_INVALID)

    def _a_deadlocks(self, args):
        if not args:
            return list(self.reports)
        limit = args[0]
        if len(args) != 1 or type(limit) is not int or limit < 1:
            raise ValueError(f"DEADLOCKS takes [] or [limit] with an int limit >= 1; got {args!r}")
        return list(self.reports)[-limit:]

    def _a_peers(self, args):
        if len(args) != 1 or type(args[0]) is not list:
            raise ValueError("PEERS takes [[endpoint, ...]]")
        self.set_peers(args[0])          # ValueError: nothing changed
        return {"peers": self.peers, "probe_delay_ms": self.delay * 1000 if self.enabled else None,
                "probe_interval_ms": self.interval * 1000}

    def _a_faults(self, args):
        """Test hook: {"drop_next": n, "drop_prob": p, "delay_ms": d, "types": [..], "seed": s}; {} clears.
        A bad plan is refused (ValueError: E_INVALID) and the current one kept."""
        if len(args) > 1 or (args and type(args[0]) is not dict):
            raise ValueError("FAULTS takes [] or [{drop_next, drop_prob, delay_ms, types, seed}]")
        f = dict(args[0]) if args else {}
        unknown = sorted(str(k) for k in f if k not in _FAULT_KEYS)
        if unknown:
            raise ValueError(f"FAULTS: unknown key(s) {brief(unknown)}; expected {sorted(_FAULT_KEYS)}")
        for k, v in f.items():
            ok = _FAULT_KEYS[k](v)
            if not ok:
                raise ValueError(f"FAULTS: {k} must be {_FAULT_HELP[k]}; got {brief(v)}")
        if f.get("types") is not None:
            f["types"] = set(f["types"])
        if "seed" in f:
            self._rng = random.Random(f.pop("seed"))
        self.fault = f
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in f.items()}


def _num(v):
    return type(v) in (int, float) and v == v


_FAULT_KEYS = {
    "drop_next": lambda v: type(v) is int and 0 <= v <= 1 << 32,
    "drop_prob": lambda v: _num(v) and 0 <= v <= 1,
    "delay_ms": lambda v: _num(v) and 0 <= v <= 60_000,
    "types": lambda v: v is None or (type(v) is list and len(v) <= 64
                                      and all(type(t) is int and t in wire.TYPE_NAMES for t in v)),
    "seed": lambda v: type(v) is int,
}
_FAULT_HELP = {"drop_next": "an int in 0..2**32", "drop_prob": "a number in 0..1",
               "delay_ms": "a number of ms in 0..60000", "types": "nil or a list of message type codes",
               "seed": "an int"}
