"""Session-less admin requests to shards (PING, SNAPSHOT, GRAPH, STATS, INDOUBT,
DEADLOCKS; PEERS and FAULTS with the cluster key): one round trip each.

Interface:
    request(endpoint, typ, args=(), timeout=2.0, key=None, curve=None, index=0) -> payload
                                                         raises the LockError
    snapshot(endpoint, timeout=2.0, curve=None, index=0) -> rows   SNAPSHOT_PAGE until the last page
    admin_query(endpoints, typ, timeout=2.0, curve=None) -> [payload or ShardUnavailable/LockError, ...]
                                                         (SNAPSHOT: paged, the rows of every page)

``curve``: a security.ClientCurve (an admin key: shards with CURVE answer admin
requests only to admin keys); None: from LOCKMGR_CURVE_SECRET_FILE and
LOCKMGR_CURVE_SERVER_KEY if set, else no CURVE.
"""

import zmq

from . import wire
from ..errors import LockError, ShardUnavailable
from .routing import parse_endpoints
from .security import client_curve_from_env

SNAPSHOT_PAGE_ROWS = 10_000

__all__ = ["request", "admin_query"]


def request(endpoint, typ, args=(), timeout=2.0, key=None, curve=None, index=0):
    """One session-less admin request to the shard at ``endpoint``; returns the
    payload, or raises ShardUnavailable (no answer within ``timeout``) or the
    LockError of the shard's error answer. ``key``: the cluster key (needed for
    PEERS and FAULTS when the shard has one); ``curve``: see the module's doc
    (``index``: the shard's index, for a per-shard server key)."""
    if curve is None:
        curve = client_curve_from_env()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            curve.apply(s, index)
        s.connect(endpoint)
        s.send(wire.pack_requests(wire.peer_session(key), 0, [[typ, 1, *args]]))
        if not s.poll(int(timeout * 1000)):
            raise ShardUnavailable(f"{endpoint} did not answer within {timeout:g}s")
        try:
            seq, status, payload = wire.unpack_replies(s.recv())[0]
        except (ValueError, TypeError, IndexError, wire.ProtocolError) as e:
            raise LockError(f"{endpoint} sent a malformed answer: {e}") from None
        if status != wire.OK:
            raise wire.error_for(status, payload)
        err = wire.check_reply(typ, payload)
        if err is not None:
            raise err
        return payload
    finally:
        s.close(0)


def snapshot(endpoint, timeout=2.0, curve=None, index=0):
    """Every lock request on the shard at ``endpoint``: SNAPSHOT_PAGE, a page at a time."""
    rows, cursor = request(endpoint, wire.SNAPSHOT_PAGE, [0, SNAPSHOT_PAGE_ROWS], timeout, curve=curve, index=index)
    while cursor:
        more, cursor = request(endpoint, wire.SNAPSHOT_PAGE, [cursor, SNAPSHOT_PAGE_ROWS], timeout, curve=curve,
                               index=index)
        rows.extend(more)
    return rows


def admin_query(endpoints, typ, timeout=2.0, curve=None):
    """``request`` to each shard (a list, or one comma-separated string); returns
    their payloads in order, an exception instance in place of a failed one.
    SNAPSHOT is asked a page at a time (``snapshot``)."""
    out = []
    for i, ep in enumerate(parse_endpoints(endpoints)):
        try:
            if typ == wire.SNAPSHOT:
                out.append(snapshot(ep, timeout, curve, i))
            else:
                out.append(request(ep, typ, (), timeout, curve=curve, index=i))
        except LockError as e:
            out.append(e)
    return out
