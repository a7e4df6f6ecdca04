# cython: language_level=3, boundscheck=False, wraparound=False
"""libzmq's poll, receive and send called straight from C, on the sockets pyzmq
made: the hot paths of the shard loop and the client engine (docs/design.md,
"Compiled pieces"; lockmgr/service/zdirect.py finds libzmq and falls back to
pyzmq's own calls where it cannot).

pyzmq's ``zmq_poll`` converts its item list on every call (about 7,000
instructions for a one-socket poll, five times libzmq's own poll), and its
``recv``/``send`` go through Python-level flag and copy handling; on a lock
round trip those were a quarter of the shard's instructions. Here a Poller
converts its items once, and a Conn's reads and sends copy a message part
into (or from) a bytes object and nothing else.

The functions are libzmq's, from the library pyzmq itself loaded (their
addresses come from ``init``: zdirect.py looks them up with ctypes), called on
pyzmq's sockets through ``Socket.underlying`` (the documented address of the
libzmq socket). The sockets stay pyzmq's: options, bind, connect and close
are done through pyzmq as before. Errors are zmq.ZMQError (zmq.Again for
EAGAIN where the pyzmq call raised it), so callers handle them as before.
"""

from libc.stdint cimport uintptr_t
from libc.errno cimport EAGAIN, EINTR, errno
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals

import zmq

cdef extern from *:
    """
    #include <stddef.h>
    typedef struct { void *socket; int fd; short events; short revents; } lm_pollitem_t;
    typedef struct { unsigned char _[64]; } __attribute__((aligned(16))) lm_msg_t;
    typedef int (*lm_poll_f)(lm_pollitem_t *, int, long);
    typedef int (*lm_msg_init_f)(lm_msg_t *);
    typedef int (*lm_msg_recv_f)(lm_msg_t *, void *, int);
    typedef void *(*lm_msg_data_f)(lm_msg_t *);
    typedef size_t (*lm_msg_size_f)(const lm_msg_t *);
    typedef int (*lm_msg_more_f)(const lm_msg_t *);
    typedef int (*lm_msg_close_f)(lm_msg_t *);
    typedef int (*lm_send_f)(void *, const void *, size_t, int);
    typedef int (*lm_errno_f)(void);
    typedef int (*lm_getsockopt_f)(void *, int, void *, size_t *);
    """
    ctypedef struct lm_pollitem_t:
        void *socket
        int fd
        short events
        short revents
    ctypedef struct lm_msg_t:
        pass
    ctypedef int (*lm_poll_f)(lm_pollitem_t *, int, long) nogil
    ctypedef int (*lm_msg_init_f)(lm_msg_t *) nogil
    ctypedef int (*lm_msg_recv_f)(lm_msg_t *, void *, int) nogil
    ctypedef void *(*lm_msg_data_f)(lm_msg_t *) nogil
    ctypedef size_t (*lm_msg_size_f)(const lm_msg_t *) nogil
    ctypedef int (*lm_msg_more_f)(const lm_msg_t *) nogil
    ctypedef int (*lm_msg_close_f)(lm_msg_t *) nogil
    ctypedef int (*lm_send_f)(void *, const void *, size_t, int) nogil
    ctypedef int (*lm_errno_f)() nogil
    ctypedef int (*lm_getsockopt_f)(void *, int, void *, size_t *) nogil

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN

cdef lm_poll_f _poll = NULL
cdef lm_msg_init_f _msg_init = NULL
cdef lm_msg_recv_f _msg_recv = NULL
cdef lm_msg_data_f _msg_data = NULL
cdef lm_msg_size_f _msg_size = NULL
cdef lm_msg_more_f _msg_more = NULL
cdef lm_msg_close_f _msg_close = NULL
cdef lm_send_f _send = NULL
cdef lm_errno_f _errno = NULL
cdef lm_getsockopt_f _getsockopt = NULL

DEF MAX_ITEMS = 62
cdef int ZMQ_POLLIN = 1
cdef int ZMQ_DONTWAIT = 1
cdef int ZMQ_SNDMORE = 2
cdef int ZMQ_EVENTS = 15

NAMES = ("zmq_poll", "zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_more",
         "zmq_msg_close", "zmq_send", "zmq_errno", "zmq_getsockopt")


