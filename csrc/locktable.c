/*
 * locktable.c -- the lock table of lockmgr, in C99.
 *
 * The executable specification is lockmgr/_core/_pytable.py: every function
 * here mirrors one method there, with the same results in the same order
 * (tests/test_ctable.py drives both with the same random operations).  The
 * design and the invariants are in docs/table.md.
 *
 * Interface:
 *   lt_create(threshold, token_base)    -- make a table
 *   lt_destroy(t)                       -- free it and everything in it
 *   lt_lock(t, txn, key, ends, depth, mode, nowait)
 *                                       -- lock a path, root to leaf
 *   lt_lock_many(t, txn, keys, ends, items, n, nowait, results, done)
 *                                       -- lt_lock per item, in order, until
 *                                          one is not granted; reuses the
 *                                          shared ancestors' lookups
 *   lt_reclaim(t, txn, key, ends, depth, mode, token)
 *                                       -- lt_lock with nowait, never
 *                                          escalating, the node keeping a
 *                                          given token (a restart's reclaim)
 *   lt_unlock(t, txn, key, ends, depth) -- early release of one node
 *   lt_release_all(t, txn)              -- commit / abort
 *   lt_cancel_wait(t, txn)              -- withdraw the pending request
 *   lt_woken(t)                         -- who the last release woke
 *   lt_find_cycle, lt_wait_edges, lt_wait_graph
 *                                       -- deadlock detection
 *   lt_is_waiting, lt_waiting_on, lt_mode_held, lt_txn_nreqs, lt_held,
 *   lt_ntxns, lt_txn_ids, lt_nrows, lt_snapshot, lt_node, lt_stats
 *                                       -- introspection
 *   lt_check(t)                         -- every invariant, or a message
 *   lt_compact(t)                       -- give memory back when empty
 *   lt_alloc_counts, lt_debug_set_hash_mask, lt_debug_build
 *                                       -- test hooks
 *
 * Memory layout.  Requests, resources and transactions live in slabs: arrays
 * of fixed-size chunks addressed by 32-bit indices (0 is "none"), with a free
 * list, so the hot path never calls malloc and links cost 4 bytes.  A chunk
 * never moves, so a pointer to an element stays valid until it is freed.
 * When a slab empties, every chunk but the first is returned to malloc.
 *
 *   request  48 bytes: token, resource, txn, parent request, #children,
 *            #children holding IX/SIX/X (so escalation picks S or X in O(1)),
 *            links in the resource's holder (or waiter) list and in the
 *            transaction's list, held and wanted mode.
 *   resource 48 bytes: the granted group as two counts (IS holders, and
 *            holders of the one other mode that may be granted beside IS:
 *            IX-IX and S-S are the only compatible pairs among IX, S, SIX, X),
 *            heads of the circular holder, waiter and conversion lists, and the
 *            key inline up to 24 bytes (longer keys go to size-class slabs).
 *   txn      48 bytes: id, its requests (creation order), the request it waits
 *            on, links in the conversion queue of that request's resource (a
 *            txn waits on at most one request, so the conversion queue links
 *            live here, not in every request), links in the global txn list.
 *
 * Three open-addressing (linear probing, backward-shift deletion) hashes:
 * resources by key (slot = 32-bit hash tag + index; a tag match is always
 * confirmed by comparing the whole key, so a collision never merges two
 * resources), requests by (txn, resource) (slot = index), txns by id.
 * They grow at 3/4 (requests: 1/2) load and shrink below 1/8, but never
 * below HASH_KEEP slots once grown: a shard that takes and releases a batch
 * of a hundred locks at a time would otherwise resize all three hashes
 * twice per batch (2% of its CPU in bench_service --only batch).  lt_compact()
 * still gives everything back.
 *
 * A lock() plans every level first, reserves every slot it may need, and only
 * then mutates: on LT_E_NOMEM (and every other error) nothing has changed.
 */
#if defined(__linux__) && !defined(LT_NO_HUGEPAGES)
/* Large slab chunks and hash arrays ask for transparent huge pages: with
 * millions of locks every lookup is a TLB miss otherwise.  The only
 * non-C99 code in the table; define LT_NO_HUGEPAGES to leave it out. */
#define _DEFAULT_SOURCE 1
#include <sys/mman.h>
#define LT_HUGEPAGES 1
#define LT_HUGE_SIZE ((size_t)2 << 20)
#endif

#include "locktable.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if LOCKTABLE_DEBUG
#include <assert.h>
#define LT_ASSERT(c) assert(c)
#else
#define LT_ASSERT(c) ((void)0)
#endif


/* ------------------------------------------------------------ semantics */

#define B(m) (1u << (m))
const uint8_t lt_conflicts[6] = {
    0,                                          /* NL */
    B(LT_X),                                    /* IS */
    B(LT_S) | B(LT_SIX) | B(LT_X),              /* IX */
    B(LT_IX) | B(LT_SIX) | B(LT_X),             /* S */
    B(LT_IX) | B(LT_S) | B(LT_SIX) | B(LT_X),   /* SIX */
    B(LT_IS) | B(LT_IX) | B(LT_S) | B(LT_SIX) | B(LT_X), /* X */
};
const uint8_t lt_supremum[6][6] = {
    /*  NL      IS      IX      S       SIX     X */
    {LT_NL,  LT_IS,  LT_IX,  LT_S,   LT_SIX, LT_X},  /* NL */
    {LT_IS,  LT_IS,  LT_IX,  LT_S,   LT_SIX, LT_X},  /* IS */
    {LT_IX,  LT_IX,  LT_IX,  LT_SIX, LT_SIX, LT_X},  /* IX */
    {LT_S,   LT_S,   LT_SIX, LT_S,   LT_SIX, LT_X},  /* S */
    {LT_SIX, LT_SIX, LT_SIX, LT_SIX, LT_SIX, LT_X},  /* SIX */
    {LT_X,   LT_X,   LT_X,   LT_X,   LT_X,   LT_X},  /* X */
};
const uint8_t lt_intention[6] = {LT_NL, LT_IS, LT_IX, LT_IS, LT_IX, LT_IX};

#define STRONG(m) ((B(LT_IX) | B(LT_SIX) | B(LT_X)) >> (m) & 1u)
/* a held mode that covers the whole subtree for a request in `mode` */
#define COVERS(held, mode) ((held) == LT_X || \
    (((held) == LT_S || (held) == LT_SIX) && ((mode) == LT_IS || (mode) == LT_S)))

/* ------------------------------------------------------------ structures */

typedef struct {
    uint64_t token;
    uint32_t res, txn, parent;
    uint32_t nchildren;     /* this txn's requests whose parent is this one */
    uint32_t nstrong;       /* ... of which hold IX, SIX or X */
    uint32_t qprev, qnext;  /* resource's holder list, or its waiter list */
    uint32_t tprev, tnext;  /* transaction's list, creation order */
    uint8_t held, want, mark, pad;
} lt_req;

#define INLINE_KEY 24
typedef struct {
    uint32_t n_is;          /* granted IS requests */
    uint32_t n_other;       /* granted requests in other_mode */
    uint32_t hold;          /* head of circular holder list (first-grant order) */
    uint32_t wait;          /* head of circular list of new waiters (FIFO) */
    uint32_t conv;          /* head of circular list of converting txns (FIFO) */
    uint16_t keylen;
    uint8_t other_mode;
    uint8_t pad;
    union {
        uint8_t inl[INLINE_KEY];
        uint32_t kidx;      /* block in kpool[key_class(keylen)] */
    } key;
} lt_res;

typedef struct {
    uint64_t id;
    uint32_t head, tail;    /* requests, creation order */
    uint32_t nreqs;
    uint32_t waiting;       /* the request waited on, or 0 */
    uint32_t cprev, cnext;  /* conversion queue of the waited-on resource */
    uint32_t prev, next;    /* global list, creation order */
    uint32_t visit;         /* find_cycle epoch */
    uint32_t pad;
} lt_txn;

typedef struct {
    uint8_t **chunks;
    uint32_t nchunks, dircap;
    uint32_t free_head, bump, live;
    uint32_t esize, shift;
} lt_pool;

typedef struct { uint32_t tag, idx; } lt_rent;

#define HASH_KEEP 4096u    /* slots a grown hash keeps (see the header comment) */
#define NKCLASS 8           /* key blocks of 32 << k bytes, up to 4096 */

struct lt_table {
    uint64_t threshold, token, granted, waited, escalations, nreqs, searches;
    uint32_t nres, ntxns;
    uint32_t nconv;         /* waiting conversions (snapshot lists them twice) */
    uint32_t hash_mask;     /* debug hook: AND-ed into every key hash */
    uint32_t epoch;
    int no_escalate;        /* set by lt_reclaim: a reclaim never escalates */
    lt_pool rq, rs, tx;
    lt_pool kp[NKCLASS];
    lt_rent *rh; uint32_t rh_mask, rh_count;    /* resources by key */
    uint32_t *qh; uint32_t qh_mask, qh_count;   /* requests by (txn, res) */
    uint32_t *th; uint32_t th_mask, th_count;   /* txns by id */
    uint32_t txn_head, txn_tail;
    uint64_t *woken; uint32_t nwoken, woken_cap;
    uint64_t *path; uint32_t path_cap;
    uint32_t *ebuf; size_t ebuf_cap;
    uint32_t *frames; size_t frames_cap;        /* triples: start, pos, end */
    uint64_t heap_blocks, heap_allocs;
    char msg[256];
};

#define SLAB_SHIFT 17u     /* 131072 elements: 6 MiB chunks (3 huge pages) */
#define SLAB_MASK ((1u << SLAB_SHIFT) - 1u)
#define REQ(T, i) (((lt_req *)(T)->rq.chunks[(i) >> SLAB_SHIFT]) + ((i) & SLAB_MASK))
#define RES(T, i) (((lt_res *)(T)->rs.chunks[(i) >> SLAB_SHIFT]) + ((i) & SLAB_MASK))
#define TXN(T, i) (((lt_txn *)(T)->tx.chunks[(i) >> SLAB_SHIFT]) + ((i) & SLAB_MASK))

