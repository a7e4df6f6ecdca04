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


def test_public_api_names():
    for name in ["Mode", "compatible", "supremum", "LockError", "LockTimeout", "LockNotAvailable",
                 "DeadlockDetected", "TransactionAborted", "InvalidRequest", "LockManager",
                 "Transaction", "LockInfo"]:
        assert hasattr(lockmgr, name), name
