"""Two-phase commit in a shard: PREPARE, DECIDE, INDOUBT, and the restore of
prepared transactions from the prepare log (docs/2pc.md).

Interface:
    TwoPhase(host, log)      restores ``log``'s prepared transactions into the
                             host's table (CorruptLog if they conflict)
        .handlers            {PREPARE, DECIDE: handler(sess, seq, args)}
        .admin               {INDOUBT, WAKE: handler(args)}
        .decide(t, commit, sess, seq)   RELEASE of a prepared transaction
        .durable_batches     a deque the log's thread appends durable tickets to
        .stats(), .restored

PREPARE appends the transaction's locks and tokens to the log and parks the
request; the log's thread fsyncs (group commit), appends the ticket batch to
``durable_batches`` and has the driver deliver an internal WAKE, which runs
the callbacks here: the shard's loop never waits for the disk. DECIDE (and
RELEASE of a prepared transaction) logs the decision durably *before* the
locks are released. Restored prepared transactions have no session.

It uses only the ShardHost methods of lockmgr/service/shard/core.py, the
transactions' 2PC fields (state, gtrid, participants, prepared_at, outcome,
nlocks, waiters) and the sessions' ``inflight`` table of parked requests.
"""

import collections

from ...rules import (ABORTED, ACTIVE, COMMITTED, DECIDING, PREPARED, PREPARING, RESOLVED_MEMORY, check_gtrid,
                      check_txn_id)
from ...wal import CorruptLog, prepared_records, relock
from ..wire import E_ABORTED, E_INTERNAL, E_INVALID, E_PROTOCOL, OK
from .. import wire

__all__ = ["TwoPhase"]


