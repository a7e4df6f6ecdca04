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
