"""The client's hot-path helpers: compiled (lockmgr/service/client/_hot.pyx)
with the compiled backend, Python's own with the pure-Python one (the
reference).

Interface:
    Mutex() -> a lock with acquire(blocking=True, timeout=-1), release(),
               locked() and ``with``; threading.Condition accepts it
               (compiled: C-level acquire/release; else threading.Lock)
    drive(eng, gen) -> the return value of an ops generator run to its end,
               each batch of calls it yields answered by eng.call_many
               (compiled: without a StopIteration per run; else ops' loop)
"""

import threading
from typing import Any, Callable, Optional

from ..._core import BACKEND

Mutex: Callable[[], Any]
drive: Optional[Callable[[Any, Any], Any]]
if BACKEND == "c":
    from . import _hot
    Mutex, drive = _hot.Mutex, _hot.drive
else:
    Mutex, drive = threading.Lock, None

__all__ = ["Mutex", "drive"]
