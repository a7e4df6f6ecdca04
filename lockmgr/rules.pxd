# C-level declarations for rules.py (an augmenting .pxd; see
# lockmgr/service/client/engine.pxd): the checks the client's lock path makes
# on every call, cpdef so that the compiled ops module calls them in C
# (ops.pxd cimports them); Python callers call them as before.

cpdef check_mode(mode)
cpdef check_wait(wait)
cpdef check_timeout(timeout)
