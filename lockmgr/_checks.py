"""Argument checks shared by the embedded manager, the table twin and the
clients (one home for each rule and its message). A leaf module: it imports
only lockmgr.errors."""

from typing import Optional

from .errors import InvalidRequest

__all__ = ["check_mode", "check_timeout"]


def check_mode(mode: object) -> int:
    """A mode that can be requested (IS..X) as an int; InvalidRequest otherwise."""
    if type(mode) is bool or not isinstance(mode, int) or not 1 <= mode <= 5:
        raise InvalidRequest(f"unknown lock mode {mode!r}; expected one of Mode.IS, IX, S, SIX, X")
    return int(mode)


def check_timeout(timeout: object) -> Optional[float]:
    """None or a number of seconds >= 0, as a float; InvalidRequest otherwise."""
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout != timeout or timeout < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0; got {timeout!r}")
    return float(timeout)
