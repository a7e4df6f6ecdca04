"""Exceptions raised by lockmgr.

Every error that leaves the public API is a :class:`LockError`. This module
imports nothing from the package, so every layer (including the table
backends in :mod:`lockmgr._core`) may raise these directly. The two errors
of the lock service (:class:`SessionExpired`, :class:`ShardUnavailable`)
live here too, so catching them does not import the service's modules
(``lockmgr.service.wire`` re-exports them).
"""

__all__ = [
    "LockError",
    "LockTimeout",
    "LockNotAvailable",
    "DeadlockDetected",
    "TransactionAborted",
    "TransactionCommitted",
    "InvalidRequest",
    "SessionExpired",
    "ShardUnavailable",
    "Forbidden",
    "QuotaExceeded",
]


class LockError(Exception):
    """Base class of every lockmgr error."""


class LockTimeout(LockError):
    """The wait for a lock ran past its timeout.

    The request that timed out is withdrawn; the transaction stays usable and
    keeps every lock it held before (including intention locks taken on the
    ancestors for this request).
    """


class LockNotAvailable(LockError):
    """A ``nowait`` request conflicted. Nothing changed; the transaction is usable."""


class DeadlockDetected(LockError):
    """This transaction was chosen as a deadlock victim.

    It has been aborted and every lock it held has been released; later
    operations on it raise :class:`TransactionAborted`.
    """


class TransactionAborted(LockError):
    """An operation on a transaction that was aborted or has already finished."""


class TransactionCommitted(LockError):
    """``abort()`` of a prepared (2PC) transaction that was committed instead:
    another client or the manager resolved it (``resolve(gtrid, True)``).

    The transaction is committed and its locks are released; its state says
    ``'committed'``. (The opposite case, ``commit()`` of a prepared transaction
    that was aborted elsewhere, raises :class:`TransactionAborted`.)
    """


class InvalidRequest(LockError, ValueError):
    """Bad input: an unknown mode, a malformed path, unlocking what is not held.

    The message names the problem. Nothing was changed.
    """


class SessionExpired(LockError):
    """The client's session lease ran out (no heartbeat acknowledged within
    the TTL), or a shard expired or closed it. The shards have aborted the
    session's unprepared transactions and released their locks. Every later
    call of the session's transactions raises this; the Client opens a new
    session for new transactions (``begin``)."""


class ClientForked(LockError):
    """A service client (sync or asyncio) was used in a process forked from the
    one that connected it. Its sockets, threads and session belong to the
    parent (ZeroMQ sockets cannot cross a fork), so every call in the child
    raises this at once; ``close()`` in the child only marks it closed (the
    parent's session is left alone). Connect a new client in the child."""


class ShardUnavailable(LockError):
    """A shard did not answer within the client's request timeout, or it
    restarted and lost the state of the request."""


class Forbidden(LockError):
    """The shard refused the request for the identity that sent it: another
    key's session or prepared transaction, or an admin request without an
    admin key (the CURVE key the connection authenticated with)."""


class QuotaExceeded(LockError):
    """The request would take a session (or the shard) over one of its
    quotas; the message names the limit. Nothing was changed."""
