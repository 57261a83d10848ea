/* type_set.c - the shared set: Python's set semantics over the keys of an ordered
 * mpb_map (values nil), as Python 3.14's SyncManager.set.
 *
 * Elements are any hashable value, with Python's equality (1, 1.0 and true are one
 * element; arrays are hashable as tuples, maps are not). The set keeps insertion
 * order, which Python's does not promise: copy, items and the operations that return
 * arrays list elements in that order, and pop takes the most recently added one, so
 * that a replayed log gives the same set. The OTHER operands of union, update,
 * issubset, ... are, as Python's iterables: an array, a map (its keys), or a
 * reference to a set, list, dict or namespace (its keys). A failing call changes
 * nothing: every operand is converted and checked before the set is touched.
 */
#include <stdlib.h>

#include "limits.h"
#include "mpb_codec.h"
#include "persist.h"
#include "server.h"

/*--- Set API ---*/

static int set_init(mpb_object *o)
{
    o->u.map = mpb_map_new();
    return o->u.map ? 0 : -1;
}

/* Release every element (they leave the object), then empty the map. */
static void release_all(mpb_map *m)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) objects_release_value(&e->key);
    mpb_map_clear(m);
}

static void set_destroy(mpb_object *o)
{
    release_all(o->u.map);
    mpb_map_free(o->u.map);
    o->u.map = NULL;
}

static size_t set_length(const mpb_object *o) { return o->u.map->len; }

static size_t set_memsize(const mpb_object *o) { return mpb_map_memsize(o->u.map); }

const mpb_type_ops mpb_set_ops = {set_init, set_destroy, set_length, set_memsize, NULL};

static void reply_oom(mpb_req *r)
{
    reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name);
}

static void reply_unhashable(mpb_req *r, const mpb_value *v)
{
    reply_error(r, MPB_E_TYPE, "%s: unhashable type: '%s'", r->info->name,
                v->type == MPB_MAP ? "dict" : "list");
}

/* A new map whose keys are items[0..n), moved out of items (left nil) when move, else
 * copied. NULL after replying TypeError (an unhashable item) or OutOfMemory; then
 * the items not yet moved are still in items. */
static mpb_map *keys_from_items(mpb_req *r, mpb_value *items, size_t n, bool move)
{
    mpb_map *m = mpb_map_new();
    if (!m) {
        reply_oom(r);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        mpb_value k, nil = mpb_nil();
        if (move) k = items[i];
        else if (mpb_value_copy(&k, &items[i]) < 0) goto oom;
        int rc = mpb_map_set(m, &k, &nil, NULL); /* a duplicate key is freed */
        if (rc < 0 && !move) mpb_value_free(&k);
        if (rc == -2) {
            reply_unhashable(r, &items[i]);
            mpb_map_free(m);
            return NULL;
        }
        if (rc == -1) goto oom;
        if (move) items[i] = mpb_nil(); /* taken */
    }
    return m;
oom:
    reply_oom(r);
    mpb_map_free(m);
    return NULL;
}

bool set_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    if (r->args[i].type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "%s: a set's initial value must be an array", r->info->name);
        return false;
    }
    mpb_value v;
    if (!arg_value(r, i, &v)) return false;
    mpb_map *m = keys_from_items(r, v.v.a->items, v.v.a->len, true);
    mpb_value_free(&v);
    if (!m) return false;
    mpb_map_free(o->u.map); /* empty */
    o->u.map = m;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) objects_retain_value(&e->key);
    return true;
}

/* The snapshot form: the INITIAL that rebuilds it, an array of the elements. */
void set_dump(const mpb_object *o, msgpack_packer *pk)
{
    const mpb_map *m = o->u.map;
    msgpack_pack_array(pk, m->len);
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) mpb_value_pack(pk, &e->key);
}

/*--- Operands ---*/

/* One OTHER argument, as the keys of a map: borrowed from a set, dict or namespace
 * object, or built (own) from an array or map argument or a list object. */
typedef struct operand {
    const mpb_map *m;
    mpb_map *own;   /* freed by free_operands; NULL when m is borrowed */
    bool from_ref;  /* another object's elements: --max-memory has not seen them */
} operand;

#define MAX_OPERANDS 255 /* a method row's MAX is an unsigned char */

