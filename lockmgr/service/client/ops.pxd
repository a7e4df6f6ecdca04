# C-level declarations for ops.py: an "augmenting" .pxd (Cython's pure-Python
# mode; see engine.pxd). _TxnCore becomes an extension type whose fields are
# struct members (its __slots__ in the .py name the same fields), and its
# methods cpdef methods. The engine field is an EngineBase (_hot.pxd): the
# client's engine and the simulation's (lockmgr/sim) both derive from it.
# A field the .py sets on _TxnCore must be declared here.

cimport cython
from lockmgr.service.client._hot cimport EngineBase
from lockmgr.service.client.txnid cimport new_txn_id
from lockmgr.rules cimport check_mode, check_timeout, check_wait
from lockmgr.service.routing cimport route

cdef class _TxnCore:
    cdef public EngineBase eng
    cdef public object client, id, name, gtrid, state, doom, default_timeout, prepared_at, named, lost, lost_cbs
    cdef public object wid, carrier, used
    cdef public Py_ssize_t gen
    cdef public dict touched, locks
    cdef public set busy
    cdef public bint victim

    cpdef refuse(self)
    cpdef carrier_doom(self)
    @cython.locals(eps=list)
    cpdef check_active(self)
    cpdef abort_everywhere(self, victim=*, skip=*)
    cpdef forget(self)
    @cython.locals(d=dict, new=tuple)
    cpdef record(self, s, path, mode, tok)
    cpdef route(self, key, depth, mode)

cpdef _drive(eng, gen)
