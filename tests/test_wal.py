"""The prepare log: replay, group commit, torn tails, corruption, compaction, crashes."""

import logging
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from lockmgr.wal import LOG_NAME, CorruptLog, PrepareLog, read_log


def prep(gtrid, n=2):
    return {"t": "prepare", "gtrid": gtrid, "txn": 7, "locks": [[b"\x01\x00\x01k", 5, i + 1] for i in range(n)]}


def test_replay_and_resolve(tmp_path):
    with PrepareLog(str(tmp_path)) as w:
        assert w.epoch == 1 and w.live == {}
        w.append_sync(prep("a"))
        w.append_sync(prep("b"))
        w.append_sync({"t": "resolve", "gtrid": "a", "commit": True})
        assert set(w.live_records()) == {"b"}
    with PrepareLog(str(tmp_path)) as w:
        assert w.epoch == 2
        assert set(w.live) == {"b"}
        assert w.live["b"]["locks"][1] == [b"\x01\x00\x01k", 5, 2]


def test_group_commit_shares_fsyncs(tmp_path):
    with PrepareLog(str(tmp_path)) as w:
        n = 64
        barrier = threading.Barrier(16)

        def worker(k):
            barrier.wait()
            for i in range(n // 16):
                w.append_sync(prep(f"g{k}-{i}"))

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(30)
        assert len(w.live_records()) == n
        assert w.fsyncs < n  # some prepares shared an fsync
    with PrepareLog(str(tmp_path)) as w:
        assert len(w.live) == n


def test_torn_tail_is_cut(tmp_path, caplog):
    with PrepareLog(str(tmp_path)) as w:
        for i in range(5):
            w.append_sync(prep(f"t{i}"))
    path = os.path.join(tmp_path, LOG_NAME)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 3)  # the last record loses its end
    with caplog.at_level(logging.WARNING, logger="lockmgr.wal"):
        with PrepareLog(str(tmp_path)) as w:
            assert set(w.live) == {f"t{i}" for i in range(4)}
            assert w.truncated_at is not None
            w.append_sync(prep("after"))
    assert "torn tail" in caplog.text
    with PrepareLog(str(tmp_path)) as w:  # the cut log takes appends cleanly
        assert set(w.live) == {f"t{i}" for i in range(4)} | {"after"}


def test_zero_filled_tail_is_torn_not_corrupt(tmp_path):
    with PrepareLog(str(tmp_path)) as w:
        w.append_sync(prep("a"))
    with open(os.path.join(tmp_path, LOG_NAME), "ab") as f:
        f.write(b"\x00" * 4096)
    with PrepareLog(str(tmp_path)) as w:
        assert set(w.live) == {"a"}


@pytest.mark.parametrize("where", ["payload", "length"])
def test_flipped_byte_in_the_middle_stops(tmp_path, where):
    with PrepareLog(str(tmp_path)) as w:
        for i in range(5):
            w.append_sync(prep(f"m{i}"))
    path = os.path.join(tmp_path, LOG_NAME)
    data = bytearray(open(path, "rb").read())
    rec = len(data) // 5
    off = rec + (20 if where == "payload" else 4)   # inside the second record
    data[off] ^= 0x40
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptLog, match="damaged record"):
        PrepareLog(str(tmp_path))
    with pytest.raises(CorruptLog):
        read_log(path)


def test_compaction_bounds_the_log(tmp_path):
    with PrepareLog(str(tmp_path), compact_bytes=20_000) as w:
        for i in range(2000):
            w.append_sync(prep(f"c{i}"))
            if i % 10:
                w.append_sync({"t": "resolve", "gtrid": f"c{i}", "commit": bool(i % 2)})
        assert w.compactions > 0
        assert os.path.getsize(w.path) < 40_000
        live = set(w.live_records())
    assert live == {f"c{i}" for i in range(0, 2000, 10)}
    with PrepareLog(str(tmp_path)) as w:
        assert set(w.live) == live


CHILD = r"""
import sys
from lockmgr.wal import PrepareLog
w = PrepareLog(sys.argv[1])
i = 0
while True:
    w.append_sync({"t": "prepare", "gtrid": f"k{i}", "txn": i, "locks": [[b"x" * 50, 5, i]] * 20})
    print(i, flush=True)   # acknowledged: durable
    i += 1
"""


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_never_loses_an_acknowledged_prepare(tmp_path, seed):
    rnd = random.Random(seed)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        acked = set()
        try:
            deadline = time.monotonic() + 10
            target = rnd.randint(1, 40)
            while len(acked) < target and time.monotonic() < deadline:
                if not select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                line = p.stdout.readline()
                if not line:
                    break
                acked.add(f"k{line.split()[0]}")
            time.sleep(rnd.random() * 0.01)
        finally:  # stopped by its PID whatever happens above
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
        assert acked, "the child acknowledged nothing"
        with PrepareLog(str(tmp_path)) as w:
            assert acked <= set(w.live)       # every acknowledged prepare is there
            for r in w.live.values():         # and every record is whole
                assert len(r["locks"]) == 20
