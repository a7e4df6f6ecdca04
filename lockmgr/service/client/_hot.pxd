# The client's hot-path helpers (lockmgr/service/client/_hot.pyx): engine.pxd
# cimports Mutex so that the engine's acquire/release are C calls, and EngineBase
# (ops.pxd too) so that the transaction logic reads and calls an engine at C level.

from cpython.pythread cimport PyThread_type_lock

cdef class Mutex:
    cdef PyThread_type_lock _lock
    cdef bint _held
    cpdef bint acquire(self, bint blocking=*, double timeout=*) except -1
    cpdef release(self)


cdef class EngineBase:
    cdef public list epoch
    cdef public dict txns
    cdef public object partition_depth, request_timeout, reclaim_waiting, dead, last_dead
    cdef public Py_ssize_t gen, n
    cpdef call_many(self, specs)
    cpdef check_session(self)
    cpdef lease_over(self)
    cpdef post(self, shard, typ, args)
    cpdef post_quiet(self, shard, typ, args)
    cpdef recorded(self)
    cpdef txn_lost(self, core, err)
    cpdef forget_txn(self, core)

cpdef drive(EngineBase eng, gen)
