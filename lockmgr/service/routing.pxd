# C-level declarations for routing.py (an augmenting .pxd; see
# lockmgr/service/client/engine.pxd): the client routes every lock, and its
# compiled ops module calls route in C (ops.pxd cimports it).

cpdef route(key, depth, mode, nshards, partition_depth)
