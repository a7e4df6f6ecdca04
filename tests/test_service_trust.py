"""Trust (issue 13, part A): CURVE authentication and encryption, requests bound
to the key that sent them, admin keys, quotas, paged SNAPSHOT/HELD, and the
refusal to bind beyond loopback without CURVE.

The attacks of the issue are tried from raw sockets (a CURVE DEALER speaking the
wire format) and through the clients, against a LocalCluster(secure=True); the
quotas and the per-key rules against the sans-IO core, driven by hand (no
sockets, no clock)."""

import os
import random
import shutil
import subprocess
import sys

import pytest
import zmq

import lockmgr
from lockmgr import Forbidden, InvalidRequest, QuotaExceeded, ShardUnavailable
from lockmgr.service import admin, wire
from lockmgr.service.cluster import LocalCluster
from lockmgr.service.security import ClientCurve, ServerCurve, is_loopback, keygen, public_key
from lockmgr.service.shard.access import Access
from lockmgr.service.shard.core import ShardCore
from lockmgr.service.shard.quotas import REPLY_COST, Quotas

IS, IX, S, X = 1, 2, 3, 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- sans-IO core


class Core:
    """One ShardCore driven by hand; ``user`` is the key the next frame comes from."""

    def __init__(self, quotas=None, keys=None):
        rnd = random.Random(7)
        self.core = ShardCore(epoch=1, quotas=quotas, now=100.0, random_bytes=lambda k: rnd.randbytes(k))
        if keys is not None:
            self.core.access = Access(keys, self.core.probes.peer_types)
        self.seq = {}

    def frame(self, conn, sid, reqs, user="", ack=0):
        c = self.core
        c.user = user
        c.frame((conn,), sid, ack, reqs, 10_000)
        c.process_woken()
        return c.take_replies().get((conn,), [])

    def call(self, conn, sid, typ, *args, user="", ack=0):
        seq = self.seq.get((conn, sid), 1)
        self.seq[(conn, sid)] = seq + 1
        reps = [r for r in self.frame(conn, sid, [[typ, seq, *args]], user, ack) if r[0] == seq]
        return reps[0] if reps else None

    def hello(self, conn, sid, user=""):
        return self.call(conn, sid, wire.HELLO, 10_000, "t", user=user)


def _quota(rep, name):
    assert rep is not None and rep[1] == wire.E_QUOTA, rep
    assert f"quota {name}=" in rep[2] and "nothing was changed" in rep[2], rep
    return rep


def _table(c):
    return sorted(map(repr, c.core.table.snapshot()))


def test_quotas_sessions_per_identity_and_per_shard():
    c = Core(Quotas(sessions_per_identity=2, sessions=3))
    assert c.hello(b"A", 1)[1] == wire.OK
    assert c.hello(b"A", 2)[1] == wire.OK
    _quota(c.hello(b"A", 3), "sessions_per_identity")
    assert c.hello(b"B", 4)[1] == wire.OK            # another connection identity
    _quota(c.hello(b"C", 5), "sessions")            # the shard's
    assert c.call(b"A", 1, wire.CLOSE)[1] == wire.OK
    assert c.hello(b"A", 3)[1] == wire.OK           # a slot freed by the close
    # with CURVE the identity is the key, whatever the connection
    k = Core(Quotas(sessions_per_identity=1))
    assert k.hello(b"A", 1, user="key1")[1] == wire.OK
    _quota(k.hello(b"B", 2, user="key1"), "sessions_per_identity")
    assert k.hello(b"C", 3, user="key2")[1] == wire.OK


def test_quota_locks_per_session_lock_and_lock_many():
    c = Core(Quotas(locks_per_session=3))
    c.hello(b"A", 1)
    for i in range(3):
        assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", i], X, False, None, 0)[1] == wire.OK
    # re-locking a held node is no new lock
    assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 0], X, False, None, 0)[1] == wire.OK
    before = _table(c)
    _quota(c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 9], X, False, None, 0), "locks_per_session")
    _quota(c.call(b"A", 1, wire.LOCK_MANY, 11, [[["db", "u", 1], X]], False, None, 0), "locks_per_session")
    assert _table(c) == before                        # nothing changed
    assert c.call(b"A", 1, wire.UNLOCK, 10, ["db", "t", 2], False)[1] == wire.OK
    assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 5], X, False, None, 0)[1] == wire.OK
    assert c.call(b"A", 1, wire.RELEASE, 10, True)[1] == wire.OK
    assert c.core.nheld == 0
    rep = c.call(b"A", 1, wire.LOCK_MANY, 12, [[["db", "t", i], X] for i in range(3)], False, None, 0)
    assert rep[1] == wire.OK
    _quota(c.call(b"A", 1, wire.LOCK_MANY, 13, [[["db", "v", 1], X]], False, None, 0), "locks_per_session")


