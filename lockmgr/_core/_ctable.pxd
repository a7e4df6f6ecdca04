# The C lock table (csrc/locktable.h), as Cython sees it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t


cdef extern from "locktable.h" nogil:
    enum:
        LT_NL, LT_IS, LT_IX, LT_S, LT_SIX, LT_X
        LT_WAITING
        LT_CONFLICT
        LT_E_ALREADY_WAITING
        LT_E_NOT_HELD
        LT_E_UNLOCK_WAITING
        LT_E_HAS_CHILDREN
        LT_E_NOMEM
        LT_E_INTERNAL
        LT_E_NOT_EMPTY
        LT_E_NOT_WEAKER
        LT_MAX_DEPTH
        LT_MAX_COMPONENT
        LT_MAX_KEY
        LT_SEARCH_LIMIT

    const uint8_t lt_conflicts[6]
    const uint8_t lt_supremum[6][6]
    const uint8_t lt_intention[6]

    ctypedef struct lt_table:
        pass

    ctypedef struct lt_row:
        const uint8_t *key
        uint32_t keylen
        uint8_t mode
        uint8_t granted
        uint64_t txn

    ctypedef struct lt_stats_t:
        uint64_t granted, waited, escalations
        uint64_t requests, resources, transactions
        uint64_t last_token
        uint64_t searches

    ctypedef struct lt_alloc_t:
        uint64_t live_requests, live_resources, live_txns, live_key_blocks
        uint64_t chunks
        uint64_t heap_blocks
        uint64_t heap_allocs
        uint64_t hash_slots

    ctypedef struct lt_item:
        uint32_t off, eoff
        uint8_t depth, mode

    lt_table *lt_create(uint64_t threshold, uint64_t token_base)
    void lt_destroy(lt_table *t)
    int64_t lt_lock(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                    int depth, int mode, int nowait)
    int64_t lt_reclaim(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                       int depth, int mode, uint64_t token)
    int64_t lt_lock_many(lt_table *t, uint64_t txn, const uint8_t *keys, const uint16_t *ends,
                         const lt_item *items, size_t n, int nowait, int64_t *results, size_t *done)
    int64_t lt_unlock(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                      int depth)
    int64_t lt_release_all(lt_table *t, uint64_t txn)
    int64_t lt_downgrade(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                         int depth, int mode)
    int64_t lt_cancel_wait(lt_table *t, uint64_t txn)
    const uint64_t *lt_woken(const lt_table *t)
    int lt_find_cycle(lt_table *t, uint64_t txn, const uint64_t **path, size_t *n)
    int64_t lt_wait_edges(const lt_table *t, uint64_t txn, uint64_t *out)
    size_t lt_wait_graph(const lt_table *t, uint64_t *out)
    int lt_is_waiting(const lt_table *t, uint64_t txn)
    int lt_waiting_on(const lt_table *t, uint64_t txn, const uint8_t **key, uint32_t *keylen,
                      int *mode)
    int lt_mode_held(const lt_table *t, uint64_t txn, const uint8_t *key, uint32_t keylen)
    uint64_t lt_txn_nreqs(const lt_table *t, uint64_t txn)
    size_t lt_held(const lt_table *t, uint64_t txn, lt_row *out)
    size_t lt_ntxns(const lt_table *t)
    size_t lt_txn_ids(const lt_table *t, uint64_t *out)
    size_t lt_nrows(const lt_table *t)
    size_t lt_snapshot(const lt_table *t, lt_row *out)
    size_t lt_node(const lt_table *t, const uint8_t *key, uint32_t keylen, lt_row *out, size_t max)
    void lt_stats(const lt_table *t, lt_stats_t *out)
    const char *lt_check(lt_table *t)
    void lt_alloc_counts(const lt_table *t, lt_alloc_t *out)
    int lt_debug_set_hash_mask(lt_table *t, uint32_t mask)
    int lt_compact(lt_table *t)
    int lt_debug_build()


# The items of one LOCK_MANY, validated and encoded (defined in _ctable.pyx; the
# shard's frame helper, lockmgr/service/_cwire.pyx, fills these fields).
cdef class PackedItems:
    cdef uint8_t *keys
    cdef uint16_t *ends
    cdef lt_item *items
    cdef Py_ssize_t n
