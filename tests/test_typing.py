"""The embedded API type-checks under ``mypy --strict``.

A user's script (below) is checked the way mypy checks code against an
installed, typed package: lockmgr's own modules are analysed for their types,
their internal errors are not the user's (``follow_imports = silent``). The
embedded modules are then checked themselves, strictly. A second script with
deliberate mistakes proves the check has teeth (the API is not all ``Any``).

mypy is in the ``test`` extra; without it this test fails, it does not skip.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import lockmgr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lockmgr.__file__)))

# the modules of the embedded side, checked with --strict as they are
STRICT_MODULES = ["__init__.py", "errors.py", "modes.py", "paths.py", "embedded/manager.py", "service/reports.py",
                  "rules.py",
                  "_core/__init__.py"]

USER_SCRIPT = '''
from typing import Dict, List, Optional

import lockmgr
from lockmgr import (DeadlockDetected, LockError, LockInfo, LockManager, LockNotAvailable, LockTimeout, Mode,
                     Resource, Transaction)
from lockmgr.paths import Path


def transfer(mgr: LockManager, src: int, dst: int) -> List[int]:
    tokens: List[int] = []
    with mgr.transaction(name="transfer") as t:
        tokens.append(t.lock(("db", "accounts", src), Mode.X, timeout=1.5))
        tokens.append(t.lock(("db", "accounts", dst), Mode.X, nowait=True))
        tokens += t.lock_many([(("db", "log"), Mode.IX), ("audit", Mode.S)], timeout=None)
        held: Dict[Path, Mode] = t.held()
        assert held[("db",)] is Mode.IX
    return tokens


def probe(t: Transaction, resource: Resource) -> Optional[bool]:
    try:
        return t.try_lock(resource, Mode.S)
    except LockNotAvailable:
        return None
    except (LockTimeout, DeadlockDetected) as e:
        print(e)
        return False
    except LockError:
        raise


def main() -> None:
    with LockManager(deadlock_detection=True, escalation_threshold=100, default_timeout=2.0) as mgr:
        print(transfer(mgr, 1, 2))
        t = mgr.begin("reader")
        ok = probe(t, b"blob")
        t.unlock(b"blob") if ok else None
        state: str = t.state
        txn_id: int = t.id
        t.commit()
        rows: List[LockInfo] = mgr.snapshot()
        for row in rows:
            print(row.resource, row.txn, row.mode.name, row.granted)
        graph: Dict[int, set[int]] = mgr.wait_for_graph()
        counters: Dict[str, int] = mgr.stats()
        print(state, txn_id, graph, counters["granted"], lockmgr.compatible(Mode.IS, Mode.IX),
              lockmgr.supremum(Mode.S, Mode.IX).name, lockmgr.BACKEND)


def stop(cluster: lockmgr.LocalCluster) -> List[Optional[int]]:
    pids = cluster.pids
    cluster.stop()
    return pids


if __name__ == "__main__":
    main()
'''

# the service's public API (sync, asyncio, LocalCluster): type-checked with --strict
SERVICE_SCRIPT = '''
import asyncio
from typing import Dict, List, Optional

import lockmgr
import lockmgr.aio
from lockmgr import Client, LocalCluster, LockInfo, Mode, Resource, SessionExpired, ShardUnavailable
from lockmgr.service.client.sync import Transaction


def move(t: Transaction, src: Resource, dst: Resource) -> List[int]:
    tokens: List[int] = t.lock_many([(src, Mode.X), (dst, Mode.X)], timeout=1.0)
    held: Dict[lockmgr.paths.Path, Mode] = t.held()
    return tokens + [len(held)]


def run(client: Client) -> Optional[int]:
    with client.transaction(name="move") as t:
        token: int = t.lock(("db", "acct", 1), Mode.X, timeout=2.0)
        ok: bool = t.try_lock(("db", "acct", 2))
        if not ok:
            return None
        move(t, ("db", "acct", 3), ("db", "acct", 4))
    t2 = client.begin(gtrid=f"x-{client.session_id}")
    t2.lock(("db", "acct", 5))
    t2.prepare()
    t2.commit()
    rows: List[LockInfo] = client.snapshot()
    pending: List[lockmgr.rules.Gtrid] = client.recover()
    print(rows, pending, client.session_id, client.expired, client.stats()[0]["granted"])
    return token


async def run_async(endpoints: List[str]) -> int:
    async with await lockmgr.aio.connect(endpoints, session_ttl=5.0) as ac:
        async with ac.transaction() as t:
            n: int = await t.lock(("db", "acct", 9), Mode.S)
            held = await t.held()
            return n + len(held) + len(await ac.snapshot())


def main() -> None:
    with LocalCluster(2) as cluster:
        try:
            with cluster.connect(session_ttl=5.0) as client:
                print(run(client))
            with lockmgr.connect(cluster.endpoints, request_timeout=2.0) as c2:
                print(run(c2))
            print(asyncio.run(run_async(cluster.endpoints)))
        except (SessionExpired, ShardUnavailable) as e:
            print("service trouble:", e)


if __name__ == "__main__":
    main()
'''

# each line must draw a mypy error (the line number is checked)
BAD_SCRIPT = '''
from lockmgr import LockManager, Mode

mgr = LockManager()
t = mgr.begin()
t.lock(["db", 1], Mode.X)             # error: a list is not a resource
t.lock(("db", 1.5), Mode.X)           # error: float component
t.lock(("db",), "X")                  # error: a mode is not a str
n: str = t.lock(("db",))              # error: the token is an int
t.held()[("db",)].nope                # error: Mode has no attribute nope
LockManager(escalation_threshold="5") # error: not an int
'''


def _mypy(tmp_path, *args):
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(textwrap.dedent("""\
        [mypy]
        strict = True
        [mypy-lockmgr.*]
        follow_imports = silent
        """))
    env = {**os.environ, "MYPYPATH": ROOT}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(cfg), "--no-incremental",
           "--cache-dir", os.devnull, "--no-error-summary", "--hide-error-context", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_mypy_is_installed():
    try:
        import mypy  # noqa: F401
    except ImportError:
        raise AssertionError("mypy is not installed: pip install -e '.[test]' (it is in the test extra)") from None


def test_embedded_api_typechecks_strict(tmp_path):
    test_mypy_is_installed()
    (tmp_path / "user_script.py").write_text(USER_SCRIPT)
    (tmp_path / "bad_script.py").write_text(BAD_SCRIPT)
    mods = [os.path.join(ROOT, "lockmgr", m) for m in STRICT_MODULES]
    out = _mypy(tmp_path, "user_script.py", "bad_script.py", *mods)
    assert out.returncode in (0, 1), out.stdout + out.stderr    # 2: mypy itself failed
    lines = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    good = [ln for ln in lines if not ln.startswith("bad_script.py:")]
    assert good == [], "mypy --strict reported errors:\n" + "\n".join(good) + "\n" + out.stderr
    want = {i for i, ln in enumerate(BAD_SCRIPT.splitlines(), 1) if "# error:" in ln}
    got = {int(ln.split(":")[1]) for ln in lines if ln.startswith("bad_script.py:")}
    assert got == want, f"expected errors on lines {sorted(want)}, mypy said:\n{out.stdout}{out.stderr}"


def test_service_api_typechecks_strict(tmp_path):
    test_mypy_is_installed()
    (tmp_path / "service_script.py").write_text(SERVICE_SCRIPT)
    out = _mypy(tmp_path, "service_script.py")
    assert out.returncode in (0, 1), out.stdout + out.stderr
    errors = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    assert errors == [], "mypy --strict reported errors:\n" + "\n".join(errors) + "\n" + out.stderr


@pytest.mark.service
def test_service_script_runs(tmp_path):
    (tmp_path / "service_script.py").write_text(SERVICE_SCRIPT)
    out = subprocess.run([sys.executable, "service_script.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "service trouble" not in out.stdout, out.stdout


def test_user_script_runs(tmp_path):
    # the typed script is real code: it runs as written
    (tmp_path / "user_script.py").write_text(USER_SCRIPT)
    out = subprocess.run([sys.executable, "user_script.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
