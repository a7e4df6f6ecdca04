"""The tests' fixtures (plain helpers are in tests/helpers.py; no test imports
this file).

``backend`` runs a test once per table backend ("c", "python"), the way
msgpack runs its suite with and without the extension; ``Table`` is that
backend's table class. ``lm`` gives a lock-manager target with
``begin()``/``transaction()``: an embedded LockManager on each backend and a
client of a 3-shard LocalCluster (and one with lock caching on), so the
Transaction suite (tests/test_transaction_api.py) runs against every way of
running.

``cluster`` is a LocalCluster per test module, started on 127.0.0.1 with free
ports and stopped by PID (LocalCluster.stop). Its arguments come from the
``cluster_options`` fixture: 3 shards at partition depth 2 unless a module
overrides that fixture. Tests that start shards are marked ``service``;
those that take more than a few seconds, ``slow`` (pyproject.toml).
"""

import pytest

from lockmgr import LocalCluster, LockManager
from lockmgr._core import table_class

from helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def Table(backend):
    return table_class(backend)


# ------------------------------------------------------------------ service

@pytest.fixture(scope="module")
def cluster_options():
    """LocalCluster arguments for the module's ``cluster``; override in a module to change them."""
    return {"shards": 3, "partition_depth": 2}


@pytest.fixture(scope="module")
def cluster(cluster_options):
    """A LocalCluster shared by the tests of one module (see ``cluster_options``)."""
    with LocalCluster(**cluster_options) as c:
        yield c


@pytest.fixture
def cluster_lm(cluster):
    """A Client of the module's cluster with ``begin``/``transaction``/``wait_for_graph``;
    closed after the test (the shards release whatever it still holds)."""
    client = cluster.connect(session_ttl=10.0, request_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def cluster_cached_lm(cluster):
    """As ``cluster_lm``, with lock caching on (docs/service.md, "Lock caching")."""
    client = cluster.connect(session_ttl=10.0, request_timeout=5.0, cache_locks=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=BACKENDS + [pytest.param("cluster", marks=pytest.mark.service),
                                   pytest.param("cluster-cached", marks=pytest.mark.service)])
def lm(request):
    """The targets of the Transaction suite: an embedded LockManager on each
    backend, a client of a 3-shard LocalCluster, and one that caches locks."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_lm")
    if request.param == "cluster-cached":
        return request.getfixturevalue("cluster_cached_lm")
    return LockManager(_backend=request.param)
