"""Who may do what on a shard with CURVE (docs/security.md): a plug-in of the
sans-IO core; it reads key sets, never a socket.

Interface:
    Access(keys, peer_types)    ``keys``: an object with frozensets ``admins`` and ``peers``
                                of z85 public keys (security.ServerCurve, re-read on reload)
        .is_admin(user) -> bool, .is_peer(user) -> bool
        .check(typ, user) -> None | str    why a session-less request of ``typ`` from
                                           ``user`` is refused (E_FORBIDDEN), or None
    ADMIN_TYPES                 the admin requests (an admin key's only)

The rules:
* PING: any admitted key (the ZAP handler admitted the connection).
* SNAPSHOT, SNAPSHOT_PAGE, GRAPH, STATS, INFO, INDOUBT, DEADLOCKS: admin keys.
* PEERS, FAULTS: admin or peer keys. Shard-to-shard messages (PROBE...): peer keys.
* Session requests act on the session of the key that opened it (core.frame
  compares the session's key with the frame's); DECIDE of a transaction that
  another key prepared, and HELD of another key's prepared transaction, need an
  admin key (twophase.py, pages.py).
* user "" is a frame without a ZAP User-Id: only the shard's own inproc wake
  socket sends one (every tcp or ipc connection to a CURVE shard has a key).
"""

from .. import wire

__all__ = ["Access", "ADMIN_TYPES"]

ADMIN_TYPES = frozenset((wire.SNAPSHOT, wire.SNAPSHOT_PAGE, wire.GRAPH, wire.STATS, wire.INFO, wire.INDOUBT,
                         wire.DEADLOCKS))
_PEER_ADMIN = frozenset((wire.PEERS, wire.FAULTS))


class Access:
    def __init__(self, keys, peer_types):
        self.keys = keys
        self.peer_types = frozenset(peer_types)

    def is_admin(self, user):
        return user in self.keys.admins or not user

    def is_peer(self, user):
        return user in self.keys.peers or not user

    def check(self, typ, user):
        if not user:
            return None
        name = wire.TYPE_NAMES.get(typ, str(typ))
        if typ in self.peer_types:
            if user not in self.keys.peers:
                return f"{name} is a shard-to-shard message: only a peer shard's key may send it"
        elif typ in _PEER_ADMIN:
            if user not in self.keys.peers and user not in self.keys.admins:
                return f"{name} needs an admin key (or a peer shard's)"
        elif typ in ADMIN_TYPES:
            if user not in self.keys.admins:
                return f"{name} is an admin request: it needs an admin key"
        return None
