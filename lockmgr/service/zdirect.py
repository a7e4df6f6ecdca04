"""The socket calls of the shard loop's and the client engine's hot paths:
libzmq called directly (lockmgr/service/_zdirect.pyx) where that can be set
up, else pyzmq's own calls, with the same results and errors.

Interface:
    Poller(items).poll(timeout_ms) -> int   bit mask of readable items (pyzmq
                                            sockets or file descriptors; bit i: item i)
    Conn(sock)                              the hot paths' calls on one socket (the
                                            shard loop's, a client engine's), the libzmq
                                            handle read once:
        .recv_message() -> [bytes, ...] | None   the next message's parts (None: none waits)
        .recv() -> bytes | None             one part (None: none waits)
        .send_message(prefix, payload)      prefix's parts, then payload, as one message
        .send(data)                         one single-part message (zmq.Again)
        .readable() -> bool                 ZMQ_EVENTS has POLLIN (re-arms ZMQ_FD)
        .wait(timeout_ms) -> bool           sleep on ZMQ_FD (only right after recv_message
                                            returned None; see _zdirect.Conn)
        .close()                            forget the socket (before it is closed)
    DIRECT                                  True when the calls are libzmq's own

The direct calls need the compiled backend (the pure-Python one,
LOCKMGR_PUREPYTHON=1, is the reference and uses pyzmq), Linux's
/proc/self/maps to find the libzmq that pyzmq loaded, and libzmq 4 (whose
zmq_pollitem_t and zmq_msg_t layouts they assume). Why: docs/design.md,
"Compiled pieces"; the figures: benchmarks/RESULTS.md.
"""

import ctypes
import os
import select

import zmq

from .._core import BACKEND

__all__ = ["Poller", "Conn", "DIRECT"]

_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# pyzmq's compiled socket methods (not the Python wrappers of zmq.Socket)
_ZSocket = zmq.backend.Socket if issubclass(zmq.Socket, zmq.backend.Socket) else zmq.Socket
_zrecv, _zsend, _zget = _ZSocket.recv, _ZSocket.send, _ZSocket.get


def libzmq_path():
    """The file of the libzmq mapped into this process (pyzmq's), or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    if os.path.basename(path).startswith("libzmq") and os.path.exists(path):
                        return path
    except OSError:
        pass
    return None


def _direct():
    """The compiled calls (Poller, Conn), set up
    with libzmq's functions; None where they cannot be."""
    if BACKEND != "c" or os.environ.get("LOCKMGR_PYZMQ_CALLS") or zmq.zmq_version_info()[0] != 4:
        return None
    try:
        from ._zdirect import NAMES, Conn, Poller, init
    except ImportError:  # pragma: no cover - no compiler
        return None
    path = libzmq_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)     # the library already loaded: dlopen gives its handle
        init({name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in NAMES})
    except (OSError, AttributeError, ValueError):
        return None
    return Poller, Conn


class _PyPoller:
    """Poller on pyzmq's zmq_poll."""

    __slots__ = ("_items", "_index")

    def __init__(self, items):
        items = list(items)
        if not items:
            raise ValueError("a Poller takes at least one item")
        self._items = [(it, _POLLIN) for it in items]
        self._index = {id(it) if not isinstance(it, int) else ("fd", it): i for i, it in enumerate(items)}

    def poll(self, timeout_ms):
        mask = 0
        for it, _ in zmq.zmq_poll(self._items, timeout_ms):
            mask |= 1 << self._index[("fd", it) if isinstance(it, int) else id(it)]
        return mask


def _py_recv_message(sock):
    # the parts as zmq.Frame objects, whose ``more`` flag replaces a getsockopt(RCVMORE)
    # (pyzmq converts every option number into an enum, in Python)
    f = _zrecv(sock, _NOBLOCK, False)
    parts = [f.bytes]
    while f.more:
        f = _zrecv(sock, _NOBLOCK, False)
        parts.append(f.bytes)
    return parts


class _PyConn:
    """Conn on pyzmq's calls."""

    __slots__ = ("sock", "fd", "_closed", "_poll")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._closed = False
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def wait(self, timeout_ms):
        self._live()
        return bool(self._poll.poll(timeout_ms))

    def close(self):
        self._closed = True

    def _live(self):
        if self._closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "the socket is closed")
        return self.sock

    def recv_message(self):
        try:
            return _py_recv_message(self._live())
        except zmq.Again:
            return None

    def recv(self):
        try:
            return _zrecv(self._live(), _NOBLOCK)
        except zmq.Again:
            return None

    def send(self, data):
        _zsend(self._live(), data, _NOBLOCK)

    def readable(self):
        return bool(_zget(self._live(), _EVENTS) & _POLLIN)

    def send_message(self, prefix, payload):
        sock = self._live()
        for part in prefix:
            _zsend(sock, part, _NOBLOCK_MORE)
        _zsend(sock, payload, _NOBLOCK)


_calls = _direct()
DIRECT = _calls is not None
Poller, Conn = _calls or (_PyPoller, _PyConn)