static bool operand_arg(mpb_req *r, uint32_t i, operand *op)
{
    op->m = op->own = NULL;
    op->from_ref = false;
    mpb_ref ref;
    if (mpb_object_is_ref(&r->args[i], &ref)) {
        op->from_ref = true;
        mpb_object *o = objects_get(ref);
        if (!o) {
            reply_error(r, MPB_E_NO_SUCH_OBJECT, "%s: no object %llu (released or never created)",
                        r->info->name, (unsigned long long)ref);
            return false;
        }
        switch (o->type) {
        case MPB_OT_SET:
        case MPB_OT_DICT:
        case MPB_OT_NAMESPACE: op->m = o->u.map; return true;
        case MPB_OT_LIST:
            op->m = op->own = keys_from_items(r, o->u.list.items, o->u.list.len, false);
            return op->m != NULL;
        default:
            reply_error(r, MPB_E_TYPE, "%s: '%s' object is not iterable", r->info->name,
                        objects_typeid(o));
            return false;
        }
    }
    mpb_value v;
    if (!arg_value(r, i, &v)) return false;
    if (v.type == MPB_MAP) {
        op->m = op->own = v.v.m; /* its keys; the values are never looked at */
        return true;
    }
    if (v.type != MPB_ARRAY) {
        reply_error(r, MPB_E_TYPE,
                    "%s: argument %u must be an array, a map or a reference to a set, list "
                    "or dict, not %s", r->info->name, i + 1, mpb_type_name(&v));
        mpb_value_free(&v);
        return false;
    }
    op->m = op->own = keys_from_items(r, v.v.a->items, v.v.a->len, true);
    mpb_value_free(&v);
    return op->m != NULL;
}

static void free_operands(operand *ops, size_t n)
{
    for (size_t j = 0; j < n; j++) mpb_map_free(ops[j].own);
}

/* r->args[first..] as operands into ops (room for MAX_OPERANDS); false after
 * replying, with nothing left to free. */
static bool operands(mpb_req *r, uint32_t first, operand *ops, size_t *n)
{
    *n = 0;
    for (uint32_t i = first; i < r->nargs; i++) {
        if (!operand_arg(r, i, &ops[*n])) {
            free_operands(ops, *n);
            return false;
        }
        (*n)++;
    }
    return true;
}

static bool has(const mpb_map *m, const mpb_value *k) { return mpb_map_get(m, k) != NULL; }

/* Is k in every operand (all) / in none of them (!all)? */
static bool in_ops(const mpb_value *k, const operand *ops, size_t n, bool all)
{
    for (size_t j = 0; j < n; j++)
        if (has(ops[j].m, k) != all) return false;
    return true;
}

/*--- Results as arrays: each walk runs twice, counting, then packing ---*/

typedef struct emitter {
    msgpack_packer *pk; /* NULL: only count */
    size_t n;
} emitter;

static void emit(emitter *em, const mpb_value *k)
{
    if (em->pk) mpb_value_pack(em->pk, k);
    em->n++;
}

typedef void (*walk_fn)(const mpb_map *self, const operand *ops, size_t n, emitter *em);

static void walk_union(const mpb_map *self, const operand *ops, size_t n, emitter *em)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(self, &it))) emit(em, &e->key);
    for (size_t j = 0; j < n; j++)
        for (it = 0; (e = mpb_map_next(ops[j].m, &it));)
            if (!has(self, &e->key) && in_ops(&e->key, ops, j, false)) emit(em, &e->key);
}

static void walk_intersection(const mpb_map *self, const operand *ops, size_t n, emitter *em)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(self, &it)))
        if (in_ops(&e->key, ops, n, true)) emit(em, &e->key);
}

static void walk_difference(const mpb_map *self, const operand *ops, size_t n, emitter *em)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(self, &it)))
        if (in_ops(&e->key, ops, n, false)) emit(em, &e->key);
}

static void walk_symmetric(const mpb_map *self, const operand *ops, size_t n, emitter *em)
{
    (void)n; /* exactly one */
    walk_difference(self, ops, 1, em);
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(ops[0].m, &it)))
        if (!has(self, &e->key)) emit(em, &e->key);
}

/* Reply with the array a walk over the set and its operands gives. */
static void reply_walk(mpb_req *r, walk_fn walk)
{
    operand ops[MAX_OPERANDS];
    ops[0] = (operand){0}; /* with no OTHER: gcc cannot see that walk reads none */
    size_t n;
    if (!operands(r, 0, ops, &n)) return;
    const mpb_map *self = r->self->u.map;
    emitter count = {NULL, 0};
    walk(self, ops, n, &count);
    /* --max-op-items: known only now, but refused before the reply is built. */
    if (limits_reply_items(r, count.n, "set.items START [COUNT] and combine on the client")) {
        emitter out = {reply_begin(r), 0};
        msgpack_pack_array(out.pk, count.n);
        walk(self, ops, n, &out);
    }
    free_operands(ops, n);
}

/*--- Changes ---*/

#define SET(r) ((r)->self->u.map)

/* What add_missing found. */
enum { ADD_OK, ADD_NOMEM, ADD_OVER_LIMIT /* --max-memory: replied */ };

