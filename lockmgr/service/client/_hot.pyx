# cython: language_level=3
"""The client's hot-path helpers (lockmgr/service/client/hot.py chooses them or
Python's own).

Mutex: a lock with threading.Lock's interface whose acquire and release are C
calls from compiled code: the client engine takes its lock (``_Engine._mu``)
two or three times per call, and threading.Lock's methods cost a Python
method call and an argument parse each time (~600 instructions an acquire,
benchmarks/RESULTS.md). Python code uses it as a threading.Lock: acquire
(blocking, timeout), release, locked, ``with``, and threading.Condition.

The uncontended acquire is a try-lock with the GIL held; a contended one
waits with the GIL released, as threading.Lock does. The wait is not
interrupted by signals (the engine holds its lock for short spans only).
"""

from cpython.ref cimport PyObject
from cpython.pythread cimport (PY_LOCK_ACQUIRED, PyLockStatus, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock)


cdef extern from "pythread.h":
    ctypedef long long PY_TIMEOUT_T
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock, PY_TIMEOUT_T, int) nogil

cdef extern from "Python.h":
    void Py_DECREF_ "Py_DECREF"(PyObject *)
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object, object, PyObject **) except PYGEN_ERROR


cdef class EngineBase:
    """What the transaction logic (ops.py) uses of an engine: the client's
    (engine._Engine) or the simulation's (lockmgr/sim). An extension type, so
    that ops reads these fields and calls these methods at C level; each
    engine overrides every method (here they raise NotImplementedError)."""

    cpdef call_many(self, specs):
        raise NotImplementedError("call_many")

    cpdef check_session(self):
        raise NotImplementedError("check_session")

    cpdef lease_over(self):
        raise NotImplementedError("lease_over")

    cpdef post(self, shard, typ, args):
        raise NotImplementedError("post")

    cpdef post_quiet(self, shard, typ, args):
        raise NotImplementedError("post_quiet")

    cpdef recorded(self):
        raise NotImplementedError("recorded")

    cpdef txn_lost(self, core, err):
        raise NotImplementedError("txn_lost")

    cpdef forget_txn(self, core):
        raise NotImplementedError("forget_txn")


cpdef drive(EngineBase eng, gen):
    """Run an ops generator (lockmgr/service/client/ops.py) to its end, each batch
    of calls it yields answered by ``eng.call_many``; return its value. As ops'
    Python loop, without the StopIteration a generator's return raises there
    (PyIter_Send hands the value back: ~1,300 instructions less per call), and
    call_many a C call."""
    cdef PyObject *out = NULL
    cdef PySendResult r
    arg = None
    while True:
        r = PyIter_Send(gen, arg, &out)
        val = <object>out          # (a new reference: the object takes it over...)
        Py_DECREF_(out)            # (...so the extra one goes)
        if r == PYGEN_RETURN:
            return val
        arg = eng.call_many(val)


cdef class Mutex:
    """A non-reentrant lock: threading.Lock's interface, C-level methods."""

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError("cannot allocate a lock")
        self._held = False

    def __dealloc__(self):
        if self._lock != NULL:
            if self._held:
                PyThread_release_lock(self._lock)
            PyThread_free_lock(self._lock)

    cpdef bint acquire(self, bint blocking=True, double timeout=-1) except -1:
        """As threading.Lock.acquire: True once held, False if not within ``timeout``."""
        cdef PyLockStatus r
        cdef PY_TIMEOUT_T us
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        r = PyThread_acquire_lock_timed(self._lock, 0, 0)
        if r != PY_LOCK_ACQUIRED and blocking and timeout != 0:
            us = -1 if timeout < 0 else <PY_TIMEOUT_T>(timeout * 1e6)
            with nogil:
                r = PyThread_acquire_lock_timed(self._lock, us, 0)
        if r == PY_LOCK_ACQUIRED:
            self._held = True
            return True
        return False

    cpdef release(self):
        """As threading.Lock.release (RuntimeError if not held)."""
        if not self._held:
            raise RuntimeError("release unlocked lock")
        self._held = False
        PyThread_release_lock(self._lock)

    def locked(self):
        return self._held

    def __enter__(self):
        self.acquire()
        return True

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        return f"<lockmgr Mutex {'locked' if self._held else 'unlocked'}>"