def test_quota_locks_per_shard():
    c = Core(Quotas(locks=2))
    c.hello(b"A", 1)
    c.hello(b"B", 2)
    assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 1], X, False, None, 0)[1] == wire.OK
    assert c.call(b"B", 2, wire.LOCK, 20, ["db", "t", 2], X, False, None, 0)[1] == wire.OK
    _quota(c.call(b"B", 2, wire.LOCK, 20, ["db", "t", 3], X, False, None, 0), "locks")
    assert c.call(b"A", 1, wire.CLOSE)[1] == wire.OK       # its locks released with the session
    assert c.call(b"B", 2, wire.LOCK, 20, ["db", "t", 3], X, False, None, 0)[1] == wire.OK


def test_quota_waits_per_session_does_not_queue():
    c = Core(Quotas(waits_per_session=1))
    c.hello(b"A", 1)
    c.hello(b"B", 2)
    assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 1], X, False, None, 0)[1] == wire.OK
    assert c.call(b"A", 1, wire.LOCK, 11, ["db", "t", 2], X, False, None, 0)[1] == wire.OK
    assert c.call(b"B", 2, wire.LOCK, 20, ["db", "t", 1], X, False, None, 0) is None     # waits
    before = _table(c)
    _quota(c.call(b"B", 2, wire.LOCK, 21, ["db", "t", 2], X, False, None, 0), "waits_per_session")
    _quota(c.call(b"B", 2, wire.LOCK_MANY, 22, [[["db", "t", 2], X]], False, None, 0), "waits_per_session")
    assert _table(c) == before                        # not queued
    # nowait requests are not limited by it: they never wait
    assert c.call(b"B", 2, wire.LOCK, 23, ["db", "t", 2], X, True, None, 0)[1] == wire.E_NOT_AVAILABLE


def test_quota_inflight_per_session_refuses_the_frame():
    c = Core(Quotas(inflight_per_session=4))
    c.hello(b"A", 1)
    reqs = [[wire.LOCK, 10 + i, 100 + i, ["db", "t", i], X, False, None, 0] for i in range(5)]
    reps = c.frame(b"A", 1, reqs)
    assert len(reps) == 5 and all(r[1] == wire.E_QUOTA and "inflight_per_session" in r[2] for r in reps)
    assert c.core.table.snapshot() == []
    assert all(r[1] == wire.OK for r in c.frame(b"A", 1, reqs[:4]))


def test_quota_reply_cache_needs_acknowledgements():
    c = Core(Quotas(reply_cache_bytes=REPLY_COST * 4))
    c.hello(b"A", 1)                                  # (its answer is cached too: seq 1)
    for seq in range(2, 5):
        assert c.frame(b"A", 1, [[wire.HEARTBEAT, seq]])[0][1] == wire.OK
    rep = c.frame(b"A", 1, [[wire.LOCK, 5, 7, ["db", "t", 1], X, False, None, 0]])[0]
    _quota(rep, "reply_cache_bytes")
    assert "acknowledge" in rep[2] and c.core.table.snapshot() == []
    # the client acknowledges what it has: the same request goes through
    rep = c.frame(b"A", 1, [[wire.LOCK, 5, 7, ["db", "t", 1], X, False, None, 0]], ack=5)[0]
    assert rep[1] == wire.OK, rep


