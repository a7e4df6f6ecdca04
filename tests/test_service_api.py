"""The embedded Transaction suite (tests/test_transaction_api.py), run against a
3-shard LocalCluster: one suite, two targets. The tests are imported so that
this module's ``lm`` fixture (a cluster client) applies to them."""

import pytest

from conftest_service import cluster, cluster_lm  # noqa: F401  (fixtures)
from test_transaction_api import *  # noqa: F401,F403  (the shared tests)


@pytest.fixture
def lm(cluster_lm):  # noqa: F811
    return cluster_lm
