"""Operating lockmgr: ``lockmgr bench``, the inspection commands, CLI errors, stats
completeness, metrics, logging, packaging (issue 14)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import lockmgr
from lockmgr import Mode
from lockmgr.bench.report import JSON_FIELDS
from lockmgr.bench.workloads import WORKLOADS
from lockmgr.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ bench

def check_json(doc, workloads, clients, systems=("lockmgr",)):
    assert doc["workloads"] == list(workloads)
    got = {(r["system"], r["workload"], r["clients"]) for r in doc["results"]}
    want = {(s, w, c) for s in systems for w in workloads for c in clients}
    assert got == want
    for r in doc["results"]:
        assert set(JSON_FIELDS) <= set(r), set(JSON_FIELDS) - set(r)
        assert r["ops"] > 0, r
        assert r["ops_per_s"] > 0
        assert set(r["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert sum(c for _, c in r["latency_histogram"]) == r["ops"]
        assert r["timeline"], "no throughput samples"


def test_bench_embedded_every_workload(capsys, tmp_path):
    f = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "bench", "--target", "embedded", "--workload", "all", "--duration", "0.3",
                             "--clients", "3", "--json", str(f), "--quiet", "--seed", "7")
    assert code == 0, err
    doc = json.loads(f.read_text())
    check_json(doc, list(WORKLOADS), [3])
    assert doc["seed"] == 7 and doc["target"] == "embedded"
    by = {r["workload"]: r for r in doc["results"]}
    assert by["deadlock"]["waits"] > 0            # the mix makes transactions wait
    assert by["uniform"]["server_cpu_us_per_op"] is None     # in-process: no server
    for w in WORKLOADS:
        assert re.search(rf"^lockmgr\s+{w}\s+3\s", out, re.M), out


@pytest.mark.service
def test_bench_cluster_every_workload(capsys, tmp_path):
    f = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "bench", "--workload", "all", "--duration", "0.3", "--clients", "2",
                             "--shards", "2", "--json", str(f))
    assert code == 0, err
    doc = json.loads(f.read_text())
    check_json(doc, list(WORKLOADS), [2])
    for r in doc["results"]:
        assert r["server_cpu_us_per_op"] > 0      # the shard processes' CPU, from /proc
        assert r["waits"] is not None and r["escalations"] == 0
    assert "txns" in err                           # the progress line (stderr)


@pytest.mark.service
@pytest.mark.parametrize("model", ["asyncio", "processes"])
def test_bench_cluster_client_models(capsys, tmp_path, model):
    f = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "bench", "--workload", "uniform,multi", "--duration", "0.3", "--clients", "1,2",
                             "--shards", "1", "--model", model, "--json", str(f), "--quiet")
    assert code == 0, err
    doc = json.loads(f.read_text())
    check_json(doc, ["uniform", "multi"], [1, 2])
    assert all(r["model"] == model for r in doc["results"])


@pytest.mark.service
@pytest.mark.parametrize("model", ["threads", "asyncio"])
def test_bench_release_nowait(capsys, tmp_path, model):
    """--release-nowait: lockmgr commits and aborts (the deadlock workload's lock
    timeouts) with wait=False; the run completes and says so in its header and JSON."""
    f = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "bench", "--workload", "uniform,deadlock", "--duration", "0.3",
                             "--clients", "2", "--shards", "1", "--model", model, "--release-nowait",
                             "--json", str(f), "--quiet")
    assert code == 0, err
    assert "releases without waiting" in out
    doc = json.loads(f.read_text())
    assert doc["release_nowait"] is True
    check_json(doc, ["uniform", "deadlock"], [2])


def test_bench_system_passes_release_wait():
    """The lockmgr system hands release_wait to commit and abort, on every path."""
    from lockmgr.bench.systems import NOT_AVAILABLE, OK, LockmgrEmbedded
    from lockmgr.bench.workloads import Plan
    from lockmgr.errors import LockNotAvailable

    calls = []

    class T:
        def __init__(self, refuse):
            self.refuse = refuse

        def lock(self, path, mode, **kw):
            if self.refuse:
                raise LockNotAvailable("busy")

        def commit(self, **kw):
            calls.append(("commit", kw))

        def abort(self, **kw):
            calls.append(("abort", kw))

    class Conn:
        refuse = False

        def begin(self, **kw):
            return T(self.refuse)

    plan = Plan(items=((("t", 1), Mode.X),))
    for release_wait in (True, False):
        calls.clear()
        s = LockmgrEmbedded(None, release_wait=release_wait)
        c = Conn()
        assert s.txn(c, plan, "g", 0.0) == OK
        c.refuse = True
        assert s.txn(c, plan, "g", 0.0) == NOT_AVAILABLE
        assert calls == [("commit", {"wait": release_wait}), ("abort", {"wait": release_wait})]


def test_bench_client_processes_freeze_the_inherited_heap():
    """A forked client process puts what it inherited out of the collector's
    sight (gc.freeze): else a full collection walks the parent's heap mid-run
    and stalls that client for tens of milliseconds."""
    import gc

    from lockmgr.bench.runner import Spec, run
    from lockmgr.bench.systems import OK, TIMEOUT, System

    class Probe(System):
        name = "probe"

        def txn(self, conn, plan, gtrid, deadline):
            return OK if gc.get_freeze_count() > 0 else TIMEOUT

    r = run(Probe(), Spec(workload="uniform", clients=2, model="processes", duration=0.2))
    assert r["ops"] > 0 and r["timeouts"] == 0, r
    assert gc.get_freeze_count() == 0        # (the parent's collector is left as it was)


def test_bench_server_cpu_waits_for_exiting_children():
    """The end-of-run CPU reading waits until the server's extra processes (a
    PostgreSQL backend whose client left) are gone, so their CPU is counted:
    here a child that burns ~0.3 s and is reaped by its parent."""
    from lockmgr.bench.runner import _settled_cpu
    from lockmgr.bench.servers import cpu_seconds, process_tree

    server = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "sys.stdin.readline()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    end = time.process_time() + 0.3\n"
        "    while time.process_time() < end: pass\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "sys.stdin.readline()\n")], stdin=subprocess.PIPE, text=True)
    try:
        tree0 = process_tree([server.pid])
        cpu0 = cpu_seconds([server.pid])
        server.stdin.write("go\n")
        server.stdin.flush()
        for _ in range(1000):                       # until the child is there (at most ~5 s)
            if process_tree([server.pid]) - tree0:
                break
            time.sleep(0.005)
        assert process_tree([server.pid]) - tree0, "the child never appeared"
        cpu1 = _settled_cpu([server.pid], tree0)
        assert not process_tree([server.pid]) - tree0
        assert cpu1 - cpu0 >= 0.25, (cpu0, cpu1)
    finally:
        server.kill()
        server.wait()


def test_bench_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    png = tmp_path / "b.png"
    code, out, err = run_cli(capsys, "bench", "--target", "embedded", "--duration", "0.2", "--clients", "1,2",
                             "--plot", str(png), "--quiet")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _peers_missing():
    from lockmgr.bench.servers import PostgresServer, RedisServer, Unavailable
    why = []
    for cls in (RedisServer, PostgresServer):
        try:
            cls()
        except Unavailable as e:
            why.append(str(e))
    return "; ".join(why)


@pytest.mark.service
@pytest.mark.slow
def test_bench_compare_redis_postgres(capsys, tmp_path):
    missing = _peers_missing()
    if missing:
        pytest.skip(f"--compare needs the peer servers here: {missing}")
    f = tmp_path / "out.json"
    code, out, err = run_cli(capsys, "bench", "--workload", "uniform,multi,hier", "--duration", "0.3",
                             "--clients", "2", "--shards", "1", "--compare", "redis,postgres", "--json", str(f),
                             "--quiet")
    assert code == 0, err
    doc = json.loads(f.read_text())
    # hier has no Redis / PostgreSQL form: lockmgr only
    got = {(r["system"], r["workload"]) for r in doc["results"]}
    assert got == {(s, w) for s in ("lockmgr", "redis", "postgres") for w in ("uniform", "multi")} | \
        {("lockmgr", "hier")}
    for r in doc["results"]:
        assert r["ops"] > 0 and r["server_cpu_us_per_op"] > 0, r
    assert len(doc["ratios"]) == 4
    assert "lockmgr/redis throughput" in out and "lockmgr/postgres throughput" in out


def test_bench_compare_missing_server_is_named(capsys, monkeypatch):
    # no redis-server on PATH (and none in /usr/bin): a clear message naming the package, and the run goes on
    from lockmgr.bench import servers
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers.os, "access", lambda path, mode: False)
    code, out, err = run_cli(capsys, "bench", "--target", "embedded", "--duration", "0.1", "--clients", "1",
                             "--compare", "redis", "--quiet")
    assert code == 0
    assert "redis-server is not installed (Debian package redis-server" in err
    assert re.search(r"^lockmgr\s+uniform", out, re.M)


@pytest.mark.parametrize("argv, text", [
    (["bench", "--workload", "nosuch"], "unknown workload 'nosuch'"),
    (["bench", "--clients", "0"], "--clients"),
    (["bench", "--compare", "mysql"], "--compare takes redis and/or postgres"),
    (["bench", "--target", "embedded", "--model", "processes"], "threads"),
    (["bench", "--target", "localhost:1"], "not a ZeroMQ endpoint"),
])
def test_bench_bad_options(capsys, argv, text):
    code, out, err = run_cli(capsys, *argv)
    assert text in one_line_error(code, err)


# -------------------------------------------------------------- stats

def test_embedded_stats_has_every_counter():
    mgr = lockmgr.LockManager()
    s = mgr.stats()
    for k in ("granted", "waited", "timeouts", "deadlocks", "escalations", "requests", "resources",
              "transactions", "active_transactions"):
        assert s[k] == 0, k


def test_every_shard_counter_is_named():
    from lockmgr.service.shard.counters import CORE_COUNTERS
    used = set()
    for f in ("core.py", "twophase.py", "server.py"):
        src = open(os.path.join(ROOT, "lockmgr", "service", "shard", f)).read()
        used |= set(re.findall(r'counters\["([a-z_]+)"\]', src))
    assert used and used <= set(CORE_COUNTERS), used - set(CORE_COUNTERS)


@pytest.mark.service
def test_client_stats_has_every_counter_at_zero():
    from lockmgr.service.probes import COUNTERS
    from lockmgr.service.shard.counters import CORE_COUNTERS
    with lockmgr.LocalCluster(1) as c, c.connect() as cl:
        s = cl.stats()[0]
    for k in CORE_COUNTERS + COUNTERS + ("granted", "waited", "escalations", "indoubt"):
        assert k in s, k
    assert s["deadlocks"] == 0 and s["timeouts"] == 0 and s["sessions_expired"] == 0


# ----------------------------------------------------------- inspection

@pytest.fixture(scope="module")
def busy_cluster():
    """A 2-shard cluster with known locks, a waiter and an in-doubt transaction."""
    with lockmgr.LocalCluster(2) as c:
        holder_client = c.connect(name="app-holder")
        waiter_client = c.connect(name="app-waiter")
        t = holder_client.begin("transfer-7")
        t.lock(("db", "orders", 1), Mode.X)
        p = holder_client.begin("prep-1", gtrid="g-indoubt")
        p.lock(("db", "items", 5), Mode.X)
        p.prepare()
        w = waiter_client.begin("reader-9")
        started = threading.Event()

        def wait():
            started.set()
            w.lock(("db", "orders", 1), Mode.S, timeout=60)
        th = threading.Thread(target=wait, daemon=True)
        th.start()
        started.wait(10)
        for _ in range(2000):      # bounded: until the shard shows the wait
            if w.id in holder_client.wait_for_graph():
                break
            threading.Event().wait(0.005)
        assert w.id in holder_client.wait_for_graph()
        yield c, t, w, p
        t.commit()
        th.join(10)
        w.commit()
        holder_client.resolve("g-indoubt", False)
        holder_client.close()
        waiter_client.close()


@pytest.mark.service
def test_status(capsys, busy_cluster):
    c, t, w, p = busy_cluster
    eps = ",".join(c.endpoints)
    code, out, err = run_cli(capsys, "status", eps)
    assert code == 0, err
    assert out.count(" up ") == 2 and "in-doubt" in out
    code, out, err = run_cli(capsys, "status", eps, "--json")
    rows = json.loads(out)
    assert [r["shard"] for r in rows] == [0, 1]
    assert sum(r["waiters"] for r in rows) == 1
    assert sum(r["indoubt"] for r in rows) == 1
    assert sum(r["sessions"] for r in rows) == 4
    assert all(r["uptime_s"] >= 0 and r["pid"] in c.pids for r in rows)


@pytest.mark.service
def test_locks_names_tree_order_filters(capsys, busy_cluster, monkeypatch):
    c, t, w, p = busy_cluster
    monkeypatch.setenv("LOCKMGR_ENDPOINTS", ",".join(c.endpoints))
    code, out, err = run_cli(capsys, "locks", "--json")
    assert code == 0, err
    rows = json.loads(out)["locks"]
    paths = [tuple(r["resource"]) for r in rows]
    # tree order: each node comes before its descendants
    for i, a in enumerate(paths):
        for b in paths[:i]:
            assert not (len(b) > len(a) and b[:len(a)] == a), (a, b)
    row = next(r for r in rows if r["resource"] == ["db", "orders", 1] and r["granted"])
    assert (row["txn"], row["txn_name"], row["client"], row["mode"]) == (t.id, "transfer-7", "app-holder", "X")
    waiting = [r for r in rows if not r["granted"]]
    assert [(r["txn"], r["txn_name"], r["client"]) for r in waiting] == [(w.id, "reader-9", "app-waiter")]
    code, out, err = run_cli(capsys, "locks", "--waiting", "--json")
    assert [r["txn"] for r in json.loads(out)["locks"]] == [w.id]
    code, out, err = run_cli(capsys, "locks", "--prefix", "db/items", "--json")
    assert {tuple(r["resource"]) for r in json.loads(out)["locks"]} == {("db", "items"), ("db", "items", 5)}
    code, out, err = run_cli(capsys, "locks", "--txn", str(t.id), "--json")
    assert {r["txn"] for r in json.loads(out)["locks"]} == {t.id}
    sess = row["session"]
    code, out, err = run_cli(capsys, "locks", "--session", sess, "--json")
    assert {r["client"] for r in json.loads(out)["locks"]} == {"app-holder"}
    code, out, err = run_cli(capsys, "locks")
    assert code == 0
    assert "transfer-7" in out and "reader-9" in out and "WAITING" in out and "app-waiter" in out


@pytest.mark.service
def test_graph_text_dot_json(capsys, busy_cluster):
    c, t, w, p = busy_cluster
    eps = ",".join(c.endpoints)
    code, out, err = run_cli(capsys, "graph", eps)
    assert code == 0, err
    assert f"{w.id} (reader-9) waits for {t.id} (transfer-7)" in out
    code, out, err = run_cli(capsys, "graph", eps, "--dot")
    assert out.startswith("digraph") and f"t{w.id} -> t{t.id}" in out
    code, out, err = run_cli(capsys, "graph", eps, "--json")
    doc = json.loads(out)
    assert [(e["waiter"], e["blocker"]) for e in doc["edges"]] == [(w.id, t.id)]


@pytest.mark.service
def test_indoubt_and_deadlocks_json(capsys, busy_cluster):
    c, t, w, p = busy_cluster
    eps = ",".join(c.endpoints)
    code, out, err = run_cli(capsys, "indoubt", eps, "--json")
    assert code == 0, err
    assert [d["gtrid"] for d in json.loads(out)] == ["g-indoubt"]
    code, out, err = run_cli(capsys, "indoubt", eps)
    assert "g-indoubt" in out
    code, out, err = run_cli(capsys, "deadlocks", eps, "--json", "--last", "3")
    assert code == 0 and json.loads(out) == []


# ------------------------------------------------------------ CLI errors

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("cmd", ["locks", "status", "graph", "deadlocks", "indoubt"])
def test_bad_endpoint_is_one_line(capsys, cmd):
    code, out, err = run_cli(capsys, cmd, "127.0.0.1:1")
    assert "not a ZeroMQ endpoint" in one_line_error(code, err)


@pytest.mark.parametrize("cmd", ["locks", "status", "graph", "deadlocks", "indoubt"])
def test_unreachable_shard_is_one_line(capsys, cmd):
    code, out, err = run_cli(capsys, cmd, f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.2")
    assert "did not answer" in one_line_error(code, err)
    assert out == ""


def test_no_endpoints_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("LOCKMGR_ENDPOINTS", raising=False)
    code, out, err = run_cli(capsys, "locks")
    assert "LOCKMGR_ENDPOINTS" in one_line_error(code, err)


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        r = subprocess.run([sys.executable, "-m", "lockmgr", "serve", "--endpoint",
                            f"tcp://127.0.0.1:{s.getsockname()[1]}", "--data-dir", str(tmp_path / "d")],
                           capture_output=True, text=True, timeout=60)
    finally:
        s.close()
    assert r.returncode == 2
    assert "Address already in use" in one_line_error(r.returncode, r.stderr)


def test_version():
    for cmd in (["lockmgr"], [sys.executable, "-m", "lockmgr"]):
        exe = shutil.which(cmd[0]) if cmd[0] == "lockmgr" else cmd[0]
        if exe is None:
            continue
        r = subprocess.run([exe, *cmd[1:], "--version"], capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == f"lockmgr {lockmgr.__version__}"
    # one version source: pyproject reads lockmgr.__version__
    py = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'dynamic = ["version"]' in py and 'version = {attr = "lockmgr._version.__version__"}' in py
    assert not re.search(r'^version\s*=\s*"', py, re.M)
    assert "MIT License" in open(os.path.join(ROOT, "LICENSE")).read()


# --------------------------------------------------- metrics and logging

@pytest.mark.service
def test_metrics_scraped_and_parsed():
    pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the metrics extra)")
    from prometheus_client.parser import text_string_to_metric_families
    with lockmgr.LocalCluster(1, metrics=True) as c, c.connect() as cl:
        url = c.metrics_urls[0]
        assert url and url.startswith("http://127.0.0.1:")
        a = cl.begin()
        for i in range(20):
            a.lock(("db", "t", i), Mode.X)
        b = cl.begin()
        th = threading.Thread(target=lambda: b.lock(("db", "t", 0), Mode.S, timeout=30), daemon=True)
        th.start()
        for _ in range(2000):
            if b.id in cl.wait_for_graph():
                break
            threading.Event().wait(0.005)

        def scrape():
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            out = {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
            return out
        m = scrape()
        lbl = (("shard", "0"),)
        assert m[("lockmgr_up", lbl)] == 1
        assert m[("lockmgr_requests_total", (("shard", "0"), ("type", "LOCK")))] >= 21
        assert m[("lockmgr_waiters", lbl)] == 1
        assert m[("lockmgr_oldest_waiter_seconds", lbl)] > 0
        assert m[("lockmgr_oldest_holder_seconds", lbl)] > 0
        assert m[("lockmgr_sessions", lbl)] == 1
        a.commit()
        th.join(10)
        b.commit()
        m = scrape()
        assert m[("lockmgr_waits_total", lbl)] >= 1
        assert m[("lockmgr_wait_seconds_count", lbl)] >= 1
        assert m[("lockmgr_hold_seconds_count", lbl)] >= 2
        assert m[("lockmgr_oldest_waiter_seconds", lbl)] == 0
        for k in ("timeouts_total", "deadlocks_total", "probes_total", "prepared_transactions", "fsync_seconds_count",
                  "grants_total", "sessions_expired_total"):
            assert (f"lockmgr_{k}", lbl) in m, k


@pytest.mark.service
def test_shard_log_file_outlives_the_cluster(tmp_path):
    logs = tmp_path / "logs"
    with lockmgr.LocalCluster(1, log_dir=str(logs)) as c, c.connect(name="logtest") as cl:
        a, b = cl.begin(), cl.begin()
        a.lock("r1")
        b.lock("r2")
        th = threading.Thread(target=lambda: a.lock("r2", timeout=30), daemon=True)
        th.start()
        for _ in range(2000):
            if a.id in cl.wait_for_graph():
                break
            threading.Event().wait(0.005)
        with pytest.raises(lockmgr.DeadlockDetected):
            b.lock("r1", timeout=30)
        th.join(10)
        a.commit()
        data_dir = c.data_dir
    assert not os.path.exists(data_dir)
    text = (logs / "shard0.log").read_text()
    assert "shard 0 of 1 serving on tcp://127.0.0.1:" in text
    assert re.search(rf"deadlock \S+ \(local\): victim transaction {b.id} \(client logtest\) aborted", text), text
    assert "shard 0 stopped" in text


# ------------------------------------------------------------ packaging

@pytest.mark.slow
def test_install_without_a_compiler_falls_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc")
    shutil.copytree(os.path.join(ROOT, "lockmgr"), src / "lockmgr",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, CC="/nonexistent/cc", LDSHARED="/nonexistent/cc -shared")
    env.pop("LOCKMGR_REQUIRE_C", None)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "could not compile the C extensions" in r.stderr
    assert "pure-Python backend" in r.stderr
    assert not list(src.rglob("*.so"))
    # and it runs, on the pure-Python table, saying so
    r = subprocess.run([sys.executable, "-c", "import lockmgr; print(lockmgr.BACKEND)"], cwd=src,
                       env=dict(env, LOCKMGR_PUREPYTHON=""), capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "python"
    assert "compiled lock table is not installed" in r.stderr
    # LOCKMGR_REQUIRE_C=1 (CI) makes the failure fatal instead
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src,
                       env=dict(env, LOCKMGR_REQUIRE_C="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0


def test_every_command_has_a_help(capsys):
    """``lockmgr CMD --help`` prints a usage and exits 0 for every subcommand
    (argparse formats help strings with %: a bare % made ``bench --help`` crash)."""
    from lockmgr.cli.registry import COMMANDS
    assert "bench" in COMMANDS and "serve" in COMMANDS and "status" in COMMANDS
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert f"usage: lockmgr {name}" in capsys.readouterr().out
