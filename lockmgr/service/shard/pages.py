"""SNAPSHOT_PAGE and HELD_PAGE: lock listings a page at a time, so no answer is
larger than the ``answer_rows`` quota and no request stalls the shard's loop
(a plug-in of the sans-IO core; docs/security.md, "Quotas").

Interface:
    Pages(host)
        .handlers {HELD_PAGE: ...}, .admin {SNAPSHOT_PAGE: ...}   merged into the core's
        .check_held(sess, tid)     E_INVALID / E_FORBIDDEN if sess may not list tid's locks

SNAPSHOT_PAGE [cursor, limit] -> [rows, next_cursor]. Cursor 0 starts a listing:
the shard takes the list of the transactions it has now (one C call) and keeps
it under a new cursor; each page then lists the locks of the next transactions
(held ones, then the one it waits for), at most ``limit`` rows (and at most
``answer_rows``), resuming inside a transaction's locks if a page ends there
(from the list of them taken for the page that started them: a transaction
is listed as it was at its first page).
``next_cursor`` 0: that was the last page. A page costs O(its rows) plus the
locks of the transaction it resumes in; a listing is not one atomic snapshot:
each transaction is listed as it is when its page is built (one that started
after the first page is not listed; one that ended is skipped). At most
MAX_CURSORS listings are kept, each until CURSOR_IDLE seconds without a page.

HELD_PAGE [txn, offset, limit] -> [[[path, mode], ...], next_offset] (0: the last).
"""

import collections
import itertools

from .. import wire
from ...rules import ACTIVE, check_txn_id

__all__ = ["Pages", "MAX_CURSORS", "CURSOR_IDLE"]

MAX_CURSORS = 8
CURSOR_IDLE = 60.0


def _limit(host, args, what):
    limit = args
    cap = host.quotas.answer_rows
    if type(limit) is not int or limit < 1:
        raise host.Reply(wire.E_INVALID, f"{what} limit must be an int >= 1; got {host.brief(limit)}")
    return limit if limit < cap else cap


class _Cursor:
    __slots__ = ("tids", "pos", "off", "used", "held")

    def __init__(self, tids, now):
        self.tids = tids
        self.pos = 0
        self.off = 0
        self.used = now
        self.held = None              # the locks of tids[pos] while a page ends inside them


class Pages:
    def __init__(self, host):
        self.host = host
        self.handlers = {wire.HELD_PAGE: self._h_held_page}
        self.admin = {wire.SNAPSHOT_PAGE: self._h_snapshot_page}
        self._cursors = collections.OrderedDict()
        self._ids = itertools.count(1)

    def check_held(self, sess, tid):
        host = self.host
        t = host.txn(tid)
        if t is None or t.session is sess:
            return
        if t.state == ACTIVE:
            raise host.Reply(wire.E_INVALID, f"transaction {tid} belongs to another session")
        # a prepared transaction outlives its session: its coordinator may look at it
        # from a new session; with CURVE, only with the key that prepared it (or an admin's)
        if host.access is not None and host.twophase.owner(t) != sess.user:
            host.forbidden(sess, f"listing the locks of transaction {tid}, prepared by another key,")

    def _h_held_page(self, sess, seq, args):
        host = self.host
        if len(args) != 3:
            raise host.Reply(wire.E_PROTOCOL, "HELD_PAGE takes [txn, offset, limit]")
        tid, off, limit = args
        check_txn_id(tid)
        if type(off) is not int or off < 0:
            raise host.Reply(wire.E_INVALID, f"HELD_PAGE offset must be an int >= 0; got {host.brief(off)}")
        limit = _limit(host, limit, "HELD_PAGE")
        self.check_held(sess, tid)
        held = host.table.held(tid)
        end = off + limit
        return [[[list(p), m] for p, m in held[off:end]], end if end < len(held) else 0]

    def _h_snapshot_page(self, args):
        host = self.host
        if len(args) != 2:
            raise ValueError("SNAPSHOT_PAGE takes [cursor, limit]")
        cid, limit = args
        if type(cid) is not int or cid < 0:
            raise ValueError(f"SNAPSHOT_PAGE cursor must be an int >= 0; got {host.brief(cid)}")
        if type(limit) is not int or limit < 1:
            raise ValueError(f"SNAPSHOT_PAGE limit must be an int >= 1; got {host.brief(limit)}")
        limit = min(limit, host.quotas.answer_rows)
        now = host.now
        cursors = self._cursors
        for k in [k for k, c in cursors.items() if now - c.used > CURSOR_IDLE]:
            del cursors[k]
        if cid == 0:
            while len(cursors) >= MAX_CURSORS:
                cursors.popitem(last=False)
            cid = next(self._ids)
            c = cursors[cid] = _Cursor(host.table.transactions(), now)
        else:
            c = cursors.get(cid)
            if c is None:
                raise ValueError(f"SNAPSHOT_PAGE cursor {cid} is unknown or expired (a shard keeps {MAX_CURSORS}, "
                                 f"each for {CURSOR_IDLE:g}s without a page); start again with cursor 0")
            cursors.move_to_end(cid)
        c.used = now
        table = host.table
        rows = []
        tids = c.tids
        while c.pos < len(tids) and len(rows) < limit:
            tid = tids[c.pos]
            t = host.txn(tid)
            sid = t.session.id if t is not None and t.session is not None else 0
            held = c.held if c.off and c.held is not None else table.held(tid)
            room = limit - len(rows)
            part = held[c.off:c.off + room]
            rows.extend([[list(p), tid, m, True, sid] for p, m in part])
            if c.off + room < len(held):
                c.off += room
                c.held = held             # the next page goes on from this list (not rebuilt)
                break
            w = table.waiting_on(tid)
            if w is not None:
                if len(rows) >= limit:      # the waiting row goes first on the next page
                    c.off = len(held)
                    break
                rows.append([list(w[0]), tid, w[1], False, sid])
            c.pos += 1
            c.off = 0
            c.held = None
        if c.pos >= len(tids):
            del cursors[cid]
            cid = 0
        return [rows, cid]
