"""Session-less admin requests to shards (PING, SNAPSHOT, GRAPH, STATS, INDOUBT,
DEADLOCKS; PEERS and FAULTS with the cluster key): one round trip each.

Interface:
    request(endpoint, typ, args=(), timeout=2.0, key=None) -> payload   raises the LockError
    admin_query(endpoints, typ, timeout=2.0) -> [payload or ShardUnavailable/LockError, ...]
"""

import zmq

from . import wire
from ..errors import LockError, ShardUnavailable
from .routing import parse_endpoints

__all__ = ["request", "admin_query"]


def request(endpoint, typ, args=(), timeout=2.0, key=None):
    """One session-less admin request to the shard at ``endpoint``; returns the
    payload, or raises ShardUnavailable (no answer within ``timeout``) or the
    LockError of the shard's error answer. ``key``: the cluster key (needed for
    PEERS and FAULTS when the shard has one)."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
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


def admin_query(endpoints, typ, timeout=2.0):
    """``request`` to each shard (a list, or one comma-separated string); returns
    their payloads in order, an exception instance in place of a failed one."""
    out = []
    for ep in parse_endpoints(endpoints):
        try:
            out.append(request(ep, typ, (), timeout))
        except LockError as e:
            out.append(e)
    return out