/* Add copies of the keys of operand src that self lacks. All or nothing: on
 * allocation failure, or when --max-memory refuses the next copy, stop and return
 * why; commit_added then takes out what was added. The elements added are retained
 * only on success. An operand read from another object was not counted as an
 * argument is (arg_value): each copy is checked against the limit before it is made. */
static int add_missing(mpb_req *r, mpb_map *self, const operand *src, const uint8_t *skip,
                       size_t *added)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(src->m, &it))) {
        if ((skip && skip[it - 1]) || has(self, &e->key)) continue;
        if (src->from_ref && !limits_memory_for_value(r, &e->key)) return ADD_OVER_LIMIT;
        mpb_value k, nil = mpb_nil();
        if (mpb_value_copy(&k, &e->key) < 0) return ADD_NOMEM;
        if (mpb_map_set(self, &k, &nil, NULL) < 0) {
            mpb_value_free(&k);
            return ADD_NOMEM;
        }
        (*added)++;
    }
    return ADD_OK;
}

/* Finish add_missing calls: retain what they added, or take it all out again. The
 * entries added are the last `added` slots (nothing was deleted in between, and
 * compaction keeps order). */
static bool commit_added(mpb_req *r, mpb_map *self, size_t added, int how)
{
    if (how != ADD_OK) {
        for (; added > 0; added--) {
            mpb_value k;
            mpb_map_pop_last(self, &k, NULL);
            mpb_value_free(&k);
        }
        if (how == ADD_NOMEM) reply_oom(r);
        return false;
    }
    for (size_t i = self->used - added; i < self->used; i++)
        objects_retain_value(&self->entries[i].key);
    return true;
}

/* Take k out of the set if present, releasing it. */
static bool discard(mpb_map *self, const mpb_value *k)
{
    mpb_value ko;
    if (!mpb_map_del(self, k, &ko, NULL)) return false;
    objects_discard_value(&ko);
    return true;
}

/* KeyError with the element's repr, as Python's. */
static void reply_key_error(mpb_req *r, const mpb_value *k)
{
    char *s = mpb_value_repr_key(k);
    reply_error(r, MPB_E_KEY, "%.200s", s ? s : "element");
    free(s);
}

/*--- Set Commands ---*/

/* set.add REF ELEM */
void set_add(mpb_req *r)
{
    mpb_value k, nil = mpb_nil();
    if (!arg_key(r, 0, &k)) return;
    mpb_value kept = k; /* once inserted, the map holds the same pointers */
    int rc = mpb_map_set(SET(r), &k, &nil, NULL); /* 0: present already, k freed */
    if (rc < 0) {
        mpb_value_free(&k);
        reply_oom(r);
        return;
    }
    if (rc == 1) objects_retain_value(&kept);
    reply_nil(r);
}

/* set.discard REF ELEM */
void set_discard(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    discard(SET(r), &k);
    mpb_value_free(&k);
    reply_nil(r);
}

/* set.remove REF ELEM */
void set_remove(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    if (discard(SET(r), &k)) reply_nil(r);
    else reply_key_error(r, &k);
    mpb_value_free(&k);
}

/* set.pop REF */
void set_pop(mpb_req *r)
{
    mpb_value k;
    if (!mpb_map_pop_last(SET(r), &k, NULL)) {
        reply_error(r, MPB_E_KEY, "pop from an empty set");
        return;
    }
    reply_value(r, &k);
    objects_discard_value(&k);
}

/* set.contains REF ELEM */
void set_contains(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    reply_bool(r, has(SET(r), &k));
    mpb_value_free(&k);
}

/* set.len REF */
void set_len(mpb_req *r) { reply_int(r, (int64_t)SET(r)->len); }

/* set.clear REF */
void set_clear(mpb_req *r)
{
    release_all(SET(r));
    reply_nil(r);
}

static void pack_all(mpb_req *r)
{
    if (!limits_reply_items(r, SET(r)->len, "set.items START [COUNT]")) return;
    emitter out = {reply_begin(r), 0};
    msgpack_pack_array(out.pk, SET(r)->len);
    walk_intersection(SET(r), NULL, 0, &out); /* every element */
}

/* set.copy REF */
void set_copy(mpb_req *r) { pack_all(r); }

/* set.items REF [START [COUNT]] */
void set_items(mpb_req *r)
{
    if (r->nargs == 0) pack_all(r);
    else map_reply_chunk(r, SET(r), false, 0);
}