/* ------------------------------------------------------------ heap */

static void *lt_malloc(lt_table *T, size_t n)
{
    void *p = malloc(n);
    if (p) {
        T->heap_blocks++;
        T->heap_allocs++;
    }
    return p;
}

static void *lt_calloc(lt_table *T, size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (p) {
        T->heap_blocks++;
        T->heap_allocs++;
    }
    return p;
}

static void *lt_realloc(lt_table *T, void *old, size_t n)
{
    void *p = realloc(old, n);
    if (p && !old) {
        T->heap_blocks++;
        T->heap_allocs++;
    }
    return p;
}

/* Memory for a big array: 2 MiB aligned and backed by huge pages where the
 * platform has them.  Zeroed if zero. */
static void *lt_big_alloc(lt_table *T, size_t n, int zero)
{
#ifdef LT_HUGEPAGES
    if (n >= LT_HUGE_SIZE) {
        void *p = NULL;
        if (posix_memalign(&p, LT_HUGE_SIZE, n) != 0)
            return NULL;
        (void)madvise(p, n, MADV_HUGEPAGE);
        if (zero)
            memset(p, 0, n);
        T->heap_blocks++;
        T->heap_allocs++;
        return p;
    }
#endif
    return zero ? lt_calloc(T, 1, n) : lt_malloc(T, n);
}

static void lt_free(lt_table *T, void *p)
{
    if (p) {
        T->heap_blocks--;
        free(p);
    }
}

/* ------------------------------------------------------------ slabs */

static void pool_init(lt_pool *p, uint32_t esize, uint32_t shift)
{
    memset(p, 0, sizeof *p);
    p->esize = esize;
    p->shift = shift;
    p->bump = 1;            /* index 0 means "none" */
}

static inline void *pool_at(const lt_pool *p, uint32_t i)
{
    return p->chunks[i >> p->shift] + (size_t)(i & ((1u << p->shift) - 1u)) * p->esize;
}

/* Make room for k more elements without calling malloc later. */
static int pool_reserve(lt_table *T, lt_pool *p, uint32_t k)
{
    while ((uint64_t)p->live + k + 1 > ((uint64_t)p->nchunks << p->shift)) {
        if (((uint64_t)p->nchunks + 1) << p->shift > 0xFFFFFFF0ull)
            return LT_E_NOMEM;
        if (p->nchunks == p->dircap) {
            uint32_t nc = p->dircap ? p->dircap * 2 : 8;
            uint8_t **d = lt_realloc(T, p->chunks, nc * sizeof *d);
            if (!d)
                return LT_E_NOMEM;
            p->chunks = d;
            p->dircap = nc;
        }
        /* the first chunk stays small in RSS (no huge page): tiny tables */
        size_t sz = (size_t)p->esize << p->shift;
        uint8_t *c = p->nchunks ? lt_big_alloc(T, sz, 0) : lt_malloc(T, sz);
        if (!c)
            return LT_E_NOMEM;
        p->chunks[p->nchunks++] = c;
    }
    return 0;
}

static inline uint32_t pool_alloc(lt_pool *p)
{
    uint32_t i = p->free_head;
    if (i) {
        memcpy(&p->free_head, pool_at(p, i), sizeof(uint32_t));
    } else {
        i = p->bump++;
    }
    LT_ASSERT(i && (i >> p->shift) < p->nchunks);
    p->live++;
    return i;
}

static void pool_shrink(lt_table *T, lt_pool *p)
{
    /* everything is free: keep the first chunk, give the rest back */
    for (uint32_t c = 1; c < p->nchunks; c++)
        lt_free(T, p->chunks[c]);
    if (p->nchunks > 1)
        p->nchunks = 1;
    p->free_head = 0;
    p->bump = 1;
}

static inline void pool_release(lt_table *T, lt_pool *p, uint32_t i)
{
    void *e = pool_at(p, i);
#if LOCKTABLE_DEBUG
    memset(e, 0xdb, p->esize);
#endif
    memcpy(e, &p->free_head, sizeof(uint32_t));
    p->free_head = i;
    if (--p->live == 0 && p->nchunks > 1)
        pool_shrink(T, p);
}

static void pool_destroy(lt_table *T, lt_pool *p)
{
    for (uint32_t c = 0; c < p->nchunks; c++)
        lt_free(T, p->chunks[c]);
    lt_free(T, p->chunks);
    p->chunks = NULL;
    p->nchunks = p->dircap = 0;
}

static inline int key_class(uint32_t len)
{
    int c = 0;
    while ((32u << c) < len)
        c++;
    return c;
}

/* ------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static inline uint32_t key_hash(const lt_table *T, const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n << 32);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = 0;
        memcpy(&v, p, n);
        h = (h ^ v) * 0x94d049bb133111ebull;
    }
    h = mix64(h);
    return (uint32_t)(h ^ (h >> 32)) & T->hash_mask;
}

static inline uint32_t req_hash(uint32_t txn, uint32_t res)
{
    return (uint32_t)(mix64(((uint64_t)txn << 32) | res) >> 32);
}

static inline uint32_t txn_hash(uint64_t id)
{
    return (uint32_t)(mix64(id) >> 32);
}

static inline const uint8_t *res_key(const lt_table *T, const lt_res *r)
{
    if (r->keylen <= INLINE_KEY)
        return r->key.inl;
    return pool_at(&T->kp[key_class(r->keylen)], r->key.kidx);
}

/* ---- resources by key */

static inline uint32_t res_find(const lt_table *T, const uint8_t *key, uint32_t len, uint32_t h)
{
    uint32_t m = T->rh_mask, i = h & m;
    for (;;) {
        lt_rent e = T->rh[i];
        if (!e.idx)
            return 0;
        if (e.tag == h) {
            const lt_res *r = RES(T, e.idx);
            if (r->keylen == len && memcmp(res_key(T, r), key, len) == 0)
                return e.idx;
        }
        i = (i + 1) & m;
    }
}

static int rh_resize(lt_table *T, uint32_t cap)
{
    lt_rent *n = lt_big_alloc(T, (size_t)cap * sizeof *n, 1);
    if (!n)
        return LT_E_NOMEM;
    uint32_t m = cap - 1;
    for (uint32_t i = 0; i <= T->rh_mask; i++) {
        lt_rent e = T->rh[i];
        if (e.idx) {
            uint32_t j = e.tag & m;
            while (n[j].idx)
                j = (j + 1) & m;
            n[j] = e;
        }
    }
    lt_free(T, T->rh);
    T->rh = n;
    T->rh_mask = m;
    return 0;
}

static int rh_reserve(lt_table *T, uint32_t k)
{
    uint64_t need = (uint64_t)T->rh_count + k;
    uint64_t cap = (uint64_t)T->rh_mask + 1;
    if (need * 4 <= cap * 3)
        return 0;
    while (need * 4 > cap * 3)
        cap *= 2;
    if (cap > (1ull << 31))
        return LT_E_NOMEM;
    return rh_resize(T, (uint32_t)cap);
}

static void rh_insert(lt_table *T, uint32_t h, uint32_t idx)
{
    uint32_t m = T->rh_mask, i = h & m;
    while (T->rh[i].idx)
        i = (i + 1) & m;
    T->rh[i].tag = h;
    T->rh[i].idx = idx;
    T->rh_count++;
}

static void rh_delete(lt_table *T, uint32_t h, uint32_t idx)
{
    uint32_t m = T->rh_mask, i = h & m;
    while (T->rh[i].idx != idx) {
        LT_ASSERT(T->rh[i].idx);
        i = (i + 1) & m;
    }
    /* backward-shift deletion: no tombstones */
    for (uint32_t j = (i + 1) & m;; j = (j + 1) & m) {
        lt_rent e = T->rh[j];
        if (!e.idx)
            break;
        uint32_t home = e.tag & m;
        if (((j - home) & m) >= ((j - i) & m)) {
            T->rh[i] = e;
            i = j;
        }
    }
    T->rh[i].idx = 0;
    T->rh[i].tag = 0;
    T->rh_count--;
    if (T->rh_mask >= HASH_KEEP && (uint64_t)T->rh_count * 8 < (uint64_t)T->rh_mask + 1)
        (void)rh_resize(T, (T->rh_mask + 1) / 2);   /* on failure: stay big */
}

/* ---- requests by (txn, resource) */

static inline uint32_t req_find(const lt_table *T, uint32_t txn, uint32_t res)
{
    uint32_t m = T->qh_mask, i = req_hash(txn, res) & m;
    for (;;) {
        uint32_t q = T->qh[i];
        if (!q)
            return 0;
        const lt_req *r = REQ(T, q);
        if (r->res == res && r->txn == txn)
            return q;
        i = (i + 1) & m;
    }
}

static int qh_resize(lt_table *T, uint32_t cap)
{
    uint32_t *n = lt_big_alloc(T, (size_t)cap * sizeof *n, 1);
    if (!n)
        return LT_E_NOMEM;
    uint32_t m = cap - 1;
    for (uint32_t i = 0; i <= T->qh_mask; i++) {
        uint32_t q = T->qh[i];
        if (q) {
            const lt_req *r = REQ(T, q);
            uint32_t j = req_hash(r->txn, r->res) & m;
            while (n[j])
                j = (j + 1) & m;
            n[j] = q;
        }
    }
    lt_free(T, T->qh);
    T->qh = n;
    T->qh_mask = m;
    return 0;
}

