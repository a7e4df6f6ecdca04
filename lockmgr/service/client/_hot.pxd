# The client's hot-path helpers (lockmgr/service/client/_hot.pyx): engine.pxd
# cimports Mutex so that the engine's acquire/release are C calls.

from cpython.pythread cimport PyThread_type_lock

cdef class Mutex:
    cdef PyThread_type_lock _lock
    cdef bint _held
    cpdef bint acquire(self, bint blocking=*, double timeout=*) except -1
    cpdef release(self)
