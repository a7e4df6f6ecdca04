/*
 * locktable.h -- the lock table of lockmgr, in C99.
 *
 * A hierarchical multi-mode lock table: resources keyed by the canonical byte
 * encoding of their path (lockmgr/paths.py), per resource a granted group and
 * FIFO queues, per transaction the list of its requests.  No Python API, no
 * I/O, no clock, no threads: the caller serialises calls.
 *
 * The behaviour is specified by the pure-Python twin
 * lockmgr/_core/_pytable.py; every entry point here mirrors one method there.
 * See docs/table.md for the design and the invariants.
 *
 * Interface:
 *   lt_create, lt_destroy          -- make / free a table
 *   lt_lock                        -- lock a path (intention locks on ancestors)
 *   lt_lock_many                   -- lt_lock per item until one is not granted
 *   lt_reclaim                     -- grant with a given token (after a restart)
 *   lt_unlock, lt_release_all,     -- release; the woken transactions are then
 *   lt_cancel_wait, lt_downgrade      in lt_woken()
 *   lt_find_cycle, lt_wait_edges, lt_wait_graph
 *                                  -- the wait-for graph
 *   lt_is_waiting, lt_waiting_on, lt_mode_held, lt_txn_nreqs, lt_held,
 *   lt_ntxns, lt_txn_ids, lt_nrows, lt_snapshot, lt_node, lt_stats
 *                                  -- introspection
 *   lt_check                       -- verify every invariant (NULL if sound)
 *   lt_compact                     -- give memory back when empty
 *   lt_alloc_counts, lt_debug_set_hash_mask, lt_debug_build
 *                                  -- test hooks
 */
#ifndef LOCKTABLE_H
#define LOCKTABLE_H

#include <stddef.h>
#include <stdint.h>

#ifndef LOCKTABLE_DEBUG
#define LOCKTABLE_DEBUG 0
#endif

/* Lock modes; values are stable and equal lockmgr.modes.Mode. */
enum { LT_NL = 0, LT_IS = 1, LT_IX = 2, LT_S = 3, LT_SIX = 4, LT_X = 5 };

/* lt_lock results besides a token (> 0). */
#define LT_WAITING   (-1)
#define LT_CONFLICT  (-2)
/* Errors (negative; the table is unchanged when one is returned, except
 * LT_E_INTERNAL, which means an invariant broke). */
#define LT_E_ALREADY_WAITING  (-3)  /* lock: the txn already waits */
#define LT_E_NOT_HELD         (-4)  /* unlock: not held */
#define LT_E_UNLOCK_WAITING   (-5)  /* unlock: the txn is waiting */
#define LT_E_HAS_CHILDREN     (-6)  /* unlock: descendants still held */
#define LT_E_NOMEM            (-7)
#define LT_E_INTERNAL         (-8)
#define LT_E_NOT_EMPTY        (-9)  /* debug hook needs an empty table */
#define LT_E_NOT_WEAKER       (-10) /* downgrade: the mode does not lie under the held one */

#define LT_MAX_DEPTH      32
#define LT_MAX_COMPONENT  1024
#define LT_MAX_KEY        4096
#define LT_SEARCH_LIMIT   100000

/* The semantics, as data (like PostgreSQL's LockConflicts[]).
 * lt_conflicts[m]: bit k set if mode k conflicts with mode m.
 * lt_supremum[a][b]: the least mode covering a and b.
 * lt_intention[m]: the mode taken on the ancestors of a node locked in m. */
extern const uint8_t lt_conflicts[6];
extern const uint8_t lt_supremum[6][6];
extern const uint8_t lt_intention[6];

typedef struct lt_table lt_table;

typedef struct {
    const uint8_t *key;     /* canonical key, valid until the next mutation */
    uint32_t keylen;
    uint8_t mode;           /* held mode if granted, else the wanted mode */
    uint8_t granted;
    uint64_t txn;
} lt_row;

typedef struct {
    uint64_t granted, waited, escalations;
    uint64_t requests, resources, transactions;
    uint64_t last_token;
    uint64_t searches;      /* deadlock searches run (find_cycle calls not cut short) */
} lt_stats_t;

typedef struct {
    uint64_t live_requests, live_resources, live_txns, live_key_blocks;
    uint64_t chunks;            /* slab chunks currently allocated */
    uint64_t heap_blocks;       /* malloc'd blocks outstanding (this table) */
    uint64_t heap_allocs;       /* malloc calls so far (this table) */
    uint64_t hash_slots;        /* slots in the three hash tables */
} lt_alloc_t;

/* threshold: escalate a node when a txn holds more than this many direct
 * children under it.  token_base: the first grant gets token_base + 1. */
lt_table *lt_create(uint64_t threshold, uint64_t token_base);
void lt_destroy(lt_table *t);