static int qh_reserve(lt_table *T, uint32_t k)
{
    uint64_t need = (uint64_t)T->qh_count + k;
    uint64_t cap = (uint64_t)T->qh_mask + 1;
    if (need * 2 <= cap)
        return 0;
    while (need * 2 > cap)
        cap *= 2;
    if (cap > (1ull << 31))
        return LT_E_NOMEM;
    return qh_resize(T, (uint32_t)cap);
}

static void qh_insert(lt_table *T, uint32_t q)
{
    const lt_req *r = REQ(T, q);
    uint32_t m = T->qh_mask, i = req_hash(r->txn, r->res) & m;
    while (T->qh[i])
        i = (i + 1) & m;
    T->qh[i] = q;
    T->qh_count++;
}

static void qh_delete(lt_table *T, uint32_t q)
{
    const lt_req *r = REQ(T, q);
    uint32_t m = T->qh_mask, i = req_hash(r->txn, r->res) & m;
    while (T->qh[i] != q) {
        LT_ASSERT(T->qh[i]);
        i = (i + 1) & m;
    }
    for (uint32_t j = (i + 1) & m;; j = (j + 1) & m) {
        uint32_t e = T->qh[j];
        if (!e)
            break;
        const lt_req *s = REQ(T, e);
        uint32_t home = req_hash(s->txn, s->res) & m;
        if (((j - home) & m) >= ((j - i) & m)) {
            T->qh[i] = e;
            i = j;
        }
    }
    T->qh[i] = 0;
    T->qh_count--;
}

static void qh_maybe_shrink(lt_table *T)
{
    if (T->qh_mask >= HASH_KEEP && (uint64_t)T->qh_count * 8 < (uint64_t)T->qh_mask + 1)
        (void)qh_resize(T, (T->qh_mask + 1) / 2);
}

/* ---- transactions by id */

static inline uint32_t txn_find(const lt_table *T, uint64_t id)
{
    uint32_t m = T->th_mask, i = txn_hash(id) & m;
    for (;;) {
        uint32_t x = T->th[i];
        if (!x)
            return 0;
        if (TXN(T, x)->id == id)
            return x;
        i = (i + 1) & m;
    }
}

static int th_resize(lt_table *T, uint32_t cap)
{
    uint32_t *n = lt_calloc(T, cap, sizeof *n);
    if (!n)
        return LT_E_NOMEM;
    uint32_t m = cap - 1;
    for (uint32_t i = 0; i <= T->th_mask; i++) {
        uint32_t x = T->th[i];
        if (x) {
            uint32_t j = txn_hash(TXN(T, x)->id) & m;
            while (n[j])
                j = (j + 1) & m;
            n[j] = x;
        }
    }
    lt_free(T, T->th);
    T->th = n;
    T->th_mask = m;
    return 0;
}

static void th_delete(lt_table *T, uint32_t x)
{
    uint32_t m = T->th_mask, i = txn_hash(TXN(T, x)->id) & m;
    while (T->th[i] != x) {
        LT_ASSERT(T->th[i]);
        i = (i + 1) & m;
    }
    for (uint32_t j = (i + 1) & m;; j = (j + 1) & m) {
        uint32_t e = T->th[j];
        if (!e)
            break;
        uint32_t home = txn_hash(TXN(T, e)->id) & m;
        if (((j - home) & m) >= ((j - i) & m)) {
            T->th[i] = e;
            i = j;
        }
    }
    T->th[i] = 0;
    T->th_count--;
    if (T->th_mask >= HASH_KEEP && (uint64_t)T->th_count * 8 < (uint64_t)T->th_mask + 1)
        (void)th_resize(T, (T->th_mask + 1) / 2);
}

/* ------------------------------------------------------------ create */

lt_table *lt_create(uint64_t threshold, uint64_t token_base)
{
    lt_table *T = calloc(1, sizeof *T);
    if (!T)
        return NULL;
    T->threshold = threshold;
    T->token = token_base;
    T->hash_mask = 0xFFFFFFFFu;
    pool_init(&T->rq, sizeof(lt_req), SLAB_SHIFT);
    pool_init(&T->rs, sizeof(lt_res), SLAB_SHIFT);
    pool_init(&T->tx, sizeof(lt_txn), SLAB_SHIFT);
    for (int c = 0; c < NKCLASS; c++)
        pool_init(&T->kp[c], 32u << c, (uint32_t)(16 - 5 - c));     /* 64 KiB chunks */
    T->rh = lt_calloc(T, 16, sizeof *T->rh);
    T->qh = lt_calloc(T, 16, sizeof *T->qh);
    T->th = lt_calloc(T, 16, sizeof *T->th);
    if (!T->rh || !T->qh || !T->th) {
        lt_destroy(T);
        return NULL;
    }
    T->rh_mask = T->qh_mask = T->th_mask = 15;
    return T;
}

void lt_destroy(lt_table *T)
{
    if (!T)
        return;
    pool_destroy(T, &T->rq);
    pool_destroy(T, &T->rs);
    pool_destroy(T, &T->tx);
    for (int c = 0; c < NKCLASS; c++)
        pool_destroy(T, &T->kp[c]);
    lt_free(T, T->rh);
    lt_free(T, T->qh);
    lt_free(T, T->th);
    lt_free(T, T->woken);
    lt_free(T, T->path);
    lt_free(T, T->ebuf);
    lt_free(T, T->frames);
    free(T);
}

/* ------------------------------------------------------------ lists */

/* circular doubly linked list of requests through qprev/qnext */
static inline void qlist_append(lt_table *T, uint32_t *head, uint32_t ri)
{
    lt_req *r = REQ(T, ri);
    uint32_t h = *head;
    if (!h) {
        r->qprev = r->qnext = ri;
        *head = ri;
    } else {
        lt_req *H = REQ(T, h);
        uint32_t tl = H->qprev;
        r->qprev = tl;
        r->qnext = h;
        REQ(T, tl)->qnext = ri;
        H->qprev = ri;
    }
}

static inline void qlist_remove(lt_table *T, uint32_t *head, uint32_t ri)
{
    lt_req *r = REQ(T, ri);
    if (r->qnext == ri) {
        LT_ASSERT(*head == ri);
        *head = 0;
    } else {
        REQ(T, r->qprev)->qnext = r->qnext;
        REQ(T, r->qnext)->qprev = r->qprev;
        if (*head == ri)
            *head = r->qnext;
    }
}

/* circular doubly linked list of txns through cprev/cnext: a resource's
 * conversion queue */
static inline void conv_append(lt_table *T, lt_res *res, uint32_t ti)
{
    lt_txn *t = TXN(T, ti);
    uint32_t h = res->conv;
    if (!h) {
        t->cprev = t->cnext = ti;
        res->conv = ti;
    } else {
        lt_txn *H = TXN(T, h);
        uint32_t tl = H->cprev;
        t->cprev = tl;
        t->cnext = h;
        TXN(T, tl)->cnext = ti;
        H->cprev = ti;
    }
    T->nconv++;
}

static inline void conv_remove(lt_table *T, lt_res *res, uint32_t ti)
{
    lt_txn *t = TXN(T, ti);
    if (t->cnext == ti) {
        LT_ASSERT(res->conv == ti);
        res->conv = 0;
    } else {
        TXN(T, t->cprev)->cnext = t->cnext;
        TXN(T, t->cnext)->cprev = t->cprev;
        if (res->conv == ti)
            res->conv = t->cnext;
    }
    t->cprev = t->cnext = 0;
    T->nconv--;
}

/* ------------------------------------------------------------ granted group */

static inline unsigned res_mask(const lt_res *r)
{
    return (r->n_is ? B(LT_IS) : 0u) | (r->n_other ? B(r->other_mode) : 0u);
}

static inline unsigned res_mask_without(const lt_res *r, int held)
{
    uint32_t nis = r->n_is - (held == LT_IS);
    uint32_t no = r->n_other - (held != LT_IS && held != LT_NL);
    return (nis ? B(LT_IS) : 0u) | (no ? B(r->other_mode) : 0u);
}

static inline void count_add(lt_res *r, int mode)
{
    if (mode == LT_IS) {
        r->n_is++;
    } else {
        LT_ASSERT(r->n_other == 0 || r->other_mode == mode);
        r->other_mode = (uint8_t)mode;
        r->n_other++;
    }
}

static inline void count_sub(lt_res *r, int mode)
{
    if (mode == LT_IS) {
        r->n_is--;
    } else {
        LT_ASSERT(r->n_other && r->other_mode == mode);
        if (--r->n_other == 0)
            r->other_mode = LT_NL;
    }
}

/* ------------------------------------------------------------ objects */

static uint32_t res_create(lt_table *T, const uint8_t *key, uint32_t len, uint32_t h)
{
    uint32_t si = pool_alloc(&T->rs);
    lt_res *r = RES(T, si);
    memset(r, 0, sizeof *r);
    r->keylen = (uint16_t)len;
    if (len <= INLINE_KEY) {
        memcpy(r->key.inl, key, len);
    } else {
        lt_pool *kp = &T->kp[key_class(len)];
        uint32_t k = pool_alloc(kp);
        memcpy(pool_at(kp, k), key, len);
        r->key.kidx = k;
    }
    rh_insert(T, h, si);
    T->nres++;
    return si;
}

static void res_free(lt_table *T, uint32_t si)
{
    lt_res *r = RES(T, si);
    LT_ASSERT(!r->hold && !r->wait && !r->conv && !r->n_is && !r->n_other);
    rh_delete(T, key_hash(T, res_key(T, r), r->keylen), si);
    if (r->keylen > INLINE_KEY)
        pool_release(T, &T->kp[key_class(r->keylen)], r->key.kidx);
    pool_release(T, &T->rs, si);
    T->nres--;
}