class TwoPhase:
    def __init__(self, host, log):
        self.host = host
        self.log = log
        self.durable_batches = collections.deque()   # from the log's thread
        self._log_cb = {}                       # Ticket -> (callback, txn)
        self._gtrids = {}                       # gtrid -> _Txn (preparing, prepared, deciding)
        # gtrid -> the CURVE key (z85; "" without CURVE) of the session that prepared it: with
        # CURVE only that key, or an admin key, may decide it (in the log: "owner")
        self._owners = {}
        self._resolved = collections.OrderedDict()  # gtrid -> commit, the most recent RESOLVED_MEMORY
        self.handlers = {wire.PREPARE: self._h_prepare, wire.DECIDE: self._h_decide}
        self.admin = {wire.INDOUBT: self._h_indoubt, wire.WAKE: self._h_wake}
        self.restored = (0, 0)
        if log is not None:
            for g, c in log.resolved.items():
                self._resolved[g] = c
            self._restore()

    def _restore(self):
        host = self.host
        gtrids = self._gtrids
        nlocks = 0
        for rec in prepared_records(self.log.live_records()):
            tid = rec["txn"]
            if host.txn(tid) is not None:
                raise CorruptLog(f"transaction id {tid} appears twice among the prepared transactions of the log")
            t = host.new_txn(tid, None)
            t.state = PREPARED
            t.outcome = None
            t.waiters = None
            t.gtrid = rec["gtrid"]
            t.participants = rec.get("parts") or [host.index]
            t.prepared_at = rec.get("at") or host.wall()
            t.nlocks = relock(host.table, rec)
            self._owners[t.gtrid] = rec.get("owner", "")
            nlocks += t.nlocks
            gtrids[t.gtrid] = t
        self.restored = (len(gtrids), nlocks)

    def _h_wake(self, args):
        durable = self.durable_batches
        cbs = self._log_cb
        while durable:
            for tk in durable.popleft():
                cb = cbs.pop(tk, None)
                if cb is not None:
                    cb[0](cb[1], tk)
        return []

    def stats(self):
        log = self.log
        return {"indoubt": sum(1 for t in self._gtrids.values() if t.state == PREPARED),
                "log_fsyncs": log.fsyncs if log else 0, "log_compactions": log.compactions if log else 0}

    def _h_prepare(self, sess, seq, args):
        host = self.host
        if len(args) != 4:
            raise host.Reply(E_PROTOCOL, "PREPARE takes [txn, gtrid, epoch, [participant shard, ...]]")
        tid, gtrid, ep, parts = args
        check_txn_id(tid)
        gtrid = check_gtrid(gtrid)
        if type(parts) is not list or not all(type(p) is int and 0 <= p < host.nshards for p in parts) \
                or len(parts) > host.nshards:
            raise host.Reply(E_PROTOCOL, f"PREPARE participants must be a list of shard indexes in "
                                         f"0..{host.nshards - 1}")
        host.check_epoch(tid, ep)
        if self.log is None:
            raise host.Reply(E_INVALID, f"shard {host.index} has no prepare log: it cannot prepare")
        t = host.session_txn(sess, tid)
        if t.state != ACTIVE:
            if t.gtrid != gtrid:
                raise host.Reply(E_INVALID, f"transaction {tid} is {t.state} as gtrid {t.gtrid!r}")
            if t.state == PREPARED:
                return [t.nlocks, host.epoch]          # prepared already: idempotent
            if t.state == PREPARING:
                t.waiters.append((sess, seq, "prepare"))
                sess.inflight[seq] = t
                return host.PARKED
            raise host.Reply(E_INVALID, f"transaction {tid} is being {'committed' if t.outcome else 'aborted'}")
        if t.wait is not None:
            raise host.Reply(E_INVALID, f"transaction {tid} is waiting for a lock; it cannot prepare meanwhile")
        other = self._gtrids.get(gtrid)
        if other is not None or gtrid in self._resolved:
            raise host.Reply(E_INVALID, f"gtrid {gtrid!r} is already used by "
                                        f"{'transaction %d' % other.id if other else 'a resolved transaction'}")
        table = host.table
        lock = table.lock
        # re-locking a held mode changes nothing and returns its current token.
        # The shard logs paths (msgpack arrays: replay needs no decode) with
        # "fmt": "path"; records with key bytes (PrepareLog's default) replay too.
        locks = [[list(p), m, lock(tid, p, m)] for p, m in table.held(tid)]
        t.state = PREPARING
        t.outcome = None
        t.gtrid = gtrid
        t.participants = sorted(set(parts) | {host.index})
        t.prepared_at = host.wall()
        t.nlocks = len(locks)
        t.waiters = [(sess, seq, "prepare")]
        self._gtrids[gtrid] = t
        self._owners[gtrid] = sess.user
        rec = {"t": "prepare", "gtrid": gtrid, "txn": tid, "name": sess.name,
               "at": t.prepared_at, "parts": t.participants, "fmt": "path", "locks": locks}
        if sess.user:
            rec["owner"] = sess.user
        tk = self.log.submit(rec)
        self._log_cb[tk] = (self._prepare_durable, t)
        sess.inflight[seq] = t
        host.counters["prepares"] += 1
        return host.PARKED

    def _answer_waiters(self, t, kind, status, payload):
        """Answer the parked requests of ``kind`` on ``t``: 'prepare', 'decide', or
        'conflict' (a DECIDE the other way than the one being logged)."""
        keep = []
        for w in t.waiters or ():
            if w[2] != kind:
                keep.append(w)
                continue
            w[0].inflight.pop(w[1], None)
            self.host.answer(w[0], w[1], status, payload)
        t.waiters = keep

    def _prepare_durable(self, t, tk):
        host = self.host
        if tk.error is not None:
            if t.state == PREPARING:       # not durable: not prepared
                t.state = ACTIVE
                if self.log.replicator is not None:
                    # on our disk but not on the standbys required (docs/replication.md): log
                    # it undone, so that no replay or standby keeps it in doubt
                    self.log.submit({"t": "resolve", "gtrid": t.gtrid, "commit": False})
                self._gtrids.pop(t.gtrid, None)
                self._owners.pop(t.gtrid, None)
                t.gtrid = None
                if t.session is not None and not host.session_alive(t.session):
                    host.drop_txn(t)          # its session ended meanwhile
            self._answer_waiters(t, "prepare", E_INTERNAL, f"prepare not durable on shard {host.index}: {tk.error}")
            return
        if t.state == PREPARING:
            t.state = PREPARED
            self._answer_waiters(t, "prepare", OK, [t.nlocks, host.epoch])
        else:                                # decided while the prepare was being written
            self._answer_waiters(t, "prepare", E_ABORTED,
                                 f"transaction {t.id} was resolved while it was being prepared")

    def decide(self, t, commit, sess, seq):
        """Log the decision for prepared ``t``; release its locks once it is durable.
        (While it is still 'preparing' the resolve record is queued behind the
        prepare record: the log keeps their order.)"""
        kind = "decide"
        if t.state == DECIDING:
            if t.outcome != commit:
                kind = "conflict"       # answered ["conflict", outcome] once the other decision is durable
        else:
            t.state = DECIDING
            t.outcome = commit
            tk = self.log.submit({"t": "resolve", "gtrid": t.gtrid, "commit": commit})
            self._log_cb[tk] = (self._decide_durable, t)
            self.host.counters["decisions"] += 1
        if t.waiters is None:
            t.waiters = []
        t.waiters.append((sess, seq, kind))
        sess.inflight[seq] = t
        return self.host.PARKED

    def _decide_durable(self, t, tk):
        host = self.host
        if tk.error is not None:
            t.state = PREPARED if self._gtrids.get(t.gtrid) is t else ACTIVE
            for kind in ("decide", "conflict"):
                self._answer_waiters(t, kind, E_INTERNAL, f"decision not durable on shard {host.index}: {tk.error}")
            return
        self._gtrids.pop(t.gtrid, None)
        self._owners.pop(t.gtrid, None)
        self._resolved[t.gtrid] = t.outcome
        if len(self._resolved) > RESOLVED_MEMORY:
            self._resolved.popitem(last=False)
        host.drop_txn(t)
        t.state = COMMITTED if t.outcome else ABORTED
        self._answer_waiters(t, "decide", OK, ["resolved"])
        self._answer_waiters(t, "conflict", OK, ["conflict", t.outcome])
        self._answer_waiters(t, "prepare", E_ABORTED, f"transaction {t.id} was resolved while it was being prepared")

    def _h_decide(self, sess, seq, args):
        host = self.host
        if len(args) != 2:
            raise host.Reply(E_PROTOCOL, "DECIDE takes [gtrid, commit]")
        gtrid = check_gtrid(args[0])
        commit = args[1]
        if type(commit) is not bool:
            raise host.Reply(E_INVALID, f"commit must be true or false; got {host.brief(commit)}")
        t = self._gtrids.get(gtrid)
        if t is not None and host.access is not None and self._owners.get(gtrid, "") != sess.user:
            host.forbidden(sess, f"DECIDE of gtrid {host.brief(gtrid)}, prepared by another key,")
        if t is None:
            done = self._resolved.get(gtrid)
            if done is None:
                return ["unknown"]
            if done != commit:
                return ["conflict", done]        # decided the other way: the caller learns which
            return ["done"]
        return self.decide(t, commit, sess, seq)

    def owner(self, t):
        """The key (z85; "" without CURVE) of the session that prepared ``t``."""
        return self._owners.get(t.gtrid, "")

    def _h_indoubt(self, args):
        host = self.host
        with_locks = bool(args[0]) if args else True
        now = host.wall()
        held = host.table.held
        out = []
        for t in sorted(self._gtrids.values(), key=lambda t: t.id):
            if t.state != PREPARED:
                continue
            s = t.session
            sid = s.id if host.session_alive(s) else 0
            locks = [[list(p), m] for p, m in held(t.id)] if with_locks else []
            out.append([t.gtrid, t.id, max(0.0, now - t.prepared_at), t.participants, sid, locks])
        return out