def test_snapshot_and_held_page_with_answer_rows():
    c = Core(Quotas(answer_rows=7))
    c.hello(b"A", 1)
    c.hello(b"B", 2)
    for t in range(3):
        items = [[["db", f"t{t}", i], X] for i in range(4)]
        assert c.call(b"A", 1, wire.LOCK_MANY, 10 + t, items, False, None, 0)[1] == wire.OK
    assert c.call(b"B", 2, wire.LOCK, 20, ["db", "t0", 0], S, False, None, 0) is None      # a waiter
    every = c.core.table.snapshot()
    assert len(every) > 7
    _quota(c.call(b"A", 0, wire.SNAPSHOT), "answer_rows")
    assert "SNAPSHOT_PAGE" in c.call(b"A", 0, wire.SNAPSHOT)[2]
    rows, cursor, pages = [], 0, 0
    while True:
        rep = c.call(b"Z", 0, wire.SNAPSHOT_PAGE, cursor, 5)
        assert rep[1] == wire.OK, rep
        page, cursor = rep[2]
        assert len(page) <= 5
        assert wire.REPLY_SHAPES[wire.SNAPSHOT_PAGE](rep[2], ())
        rows += page
        pages += 1
        if not cursor:
            break
    assert pages >= 4
    want = sorted((tuple(p), t, m, bool(g)) for p, t, m, g in every)
    got = sorted((tuple(p), t, m, bool(g)) for p, t, m, g, _s in rows)
    assert got == want
    assert all(s == 1 for p, t, m, g, s in rows if t in (10, 11, 12))
    # a cursor that does not exist (or is done) is refused, naming it
    rep = c.call(b"Z", 0, wire.SNAPSHOT_PAGE, 999, 5)
    assert rep[1] == wire.E_INVALID and "cursor 999" in rep[2]
    # HELD: over the rows -> refused, naming HELD_PAGE; HELD_PAGE pages
    c.call(b"A", 1, wire.LOCK_MANY, 10, [[["db", "t0", i], X] for i in range(4, 9)], False, None, 0)
    _quota(c.call(b"A", 1, wire.HELD, 10), "answer_rows")
    held, off = [], 0
    while True:
        rep = c.call(b"A", 1, wire.HELD_PAGE, 10, off, 3)
        assert rep[1] == wire.OK and len(rep[2][0]) <= 3, rep
        held += rep[2][0]
        off = rep[2][1]
        if not off:
            break
    assert sorted(map(repr, held)) == sorted(repr([list(p), m]) for p, m in c.core.table.held(10))
    # another session's active transaction: refused as before
    assert c.call(b"B", 2, wire.HELD_PAGE, 10, 0, 3)[1] == wire.E_INVALID
    for bad in ([10, -1, 3], [10, 0, 0], [10, 0]):
        assert c.call(b"A", 1, wire.HELD_PAGE, *bad)[1] in (wire.E_INVALID, wire.E_PROTOCOL)


def test_quota_options_parse_and_name_bad_ones():
    q = Quotas.from_options("locks_per_session=10, waits-per-session=2,answer_rows=1_000")
    assert (q.locks_per_session, q.waits_per_session, q.answer_rows) == (10, 2, 1000)
    for bad, text in (("nope=1", "name=value"), ("locks=x", "must be an int"), ("locks=0", ">= 1"),
                      (f"message_bytes={wire.MAX_FRAME + 1}", "at most")):
        with pytest.raises(InvalidRequest, match=text):
            Quotas.from_options(bad)


class _Keys:
    def __init__(self, admins=(), peers=()):
        self.admins = frozenset(admins)
        self.peers = frozenset(peers)


