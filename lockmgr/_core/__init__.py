"""The lock table backends.

The compiled backend (``_ctable``, C behind Cython) is the default; setting the
environment variable ``LOCKMGR_PUREPYTHON=1`` forces the pure-Python twin
(``_pytable``), as does a platform where the extension was not built.
Both export the same ``public_api``.
"""

import os

public_api = ["Table", "WAITING", "CONFLICT", "BACKEND"]

if os.environ.get("LOCKMGR_PUREPYTHON", "") not in ("", "0"):
    from ._pytable import Table, WAITING, CONFLICT
    BACKEND = "python"
else:
    try:
        from ._ctable import Table, WAITING, CONFLICT
        BACKEND = "c"
    except ImportError:  # no compiler on this platform
        from ._pytable import Table, WAITING, CONFLICT
        BACKEND = "python"

__all__ = public_api
