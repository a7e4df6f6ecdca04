# cython: language_level=3
"""The shard's compiled frame helper: LOCK_MANY items straight from the wire's
bytes into the table's PackedItems (lockmgr/_core/_ctable.pyx).

Interface:
    split_lock_many(frame) -> None | (copy, [(request index, PackedItems), ...])

Used by lockmgr.service.wire.unpack_requests_packed only; without a compiler
the shard decodes every frame with msgpack (the same answers, slower).
"""

from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.string cimport memcpy, memchr
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t

from lockmgr._core._ctable cimport PackedItems, lt_item, LT_MAX_COMPONENT, LT_IS, LT_X

cdef extern from "Python.h":
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE"(object o)
    char *_bytes_data "PyBytes_AS_STRING"(object o)
    object _bytes_new "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n)

__all__ = ["split_lock_many"]

DEF KEYBUF = 4096       # LT_MAX_KEY
DEF MAXDEPTH = 32       # LT_MAX_DEPTH

# The shard's hot LOCK_MANY path. msgpack would decode each item into two
# lists, a str and ints, which Table.lock_many then validates and encodes into
# canonical keys; at 64 items a request that was about a third of the shard's
# CPU. split_lock_many() instead walks the frame's bytes once, without making
# Python objects, and turns the items of each LOCK_MANY whose items are all
# valid into a PackedItems (canonical keys, ends, modes: what lt_lock_many
# takes). The rest of the frame is decoded by msgpack as before, from a copy in
# which each such items array is replaced by the placeholder 0; the caller
# puts the PackedItems in its place (lockmgr.service.wire.unpack_requests_packed).
#
# Equivalence (what makes the shortcut invisible): an items array is packed
# only if every item would pass Table.lock_many's validation with the same
# key and mode -- a [path, mode] array, path an array of 1..32 str (valid
# UTF-8, as msgpack's strict decoding requires) / int (signed 64-bit) / bin
# components of at most 1024 bytes, or one bare component; at most 4096 key
# bytes; mode an int in 1..5 -- and there are 1..MAX_BATCH items. Anything
# else (an error to report, an odd encoding, ext types, trailing bytes) is left
# in the frame for msgpack and the ordinary path, which gives the same
# answers and errors as before. The frame's structure is walked by the format
# alone (every msgpack type is skipped by its length), so the copy decodes to
# the original's objects exactly, bar the placeholders.

DEF MAX_BATCH = 4096    # lockmgr.service.wire.MAX_BATCH
DEF LOCK_MANY = 11      # lockmgr.service.wire.LOCK_MANY
DEF SKIP_DEPTH = 64     # deeper nesting: not split (msgpack decodes it)


cdef inline uint64_t _be(const uint8_t *p, int n) nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(n):
        v = (v << 8) | p[k]
    return v


