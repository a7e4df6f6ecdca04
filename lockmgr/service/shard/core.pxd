# C-level declarations for core.py: an "augmenting" .pxd (Cython's pure-Python
# mode). The .py stays the one source and runs as it is without a compiler (the
# reference, LOCKMGR_PUREPYTHON=1); when Cython compiles it, the session,
# transaction and wait records become extension types whose fields are struct
# members, and the hot path -- frame, session and sequence check, reply cache,
# LOCK / LOCK_MANY / RELEASE / UNLOCK handlers, the answer -- cpdef methods with
# typed locals, calling each other in C. A field the .py sets on _Session, _Txn
# or _Wait must be declared here (the compiled module raises AttributeError
# otherwise; the suite runs compiled). ShardCore keeps a __dict__ for what is
# not on the hot path.

cimport cython

cdef class _Session:
    cdef public object id, prefix, secret, deferred, order, ack, tomb_order, name
    cdef public dict txns, cache, inflight
    cdef public set tombs
    cdef public object user, watches
    cdef public double ttl, expires
    cdef public Py_ssize_t nheld
    cdef public bint caching

cdef class _Txn:
    cdef public object id, session, state, wait, gtrid, participants, prepared_at, outcome, waiters, nlocks, name
    cdef public Py_ssize_t nheld

cdef class _Wait:
    cdef public object txn, seq, items, idx, tokens, many, timer, prev, deadline

@cython.locals(p=tuple)
cpdef tuple _path(obj)
cpdef _tomb(_Session sess, tid)

cdef class ShardCore:
    cdef dict __dict__
    cdef public object index, nshards, partition_depth, epoch, peer_sid, table, _table, _expired
    cdef public dict _sessions, _txns
    cdef public dict _out
    cdef public object _timers, _tick, _woken, backlog, counters, internal_errors
    cdef public object _handlers, _admin, twophase, probes, _probes, _peer, _wall_offset, _random_bytes
    cdef public object reclaim, _reclaim, _caching
    cdef public object user, access, quotas, session_counts, pages, watches, _watched
    cdef public Py_ssize_t nheld, q_session_locks, q_locks, q_waits, q_inflight, q_cache
    cdef public double now, _due
    cdef public Py_ssize_t _left, handled

    @cython.locals(sess=_Session)
    cpdef frame(self, prefix, sid, ack, reqs, Py_ssize_t budget)
    cpdef bint resume(self, Py_ssize_t budget) except -1
    cpdef next_timer(self)
    cpdef take_replies(self)
    @cython.locals(lst=list)
    cpdef _send(self, prefix, rep)
    @cython.locals(rep=list)
    cpdef answer(self, _Session sess, seq, status, payload)
    @cython.locals(n=Py_ssize_t, left=Py_ssize_t, stop=Py_ssize_t, k=Py_ssize_t, out=list, cache=dict,
                   inflight=dict, rep=list, handlers=dict, sessions=dict)
    cpdef _session_requests(self, _Session sess, prefix, reqs, Py_ssize_t start)
    cpdef _reply_error(self, _Session sess, prefix, seq, status, msg)
    @cython.locals(t=_Txn)
    cpdef _txn(self, _Session sess, tid, create=*)
    @cython.locals(sess=_Session, n=Py_ssize_t)
    cpdef drop_txn(self, _Txn t)
    @cython.locals(t=_Txn, tokens=list, n=Py_ssize_t, idx=Py_ssize_t)
    cpdef _run(self, _Wait w, nowait=*)
    @cython.locals(t=_Txn, sess=_Session)
    cpdef _park(self, _Wait w)
    @cython.locals(t=_Txn)
    cpdef end_wait(self, _Wait w, status, msg)
    @cython.locals(t=_Txn, w=_Wait, sess=_Session)
    cpdef process_woken(self)
    @cython.locals(t=_Txn, w=_Wait, prev=object, tok=object)
    cpdef _h_lock_one(self, _Session sess, seq, list args)
    cpdef _check_epoch(self, tid, ep)
    @cython.locals(t=_Txn, w=_Wait, k=Py_ssize_t)
    cpdef _h_lock_many(self, _Session sess, seq, list args)
    @cython.locals(t=_Txn)
    cpdef _h_unlock(self, _Session sess, seq, list args)
    @cython.locals(t=_Txn)
    cpdef _h_release(self, _Session sess, seq, list args)