def init(dict addresses):
    """Take libzmq's functions from ``addresses`` (name -> address, every name in
    NAMES): zdirect.py's lookup."""
    global _poll, _msg_init, _msg_recv, _msg_data, _msg_size, _msg_more, _msg_close, _send, _errno, _getsockopt
    for name in NAMES:
        if not addresses.get(name):
            raise ValueError(f"libzmq function {name} not found")
    _poll = <lm_poll_f><uintptr_t>addresses["zmq_poll"]
    _msg_init = <lm_msg_init_f><uintptr_t>addresses["zmq_msg_init"]
    _msg_recv = <lm_msg_recv_f><uintptr_t>addresses["zmq_msg_recv"]
    _msg_data = <lm_msg_data_f><uintptr_t>addresses["zmq_msg_data"]
    _msg_size = <lm_msg_size_f><uintptr_t>addresses["zmq_msg_size"]
    _msg_more = <lm_msg_more_f><uintptr_t>addresses["zmq_msg_more"]
    _msg_close = <lm_msg_close_f><uintptr_t>addresses["zmq_msg_close"]
    _send = <lm_send_f><uintptr_t>addresses["zmq_send"]
    _errno = <lm_errno_f><uintptr_t>addresses["zmq_errno"]
    _getsockopt = <lm_getsockopt_f><uintptr_t>addresses["zmq_getsockopt"]


cdef inline void *_handle(sock) except NULL:
    cdef uintptr_t h = sock.underlying
    if h == 0:
        raise zmq.ZMQError(zmq.ENOTSOCK, "the socket is closed")
    return <void *>h


cdef _error(int err):
    if err == EAGAIN:
        return zmq.Again(err)
    return zmq.ZMQError(err)


cdef class Poller:
    """zmq_poll over a fixed list of items (pyzmq sockets or file descriptors),
    for POLLIN; ``poll`` returns a bit mask of the ready items (bit i: item i)."""

    cdef lm_pollitem_t items[MAX_ITEMS]
    cdef int n
    cdef object keep          # the sockets (their handles stay valid while they are open)

    def __init__(self, items):
        items = list(items)
        if not 0 < len(items) <= MAX_ITEMS:
            raise ValueError(f"a Poller takes 1..{MAX_ITEMS} items; got {len(items)}")
        self.n = len(items)
        self.keep = items
        for i, it in enumerate(items):
            if isinstance(it, int):
                self.items[i].socket = NULL
                self.items[i].fd = it
            else:
                self.items[i].socket = _handle(it)
                self.items[i].fd = 0
            self.items[i].events = ZMQ_POLLIN
            self.items[i].revents = 0

    cpdef unsigned long long poll(self, long timeout_ms) except? 0xFFFFFFFFFFFFFFFF:
        """Wait up to ``timeout_ms`` (0: not at all, -1: for ever) for an item to be
        readable; the mask of the readable ones (0: none, a timeout or a signal)."""
        cdef int rc, i, err
        cdef unsigned long long mask = 0
        if timeout_ms == 0:
            rc = _poll(self.items, self.n, 0)
        else:
            with nogil:
                rc = _poll(self.items, self.n, timeout_ms)
        if rc < 0:
            err = _errno()
            if err == EINTR:
                PyErr_CheckSignals()      # a handler's exception (KeyboardInterrupt) goes up
                return 0
            raise _error(err)
        if rc == 0:
            return 0
        for i in range(self.n):
            if self.items[i].revents & ZMQ_POLLIN:
                mask |= (<unsigned long long>1) << i
        return mask


cdef inline bytes _part(lm_msg_t *m):
    return PyBytes_FromStringAndSize(<char *>_msg_data(m), _msg_size(m))


