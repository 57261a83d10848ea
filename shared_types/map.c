/* map.c - the insertion-ordered hash map behind dicts, namespaces and MPB_MAP values.
 *
 * The layout is CPython's compact dict: entries[] holds {hash, key, value} in
 * insertion order, and index[] is an open-addressing table (linear probing) of entry
 * positions + 1, 0 meaning empty. Maps of up to SMALL entries have no index at all
 * and are scanned, which is both smaller and faster at that size.
 *
 * Deletion leaves a tombstone in entries[] (order of the others is kept) but removes
 * the index slot outright by backward shifting, so the index only ever refers to live
 * entries and probes never wade through deleted slots. Trailing tombstones are
 * trimmed at once, which makes popitem/stack-like use free of tombstones; entries[]
 * is compacted when tombstones outnumber live entries; base counts the slots that
 * compaction (and clearing) dropped, so that slot + base is a position a cursor can
 * hold across compactions. Hashing and equality come from value.c; value semantics
 * are not this file's business.
 */
#include <stdlib.h>
#include <string.h>

#include "mpb_value.h"

#define SMALL 8            /* up to this many entries: no index, linear scan */
#define MIN_INDEX 16       /* smallest index table */
#define NOT_FOUND SIZE_MAX /* entry position / index slot: absent */
/* Positions are stored + 1 in uint32, so entries[] holds at most this many slots. */
#define MAX_ENTRIES ((size_t)UINT32_MAX - 1)

mpb_map *mpb_map_new(void) { return calloc(1, sizeof(mpb_map)); }

static void free_entries(mpb_map *m)
{
    for (size_t i = 0; i < m->used; i++) {
        mpb_map_entry *e = &m->entries[i];
        if (e->key.type == MPB_TOMBSTONE)
            continue;
        mpb_value_free(&e->key);
        mpb_value_free(&e->val);
    }
}

void mpb_map_clear(mpb_map *m)
{
    uint64_t base = m->base + m->used; /* cursors from before stay valid */
    free_entries(m);
    free(m->entries);
    free(m->index);
    memset(m, 0, sizeof *m);
    m->base = base;
}

void mpb_map_free(mpb_map *m)
{
    if (m == NULL)
        return;
    mpb_map_clear(m);
    free(m);
}

mpb_map_entry *mpb_map_next(const mpb_map *m, size_t *it)
{
    while (*it < m->used) {
        mpb_map_entry *e = &m->entries[(*it)++];
        if (e->key.type != MPB_TOMBSTONE)
            return e;
    }
    return NULL;
}

/*--- Lookup ---*/

/* Equality with the common key types (int, str) decided inline: a million-key dict
 * spends its time here. */
static inline bool key_equal(const mpb_value *a, const mpb_value *b)
{
    if (a->type == b->type) {
        if (a->type == MPB_INT)
            return a->v.i == b->v.i;
        if (a->type == MPB_STR)
            return a->len == b->len && (a->len == 0 || memcmp(a->v.s, b->v.s, a->len) == 0);
    }
    return mpb_value_equal(a, b);
}

/* Position of key in entries[], or NOT_FOUND. With an index, *slot gets the index
 * slot that refers to it, or the empty slot where it would go. */
static size_t find(const mpb_map *m, const mpb_value *key, uint64_t h, size_t *slot)
{
    if (m->index == NULL) {
        for (size_t i = 0; i < m->used; i++) {
            const mpb_map_entry *e = &m->entries[i];
            if (e->hash == h && e->key.type != MPB_TOMBSTONE && key_equal(&e->key, key))
                return i;
        }
        return NOT_FOUND;
    }
    size_t mask = m->index_cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        uint32_t ix = m->index[i];
        if (ix == 0) {
            *slot = i;
            return NOT_FOUND;
        }
        const mpb_map_entry *e = &m->entries[ix - 1];
        if (e->hash == h && key_equal(&e->key, key)) {
            *slot = i;
            return ix - 1;
        }
    }
}

/* The index slot holding entry position pos (which must be live and indexed). */
static size_t slot_of(const mpb_map *m, size_t pos)
{
    size_t mask = m->index_cap - 1;
    size_t i = (size_t)m->entries[pos].hash & mask;
    while (m->index[i] != pos + 1)
        i = (i + 1) & mask;
    return i;
}

mpb_value *mpb_map_get(const mpb_map *m, const mpb_value *key)
{
    uint64_t h;
    size_t slot;
    if (m->len == 0 || mpb_value_hash(key, &h) != 0)
        return NULL;
    size_t pos = find(m, key, h, &slot);
    return pos == NOT_FOUND ? NULL : &m->entries[pos].val;
}

/*--- Index maintenance ---*/

static void index_put(mpb_map *m, size_t pos)
{
    size_t mask = m->index_cap - 1;
    size_t i = (size_t)m->entries[pos].hash & mask;
    while (m->index[i] != 0)
        i = (i + 1) & mask;
    m->index[i] = (uint32_t)(pos + 1);
}

