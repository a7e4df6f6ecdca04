# C-level declarations for server.py: an "augmenting" .pxd (Cython's pure-Python
# mode; the pattern of core.pxd). When Cython compiles server.py, Shard becomes
# an extension type whose loop fields are struct members -- ``core`` typed as
# the ShardCore extension type, so the loop reads its clock, backlog and
# counters as struct fields and calls its cpdef methods (frame, resume,
# process_woken, take_replies) in C -- and the loop's methods are cpdef with
# typed locals. A field the .py sets that is not declared here goes to the
# instance __dict__ (fields off the hot path).

cimport cython
from .core cimport ShardCore

cdef class Shard:
    cdef dict __dict__
    cdef public ShardCore core
    cdef public object _sock, _router, _read, _send, _wait, _clock, lease, curve
    cdef public bint _stop, _checked, _idle
    cdef public Py_ssize_t _batch, dropped_unleased

    @cython.locals(now=double, turn_end=double, end=double, busy=bint, idle=bint, drained=Py_ssize_t)
    cpdef run_once(self, timeout_ms)
    @cython.locals(n=Py_ssize_t, n0=Py_ssize_t, t0=double, b=Py_ssize_t)
    cpdef _on_frame(self, frames)
    @cython.locals(n0=Py_ssize_t, t0=double)
    cpdef bint _resume(self) except -1
    @cython.locals(t=double, n=Py_ssize_t, b=Py_ssize_t)
    cpdef _measure(self, Py_ssize_t n0, double t0)
    @cython.locals(out=dict)
    cpdef _flush(self)