static uint32_t txn_create(lt_table *T, uint64_t id)
{
    uint32_t ti = pool_alloc(&T->tx);
    lt_txn *t = TXN(T, ti);
    memset(t, 0, sizeof *t);
    t->id = id;
    t->prev = T->txn_tail;
    if (T->txn_tail)
        TXN(T, T->txn_tail)->next = ti;
    else
        T->txn_head = ti;
    T->txn_tail = ti;
    uint32_t m = T->th_mask, i = txn_hash(id) & m;
    while (T->th[i])
        i = (i + 1) & m;
    T->th[i] = ti;
    T->th_count++;
    T->ntxns++;
    return ti;
}

static void txn_free(lt_table *T, uint32_t ti)
{
    lt_txn *t = TXN(T, ti);
    LT_ASSERT(!t->waiting);
    th_delete(T, ti);
    if (t->prev)
        TXN(T, t->prev)->next = t->next;
    else
        T->txn_head = t->next;
    if (t->next)
        TXN(T, t->next)->prev = t->prev;
    else
        T->txn_tail = t->prev;
    pool_release(T, &T->tx, ti);
    T->ntxns--;
}

static uint32_t req_create(lt_table *T, uint32_t ti, uint32_t si, uint32_t pi)
{
    uint32_t ri = pool_alloc(&T->rq);
    lt_req *r = REQ(T, ri);
    lt_txn *t = TXN(T, ti);
    memset(r, 0, sizeof *r);
    r->res = si;
    r->txn = ti;
    r->parent = pi;
    r->tprev = t->tail;
    if (t->tail)
        REQ(T, t->tail)->tnext = ri;
    else
        t->head = ri;
    t->tail = ri;
    t->nreqs++;
    if (pi)
        REQ(T, pi)->nchildren++;
    qh_insert(T, ri);
    T->nreqs++;
    return ri;
}

enum { RM_FULL = 0, RM_NO_PARENT = 1, RM_RELEASE_ALL = 2 };

/* Take request ri out of its resource and its txn and free it (no grants).
 * RM_NO_PARENT: the parent is being removed too (escalation), leave it be.
 * RM_RELEASE_ALL: the whole txn goes; skip its bookkeeping. */
static void req_remove(lt_table *T, uint32_t ti, uint32_t ri, int how)
{
    lt_req *r = REQ(T, ri);
    lt_res *res = RES(T, r->res);
    lt_txn *t = TXN(T, ti);
    if (r->held != LT_NL) {
        count_sub(res, r->held);
        qlist_remove(T, &res->hold, ri);
        if (r->want != LT_NL)
            conv_remove(T, res, ti);
    } else {
        qlist_remove(T, &res->wait, ri);
    }
    if (t->waiting == ri)
        t->waiting = 0;
    if (how == RM_FULL && r->parent) {
        lt_req *p = REQ(T, r->parent);
        p->nchildren--;
        p->nstrong -= STRONG(r->held);
    }
    if (how != RM_RELEASE_ALL) {
        if (r->tprev)
            REQ(T, r->tprev)->tnext = r->tnext;
        else
            t->head = r->tnext;
        if (r->tnext)
            REQ(T, r->tnext)->tprev = r->tprev;
        else
            t->tail = r->tprev;
    }
    t->nreqs--;
    qh_delete(T, ri);
    pool_release(T, &T->rq, ri);
    T->nreqs--;
}

/* ------------------------------------------------------------ grants */

static inline void grant_new(lt_table *T, lt_res *res, uint32_t ri, int mode)
{
    lt_req *r = REQ(T, ri);
    r->held = (uint8_t)mode;
    r->want = LT_NL;
    r->token = ++T->token;
    count_add(res, mode);
    qlist_append(T, &res->hold, ri);
    T->granted++;
    if (r->parent)
        REQ(T, r->parent)->nstrong += STRONG(mode);
}

/* Change the mode granted request r holds (a conversion up, a downgrade):
 * the resource's counts and the parent's count of strong children follow. */
static inline void set_held(lt_table *T, lt_res *res, lt_req *r, int nw)
{
    int old = r->held;
    count_sub(res, old);
    count_add(res, nw);
    if (r->parent) {
        lt_req *p = REQ(T, r->parent);
        p->nstrong = p->nstrong - STRONG(old) + STRONG(nw);
    }
    r->held = (uint8_t)nw;
}

static inline void grant_conversion(lt_table *T, lt_res *res, lt_req *r, int nw)
{
    set_held(T, res, r, nw);
    r->want = LT_NL;
    r->token = ++T->token;
    T->granted++;
}

/* Grant what can be granted on resource si, appending woken txn ids to
 * T->woken; free the resource if it is empty.  Conversions first, in FIFO
 * order, each against the group as it stands; then new waiters from the
 * head while they are compatible, and only if no conversion still waits. */
static void grant_waiters(lt_table *T, uint32_t si)
{
    lt_res *res = RES(T, si);
    if (res->conv) {
        uint32_t cur = res->conv, last = TXN(T, cur)->cprev;
        for (;;) {
            lt_txn *c = TXN(T, cur);
            uint32_t next = c->cnext;
            int done = cur == last;
            lt_req *r = REQ(T, c->waiting);
            if (!(lt_conflicts[r->want] & res_mask_without(res, r->held))) {
                conv_remove(T, res, cur);
                grant_conversion(T, res, r, r->want);
                c->waiting = 0;
                LT_ASSERT(T->nwoken < T->woken_cap);
                T->woken[T->nwoken++] = c->id;
            }
            if (done)
                break;
            cur = next;
        }
    }
    if (!res->conv) {
        while (res->wait) {
            uint32_t ri = res->wait;
            lt_req *r = REQ(T, ri);
            if (lt_conflicts[r->want] & res_mask(res))
                break;
            qlist_remove(T, &res->wait, ri);
            grant_new(T, res, ri, r->want);
            lt_txn *w = TXN(T, r->txn);
            w->waiting = 0;
            LT_ASSERT(T->nwoken < T->woken_cap);
            T->woken[T->nwoken++] = w->id;
        }
    }
    if (!res->hold && !res->wait)
        res_free(T, si);
}

/* Convert p to S (or X if a direct child holds IX/SIX/X) and drop every
 * request of ti below it, if that conversion is grantable now. */
static int try_escalate(lt_table *T, uint32_t ti, uint32_t pi)
{
    lt_req *p = REQ(T, pi);
    int target = p->nstrong ? LT_X : LT_S;
    int nw = lt_supremum[p->held][target];
    lt_res *pres = RES(T, p->res);
    if (lt_conflicts[nw] & res_mask_without(pres, p->held))
        return 0;
    grant_conversion(T, pres, p, nw);
    lt_txn *t = TXN(T, ti);
    /* a parent precedes its children in creation order: one forward pass
     * marks the subtree */
    for (uint32_t q = t->head; q; q = REQ(T, q)->tnext) {
        lt_req *r = REQ(T, q);
        r->mark = r->parent && (r->parent == pi || REQ(T, r->parent)->mark);
    }
    /* Removing one request and then granting on its resource is the same as
     * removing all and then granting on each: a grant looks at one resource
     * only, and each request has its own resource. */
    T->nwoken = 0;
    for (uint32_t q = t->head, next; q; q = next) {
        lt_req *r = REQ(T, q);
        next = r->tnext;
        if (r->mark) {
            uint32_t si = r->res;
            int direct = r->parent == pi;
            req_remove(T, ti, q, direct ? RM_FULL : RM_NO_PARENT);
            grant_waiters(T, si);
        }
    }
    qh_maybe_shrink(T);
    T->escalations++;
    /* An escalation is granted only beside IS/S holders (or none), so no
     * waiter in the subtree can have been blocked by what it released. */
    if (T->nwoken)
        return -1;
    return 1;
}

const uint64_t *lt_woken(const lt_table *T)
{
    return T->woken;
}

static int woken_reserve(lt_table *T, uint32_t n)
{
    if (n <= T->woken_cap)
        return 0;
    uint32_t cap = T->woken_cap ? T->woken_cap : 16;
    while (cap < n)
        cap *= 2;
    uint64_t *w = lt_realloc(T, T->woken, (size_t)cap * sizeof *w);
    if (!w)
        return LT_E_NOMEM;
    T->woken = w;
    T->woken_cap = cap;
    return 0;
}

/* ------------------------------------------------------------ lock */

static uint64_t covering_token(lt_table *T, uint32_t ti, const uint8_t *key,
                               const uint16_t *ends, int depth, int mode)
{
    uint32_t leaf = 0;
    for (int i = 0; i < depth; i++) {
        uint32_t si = res_find(T, key, ends[i], key_hash(T, key, ends[i]));
        uint32_t q = si ? req_find(T, ti, si) : 0;
        if (q && COVERS(REQ(T, q)->held, mode))
            return REQ(T, q)->token;
        if (i == depth - 1)
            leaf = q;
    }
    return leaf ? REQ(T, leaf)->token : 0;
}

/* What one lock() looked up, for the next item of an lt_lock_many() batch:
 * levels 0..nvalid-1 of `key` (ends `ends`) have their key hash, resource and
 * this txn's request (0: none) in hs/rs/qs, as they stand after the call.
 * Between two items of a batch the table changes only through the batch's own
 * lock() calls, which create resources and requests and never free one --
 * except an escalation, which frees requests (and resources) below the
 * parent: it sets nvalid = 0.  Levels a lock() did not look up (below a
 * covering ancestor) are not valid. */
typedef struct {
    const uint8_t *key;
    const uint16_t *ends;
    int nvalid;
    uint32_t ti;
    uint32_t hs[LT_MAX_DEPTH], rs[LT_MAX_DEPTH], qs[LT_MAX_DEPTH];
} lt_memo;

/* lt_lock with the first `reuse` levels' lookups taken from m (the caller
 * checked they are the same keys); leaves this call's lookups in m. */