def test_core_binds_sessions_and_admin_requests_to_keys():
    c = Core(keys=_Keys(admins={"admin"}, peers={"peer"}))
    secret = c.hello(b"A", 1, user="alice")[2][4]
    assert c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 1], X, False, None, 0, user="alice")[1] == wire.OK
    before = _table(c)
    # mallory on alice's connection id (cannot happen over ZeroMQ, checked anyway), or on
    # her own with the session's secret and a huge ack (the poisoning): refused
    for conn, reqs in ((b"A", [[wire.RELEASE, 50, 10, True]]),
                       (b"M", [[wire.HELLO, 51, 10_000, "m", secret], [wire.LOCK, 52, 10, ["x"], X, False, None, 0]])):
        reps = c.frame(conn, 1, reqs, user="mallory", ack=1 << 40)
        assert reps and all(r[1] == wire.E_FORBIDDEN and "another key" in r[2] for r in reps), reps
    assert _table(c) == before
    rep = c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 2], X, False, None, 0, user="alice")
    assert rep[1] == wire.OK, rep                     # alice's next lock is not poisoned
    # admin requests
    for typ in (wire.SNAPSHOT, wire.SNAPSHOT_PAGE, wire.INDOUBT, wire.STATS, wire.INFO, wire.GRAPH, wire.DEADLOCKS,
                wire.PEERS, wire.FAULTS):
        rep = c.call(b"A", 0, typ, user="alice")
        assert rep[1] == wire.E_FORBIDDEN and "admin" in rep[2], (typ, rep)
    assert c.call(b"Q", 0, wire.SNAPSHOT, user="admin")[1] == wire.OK
    assert c.call(b"Q", 0, wire.PING, user="alice")[1] == wire.OK
    # shard-to-shard messages: peer keys only
    rep = c.call(b"A", 0, wire.PROBE_UNREG, 10, 0, user="admin")
    assert rep[1] == wire.E_FORBIDDEN and "peer" in rep[2]
    assert c.call(b"P", 0, wire.PROBE_UNREG, 10, 0, user="peer") is None       # accepted: no reply


def _durable(core, got):
    """Wait (bounded) for the prepare log's flusher, then run the callbacks as a WAKE would."""
    import time
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.005)
    assert got, "the prepare log did not flush"
    while got:
        core.durable(got.pop(0))
    core.twophase._h_wake([])
    core.process_woken()


def test_decide_by_a_stranger_is_forbidden_with_curve(tmp_path):
    from lockmgr.wal import PrepareLog
    got = []
    log = PrepareLog(str(tmp_path), on_durable=got.append)
    rnd = random.Random(3)
    try:
        core = ShardCore(epoch=log.epoch, log=log, now=1.0, random_bytes=lambda k: rnd.randbytes(k), grace=0)
    except BaseException:
        log.close()
        raise
    core.access = Access(_Keys(admins={"admin"}), core.probes.peer_types)
    c = Core.__new__(Core)
    c.core, c.seq = core, {}
    try:
        _decide_by_a_stranger(c, core, got)
    finally:
        log.close()


def _decide_by_a_stranger(c, core, got):
    c.hello(b"A", 1, user="alice")
    c.call(b"A", 1, wire.LOCK, 10, ["db", "t", 1], X, False, None, 0, user="alice")
    assert c.call(b"A", 1, wire.PREPARE, 10, "g1", 0, [0], user="alice") is None      # parked until durable
    _durable(core, got)
    c.hello(b"M", 2, user="mallory")
    before = _table(c)
    for typ, args in ((wire.DECIDE, ("g1", True)), (wire.HELD_PAGE, (10, 0, 10)), (wire.HELD, (10,))):
        rep = c.call(b"M", 2, typ, *args, user="mallory")
        assert rep[1] == wire.E_FORBIDDEN, (typ, rep)
    assert _table(c) == before
    # the coordinator's own key, from a new session (after a crash), may; so may an admin
    c.hello(b"A2", 3, user="alice")
    assert c.call(b"A2", 3, wire.HELD_PAGE, 10, 0, 10, user="alice")[1] == wire.OK
    c.hello(b"D", 4, user="admin")
    assert c.call(b"D", 4, wire.DECIDE, "g1", False, user="admin") is None           # logged, then answered
    _durable(core, got)
    assert c.core.table.snapshot() == []


# ----------------------------------------------------------- binding, keygen

def test_is_loopback():
    for ep in ("tcp://127.0.0.1:1", "tcp://127.3.4.5:0", "tcp://localhost:7", "tcp://[::1]:5", "ipc:///tmp/x",
               "inproc://x"):
        assert is_loopback(ep), ep
    for ep in ("tcp://0.0.0.0:1", "tcp://*:5", "tcp://10.0.0.1:1", "tcp://eth0:1", "tcp://[::]:1", "udp://x"):
        assert not is_loopback(ep), ep


