"""Argument checks shared by the embedded manager, the table twin and the
clients (one home for each rule and its message). A leaf module: it imports
only lockmgr.errors."""

import reprlib
from typing import Optional

from .errors import InvalidRequest

__all__ = ["brief", "check_mode", "check_timeout"]

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


def check_timeout(timeout: object) -> Optional[float]:
    """None or a number of seconds >= 0, as a float; InvalidRequest otherwise."""
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)) or timeout != timeout or timeout < 0:
        raise InvalidRequest(f"timeout must be None or a number of seconds >= 0; got {brief(timeout)}")
    return float(timeout)
