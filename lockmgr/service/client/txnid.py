"""Transaction ids of the service clients.

Interface:
    new_txn_id() -> int     unique with high probability, ordered by begin time

40 bits of milliseconds since 2020-01-01, an 8-bit per-process counter (a
full counter borrows the next millisecond), a 16-bit random process tag
(re-drawn after fork). docs/service.md ("Transactions in the client").
"""

import os
import random
import time

from .hot import Mutex as _Mutex

_ID_EPOCH_MS = 1577836800000          # 2020-01-01T00:00:00Z
_ID_COUNTER_BITS = 8
_ID_TAG_BITS = 16
_id_lock = _Mutex()
_id_ms = 0                            # the last id's ms
_id_ctr = 0                           # and counter
_id_tag = random.SystemRandom().getrandbits(_ID_TAG_BITS)
_time = time.time              # (a module global: no attribute lookup on the time module per id)


def _reseed_after_fork():
    global _id_tag, _id_lock
    _id_lock = _Mutex()
    _id_tag = random.SystemRandom().getrandbits(_ID_TAG_BITS)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def new_txn_id():
    """A unique 64-bit id ordered by begin time: 40 bits of ms since 2020, an
    8-bit per-process counter, a 16-bit random process tag. Strictly increasing
    within a process (a full counter borrows the next millisecond)."""
    global _id_ms, _id_ctr
    lock = _id_lock
    lock.acquire()      # (not ``with``: its method lookups cost more than the work here)
    try:
        ms = int(_time() * 1000) - _ID_EPOCH_MS
        if ms <= _id_ms:
            ms = _id_ms
            ctr = _id_ctr + 1
            if ctr >> _ID_COUNTER_BITS:
                ms += 1
                ctr = 0
        else:
            ctr = 0
        _id_ms = ms
        _id_ctr = ctr
        return (ms << (_ID_COUNTER_BITS + _ID_TAG_BITS)) | (ctr << _ID_TAG_BITS) | _id_tag
    finally:
        lock.release()
