"""Lock reclaim after a restart, with a grace period (docs/service.md,
"Restarts: reclaim and grace").

Interface:
    Reclaim(host, log, grace)   reads the live session records of ``log``; if some
                                session was open when the shard stopped, enters the
                                grace period (``grace`` seconds at most; None: the
                                largest TTL among those sessions, at most MAX_GRACE)
        .handlers               {RECLAIM: handler(sess, seq, args)}
        .in_grace               True while new requests wait
        .hold(sid, prefix, reqs) -> the requests to serve now (the rest wait for the
                                grace period's end, then run in arrival order)
        .secret_for(sid, args)  the logged secret of a session that comes back
        .session_started(sess), .session_ended(sess)   session records (group commit)
        .reclaimed_from(tid, ep) -> bool   ``ep`` is the epoch tid's locks came from
        .on_timer()             lease deadlines of the expected sessions, grace end
        .stats(), .notices      what the driver logs

A shard with a prepare log writes a record when a session starts and when it
ends (``lockmgr/wal.py``; submitted without waiting: they ride the next group
commit). On a restart the core restores the prepared transactions (twophase.py)
and then this module makes it wait for the sessions that were open: each one's
client re-opens its session (HELLO with the session's secret) and sends RECLAIM
with the locks its active transactions hold here, with their fencing tokens;
the table re-grants them with the same tokens (``Table.reclaim``). Meanwhile
every other request of a session (LOCK, LOCK_MANY, UNLOCK, RELEASE, ...) waits:
it is held, and handed back to the core (its backlog) when the grace period
ends -- when every expected session has reclaimed, or closed, or its lease ran
out (TTL after the restart), or after ``grace`` seconds. Later reclaims are
refused (their transactions aborted).

It uses only the ShardHost methods of lockmgr/service/shard/core.py and the
sessions' ``txns`` and ``tombs``.
"""

from ... import paths
from ...errors import InvalidRequest
from ...modes import Mode
from ...rules import ACTIVE, EPOCH_BITS, PREPARED, check_mode, check_txn_id
from ..._core import CONFLICT
from .. import wire
from ..wire import E_PROTOCOL, E_TOO_BIG
from .timers import TimerKind

__all__ = ["Reclaim", "MAX_GRACE", "MAX_RECLAIM"]

MAX_GRACE = 30.0            # seconds: the default grace period is at most this
MAX_RECLAIM = wire.MAX_BATCH   # locks in one RECLAIM request (a client sends several in one frame)
MAX_NOTICES = 64

# requests served during the grace period: opening, keeping and closing a
# session, and the reclaims themselves; every other request of a session waits
_SERVED = frozenset((wire.HELLO, wire.HEARTBEAT, wire.CLOSE, wire.RECLAIM))
# requests that wait (everything a session sends but those)
_HELD = frozenset((wire.LOCK, wire.LOCK_MANY, wire.UNLOCK, wire.RELEASE, wire.HELD, wire.DOWNGRADE,
                   wire.PREPARE, wire.DECIDE))


