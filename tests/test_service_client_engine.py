"""The sync client's leader/follower engine (lockmgr.service.client.engine._Engine; docs/service.md
("Client")): an owner whose calls wait long (a lock wait) hands the sockets to a
newer caller, which then gets its answer without a thread hand-off; the owner
follows and is promoted back, and every call still completes."""

import pytest

from lockmgr import Mode

from helpers import Waiter, wait_until_waiting

pytestmark = pytest.mark.service


def test_long_waiting_owner_hands_the_sockets_to_newer_callers(cluster):
    shared = cluster.connect(request_timeout=5.0)
    other = cluster.connect(request_timeout=5.0)
    try:
        blocker = other.begin()
        blocker.lock(("eng", "hot", 1), Mode.X)
        waiter = shared.begin()
        hot = Waiter(lambda: waiter.lock(("eng", "hot", 1), Mode.X, timeout=20))
        # (each wait_for_graph call is itself a handed-over caller)
        wait_until_waiting(shared, waiter, timeout=5.0, poll=0.005)
        before = shared._eng.handoffs
        tokens = []
        for i in range(50):                                  # quick calls from another thread
            with shared.transaction() as t:
                tokens.append(t.lock(("eng", "quick", i), Mode.X))
        assert len(tokens) == 50 and all(tok > 0 for tok in tokens)
        assert shared._eng.handoffs > before                 # the long-waiting owner let go
        assert hot.is_alive() and not hot.done.is_set()      # still waiting, and still served:
        blocker.commit()
        assert hot.get(10) > 0
        waiter.commit()
        with shared.transaction() as t:                      # the engine is idle and usable
            t.lock(("eng", "after", 1), Mode.X, nowait=True)
    finally:
        shared.close()
        other.close()