cdef Py_ssize_t _skip(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, int depth) nogil:
    """The position after the msgpack object at ``pos``; -1 if it is not one
    (truncated, the never-used byte 0xc1, or nested deeper than SKIP_DEPTH)."""
    cdef uint8_t b
    cdef uint64_t n, cnt
    cdef Py_ssize_t avail
    if pos >= end:
        return -1
    b = p[pos]
    avail = end - pos
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
        return pos + 1
    if b <= 0x8f:                     # fixmap
        cnt = 2 * (b & 0x0f)
        pos += 1
    elif b <= 0x9f:                   # fixarray
        cnt = b & 0x0f
        pos += 1
    elif b <= 0xbf:                   # fixstr
        n = 1 + (b & 0x1f)
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc4 or b == 0xd9:      # bin8, str8
        if avail < 2:
            return -1
        n = 2 + p[pos + 1]
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc5 or b == 0xda:      # bin16, str16
        if avail < 3:
            return -1
        n = 3 + _be(p + pos + 1, 2)
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc6 or b == 0xdb:      # bin32, str32
        if avail < 5:
            return -1
        n = 5 + _be(p + pos + 1, 4)
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc7:                   # ext8
        if avail < 2:
            return -1
        n = 3 + p[pos + 1]
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc8:                   # ext16
        if avail < 3:
            return -1
        n = 4 + _be(p + pos + 1, 2)
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xc9:                   # ext32
        if avail < 5:
            return -1
        n = 6 + _be(p + pos + 1, 4)
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xca:                   # float32
        return pos + 5 if avail >= 5 else -1
    elif b == 0xcb:                   # float64
        return pos + 9 if avail >= 9 else -1
    elif b >= 0xcc and b <= 0xd3:     # uint8..64, int8..64
        n = 1 + (1 << ((b - 0xcc) & 3))
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b >= 0xd4 and b <= 0xd8:     # fixext 1..16
        n = 2 + (1 << (b - 0xd4))
        return pos + <Py_ssize_t>n if <uint64_t>avail >= n else -1
    elif b == 0xdc or b == 0xde:      # array16, map16
        if avail < 3:
            return -1
        cnt = _be(p + pos + 1, 2) * (2 if b == 0xde else 1)
        pos += 3
    elif b == 0xdd or b == 0xdf:      # array32, map32
        if avail < 5:
            return -1
        cnt = _be(p + pos + 1, 4) * (2 if b == 0xdf else 1)
        pos += 5
    else:                             # 0xc1: never used
        return -1
    if cnt > <uint64_t>(end - pos):   # every element takes at least one byte
        return -1
    if depth >= SKIP_DEPTH:
        return -1
    while cnt:
        pos = _skip(p, pos, end, depth + 1)
        if pos < 0:
            return -1
        cnt -= 1
    return pos


cdef inline Py_ssize_t _array(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, uint64_t *cnt) nogil:
    """If an array header is at ``pos``: its length in cnt, the position after
    the header. Else -1."""
    cdef uint8_t b
    if pos >= end:
        return -1
    b = p[pos]
    if 0x90 <= b <= 0x9f:
        cnt[0] = b & 0x0f
        return pos + 1
    if b == 0xdc and end - pos >= 3:
        cnt[0] = _be(p + pos + 1, 2)
        return pos + 3
    if b == 0xdd and end - pos >= 5:
        cnt[0] = _be(p + pos + 1, 4)
        return pos + 5
    return -1


cdef inline Py_ssize_t _int(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, int64_t *v) nogil:
    """If a msgpack int in the signed 64-bit range is at ``pos``: it in v,
    the position after it. Else -1."""
    cdef uint8_t b
    cdef int w
    cdef uint64_t u
    if pos >= end:
        return -1
    b = p[pos]
    if b <= 0x7f:
        v[0] = b
        return pos + 1
    if b >= 0xe0:
        v[0] = <int64_t>b - 256
        return pos + 1
    if b < 0xcc or b > 0xd3:
        return -1
    w = 1 << ((b - 0xcc) & 3)
    if end - pos < 1 + w:
        return -1
    u = _be(p + pos + 1, w)
    if b <= 0xcf:                     # unsigned
        if u > <uint64_t>0x7FFFFFFFFFFFFFFF:
            return -1
        v[0] = <int64_t>u
    elif w == 1:
        v[0] = <int8_t>u
    elif w == 2:
        v[0] = <int16_t>u
    elif w == 4:
        v[0] = <int32_t>u
    else:
        v[0] = <int64_t>u
    return pos + 1 + w