/* Empty index slot i, then shift later members of the probe run back so that every
 * entry stays reachable from its home slot without tombstones in the index. */
static void index_remove(mpb_map *m, size_t i)
{
    size_t mask = m->index_cap - 1;
    for (size_t j = (i + 1) & mask; m->index[j] != 0; j = (j + 1) & mask) {
        size_t home = (size_t)m->entries[m->index[j] - 1].hash & mask;
        /* Entry at j may move to i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->index[i] = m->index[j];
            i = j;
        }
    }
    m->index[i] = 0;
}

static void index_fill(mpb_map *m)
{
    memset(m->index, 0, m->index_cap * sizeof *m->index);
    for (size_t pos = 0; pos < m->used; pos++)
        if (m->entries[pos].key.type != MPB_TOMBSTONE)
            index_put(m, pos);
}

/* Smallest power-of-two table that holds n entries under 2/3 load. */
static size_t index_size_for(size_t n)
{
    size_t cap = MIN_INDEX;
    while (cap / 3 * 2 < n)
        cap *= 2;
    return cap;
}

/* Replace the index by one of cap slots (0 = drop it). -1 on allocation failure,
 * leaving the old index in place and valid. */
static int index_resize(mpb_map *m, size_t cap)
{
    uint32_t *ix = NULL;
    if (cap > 0 && (ix = malloc(cap * sizeof *ix)) == NULL)
        return -1;
    free(m->index);
    m->index = ix;
    m->index_cap = cap;
    if (ix != NULL)
        index_fill(m);
    return 0;
}

/*--- Tombstones ---*/

/* Slide live entries to the front, keeping their order. Positions change, so the
 * index is rebuilt; it is also resized to the live count, which is where a dict that
 * shrank from a million keys gives its memory back. Cannot fail: if the smaller
 * allocations fail, the bigger old arrays stay. */
static void compact(mpb_map *m)
{
    size_t w = 0;
    for (size_t r = 0; r < m->used; r++)
        if (m->entries[r].key.type != MPB_TOMBSTONE)
            m->entries[w++] = m->entries[r];
    m->base += m->used - w;
    m->used = w;
    if (m->cap > 2 * SMALL && m->len < m->cap / 4) {
        size_t cap = m->len * 2 < SMALL ? SMALL : m->len * 2;
        mpb_map_entry *e = realloc(m->entries, cap * sizeof *e);
        if (e != NULL) {
            m->entries = e;
            m->cap = cap;
        }
    }
    if (m->index == NULL)
        return;
    size_t want = m->len <= SMALL ? 0 : index_size_for(m->len);
    if (want >= m->index_cap || index_resize(m, want) != 0)
        index_fill(m);
}

static void trim_tail(mpb_map *m)
{
    while (m->used > 0 && m->entries[m->used - 1].key.type == MPB_TOMBSTONE)
        m->used--;
}

/* Take entry pos out (its index slot already removed): move or free its key and
 * value, leave a tombstone, and keep the tombstone count in check. */
static void remove_entry(mpb_map *m, size_t pos, mpb_value *key_out, mpb_value *val_out)
{
    mpb_map_entry *e = &m->entries[pos];
    if (key_out != NULL)
        *key_out = e->key;
    else
        mpb_value_free(&e->key);
    if (val_out != NULL)
        *val_out = e->val;
    else
        mpb_value_free(&e->val);
    e->key = mpb_nil();
    e->key.type = MPB_TOMBSTONE;
    e->val = mpb_nil();
    m->len--;
    trim_tail(m);
    if ((m->used - m->len) * 2 > m->used)
        compact(m);
}

/*--- Insertion ---*/

/* Room for one more entry at entries[used], with an index that can take it when
 * the map is past SMALL. 0, or -1 on allocation failure with the map unchanged
 * (but for capacity). */
static int ensure_room(mpb_map *m)
{
    if (m->used == m->cap) {
        if (m->used - m->len >= m->used / 2 && m->used > 0) {
            compact(m); /* mostly tombstones: reuse the space instead of growing */
        } else {
            if (m->cap >= MAX_ENTRIES)
                return -1;
            size_t cap = m->cap < 4 ? 4 : m->cap * 2;
            if (cap > MAX_ENTRIES)
                cap = MAX_ENTRIES;
            mpb_map_entry *e = realloc(m->entries, cap * sizeof *e);
            if (e == NULL)
                return -1;
            m->entries = e;
            m->cap = cap;
        }
    }
    if (m->index == NULL) {
        if (m->used + 1 > SMALL)
            return index_resize(m, index_size_for(m->len + 1));
    } else if ((m->len + 1) * 3 > m->index_cap * 2) {
        return index_resize(m, m->index_cap * 2);
    }
    return 0;
}

int mpb_map_set(mpb_map *m, mpb_value *key, mpb_value *val, mpb_value *old)
{
    uint64_t h;
    size_t slot = 0;
    if (mpb_value_hash(key, &h) != 0)
        return -2;
    size_t pos = find(m, key, h, &slot);
    if (pos != NOT_FOUND) {
        /* Python keeps the first key: d[1] = 'a'; d[1.0] = 'b' leaves {1: 'b'}. */
        mpb_value *stored = &m->entries[pos].val;
        if (old != NULL)
            *old = *stored;
        else
            mpb_value_free(stored);
        *stored = *val;
        *val = mpb_nil();
        mpb_value_free(key);
        return 0;
    }
    if (ensure_room(m) != 0)
        return -1;
    pos = m->used++;
    m->entries[pos].hash = h;
    m->entries[pos].key = *key;
    m->entries[pos].val = *val;
    m->len++;
    if (m->index != NULL)
        index_put(m, pos); /* probe again: ensure_room may have rebuilt the table */
    *key = mpb_nil();
    *val = mpb_nil();
    return 1;
}

/*--- Deletion ---*/

bool mpb_map_del(mpb_map *m, const mpb_value *key, mpb_value *key_out, mpb_value *val_out)
{
    uint64_t h;
    size_t slot = 0;
    if (m->len == 0 || mpb_value_hash(key, &h) != 0)
        return false;
    size_t pos = find(m, key, h, &slot);
    if (pos == NOT_FOUND)
        return false;
    if (m->index != NULL)
        index_remove(m, slot);
    remove_entry(m, pos, key_out, val_out);
    return true;
}

bool mpb_map_pop_last(mpb_map *m, mpb_value *key_out, mpb_value *val_out)
{
    if (m->len == 0)
        return false;
    size_t pos = m->used - 1; /* live: trailing tombstones are always trimmed */
    if (m->index != NULL)
        index_remove(m, slot_of(m, pos));
    remove_entry(m, pos, key_out, val_out);
    return true;
}

/*--- Copy ---*/

mpb_map *mpb_map_dup(const mpb_map *src)
{
    mpb_map *m = mpb_map_new();
    if (m == NULL)
        return NULL;
    if (src->len == 0)
        return m;
    size_t cap = src->len < 4 ? 4 : src->len;
    if ((m->entries = malloc(cap * sizeof *m->entries)) == NULL)
        goto fail;
    m->cap = cap;
    size_t it = 0;
    const mpb_map_entry *e;
    while ((e = mpb_map_next(src, &it)) != NULL) {
        mpb_map_entry *d = &m->entries[m->used];
        d->hash = e->hash;
        if (mpb_value_copy(&d->key, &e->key) != 0)
            goto fail;
        if (mpb_value_copy(&d->val, &e->val) != 0) {
            mpb_value_free(&d->key);
            goto fail;
        }
        m->used++;
        m->len++;
    }
    if (m->len > SMALL && index_resize(m, index_size_for(m->len)) != 0)
        goto fail;
    return m;
fail:
    mpb_map_free(m); /* frees the m->used entries copied so far */
    return NULL;
}

int mpb_map_layout_like(mpb_map *m, const mpb_map *model)
{
    if (m->len != model->len)
        return -1;
    size_t cap = model->cap;
    mpb_map_entry *e = cap ? malloc(cap * sizeof *e) : NULL;
    uint32_t *ix = model->index_cap ? malloc(model->index_cap * sizeof *ix) : NULL;
    if ((cap && e == NULL) || (model->index_cap && ix == NULL)) {
        free(e);
        free(ix);
        return -1;
    }
    /* Check first that both hold the same keys in the same order (by hash): only
     * then is moving m's entries to model's slots the same map. */
    size_t it = 0;
    for (size_t pos = 0; pos < model->used; pos++) {
        if (model->entries[pos].key.type == MPB_TOMBSTONE)
            continue;
        const mpb_map_entry *src = mpb_map_next(m, &it);
        if (src == NULL || src->hash != model->entries[pos].hash) {
            free(e);
            free(ix);
            return -1;
        }
    }
    it = 0;
    for (size_t pos = 0; pos < model->used; pos++) {
        if (model->entries[pos].key.type == MPB_TOMBSTONE) {
            e[pos].hash = 0;
            e[pos].key = mpb_nil();
            e[pos].key.type = MPB_TOMBSTONE;
            e[pos].val = mpb_nil();
        } else {
            e[pos] = *mpb_map_next(m, &it); /* moved: m's array is freed, not its entries */
        }
    }
    free(m->entries);
    free(m->index);
    m->entries = e;
    m->cap = cap;
    m->used = model->used;
    m->base = model->base;
    m->index = ix;
    m->index_cap = model->index_cap;
    if (ix != NULL)
        index_fill(m);
    return 0;
}

size_t mpb_map_memsize(const mpb_map *m)
{
    size_t n = sizeof *m + m->cap * sizeof *m->entries + m->index_cap * sizeof *m->index;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) n += mpb_value_memsize(&e->key) + mpb_value_memsize(&e->val);
    return n;
}
