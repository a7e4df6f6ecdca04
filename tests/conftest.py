"""Shared fixtures.

``backend`` runs a test once per table backend ("c", "python"), the way
msgpack runs its suite with and without the extension. ``lm`` gives a
lock-manager target with ``begin()``/``transaction()``; the service tests add
a cluster target to the same suite (tests/test_transaction_api.py).
"""

import time

import pytest

from lockmgr import LockManager
from lockmgr._core import available_backends, table_class

BACKENDS = available_backends()

pytest_plugins = ["conftest_service"]   # the cluster fixtures


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def Table(backend):
    return table_class(backend)


@pytest.fixture(params=BACKENDS + ["cluster"])
def lm(request):
    """The targets of the Transaction suite: an embedded LockManager on each
    backend, and a client of a 3-shard LocalCluster."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_lm")
    return LockManager(_backend=request.param)


def wait_until(pred, timeout=10.0, what="condition"):
    """Poll ``pred`` until true; bounded in time. Used only to observe that
    another thread has *started waiting* (there is no event for that)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def wait_until_waiting(lm, txn, timeout=10.0):
    """Block until transaction ``txn`` is queued for a lock in ``lm``."""
    if hasattr(lm, "wait_for_graph"):
        wait_until(lambda: txn.id in lm.wait_for_graph(), timeout, f"txn {txn.id} to wait")
    else:  # a target without introspection: it must provide its own hook
        lm.wait_until_waiting(txn, timeout)
