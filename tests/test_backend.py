import os
import subprocess
import sys

import lockmgr
from lockmgr._core import available_backends


def test_compiled_backend_present_when_required():
    # CI sets LOCKMGR_REQUIRE_C=1: a silent fallback to pure Python must fail there.
    if os.environ.get("LOCKMGR_REQUIRE_C") == "1":
        assert "c" in available_backends()
        assert lockmgr.BACKEND == "c"
    assert "python" in available_backends()


def test_pure_python_run_uses_python_backend():
    # CI's second run sets LOCKMGR_PUREPYTHON=1: the default table must then be the pure-Python one.
    if os.environ.get("LOCKMGR_PUREPYTHON", "") not in ("", "0"):
        assert lockmgr.BACKEND == "python"


def test_env_var_forces_python_backend():
    out = subprocess.run(
        [sys.executable, "-c", "import lockmgr; print(lockmgr.BACKEND)"],
        env={**os.environ, "LOCKMGR_PUREPYTHON": "1"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "python"


def test_service_modules_compiled_when_required():
    # the service's hot modules are compiled from their .py sources (setup.py); CI's
    # first run requires them compiled, its pure-Python run requires the sources
    from lockmgr._compiled import COMPILED_PY, compiled_modules
    got = compiled_modules()
    assert sorted(got) == sorted(COMPILED_PY)
    if os.environ.get("LOCKMGR_PUREPYTHON", "") not in ("", "0"):
        assert not any(got.values()), got
    elif os.environ.get("LOCKMGR_REQUIRE_C") == "1":
        assert all(got.values()), got


def test_env_var_runs_the_service_modules_from_source():
    code = ("import lockmgr, lockmgr.service.shard.core as c, lockmgr.service.client.engine as e; "
            "print(c.__file__.endswith('.py'), e.__file__.endswith('.py'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LOCKMGR_PUREPYTHON": "1"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_public_api_names():
    for name in ["Mode", "compatible", "supremum", "LockError", "LockTimeout", "LockNotAvailable",
                 "DeadlockDetected", "TransactionAborted", "InvalidRequest", "LockManager",
                 "Transaction", "LockInfo"]:
        assert hasattr(lockmgr, name), name
