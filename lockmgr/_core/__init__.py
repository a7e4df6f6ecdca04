"""The lock table backends.

The compiled backend (``_ctable``, C behind Cython) is the default; setting the
environment variable ``LOCKMGR_PUREPYTHON=1`` forces the pure-Python twin
(``_pytable``), as does a platform where the extension was not built.
Both export the same ``public_api``.
"""

import os
from typing import TYPE_CHECKING, List, Optional, Type, cast

# what both backends provide through this module (tests/test_backend.py)
__all__ = ["Table", "WAITING", "CONFLICT", "BACKEND", "table_class", "available_backends"]
public_api = __all__

BACKEND: str
if TYPE_CHECKING:
    # Both backends export the API that _ctable.pyi describes; type checkers see that one.
    from ._ctable import Table, WAITING, CONFLICT
elif os.environ.get("LOCKMGR_PUREPYTHON", "") not in ("", "0"):
    from ._pytable import Table, WAITING, CONFLICT
    BACKEND = "python"
else:
    try:
        from ._ctable import Table, WAITING, CONFLICT
        BACKEND = "c"
    except ImportError:  # installed without a compiler (setup.py said so): say it once more here
        import warnings
        from ._pytable import Table, WAITING, CONFLICT
        BACKEND = "python"
        warnings.warn("lockmgr: the compiled lock table is not installed (built without a C compiler?); "
                      "using the pure-Python backend, several times slower. Install a C compiler and "
                      "Python headers (Debian: apt-get install build-essential python3-dev) and reinstall, "
                      "or set LOCKMGR_PUREPYTHON=1 to choose the pure-Python backend explicitly.",
                      RuntimeWarning, stacklevel=2)


def available_backends() -> List[str]:
    """The backends importable here: ``["c", "python"]`` or ``["python"]``."""
    out: List[str] = []
    try:
        from . import _ctable  # noqa: F401
        out.append("c")
    except ImportError:
        pass
    out.append("python")
    return out


def table_class(backend: Optional[str] = None) -> Type["Table"]:
    """The Table class of ``backend`` ("c" or "python"; None: the selected one)."""
    if backend is None:
        return Table
    if backend == "c":
        from . import _ctable
        return _ctable.Table
    if backend == "python":
        from . import _pytable
        return cast("Type[Table]", _pytable.Table)   # the twin: the same API as the stub
    raise ValueError(f"unknown backend {backend!r}; expected 'c' or 'python'")

