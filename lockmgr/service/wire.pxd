# C-level declarations for wire.py: an "augmenting" .pxd (Cython's pure-Python
# mode; see shard/core.pxd). Only the shard's per-frame calls are cpdef, so the
# calls between them (pack_replies -> _pack, unpack_requests_packed ->
# unpack_requests) are C calls instead of Python-level ones; callers in other
# modules call them as before.

cpdef _pack(msg)
cpdef pack_replies(replies)
cpdef unpack_requests(frame)
cpdef unpack_requests_packed(frame)
