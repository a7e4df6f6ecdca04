"""Quotas: how much of a shard one session, one connection identity, or all of
them together may take. Each refusal is ``E_QUOTA`` with a message naming the
limit (its option name and value) and nothing changed.

Interface:
    Quotas(**limits)            the limits (defaults below); Quotas.from_options("name=value,...")
        .check()                InvalidRequest naming a bad limit
    QUOTA_NAMES                 the option names, in order
    quota_error(name, limit, what) -> Reply     the E_QUOTA reply naming ``name``
    SessionCounts               sessions per connection identity (HELLO / session end)
    REPLY_COST                  the bytes one cached answer is counted as

Where each limit is enforced (all O(1) per request; the hot path reads a C
field of the session and of the core, no dict is built):

* ``sessions_per_identity``, ``sessions``: at HELLO (core._h_hello -> SessionCounts).
  An identity is the CURVE key (ZAP User-Id) of the connection, or its ZeroMQ
  routing id without CURVE.
* ``locks_per_session``, ``locks``: LOCK / LOCK_MANY (core._h_lock_one,
  core._h_lock_many). Counted: the lock requests the session's open
  transactions were granted on this shard (a LOCK of a node already held does
  not count again; a LOCK_MANY counts its items), less those unlocked;
  released with the transaction.
* ``waits_per_session``: a LOCK / LOCK_MANY that would wait while the session
  already has this many requests parked is not queued (nothing changed).
* ``inflight_per_session``: the requests of one frame plus those already parked.
* ``reply_cache_bytes``: the answers kept for retries and not acknowledged
  (counted at REPLY_COST each): above it, new requests are refused until the
  client acknowledges (``ack``).
* ``message_bytes``: a frame larger than this is refused before it is decoded
  (the driver, server.py); at most wire.MAX_FRAME.
* ``answer_rows``: rows in one SNAPSHOT_PAGE / HELD_PAGE answer; a SNAPSHOT or
  HELD that would answer more is refused, naming the paged request to use.
* ``watches_per_session``, ``watches``: at WATCH (watches.py).
"""

import collections
from dataclasses import dataclass, fields

from .. import wire
from ...errors import InvalidRequest

__all__ = ["Quotas", "QUOTA_NAMES", "quota_error", "SessionCounts", "REPLY_COST"]

# bytes one cached answer is counted as: a small reply's list, its ints and the
# dict and deque slots (sys.getsizeof of [seq, 0, [token, prev, epoch]] and parts)
REPLY_COST = 160


@dataclass
class Quotas:
    """The limits of one shard (per session unless the name says otherwise)."""
    sessions_per_identity: int = 1024      # open sessions of one connection identity (CURVE key or routing id)
    sessions: int = 100_000                # open sessions on the shard
    locks_per_session: int = 1_000_000     # locks a session's open transactions hold here
    locks: int = 20_000_000                # locks held on the shard
    waits_per_session: int = 10_000        # requests of a session parked waiting for a lock
    inflight_per_session: int = 200_000    # requests of one frame + those parked
    reply_cache_bytes: int = 32 << 20      # unacknowledged answers kept for retries (REPLY_COST each)
    message_bytes: int = wire.MAX_FRAME    # one frame
    answer_rows: int = 2_000               # rows of one SNAPSHOT/HELD answer (page): ~4 ms to build and pack
    watches_per_session: int = 1024        # watches a session has set here (WATCH; watches.py)
    watches: int = 100_000                 # watches on the shard

    def check(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if type(v) is not int or v < 1:
                raise InvalidRequest(f"quota {f.name} must be an int >= 1; got {v!r}")
        if self.message_bytes > wire.MAX_FRAME:
            raise InvalidRequest(f"quota message_bytes is at most {wire.MAX_FRAME} (the wire's limit); "
                                 f"got {self.message_bytes}")
        return self

    @classmethod
    def from_options(cls, text):
        """``"name=value,name=value"`` (``lockmgr serve --quota``): the defaults with those changed."""
        q = cls()
        if not text:
            return q
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in QUOTA_NAMES:
                raise InvalidRequest(f"--quota takes name=value pairs with names {', '.join(QUOTA_NAMES)}; "
                                     f"got {part.strip()!r}")
            try:
                setattr(q, name, int(value.strip().replace("_", "")))
            except ValueError:
                raise InvalidRequest(f"quota {name} must be an int; got {value.strip()!r}") from None
        return q.check()

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


QUOTA_NAMES = tuple(f.name for f in fields(Quotas))


def quota_error(name, limit, what):
    """The reply refusing a request over quota ``name`` (nothing was changed)."""
    from .core import Reply          # (core imports this module)
    return Reply(wire.E_QUOTA, f"quota {name}={limit} reached: {what}; nothing was changed")


class SessionCounts:
    """Open sessions per connection identity, for ``sessions_per_identity``."""

    def __init__(self):
        self.by_identity = collections.Counter()
        self.identity = {}            # session id -> the identity that opened it

    def opened(self, sid, identity):
        self.identity[sid] = identity
        self.by_identity[identity] += 1

    def closed(self, sid):
        identity = self.identity.pop(sid, None)
        if identity is None:
            return
        c = self.by_identity
        n = c[identity] - 1
        if n > 0:
            c[identity] = n
        else:
            c.pop(identity, None)

    def count(self, identity):
        return self.by_identity.get(identity, 0)
