"""The modules that setup.py compiles with Cython from their own .py sources
(one list: setup.py reads it from here), and the switch that runs their .py
sources instead.

Each of these is plain Python that also compiles: where a compiler is there,
setup.py builds an extension module beside the .py (an augmenting .pxd next to
some of them gives Cython C types: docs/design.md, "Compiled pieces"), and
Python's import then prefers the extension. ``LOCKMGR_PUREPYTHON=1`` makes the
whole package the reference implementation: the pure-Python lock table
(lockmgr/_core) and these modules from their .py sources (``use_sources``,
called by ``lockmgr/__init__.py`` before anything else is imported). The test
suite runs both ways (.ci/run), and tests/test_compiled_differential.py runs
the two builds of the shard core side by side.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

COMPILED_PY = [
    "lockmgr.rules",
    "lockmgr.service.routing",
    "lockmgr.service.client.txnid",
    "lockmgr.service.wire",
    "lockmgr.service.client.engine",
    "lockmgr.service.client.ops",
    "lockmgr.service.client.sync",
    "lockmgr.service.shard.core",
    "lockmgr.service.shard.server",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_path(name: str) -> str:
    """The .py source of the compiled module ``name``."""
    return os.path.join(_PACKAGE_DIR, *name.split(".")[1:]) + ".py"


def load_source(name: str, alias: str) -> ModuleType:
    """A fresh module object run from the .py source of ``name`` under the
    name ``alias`` (a sibling name, so its relative imports resolve as the
    original's), registered in sys.modules; for side-by-side tests."""
    spec = importlib.util.spec_from_file_location(alias, source_path(name))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[alias] = mod
    spec.loader.exec_module(mod)
    return mod


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the modules of COMPILED_PY as their .py sources."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in _NAMES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_NAMES = frozenset(COMPILED_PY)


def pure_python_requested() -> bool:
    return os.environ.get("LOCKMGR_PUREPYTHON", "") not in ("", "0")


def use_sources() -> None:
    """Import the modules of COMPILED_PY from their .py sources from now on
    (idempotent). Modules already imported stay as they are."""
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())


def compiled_modules() -> Dict[str, bool]:
    """{name: True if the module imported is the compiled one} for COMPILED_PY."""
    out: Dict[str, bool] = {}
    for name in COMPILED_PY:
        mod = importlib.import_module(name)
        out[name] = not (getattr(mod, "__file__", "") or "").endswith(".py")
    return out