static int64_t lock_one(lt_table *T, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                        int depth, int mode, int nowait, lt_memo *m, int reuse)
{
    uint32_t *hs = m->hs, *rs = m->rs, *qs = m->qs;
    uint8_t pl[LT_MAX_DEPTH], wants[LT_MAX_DEPTH];
    int np = 0;

    m->key = key;
    m->ends = ends;
    m->nvalid = 0;
    if (depth < 1 || depth > LT_MAX_DEPTH || mode < LT_IS || mode > LT_X)
        return LT_E_INTERNAL;
    uint32_t ti = reuse ? m->ti : txn_find(T, txn);
    lt_txn *t = ti ? TXN(T, ti) : NULL;
    m->ti = ti;
    if (t && t->waiting)
        return LT_E_ALREADY_WAITING;
    int intent = lt_intention[mode];

    /* Plan: the levels that need a grant, stopping early where a held
     * ancestor already covers the whole subtree. */
    for (int i = 0; i < depth; i++) {
        int want = i == depth - 1 ? mode : intent;
        if (i >= reuse) {
            hs[i] = key_hash(T, key, ends[i]);
            rs[i] = res_find(T, key, ends[i], hs[i]);
            qs[i] = (t && rs[i]) ? req_find(T, ti, rs[i]) : 0;
        }
        m->nvalid = i + 1;
        if (qs[i]) {
            const lt_req *r = REQ(T, qs[i]);
            int held = r->held;
            if (held != LT_NL) {
                if (COVERS(held, mode)) {
                    if (!np)
                        return (int64_t)r->token;
                    break;
                }
                if (lt_supremum[held][want] == held) {
                    if (i == depth - 1 && !np)
                        return (int64_t)r->token;
                    continue;
                }
            }
        }
        pl[np] = (uint8_t)i;
        wants[np] = (uint8_t)want;
        np++;
    }
    LT_ASSERT(np > 0);

    if (nowait) {
        for (int k = 0; k < np; k++) {
            int i = pl[k], want = wants[k];
            if (!rs[i])
                continue;
            const lt_res *res = RES(T, rs[i]);
            if (qs[i]) {
                const lt_req *r = REQ(T, qs[i]);
                if (lt_conflicts[lt_supremum[r->held][want]] & res_mask_without(res, r->held))
                    return LT_CONFLICT;
            } else if (res->conv || res->wait || (lt_conflicts[want] & res_mask(res))) {
                return LT_CONFLICT;
            }
        }
    }

    /* Reserve everything the plan may need: from here on nothing fails. */
    {
        uint32_t nreq = 0, nres = 0, nkey[NKCLASS] = {0};
        for (int k = 0; k < np; k++) {
            int i = pl[k];
            nreq += !qs[i];
            if (!rs[i]) {
                nres++;
                if (ends[i] > INLINE_KEY)
                    nkey[key_class(ends[i])]++;
            }
        }
        if (pool_reserve(T, &T->rq, nreq) || qh_reserve(T, nreq) ||
            pool_reserve(T, &T->rs, nres) || rh_reserve(T, nres))
            return LT_E_NOMEM;
        for (int c = 0; c < NKCLASS; c++)
            if (nkey[c] && pool_reserve(T, &T->kp[c], nkey[c]))
                return LT_E_NOMEM;
        if (!t) {
            if (pool_reserve(T, &T->tx, 1) || woken_reserve(T, T->ntxns + 1))
                return LT_E_NOMEM;
            if ((uint64_t)(T->th_count + 1) * 4 > (uint64_t)(T->th_mask + 1) * 3 &&
                th_resize(T, (T->th_mask + 1) * 2))
                return LT_E_NOMEM;
            ti = txn_create(T, txn);
            t = TXN(T, ti);
        }
    }
    m->ti = ti;

    uint64_t token = 0;
    for (int k = 0; k < np; k++) {
        int i = pl[k], want = wants[k];
        uint32_t ri = qs[i];
        uint32_t pi = i > 0 ? qs[i - 1] : 0;
        uint32_t si = rs[i];
        if (!si)
            si = rs[i] = res_create(T, key, ends[i], hs[i]);
        lt_res *res = RES(T, si);
        if (!ri) {
            ri = qs[i] = req_create(T, ti, si, pi);
            if (!res->conv && !res->wait && !(lt_conflicts[want] & res_mask(res))) {
                grant_new(T, res, ri, want);
            } else {
                lt_req *r = REQ(T, ri);
                r->want = (uint8_t)want;
                qlist_append(T, &res->wait, ri);
                t->waiting = ri;
                T->waited++;
                return LT_WAITING;
            }
            if (pi && REQ(T, pi)->nchildren > T->threshold && !T->no_escalate) {
                int e = try_escalate(T, ti, pi);
                m->nvalid = 0;      /* it freed requests and resources below pi */
                if (e < 0)
                    return LT_E_INTERNAL;
                if (e)
                    return (int64_t)REQ(T, pi)->token;
            }
        } else {
            lt_req *r = REQ(T, ri);
            int nw = lt_supremum[r->held][want];
            if (!(lt_conflicts[nw] & res_mask_without(res, r->held))) {
                grant_conversion(T, res, r, nw);
            } else {
                r->want = (uint8_t)nw;
                conv_append(T, res, ti);
                t->waiting = ri;
                T->waited++;
                return LT_WAITING;
            }
        }
        token = REQ(T, ri)->token;
    }
    if (token == 0 || pl[np - 1] != depth - 1) {
        token = covering_token(T, ti, key, ends, depth, mode);
        if (!token)
            return LT_E_INTERNAL;
    }
    return (int64_t)token;
}

int64_t lt_lock(lt_table *T, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                int depth, int mode, int nowait)
{
    lt_memo m;
    return lock_one(T, txn, key, ends, depth, mode, nowait, &m, 0);
}

int64_t lt_reclaim(lt_table *T, uint64_t txn, const uint8_t *key, const uint16_t *ends,
                   int depth, int mode, uint64_t token)
{
    lt_memo m;
    if (token == 0 || token > (uint64_t)INT64_MAX)
        return LT_E_INTERNAL;
    uint64_t before = T->token;
    T->no_escalate = 1;
    int64_t r = lock_one(T, txn, key, ends, depth, mode, 1, &m, 0);
    T->no_escalate = 0;
    if (r <= 0)
        return r;
    /* the node's own request, if this call granted (or converted) it: its
     * token is then newer than `before`; it takes the reclaimed one */
    uint32_t ti = txn_find(T, txn);
    uint32_t si = res_find(T, key, ends[depth - 1], key_hash(T, key, ends[depth - 1]));
    uint32_t q = (ti && si) ? req_find(T, ti, si) : 0;
    if (q && REQ(T, q)->held != LT_NL && REQ(T, q)->token > before) {
        REQ(T, q)->token = token;
        r = (int64_t)token;
    }
    if (token > T->token)
        T->token = token;
    return r;
}

int64_t lt_lock_many(lt_table *T, uint64_t txn, const uint8_t *keys, const uint16_t *ends,
                     const lt_item *items, size_t n, int nowait, int64_t *results, size_t *done)
{
    lt_memo m;
    int64_t r = 0;
    size_t k = 0;
    m.nvalid = 0;
    m.ti = 0;
    while (k < n) {
        const lt_item *it = &items[k];
        const uint8_t *key = keys + it->off;
        const uint16_t *e = ends + it->eoff;
        int depth = it->depth;
        /* the leading levels whose keys equal the previous item's: their
         * lookups are still valid (see lt_memo) */
        int reuse = 0;
        if (m.nvalid) {
            int lim = m.nvalid < depth ? m.nvalid : depth;
            uint32_t from = 0;
            while (reuse < lim && e[reuse] == m.ends[reuse] &&
                   memcmp(key + from, m.key + from, e[reuse] - from) == 0)
                from = e[reuse++];
        }
        r = lock_one(T, txn, key, e, depth, it->mode, nowait, &m, reuse);
        results[k++] = r;
        if (r < 0)
            break;
    }
    *done = k;
    return r;
}

/* ------------------------------------------------------------ release */

int64_t lt_unlock(lt_table *T, uint64_t txn, const uint8_t *key, const uint16_t *ends, int depth)
{
    uint32_t len = ends[depth - 1];
    uint32_t ti = txn_find(T, txn);
    uint32_t si = ti ? res_find(T, key, len, key_hash(T, key, len)) : 0;
    uint32_t ri = si ? req_find(T, ti, si) : 0;
    lt_txn *t = ti ? TXN(T, ti) : NULL;
    if (!ri || REQ(T, ri)->held == LT_NL) {
        if (t && !t->waiting) {
            for (int i = 0; i < depth - 1; i++) {
                uint32_t a = res_find(T, key, ends[i], key_hash(T, key, ends[i]));
                uint32_t q = a ? req_find(T, ti, a) : 0;
                if (q) {
                    int h = REQ(T, q)->held;
                    if (h == LT_S || h == LT_SIX || h == LT_X) {
                        T->nwoken = 0;
                        return 0;
                    }
                }
            }
        }
        return LT_E_NOT_HELD;
    }
    if (t->waiting)
        return LT_E_UNLOCK_WAITING;
    if (REQ(T, ri)->nchildren)
        return LT_E_HAS_CHILDREN;
    T->nwoken = 0;
    req_remove(T, ti, ri, RM_FULL);
    grant_waiters(T, si);
    qh_maybe_shrink(T);
    if (!t->nreqs)
        txn_free(T, ti);
    return T->nwoken;
}

