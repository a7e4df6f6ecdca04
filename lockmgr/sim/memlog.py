"""The prepare log's in-memory twin, for the simulation (lockmgr/sim).

Interface:
    Disk()                          what survives a crash: the records fsynced so far, the epoch
    MemoryLog(disk)                 opens ``disk`` as PrepareLog opens a data directory: bumps
                                    the epoch, replays the records (PrepareLog._replay)
        .submit(record) -> Ticket   queued; durable only at the driver's ``flush()``
        .flush() -> [Ticket]        the simulated fsync: the queue reaches ``disk``
        .pending                    True while records wait for a flush
        (and what the shard core reads of a PrepareLog: live, resolved, sessions, ended, epoch,
        live_records(), live_sessions(), fsyncs, compactions, truncated_at, close())

A crash is dropping the MemoryLog without a flush: what was queued is lost,
exactly what an un-fsynced write loses; what reached ``disk`` is replayed by
the next MemoryLog(disk). The replay and the record semantics are
PrepareLog's own code, so the simulated shard restores what a real one would.
"""

from typing import Any, Dict, List

from ..wal import PrepareLog, Ticket

__all__ = ["Disk", "MemoryLog"]


class Disk:
    """The durable state of one shard's data directory."""

    __slots__ = ("records", "epoch")

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self.epoch = 0


class MemoryLog(PrepareLog):
    """A PrepareLog whose file is a Disk and whose fsync is the driver's flush()."""

    def __init__(self, disk: Disk) -> None:      # (no file, no thread, no data-dir lock)
        self.disk = disk
        disk.epoch += 1
        self.epoch = disk.epoch
        self.dir = self.path = "<memory>"
        self.truncated_at = None
        self._on_durable = None
        self._replay(list(disk.records))
        self._live_bytes = 0
        self._size = 0
        self._queue: List[Ticket] = []
        self._closed = False
        self._lock_fd = None
        self.fsyncs = 0
        self.compactions = 0
        self.on_fsync = None

    def submit(self, record: Dict[str, Any]) -> Ticket:
        t = Ticket(record)
        self._queue.append(t)
        return t

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def flush(self) -> List[Ticket]:
        batch, self._queue = self._queue, []
        if not batch:
            return batch
        self.disk.records.extend(t.record for t in batch)
        self.fsyncs += 1
        self._apply(batch)
        for t in batch:
            t._event.set()
        return batch

    def live_records(self) -> Dict[str, Dict[str, Any]]:
        return dict(self.live)

    def live_sessions(self) -> Dict[int, Dict[str, Any]]:
        return dict(self.sessions)

    def close(self) -> None:
        self._closed = True