/* set.union REF [OTHER...] */
void set_union(mpb_req *r) { reply_walk(r, walk_union); }
/* set.intersection REF [OTHER...] */
void set_intersection(mpb_req *r) { reply_walk(r, walk_intersection); }
/* set.difference REF [OTHER...] */
void set_difference(mpb_req *r) { reply_walk(r, walk_difference); }
/* set.symmetric_difference REF OTHER */
void set_symmetric_difference(mpb_req *r) { reply_walk(r, walk_symmetric); }

/* set.update REF [OTHER...] */
void set_update(mpb_req *r)
{
    operand ops[MAX_OPERANDS];
    size_t n, added = 0;
    if (!operands(r, 0, ops, &n)) return;
    int how = ADD_OK;
    for (size_t j = 0; how == ADD_OK && j < n; j++)
        if (ops[j].m != SET(r)) how = add_missing(r, SET(r), &ops[j], NULL, &added);
    if (commit_added(r, SET(r), added, how)) reply_nil(r);
    free_operands(ops, n);
}

/* set.intersection_update REF [OTHER...] */
void set_intersection_update(mpb_req *r)
{
    operand ops[MAX_OPERANDS];
    size_t n;
    if (!operands(r, 0, ops, &n)) return;
    /* Copies of the elements to drop first: deleting while walking would compact the
     * map under the walk. */
    mpb_array gone;
    mpb_array_init(&gone);
    size_t it = 0;
    mpb_map_entry *e;
    bool ok = true;
    while (ok && (e = mpb_map_next(SET(r), &it))) {
        if (in_ops(&e->key, ops, n, true)) continue;
        mpb_value k;
        ok = mpb_value_copy(&k, &e->key) == 0;
        if (ok && mpb_array_push(&gone, &k) < 0) {
            mpb_value_free(&k);
            ok = false;
        }
    }
    if (ok) {
        for (size_t i = 0; i < gone.len; i++) discard(SET(r), &gone.items[i]);
        reply_nil(r);
    } else {
        reply_oom(r);
    }
    mpb_array_clear(&gone);
    free_operands(ops, n);
}

/* set.difference_update REF [OTHER...] */
void set_difference_update(mpb_req *r)
{
    operand ops[MAX_OPERANDS];
    size_t n;
    if (!operands(r, 0, ops, &n)) return;
    for (size_t j = 0; j < n; j++) {
        if (ops[j].m == SET(r)) {
            release_all(SET(r));
            continue;
        }
        size_t it = 0;
        mpb_map_entry *e;
        while ((e = mpb_map_next(ops[j].m, &it))) discard(SET(r), &e->key);
    }
    free_operands(ops, n);
    reply_nil(r);
}

/* set.symmetric_difference_update REF OTHER */
void set_symmetric_difference_update(mpb_req *r)
{
    operand op;
    if (!operand_arg(r, 0, &op)) return;
    mpb_map *self = SET(r);
    if (op.m == self) {
        release_all(self);
        reply_nil(r);
        return;
    }
    /* Which of OTHER's slots are in the set now: those go, the others come. */
    uint8_t *in = op.m->used ? calloc(op.m->used, 1) : NULL;
    if (op.m->used && !in) {
        reply_oom(r);
        free_operands(&op, 1);
        return;
    }
    size_t it = 0, added = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(op.m, &it))) in[it - 1] = has(self, &e->key);
    int how = add_missing(r, self, &op, in, &added);
    if (commit_added(r, self, added, how)) {
        for (it = 0; (e = mpb_map_next(op.m, &it));)
            if (in[it - 1]) discard(self, &e->key);
        reply_nil(r);
    }
    free(in);
    free_operands(&op, 1);
}

/*--- Comparisons ---*/

/* Is every key of a in b? */
static bool subset(const mpb_map *a, const mpb_map *b)
{
    if (a->len > b->len) return false;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(a, &it)))
        if (!has(b, &e->key)) return false;
    return true;
}

static void compare(mpb_req *r, int how)
{
    operand op;
    if (!operand_arg(r, 0, &op)) return;
    const mpb_map *self = SET(r);
    bool res;
    if (how == 0) {
        res = subset(self, op.m);
    } else if (how == 1) {
        res = subset(op.m, self);
    } else { /* disjoint: walk the smaller */
        const mpb_map *a = self->len <= op.m->len ? self : op.m, *b = a == self ? op.m : self;
        size_t it = 0;
        mpb_map_entry *e;
        res = true;
        while (res && (e = mpb_map_next(a, &it))) res = !has(b, &e->key);
    }
    free_operands(&op, 1);
    reply_bool(r, res);
}

/* set.issubset REF OTHER */
void set_issubset(mpb_req *r) { compare(r, 0); }
/* set.issuperset REF OTHER */
void set_issuperset(mpb_req *r) { compare(r, 1); }
/* set.isdisjoint REF OTHER */
void set_isdisjoint(mpb_req *r) { compare(r, 2); }