cdef class Conn:
    """The hot paths' calls on one socket -- the shard loop's ROUTER, a client
    engine's DEALER to a shard -- with the libzmq handle read once: pyzmq's
    ``Socket.underlying``, which the calls above read on every call, goes
    through zmq.Socket's Python-level ``__getattr__`` (about 900 instructions,
    three times per request frame in the shard). ``close()`` forgets the
    handle (call it before the socket is closed: a call after it raises
    ZMQError(ENOTSOCK), as the calls above do on a closed socket).

    ``wait(timeout_ms)`` sleeps on the socket's ZMQ_FD, which libzmq signals
    when commands reach the socket (a message arrived, among others): call it
    only right after ``recv_message`` returned None, with no send or receive
    on the socket in between (ZMQ_FD is edge-triggered: a send or receive may
    consume the signal of a message that then waits unseen). One poll(2),
    where zmq_poll makes two (a first pass without waiting) and reads
    ZMQ_EVENTS after each."""

    cdef void *h
    cdef readonly object sock
    cdef readonly int fd

    def __init__(self, sock):
        self.sock = sock
        self.h = _handle(sock)
        self.fd = sock.getsockopt(zmq.FD)

    cpdef bint wait(self, long timeout_ms) except -1:
        """Sleep until ZMQ_FD is readable or ``timeout_ms`` (-1: no limit) has
        passed; True if it became readable (a message may wait: read to know)."""
        cdef pollfd p
        cdef int rc, err
        self._live()
        p.fd = self.fd
        p.events = POLLIN
        p.revents = 0
        if timeout_ms > 0x7fffffff:
            timeout_ms = 0x7fffffff             # (poll(2) takes an int; about 25 days)
        elif timeout_ms < 0:
            timeout_ms = -1
        if timeout_ms == 0:
            rc = poll(&p, 1, 0)
        else:
            with nogil:
                rc = poll(&p, 1, <int>timeout_ms)
        if rc < 0:
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()
                return False
            raise OSError(err, "poll")
        return rc > 0

    def close(self):
        self.h = NULL

    cdef inline void *_live(self) except NULL:
        if self.h == NULL:
            raise zmq.ZMQError(zmq.ENOTSOCK, "the socket is closed")
        return self.h

    cpdef list recv_message(self):
        """Every part of the next message, without waiting; None if none waits
        (no zmq.Again: the loop asks until there is nothing, and an exception
        per drain costs more than the answer)."""
        cdef void *h = self._live()
        cdef lm_msg_t m
        cdef int err, more = 1
        cdef list parts = []
        while more:
            _msg_init(&m)
            if _msg_recv(&m, h, ZMQ_DONTWAIT) < 0:
                err = _errno()
                _msg_close(&m)
                if err == EAGAIN and not parts:
                    return None
                raise _error(err)
            parts.append(_part(&m))
            more = _msg_more(&m)
            _msg_close(&m)
        return parts

    cpdef bytes recv(self):
        """One message part, without waiting; None if none waits."""
        cdef void *h = self._live()
        cdef lm_msg_t m
        cdef int err
        cdef bytes b
        _msg_init(&m)
        if _msg_recv(&m, h, ZMQ_DONTWAIT) < 0:
            err = _errno()
            _msg_close(&m)
            if err == EAGAIN:
                return None
            raise _error(err)
        b = _part(&m)
        _msg_close(&m)
        return b

    cpdef send(self, bytes data):
        """One single-part message, without waiting (zmq.Again if it cannot be queued now)."""
        cdef void *h = self._live()
        if _send(h, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), ZMQ_DONTWAIT) < 0:
            raise _error(_errno())

    cpdef bint readable(self) except -1:
        """ZMQ_EVENTS has POLLIN: a message waits (reading it re-arms ZMQ_FD)."""
        cdef void *h = self._live()
        cdef int ev = 0
        cdef size_t sz = sizeof(int)
        if _getsockopt(h, ZMQ_EVENTS, &ev, &sz) < 0:
            raise _error(_errno())
        return (ev & ZMQ_POLLIN) != 0

    cpdef send_message(self, tuple prefix, bytes payload):
        """The parts of ``prefix`` (bytes), then ``payload``, as one message,
        without waiting (zmq.ZMQError at the first part that cannot be queued)."""
        cdef void *h = self._live()
        cdef object part
        cdef bytes b
        for part in prefix:
            b = <bytes?>part
            if _send(h, PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b), ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0:
                raise _error(_errno())
        if _send(h, PyBytes_AS_STRING(payload), <size_t>PyBytes_GET_SIZE(payload), ZMQ_DONTWAIT) < 0:
            raise _error(_errno())
