"""The hot path's socket calls (lockmgr/service/zdirect.py): libzmq called
directly and pyzmq's own calls give the same results and errors."""

import os

import pytest
import zmq

from lockmgr.service import zdirect


def _impls():
    yield "pyzmq", (zdirect._PyPoller, zdirect._py_recv, zdirect._py_recv_message, zdirect._py_send,
                    zdirect._py_readable)
    if zdirect.DIRECT:
        yield "direct", (zdirect.Poller, zdirect.recv, zdirect.recv_message, zdirect.send, zdirect.readable)


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
    Poller, recv, recv_message, send, readable = calls
    router, dealer = pair
    r, w = os.pipe()
    try:
        poller = Poller([router, dealer, r])
        assert poller.poll(0) == 0
        assert not readable(router)
        with pytest.raises(zmq.Again):
            recv(router)
        with pytest.raises(zmq.Again):
            recv_message(router)

        send(dealer, b"one")                      # a single part: the ROUTER adds the id
        assert poller.poll(1000) == 0b001
        assert readable(router)
        assert recv_message(router) == [b"peer", b"one"]
        assert not readable(router)

        send(dealer, b"a", more=True)
        send(dealer, b"")
        send(dealer, b"c" * 100_000)
        assert recv_message(router) == [b"peer", b"a", b""]
        assert recv_message(router) == [b"peer", b"c" * 100_000]

        send(router, b"peer", True)
        send(router, b"back")
        assert poller.poll(1000) == 0b010
        assert recv(dealer) == b"back"
        with pytest.raises(zmq.Again):
            recv(dealer)

        os.write(w, b"x")                         # a file descriptor item
        assert poller.poll(1000) == 0b100
        send(dealer, b"both")
        assert poller.poll(1000) == 0b101
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("name,calls", IMPLS, ids=[n for n, _ in IMPLS])
def test_errors(pair, name, calls):
    Poller, recv, recv_message, send, readable = calls
    router, dealer = pair
    with pytest.raises(ValueError):
        Poller([])
    with pytest.raises(TypeError):
        send(dealer, "text, not bytes")
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.close(0)
    ctx.term()
    with pytest.raises(zmq.ZMQError):
        recv(s)
    with pytest.raises(zmq.ZMQError):
        send(s, b"x")


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
    zdirect.send(dealer, b"a", more=True)
    zdirect.send(dealer, b"", more=True)
    zdirect.send(dealer, b"b" * 100_000)
    zdirect.send(dealer, b"two")
    assert r.recv_message() == [b"peer", b"a", b"", b"b" * 100_000]
    assert r.recv_message() == [b"peer", b"two"]
    assert r.recv_message() is None

    r.send_message((b"peer",), b"back")            # the routing id, then the payload
    assert zdirect.recv_message(dealer) == [b"back"]
    r.send_message((b"peer", b""), b"env")         # a REQ envelope's empty part
    assert zdirect.recv_message(dealer) == [b"", b"env"]
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
        zdirect.send(dealer, b"ping")
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
    d.send(b"req")
    assert zdirect.recv_message(router) == [b"peer", b"req"]
    zdirect.send(router, b"peer", more=True)
    zdirect.send(router, b"rep")
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
