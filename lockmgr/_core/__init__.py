"""The lock table backends.

The compiled backend (``_ctable``, C behind Cython) is the default; setting the
environment variable ``LOCKMGR_PUREPYTHON=1`` forces the pure-Python twin
(``_pytable``), as does a platform where the extension was not built.
Both export the same ``public_api``.
"""

import os

public_api = ["Table", "WAITING", "CONFLICT", "BACKEND", "table_class", "available_backends"]

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



def available_backends():
    """The backends importable here: ``["c", "python"]`` or ``["python"]``."""
    out = []
    try:
        from . import _ctable  # noqa: F401
        out.append("c")
    except ImportError:
        pass
    out.append("python")
    return out


def table_class(backend=None):
    """The Table class of ``backend`` ("c" or "python"; None: the selected one)."""
    if backend is None:
        return Table
    if backend == "c":
        from ._ctable import Table as T
        return T
    if backend == "python":
        from ._pytable import Table as T
        return T
    raise ValueError(f"unknown backend {backend!r}; expected 'c' or 'python'")


__all__ = public_api
