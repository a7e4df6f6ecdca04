"""The synchronous client of the lock service, under its first name.

The client lives in ``lockmgr.service.client`` (sync.py: ``connect``,
``Client``, ``Transaction``, ``admin_query``; engine.py, ops.py, txnid.py);
this module re-exports it, with the internal names code outside the package
has imported from here.
"""

from .service.client.sync import *  # noqa: F401,F403
from .service.client.sync import __all__  # noqa: F401
from .service.client.engine import (MAX_CLOCK_DRIFT, Owner, _Call, _Engine, _LoopDriver,  # noqa: F401
                                    _Waiter, _parse_endpoints)
from .service.client.ops import (ABORTED, ACTIVE, COMMITTED, PREPARED, _TxnCore, _drive,  # noqa: F401
                                 _merge_indoubt)
from .service.client.txnid import new_txn_id  # noqa: F401
