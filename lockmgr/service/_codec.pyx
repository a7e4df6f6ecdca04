# cython: language_level=3
"""A compiled msgpack codec for the types the wire uses: the same bytes as
``msgpack.packb(obj, use_bin_type=True)`` and the same objects as
``msgpack.unpackb(frame, raw=False, strict_map_key=False, use_list=True)``,
several times cheaper for the small frames of the lock round trip (msgpack's
general Packer and unpackb's keyword parsing cost more than the encoding).

Interface:
    pack(obj) -> bytes           raises Unsupported for what it does not handle
    pack_request(version, session, ack, typ, seq, args) -> bytes
                                 pack([version, session, ack, [[typ, seq, *args]]])
                                 without building those lists (args: list or tuple)
    unpack(frame, max_array=-1, max_map=-1, max_str=-1) -> object
                                 raises Unsupported for what it does not handle
    unpack_body(frame, version) -> object
                                 x of a frame [version, x] (a shard's replies),
                                 without the outer list; any other frame: Unsupported
    Unsupported                  (a ValueError) the caller then uses msgpack itself

Used by lockmgr.service.wire only, which falls back to msgpack on Unsupported:
so every error (a bad frame, an unencodable object, an over-deep nesting, an
ext type, trailing bytes) is msgpack's own, exactly as without this module.
What is handled: None, bool, int (signed and unsigned 64-bit), float, str,
bytes, list/tuple and dict on the way out; every msgpack type but ext on the
way in. tests/test_wire_codec.py checks both directions against msgpack on
random objects and random bytes.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t

__all__ = ["pack", "pack_request", "unpack", "unpack_body", "Unsupported"]

DEF MAX_DEPTH = 500     # deeper: msgpack decides (its own limits and errors)


class Unsupported(ValueError):
    """Not handled here: the caller uses msgpack for this object or frame."""


cdef object _UNSUPPORTED = Unsupported


# ---------------------------------------------------------------- encoding

cdef struct _Buf:
    char *p
    Py_ssize_t n, cap


cdef int _grow(_Buf *b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef char *q
    while cap < b.n + need:
        cap *= 2
    q = <char *>PyMem_Realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    return 0


cdef inline int _put(_Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        _grow(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int _head(_Buf *b, uint8_t tag, uint64_t v, int width) except -1:
    """``tag`` then ``v`` big-endian in ``width`` bytes (0: the tag alone)."""
    cdef char tmp[9]
    cdef int k
    tmp[0] = <char>tag
    for k in range(width):
        tmp[width - k] = <char>(v & 0xff)
        v >>= 8
    return _put(b, tmp, width + 1)


cdef int _len_head(_Buf *b, Py_ssize_t n, uint8_t fix, Py_ssize_t fixmax,
                   uint8_t t8, uint8_t t16, uint8_t t32) except -1:
    if n < fixmax:
        return _head(b, fix | <uint8_t>n, 0, 0)
    if t8 and n < 256:
        return _head(b, t8, n, 1)
    if n < 65536:
        return _head(b, t16, n, 2)
    if <uint64_t>n <= 0xffffffffULL:
        return _head(b, t32, n, 4)
    raise _UNSUPPORTED("too long")


cdef int _pack_int(_Buf *b, object o) except -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    cdef unsigned long long u
    if overflow > 0:
        if o > 0xffffffffffffffff:
            raise _UNSUPPORTED("int above 2**64-1")
        u = PyLong_AsUnsignedLongLong(o)
        return _head(b, 0xcf, u, 8)
    if overflow < 0:
        raise _UNSUPPORTED("int below -2**63")
    if v >= 0:
        if v < 128:
            return _head(b, <uint8_t>v, 0, 0)
        if v < 256:
            return _head(b, 0xcc, v, 1)
        if v < 65536:
            return _head(b, 0xcd, v, 2)
        if v <= 0xffffffffLL:
            return _head(b, 0xce, v, 4)
        return _head(b, 0xcf, v, 8)
    if v >= -32:
        return _head(b, <uint8_t>(<int8_t>v), 0, 0)
    if v >= -128:
        return _head(b, 0xd0, <uint8_t>(<int8_t>v), 1)
    if v >= -32768:
        return _head(b, 0xd1, <uint16_t>(<int16_t>v), 2)
    if v >= -2147483648LL:
        return _head(b, 0xd2, <uint32_t>(<int32_t>v), 4)
    return _head(b, 0xd3, <uint64_t>v, 8)


cdef int _pack(_Buf *b, object o, int depth) except -1:
    cdef Py_ssize_t n, i
    cdef const char *s
    cdef double d
    cdef uint64_t bits
    if depth > MAX_DEPTH:
        raise _UNSUPPORTED("too deep")
    if o is None:
        return _head(b, 0xc0, 0, 0)
    if o is True:
        return _head(b, 0xc3, 0, 0)
    if o is False:
        return _head(b, 0xc2, 0, 0)
    if isinstance(o, int):
        return _pack_int(b, o)
    if isinstance(o, float):
        d = PyFloat_AS_DOUBLE(o)
        memcpy(&bits, &d, 8)
        return _head(b, 0xcb, bits, 8)
    if type(o) is bytes:
        n = PyBytes_GET_SIZE(o)
        _len_head(b, n, 0, 0, 0xc4, 0xc5, 0xc6)
        return _put(b, PyBytes_AS_STRING(o), n)
    if isinstance(o, str):
        try:
            s = PyUnicode_AsUTF8AndSize(o, &n)
        except UnicodeEncodeError:
            raise _UNSUPPORTED("not UTF-8") from None
        _len_head(b, n, 0xa0, 32, 0xd9, 0xda, 0xdb)
        return _put(b, s, n)
    if isinstance(o, (list, tuple)):
        n = len(o)
        _len_head(b, n, 0x90, 16, 0, 0xdc, 0xdd)
        for i in range(n):
            _pack(b, o[i], depth + 1)
        return 0
    if isinstance(o, dict):
        n = len(o)
        _len_head(b, n, 0x80, 16, 0, 0xde, 0xdf)
        for k, v in (<dict>o).items():
            _pack(b, k, depth + 1)
            _pack(b, v, depth + 1)
        return 0
    raise _UNSUPPORTED(type(o).__name__)


cdef int _open(_Buf *b) except -1:
    """A buffer to pack into (every pack frees it with PyMem_Free, in a finally)."""
    b.cap = 256
    b.n = 0
    b.p = <char *>PyMem_Malloc(b.cap)
    if b.p == NULL:
        raise MemoryError()
    return 0


def pack(obj):
    """msgpack.packb(obj, use_bin_type=True), for the types listed above."""
    cdef _Buf b
    _open(&b)
    try:
        _pack(&b, obj, 0)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)


def pack_request(version, session, ack, typ, seq, args):
    """pack([version, session, ack, [[typ, seq, *args]]]): the frame of one
    request (a client's usual frame), written without the three lists."""
    cdef _Buf b
    cdef Py_ssize_t n, i
    if type(args) is not list and type(args) is not tuple:
        raise _UNSUPPORTED("args must be a list or a tuple")
    n = len(args)
    _open(&b)
    try:
        _head(&b, 0x94, 0, 0)                       # [version, session, ack, requests]
        _pack(&b, version, 1)
        _pack(&b, session, 1)
        _pack(&b, ack, 1)
        _head(&b, 0x91, 0, 0)                       # requests: one
        _len_head(&b, n + 2, 0x90, 16, 0, 0xdc, 0xdd)
        _pack(&b, typ, 3)
        _pack(&b, seq, 3)
        for i in range(n):
            _pack(&b, args[i], 3)
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)


