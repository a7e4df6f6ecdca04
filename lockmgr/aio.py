"""The asyncio client of the lock service (``await lockmgr.aio.connect(...)``).

It lives in ``lockmgr.service.client.aio``; this module, the public name,
re-exports it.
"""

from .service.client.aio import *  # noqa: F401,F403
from .service.client.aio import __all__  # noqa: F401
