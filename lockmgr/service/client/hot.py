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
    EngineBase  the base class of the engines the transaction logic (ops.py)
               drives: the client's and the simulation's (compiled: an
               extension type whose fields and methods ops reaches at C level)
"""

import threading
from typing import Any, Callable, Dict, List, Optional

from ..._core import BACKEND


class _EngineBase:
    """What ops.py uses of an engine (the fields below, and these methods,
    which every engine overrides). The compiled twin is _hot.EngineBase."""

    epoch: List[int]
    txns: Dict[int, Any]
    partition_depth: Any
    request_timeout: Any
    reclaim_waiting: Any
    dead: Any
    last_dead: Any
    gen: int
    n: int

    def call_many(self, specs):
        raise NotImplementedError("call_many")

    def check_session(self):
        raise NotImplementedError("check_session")

    def lease_over(self):
        raise NotImplementedError("lease_over")

    def post(self, shard, typ, args):
        raise NotImplementedError("post")

    def post_quiet(self, shard, typ, args):
        raise NotImplementedError("post_quiet")

    def recorded(self):
        raise NotImplementedError("recorded")

    def txn_lost(self, core, err):
        raise NotImplementedError("txn_lost")

    def forget_txn(self, core):
        raise NotImplementedError("forget_txn")


Mutex: Callable[[], Any]
drive: Optional[Callable[[Any, Any], Any]]
EngineBase: Any
if BACKEND == "c":
    from . import _hot
    Mutex, drive, EngineBase = _hot.Mutex, _hot.drive, _hot.EngineBase
else:
    Mutex, drive, EngineBase = threading.Lock, None, _EngineBase

__all__ = ["EngineBase", "Mutex", "drive"]
