/* objects.c - the object table: id and name lookup, holds, containment, freeing.
 *
 * Type-specific state is created and destroyed through mpb_type_ops (one row per
 * type file); everything here is type-blind. See objects.h for the lifetime rules.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "objects.h"
#include "seqidx.h"

/*--- idmap: uint64 -> pointer, linear probing with tombstones ---*/

#define IDMAP_TOMB UINT64_MAX

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static size_t idmap_slot(const mpb_idmap *m, uint64_t key)
{
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->keys[i] != 0 && m->keys[i] != key) i = (i + 1) & mask;
    return i;
}

void *idmap_get(const mpb_idmap *m, uint64_t key)
{
    if (m->cap == 0) return NULL;
    size_t i = idmap_slot(m, key);
    return m->keys[i] == key ? m->vals[i] : NULL;
}

static int idmap_grow(mpb_idmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (m->len * 2 < m->cap) ncap = m->cap; /* mostly tombstones: rehash in place */
    uint64_t *keys = calloc(ncap, sizeof *keys);
    void **vals = calloc(ncap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    mpb_idmap n = {keys, vals, 0, ncap, 0, m->sum};
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == 0 || m->keys[i] == IDMAP_TOMB) continue;
        size_t j = idmap_slot(&n, m->keys[i]);
        n.keys[j] = m->keys[i];
        n.vals[j] = m->vals[i];
        n.len++;
    }
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