int64_t lt_downgrade(lt_table *T, uint64_t txn, const uint8_t *key, const uint16_t *ends, int depth,
                     int mode)
{
    uint32_t len = ends[depth - 1];
    uint32_t ti = txn_find(T, txn);
    uint32_t si = ti ? res_find(T, key, len, key_hash(T, key, len)) : 0;
    uint32_t ri = si ? req_find(T, ti, si) : 0;
    if (!ri || REQ(T, ri)->held == LT_NL)
        return LT_E_NOT_HELD;
    if (TXN(T, ti)->waiting)
        return LT_E_UNLOCK_WAITING;
    lt_req *r = REQ(T, ri);
    int old = r->held;
    if (mode < LT_IS || mode > LT_X || lt_supremum[mode][old] != old)
        return LT_E_NOT_WEAKER;
    /* the intention the txn's own children need on this node stays covered */
    if (r->nchildren && lt_supremum[mode][r->nstrong ? LT_IX : LT_IS] != mode)
        return LT_E_HAS_CHILDREN;
    T->nwoken = 0;
    if (mode == old)
        return 0;
    set_held(T, RES(T, si), r, mode);
    grant_waiters(T, si);
    return T->nwoken;
}

int64_t lt_release_all(lt_table *T, uint64_t txn)
{
    T->nwoken = 0;
    uint32_t ti = txn_find(T, txn);
    if (!ti)
        return 0;
    lt_txn *t = TXN(T, ti);
    /* Removing one request and granting on its resource, then the next, is
     * the same as removing all and then granting (see try_escalate). */
    for (uint32_t q = t->head, next; q; q = next) {
        lt_req *r = REQ(T, q);
        uint32_t si = r->res;
        next = r->tnext;
        req_remove(T, ti, q, RM_RELEASE_ALL);
        grant_waiters(T, si);
    }
    t->head = t->tail = 0;
    t->waiting = 0;
    qh_maybe_shrink(T);
    txn_free(T, ti);
    return T->nwoken;
}

int64_t lt_cancel_wait(lt_table *T, uint64_t txn)
{
    T->nwoken = 0;
    uint32_t ti = txn_find(T, txn);
    if (!ti)
        return 0;
    lt_txn *t = TXN(T, ti);
    uint32_t ri = t->waiting;
    if (!ri)
        return 0;
    lt_req *r = REQ(T, ri);
    uint32_t si = r->res;
    if (r->held != LT_NL) {
        conv_remove(T, RES(T, si), ti);
        r->want = LT_NL;
        t->waiting = 0;
    } else {
        req_remove(T, ti, ri, RM_FULL);
    }
    grant_waiters(T, si);
    if (!t->nreqs)
        txn_free(T, ti);
    return T->nwoken;
}

/* ------------------------------------------------------------ wait-for */

/* The wait-for edges of waiting request ri, in a fixed order: conflicting
 * holders (first-grant order), then -- for a new waiter -- the pending
 * conversions and the waiters ahead of it. With ONE_AHEAD (the deadlock
 * search) the waiters ahead are one edge, to the waiter right ahead (qprev):
 * that one's own edges reach the rest, so the search reaches exactly the same
 * transactions, and a waiter costs O(1) soft edges instead of O(its place in
 * the queue) (docs/table.md). EMIT sees the successor's txn index in e_. */
#define FOR_EACH_EDGE_(T, ri, EMIT, ONE_AHEAD)                                  \
    do {                                                                        \
        const lt_req *r_ = REQ(T, ri);                                          \
        const lt_res *res_ = RES(T, r_->res);                                   \
        unsigned cf_ = lt_conflicts[r_->want];                                  \
        uint32_t h_ = res_->hold;                                               \
        if (h_) {                                                               \
            do {                                                                \
                const lt_req *q_ = REQ(T, h_);                                  \
                if (q_->txn != r_->txn && (cf_ >> q_->held & 1u)) {             \
                    uint32_t e_ = q_->txn;                                      \
                    EMIT;                                                       \
                }                                                               \
                h_ = q_->qnext;                                                 \
            } while (h_ != res_->hold);                                         \
        }                                                                       \
        if (r_->held == LT_NL) {                                                \
            uint32_t c_ = res_->conv;                                           \
            if (c_) {                                                           \
                do {                                                            \
                    const lt_txn *ct_ = TXN(T, c_);                             \
                    /* a conflicting holder was emitted above already */        \
                    if (!(cf_ >> REQ(T, ct_->waiting)->held & 1u)) {            \
                        uint32_t e_ = c_;                                       \
                        EMIT;                                                   \
                    }                                                           \
                    c_ = ct_->cnext;                                            \
                } while (c_ != res_->conv);                                     \
            }                                                                   \
            if (ONE_AHEAD) {                                                    \
                if ((ri) != res_->wait) {                                       \
                    uint32_t e_ = REQ(T, r_->qprev)->txn;                       \
                    EMIT;                                                       \
                }                                                               \
            } else {                                                            \
                for (uint32_t w_ = res_->wait; w_ != (ri); w_ = REQ(T, w_)->qnext) { \
                    uint32_t e_ = REQ(T, w_)->txn;                              \
                    EMIT;                                                       \
                }                                                               \
            }                                                                   \
        }                                                                       \
    } while (0)

#define FOR_EACH_EDGE(T, ri, EMIT) FOR_EACH_EDGE_(T, ri, EMIT, 0)
#define FOR_EACH_SEARCH_EDGE(T, ri, EMIT) FOR_EACH_EDGE_(T, ri, EMIT, 1)

int64_t lt_wait_edges(const lt_table *T, uint64_t txn, uint64_t *out)
{
    uint32_t ti = txn_find(T, txn);
    if (!ti || !TXN(T, ti)->waiting)
        return -1;
    int64_t n = 0;
    FOR_EACH_EDGE(T, TXN(T, ti)->waiting, out[n++] = TXN(T, e_)->id);
    return n;
}

size_t lt_wait_graph(const lt_table *T, uint64_t *out)
{
    size_t n = 0;
    for (uint32_t x = T->txn_head; x; x = TXN(T, x)->next) {
        uint32_t ri = TXN(T, x)->waiting;
        if (!ri)
            continue;
        size_t at = n + 1;
        uint64_t k = 0;
        if (out)
            out[n] = TXN(T, x)->id;
        n += 2;
        FOR_EACH_EDGE(T, ri, {
            if (out)
                out[n] = TXN(T, e_)->id;
            n++;
            k++;
        });
        if (out)
            out[at] = k;
    }
    return n;
}

static int ebuf_push(lt_table *T, size_t *len, uint32_t v)
{
    if (*len == T->ebuf_cap) {
        size_t cap = T->ebuf_cap ? T->ebuf_cap * 2 : 256;
        uint32_t *b = lt_realloc(T, T->ebuf, cap * sizeof *b);
        if (!b)
            return -1;
        T->ebuf = b;
        T->ebuf_cap = cap;
    }
    T->ebuf[(*len)++] = v;
    return 0;
}

static int push_frame(lt_table *T, size_t nf, size_t *elen, uint32_t ri)
{
    if ((nf + 1) * 3 > T->frames_cap) {
        size_t cap = T->frames_cap ? T->frames_cap * 2 : 192;
        uint32_t *f = lt_realloc(T, T->frames, cap * sizeof *f);
        if (!f)
            return -1;
        T->frames = f;
        T->frames_cap = cap;
    }
    size_t start = *elen;
    int fail = 0;
    FOR_EACH_SEARCH_EDGE(T, ri, fail |= ebuf_push(T, elen, e_));
    if (fail)
        return -1;
    T->frames[nf * 3] = (uint32_t)start;
    T->frames[nf * 3 + 1] = (uint32_t)start;
    T->frames[nf * 3 + 2] = (uint32_t)*elen;
    return 0;
}

int lt_find_cycle(lt_table *T, uint64_t txn, const uint64_t **path, size_t *n)
{
    *n = 0;
    *path = T->path;
    uint32_t ti = txn_find(T, txn);
    if (!ti || !TXN(T, ti)->waiting)
        return 0;
    /* A cycle through txn needs an edge into it: a transaction waiting on a
     * resource where txn holds a granted request (txn's own waiting request
     * sits at the tail of its queue, or -- a conversion -- on a resource it
     * holds). None: no cycle, and no search. So a new waiter on a hot row costs
     * O(txn's requests), not O(the queue ahead of it) (docs/table.md). */
    uint32_t q = TXN(T, ti)->head;
    for (; q; q = REQ(T, q)->tnext) {
        const lt_req *r = REQ(T, q);
        if (r->held != LT_NL) {
            const lt_res *res = RES(T, r->res);
            if (res->wait || res->conv)
                break;
        }
    }
    if (!q)
        return 0;
    T->searches++;
    if (T->path_cap < T->ntxns + 1) {
        uint64_t *p = lt_realloc(T, T->path, (size_t)(T->ntxns + 1) * sizeof *p);
        if (!p)
            return LT_E_NOMEM;
        T->path = p;
        T->path_cap = T->ntxns + 1;
        *path = p;
    }
    if (++T->epoch == 0) {      /* wrapped: forget every old mark */
        for (uint32_t x = T->txn_head; x; x = TXN(T, x)->next)
            TXN(T, x)->visit = 0;
        T->epoch = 1;
    }
    uint32_t epoch = T->epoch;
    TXN(T, ti)->visit = epoch;
    size_t plen = 0, nf = 0, elen = 0;
    T->path[plen++] = txn;
    if (push_frame(T, nf, &elen, TXN(T, ti)->waiting))
        return LT_E_NOMEM;
    nf++;
    long budget = LT_SEARCH_LIMIT;
    while (nf) {
        uint32_t *f = &T->frames[(nf - 1) * 3];
        if (f[1] == f[2]) {
            elen = f[0];
            nf--;
            plen--;
            continue;
        }
        uint32_t x = T->ebuf[f[1]++];
        if (x == ti) {
            *n = plen;
            return 1;
        }
        lt_txn *u = TXN(T, x);
        if (u->visit == epoch)
            continue;
        u->visit = epoch;
        if (--budget <= 0)
            return 0;
        if (!u->waiting)
            continue;
        T->path[plen++] = u->id;
        if (push_frame(T, nf, &elen, u->waiting))
            return LT_E_NOMEM;
        nf++;
    }
    return 0;
}

