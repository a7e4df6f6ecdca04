"""lockmgr: a hierarchical, multi-mode lock manager for database engines.

Embedded use::

    import lockmgr
    mgr = lockmgr.LockManager()
    with mgr.transaction() as t:
        token = t.lock(("db", "orders", 42), lockmgr.Mode.X)

See README.md and docs/design.md.
"""

from .errors import (DeadlockDetected, InvalidRequest, LockError, LockNotAvailable,
                     LockTimeout, TransactionAborted)
from .modes import Mode, compatible, supremum
from .manager import LockInfo, LockManager, Transaction
from ._core import BACKEND
from .wire import SessionExpired, ShardUnavailable
from .client import Client, connect
from .cluster import LocalCluster
from . import aio  # noqa: E402  (``import lockmgr`` makes ``lockmgr.aio`` reachable)

__version__ = "0.1.0"

__all__ = [
    "Mode", "compatible", "supremum",
    "LockError", "LockTimeout", "LockNotAvailable", "DeadlockDetected",
    "TransactionAborted", "InvalidRequest",
    "LockManager", "Transaction", "LockInfo", "BACKEND",
    "connect", "Client", "LocalCluster", "SessionExpired", "ShardUnavailable", "aio",
]
