"""Messages dropped, duplicated and reordered between clients and shards.

Every request carries (session, seq) and is retried until answered, so
faults on the wire may slow the clients down but must never grant a lock
twice, lose a release, or let incompatible holds overlap. A Jepsen-style
history (hold intervals recorded inside the true holds, with their fencing
tokens) is checked as in test_service_faults.
"""

import random
import threading
import time

import pytest

from lockmgr import DeadlockDetected, LockError, LockTimeout, Mode, connect

from faultproxy import FaultProxy
from jepsen import check_history

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def cluster_options():
    return {"shards": 2, "partition_depth": 2}


@pytest.mark.slow
@pytest.mark.parametrize("seed,nowait", [(11, False), (12, False), (13, True)])
def test_history_under_drop_dup_reorder(cluster, seed, nowait):
    """(With ``nowait``, half the commits are ``commit(wait=False)``: their releases
    too must arrive despite the faults -- nothing may leak.)"""
    proxies = [FaultProxy(ep, seed=seed * 10 + i, drop=0.03, dup=0.05, delay=0.2)
               for i, ep in enumerate(cluster.endpoints)]
    try:
        endpoints = [p.endpoint for p in proxies]
        history, errors = [], []
        hl = threading.Lock()
        resources = [("db", "p", k) for k in range(3)] + [("pr",)]

        def client_loop(k):
            rnd = random.Random(seed * 100 + k)
            with connect(endpoints, session_ttl=10.0, request_timeout=2.0) as c:
                for _ in range(25):
                    t = c.begin()
                    r = rnd.choice(resources)
                    m = Mode.X if rnd.random() < 0.6 else Mode.S
                    try:
                        tok = t.lock(r, m, timeout=5)
                        start = time.monotonic()
                        time.sleep(rnd.random() * 0.002)
                        end = time.monotonic()
                        t.commit(wait=not (nowait and rnd.random() < 0.5))
                        with hl:
                            history.append((r, m, tok, start, end))
                    except (LockTimeout, DeadlockDetected):
                        t.abort()
                    except LockError as e:
                        errors.append(e)
                        t.abort()

        ths = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(120)
            assert not th.is_alive(), "a client hung"
        if errors:      # (what the proxies and shards saw, to tell a lost retry from a stall)
            with connect(cluster.endpoints) as c:
                keep = ("retries_answered", "errors", "dropped_replies", "internal_errors", "bad_requests")
                counters = [{k: v for k, v in st.items() if k in keep} for st in c.stats()]
            raise AssertionError(f"{errors[:3]}; proxies {[p.counts for p in proxies]}; shards {counters}")
        assert len(history) > 60
        faults = {k: sum(p.counts[k] for p in proxies) for k in ("dropped", "duplicated", "delayed")}
        assert all(v > 0 for v in faults.values()), faults   # the faults really happened
        check_history(history)
        # nothing leaked: every lock was released despite lost and repeated messages
        with connect(cluster.endpoints) as c:
            assert [row for row in c.snapshot() if row.resource[0] in ("db", "pr")] == []
    finally:
        for p in proxies:
            p.stop()