/* ------------------------------------------------------------ introspection */

int lt_is_waiting(const lt_table *T, uint64_t txn)
{
    uint32_t ti = txn_find(T, txn);
    return ti && TXN(T, ti)->waiting;
}

int lt_waiting_on(const lt_table *T, uint64_t txn, const uint8_t **key, uint32_t *keylen,
                  int *mode)
{
    uint32_t ti = txn_find(T, txn);
    if (!ti || !TXN(T, ti)->waiting)
        return 0;
    const lt_req *r = REQ(T, TXN(T, ti)->waiting);
    const lt_res *res = RES(T, r->res);
    *key = res_key(T, res);
    *keylen = res->keylen;
    *mode = r->want;
    return 1;
}

int lt_mode_held(const lt_table *T, uint64_t txn, const uint8_t *key, uint32_t keylen)
{
    uint32_t ti = txn_find(T, txn);
    if (!ti)
        return LT_NL;
    uint32_t si = res_find(T, key, keylen, key_hash(T, key, keylen));
    uint32_t q = si ? req_find(T, ti, si) : 0;
    return q ? REQ(T, q)->held : LT_NL;
}

uint64_t lt_txn_nreqs(const lt_table *T, uint64_t txn)
{
    uint32_t ti = txn_find(T, txn);
    return ti ? TXN(T, ti)->nreqs : 0;
}

size_t lt_held(const lt_table *T, uint64_t txn, lt_row *out)
{
    uint32_t ti = txn_find(T, txn);
    size_t n = 0;
    if (!ti)
        return 0;
    for (uint32_t q = TXN(T, ti)->head; q; q = REQ(T, q)->tnext) {
        const lt_req *r = REQ(T, q);
        if (r->held == LT_NL)
            continue;
        const lt_res *res = RES(T, r->res);
        out[n].key = res_key(T, res);
        out[n].keylen = res->keylen;
        out[n].mode = r->held;
        out[n].granted = 1;
        out[n].txn = txn;
        n++;
    }
    return n;
}

size_t lt_ntxns(const lt_table *T)
{
    return T->ntxns;
}

size_t lt_txn_ids(const lt_table *T, uint64_t *out)
{
    size_t n = 0;
    for (uint32_t x = T->txn_head; x; x = TXN(T, x)->next)
        out[n++] = TXN(T, x)->id;
    return n;
}

size_t lt_node(const lt_table *T, const uint8_t *key, uint32_t keylen, lt_row *out, size_t max)
{
    /* the requests of one resource (holders, then conversions, then new
     * waiters), as lt_snapshot's rows; writes at most max, returns how many
     * there are (0: the resource does not exist) */
    uint32_t si = res_find(T, key, keylen, key_hash(T, key, keylen));
    size_t n = 0;
    uint32_t q;
    if (!si)
        return 0;
    const lt_res *res = RES(T, si);
    const uint8_t *k = res_key(T, res);
#define NROW(TXNIDX, MODE, GRANTED)                             \
    do {                                                        \
        if (n < max) {                                          \
            out[n].key = k;                                     \
            out[n].keylen = res->keylen;                        \
            out[n].txn = TXN(T, (TXNIDX))->id;                  \
            out[n].mode = (MODE);                               \
            out[n].granted = (GRANTED);                         \
        }                                                       \
        n++;                                                    \
    } while (0)
    if ((q = res->hold))
        do {
            NROW(REQ(T, q)->txn, REQ(T, q)->held, 1);
            q = REQ(T, q)->qnext;
        } while (q != res->hold);
    if ((q = res->conv))
        do {
            NROW(q, REQ(T, TXN(T, q)->waiting)->want, 0);
            q = TXN(T, q)->cnext;
        } while (q != res->conv);
    if ((q = res->wait))
        do {
            NROW(REQ(T, q)->txn, REQ(T, q)->want, 0);
            q = REQ(T, q)->qnext;
        } while (q != res->wait);
#undef NROW
    return n;
}

size_t lt_nrows(const lt_table *T)
{
    return T->nreqs + T->nconv;
}

size_t lt_snapshot(const lt_table *T, lt_row *out)
{
    size_t n = 0;
    for (uint32_t i = 0; i <= T->rh_mask; i++) {
        uint32_t si = T->rh[i].idx;
        if (!si)
            continue;
        const lt_res *res = RES(T, si);
        const uint8_t *key = res_key(T, res);
        uint32_t q;
#define ROW(TXNIDX, MODE, GRANTED)                              \
        do {                                                    \
            out[n].key = key;                                   \
            out[n].keylen = res->keylen;                        \
            out[n].txn = TXN(T, (TXNIDX))->id;                  \
            out[n].mode = (MODE);                               \
            out[n].granted = (GRANTED);                         \
            n++;                                                \
        } while (0)
        if ((q = res->hold))
            do {
                ROW(REQ(T, q)->txn, REQ(T, q)->held, 1);
                q = REQ(T, q)->qnext;
            } while (q != res->hold);
        if ((q = res->conv))
            do {
                ROW(q, REQ(T, TXN(T, q)->waiting)->want, 0);
                q = TXN(T, q)->cnext;
            } while (q != res->conv);
        if ((q = res->wait))
            do {
                ROW(REQ(T, q)->txn, REQ(T, q)->want, 0);
                q = REQ(T, q)->qnext;
            } while (q != res->wait);
#undef ROW
    }
    return n;
}

void lt_stats(const lt_table *T, lt_stats_t *o)
{
    o->granted = T->granted;
    o->waited = T->waited;
    o->escalations = T->escalations;
    o->requests = T->nreqs;
    o->resources = T->nres;
    o->transactions = T->ntxns;
    o->last_token = T->token;
    o->searches = T->searches;
}

void lt_alloc_counts(const lt_table *T, lt_alloc_t *o)
{
    o->live_requests = T->rq.live;
    o->live_resources = T->rs.live;
    o->live_txns = T->tx.live;
    o->live_key_blocks = 0;
    o->chunks = T->rq.nchunks + T->rs.nchunks + T->tx.nchunks;
    for (int c = 0; c < NKCLASS; c++) {
        o->live_key_blocks += T->kp[c].live;
        o->chunks += T->kp[c].nchunks;
    }
    o->heap_blocks = T->heap_blocks;
    o->heap_allocs = T->heap_allocs;
    o->hash_slots = (uint64_t)T->rh_mask + 1 + T->qh_mask + 1 + T->th_mask + 1;
}

int lt_debug_set_hash_mask(lt_table *T, uint32_t mask)
{
    if (T->nres)
        return LT_E_NOT_EMPTY;
    T->hash_mask = mask;
    return 0;
}

int lt_compact(lt_table *T)
{
    if (T->nreqs || T->nres || T->ntxns)
        return LT_E_NOT_EMPTY;
    pool_destroy(T, &T->rq);
    pool_init(&T->rq, sizeof(lt_req), SLAB_SHIFT);
    pool_destroy(T, &T->rs);
    pool_init(&T->rs, sizeof(lt_res), SLAB_SHIFT);
    pool_destroy(T, &T->tx);
    pool_init(&T->tx, sizeof(lt_txn), SLAB_SHIFT);
    for (int c = 0; c < NKCLASS; c++) {
        pool_destroy(T, &T->kp[c]);
        pool_init(&T->kp[c], 32u << c, (uint32_t)(16 - 5 - c));
    }
    lt_free(T, T->woken);
    lt_free(T, T->path);
    lt_free(T, T->ebuf);
    lt_free(T, T->frames);
    T->woken = T->path = NULL;
    T->ebuf = T->frames = NULL;
    T->woken_cap = T->path_cap = 0;
    T->ebuf_cap = T->frames_cap = 0;
    T->nwoken = 0;
    T->txn_head = T->txn_tail = 0;
    if ((T->rh_mask != 15 && rh_resize(T, 16)) || (T->qh_mask != 15 && qh_resize(T, 16)) ||
        (T->th_mask != 15 && th_resize(T, 16)))
        return LT_E_NOMEM;
    return 0;
}

int lt_debug_build(void)
{
    return LOCKTABLE_DEBUG;
}

/* ------------------------------------------------------------ invariants */

#define CHECK(c, ...)                                                   \
    do {                                                                \
        if (!(c)) {                                                     \
            snprintf(T->msg, sizeof T->msg, __VA_ARGS__);               \
            goto fail;                                                  \
        }                                                               \
    } while (0)

static int in_pool(const lt_pool *p, uint32_t i)
{
    return i && i < p->bump && (i >> p->shift) < p->nchunks;
}

/* Number of levels in a canonical key (0 if malformed) and the end of the
 * parent level. */
static int key_levels(const uint8_t *k, uint32_t n, uint32_t *parent_end)
{
    uint32_t i = 0, prev = 0;
    int levels = 0;
    while (i < n) {
        uint32_t start = i;
        if (k[i] == 2)
            i += 9;
        else if (k[i] == 1 || k[i] == 3) {
            if (i + 3 > n)
                return 0;
            i += 3 + ((uint32_t)k[i + 1] << 8 | k[i + 2]);
        } else
            return 0;
        if (i > n)
            return 0;
        prev = start;
        levels++;
    }
    *parent_end = prev;
    return levels;
}