/* key: the canonical encoding; ends[i]: end offset of level i's key inside it;
 * depth: 1..LT_MAX_DEPTH; mode: LT_IS..LT_X.  Returns a token (> 0),
 * LT_WAITING, LT_CONFLICT (nowait only; nothing changed) or an LT_E_*. */
int64_t lt_lock(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                int depth, int mode, int nowait);
/* One item of lt_lock_many: its key is keys[off ..], its ends are
 * ends[eoff .. eoff + depth) (offsets inside its own key). */
typedef struct {
    uint32_t off, eoff;
    uint8_t depth, mode;
} lt_item;
/* Exactly what lt_lock on each item in order would do and return, stopping
 * after the first result that is not a token (LT_WAITING, LT_CONFLICT or an
 * error; the items before it stay granted).  results[0..*done) get the
 * results; returns the last one (0 if n == 0).  Faster than n lt_lock calls
 * when consecutive items share ancestors: their lookups are reused. */
int64_t lt_lock_many(lt_table *T, uint64_t txn, const uint8_t *keys, const uint16_t *ends,
                     const lt_item *items, size_t n, int nowait, int64_t *results, size_t *done);
/* A lock given back after a restart (the shard's RECLAIM): lt_lock with
 * nowait that never escalates, after which the node's own request, if this
 * call granted or converted it, takes `token` (1..INT64_MAX) instead of a new
 * one; the counter is raised to `token` if below it, so later grants stay
 * larger.  A node covered by a held ancestor (or already held in a covering
 * mode) is left as it is and its current (covering) token returned.  Returns
 * the token, LT_CONFLICT (nothing changed) or an LT_E_* error. */
int64_t lt_reclaim(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                   int depth, int mode, uint64_t token);
/* These return the number of woken transactions (ids in lt_woken()) or LT_E_*. */
int64_t lt_unlock(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                  int depth);
int64_t lt_release_all(lt_table *t, uint64_t txn);
/* Set txn's granted lock on the node back to a weaker mode (one it held before
 * a conversion: lt_supremum[mode][held] == held), e.g. to undo a conversion
 * that a later step refused; waiters it no longer blocks are granted.  Its
 * children keep the intention they need on it (else LT_E_HAS_CHILDREN); the
 * token is kept.  LT_E_NOT_HELD, LT_E_UNLOCK_WAITING (txn waits),
 * LT_E_NOT_WEAKER: nothing changed. */
int64_t lt_downgrade(lt_table *t, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                     int depth, int mode);
int64_t lt_cancel_wait(lt_table *t, uint64_t txn);
const uint64_t *lt_woken(const lt_table *t);

/* A cycle through txn: 1 and *path, *n set (path[0] == txn), 0 if none,
 * LT_E_NOMEM.  The path stays valid until the next call. */
int lt_find_cycle(lt_table *t, uint64_t txn, const uint64_t **path, size_t *n);
/* Wait-for successors of txn (which must be waiting): count written to out
 * (room for lt_ntxns() entries), or -1 if txn is not waiting. */
int64_t lt_wait_edges(const lt_table *t, uint64_t txn, uint64_t *out);
/* The whole wait-for graph in one call: for each waiting txn, in creation
 * order, its id, its number of successors k, then the k successor ids.
 * Returns the number of words; with out == NULL only counts them. */
size_t lt_wait_graph(const lt_table *t, uint64_t *out);

int lt_is_waiting(const lt_table *t, uint64_t txn);
int lt_waiting_on(const lt_table *t, uint64_t txn, const uint8_t **key, uint32_t *keylen,
                  int *mode);
int lt_mode_held(const lt_table *t, uint64_t txn, const uint8_t *key, uint32_t keylen);
uint64_t lt_txn_nreqs(const lt_table *t, uint64_t txn);
/* Granted requests of txn, in creation order; returns the count. */
size_t lt_held(const lt_table *t, uint64_t txn, lt_row *out);
size_t lt_ntxns(const lt_table *t);
size_t lt_txn_ids(const lt_table *t, uint64_t *out);   /* in creation order */
size_t lt_nrows(const lt_table *t);     /* rows lt_snapshot() will write */
size_t lt_snapshot(const lt_table *t, lt_row *out);
/* The rows of one resource (holders, conversions, waiters); at most max
 * written; returns the count (0: no such resource). O(its queue). */
size_t lt_node(const lt_table *t, const uint8_t *key, uint32_t keylen, lt_row *out, size_t max);
void lt_stats(const lt_table *t, lt_stats_t *out);

const char *lt_check(lt_table *t);
void lt_alloc_counts(const lt_table *t, lt_alloc_t *out);
int lt_debug_set_hash_mask(lt_table *t, uint32_t mask);
/* An empty table gives back every chunk and buffer (back to its size at
 * lt_create); LT_E_NOT_EMPTY if it holds anything. */
int lt_compact(lt_table *t);
int lt_debug_build(void);

#endif /* LOCKTABLE_H */