int idmap_put(mpb_idmap *m, uint64_t key, void *val)
{
    if ((m->len + m->tombs + 1) * 4 > m->cap * 3 && idmap_grow(m) < 0) return -1;
    size_t mask = m->cap - 1, i = mix64(key) & mask, tomb = SIZE_MAX;
    while (m->keys[i] != 0 && m->keys[i] != key) {
        if (m->keys[i] == IDMAP_TOMB && tomb == SIZE_MAX) tomb = i;
        i = (i + 1) & mask;
    }
    if (m->keys[i] == key) {
        m->vals[i] = val;
        return 0;
    }
    if (tomb != SIZE_MAX) {
        i = tomb;
        m->tombs--;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->len++;
    return 0;
}

void *idmap_del(mpb_idmap *m, uint64_t key)
{
    if (m->cap == 0) return NULL;
    size_t i = idmap_slot(m, key);
    if (m->keys[i] != key) return NULL;
    void *v = m->vals[i];
    m->keys[i] = IDMAP_TOMB;
    m->vals[i] = NULL;
    m->len--;
    m->tombs++;
    return v;
}

void idmap_free(mpb_idmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

bool idmap_next(const mpb_idmap *m, size_t *it, uint64_t *key, void **val)
{
    for (; *it < m->cap; (*it)++) {
        uint64_t k = m->keys[*it];
        if (k == 0 || k == IDMAP_TOMB) continue;
        *key = k;
        *val = m->vals[*it];
        (*it)++;
        return true;
    }
    return false;
}

/*--- The table ---*/

static mpb_idmap table;     /* id -> mpb_object */
static mpb_map *names;      /* str -> int id */
static uint64_t next_id = 1;
static bool adopt_loaded; /* the first id loaded from --data-dir decides the space */
static mpb_object **free_queue;
static size_t free_len, free_cap;
static size_t mem_used; /* see objects_mem_used */
static mpb_seqidx order;  /* seq -> object, creation order: paged listings */
static uint64_t next_seq = 1;
uint64_t g_objects_scanned;

static const mpb_type_ops *type_ops(mpb_otype t)
{
    switch (t) {
    case MPB_OT_LIST: return &mpb_list_ops;
    case MPB_OT_DICT:
    case MPB_OT_NAMESPACE: return &mpb_dict_ops;
    case MPB_OT_QUEUE: return &mpb_queue_ops;
    case MPB_OT_LOCK: return &mpb_lock_ops;
    case MPB_OT_SEMAPHORE: return &mpb_semaphore_ops;
    case MPB_OT_CONDITION: return &mpb_condition_ops;
    case MPB_OT_EVENT: return &mpb_event_ops;
    case MPB_OT_BARRIER: return &mpb_barrier_ops;
    case MPB_OT_VALUE: return &mpb_value_ops;
    case MPB_OT_ARRAY: return &mpb_array_ops;
    case MPB_OT_SET: return &mpb_set_ops;
    case MPB_OT_PIPE: return &mpb_pipe_ops;
    case MPB_OT_CHANNEL: return &mpb_channel_ops;
    default: return NULL;
    }
}

void objects_init(void)
{
    mem_used = 0;
    next_id = 1; /* the fuzzer starts each input afresh: references stay predictable */
    adopt_loaded = false;
    names = mpb_map_new();
    next_seq = 1;
}

/*--- Id spaces (docs/PROTOCOL.md, "References") ---*/

/* A random space, 1..2^31-1, other than `avoid`. getrandom, else the clock and pid:
 * what matters is that two lifetimes of a broker are unlikely to draw the same one. */
static uint64_t random_space(uint64_t avoid)
{
    uint64_t r = 0, space;
    do {
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
            struct timespec t;
            clock_gettime(CLOCK_REALTIME, &t);
            r = mix64((uint64_t)t.tv_nsec ^ ((uint64_t)t.tv_sec << 20) ^ (uint64_t)getpid() ^ r);
        }
        space = r & ((1ULL << MPB_REF_SPACE_BITS) - 1);
    } while (space == 0 || space == avoid);
    return space;
}

void objects_new_id_space(void)
{
    next_id = (random_space(0) << MPB_REF_SPACE_SHIFT) | 1;
    adopt_loaded = true;
}

/* Once a space's counter is used up, go on in a fresh random one at once, so that
 * next_id (which a snapshot records) always names a usable id. */
static void leave_used_up_space(void)
{
    if ((next_id & MPB_REF_COUNTER_MASK) == 0)
        next_id = (random_space(mpb_ref_space(next_id - 1)) << MPB_REF_SPACE_SHIFT) | 1;
}

/* The id for a new object: the next in the space, or, once its counter is used up,
 * the first of a fresh random space. Never one that a live object has. */
static uint64_t take_next_id(void)
{
    adopt_loaded = false; /* loading, if any, is over: nothing loaded, the fresh space stays */
    for (;;) {
        leave_used_up_space();
        uint64_t id = next_id++;
        leave_used_up_space();
        if (!idmap_get(&table, id)) return id;
    }
}

static void object_destroy(mpb_object *o)
{
    watch_object_freed(o);
    mem_used -= o->charged < mem_used ? o->charged : mem_used;
    idmap_del(&table, o->id);
    seqidx_remove(&order, o->seq);
    type_ops(o->type)->destroy(o);
    free(o->name);
    free(o);
}

void objects_shutdown(void)
{
    /* Free without releasing contained references one by one: everything goes. */
    size_t it = 0;
    uint64_t k;
    void *v;
    mpb_object **all = malloc((table.len + 1) * sizeof *all);
    size_t n = 0;
    while (all && idmap_next(&table, &it, &k, &v)) all[n++] = v;
    for (size_t i = 0; i < n; i++) all[i]->queued = true; /* no re-queueing */
    for (size_t i = 0; i < n; i++) object_destroy(all[i]);
    free(all);
    free(free_queue);
    free_queue = NULL;
    free_len = free_cap = 0;
    idmap_free(&table);
    seqidx_free(&order);
    mpb_map_free(names);
    names = NULL;
}

mpb_object *objects_create(mpb_otype type, int variant, const char *name, size_t name_len)
{
    return objects_create_id(type, variant, name, name_len, 0);
}

uint64_t objects_peek_next_id(void) { return next_id; }

void objects_bump_next_id(uint64_t id)
{
    /* id - 1 was loaded. Its space is what counts: id itself is in the next space when
     * id - 1 was the last of its own. */
    if (adopt_loaded) /* loaded state goes on in its own space */
        next_id = id;
    else if (mpb_ref_space(id - 1) == mpb_ref_space(next_id) && id > next_id)
        next_id = id;
    else
        return; /* ids of other spaces (a snapshot's, from before a roll-over) */
    adopt_loaded = false;
    if ((next_id & MPB_REF_COUNTER_MASK) == 0) {
        /* id - 1 used its space up, and the lifetime that logged it went on in a space
         * of its own drawing: the next id loaded (a log is in time order) says which. */
        leave_used_up_space();
        adopt_loaded = true;
    }
}

mpb_object *objects_create_id(mpb_otype type, int variant, const char *name, size_t name_len,
                              mpb_ref id)
{
    const mpb_type_ops *ops = type_ops(type);
    if (!ops || (id && idmap_get(&table, id))) return NULL;
    mpb_object *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    if (id) objects_bump_next_id(id + 1);
    o->id = id ? id : take_next_id();
    o->type = type;
    o->variant = variant;
    if (ops->init(o) < 0) {
        free(o);
        return NULL;
    }
    o->seq = next_seq;
    if (seqidx_append(&order, o->seq, o) < 0) goto fail;
    if (idmap_put(&table, o->id, o) < 0) {
        seqidx_remove(&order, o->seq);
        goto fail;
    }
    next_seq++;
    if (name) {
        mpb_value k = mpb_strn(name, name_len), v = mpb_int((int64_t)o->id);
        if (k.type != MPB_STR || mpb_map_set(names, &k, &v, NULL) < 0) {
            mpb_value_free(&k);
            idmap_del(&table, o->id);
            seqidx_remove(&order, o->seq);
            goto fail;
        }
        o->name = strndup(name, name_len);
        if (!o->name) {
            mpb_value key = mpb_str_borrowed(name, name_len);
            mpb_map_del(names, &key, NULL, NULL);
            idmap_del(&table, o->id);
            seqidx_remove(&order, o->seq);
            goto fail;
        }
    }
    o->charged = sizeof *o + (name ? name_len + 1 : 0);
    mem_used += o->charged;
    return o;
fail:
    ops->destroy(o);
    free(o);
    return NULL;
}

/* Does something keep o alive? */
static bool kept(const mpb_object *o) { return o->name || o->holds || o->contained || o->pins; }

/* Live: not queued for freeing, or queued and kept again since (a reference released
 * and stored again by one handler: see objects_collect). */
static bool live(const mpb_object *o) { return !o->queued || kept(o); }

mpb_object *objects_get(mpb_ref id)
{
    mpb_object *o = idmap_get(&table, id);
    return o && live(o) ? o : NULL;
}

mpb_object *objects_by_name(const char *name, size_t len)
{
    mpb_value key = mpb_str_borrowed(name, len);
    mpb_value *id = mpb_map_get(names, &key);
    return id ? objects_get((mpb_ref)id->v.i) : NULL;
}

void objects_unname(mpb_object *o)
{
    if (!o->name) return;
    mpb_value key = mpb_str_borrowed(o->name, strlen(o->name));
    mpb_map_del(names, &key, NULL, NULL);
    free(o->name);
    o->name = NULL;
    objects_maybe_free(o);
}

size_t objects_count(void) { return table.len; }

size_t objects_len(const mpb_object *o) { return type_ops(o->type)->len(o); }

size_t objects_memsize(const mpb_object *o)
{
    return sizeof *o + (o->name ? strlen(o->name) + 1 : 0) + type_ops(o->type)->memsize(o);
}

bool objects_next(size_t *it, mpb_object **o)
{
    uint64_t k;
    void *v;
    while (idmap_next(&table, it, &k, &v)) {
        if (!live(v)) continue;
        *o = v;
        return true;
    }
    return false;
}

mpb_object *objects_walk(uint64_t *cursor, size_t *budget)
{
    size_t it = seqidx_seek(&order, *cursor);
    const mpb_seqidx_entry *e;
    while (*budget > 0 && (e = seqidx_next(&order, &it))) {
        (*budget)--;
        g_objects_scanned++;
        *cursor = e->key + 1;
        if (live(e->ptr)) return e->ptr;
    }
    return NULL;
}

bool objects_walk_more(uint64_t cursor)
{
    size_t it = seqidx_seek(&order, cursor);
    return seqidx_next(&order, &it) != NULL;
}

/*--- Holds ---*/

int objects_hold(mpb_idmap *holds, mpb_object *o)
{
    uintptr_t n = (uintptr_t)idmap_get(holds, o->id);
    if (idmap_put(holds, o->id, (void *)(n + 1)) < 0) return -1;
    if (n == 0) o->holders++;
    o->holds++;
    holds->sum++;
    return 0;
}

bool objects_unhold(mpb_idmap *holds, mpb_object *o)
{
    uintptr_t n = (uintptr_t)idmap_get(holds, o->id);
    if (n == 0) return false;
    if (n == 1) {
        idmap_del(holds, o->id);
        o->holders--;
    } else {
        idmap_put(holds, o->id, (void *)(n - 1)); /* key exists: cannot fail */
    }
    o->holds--;
    holds->sum--;
    objects_maybe_free(o);
    return true;
}

void objects_drop_holds(mpb_idmap *holds)
{
    size_t it = 0;
    uint64_t id;
    void *n;
    while (idmap_next(holds, &it, &id, &n)) {
        mpb_object *o = idmap_get(&table, id);
        if (!o) continue;
        o->holds -= (uintptr_t)n;
        o->holders--;
        objects_maybe_free(o);
    }
    idmap_free(holds);
}

const char *objects_typeid(const mpb_object *o) { return mpb_typeid_name(o->type, o->variant); }

/*--- Ownership (locks, semaphores) and pins (parked requests) ---*/

int objects_own(mpb_idmap *owned, mpb_object *o)
{
    uintptr_t n = (uintptr_t)idmap_get(owned, o->id);
    return idmap_put(owned, o->id, (void *)(n + 1));
}

void objects_disown(mpb_idmap *owned, mpb_object *o)
{
    uintptr_t n = (uintptr_t)idmap_get(owned, o->id);
    if (n > 1) idmap_put(owned, o->id, (void *)(n - 1)); /* key exists: cannot fail */
    else if (n == 1) idmap_del(owned, o->id);
}

void objects_drop_owned(mpb_idmap *owned, uint64_t conn_id)
{
    size_t it = 0;
    uint64_t id;
    void *n;
    while (idmap_next(owned, &it, &id, &n)) {
        mpb_object *o = idmap_get(&table, id);
        const mpb_type_ops *ops = o ? type_ops(o->type) : NULL;
        if (ops && ops->conn_gone) ops->conn_gone(o, conn_id, (uintptr_t)n);
    }
    idmap_free(owned);
}

void objects_pin(mpb_object *o) { o->pins++; }

void objects_unpin(mpb_object *o)
{
    o->pins--;
    objects_maybe_free(o);
}

/*--- Containment ---*/

bool objects_refs_valid(const mpb_value *v, mpb_ref *bad)
{
    switch (v->type) {
    case MPB_REF:
        if (objects_get(v->v.ref)) return true;
        *bad = v->v.ref;
        return false;
    case MPB_ARRAY:
        for (size_t i = 0; i < v->v.a->len; i++)
            if (!objects_refs_valid(&v->v.a->items[i], bad)) return false;
        return true;
    case MPB_MAP: {
        size_t it = 0;
        mpb_map_entry *e;
        while ((e = mpb_map_next(v->v.m, &it)))
            if (!objects_refs_valid(&e->key, bad) || !objects_refs_valid(&e->val, bad))
                return false;
        return true;
    }
    default: return true;
    }
}

/* Apply delta to the containment count of every reference in v. */
static void count_refs(const mpb_value *v, int delta)
{
    switch (v->type) {
    case MPB_REF: {
        mpb_object *o = idmap_get(&table, v->v.ref);
        if (!o) return;
        if (delta > 0) {
            o->contained++;
        } else {
            o->contained--;
            objects_maybe_free(o);
        }
        return;
    }
    case MPB_ARRAY:
        for (size_t i = 0; i < v->v.a->len; i++) count_refs(&v->v.a->items[i], delta);
        return;
    case MPB_MAP: {
        size_t it = 0;
        mpb_map_entry *e;
        while ((e = mpb_map_next(v->v.m, &it))) {
            count_refs(&e->key, delta);
            count_refs(&e->val, delta);
        }
        return;
    }
    default: return;
    }
}

size_t objects_value_cost(const mpb_value *v) { return sizeof *v + mpb_value_memsize(v); }

size_t objects_mem_used(void) { return mem_used; }

void objects_charge_state(mpb_object *o)
{
    switch (o->type) {
    case MPB_OT_LIST:
    case MPB_OT_DICT:
    case MPB_OT_NAMESPACE:
    case MPB_OT_SET:
    case MPB_OT_QUEUE:
    case MPB_OT_PIPE:
    case MPB_OT_CONDITION:
        return; /* their values are counted one by one as they come and go */
    default: {
        size_t n = type_ops(o->type)->memsize(o);
        o->charged += n;
        mem_used += n;
    }
    }
}

void objects_recharge_state(mpb_object *o, size_t before, size_t after)
{
    if (after >= before) {
        o->charged += after - before;
        mem_used += after - before;
        return;
    }
    size_t less = before - after < o->charged ? before - after : o->charged;
    o->charged -= less;
    mem_used -= less < mem_used ? less : mem_used;
}

void objects_retain_value(const mpb_value *v)
{
    mem_used += objects_value_cost(v);
    count_refs(v, +1);
}

void objects_retain_items(const mpb_value *array)
{
    for (size_t i = 0; i < array->v.a->len; i++) objects_retain_value(&array->v.a->items[i]);
}

void objects_release_value(const mpb_value *v)
{
    size_t n = objects_value_cost(v);
    mem_used -= n < mem_used ? n : mem_used;
    count_refs(v, -1);
}

void objects_discard_value(mpb_value *v)
{
    objects_release_value(v);
    mpb_value_free(v);
}

void objects_replace_value(mpb_value *slot, mpb_value *v)
{
    objects_retain_value(v);
    objects_discard_value(slot);
    *slot = *v;
    *v = mpb_nil();
}

/*--- Freeing ---*/

void objects_maybe_free(mpb_object *o)
{
    if (o->queued || kept(o)) return;
    if (free_len == free_cap) {
        size_t ncap = free_cap ? free_cap * 2 : 16;
        mpb_object **q = realloc(free_queue, ncap * sizeof *q);
        if (!q) return; /* stays alive; retried at its next release */
        free_queue = q;
        free_cap = ncap;
    }
    o->queued = true;
    free_queue[free_len++] = o;
}

void objects_collect(void)
{
    /* Destroying an object releases what it contains, which may queue more. One that
     * is kept again lives on: a handler that released a reference and stored it again
     * (a swap, a value stored over itself) must not free what it still refers to. */
    while (free_len > 0) {
        mpb_object *o = free_queue[--free_len];
        if (kept(o)) o->queued = false;
        else object_destroy(o);
    }
}
