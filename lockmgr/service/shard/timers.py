"""The kinds of a shard's timers (a leaf module: the shard core and the
deadlock probes, lockmgr.service.probes, both arm them)."""

import enum
from typing import Any, NamedTuple

__all__ = ["TimerKind", "Timer"]


class TimerKind(enum.Enum):
    """What a timer is for. Entries of Shard._timers are (when, tick, kind, object)."""
    WAIT = "wait timeout"       # object: the _Wait (a lock wait's deadline; probes may defer it)
    LEASE = "session lease"     # object: the _Session
    PROBE = "probe"             # object: None (lockmgr/service/probes.py keeps one armed at a time)
    GRACE = "grace period"      # object: None (reclaim.py: the next lease deadline or the grace period's end)


class Timer(NamedTuple):
    """One entry of the core's timer list (a SortedList: ordered by ``when``, then
    ``tick``, which is unique, so ``kind`` and ``obj`` are never compared)."""
    when: float          # the core's clock (``ShardCore.now``) when it is due
    tick: int
    kind: TimerKind
    obj: Any
