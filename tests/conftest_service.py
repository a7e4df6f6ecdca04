"""Service fixtures: a 3-shard LocalCluster per test session and a fresh
client (session) per test.

tests/conftest.py loads this file (``pytest_plugins``) and makes "cluster"
one of the ``lm`` fixture's targets, so the shared Transaction suite
(tests/test_transaction_api.py) runs against the cluster as well as against
the embedded manager on each backend. Shards are started by the tests on
127.0.0.1 with free ports and stopped by PID (LocalCluster.stop).
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
