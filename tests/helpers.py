"""Plain helpers shared by the tests (fixtures live in tests/conftest.py).

- ``BACKENDS``: the table backends of this install ("c" when compiled, "python");
- ``wait_until`` / ``wait_until_waiting``: bounded polls, used only to observe
  that another thread has started waiting (there is no event for that);
- ``Waiter``: runs a callable in a thread and records its result or exception;
- ``shard_of`` / ``tables_on``: which shard of a LocalCluster owns a path, and
  tables owned by a given shard, through the client's own routing;
- ``RawSocket``: a DEALER speaking the wire format to one shard directly.

Tests import these with ``from helpers import ...`` (tests/ is on sys.path
under pytest's default rootdir-relative import mode); no test imports conftest.
"""

import threading
import time

import zmq

from lockmgr import Mode
from lockmgr._core import available_backends
from lockmgr.paths import encode
from lockmgr.service import wire
from lockmgr.service.routing import route

BACKENDS = available_backends()


# ------------------------------------------------------------------ waiting

def wait_until(pred, timeout=10.0, what="condition", poll=None):
    """Poll ``pred`` until true; bounded in time. Used only to observe that
    another thread has *started waiting* (there is no event for that).

    Polls back off from 0.5 ms to 20 ms; ``poll`` fixes the interval instead
    (a test that must see a short-lived state, e.g. a 10 ms lock wait)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005 if poll is None else poll
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        if poll is None:
            delay = min(delay * 2, 0.02)


def wait_until_waiting(lm, txn, timeout=10.0, poll=None):
    """Block until transaction ``txn`` is queued for a lock in ``lm`` (an
    embedded LockManager or a service Client: both have ``wait_for_graph``)."""
    if hasattr(lm, "wait_for_graph"):
        wait_until(lambda: txn.id in lm.wait_for_graph(), timeout, f"txn {txn.id} to wait", poll)
    else:  # a target without introspection: it must provide its own hook
        lm.wait_until_waiting(txn, timeout)


# ------------------------------------------------------------------ threads

class Waiter(threading.Thread):
    """Runs ``fn`` in a daemon thread and records its result or exception.

    ``get()`` returns the result or re-raises the exception; ``outcome()`` is
    "ok" or the exception's class name. Both fail if the thread has not
    finished within ``timeout``. ``t0``/``t1`` bracket the call
    (``time.perf_counter``)."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error = None
        self.done = threading.Event()
        self.t0 = time.perf_counter()
        self.t1 = None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # recorded for the test to inspect
            self.error = e
        finally:
            self.t1 = time.perf_counter()
            self.done.set()

    def get(self, timeout=10):
        assert self.done.wait(timeout), "thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result

    def outcome(self, timeout=10.0):
        assert self.done.wait(timeout), "a lock wait was not resolved in time"
        return "ok" if self.error is None else type(self.error).__name__


# ------------------------------------------------------------------ routing

def shard_of(path, nshards, depth=2):
    """The shard of an ``nshards`` LocalCluster with partition depth ``depth``
    that owns ``path`` (a path at or below the partition depth: above it a
    strong lock goes to every shard). Asks the service's own routing
    (``lockmgr.service.routing.route``), so the tests follow it if it changes."""
    assert len(path) >= depth, f"{path!r} lies above the partition depth {depth}"
    [shard] = route(encode(path), len(path), int(Mode.X), nshards, depth)
    return shard


def tables_on(shard, nshards, n=1, prefix="t", depth=2):
    """The first ``n`` table names ``f"{prefix}{i}"`` (i = 0, 1, ...) for which
    ``("db", name)`` is owned by ``shard``."""
    out = []
    i = 0
    while len(out) < n:
        name = f"{prefix}{i}"
        if shard_of(("db", name), nshards, depth) == shard:
            out.append(name)
        i += 1
        assert i < 100000, "no table routes there"
    return out


# ------------------------------------------------------------------ fenced storage

class FencedStore:
    """Storage that refuses a write whose fencing token is older than the
    newest it saw for the key (what a store behind a lock service does). Keeps
    every accepted token per key (``tokens``), so a test can check they grew."""

    def __init__(self):
        self.mu = threading.Lock()
        self.data = {}
        self.newest = {}
        self.tokens = {}
        self.refused = 0

    def read(self, key):
        with self.mu:
            return self.data.get(key, 0)

    def write(self, key, value, token):
        with self.mu:
            if token < self.newest.get(key, 0):
                self.refused += 1
                return False
            self.newest[key] = token
            self.data[key] = value
            self.tokens.setdefault(key, []).append(token)
            return True


# ------------------------------------------------------------------ raw sockets

class RawSocket:
    """A raw DEALER speaking the wire format to one shard, with bounded receives."""

    def __init__(self, endpoint, session=0):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(endpoint)
        self.session = session

    def send_raw(self, *parts):
        self.s.send_multipart(list(parts))

    def send(self, reqs, ack=0):
        self.s.send(wire.pack_requests(self.session, ack, reqs))

    def recv(self, timeout=5.0):
        assert self.s.poll(int(timeout * 1000)), "no reply"
        return wire.unpack_replies(self.s.recv())

    def nothing(self, timeout=0.3):
        return not self.s.poll(int(timeout * 1000))

    def call(self, req, timeout=5.0, ack=0):
        self.send([req], ack)
        reps = self.recv(timeout)
        assert len(reps) == 1
        return reps[0]

    def close(self):
        self.s.close(0)
        self.ctx.term()


# ------------------------------------------------------------------ load

def slow_frame():
    """A frame of about 4 MiB of empty arrays (64 PINGs carrying 65,000 each):
    valid, under every limit, answered at once -- after some 0.3-1 s of
    decoding in the shard. A brick for keeping a shard busy."""
    import msgpack
    return msgpack.packb([wire.VERSION, 0, 0, [[wire.PING, k, [[]] * 65000] for k in range(64)]])


class ScriptedShard:
    """A ROUTER on 127.0.0.1 that answers a client's HELLO and then sends what the
    test tells it to (tests/test_service_push.py, tests/test_engine_seq.py): the
    timing is the test's, not a cluster's."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.ROUTER)
        self.s.setsockopt(zmq.LINGER, 0)
        port = self.s.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.peer = None

    def serve_hello(self, client_factory):
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("eng", client_factory()))
        th.start()
        assert self.s.poll(5000)
        self.peer, frame = self.s.recv_multipart()
        _sid, _ack, reqs = wire.unpack_requests(frame)
        (typ, seq, *_), = reqs
        assert typ == wire.HELLO
        self.s.send_multipart([self.peer, wire.pack_replies([[seq, wire.OK, [7, 0, 1, 2, 0]]])])
        th.join(5.0)
        return out["eng"]

    def recv(self):
        return self.recv_frame()[2]

    def recv_frame(self):
        """The next frame from the client: (session, ack, requests)."""
        assert self.s.poll(5000)
        peer, frame = self.s.recv_multipart()
        return wire.unpack_requests(frame)

    def send(self, replies):
        self.s.send_multipart([self.peer, wire.pack_replies(replies)])

    def close(self):
        self.s.close(0)
        self.ctx.term()
