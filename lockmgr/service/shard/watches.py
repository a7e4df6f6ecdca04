"""Watches: a session asks to be told when a node's holders or waiters change,
and the shard pushes the node's state as N_WATCH notices (a plug-in of the
sans-IO core; docs/protocol.md, "Watches").

Interface:
    Watches(host)
        .handlers {WATCH, UNWATCH}     merged into the core's
        .by_key                        {path: [_Watch, ...]}: empty when no one watches
        .flush()                       push the changes since the last flush
        .session_ended(sess)           drop the session's watches

WATCH [path] -> [wid, 0, holders, nwaiters]: the node's state now (holders
``[[txn, mode], ...]`` in grant order, the number of requests queued). Then,
whenever the node's state differs from the one last sent, the shard pushes
``[N_WATCH, wid, seq, holders, nwaiters]`` with seq 1, 2, ... (the client
knows a notice was lost by a gap, and watches again). UNWATCH [wid] -> [].

When the state is compared: at ``flush``, which the core runs when the driver
takes the replies (after each frame, each round of timers): a change undone
within one frame (granted and released by the same frame) is not seen; the
holders and waiters after each frame are. The cost is one ``Table.node`` per
watched node per flush, and nothing at all while no session watches (the core
checks ``by_key`` for emptiness, one truth test per flush). Bounded by the
quotas ``watches_per_session`` and ``watches`` (E_QUOTA naming them).
"""

from .. import wire
from ...paths import MAX_DEPTH, encode
from .quotas import quota_error

__all__ = ["Watches"]


class _Watch:
    __slots__ = ("sess", "wid", "key", "seq")

    def __init__(self, sess, wid, key):
        self.sess = sess
        self.wid = wid
        self.key = key
        self.seq = 0


class Watches:
    def __init__(self, host):
        self.host = host
        self.handlers = {wire.WATCH: self._h_watch, wire.UNWATCH: self._h_unwatch}
        self.by_key = {}          # path -> [_Watch, ...]
        self.last = {}            # path -> (holders, nwaiters) last sent
        self.count = 0
        self._next_wid = 1

    def _state(self, key):
        holders = []
        nwait = 0
        for txn, mode, granted in self.host.table.node(key):
            if granted:
                holders.append([txn, mode])
            else:
                nwait += 1
        return holders, nwait

    def _h_watch(self, sess, seq, args):
        host = self.host
        if len(args) != 1:
            raise host.Reply(wire.E_PROTOCOL, "WATCH takes [path]")
        path = args[0]
        if type(path) is not list or not 1 <= len(path) <= MAX_DEPTH:
            raise host.Reply(wire.E_INVALID, f"WATCH takes a path of 1..{MAX_DEPTH} components; "
                                             f"got {host.brief(path)}")
        key = tuple(path)
        encode(key)                       # validates (InvalidRequest naming the problem)
        q = host.quotas
        mine = sess.watches
        if mine is not None and len(mine) >= q.watches_per_session:
            raise quota_error("watches_per_session", q.watches_per_session,
                              f"session {sess.id:#x} has {len(mine)} watches on shard {host.index}")
        if self.count >= q.watches:
            raise quota_error("watches", q.watches, f"shard {host.index} has {self.count} watches")
        if mine is None:
            mine = sess.watches = {}
        wid = self._next_wid
        self._next_wid += 1
        w = _Watch(sess, wid, key)
        mine[wid] = w
        lst = self.by_key.get(key)
        if lst is None:
            lst = self.by_key[key] = []
            self.last[key] = self._state(key)
        lst.append(w)
        self.count += 1
        host.counters["watches_set"] += 1
        holders, nwait = self.last[key]
        return [wid, 0, holders, nwait]

    def _h_unwatch(self, sess, seq, args):
        host = self.host
        if len(args) != 1 or type(args[0]) is not int:
            raise host.Reply(wire.E_PROTOCOL, "UNWATCH takes [wid]")
        w = sess.watches.pop(args[0], None) if sess.watches else None
        if w is None:
            raise host.Reply(wire.E_NO_WATCH, f"session {sess.id:#x} has no watch {args[0]} on shard {host.index}")
        self._drop(w)
        return []

    def _drop(self, w):
        lst = self.by_key.get(w.key)
        if lst is not None:
            lst.remove(w)
            if not lst:
                del self.by_key[w.key]
                self.last.pop(w.key, None)
        self.count -= 1

    def session_ended(self, sess):
        for w in list(sess.watches.values()):
            self._drop(w)
        sess.watches = None

    def flush(self):
        """Push the state of every watched node that changed since it was last sent."""
        host = self.host
        last = self.last
        push = host.push
        for key, lst in self.by_key.items():
            st = self._state(key)
            if st == last[key]:
                continue
            last[key] = st
            holders, nwait = st
            for w in lst:
                w.seq += 1
                push(w.sess, [wire.N_WATCH, w.wid, w.seq, holders, nwait])