const char *lt_check(lt_table *T)
{
    uint32_t *kids = NULL, *strong = NULL;
    uint8_t *seen = NULL;
    uint64_t nreq = 0, total = 0;
    uint32_t nres = 0, ntx = 0, allconv = 0;

    /* hash tables: counts, and every entry reachable from its home slot */
    {
        uint32_t c = 0, m = T->rh_mask;
        for (uint32_t i = 0; i <= m; i++) {
            lt_rent e = T->rh[i];
            if (!e.idx)
                continue;
            c++;
            for (uint32_t j = e.tag & m; j != i; j = (j + 1) & m)
                CHECK(T->rh[j].idx, "resource hash: hole between home and slot %u", i);
        }
        CHECK(c == T->rh_count && c == T->nres && c == T->rs.live,
              "resource counts: hash %u, count %u, nres %u, live %u", c, T->rh_count, T->nres,
              T->rs.live);
        c = 0;
        m = T->qh_mask;
        for (uint32_t i = 0; i <= m; i++) {
            uint32_t q = T->qh[i];
            if (!q)
                continue;
            c++;
            CHECK(in_pool(&T->rq, q), "request hash: bad index");
            const lt_req *r = REQ(T, q);
            for (uint32_t j = req_hash(r->txn, r->res) & m; j != i; j = (j + 1) & m)
                CHECK(T->qh[j], "request hash: hole");
        }
        CHECK(c == T->qh_count && c == T->nreqs && c == T->rq.live,
              "request counts: hash %u, count %u, nreqs %llu, live %u", c, T->qh_count,
              (unsigned long long)T->nreqs, T->rq.live);
        c = 0;
        m = T->th_mask;
        for (uint32_t i = 0; i <= m; i++) {
            uint32_t x = T->th[i];
            if (!x)
                continue;
            c++;
            CHECK(in_pool(&T->tx, x), "txn hash: bad index");
            for (uint32_t j = txn_hash(TXN(T, x)->id) & m; j != i; j = (j + 1) & m)
                CHECK(T->th[j], "txn hash: hole");
        }
        CHECK(c == T->th_count && c == T->ntxns && c == T->tx.live, "txn counts");
    }

    size_t cap = (size_t)T->rq.bump + 1;
    kids = calloc(cap, sizeof *kids);
    strong = calloc(cap, sizeof *strong);
    seen = calloc(cap, 1);
    CHECK(kids && strong && seen, "out of memory in check");

    for (uint32_t i = 0; i <= T->rh_mask; i++) {
        uint32_t si = T->rh[i].idx;
        if (!si)
            continue;
        nres++;
        CHECK(in_pool(&T->rs, si), "resource index");
        const lt_res *res = RES(T, si);
        const uint8_t *key = res_key(T, res);
        uint32_t pe;
        CHECK(T->rh[i].tag == key_hash(T, key, res->keylen), "resource hash tag");
        CHECK(res_find(T, key, res->keylen, T->rh[i].tag) == si, "key lookup finds another resource");
        CHECK(key_levels(key, res->keylen, &pe) > 0, "malformed key");
        CHECK(res->hold || res->wait, "an empty resource must be freed");
        uint32_t counts[6] = {0};
        uint32_t nhold = 0, nconv_marked = 0;
        uint32_t q = res->hold;
        if (q) {
            do {
                CHECK(in_pool(&T->rq, q), "holder index");
                const lt_req *h = REQ(T, q);
                CHECK(REQ(T, h->qnext)->qprev == q, "holder list links");
                CHECK(h->res == si, "holder's resource");
                CHECK(in_pool(&T->tx, h->txn), "holder's txn");
                CHECK(h->held != LT_NL && h->held <= LT_X, "holder with mode NL");
                CHECK(h->token > 0 && h->token <= T->token, "holder's token above the counter");
                counts[h->held]++;
                CHECK(req_find(T, h->txn, si) == q, "holder not found by (txn, resource)");
                const lt_txn *ht = TXN(T, h->txn);
                CHECK((h->want != LT_NL) == (ht->waiting == q), "conversion and txn.waiting");
                if (h->want != LT_NL) {
                    CHECK(lt_supremum[h->held][h->want] == h->want && h->want != h->held,
                          "conversion target");
                    nconv_marked++;
                }
                CHECK(nhold++ <= T->rq.live, "holder list cycle");
                q = h->qnext;
            } while (q != res->hold);
        }
        CHECK(counts[LT_IS] == res->n_is, "IS count %u != %u", counts[LT_IS], res->n_is);
        uint32_t other = 0;
        for (int m = LT_IX; m <= LT_X; m++)
            if (counts[m]) {
                CHECK(!other, "two non-IS modes granted together");
                other = counts[m];
                CHECK(res->other_mode == m, "other_mode");
            }
        CHECK(other == res->n_other, "n_other count");
        CHECK(res->n_other || res->other_mode == LT_NL, "stale other_mode");
        /* the granted group is pairwise compatible */
        for (int a = 1; a <= LT_X; a++)
            for (int b = a; b <= LT_X; b++)
                if (counts[a] && counts[b] && (a != b || counts[a] > 1))
                    CHECK(!(lt_conflicts[a] >> b & 1), "incompatible holders %d and %d", a, b);
        uint32_t nconv = 0;
        if ((q = res->conv)) {
            do {
                CHECK(in_pool(&T->tx, q), "conversion txn index");
                const lt_txn *ct = TXN(T, q);
                CHECK(TXN(T, ct->cnext)->cprev == q, "conversion list links");
                uint32_t cr = ct->waiting;
                CHECK(cr && in_pool(&T->rq, cr), "converting txn does not wait");
                const lt_req *c = REQ(T, cr);
                CHECK(c->res == si && c->held != LT_NL && c->want != LT_NL, "conversion request");
                CHECK(lt_conflicts[c->want] & res_mask_without(res, c->held),
                      "a waiting conversion must conflict with another holder");
                CHECK(nconv++ <= T->tx.live, "conversion list cycle");
                q = ct->cnext;
            } while (q != res->conv);
        }
        CHECK(nconv == nconv_marked, "conversion queue vs holders wanting more");
        allconv += nconv;
        uint32_t nwait = 0;
        if ((q = res->wait)) {
            do {
                CHECK(in_pool(&T->rq, q), "waiter index");
                const lt_req *w = REQ(T, q);
                CHECK(REQ(T, w->qnext)->qprev == q, "waiter list links");
                CHECK(w->res == si, "waiter's resource");
                CHECK(w->held == LT_NL && w->want != LT_NL, "waiter modes");
                CHECK(TXN(T, w->txn)->waiting == q, "waiter's txn.waiting");
                CHECK(req_find(T, w->txn, si) == q, "waiter's txn also holds the resource");
                CHECK(nwait++ <= T->rq.live, "waiter list cycle");
                q = w->qnext;
            } while (q != res->wait);
            if (!res->conv)
                CHECK(lt_conflicts[REQ(T, res->wait)->want] & res_mask(res),
                      "the head of the queue must be blocked by a holder");
        }
        nreq += nhold + nwait;
    }

    for (uint32_t x = T->txn_head, prev = 0; x; prev = x, x = TXN(T, x)->next) {
        CHECK(in_pool(&T->tx, x), "txn list index");
        const lt_txn *t = TXN(T, x);
        CHECK(t->prev == prev, "txn list links");
        CHECK(txn_find(T, t->id) == x, "txn not found by id");
        CHECK(t->id != 0, "txn id 0");
        CHECK(t->head, "a transaction with no requests must be freed");
        ntx++;
        uint32_t nwait = 0, n = 0, tprev = 0;
        for (uint32_t q = t->head; q; tprev = q, q = REQ(T, q)->tnext) {
            CHECK(in_pool(&T->rq, q), "txn request index");
            const lt_req *r = REQ(T, q);
            CHECK(!seen[q], "request on two lists");
            seen[q] = 1;
            CHECK(r->tprev == tprev, "txn request links");
            CHECK(r->txn == x, "request's txn");
            CHECK(in_pool(&T->rs, r->res), "request's resource");
            const lt_res *res = RES(T, r->res);
            const uint8_t *key = res_key(T, res);
            CHECK(res_find(T, key, res->keylen, key_hash(T, key, res->keylen)) == r->res,
                  "request's resource not in the table");
            CHECK(req_find(T, x, r->res) == q, "request not found by (txn, resource)");
            if (r->want != LT_NL) {
                nwait++;
                CHECK(t->waiting == q, "waiting request is not txn.waiting");
            }
            uint32_t pe;
            int levels = key_levels(key, res->keylen, &pe);
            if (levels > 1) {
                uint32_t ps = res_find(T, key, pe, key_hash(T, key, pe));
                CHECK(r->parent && ps && req_find(T, x, ps) == r->parent, "parent link");
                kids[r->parent]++;
                strong[r->parent] += STRONG(r->held);
                if (r->held != LT_NL) {
                    const lt_req *p = REQ(T, r->parent);
                    CHECK(p->held != LT_NL, "granted child of an ungranted parent");
                    CHECK(lt_supremum[p->held][lt_intention[r->held]] == p->held,
                          "parent holds %d, child %d", p->held, r->held);
                }
            } else {
                CHECK(!r->parent, "root request with a parent");
            }
            n++;
        }
        CHECK(t->tail == tprev, "txn tail");
        CHECK(n == t->nreqs, "txn nreqs");
        CHECK(nwait <= 1, "txn waits twice");
        CHECK((t->waiting == 0) == (nwait == 0), "txn.waiting");
        total += n;
    }
    for (uint32_t x = T->txn_head; x; x = TXN(T, x)->next)
        for (uint32_t q = TXN(T, x)->head; q; q = REQ(T, q)->tnext) {
            CHECK(kids[q] == REQ(T, q)->nchildren, "nchildren %u != %u", kids[q],
                  REQ(T, q)->nchildren);
            CHECK(strong[q] == REQ(T, q)->nstrong, "nstrong %u != %u", strong[q],
                  REQ(T, q)->nstrong);
        }
    CHECK(ntx == T->ntxns, "txn list length");
    CHECK(total == nreq && total == T->nreqs, "requests: %llu by txn, %llu by resource",
          (unsigned long long)total, (unsigned long long)nreq);
    CHECK(nres == T->nres, "resources");
    CHECK(allconv == T->nconv, "conversion count");
    free(kids);
    free(strong);
    free(seen);
    return NULL;
fail:
    free(kids);
    free(strong);
    free(seen);
    return T->msg;
}
