"""Real partitions: shards and clients in network namespaces joined by veth pairs
to a bridge, links cut and healed while a fenced-store workload runs
(tests/netns_worker.py). Needs root and `ip` (iproute2); skipped otherwise.
Addresses: 10.213.0.0/24, only inside the namespaces this test creates."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import lockmgr
from lockmgr import DeadlockDetected, Mode

from helpers import Waiter, tables_on, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.service]

HERE = os.path.dirname(os.path.abspath(__file__))
TTL = 1.0       # the workers' session_ttl


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _netns_available():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`): apt-get install iproute2"
    name = f"lm13probe{os.getpid()}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"network namespaces not permitted here: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


class Net:
    """A hub namespace with a bridge; each node a namespace with a veth pair to it."""

    def __init__(self):
        self.tag = f"{os.getpid() % 100000}"
        self.hub = f"lm13h{self.tag}"
        self.nodes = {}
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def node(self, short, addr):
        ns = f"lm13{short}{self.tag}"
        inner, outer = f"v{short}{self.tag}"[:15], f"h{short}{self.tag}"[:15]
        _ip("netns", "add", ns)
        self.nodes[short] = (ns, outer)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.hub)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "set", outer, "master", "br0")
        _ip("-n", self.hub, "link", "set", outer, "up")
        return ns

    def host_link(self, addr):
        """A veth from this (the test's) namespace to the bridge, so the test itself is a client."""
        inner, outer = f"vt{self.tag}"[:15], f"ht{self.tag}"[:15]
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", outer, "netns", self.hub)
        _ip("addr", "add", f"{addr}/24", "dev", inner)
        _ip("link", "set", inner, "up")
        _ip("-n", self.hub, "link", "set", outer, "master", "br0")
        _ip("-n", self.hub, "link", "set", outer, "up")
        self.nodes["t"] = (None, outer)       # (deleted with the hub namespace: a veth dies with its peer)

    def cut(self, short):
        _ip("-n", self.hub, "link", "set", self.nodes[short][1], "down")

    def heal(self, short):
        _ip("-n", self.hub, "link", "set", self.nodes[short][1], "up")

    def close(self):
        for ns, _ in self.nodes.values():
            if ns is not None:
                _ip("netns", "del", ns, check=False)
        _ip("netns", "del", self.hub, check=False)


def _shard_cmd(ns, index, endpoints, data_dir):
    """The one place shard command lines are built (options such as --insecure go here)."""
    # --insecure: plain tcp on the namespaces' own addresses; the cluster key
    # (in the environment) still guards the shard-to-shard messages
    return ["ip", "netns", "exec", ns, "env", "LOCKMGR_CLUSTER_KEY=test-partitions-cluster-key",
            sys.executable, "-m", "lockmgr", "serve", "--endpoint", endpoints[index],
            "--data-dir", data_dir, "--index", str(index), "--shards", str(len(endpoints)),
            "--peers", ",".join(endpoints), "--grace", "0",
            "--insecure"]


def _start_shards(net, tmp_path, env):
    endpoints = ["tcp://10.213.0.1:7401", "tcp://10.213.0.2:7401"]
    ns_s = [net.node("s0", "10.213.0.1"), net.node("s1", "10.213.0.2")]
    procs = [subprocess.Popen(_shard_cmd(ns_s[i], i, endpoints, str(tmp_path / f"d{i}")), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    return endpoints, procs


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _worker_cmd(ns, endpoints, store, name, seconds, out):
    return ["ip", "netns", "exec", ns, sys.executable, os.path.join(HERE, "netns_worker.py"), ",".join(endpoints),
            store, name, str(seconds), out]


@pytest.fixture
def net():
    why = _netns_available()
    if why:
        pytest.skip(why)
    n = Net()
    try:
        yield n
    finally:
        n.close()


def test_cut_client_loses_its_session_and_no_write_is_refused_or_lost(net, tmp_path):
    endpoints = ["tcp://10.213.0.1:7401", "tcp://10.213.0.2:7401"]
    ns_s = [net.node("s0", "10.213.0.1"), net.node("s1", "10.213.0.2")]
    ns_c = [net.node("c1", "10.213.0.11"), net.node("c2", "10.213.0.12")]
    store = str(tmp_path / "store")
    os.makedirs(store)
    procs = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    try:
        for i in range(2):
            procs.append(subprocess.Popen(_shard_cmd(ns_s[i], i, endpoints, str(tmp_path / f"d{i}")), env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)     # (the shards print READY; the workers' connect retries cover a slow start)
        seconds = 7.0
        outs = [str(tmp_path / f"c{k}.json") for k in (1, 2)]
        workers = [subprocess.Popen(_worker_cmd(ns_c[k], endpoints, store, f"c{k + 1}", seconds, outs[k]), env=env)
                   for k in range(2)]
        time.sleep(2.0)
        t_cut = time.monotonic()
        net.cut("c1")
        time.sleep(3 * TTL)
        net.heal("c1")
        t_heal = time.monotonic()
        for w in workers:
            assert w.wait(timeout=60) == 0
        logs = []
        for o in outs:
            with open(o) as f:
                logs.append(json.load(f))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    c1, c2 = logs
    everything = c1 + c2
    assert not [e for e in everything if e[1] == "REFUSED"], "a write carried a stale token"
    writes = [e for e in everything if e[1] == "write"]
    with open(os.path.join(store, "store.json")) as f:
        data = json.load(f)
    assert sum(v for v, _ in data.values()) == len(writes), "an update was lost"
    # the cut side: its session expired, and its holder learnt it by its next call:
    # SessionExpired from a transaction of the old session, or (issue 15) a new
    # session that begin() opened once the network healed
    old_session = [e for e in c1 if e[1] == "write" and e[0] < t_cut][-1][5]
    expired = [e for e in c1 if e[1] == "SessionExpired"]
    renewed = [e for e in c1 if e[1] == "write" and e[0] > t_cut and e[5] != old_session]
    assert ((expired and expired[0][0] < t_heal + 2 * TTL)
            or (renewed and renewed[0][0] < t_heal + 2 * TTL + 1.0)), c1[-10:]
    assert not [e for e in c1 if e[1] == "write" and e[0] > t_heal and e[5] == old_session]
    assert [e for e in c1 if e[1] == "write" and e[0] > t_heal], "the cut client did not come back"
    # the other side went on during the cut
    assert [e for e in c2 if e[1] == "write" and t_cut + TTL < e[0] < t_heal]


def test_cross_shard_deadlock_between_shards_on_two_hosts(net, tmp_path):
    """Shards in two namespaces (two "hosts", peers over tcp on 10.213.0.x): a
    deadlock across them is found by the probes and broken with one victim."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    endpoints, procs = _start_shards(net, tmp_path, env)
    net.host_link("10.213.0.100")
    try:
        c = None
        deadline = time.monotonic() + 20
        while c is None:
            try:
                c = lockmgr.connect(endpoints, session_ttl=5.0, request_timeout=2.0)
            except lockmgr.ShardUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with c:
            a = ("db", tables_on(0, 2)[0], 1)
            b = ("db", tables_on(1, 2)[0], 1)
            t1, t2 = c.begin(), c.begin()
            t1.lock(a, Mode.X)
            t2.lock(b, Mode.X)
            w1 = Waiter(lambda: t1.lock(b, Mode.X, timeout=20))
            wait_until(lambda: t1.id in c.wait_for_graph(), what="t1 to wait")
            w2 = Waiter(lambda: t2.lock(a, Mode.X, timeout=20))
            w1.join(30)
            w2.join(30)
            errors = [w.error for w in (w1, w2) if w.error is not None]
            assert len(errors) == 1 and isinstance(errors[0], DeadlockDetected), (w1.error, w2.error)
            assert isinstance(w2.error, DeadlockDetected)            # the younger one is the victim
            t1.commit()
    finally:
        _stop(procs)
