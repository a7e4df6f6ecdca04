# C-level declarations for sync.py (an augmenting .pxd; see engine.pxd): the
# sync Transaction is an extension type whose core is a typed field, and its
# calls into ops (_drive) are C calls: the path of every lock() and commit().

from lockmgr.service.client.ops cimport _TxnCore, _drive

cdef class Transaction:
    cdef readonly _TxnCore _c