# ---------------------------------------------------------------- decoding

cdef struct _In:
    const uint8_t *p
    Py_ssize_t pos, end
    Py_ssize_t max_array, max_map, max_str     # msgpack's max_*_len (over one: Unsupported)


cdef inline uint64_t _be(_In *r, int n) except? 0xffffffffffffffff:
    cdef uint64_t v = 0
    cdef int k
    if r.pos + n > r.end:
        raise _UNSUPPORTED("truncated")
    for k in range(n):
        v = (v << 8) | r.p[r.pos + k]
    r.pos += n
    return v


cdef object _str(_In *r, Py_ssize_t n):
    cdef object s
    if n > r.max_str:
        raise _UNSUPPORTED("over max_str_len")
    if n > r.end - r.pos:
        raise _UNSUPPORTED("truncated")
    try:
        s = PyUnicode_DecodeUTF8(<const char *>(r.p + r.pos), n, NULL)
    except UnicodeDecodeError:
        raise _UNSUPPORTED("not UTF-8") from None
    r.pos += n
    return s


cdef object _bin(_In *r, Py_ssize_t n):
    if n > r.max_str:
        raise _UNSUPPORTED("over max_bin_len")
    if n > r.end - r.pos:
        raise _UNSUPPORTED("truncated")
    s = PyBytes_FromStringAndSize(<const char *>(r.p + r.pos), n)
    r.pos += n
    return s


cdef object _array(_In *r, Py_ssize_t n, int depth):
    cdef Py_ssize_t i
    cdef object x
    if n > r.max_array:
        raise _UNSUPPORTED("over max_array_len")
    if n > r.end - r.pos:      # every item takes at least one byte
        raise _UNSUPPORTED("truncated")
    lst = PyList_New(n)
    for i in range(n):
        x = _unpack(r, depth + 1)
        Py_INCREF(x)
        PyList_SET_ITEM(lst, i, x)
    return lst


cdef object _map(_In *r, Py_ssize_t n, int depth):
    cdef Py_ssize_t i
    cdef dict d = {}
    if n > r.max_map:
        raise _UNSUPPORTED("over max_map_len")
    if n > r.end - r.pos:
        raise _UNSUPPORTED("truncated")
    for i in range(n):
        k = _unpack(r, depth + 1)
        v = _unpack(r, depth + 1)
        try:
            d[k] = v
        except TypeError:          # an unhashable key: msgpack's error
            raise _UNSUPPORTED("unhashable key") from None
    return d


