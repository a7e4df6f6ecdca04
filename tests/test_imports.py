"""``import lockmgr`` loads only the embedded side; the service loads on first use.

Each check runs in a fresh interpreter: this test process has long since
imported zmq and the clients (the service fixtures do).
"""

import json
import os
import subprocess
import sys

import pytest

SERVICE_MODULES = ["zmq", "msgpack", "asyncio", "lockmgr.aio", "lockmgr.service",
                   "lockmgr.wal", "lockmgr.cli"]


def _run(code, **env):
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("pure", ["0", "1"], ids=["default-backend", "python-backend"])
def test_embedded_use_imports_no_service_module(pure):
    loaded = _run(
        "import sys, json, lockmgr\n"
        "mgr = lockmgr.LockManager()\n"
        "with mgr.transaction() as t:\n"
        "    t.lock(('db', 1), lockmgr.Mode.X)\n"
        "    t.try_lock(('db', 2), lockmgr.Mode.S)\n"
        "    t.held()\n"
        "mgr.snapshot(); mgr.stats()\n"
        f"print(json.dumps([m for m in {SERVICE_MODULES!r} if m in sys.modules]))\n",
        LOCKMGR_PUREPYTHON=pure)
    assert loaded == []


def test_every_public_name_resolves():
    res = _run(
        "import json, lockmgr\n"
        "missing = [n for n in lockmgr.__all__ if getattr(lockmgr, n, None) is None]\n"
        "missing += [n for n in lockmgr.__all__ if n not in dir(lockmgr)]\n"
        "ns = {}\n"
        "exec('from lockmgr import ' + ', '.join(lockmgr.__all__), ns)\n"
        "import lockmgr.service.client.sync as sync, lockmgr.aio, lockmgr.service.cluster, lockmgr.service.wire\n"
        "import lockmgr.errors\n"
        "same = [lockmgr.connect is sync.connect, lockmgr.Client is sync.Client,\n"
        "        lockmgr.LocalCluster is lockmgr.service.cluster.LocalCluster, lockmgr.aio is ns['aio'],\n"
        "        lockmgr.SessionExpired is lockmgr.service.wire.SessionExpired is lockmgr.errors.SessionExpired,\n"
        "        lockmgr.ShardUnavailable is lockmgr.service.wire.ShardUnavailable\n"
        "        is lockmgr.errors.ShardUnavailable,\n"
        "        issubclass(lockmgr.SessionExpired, lockmgr.LockError)]\n"
        "print(json.dumps([missing, same]))\n")
    missing, same = res
    assert missing == []
    assert all(same), same


def test_lazy_names_load_on_first_use():
    res = _run(
        "import sys, json, lockmgr\n"
        "before = 'lockmgr.aio' in sys.modules or 'zmq' in sys.modules\n"
        "connect = lockmgr.aio.connect      # import lockmgr, then lockmgr.aio.connect\n"
        "after = ['lockmgr.aio' in sys.modules, 'lockmgr.service.client.sync' in sys.modules, callable(connect)]\n"
        "try:\n"
        "    lockmgr.no_such_name\n"
        "    err = None\n"
        "except AttributeError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps([before, after, err]))\n")
    before, after, err = res
    assert before is False
    assert after == [True, True, True]
    assert "no_such_name" in err
