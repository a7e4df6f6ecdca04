"""The hot path's socket calls (lockmgr/service/zdirect.py): libzmq called
directly and pyzmq's own calls give the same results and errors."""

import os

import pytest
import zmq

from lockmgr.service import zdirect


def _impls():
    yield "pyzmq", (zdirect._PyPoller, zdirect._PyConn)
    if zdirect.DIRECT:
        yield "direct", (zdirect.Poller, zdirect.Conn)


IMPLS = list(_impls())


def test_the_compiled_backend_calls_libzmq_directly():
    from lockmgr._core import BACKEND
    if BACKEND == "c" and not os.environ.get("LOCKMGR_PYZMQ_CALLS"):
        assert zdirect.DIRECT, "the compiled backend should find libzmq (Linux, /proc/self/maps)"
    else:
        assert not zdirect.DIRECT


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://zd")
    dealer.setsockopt(zmq.ROUTING_ID, b"peer")
    dealer.connect("inproc://zd")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


@pytest.mark.parametrize("name,calls", IMPLS, ids=[n for n, _ in IMPLS])
def test_send_receive_and_poll(pair, name, calls):
    Poller, Conn = calls
    router, dealer = pair
    rc, dc = Conn(router), Conn(dealer)
    r, w = os.pipe()
    try:
        poller = Poller([router, dealer, r])
        assert poller.poll(0) == 0
        assert not rc.readable()
        assert rc.recv() is None and rc.recv_message() is None

        dc.send(b"one")                           # a single part: the ROUTER adds the id
        assert poller.poll(1000) == 0b001
        assert rc.readable()
        assert rc.recv_message() == [b"peer", b"one"]
        assert not rc.readable()

        dc.send_message((b"a",), b"")
        dc.send(b"c" * 100_000)
        assert rc.recv_message() == [b"peer", b"a", b""]
        assert rc.recv_message() == [b"peer", b"c" * 100_000]

        rc.send_message((b"peer",), b"back")
        assert poller.poll(1000) == 0b010
        assert dc.recv() == b"back"
        assert dc.recv() is None

        os.write(w, b"x")                         # a file descriptor item
        assert poller.poll(1000) == 0b100
        dc.send(b"both")
        assert poller.poll(1000) == 0b101
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("name,calls", IMPLS, ids=[n for n, _ in IMPLS])
def test_errors(pair, name, calls):
    Poller, Conn = calls
    router, dealer = pair
    with pytest.raises(ValueError):
        Poller([])
    with pytest.raises(TypeError):
        Conn(dealer).send("text, not bytes")
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.close(0)
    ctx.term()
    with pytest.raises(zmq.ZMQError):
        Conn(s)                                   # a closed socket: no handle


def _conns():
    yield "pyzmq", zdirect._PyConn
    if zdirect.DIRECT:
        yield "direct", zdirect.Conn


CONNS = list(_conns())


@pytest.mark.parametrize("name,Conn", CONNS, ids=[n for n, _ in CONNS])
def test_conn_reads_none_when_nothing_waits_and_sends_whole_messages(pair, name, Conn):
    router, dealer = pair
    r = Conn(router)
    assert r.sock is router
    assert r.recv_message() is None               # nothing waits: None, not zmq.Again
    assert r.recv_message() is None
    d = Conn(dealer)
    d.send_message((b"a", b""), b"b" * 100_000)
    d.send(b"two")
    assert r.recv_message() == [b"peer", b"a", b"", b"b" * 100_000]
    assert r.recv_message() == [b"peer", b"two"]
    assert r.recv_message() is None

    r.send_message((b"peer",), b"back")            # the routing id, then the payload
    assert d.recv_message() == [b"back"]
    r.send_message((b"peer", b""), b"env")         # a REQ envelope's empty part
    assert d.recv_message() == [b"", b"env"]
    with pytest.raises(TypeError):
        r.send_message((b"peer",), "text, not bytes")

    r.close()                                      # forgets the socket: calls now fail
    with pytest.raises(zmq.ZMQError):
        r.recv_message()
    with pytest.raises(zmq.ZMQError):
        r.send_message((b"peer",), b"x")


@pytest.mark.parametrize("name,Conn", CONNS, ids=[n for n, _ in CONNS])
def test_conn_wait_wakes_for_a_message_after_a_read_found_nothing(pair, name, Conn):
    router, dealer = pair
    r = Conn(router)
    assert r.fd == router.getsockopt(zmq.FD)
    for _ in range(3):
        assert r.recv_message() is None           # (what wait's edge-triggered fd needs first)
        assert not r.wait(10)                     # nothing came: the timeout
        Conn(dealer).send(b"ping")
        assert r.wait(5000)                       # ZMQ_FD signalled
        assert r.recv_message() == [b"peer", b"ping"]
    r.close()
    with pytest.raises(zmq.ZMQError):
        r.wait(0)


@pytest.mark.parametrize("name,Conn", CONNS, ids=[n for n, _ in CONNS])
def test_conn_one_part_calls_of_a_client(pair, name, Conn):
    """A client engine's calls on its DEALER: one part in, one part out, ZMQ_EVENTS."""
    router, dealer = pair
    d = Conn(dealer)
    assert d.recv() is None and not d.readable()
    r = Conn(router)
    d.send(b"req")
    assert r.recv_message() == [b"peer", b"req"]
    r.send_message((b"peer",), b"rep")
    for _ in range(500):            # (the reply crosses ZeroMQ's I/O threads; bounded)
        if d.readable():
            break
        d_wait = zmq.Poller()
        d_wait.register(dealer, zmq.POLLIN)
        d_wait.poll(10)
    assert d.readable()
    assert d.recv() == b"rep"
    assert d.recv() is None and not d.readable()
    with pytest.raises(TypeError):
        d.send("text, not bytes")
    d.close()
    for call in (d.recv, d.readable, lambda: d.send(b"x")):
        with pytest.raises(zmq.ZMQError):
            call()