def test_no_curve_refuses_non_loopback_and_keyless_clusters(tmp_path):
    from lockmgr.service.shard.server import Shard
    with pytest.raises(InvalidRequest, match="refusing to bind tcp://0.0.0.0:0 without CURVE.*--insecure"):
        Shard("tcp://0.0.0.0:0", str(tmp_path / "a"))
    with pytest.raises(InvalidRequest, match="needs a cluster key or CURVE"):
        Shard("tcp://127.0.0.1:0", str(tmp_path / "b"), nshards=2)
    s = Shard("tcp://0.0.0.0:0", str(tmp_path / "c"), insecure=True, ctx=zmq.Context())
    try:
        assert s.endpoint.startswith("tcp://0.0.0.0:")
    finally:
        s.close()
    r = subprocess.run([sys.executable, "-m", "lockmgr", "serve", "--endpoint", "tcp://0.0.0.0:0",
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2 and "--insecure" in r.stderr, r.stderr


def test_keygen_command_and_key_files(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lockmgr", "keygen", str(tmp_path), "app"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    pub, sec = tmp_path / "app.key", tmp_path / "app.key_secret"
    assert pub.exists() and sec.exists() and (os.stat(sec).st_mode & 0o077) == 0
    assert len(public_key(str(pub))) == 40 and public_key(str(sec)) == public_key(str(pub))
    r = subprocess.run([sys.executable, "-m", "lockmgr", "keygen", str(tmp_path), "app"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    with pytest.raises(InvalidRequest, match="no secret key"):
        ClientCurve(str(pub), str(pub))
    with pytest.raises(InvalidRequest, match="cannot read"):
        ServerCurve(str(tmp_path / "missing"), client_keys_dir=str(tmp_path))
    with pytest.raises(InvalidRequest, match="both curve_secret_file"):
        lockmgr.connect(["tcp://127.0.0.1:1"], curve_secret_file=str(sec))


# ------------------------------------------------------ a secure cluster

@pytest.fixture(scope="module")
def secure():
    with LocalCluster(2, secure=True, quotas="message_bytes=65536") as c:
        keydir = os.path.join(c.data_dir, "keys", "private")
        keygen(keydir, "mallory")                    # another admitted client
        shutil.copy(os.path.join(keydir, "mallory.key"), c.client_keys_dir)
        keygen(keydir, "stranger")                   # a key no shard admits
        c.reload_keys()
        c.mallory_secret = os.path.join(keydir, "mallory.key_secret")
        c.stranger_secret = os.path.join(keydir, "stranger.key_secret")
        _wait_admitted(c, c.mallory_secret)
        yield c


def _wait_admitted(c, secret, want=True):
    """Poll (bounded) until the shards admit (or refuse) ``secret``'s key after a reload."""
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ok = all(_try_ping(c, secret, i) == want for i in range(c.nshards))
        if ok:
            return
        time.sleep(0.05)
    raise AssertionError("the shards did not reload their keys")


def _try_ping(c, secret, i):
    r = CurveRaw(c, secret, i)
    try:
        r.send([[wire.PING, 1]])
        if not r.s.poll(300):
            return False
        return wire.unpack_replies(r.s.recv())[0][1] == wire.OK
    finally:
        r.close()


class CurveRaw:
    """A raw DEALER with a CURVE key, speaking the wire format to shard ``i``."""

    def __init__(self, c, secret_file, i=0, session=0):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if secret_file is not None:
            ClientCurve(secret_file, c.server_key).apply(self.s, i)
        self.s.connect(c.endpoints[i])
        self.session = session

    def send(self, reqs, ack=0):
        self.s.send(wire.pack_requests(self.session, ack, reqs))

    def call(self, req, ack=0, timeout=5.0):
        self.send([req], ack)
        assert self.s.poll(int(timeout * 1000)), "no reply"
        reps = wire.unpack_replies(self.s.recv())
        return reps[0]

    def nothing(self, timeout=0.5):
        return not self.s.poll(int(timeout * 1000))

    def close(self):
        self.s.close(0)
        self.ctx.term()


@pytest.mark.service
def test_unknown_keys_and_plain_sockets_get_no_answer(secure):
    for secret in (None, secure.stranger_secret):
        r = CurveRaw(secure, secret)
        try:
            r.send([[wire.SNAPSHOT, 1], [wire.PING, 2]])
            assert r.nothing()
        finally:
            r.close()
    with pytest.raises(ShardUnavailable):
        lockmgr.connect(secure.endpoints, curve_secret_file=secure.stranger_secret,
                        curve_server_key=secure.server_key, request_timeout=0.5)
    with pytest.raises(ShardUnavailable):
        lockmgr.connect(secure.endpoints, request_timeout=0.5)


@pytest.mark.service
def test_admin_requests_need_an_admin_key(secure):
    r = CurveRaw(secure, secure.client_secret_file)
    a = CurveRaw(secure, secure.admin_secret_file)
    try:
        for typ, args in ((wire.SNAPSHOT, ()), (wire.SNAPSHOT_PAGE, (0, 10)), (wire.INDOUBT, ()),
                          (wire.STATS, ()), (wire.INFO, ()), (wire.GRAPH, ()), (wire.DEADLOCKS, ()),
                          (wire.PEERS, ([],)), (wire.FAULTS, ({},)), (wire.PROBE_UNREG, (1, 0))):
            rep = r.call([typ, 1, *args])
            assert rep[1] == wire.E_FORBIDDEN, (typ, rep)
            if typ not in (wire.PEERS, wire.FAULTS, wire.PROBE_UNREG):
                assert a.call([typ, 1, *args])[1] == wire.OK, typ
        assert r.call([wire.PING, 1])[1] == wire.OK
    finally:
        r.close()
        a.close()
    with secure.connect() as cl:
        with pytest.raises(Forbidden, match="admin"):
            cl.snapshot()
        with pytest.raises(Forbidden):
            cl.indoubt()
    with secure.connect(curve_secret_file=secure.admin_secret_file) as ad:
        assert ad.snapshot() == [] or isinstance(ad.snapshot(), list)
        assert isinstance(ad.stats(), list)
    assert isinstance(admin.admin_query(secure.endpoints, wire.STATS, curve=secure.admin_curve)[0], dict)


@pytest.mark.service
def test_another_key_cannot_touch_a_session(secure):
    with secure.connect(name="alice") as alice:
        t = alice.begin()
        t.lock(("db", "t", 1))
        sid = alice.session_id
        m = CurveRaw(secure, secure.mallory_secret, session=sid)
        try:
            # the poisoning: alice's session id with a huge ack, then release her txn
            rep = m.call([wire.RELEASE, 5, t.id, False], ack=1 << 50)
            assert rep[1] == wire.E_FORBIDDEN and "another key" in rep[2], rep
            # even with a HELLO (it cannot know the secret; a guess changes nothing either)
            rep = m.call([wire.HELLO, 6, 10_000, "m", 12345])
            assert rep[1] == wire.E_FORBIDDEN
        finally:
            m.close()
        t.lock(("db", "t", 2))                        # alice is not poisoned
        assert set(t.held()) >= {("db", "t", 1), ("db", "t", 2)}
        t.commit()


@pytest.mark.service
def test_decide_by_a_stranger_through_the_wire(secure):
    with secure.connect(name="coord") as alice, secure.connect(curve_secret_file=secure.mallory_secret) as mal:
        t = alice.begin(gtrid="trust-g1")
        t.lock(("db", "t", 7))
        t.lock(("zz", "t", 7))
        t.prepare()
        with pytest.raises(Forbidden):
            mal.resolve("trust-g1", True)
        t.abort()                                     # the coordinator decides: it happened
        ad = secure.connect(curve_secret_file=secure.admin_secret_file)
        try:
            assert [d for d in ad.indoubt() if d["gtrid"] == "trust-g1"] == []
        finally:
            ad.close()


@pytest.mark.service
def test_message_size_quota_and_key_revocation(secure):
    r = CurveRaw(secure, secure.mallory_secret)
    try:
        r.send([[wire.PING, 1, "x" * 60_000], [wire.PING, 2, "y" * 10_000]])
        assert r.s.poll(5000)
        rep = wire.unpack_replies(r.s.recv())[0]
        assert rep[1] == wire.E_QUOTA and "message_bytes=65536" in rep[2], rep
        # the key leaves the directory: its open connection is refused at its next frame
        os.remove(os.path.join(secure.client_keys_dir, "mallory.key"))
        secure.reload_keys()
        _wait_admitted(secure, secure.mallory_secret, want=False)
        rep = r.call([wire.PING, 3])
        assert rep[1] == wire.E_FORBIDDEN and "no longer admitted" in rep[2]
    finally:
        r.close()
        shutil.copy(os.path.join(secure.data_dir, "keys", "private", "mallory.key"), secure.client_keys_dir)
        secure.reload_keys()
        _wait_admitted(secure, secure.mallory_secret)


@pytest.mark.service
def test_cross_shard_deadlock_is_found_over_curve(secure):
    """Peer shards authenticate with their key pair: probes still flow."""
    import threading

    from lockmgr import DeadlockDetected
    a, b = secure.connect(), secure.connect()
    try:
        # two tables on different shards
        from lockmgr.paths import encode
        from lockmgr.service.routing import route
        tables = {}
        for i in range(200):
            tables.setdefault(route(encode(("db", f"t{i}", 1)), 3, X, 2, 2)[0], f"t{i}")
            if len(tables) == 2:
                break
        p0, p1 = ("db", tables[0], 1), ("db", tables[1], 1)
        ta, tb = a.begin(), b.begin()
        ta.lock(p0)
        tb.lock(p1)
        errs = []

        def other():
            try:
                tb.lock(p0, timeout=10)
            except DeadlockDetected as e:
                errs.append(e)
        th = threading.Thread(target=other)
        th.start()
        try:
            ta.lock(p1, timeout=10)
        except DeadlockDetected as e:
            errs.append(e)
        th.join(15)
        assert len(errs) == 1, errs
    finally:
        a.close()
        b.close()


@pytest.mark.service
def test_aio_client_with_curve(secure):
    import asyncio

    async def main():
        cl = await lockmgr.aio.connect(secure.endpoints, curve_secret_file=secure.client_secret_file,
                                       curve_server_key=secure.server_key)
        try:
            t = cl.begin()
            await t.lock(("db", "t", 42))
            held = await t.held()
            await t.commit()
            with pytest.raises(Forbidden):
                await cl.snapshot()
            return held
        finally:
            await cl.close()
    assert ("db", "t", 42) in asyncio.run(main())


def test_quota_errors_reach_the_client_as_quota_exceeded():
    with LocalCluster(1, quotas="locks_per_session=2") as c:
        with c.connect() as cl:
            t = cl.begin()
            t.lock(("db", "t", 1))
            t.lock(("db", "t", 2))
            with pytest.raises(QuotaExceeded, match="locks_per_session=2"):
                t.lock(("db", "t", 3))
            t.commit()
            with cl.transaction() as t2:
                t2.lock(("db", "t", 3))


@pytest.mark.service
def test_inspection_commands_take_curve_keys_from_the_environment(secure):
    eps = ",".join(secure.endpoints)

    def run(secret):
        env = dict(os.environ, LOCKMGR_CURVE_SECRET_FILE=secret, LOCKMGR_CURVE_SERVER_KEY=secure.server_key)
        return subprocess.run([sys.executable, "-m", "lockmgr", "locks", eps, "--timeout", "3"], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env=env)
    with secure.connect() as cl:
        t = cl.begin()
        t.lock(("db", "cli", 1))
        r = run(secure.admin_secret_file)
        assert r.returncode == 0 and "cli" in r.stdout, r.stdout + r.stderr
        r = run(secure.client_secret_file)
        assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr
        t.commit()


@pytest.mark.service
def test_prepared_owner_survives_a_restart(secure):
    """The key that prepared a transaction is in the prepare record: after a restart
    only it (or an admin) may decide it."""
    with secure.connect(name="coord") as alice:
        t = alice.begin(gtrid="trust-restart")
        t.lock(("db", "t", 11))
        t.prepare()
    for i in range(secure.nshards):
        secure.restart(i)
    with secure.connect(curve_secret_file=secure.mallory_secret) as mal:
        with pytest.raises(Forbidden):
            mal.resolve("trust-restart", True)
    with secure.connect(name="coord-again") as alice:
        alice.resolve("trust-restart", True)          # the coordinator's key, a new session
    with secure.connect(curve_secret_file=secure.admin_secret_file) as ad:
        assert [d for d in ad.indoubt() if d["gtrid"] == "trust-restart"] == []
