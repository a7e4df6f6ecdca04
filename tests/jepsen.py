"""The history check shared by the Jepsen-style service tests."""

from lockmgr import compatible


def check_history(history):
    """``history``: (resource, mode, token, start, end) hold intervals recorded
    inside the true holds. No two incompatible holds overlap on a resource, and
    of two incompatible holds the later one has the larger token. Returns the
    holds grouped by resource, each sorted by start."""
    by_res = {}
    for h in history:
        by_res.setdefault(h[0], []).append(h)
    for r, hs in by_res.items():
        hs.sort(key=lambda h: h[3])
        for i, a in enumerate(hs):
            for b in hs[i + 1:]:
                if compatible(a[1], b[1]):
                    continue
                assert b[3] >= a[4], f"incompatible holds overlap on {r}: {a} and {b}"
                assert b[2] > a[2], f"token went backwards on {r}: {a} then {b}"
    return by_res
