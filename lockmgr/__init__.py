"""lockmgr: a hierarchical, multi-mode lock manager for database engines.

Embedded use::

    import lockmgr
    mgr = lockmgr.LockManager()
    with mgr.transaction() as t:
        token = t.lock(("db", "orders", 42), lockmgr.Mode.X)

See README.md and docs/design.md.

``import lockmgr`` loads only the embedded side (modes, paths, the lock table,
the manager). The service's names (``connect``, ``Client``, ``LocalCluster``,
``aio``) are resolved on first use by the module ``__getattr__`` below
(PEP 562), so an embedded user never imports zmq, msgpack or asyncio.
"""

import importlib as _importlib
import typing as _typing

from . import _compiled
if _compiled.pure_python_requested():   # the reference build: every module from its .py source
    _compiled.use_sources()

from .errors import (ClientForked, DeadlockDetected, Forbidden, InvalidRequest, LockError, LockNotAvailable,
                     LockTimeout, QuotaExceeded, SessionExpired, ShardUnavailable, TransactionAborted,
                     TransactionCommitted)
from .modes import Mode, compatible, supremum
from .paths import Component, Resource
from .embedded.manager import LockInfo, LockManager, Transaction
from ._core import BACKEND

if _typing.TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers
    from . import aio
    from .service.client.sync import Client, connect
    from .service.cluster import LocalCluster
    from .service.client.notify import SessionState

from ._version import __version__

__all__ = [
    "__version__", "Mode", "compatible", "supremum",
    "LockError", "LockTimeout", "LockNotAvailable", "DeadlockDetected",
    "TransactionAborted", "TransactionCommitted", "InvalidRequest",
    "LockManager", "Transaction", "LockInfo", "BACKEND", "Resource", "Component",
    "connect", "Client", "LocalCluster", "SessionExpired", "ShardUnavailable", "ClientForked", "aio",
    "Forbidden", "QuotaExceeded", "SessionState",
]

# name -> (module, attribute); attribute None: the module itself
_LAZY = {
    "connect": (".service.client.sync", "connect"),
    "Client": (".service.client.sync", "Client"),
    "LocalCluster": (".service.cluster", "LocalCluster"),
    "aio": (".aio", None),
    "SessionState": (".service.client.notify", "SessionState"),
}

if not _typing.TYPE_CHECKING:  # type checkers see the imports above, and no catch-all __getattr__
    def __getattr__(name):
        try:
            module, attr = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        mod = _importlib.import_module(module, __name__)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value    # later lookups do not come back here
        return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(_LAZY))
