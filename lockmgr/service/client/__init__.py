"""The clients of the lock service.

Interface:
    connect, Client, Transaction, admin_query    the synchronous client (sync.py)
    lockmgr.service.client.aio                   the asyncio client (also ``lockmgr.aio``)

Modules: engine.py (the sockets shared by a client's threads and tasks, the
session; ``_Engine``, ``Owner``), ops.py (transaction logic written once as
generators of shard calls), txnid.py (transaction ids), sync.py and aio.py
(the two front ends that drive those generators), notify.py (session states,
the thread that calls listeners), watch.py (watches, wait_free) and
recipes.py (leader election, semaphore, read-write lock: on the public API
only; ``lockmgr.recipes``). docs/service.md ("Client engine", "Client engine
ownership", "Transactions in the client", "Session states and listeners",
"Watches"), docs/recipes.md.
"""

from .sync import Client, Transaction, admin_query, connect

__all__ = ["connect", "Client", "Transaction", "admin_query"]
