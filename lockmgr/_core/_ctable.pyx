# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled lock table: ``csrc/locktable.c`` behind a thin Cython class.

The compiled twin of :class:`lockmgr._core._pytable.Table`, with the same
interface and the same observable behaviour (tests/test_ctable.py drives both
with the same random operations and compares every answer). Each table call
-- validating the transaction id and mode, validating and encoding the path,
planning the ancestors' intention locks and the per-level table work -- is one
compiled call; Python objects are made only for what is returned.

Thread safety (Python with a GIL): every C call runs with the GIL held and
calls no Python code, so each is atomic; and every method copies what it
needs out of the table (woken ids, keys, cycle paths, the whole wait-for
graph) before it makes a Python object -- making one may run a garbage
collection, finalizers and so other threads, which may change the table.
So every method sees and returns one consistent state, like the Python
twin under its mutex.
"""

from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t

from ..errors import InvalidRequest

cdef extern from "Python.h":
    # Declared here without exception specs: errors are checked by hand so
    # they can become InvalidRequest without a try block on the hot path.
    const char *_utf8 "PyUnicode_AsUTF8AndSize"(object s, Py_ssize_t *size)
    unsigned long long _as_ull "PyLong_AsUnsignedLongLong"(object o)
    long long _as_ll_of "PyLong_AsLongLongAndOverflow"(object o, int *overflow)
    long _as_l_of "PyLong_AsLongAndOverflow"(object o, int *overflow)
    void *_err_occurred "PyErr_Occurred"()
    void _err_clear "PyErr_Clear"()
    int _err_matches "PyErr_ExceptionMatches"(object exc)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE"(object o)
    char *_bytes_data "PyBytes_AS_STRING"(object o)
    object _bytes_new "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n)

__all__ = ["Table", "WAITING", "CONFLICT", "SEARCH_LIMIT", "CONFLICTS", "SUPREMUM",
           "INTENTION", "encode", "DEBUG", "PackedItems"]

WAITING = LT_WAITING
CONFLICT = LT_CONFLICT
SEARCH_LIMIT = LT_SEARCH_LIMIT
#: The C copies of the matrices (lockmgr.modes holds the Python ones).
CONFLICTS = tuple([lt_conflicts[i] for i in range(6)])
SUPREMUM = tuple([tuple([lt_supremum[i][j] for j in range(6)]) for i in range(6)])
INTENTION = tuple([lt_intention[i] for i in range(6)])
#: True if built with LOCKTABLE_DEBUG (internal asserts, poisoned free slots).
DEBUG = bool(lt_debug_build())

DEF KEYBUF = 4096       # LT_MAX_KEY
DEF MAXDEPTH = 32       # LT_MAX_DEPTH
DEF TXN_MAX = 0xFFFFFFFFFFFFFFFF
DEF MANY_ITEMS = 64     # lock_many: items planned on the stack (more: one malloc)
DEF MANY_KEYS = 16384   # lock_many: key bytes on the stack (more: grown on the heap)



# ---------------------------------------------------------------- validation

cdef inline uint64_t _txn_id(object txn) except 0:
    cdef unsigned long long v
    if type(txn) is int:
        v = _as_ull(txn)
        if v == <unsigned long long>-1 and _err_occurred() != NULL:
            _err_clear()    # negative or above 2**64-1
            v = 0
        if v != 0:
            return v
    raise InvalidRequest(f"transaction id must be an int in 1..2**64-1; got {txn!r}")


cdef inline int _mode(object mode) except -1:
    cdef int of = 0
    cdef long v
    if type(mode) is not int:
        if type(mode) is bool or not isinstance(mode, int):
            raise InvalidRequest(
                f"unknown lock mode {mode!r}; expected one of Mode.IS, IX, S, SIX, X")
    v = _as_l_of(mode, &of)
    if v == -1 and _err_occurred() != NULL:
        return -1
    if of or v < LT_IS or v > LT_X:
        raise InvalidRequest(f"unknown lock mode {mode!r}; expected one of Mode.IS, IX, S, SIX, X")
    return <int>v


cdef uint64_t _lookup_id(object txn) except? 0:
    """The id a dict keyed by int would find for ``txn`` (0: none).

    The introspection methods of the Python twin look ``txn`` up in a dict
    without validating it; this gives the same answers (True finds 1, 1.0
    finds 1, an unhashable txn raises TypeError).
    """
    cdef unsigned long long v
    if type(txn) is int:
        v = _as_ull(txn)
        if v == <unsigned long long>-1 and _err_occurred() != NULL:
            _err_clear()
            return 0
        return v
    hash(txn)
    try:
        n = int(txn)
    except Exception:
        try:
            n = int(txn.real)
        except Exception:
            return 0
    try:
        if not (n == txn):
            return 0
    except Exception:
        return 0
    if 0 < n <= TXN_MAX:
        return <uint64_t>n
    return 0


cdef int _enc1(object c, Py_ssize_t i, uint8_t *buf, int pos) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    cdef int of = 0, k, tag
    cdef long long v
    cdef unsigned long long u
    cdef type t = type(c)
    if t is str:
        p = _utf8(c, &n)
        if p == NULL:
            if _err_matches(UnicodeEncodeError):
                _err_clear()
                raise InvalidRequest(
                    f"resource component {i} is a str that is not valid Unicode (lone surrogate)")
            return -1
        tag = 1
    elif t is int:
        v = _as_ll_of(c, &of)
        if of:
            raise InvalidRequest(f"resource component {i} is an int outside the signed 64-bit range")
        if v == -1 and _err_occurred() != NULL:
            return -1
        if pos + 9 > KEYBUF:
            raise InvalidRequest(f"resource path encodes to more than {KEYBUF} bytes")
        buf[pos] = 2
        u = <unsigned long long>v
        for k in range(8):
            buf[pos + 1 + k] = <uint8_t>(u >> (56 - 8 * k))
        return pos + 9
    elif t is bytes:
        n = _bytes_size(c)
        p = _bytes_data(c)
        tag = 3
    else:
        raise InvalidRequest(
            f"resource component {i} has type {t.__name__}; components must be str, int or bytes")
    if n > LT_MAX_COMPONENT:
        raise InvalidRequest(
            f"resource component {i} is {n} bytes long; at most {LT_MAX_COMPONENT} are allowed")
    if pos + 3 + n > KEYBUF:
        raise InvalidRequest(f"resource path encodes to more than {KEYBUF} bytes")
    buf[pos] = <uint8_t>tag
    buf[pos + 1] = <uint8_t>(n >> 8)
    buf[pos + 2] = <uint8_t>(n & 0xFF)
    memcpy(buf + pos + 3, p, n)
    return <int>(pos + 3 + n)


cdef int _encode(object resource, uint8_t *buf, uint16_t *ends, bint allow_list=False) except -1:
    """Validate and encode ``resource`` into buf; fill ends; return the depth.

    With ``allow_list`` a list of components is taken as the tuple (lock_many).
    """
    cdef Py_ssize_t n, i
    cdef int pos = 0
    cdef tuple tup
    cdef list lst
    cdef type t = type(resource)
    if t is tuple:
        tup = <tuple>resource
        n = len(tup)
        if n == 0:
            raise InvalidRequest("resource path is empty; it needs 1 to 32 components")
        if n > MAXDEPTH:
            raise InvalidRequest(f"resource path has {n} components; at most {MAXDEPTH} are allowed")
        for i in range(n):
            pos = _enc1(tup[i], i, buf, pos)
            ends[i] = <uint16_t>pos
        return <int>n
    if allow_list and t is list:
        # _enc1 runs no Python code unless it raises, so the list cannot
        # change under us between the length check and the last item.
        lst = <list>resource
        n = len(lst)
        if n == 0:
            raise InvalidRequest("resource path is empty; it needs 1 to 32 components")
        if n > MAXDEPTH:
            raise InvalidRequest(f"resource path has {n} components; at most {MAXDEPTH} are allowed")
        for i in range(n):
            pos = _enc1(lst[i], i, buf, pos)
            ends[i] = <uint16_t>pos
        return <int>n
    if t is str or t is int or t is bytes:
        ends[0] = <uint16_t>_enc1(resource, 0, buf, 0)
        return 1
    raise InvalidRequest(
        f"resource must be a tuple of str/int/bytes components, or one such component; "
        f"got {t.__name__}")


cdef tuple _decode(const uint8_t *k, uint32_t n):
    cdef uint32_t i = 0, ln
    cdef unsigned long long u
    cdef int j
    out = []
    while i < n:
        if k[i] == 2:
            u = 0
            for j in range(8):
                u = (u << 8) | k[i + 1 + j]
            out.append(<long long>u)
            i += 9
        else:
            ln = (<uint32_t>k[i + 1] << 8) | k[i + 2]
            if k[i] == 1:
                out.append((<const char *>k)[i + 3:i + 3 + ln].decode("utf-8"))
            else:
                out.append(_bytes_new(<const char *>k + i + 3, ln))
            i += 3 + ln
    return tuple(out)


def encode(resource):
    """The canonical key of ``resource`` (the compiled twin of lockmgr.paths.encode)."""
    cdef uint8_t buf[KEYBUF]
    cdef uint16_t ends[MAXDEPTH]
    cdef int depth = _encode(resource, buf, ends)
    return _bytes_new(<const char *>buf, ends[depth - 1])


cdef list _woken(lt_table *t, int64_t n):
    # Copy first: the table's buffer is reused by the next call, which another
    # thread may make as soon as we create a Python object.
    cdef uint64_t small[16]
    cdef uint64_t *w = small
    cdef int64_t i
    if n > 16:
        w = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        if w == NULL:
            raise MemoryError()
    memcpy(w, lt_woken(t), n * sizeof(uint64_t))
    try:
        return [w[i] for i in range(n)]
    finally:
        if w != small:
            PyMem_Free(w)


cdef char *_own_keys(lt_row *rows, size_t n) except NULL:
    """Copy the keys rows point to (into the table) to a private buffer.

    Call with no Python code between the table call and this one; free the
    result with PyMem_Free.
    """
    cdef size_t i, total = 1, pos = 0
    cdef const uint8_t *prev = NULL
    cdef const uint8_t *orig
    cdef char *buf
    for i in range(n):
        if rows[i].key != prev:
            prev = rows[i].key
            total += rows[i].keylen
    buf = <char *>PyMem_Malloc(total)
    if buf == NULL:
        raise MemoryError()
    prev = NULL
    for i in range(n):
        orig = rows[i].key
        if orig != prev:
            prev = orig
            memcpy(buf + pos, orig, rows[i].keylen)
            pos += rows[i].keylen
        rows[i].key = <const uint8_t *>(buf + pos - rows[i].keylen)
    return buf


cdef object _fail(int64_t code, object txn, object path):
    if code == LT_E_ALREADY_WAITING:
        raise InvalidRequest(f"transaction {txn} is already waiting for a lock")
    if code == LT_E_NOT_HELD:
        raise InvalidRequest(f"transaction {txn} does not hold {path!r}")
    if code == LT_E_UNLOCK_WAITING:
        raise InvalidRequest(f"transaction {txn} is waiting for a lock; it cannot unlock meanwhile")
    if code == LT_E_HAS_CHILDREN:
        raise InvalidRequest(
            f"transaction {txn} still holds lock(s) below {path!r}; unlock those first")
    if code == LT_E_NOT_WEAKER:
        raise InvalidRequest(f"transaction {txn} holds {path!r} in a mode that does not cover the one asked "
                             f"for; a downgrade only goes to a weaker mode")
    if code == LT_E_NOMEM:
        raise MemoryError("lock table: out of memory")
    raise AssertionError(f"lock table: internal error {code}")


# ---------------------------------------------------------------- LOCK_MANY items, packed
#
# A PackedItems holds the items of one LOCK_MANY already validated and encoded
# into canonical keys (keys, ends, lt_items: what lt_lock_many takes). The
# shard's frame decoder makes them straight from the wire's bytes
# (lockmgr/service/_cwire.pyx, split_lock_many); Table.lock_many takes one in
# place of a list of items.

cdef class PackedItems:
    """The items of one LOCK_MANY, validated and encoded from the wire.

    Made by ``split_lock_many``; ``Table.lock_many`` takes it in place of the
    list of items. ``len()`` is the number of items; ``decoded()`` gives them
    as ``[(path tuple, mode)]`` (what the shard's slow paths use).
    """

    # (its C fields are declared in _ctable.pxd: lockmgr/service/_cwire.pyx fills them)

    def __cinit__(self):
        self.keys = NULL
        self.ends = NULL
        self.items = NULL
        self.n = 0

    def __dealloc__(self):
        PyMem_Free(self.keys)
        PyMem_Free(self.ends)
        PyMem_Free(self.items)

    def __len__(self):
        return self.n

    def decoded(self):
        """``[(path, mode)]``, the paths as tuples."""
        cdef Py_ssize_t i
        cdef lt_item *it
        out = []
        for i in range(self.n):
            it = &self.items[i]
            out.append((_decode(self.keys + it.off, self.ends[it.eoff + it.depth - 1]), it.mode))
        return out

    def __repr__(self):
        return f"PackedItems({self.decoded()!r})"


# ---------------------------------------------------------------- the table

cdef class Table:
    """A lock table. Thread-safe: every call is atomic (the C code runs under the
    GIL and never calls back into Python; docs/table.md, "Thread safety of the table").

    The compiled twin of ``lockmgr._core._pytable.Table``; see that class and
    docs/table.md for the semantics.
    """

    cdef lt_table *_t

    def __cinit__(self, escalation_threshold=5000, token_base=0):
        if type(escalation_threshold) is not int or escalation_threshold < 1:
            raise InvalidRequest("escalation_threshold must be a positive int")
        if type(token_base) is not int or not 0 <= token_base < (1 << 63):
            raise InvalidRequest("token_base must be an int in 0..2**63-1")
        self._t = lt_create(<uint64_t>min(escalation_threshold, TXN_MAX), <uint64_t>token_base)
        if self._t == NULL:
            raise MemoryError("lock table: out of memory")

    def __dealloc__(self):
        if self._t != NULL:
            lt_destroy(self._t)
            self._t = NULL

    # ------------------------------------------------------------ lock

    def lock(self, txn, resource, mode, nowait=False):
        """Lock ``resource`` and, root to leaf, the intention mode on its ancestors.

        Returns the fencing token of the grant (> 0), ``WAITING`` if a request
        was queued (call again once it is granted to continue down the path),
        or ``CONFLICT`` if ``nowait`` and some level would wait (then nothing
        changed). Runtime complexity: O(depth) expected.
        """
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef uint64_t tid = _txn_id(txn)
        cdef int m = _mode(mode)
        cdef int depth = _encode(resource, buf, ends)
        cdef int nw = 1 if nowait else 0
        cdef int64_t r = lt_lock(self._t, tid, buf, ends, depth, m, nw)
        if r >= LT_CONFLICT:
            return r
        return _fail(r, txn, _decode(buf, ends[depth - 1]))

    def reclaim(self, txn, resource, mode, token):
        """Give ``txn`` back ``mode`` on ``resource`` with the fencing token it was
        granted before a restart (a shard's RECLAIM): as ``lock(..., nowait=True)``
        but never escalating, and the node's own request, if this call granted or
        converted it, keeps ``token`` (1..2**63-1); the token counter is raised to
        ``token`` if below it. A node already covered keeps its token. Returns the
        token, or ``CONFLICT`` (nothing changed). Runtime complexity: O(depth) expected.
        """
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef uint64_t tid = _txn_id(txn)
        cdef int m = _mode(mode)
        if type(token) is not int or not 0 < token < (1 << 63):
            raise InvalidRequest(f"a reclaimed token must be an int in 1..2**63-1; got {token!r}")
        cdef uint64_t tok = token
        cdef int depth = _encode(resource, buf, ends)
        cdef int64_t r = lt_reclaim(self._t, tid, buf, ends, depth, m, tok)
        if r >= LT_CONFLICT:
            return r
        return _fail(r, txn, _decode(buf, ends[depth - 1]))

    def lock_many(self, txn, items, nowait=False):
        """Lock each (resource, mode) of ``items`` in order, as successive
        lock() calls would, after validating all of them (InvalidRequest,
        nothing changed, if one is bad); stop after the first item that waits
        (or conflicts, with ``nowait``).

        Returns the list of the lock() results: all tokens if every item was
        granted, else the tokens of the items before item k followed by
        WAITING or CONFLICT for item k (k = len(result) - 1); the earlier
        items stay granted. Items are (resource, mode) tuples or lists; a
        resource may also be a list of components. ``items`` may also be a
        ``PackedItems`` (LOCK_MANY items decoded and validated straight from
        the wire by ``split_lock_many``). The full contract is in
        lockmgr/_core/_pytable.py (the comment above ``lock_many``).

        One compiled call: the items are validated and encoded into one
        buffer, then locked by lt_lock_many (one C loop, which reuses the
        lookups of the ancestors an item shares with the one before it), with
        no Python code in between (so, as every method, it sees one
        consistent table even with other threads). Runtime complexity:
        O(sum of depths) expected.
        """
        cdef uint64_t tid = _txn_id(txn)
        cdef type ti = type(items)
        cdef tuple tup
        cdef PackedItems pk
        cdef Py_ssize_t n, i
        cdef size_t pos = 0, cap = MANY_KEYS, epos = 0, done = 0
        cdef uint8_t kstack[MANY_KEYS]
        cdef lt_item istack[MANY_ITEMS]
        cdef uint16_t estack[MANY_ITEMS * MAXDEPTH]
        cdef int64_t rstack[MANY_ITEMS]
        cdef uint8_t *kbuf = kstack
        cdef uint8_t *grown
        cdef lt_item *its = istack
        cdef uint16_t *ends = estack
        cdef int64_t *res = rstack
        cdef lt_item *it
        cdef object item, rsrc, mode
        cdef int nw = 1 if nowait else 0
        cdef int depth
        cdef int64_t r = 0
        if ti is PackedItems:
            pk = <PackedItems>items
            n = pk.n
            if n > MANY_ITEMS:
                res = <int64_t *>PyMem_Malloc(n * sizeof(int64_t))
                if res == NULL:
                    raise MemoryError()
            try:
                r = lt_lock_many(self._t, tid, pk.keys, pk.ends, pk.items, <size_t>n, nw, res, &done)
                if r < LT_CONFLICT:
                    it = &pk.items[done - 1]
                    _fail(r, txn, _decode(pk.keys + it.off, pk.ends[it.eoff + it.depth - 1]))
                return [res[i] for i in range(<Py_ssize_t>done)]
            finally:
                if res != rstack:
                    PyMem_Free(res)
        if ti is tuple:
            tup = <tuple>items
        elif ti is list:
            tup = tuple(<list>items)     # a snapshot: validation may raise (and run other threads)
        else:
            raise InvalidRequest(
                f"lock_many items must be a list or tuple of (resource, mode) pairs; got {ti.__name__}")
        n = len(tup)
        if n == 0:
            return []
        try:
            if n > MANY_ITEMS:
                its = <lt_item *>PyMem_Malloc(n * sizeof(lt_item))
                ends = <uint16_t *>PyMem_Malloc(n * MAXDEPTH * sizeof(uint16_t))
                res = <int64_t *>PyMem_Malloc(n * sizeof(int64_t))
                if its == NULL or ends == NULL or res == NULL:
                    raise MemoryError()
            # 1. validate and encode everything; nothing changes on an error
            for i in range(n):
                item = tup[i]
                ti = type(item)
                if (ti is not tuple and ti is not list) or len(item) != 2:
                    raise InvalidRequest(f"lock_many item {i} must be a (resource, mode) pair; got {item!r}")
                rsrc = item[0]
                mode = item[1]
                if cap - pos < KEYBUF:
                    if kbuf == kstack:
                        grown = <uint8_t *>PyMem_Malloc(2 * cap)
                        if grown != NULL:
                            memcpy(grown, kstack, pos)
                    else:
                        grown = <uint8_t *>PyMem_Realloc(kbuf, 2 * cap)
                    if grown == NULL:
                        raise MemoryError()
                    kbuf = grown
                    cap *= 2
                it = &its[i]
                try:
                    it.mode = <uint8_t>_mode(mode)
                    depth = _encode(rsrc, kbuf + pos, ends + epos, True)
                except InvalidRequest as e:
                    raise InvalidRequest(f"lock_many item {i}: {e}") from None
                it.depth = <uint8_t>depth
                it.off = <uint32_t>pos
                it.eoff = <uint32_t>epos
                pos += ends[epos + depth - 1]
                epos += depth
            # 2. lock in order; stop after the first item that is not granted
            r = lt_lock_many(self._t, tid, kbuf, ends, its, <size_t>n, nw, res, &done)
            if r < LT_CONFLICT:
                # LT_E_ALREADY_WAITING (item 0: nothing changed) or out of memory
                it = &its[done - 1]
                _fail(r, txn, _decode(kbuf + it.off, ends[it.eoff + it.depth - 1]))
            return [res[i] for i in range(<Py_ssize_t>done)]
        finally:
            if kbuf != kstack:
                PyMem_Free(kbuf)
            if its != istack:
                PyMem_Free(its)
            if ends != estack:
                PyMem_Free(ends)
            if res != rstack:
                PyMem_Free(res)

    def unlock(self, txn, resource):
        """Release one node held by ``txn`` (early release); the woken txn ids.

        Refused with InvalidRequest if the node is not held, or while ``txn``
        holds a descendant of it. A node not held itself but covered by an
        escalated ancestor lock is a no-op. Runtime complexity: O(queue).
        """
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef uint64_t tid = _txn_id(txn)
        cdef int depth = _encode(resource, buf, ends)
        cdef int64_t n = lt_unlock(self._t, tid, buf, ends, depth)
        if n == 0:
            return []
        if n > 0:
            return _woken(self._t, n)
        return _fail(n, txn, _decode(buf, ends[depth - 1]))

    def downgrade(self, txn, resource, mode):
        """Set ``txn``'s lock on ``resource`` back to the weaker ``mode`` (one it
        held before a conversion); the woken txn ids.

        For undoing a conversion that a later step refused (the service's strong
        locks above the partition depth). Refused with InvalidRequest, nothing
        changed: not held, ``txn`` waits, ``mode`` not covered by the held mode,
        or ``mode`` too weak for the intention its children need. The token is
        kept. Runtime complexity: O(queue).
        """
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef uint64_t tid = _txn_id(txn)
        cdef int depth = _encode(resource, buf, ends)
        cdef int m = _mode(mode)
        cdef int64_t n = lt_downgrade(self._t, tid, buf, ends, depth, m)
        if n == 0:
            return []
        if n > 0:
            return _woken(self._t, n)
        return _fail(n, txn, _decode(buf, ends[depth - 1]))

    def release_all(self, txn):
        """Release every request of ``txn`` (held or waiting); the woken txn ids.

        Runtime complexity: O(its locks).
        """
        cdef uint64_t tid = _txn_id(txn)
        cdef int64_t n = lt_release_all(self._t, tid)
        if n == 0:
            return []
        if n > 0:
            return _woken(self._t, n)
        return _fail(n, txn, None)

    def cancel_wait(self, txn):
        """Withdraw the request ``txn`` waits on (a conversion falls back to its held mode).

        Returns the woken txn ids. Runtime complexity: O(queue).
        """
        cdef uint64_t tid = _txn_id(txn)
        cdef int64_t n = lt_cancel_wait(self._t, tid)
        if n == 0:
            return []
        if n > 0:
            return _woken(self._t, n)
        return _fail(n, txn, None)

    # ------------------------------------------------------------ introspection

    def is_waiting(self, txn):
        """True if ``txn`` waits for a lock. O(1)."""
        cdef uint64_t tid = _lookup_id(txn)
        return tid != 0 and lt_is_waiting(self._t, tid) != 0

    def waiting_on(self, txn):
        """``(path, mode)`` that ``txn`` waits for, or None. O(1)."""
        cdef uint64_t tid = _lookup_id(txn)
        cdef const uint8_t *key
        cdef uint32_t klen
        cdef int mode
        cdef uint8_t buf[KEYBUF]
        if tid == 0 or not lt_waiting_on(self._t, tid, &key, &klen, &mode):
            return None
        memcpy(buf, key, klen)
        return (_decode(buf, klen), mode)

    def mode_held(self, txn, resource):
        """The mode ``txn`` holds on ``resource`` itself (NL if none). O(depth)."""
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef int depth = _encode(resource, buf, ends)
        cdef uint64_t tid = _lookup_id(txn)
        if tid == 0:
            return LT_NL
        return lt_mode_held(self._t, tid, buf, ends[depth - 1])

    def node(self, resource):
        """``[(txn, mode, granted)]`` of the requests on ``resource`` itself: its
        holders (held mode) in first-grant order, then waiting conversions and new
        waiters, FIFO (wanted mode); ``[]`` if nothing is held or queued there.
        O(depth + its queue)."""
        cdef uint8_t buf[KEYBUF]
        cdef uint16_t ends[MAXDEPTH]
        cdef int depth = _encode(resource, buf, ends)
        cdef lt_row small[16]
        cdef lt_row *rows = small
        cdef size_t n = lt_node(self._t, buf, ends[depth - 1], small, 16), i
        if n > 16:
            rows = <lt_row *>PyMem_Malloc(n * sizeof(lt_row))
            if rows == NULL:
                raise MemoryError()
            n = lt_node(self._t, buf, ends[depth - 1], rows, n)
        try:
            return [(rows[i].txn, rows[i].mode, bool(rows[i].granted)) for i in range(n)]
        finally:
            if rows != small:
                PyMem_Free(rows)

    def held(self, txn):
        """``[(path, mode)]`` granted to ``txn``, in request-creation order. O(its locks)."""
        cdef uint64_t tid = _lookup_id(txn)
        cdef size_t n, i
        cdef lt_row *rows
        if tid == 0:
            return []
        n = lt_txn_nreqs(self._t, tid)
        if n == 0:
            return []
        rows = <lt_row *>PyMem_Malloc(n * sizeof(lt_row))
        if rows == NULL:
            raise MemoryError()
        cdef char *keys = NULL
        try:
            n = lt_held(self._t, tid, rows)
            keys = _own_keys(rows, n)
            return [(_decode(rows[i].key, rows[i].keylen), rows[i].mode) for i in range(n)]
        finally:
            PyMem_Free(rows)
            PyMem_Free(keys)

    def transactions(self):
        """The ids of every transaction with a request, in order of creation. O(n)."""
        cdef size_t n = lt_ntxns(self._t), i
        cdef uint64_t *ids
        if n == 0:
            return []
        ids = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        if ids == NULL:
            raise MemoryError()
        try:
            n = lt_txn_ids(self._t, ids)
            return [ids[i] for i in range(n)]
        finally:
            PyMem_Free(ids)

    def wait_for_graph(self):
        """``{txn: set(txns it waits for)}`` for every waiting txn. O(queues waited on)."""
        cdef size_t n = lt_wait_graph(self._t, NULL), i = 0
        cdef uint64_t k, j
        cdef uint64_t *words
        g = {}
        if n == 0:
            return g
        words = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        if words == NULL:
            raise MemoryError()
        try:
            lt_wait_graph(self._t, words)
            while i < n:
                k = words[i + 1]
                g[words[i]] = {words[i + 2 + j] for j in range(k)}
                i += 2 + k
            return g
        finally:
            PyMem_Free(words)

    def find_cycle(self, txn):
        """A wait-for cycle through ``txn`` as a list of txn ids starting with it.

        Depth-first over the wait-for edges in their defined order; visits at
        most SEARCH_LIMIT transactions. Returns [] if none was found.
        """
        cdef uint64_t tid = _lookup_id(txn)
        cdef const uint64_t *path
        cdef size_t n, i
        cdef int rc
        if tid == 0:
            return []
        rc = lt_find_cycle(self._t, tid, &path, &n)
        if rc < 0:
            raise MemoryError()
        if rc == 0:
            return []
        cdef uint64_t *own = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        if own == NULL:
            raise MemoryError()
        memcpy(own, path, n * sizeof(uint64_t))
        try:
            out = [txn]
            for i in range(1, n):
                out.append(own[i])
            return out
        finally:
            PyMem_Free(own)

    def snapshot(self):
        """``[(path, txn, mode, granted)]``: per resource, holders in first-grant
        order (held mode), then waiting conversions and then new waiters, FIFO
        (wanted mode). The order of resources is unspecified."""
        cdef size_t n = lt_nrows(self._t), i
        cdef lt_row *rows
        cdef const uint8_t *last = NULL
        if n == 0:
            return []
        rows = <lt_row *>PyMem_Malloc(n * sizeof(lt_row))
        if rows == NULL:
            raise MemoryError()
        cdef char *keys = NULL
        try:
            n = lt_snapshot(self._t, rows)
            keys = _own_keys(rows, n)
            out = []
            path = None
            for i in range(n):
                if rows[i].key != last:
                    last = rows[i].key
                    path = _decode(rows[i].key, rows[i].keylen)
                out.append((path, rows[i].txn, rows[i].mode, bool(rows[i].granted)))
            return out
        finally:
            PyMem_Free(rows)
            PyMem_Free(keys)

    def stats(self):
        """Counters: granted, waited, escalations, requests, resources,
        transactions, last_token, searches (deadlock searches run)."""
        cdef lt_stats_t s
        lt_stats(self._t, &s)
        return {
            "granted": s.granted,
            "waited": s.waited,
            "escalations": s.escalations,
            "requests": s.requests,
            "resources": s.resources,
            "transactions": s.transactions,
            "last_token": s.last_token,
            "searches": s.searches,
        }

    def _check(self):
        """Assert every invariant of the table (docs/table.md, "Invariants")."""
        cdef const char *msg = lt_check(self._t)
        if msg != NULL:
            raise AssertionError("lock table invariant: " + msg.decode("utf-8", "replace"))

    # ------------------------------------------------------------ test hooks

    def _alloc_counts(self):
        """Live slab objects and heap blocks of this table (a leak check).

        ``live_*`` count requests, resources, transactions and out-of-line key
        blocks in use; ``heap_blocks`` the malloc'd blocks outstanding (slab
        chunks, hash arrays, buffers). Works in every build; ``debug`` says if
        this is a LOCKTABLE_DEBUG build.
        """
        cdef lt_alloc_t a
        lt_alloc_counts(self._t, &a)
        return {
            "live_requests": a.live_requests,
            "live_resources": a.live_resources,
            "live_txns": a.live_txns,
            "live_key_blocks": a.live_key_blocks,
            "chunks": a.chunks,
            "heap_blocks": a.heap_blocks,
            "heap_allocs": a.heap_allocs,
            "hash_slots": a.hash_slots,
            "debug": DEBUG,
        }

    def _compact(self):
        """Give every slab chunk and buffer back if the table is empty; True if done."""
        cdef int rc = lt_compact(self._t)
        if rc == LT_E_NOMEM:
            raise MemoryError()
        return rc == 0

    def _debug_set_hash_mask(self, mask):
        """AND ``mask`` into every key hash (0: every key collides). Empty table only."""
        if lt_debug_set_hash_mask(self._t, <uint32_t>mask) != 0:
            raise InvalidRequest("the hash mask can only be changed on an empty table")