cdef inline bint _utf8_ok(const uint8_t *s, Py_ssize_t n) nogil:
    """Valid UTF-8 as Python's strict decoder has it (no overlong forms, no
    surrogates, nothing above U+10FFFF)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xc2:
            return False
        elif c < 0xe0:
            if i + 1 >= n or (s[i + 1] & 0xc0) != 0x80:
                return False
            i += 2
        elif c < 0xf0:
            if i + 2 >= n:
                return False
            c1 = s[i + 1]
            if (c1 & 0xc0) != 0x80 or (s[i + 2] & 0xc0) != 0x80:
                return False
            if (c == 0xe0 and c1 < 0xa0) or (c == 0xed and c1 >= 0xa0):
                return False          # overlong; surrogate
            i += 3
        elif c < 0xf5:
            if i + 3 >= n:
                return False
            c1 = s[i + 1]
            if (c1 & 0xc0) != 0x80 or (s[i + 2] & 0xc0) != 0x80 or (s[i + 3] & 0xc0) != 0x80:
                return False
            if (c == 0xf0 and c1 < 0x90) or (c == 0xf4 and c1 >= 0x90):
                return False          # overlong; above U+10FFFF
            i += 4
        else:
            return False
    return True


cdef Py_ssize_t _component(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end,
                           uint8_t *kb, Py_ssize_t *kpos) nogil:
    """Encode the path component at ``pos`` (a valid str, int or bin) into kb
    at kpos[0] (room for 3 + LT_MAX_COMPONENT bytes), advancing kpos[0];
    return the position after it, or -1 if it is not a valid component. (The
    caller checks the key's total size.)"""
    cdef uint8_t b
    cdef uint64_t n
    cdef Py_ssize_t h
    cdef int64_t v
    cdef uint64_t u
    cdef int k, tag
    if pos >= end:
        return -1
    b = p[pos]
    if 0xa0 <= b <= 0xbf:
        n = b & 0x1f
        h = 1
        tag = 1
    elif b == 0xd9 or b == 0xc4:
        if end - pos < 2:
            return -1
        n = p[pos + 1]
        h = 2
        tag = 1 if b == 0xd9 else 3
    elif b == 0xda or b == 0xc5:
        if end - pos < 3:
            return -1
        n = _be(p + pos + 1, 2)
        h = 3
        tag = 1 if b == 0xda else 3
    elif b == 0xdb or b == 0xc6:
        if end - pos < 5:
            return -1
        n = _be(p + pos + 1, 4)
        h = 5
        tag = 1 if b == 0xdb else 3
    else:
        h = _int(p, pos, end, &v)
        if h < 0:
            return -1
        kb += kpos[0]
        kb[0] = 2
        u = <uint64_t>v
        for k in range(8):
            kb[1 + k] = <uint8_t>(u >> (56 - 8 * k))
        kpos[0] += 9
        return h
    if n > LT_MAX_COMPONENT or <uint64_t>(end - pos - h) < n:
        return -1
    if tag == 1 and not _utf8_ok(p + pos + h, <Py_ssize_t>n):
        return -1
    kb += kpos[0]
    kb[0] = <uint8_t>tag
    kb[1] = <uint8_t>(n >> 8)
    kb[2] = <uint8_t>(n & 0xFF)
    memcpy(kb + 3, p + pos + h, n)
    kpos[0] += 3 + <Py_ssize_t>n
    return pos + h + <Py_ssize_t>n


cdef PackedItems _pack_items(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end):
    """The items array at ``pos`` as PackedItems, or None if it is not one
    that may be packed (see the section comment)."""
    cdef uint64_t cnt, d
    cdef Py_ssize_t i, j, kpos = 0, kcap, epos = 0, kstart
    cdef int64_t mode
    cdef uint8_t *grown
    cdef lt_item *it
    cdef PackedItems pk
    pos = _array(p, pos, end, &cnt)
    if pos < 0 or cnt == 0 or cnt > MAX_BATCH or cnt > <uint64_t>(end - pos):
        return None
    pk = PackedItems.__new__(PackedItems)
    kcap = 32 * <Py_ssize_t>cnt + KEYBUF
    pk.keys = <uint8_t *>PyMem_Malloc(kcap)
    pk.ends = <uint16_t *>PyMem_Malloc(cnt * MAXDEPTH * sizeof(uint16_t))
    pk.items = <lt_item *>PyMem_Malloc(cnt * sizeof(lt_item))
    if pk.keys == NULL or pk.ends == NULL or pk.items == NULL:
        raise MemoryError()
    for i in range(<Py_ssize_t>cnt):
        pos = _array(p, pos, end, &d)
        if pos < 0 or d != 2:
            return None
        if kcap - kpos < 2 * KEYBUF:   # a key <= KEYBUF, and its last component may overshoot by one
            grown = <uint8_t *>PyMem_Realloc(pk.keys, 2 * kcap)
            if grown == NULL:
                raise MemoryError()
            pk.keys = grown
            kcap *= 2
        it = &pk.items[i]
        it.off = <uint32_t>kpos
        it.eoff = <uint32_t>epos
        kstart = kpos
        if pos < end and (0x90 <= p[pos] <= 0x9f or p[pos] == 0xdc or p[pos] == 0xdd):
            pos = _array(p, pos, end, &d)
            if pos < 0 or d == 0 or d > MAXDEPTH:
                return None
        else:
            d = 0                   # one bare component
        j = 0
        while True:
            pos = _component(p, pos, end, pk.keys, &kpos)
            if pos < 0 or kpos - kstart > KEYBUF:
                return None
            pk.ends[epos + j] = <uint16_t>(kpos - kstart)
            j += 1
            if j >= <Py_ssize_t>d:
                break
        it.depth = <uint8_t>j
        epos += j
        pos = _int(p, pos, end, &mode)
        if pos < 0 or mode < LT_IS or mode > LT_X:
            return None
        it.mode = <uint8_t>mode
    pk.n = <Py_ssize_t>cnt
    return pk


cdef inline bint _has_marker(const uint8_t *p, Py_ssize_t end):
    """The bytes 0x97 0x0b are in p[:end]: they start a 7-element LOCK_MANY request
    as msgpack-python and the client encode it; without them (e.g. a frame of
    single LOCKs) the walk would find nothing to pack (other encodings are
    decoded by msgpack, correctly, only not packed)."""
    cdef const uint8_t *q = p
    cdef const uint8_t *last = p + end - 1      # (a marker starts before the last byte)
    while q < last:
        q = <const uint8_t *>memchr(q, 0x97, <size_t>(last - q))
        if q == NULL:
            return False
        if q[1] == 0x0b:
            return True
        q += 1
    return False


def split_lock_many(frame):
    """Pack the items of the frame's LOCK_MANY requests (see the section
    comment above). Returns None if there is nothing to pack, else
    ``(copy, [(request index, PackedItems), ...])``: ``copy`` is the frame
    with each packed items array replaced by the msgpack int 0."""
    cdef const uint8_t *p
    cdef Py_ssize_t end, pos, i, k, s0, s1, size, at
    cdef uint64_t cnt, nreq, nel
    cdef PackedItems pk
    cdef list spans = []
    cdef char *out
    if type(frame) is not bytes:
        return None
    p = <const uint8_t *>_bytes_data(frame)
    end = _bytes_size(frame)
    if not _has_marker(p, end):
        return None
    pos = _array(p, 0, end, &cnt)
    if pos < 0 or cnt != 4:
        return None
    for k in range(3):                          # version, session, ack
        pos = _skip(p, pos, end, 1)
        if pos < 0:
            return None
    pos = _array(p, pos, end, &nreq)
    if pos < 0:
        return None
    for i in range(<Py_ssize_t>nreq):
        s0 = _array(p, pos, end, &nel)
        if s0 >= 0 and nel == 7 and s0 < end and p[s0] == LOCK_MANY:
            pos = _skip(p, s0 + 1, end, 2)      # seq
            if pos >= 0:
                pos = _skip(p, pos, end, 2)     # txn
            if pos < 0:
                return None
            s0 = pos
            s1 = _skip(p, s0, end, 2)           # the items
            if s1 < 0:
                return None
            pk = _pack_items(p, s0, s1)
            if pk is not None:
                spans.append((i, pk, s0, s1))
            pos = s1
            for k in range(3):                  # nowait, timeout_ms, epoch
                pos = _skip(p, pos, end, 2)
                if pos < 0:
                    return None
        else:
            pos = _skip(p, pos, end, 1)
            if pos < 0:
                return None
    if pos != end or not spans:
        return None
    size = end
    for i, pk, s0, s1 in spans:
        size -= s1 - s0 - 1
    copy = _bytes_new(NULL, size)
    out = _bytes_data(copy)
    pos = 0
    at = 0
    for i, pk, s0, s1 in spans:
        memcpy(out + at, p + pos, s0 - pos)
        at += s0 - pos
        out[at] = 0
        at += 1
        pos = s1
    memcpy(out + at, p + pos, end - pos)
    return copy, [(i, pk) for i, pk, s0, s1 in spans]