class Reclaim:
    def __init__(self, host, log, grace):
        if grace is not None and (type(grace) not in (int, float) or not 0 <= grace <= 3600):
            raise InvalidRequest(f"grace must be None or seconds in 0..3600; got {grace!r}")
        self.host = host
        self.log = log
        # session records: only with a log, and not with grace 0 (nothing would use them)
        self.records = log is not None and grace != 0
        self.handlers = {wire.RECLAIM: self._h_reclaim}
        self.notices = []                   # lines for the driver's log
        self.in_grace = False
        self.grace = 0.0                    # this start's grace period (seconds)
        self.grace_end = None
        self.started = host.now
        self.ended_at = None
        self.first_reclaim_at = None        # when the first RECLAIM came
        self._expected = {}                 # sid -> lease deadline (host.now units): not back yet
        self._names = {}                    # sid -> the session's name (status, notices)
        self._secrets = {}                  # sid -> secret, for every live session record
        self._held = []                     # (sid, prefix, requests) in arrival order
        self._reclaimed = {}                # txn id -> the epoch its locks came from
        self._timer = None
        self.counts = {"reclaimed_sessions": 0, "reclaimed_txns": 0, "reclaimed_locks": 0, "reclaims_refused": 0,
                       "grace_held": 0, "grace_released_sessions": 0}
        if log is None:
            return
        live = log.live_sessions()
        for sid in log.ended:
            host.mark_expired(sid, "ended before the shard restarted")
        for sid, rec in live.items():
            self._secrets[sid] = rec.get("secret")
            self._names[sid] = str(rec.get("name", ""))
        ttls = [float(rec.get("ttl") or 0) for rec in live.values()]
        if grace is None:
            grace = min(MAX_GRACE, max(ttls, default=0.0))
        self.grace = float(grace)
        if live and self.grace > 0:
            now = host.now
            self.in_grace = True
            self.grace_end = now + self.grace
            for sid, rec in live.items():
                self._expected[sid] = now + min(float(rec.get("ttl") or 0), self.grace)
            self._arm()
            self._notice(f"grace period of {self.grace:g}s: waiting for {len(live)} session(s) to reclaim "
                         f"their locks; new requests wait")
        else:
            for sid in live:                # nothing will reclaim: they are over
                self._log_end(sid)
            self._secrets.clear()

    # ------------------------------------------------------------ sessions

    def grace_left_ms(self):
        """The most the grace period may still last, in whole ms (0: not in one)."""
        if not self.in_grace or self.grace_end is None:
            return 0
        return max(0, int((self.grace_end - self.host.now) * 1000) + 1)

    def _notice(self, msg):
        self.notices.append(msg)
        del self.notices[:-MAX_NOTICES]

    def _log_end(self, sid):
        if self.records:
            self.log.submit({"t": "session_end", "sid": sid})

    def secret_for(self, sid, args):
        """A HELLO opening session ``sid``: the secret it had before the restart
        (it must carry it), or None for a session this start never had."""
        secret = self._secrets.get(sid)
        if secret is None:
            return None
        if len(args) < 3 or args[2] != secret:
            raise self.host.Reply(E_PROTOCOL, f"session {sid:#x} was open before shard {self.host.index} "
                                              f"restarted; a HELLO for it must carry its secret")
        return secret

    def session_started(self, sess):
        """A session opened (or came back): its record goes to the log, batched."""
        if self.records and sess.id not in self._secrets:
            self._secrets[sess.id] = sess.secret
            self.log.submit({"t": "session", "sid": sess.id, "ttl": sess.ttl, "secret": sess.secret,
                             "name": sess.name})

    def session_ended(self, sess):
        """A session closed or expired: its end goes to the log; grace stops waiting for it."""
        if self._secrets.pop(sess.id, None) is not None:
            self._log_end(sess.id)
        if self._expected.pop(sess.id, None) is not None:
            self._maybe_end()

    def reclaimed_from(self, tid, ep):
        """True if ``tid``'s locks here were reclaimed from epoch ``ep`` (a request
        the client sent before it learnt the new epoch is then still its own)."""
        return self._reclaimed.get(tid) == ep

    # ---------------------------------------------------------- the grace period

    def hold(self, sid, prefix, reqs):
        """During the grace period: the requests of a frame to serve now; the
        others are kept, in arrival order, for the grace period's end."""
        now, later = [], []
        for req in reqs:
            if type(req) is list and len(req) >= 2 and req[0] in _HELD:
                later.append(req)
            else:
                now.append(req)
        if later:
            self._held.append((sid, prefix, later))
            self.counts["grace_held"] += len(later)
        return now

    def _arm(self):
        if self._timer is not None:
            self.host.cancel_timer(self._timer)
        when = min([self.grace_end] + list(self._expected.values()))
        self._timer = self.host.add_timer(when, TimerKind.GRACE, None)

    def on_timer(self):
        self._timer = None
        if not self.in_grace:
            return
        host = self.host
        now = host.now
        for sid, deadline in list(self._expected.items()):
            if deadline <= now and not host.session_open(sid):
                # its lease ran out with the shard down (or since): its client
                # counts the lease itself and has given its locks up
                del self._expected[sid]
                self._secrets.pop(sid, None)
                self._log_end(sid)
                host.mark_expired(sid, "expired: its lease ran out while the shard restarted")
                self.counts["grace_released_sessions"] += 1
        if now >= self.grace_end:
            self._end(f"after {self.grace:g}s")
            return
        if not self._maybe_end():
            self._arm()

    def _maybe_end(self):
        if self.in_grace and not self._expected:
            self._end("every session that held locks here has reclaimed them (or ended)")
            return True
        return False

    def _end(self, why):
        host = self.host
        self.in_grace = False
        self.ended_at = host.now
        if self._timer is not None:
            host.cancel_timer(self._timer)
            self._timer = None
        gone = list(self._expected)
        for sid in gone:        # never came back: released (a reclaim now is refused)
            if not host.session_open(sid):
                self._secrets.pop(sid, None)
                self._log_end(sid)
        self.counts["grace_released_sessions"] += len(gone)
        self._expected.clear()
        held, self._held = self._held, []
        host.replay(held)
        c = self.counts
        first = "" if self.first_reclaim_at is None else f"; {host.now - self.first_reclaim_at:.3f}s after the first reclaim"
        self._notice(f"grace period over {why} ({host.now - self.started:.3f}s{first}): {c['reclaimed_sessions']} "
                     f"session(s) reclaimed {c['reclaimed_locks']} lock(s) of {c['reclaimed_txns']} "
                     f"transaction(s); {c['reclaims_refused']} refused; {len(gone)} session(s) not back; "
                     f"{c['grace_held']} held request(s) go on now")

    # ------------------------------------------------------------- RECLAIM

    def _parse(self, args):
        """The RECLAIM arguments, validated before anything changes."""
        host = self.host
        if len(args) != 3:
            raise host.Reply(E_PROTOCOL, "RECLAIM takes [epoch_seen, last, [[txn, [[path, mode, token], ...]], ...]]")
        ep, last, txns = args
        if type(ep) is not int or not 0 < ep < host.epoch:
            raise host.Reply(E_PROTOCOL, f"RECLAIM: epoch_seen must be an earlier epoch of this shard "
                                         f"(1..{host.epoch - 1}); got {host.brief(ep)}")
        if type(last) is not bool:
            raise host.Reply(E_PROTOCOL, f"RECLAIM: last must be true or false; got {host.brief(last)}")
        if type(txns) is not list:
            raise host.Reply(E_PROTOCOL, "RECLAIM: transactions must be an array of [txn, [[path, mode, token], ...]]")
        limit = host.epoch << EPOCH_BITS        # every token of an earlier start is below it
        out = []
        n = 0
        for i, entry in enumerate(txns):
            if type(entry) is not list or len(entry) != 2 or type(entry[1]) is not list:
                raise host.Reply(E_PROTOCOL, f"RECLAIM: transaction {i} must be [txn, [[path, mode, token], ...]]")
            tid, items = entry
            check_txn_id(tid)
            n += len(items)
            if n > MAX_RECLAIM:
                raise host.Reply(E_TOO_BIG, f"RECLAIM of more than {MAX_RECLAIM} locks; send several")
            locks = []
            for it in items:
                if type(it) is not list or len(it) != 3:
                    raise host.Reply(E_PROTOCOL, f"RECLAIM: a lock of transaction {tid} must be [path, mode, token]")
                p, m, tok = it
                p = tuple(p) if type(p) is list else (p,)
                paths.encode(p)                 # validates (InvalidRequest names the problem)
                check_mode(m)
                if type(tok) is not int or not 0 < tok < limit:
                    raise host.Reply(E_PROTOCOL, f"RECLAIM: token {host.brief(tok)} of {p!r} was not issued by an "
                                                 f"earlier start of shard {host.index}")
                locks.append((len(p), p, m, tok))
            locks.sort(key=lambda x: x[0])      # ancestors first: their own tokens, not intention ones
            out.append((tid, locks))
        return ep, last, out

    def _h_reclaim(self, sess, seq, args):
        host = self.host
        ep, last, txns = self._parse(args)
        if self.first_reclaim_at is None:
            self.first_reclaim_at = host.now
        why = None
        if not self.in_grace:
            why = (f"the grace period for reclaiming locks had ended ({self.grace:g}s"
                   f"{'' if self.ended_at is None else ', over %.3fs after the start' % (self.ended_at - self.started)})")
        elif ep != getattr(host, "prev_epoch", host.epoch - 1):
            why = (f"it restarted more than once since (epoch {ep} -> {host.epoch}): what the transaction held "
                   f"may have been granted to others in between")
        refused = []
        table = host.table
        for tid, locks in txns:
            t = host.txn(tid)
            msg = why
            if msg is None and t is not None:
                if t.session is None and t.state == PREPARED:
                    # prepared just before the crash (its PREPARE's answer was lost): restored
                    # from the log with its locks; it is the session's again
                    t.session = sess
                    sess.txns[tid] = t
                    self._reclaimed[tid] = ep
                    continue
                if t.session is not sess:
                    msg = f"transaction {tid} belongs to another session here"
                elif t.state != ACTIVE:
                    msg = f"transaction {tid} is {t.state}"
            elif msg is None and tid in sess.tombs:
                msg = f"transaction {tid} had already been refused or finished here"
            if msg is None:
                if t is None:
                    if not locks:
                        self._reclaimed[tid] = ep
                        continue
                    t = host.new_txn(tid, sess)
                for _, p, m, tok in locks:
                    if table.reclaim(tid, p, m, tok) == CONFLICT:
                        msg = (f"its {Mode(m).name} lock on {p!r} (token {tok}) conflicts with a lock "
                               f"already restored or reclaimed here")
                        host.drop_txn(t)
                        break
                else:
                    self._reclaimed[tid] = ep
                    self.counts["reclaimed_txns"] += 1
                    self.counts["reclaimed_locks"] += len(locks)
                    continue
            elif t is not None and t.session is sess and t.state == ACTIVE:
                host.drop_txn(t)            # a refused later part: what earlier parts reclaimed goes too
            self.counts["reclaims_refused"] += 1
            full = (f"shard {host.index} restarted (epoch {ep} -> {host.epoch}) and refused to give transaction "
                    f"{tid} its locks back: {msg}; the transaction is aborted")
            self._notice(f"reclaim refused for session {sess.id:#x} ({sess.name}): {full}")
            refused.append([tid, full])
        if last and self._expected.pop(sess.id, None) is not None:
            self.counts["reclaimed_sessions"] += 1
            self._maybe_end()
        return [host.epoch, refused]

    # --------------------------------------------------------------- status

    def stats(self):
        """Gauges for STATS (``lockmgr status``/``stats``): whether the shard is
        in its grace period, for how long still, and who it waits for."""
        host = self.host
        s = dict(self.counts)
        s["grace"] = int(self.in_grace)
        s["grace_s"] = self.grace
        s["grace_left_ms"] = int(max(0.0, self.grace_end - host.now) * 1000) if self.in_grace else 0
        s["grace_waiting"] = len(self._expected)
        s["grace_waiting_sessions"] = [[sid, self._names.get(sid, "")] for sid in sorted(self._expected)][:100]
        return s
