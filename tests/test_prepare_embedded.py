"""Durable prepare in the embedded LockManager (data_dir=)."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from lockmgr import InvalidRequest, LockManager, LockNotAvailable, Mode, TransactionAborted
from lockmgr.wal import LOG_NAME

X, S = Mode.X, Mode.S


def test_prepare_without_data_dir_only_marks(backend):
    m = LockManager(_backend=backend)
    t = m.begin()
    t.lock(("db", "a", 1))
    t.prepare()
    assert t.state == "prepared"
    with pytest.raises(InvalidRequest, match="prepared"):
        t.lock(("db", "a", 2))
    with pytest.raises(InvalidRequest, match="prepared"):
        t.unlock(("db", "a", 1))
    assert not m.begin().try_lock(("db", "a", 1))
    t.commit()
    assert m.begin().try_lock(("db", "a", 1))
    with pytest.raises(TransactionAborted):
        t.prepare()


def test_prepared_locks_survive_restart(tmp_path, backend):
    m = LockManager(data_dir=tmp_path, _backend=backend)
    g = m.begin(gtrid="xfer-1")
    tok = g.lock(("bank", "acct", 1), X)
    g.lock(("bank", "acct", 2), X)
    g.prepare()
    u = m.begin()
    u.lock(("bank", "acct", 3), X)           # unprepared: gone after the restart
    with pytest.raises(InvalidRequest, match="gtrid"):
        m.begin().prepare()                  # with a data_dir a gtrid is needed
    m.close()                                # "crash": nothing resolved

    m2 = LockManager(data_dir=tmp_path, _backend=backend)
    assert m2.recover() == ["xfer-1"]
    [info] = m2.indoubt()
    assert info["locks"][("bank", "acct", 1)] == X and info["locks"][("bank",)] == Mode.IX
    o = m2.begin()
    assert o.id > info["txn"]                # ids continue above the restored ones
    with pytest.raises(LockNotAvailable):
        o.lock(("bank", "acct", 1), S, nowait=True)
    assert o.try_lock(("bank", "acct", 3), X)   # the unprepared lock is gone
    t2 = o.lock(("bank", "acct", 4), X)
    assert t2 > tok                              # tokens keep increasing across restarts
    m2.resolve("xfer-1", True)
    assert m2.recover() == []
    assert o.try_lock(("bank", "acct", 1), X)
    m2.resolve("xfer-1", True)                   # idempotent
    with pytest.raises(InvalidRequest, match="already committed"):
        m2.resolve("xfer-1", False)
    with pytest.raises(InvalidRequest, match="unknown gtrid"):
        m2.resolve("nope", True)
    o.commit()
    m2.close()
    m3 = LockManager(data_dir=tmp_path, _backend=backend)
    assert m3.recover() == []                    # the resolution was durable
    m3.close()


def test_abort_of_prepared_is_logged(tmp_path):
    with LockManager(data_dir=tmp_path) as m:
        t = m.begin(gtrid="g")
        t.lock("r")
        t.prepare()
        t.abort()
        assert t.state == "aborted"
    with LockManager(data_dir=tmp_path) as m:
        assert m.recover() == []


def test_gtrid_validation(tmp_path):
    m = LockManager()
    m.begin(gtrid="a")
    with pytest.raises(InvalidRequest, match="already in use"):
        m.begin(gtrid="a")
    # one rule with the service (lockmgr.rules.check_gtrid): str or bytes, 1..256 long
    m.begin(gtrid=b"bytes-gtrid").abort()
    for bad in ("", 5, b"", 3.5, "x" * 300):
        with pytest.raises(InvalidRequest, match="gtrid"):
            m.begin(gtrid=bad)
    with pytest.raises(InvalidRequest, match="commit"):
        m.resolve("a", "yes")


def test_group_commit_many_preparers(tmp_path):
    with LockManager(data_dir=tmp_path) as m:
        n = 32
        barrier = threading.Barrier(n)

        def work(i):
            t = m.begin(gtrid=f"g{i}")
            t.lock(("t", i))
            barrier.wait()
            t.prepare()

        ths = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(30)
        assert len(m.recover()) == n
        assert m._log.fsyncs < n
        for g in m.recover():
            m.resolve(g, False)


CHILD = r"""
import sys, threading
from lockmgr import LockManager
m = LockManager(data_dir=sys.argv[1])
start = int(sys.argv[2])
out = threading.Lock()
def work(k):
    i = 0
    while True:
        g = f"p{start}-{k}-{i}"
        t = m.begin(gtrid=g)
        for j in range(5):
            t.lock(("acct", start, k, i, j))
        t.prepare()
        with out:
            print(g, flush=True)
        i += 1
for k in range(4):
    threading.Thread(target=work, args=(k,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_during_prepares(tmp_path, seed):
    import random
    rnd = random.Random(seed)
    acked = set()
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(round_)],
                             stdout=subprocess.PIPE, text=True)
        try:
            target = rnd.randint(1, 30)
            deadline = time.monotonic() + 20
            got = 0
            while got < target and time.monotonic() < deadline:
                if not select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                line = p.stdout.readline()
                if not line:
                    break
                acked.add(line.strip())
                got += 1
        finally:  # stopped by its PID whatever happens above
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
        assert got > 0, "the child acknowledged no prepare"
        with LockManager(data_dir=tmp_path) as m:
            rec = set(m.recover())
            assert acked <= rec                       # no acknowledged prepare lost
            for info in m.indoubt():                  # none half there: 5 rows + 4 ancestors each
                assert len(info["locks"]) == 9, info
    assert os.path.exists(os.path.join(tmp_path, LOG_NAME))


def test_bad_data_dir(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(InvalidRequest, match="data_dir"):
        LockManager(data_dir=42)
    with pytest.raises(InvalidRequest, match="data_dir"):
        LockManager(data_dir=f)
    assert f.read_text() == "x"              # nothing changed
