"""A data directory has one owner: the shard (or embedded manager) whose
prepare log holds the flock on ``LOCK`` (lockmgr/wal.py, "Ownership")."""

import os
import subprocess
import sys

import pytest

from lockmgr.service.shard.server import Shard
from lockmgr.wal import DataDirInUse, PrepareLog


def test_second_prepare_log_on_one_dir_is_refused_and_changes_nothing(tmp_path):
    d = str(tmp_path)
    first = PrepareLog(d)
    try:
        with open(os.path.join(d, "epoch")) as f:
            epoch = f.read()
        with pytest.raises(DataDirInUse, match=f"in use by another process \\(pid {os.getpid()}"):
            PrepareLog(d)
        with open(os.path.join(d, "epoch")) as f:
            assert f.read() == epoch          # the refused open did not bump the epoch
    finally:
        first.close()
    again = PrepareLog(d)                     # closed: the directory is free again
    assert again.epoch == first.epoch + 1
    again.close()


def test_second_serve_on_one_data_dir_exits_with_a_clear_error(tmp_path):
    d = str(tmp_path / "data")
    shard = Shard("tcp://127.0.0.1:0", d)
    try:
        p = subprocess.run([sys.executable, "-m", "lockmgr", "serve", "--endpoint", "tcp://127.0.0.1:0",
                            "--data-dir", d], capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        assert "in use by another process" in p.stderr and str(os.getpid()) in p.stderr, p.stderr
        assert shard.epoch == 1
    finally:
        shard.close()


def test_lock_is_released_when_the_owner_dies(tmp_path):
    """A SIGKILLed owner leaves no stale lock (the kernel drops a dead process's flocks)."""
    d = str(tmp_path)
    code = "import os, sys; from lockmgr.wal import PrepareLog; PrepareLog(sys.argv[1]); os._exit(0)"
    subprocess.run([sys.executable, "-c", code, d], check=True, timeout=60)
    PrepareLog(d).close()