cdef object _unpack(_In *r, int depth):
    cdef uint8_t t
    cdef uint64_t u
    cdef double d
    cdef float f
    cdef uint32_t u32
    if depth > MAX_DEPTH:
        raise _UNSUPPORTED("too deep")
    if r.pos >= r.end:
        raise _UNSUPPORTED("truncated")
    t = r.p[r.pos]
    r.pos += 1
    if t < 0x80:
        return <long>t
    if t >= 0xe0:
        return <long>(<int8_t>t)
    if t < 0x90:
        return _map(r, t & 0x0f, depth)
    if t < 0xa0:
        return _array(r, t & 0x0f, depth)
    if t < 0xc0:
        return _str(r, t & 0x1f)
    if t == 0xc0:
        return None
    if t == 0xc2:
        return False
    if t == 0xc3:
        return True
    if t == 0xc4:
        return _bin(r, <Py_ssize_t>_be(r, 1))
    if t == 0xc5:
        return _bin(r, <Py_ssize_t>_be(r, 2))
    if t == 0xc6:
        return _bin(r, <Py_ssize_t>_be(r, 4))
    if t == 0xca:
        u32 = <uint32_t>_be(r, 4)
        memcpy(&f, &u32, 4)
        return <double>f
    if t == 0xcb:
        u = _be(r, 8)
        memcpy(&d, &u, 8)
        return d
    if t == 0xcc:
        return <long>_be(r, 1)
    if t == 0xcd:
        return <long>_be(r, 2)
    if t == 0xce:
        return <long long>_be(r, 4)
    if t == 0xcf:
        return _be(r, 8)
    if t == 0xd0:
        return <long>(<int8_t>_be(r, 1))
    if t == 0xd1:
        return <long>(<int16_t>_be(r, 2))
    if t == 0xd2:
        return <long>(<int32_t>_be(r, 4))
    if t == 0xd3:
        return <long long>(<int64_t>_be(r, 8))
    if t == 0xd9:
        return _str(r, <Py_ssize_t>_be(r, 1))
    if t == 0xda:
        return _str(r, <Py_ssize_t>_be(r, 2))
    if t == 0xdb:
        return _str(r, <Py_ssize_t>_be(r, 4))
    if t == 0xdc:
        return _array(r, <Py_ssize_t>_be(r, 2), depth)
    if t == 0xdd:
        return _array(r, <Py_ssize_t>_be(r, 4), depth)
    if t == 0xde:
        return _map(r, <Py_ssize_t>_be(r, 2), depth)
    if t == 0xdf:
        return _map(r, <Py_ssize_t>_be(r, 4), depth)
    raise _UNSUPPORTED("ext or reserved type")    # 0xc1, 0xc7-0xc9, 0xd4-0xd8


cdef int _read(_In *r, frame) except -1:
    """Start reading ``frame`` (limits: none; the caller sets its own)."""
    if type(frame) is not bytes:
        raise _UNSUPPORTED("not bytes")
    r.p = <const uint8_t *>PyBytes_AS_STRING(frame)
    r.pos = 0
    r.end = PyBytes_GET_SIZE(frame)
    r.max_array = r.max_map = r.max_str = r.end
    return 0


cdef object _last(_In *r, int depth):
    """The object at r.pos, which must end the frame."""
    obj = _unpack(r, depth)
    if r.pos != r.end:
        raise _UNSUPPORTED("extra data")
    return obj


def unpack(frame, Py_ssize_t max_array=-1, Py_ssize_t max_map=-1, Py_ssize_t max_str=-1):
    """msgpack.unpackb(frame, raw=False, strict_map_key=False, use_list=True)
    for a ``bytes`` frame of the types listed above; ``max_*`` as msgpack's
    ``max_array_len``, ``max_map_len``, ``max_str_len`` and ``max_bin_len``
    (-1: no limit), a frame over one is Unsupported (msgpack then names it)."""
    cdef _In r
    _read(&r, frame)
    if max_array >= 0:
        r.max_array = max_array
    if max_map >= 0:
        r.max_map = max_map
    if max_str >= 0:
        r.max_str = max_str
    return _last(&r, 0)


def unpack_body(frame, long version):
    """unpack(frame)[1] for a frame that is the array [version, body] (the
    client's reply frames), without building the outer array; anything else
    (another version, another shape, what unpack refuses) is Unsupported, for
    the caller to decode it in full and name the problem."""
    cdef _In r
    _read(&r, frame)
    if r.end < 2 or r.p[0] != 0x92 or not 0 <= version < 0x80 or r.p[1] != version:
        raise _UNSUPPORTED("not [version, body]")
    r.pos = 2
    return _last(&r, 1)
