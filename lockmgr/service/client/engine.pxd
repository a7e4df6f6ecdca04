# C-level declarations for engine.py: an "augmenting" .pxd (Cython's pure-Python
# mode). The .py stays the one source and runs as it is without a compiler; when
# Cython compiles it, these classes become extension types whose attributes are
# struct fields, and the hot methods cpdef methods with typed locals, so a round
# trip runs without dictionary lookups or Python-level method calls. Attributes
# are public (the tests and the asyncio driver read them from Python); an
# attribute the .py sets must be declared here, or the compiled module raises
# AttributeError (the suite runs compiled).

cimport cython
from lockmgr.service.client._hot cimport EngineBase, Mutex

cdef class _Waiter:
    cdef public Mutex ev
    cdef public object since
    cdef public Py_ssize_t left
    cdef public bint signalled, promoted
    cpdef signal(self)

cdef class _Call:
    cdef public object shard, typ, args, seq, result, error, deadline, w, cb
    cdef public double first_sent, backoff
    cdef public bint done, urgent

@cython.locals(when=double)
cdef double _next_try(_Call c, double sent) except? -1.0

cdef class _Engine(EngineBase):
    # (EngineBase, _hot.pxd, has the fields ops reads: epoch, txns, partition_depth,
    # request_timeout, reclaim_waiting, dead, last_dead, gen, n)
    cdef object __weakref__
    cdef public double lease
    cdef public object endpoints, ttl, ttl_ms, retry_interval, hb_interval
    cdef public object _drv_tick, _drv_stall, name, session
    cdef public list _lease_base, _hello_pending, _seq, _pending, _heap
    cdef public object _deferred_error, _hb_sent, _secret
    cdef public object _ctx, _socks, _fds, _driver, _owner_kind, _owner
    cdef public list _conns
    cdef public Mutex _mu
    cdef public object _followers, _orphaned_at, _hk_ev, _hk_wake_at
    cdef public object _outq, _tick, _wake_r, _wake_w, _poller, _ready
    cdef public object _hello_error, _thread, _born, _pid
    cdef public object _parked, _reclaims, reclaims, _grace_until
    cdef public object locator, _repoints, repoints
    cdef public object _push_handlers, _hk_r, _hk_w, cache_tick, cache_clear
    cdef public bint cache_on
    cdef public double _free_since
    cdef public Py_ssize_t _push_wanted, pushes
    cdef public bint _hk_selecting
    cdef public object state, _listeners, _dispatch, lost_cbs, _session_cv, watch_registry
    cdef public Py_ssize_t renewals, watchers
    cdef public double valid_margin
    cdef public bint _renew_wanted, _lost_wanted
    cdef public Py_ssize_t handoffs, _urgent, _hello_left, _heap_limit
    cdef public bint closed, _close_sent, _polling, _pipe_full

    @cython.locals(bases=list, m=double, k=Py_ssize_t)
    cpdef double _lease_end(self)
    cpdef lease_over(self)
    cpdef check_session(self)
    cpdef post(self, shard, typ, args)
    cpdef post_quiet(self, shard, typ, args)
    cpdef recorded(self)
    cpdef txn_lost(self, core, err)
    cpdef forget_txn(self, core)
    cpdef begin_session(self)
    cpdef _fail(self, _Call call, err)
    @cython.locals(w=_Waiter)
    cpdef _complete(self, _Call call)
    cpdef _expire_local(self)
    cpdef _set_owner(self, kind, owner=*)
    cpdef _wake_owner_locked(self)
    @cython.locals(w=_Waiter)
    cpdef _leave_locked(self)
    cpdef _turn_locked(self, double now)
    @cython.locals(now=double, nxt=double, hk=bint, demoted=bint, timeout=int, i=Py_ssize_t, n=Py_ssize_t, mu=Mutex,
                   heap=list, untimed=list, due=double)
    cpdef _serve(self, _Waiter w=*, list calls=*, double now=*)
    cpdef _drain_wake_locked(self)
    @cython.locals(c=_Call, lease=double, more=bint, pending=dict, _shapes=dict)
    cpdef _recv(self, Py_ssize_t i, bint drain)
    cpdef _send_all(self, double now)
    @cython.locals(c=_Call, i=Py_ssize_t, seq=Py_ssize_t, retry=double, when=double, due=double, seqs=list,
                   pendings=list, frames=dict, req=list, single=bint)
    cpdef double _send_calls(self, list calls, double now, bint timed=*) except? -1.0
    @cython.locals(c=_Call)
    cpdef _time_calls(self, list calls)
    @cython.locals(heap=list)
    cpdef _push_timer(self, double when, _Call c)
    cpdef bint _quiet_locked(self, double now)
    @cython.locals(p=dict)
    cpdef bint _any_pending(self)
    @cython.locals(pending=dict, n=Py_ssize_t, k=Py_ssize_t)
    cpdef _send_frame(self, Py_ssize_t i, list reqs)
    cpdef _send_one(self, Py_ssize_t i, _Call c)
    @cython.locals(c=_Call)
    cpdef _timers(self, double now)
    @cython.locals(w=_Waiter, c=_Call, now=double, rt=double, mu=Mutex)
    cpdef call_many(self, specs)
    @cython.locals(mu=Mutex, promoted=bint)
    cpdef _follow(self, _Waiter w)
