"""Which shard owns what: the one home of the service's routing rules.

Interface:
    parse_endpoints(endpoints) -> [endpoint, ...]   validated, in shard order
    check_endpoint(e)                               tcp://HOST:PORT or ipc://PATH
    route(key, depth, mode, nshards, partition_depth) -> (shard, ...)
        the shards a lock on the node with canonical ``key`` (``depth``
        components) is taken on: the owner of its prefix at the partition
        depth; IS/IX above that depth on shard 0 only, S/SIX/X on every shard
        (docs/service.md, "Routing by partition depth, and why it is correct")
"""

import zlib

from ..errors import InvalidRequest
from ..paths import prefix_ends

__all__ = ["parse_endpoints", "check_endpoint", "route"]

_IS, _IX = 1, 2


def route(key, depth, mode, nshards, partition_depth):
    if nshards == 1:
        return (0,)
    p = partition_depth
    if depth >= p:
        end = key if depth == p else key[:prefix_ends(key)[p - 1]]
        return (zlib.crc32(end) % nshards,)
    if mode == _IS or mode == _IX:
        return (0,)
    return tuple(range(nshards))


def parse_endpoints(endpoints):
    """The shard endpoints, in shard order: a list of ``tcp://host:port`` /
    ``ipc://path`` strings, or one comma-separated string (InvalidRequest if bad)."""
    if isinstance(endpoints, str):
        eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    else:
        try:
            eps = [str(e).strip() for e in endpoints]
        except TypeError:
            raise InvalidRequest("endpoints must be a list of 'tcp://host:port' strings or one "
                                 "comma-separated string") from None
    if not eps:
        raise InvalidRequest("no endpoints given")
    for e in eps:
        check_endpoint(e)
    return eps


def check_endpoint(e):
    """``tcp://HOST:PORT`` (PORT 1..65535) or ``ipc://PATH``; anything else is bad input."""
    scheme, sep, rest = e.partition("://")
    if not sep:
        raise InvalidRequest(f"endpoint {e!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:7400")
    if scheme == "ipc":
        if not rest:
            raise InvalidRequest(f"endpoint {e!r}: ipc:// needs a path")
        return
    if scheme != "tcp":
        raise InvalidRequest(f"endpoint {e!r}: transport {scheme!r} is not supported (use tcp:// or ipc://)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidRequest(f"endpoint {e!r} needs a host and a port in 1..65535, like tcp://127.0.0.1:7400")
