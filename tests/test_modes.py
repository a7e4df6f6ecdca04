import itertools

import pytest

from lockmgr import InvalidRequest, Mode, compatible, supremum
from lockmgr.modes import CONFLICTS, SUPREMUM, intention_for

M = list(Mode)
NL, IS, IX, S, SIX, X = M

# Gray's matrix, written out independently of lockmgr.modes.
GRAY = {
    IS: {IS, IX, S, SIX},
    IX: {IS, IX},
    S: {IS, S},
    SIX: {IS},
    X: set(),
}


def test_mode_values():
    assert [(m.name, int(m)) for m in Mode] == [("NL", 0), ("IS", 1), ("IX", 2), ("S", 3), ("SIX", 4), ("X", 5)]


@pytest.mark.parametrize("a,b", list(itertools.product(M, M)))
def test_compatible_matches_gray(a, b):
    if a == NL or b == NL:
        assert compatible(a, b)
    else:
        assert compatible(a, b) == (b in GRAY[a])
    assert compatible(a, b) == compatible(b, a)


def _covers(a, b):
    """a is at least as strong as b: everything that conflicts with b conflicts with a."""
    return CONFLICTS[b] & ~CONFLICTS[a] == 0


@pytest.mark.parametrize("a,b", list(itertools.product(M, M)))
def test_supremum_is_least_upper_bound(a, b):
    s = supremum(a, b)
    assert s == supremum(b, a)
    assert _covers(s, a) and _covers(s, b)
    # least: no strictly weaker mode covers both
    for m in M:
        if _covers(m, a) and _covers(m, b):
            assert _covers(m, s)
    assert SUPREMUM[a][b] == s


def test_supremum_examples():
    assert supremum(S, IX) == SIX
    assert supremum(IS, IX) == IX
    assert supremum(SIX, S) == SIX
    assert supremum(NL, S) == S
    assert supremum(X, IS) == X
    assert isinstance(supremum(S, IX), Mode)


def test_intention():
    assert [intention_for(m) for m in (IS, IX, S, SIX, X)] == [IS, IX, IS, IX, IX]


@pytest.mark.parametrize("bad", [6, -1, "X", None, 1.0, True])
def test_bad_modes(bad):
    with pytest.raises(InvalidRequest, match="mode"):
        compatible(bad, S)
    with pytest.raises(InvalidRequest, match="mode"):
        supremum(S, bad)
    with pytest.raises(ValueError):
        supremum(bad, S)
