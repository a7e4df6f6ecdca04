"""Lock modes and the two tables that give them meaning.

The conflict matrix and the conversion (supremum) table are data, kept here
once for Python; ``csrc/locktable.c`` holds the C copy and
``tests/test_modes.py`` proves the two equal.

Modes follow Gray et al.'s multiple-granularity locking:

====  ==  ==  ==  ===  ==
held  IS  IX  S   SIX  X
====  ==  ==  ==  ===  ==
IS    y   y   y   y    n
IX    y   y   n   n    n
S     y   n   y   n    n
SIX   y   n   n   n    n
X     n   n   n   n    n
====  ==  ==  ==  ===  ==

NL ("no lock") is compatible with everything.
"""

import enum

__all__ = ["Mode", "compatible", "supremum", "CONFLICTS", "SUPREMUM", "intention_for"]


class Mode(enum.IntEnum):
    """A lock mode. Values are stable and used on the wire."""

    NL = 0
    IS = 1
    IX = 2
    S = 3
    SIX = 4
    X = 5


NL, IS, IX, S, SIX, X = range(6)

# CONFLICTS[m] is a bitmask of the modes that conflict with m (bit k = mode k).
# Like PostgreSQL's LockConflicts[]: the code never spells a mode pair by hand.
CONFLICTS = (
    0,                                                      # NL
    (1 << X),                                               # IS
    (1 << S) | (1 << SIX) | (1 << X),                       # IX
    (1 << IX) | (1 << SIX) | (1 << X),                      # S
    (1 << IX) | (1 << S) | (1 << SIX) | (1 << X),           # SIX
    (1 << IS) | (1 << IX) | (1 << S) | (1 << SIX) | (1 << X),  # X
)

# SUPREMUM[a][b]: the least mode at least as strong as both a and b.
SUPREMUM = (
    # NL   IS   IX   S    SIX  X
    (NL,  IS,  IX,  S,   SIX, X),    # NL
    (IS,  IS,  IX,  S,   SIX, X),    # IS
    (IX,  IX,  IX,  SIX, SIX, X),    # IX
    (S,   S,   SIX, S,   SIX, X),    # S
    (SIX, SIX, SIX, SIX, SIX, X),    # SIX
    (X,   X,   X,   X,   X,   X),    # X
)

# The intention mode taken on every ancestor of a node locked in mode m.
INTENTION = (NL, IS, IX, IS, IX, IX)


def _mode(value: object, what: str) -> int:
    from .errors import InvalidRequest

    if type(value) is bool or not isinstance(value, int) or not 0 <= value <= 5:
        raise InvalidRequest(f"unknown lock mode {value!r} for {what}; expected a Mode (NL, IS, IX, S, SIX, X)")
    return int(value)


def compatible(held: int, requested: int) -> bool:
    """True if a lock in mode ``requested`` can be granted beside one in ``held``.

    Symmetric; NL is compatible with every mode.
    """
    return not (CONFLICTS[_mode(held, "held")] >> _mode(requested, "requested")) & 1


def supremum(a: int, b: int) -> Mode:
    """The least mode that covers both ``a`` and ``b`` (S with IX gives SIX)."""
    return Mode(SUPREMUM[_mode(a, "a")][_mode(b, "b")])


def intention_for(mode: int) -> Mode:
    """The intention mode taken on the ancestors of a node locked in ``mode``."""
    return Mode(INTENTION[_mode(mode, "mode")])
