"""The rules shared by the embedded manager, the table twin, the shards and the
clients: one home for each rule and its message. A leaf module: it imports
only lockmgr.errors, lockmgr.modes and lockmgr.paths.

    check_mode, check_timeout, check_timeout_ms, check_txn_id, check_gtrid
    brief(value)                  a bounded quote of a bad value for a message
    ACTIVE, PREPARED, COMMITTED, ABORTED    transaction states
    LockInfo                      one request in a lock table (snapshot rows)
    EPOCH_BITS, token_epoch()     the fencing token layout: epoch << 40 | counter
    choose_victim(cycle)          the deadlock victim: the youngest (largest id)
    RESOLVED_MEMORY               resolved gtrids remembered for idempotent resolve
"""

import reprlib
from typing import Iterable, NamedTuple, Optional, Union

from .errors import InvalidRequest
from .modes import Mode
from .paths import Path

__all__ = ["brief", "check_mode", "check_timeout", "check_timeout_ms", "check_txn_id", "check_gtrid",
           "ACTIVE", "PREPARED", "COMMITTED", "ABORTED", "PREPARING", "DECIDING", "LockInfo", "EPOCH_BITS",
           "token_epoch", "choose_victim", "check_wait", "RESOLVED_MEMORY", "MAX_TIMEOUT_MS", "MAX_GTRID", "Gtrid"]

Gtrid = Union[str, bytes]     # a global (2PC) transaction id

# -- transaction states (the embedded Transaction, the clients' and the shards' txns)
ACTIVE = "active"
PREPARED = "prepared"
COMMITTED = "committed"
ABORTED = "aborted"
# a shard's transaction between those, while its prepare / decision is being logged
PREPARING = "preparing"
DECIDING = "deciding"

# -- fencing tokens: epoch << EPOCH_BITS | grants in this epoch (the epoch is bumped,
# durably, at every start of a shard or of a manager with a data_dir)
EPOCH_BITS = 40

RESOLVED_MEMORY = 100_000     # resolved gtrids remembered for an idempotent resolve / DECIDE
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_GTRID = 256
_TXN_LIMIT = 1 << 64


class LockInfo(NamedTuple):
    """One request in the lock table (like a row of pg_locks).

    ``resource`` is the path tuple, ``txn`` the transaction id, ``mode`` the
    granted mode (``granted=True``) or the mode waited for (``granted=False``).
    A holder waiting to convert shows as two rows."""

    resource: Path
    txn: int
    mode: Mode
    granted: bool


def token_epoch(token: int) -> int:
    """The epoch a fencing token was granted in."""
    return token >> EPOCH_BITS


def choose_victim(cycle: Iterable[int]) -> int:
    """The deadlock victim of a wait-for cycle: its youngest transaction (the
    largest id; ids grow with begin time on every client). Every detector --
    the embedded manager, a shard's local search, the cross-shard probes --
    picks the same one, so each cycle loses exactly one transaction."""
    return max(cycle)

_brief = reprlib.Repr()
_brief.maxlevel = 2
_brief.maxlist = _brief.maxtuple = _brief.maxdict = _brief.maxset = 4
_brief.maxstring = _brief.maxother = 60
_brief.maxlong = 40


def brief(value: object) -> str:
    """A bounded description of ``value`` for an error message: its repr cut to
    a prefix, plus the size of a long container or string. Costs O(1) however
    large the value is (an error must not echo, or spend time on, a 4 MiB argument)."""
    r = _brief.repr(value)
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) > _brief.maxstring:
            return f"{r} ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    elif isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > _brief.maxlist:
        return f"{r} ({len(value)} elements)"
    return r


def check_mode(mode: object) -> int:
    """A mode that can be requested (IS..X) as an int; InvalidRequest otherwise."""
    if type(mode) is bool or not isinstance(mode, int) or not 1 <= mode <= 5:
        raise InvalidRequest(f"unknown lock mode {brief(mode)}; expected one of Mode.IS, IX, S, SIX, X")
    return int(mode)


def check_txn_id(tid: object) -> int:
    """A transaction id as the wire carries it: an int in 1..2**64-1."""
    if type(tid) is not int or not 0 < tid < _TXN_LIMIT:
        raise InvalidRequest(f"transaction id must be an int in 1..2**64-1; got {brief(tid)}")
    return tid


def check_gtrid(gtrid: object) -> Gtrid:
    """A global (2PC) transaction id: a non-empty str or bytes of at most 256."""
    if type(gtrid) not in (str, bytes) or not gtrid or len(gtrid) > MAX_GTRID:  # type: ignore[arg-type]
        raise InvalidRequest(f"gtrid must be a non-empty str or bytes of at most {MAX_GTRID} characters; "
                             f"got {brief(gtrid)}")
    return gtrid  # type: ignore[return-value]


def check_wait(wait: object) -> bool:
    """The ``wait`` keyword of commit / abort / unlock: True or False."""
    if wait is not True and wait is not False:
        raise InvalidRequest(f"wait must be True or False; got {brief(wait)}")
    return wait


def check_timeout_ms(t: object) -> Optional[int]:
    """A lock wait's timeout as the wire carries it: nil or an int of ms in 0..MAX_TIMEOUT_MS."""
    if t is None:
        return None
    if type(t) is not int or not 0 <= t <= MAX_TIMEOUT_MS:
        raise InvalidRequest(f"timeout_ms must be nil or an int in 0..{MAX_TIMEOUT_MS}; got {brief(t)}")
    return t


def check_timeout(timeout: object) -> Optional[float]:
    """None or a number of seconds >= 0, as a float; InvalidRequest otherwise."""
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout != timeout or timeout < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0; got {brief(timeout)}")
    return float(timeout)
