# C-level declarations for txnid.py (an augmenting .pxd; see engine.pxd): the
# id's arithmetic in C integers and the lock a C-level Mutex.

cimport cython
from lockmgr.service.client._hot cimport Mutex

cdef Mutex _id_lock
cdef long long _id_tag
cdef long long _id_ms, _id_ctr, _ID_EPOCH_MS
cdef int _ID_COUNTER_BITS, _ID_TAG_BITS

@cython.locals(ms=cython.longlong, ctr=cython.longlong, lock=Mutex)
cpdef new_txn_id()
