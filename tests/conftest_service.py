"""Service fixtures: a 3-shard LocalCluster per test session and a fresh
client (session) per test.

To run the shared Transaction suite (tests/test_transaction_api.py) against
the cluster from tests/conftest.py, add ``pytest_plugins = ["conftest_service"]``
and make the ``lm`` fixture's params ``BACKENDS + ["cluster"]`` with::

    if request.param == "cluster":
        return request.getfixturevalue("cluster_lm")

Until then tests/test_service_api.py runs that suite against the cluster by
importing its tests. Shards are started by the tests on 127.0.0.1 with free
ports and stopped by PID (LocalCluster.stop).
"""

import pytest

from lockmgr import LocalCluster


@pytest.fixture(scope="session")
def cluster():
    """A 3-shard LocalCluster (partition depth 2), shared by the test session."""
    with LocalCluster(3, partition_depth=2) as c:
        yield c


@pytest.fixture
def cluster_lm(cluster):
    """A Client of the shared cluster with ``begin``/``transaction``/``wait_for_graph``;
    closed after the test (the shards release whatever it still holds)."""
    client = cluster.connect(session_ttl=10.0, request_timeout=5.0)
    try:
        yield client
    finally:
        client.close()
