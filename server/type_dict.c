/* type_dict.c - the shared dict: Python's dict semantics over an ordered mpb_map,
 * plus the race-free read-modify-write operations (incr, cas) that namespace shares.
 *
 * Keys are any hashable value (arrays of hashables included, as Python's tuples);
 * 1, 1.0 and true are one key, as in Python.
 */
#include <stdlib.h>

#include "limits.h"
#include "mpb_codec.h"
#include "persist.h"
#include "server.h"

/*--- Dict API ---*/

static int dict_init(mpb_object *o)
{
    o->u.map = mpb_map_new();
    return o->u.map ? 0 : -1;
}

/* Release every reference the map's keys and values hold, then empty it. */
static void map_release_all(mpb_map *m)
{
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) {
        objects_release_value(&e->key);
        objects_release_value(&e->val);
    }
    mpb_map_clear(m);
}

static void dict_destroy(mpb_object *o)
{
    map_release_all(o->u.map);
    mpb_map_free(o->u.map);
    o->u.map = NULL;
}

static size_t dict_length(const mpb_object *o) { return o->u.map->len; }

static size_t dict_memsize(const mpb_object *o) { return mpb_map_memsize(o->u.map); }

const mpb_type_ops mpb_dict_ops = {dict_init, dict_destroy, dict_length, dict_memsize, NULL};

int map_store(mpb_map *m, mpb_value *k, mpb_value *v)
{
    mpb_value *cur = mpb_map_get(m, k);
    if (cur) {
        objects_replace_value(cur, v);
        mpb_value_free(k);
        return 0;
    }
    mpb_value kc = *k, vc = *v;
    if (mpb_map_set(m, k, v, NULL) < 0) return -1;
    objects_retain_value(&kc); /* the map holds the same pointers now */
    objects_retain_value(&vc);
    return 0;
}

static void reply_oom(mpb_req *r) { reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: out of memory", r->info->name); }

static void reply_key_error(mpb_req *r, const mpb_value *k)
{
    char *s = mpb_value_repr_key(k);
    reply_error(r, MPB_E_KEY, "%.200s", s ? s : "key");
    free(s);
}

/* Check one pair for map_update_from: hashable key, str when str_keys. */
static bool pair_ok(mpb_req *r, const mpb_value *k, bool str_keys)
{
    if (str_keys && k->type != MPB_STR) {
        reply_error(r, MPB_E_TYPE, "attribute name must be string, not '%s'", mpb_type_name(k));
        return false;
    }
    if (!mpb_value_hashable(k)) {
        reply_error(r, MPB_E_TYPE, "unhashable type: '%s'", mpb_type_name(k));
        return false;
    }
    return true;
}

bool map_update_from(mpb_req *r, mpb_map *m, uint32_t i, bool str_keys)
{
    mpb_value v;
    if (!arg_value(r, i, &v)) return false;
    bool ok = true;
    if (v.type == MPB_MAP) {
        size_t it = 0;
        mpb_map_entry *e;
        while (ok && (e = mpb_map_next(v.v.m, &it))) ok = pair_ok(r, &e->key, str_keys);
        it = 0;
        while (ok && (e = mpb_map_next(v.v.m, &it)))
            if (map_store(m, &e->key, &e->val) < 0) ok = false, reply_oom(r);
    } else if (v.type == MPB_ARRAY) {
        mpb_array *a = v.v.a;
        for (size_t k = 0; ok && k < a->len; k++) {
            mpb_value *p = &a->items[k];
            if (p->type != MPB_ARRAY || p->v.a->len != 2) {
                reply_error(r, MPB_E_VALUE,
                            "update sequence element #%zu is not a [key, value] pair", k);
                ok = false;
            } else {
                ok = pair_ok(r, &p->v.a->items[0], str_keys);
            }
        }
        for (size_t k = 0; ok && k < a->len; k++) {
            mpb_value *p = a->items[k].v.a->items;
            if (map_store(m, &p[0], &p[1]) < 0) ok = false, reply_oom(r);
        }
    } else {
        reply_error(r, MPB_E_TYPE, "%s: expected a map or an array of [key, value] pairs, not %s",
                    r->info->name, mpb_type_name(&v));
        ok = false;
    }
    mpb_value_free(&v); /* what was not moved into m */
    return ok;
}

bool dict_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    return !has_initial(r, i) || map_update_from(r, o->u.map, i, false);
}

/*--- Read-modify-write, shared with namespace ---*/

void map_incr(mpb_req *r, mpb_map *m, mpb_value *key, uint32_t delta_i)
{
    mpb_value delta = mpb_int(1);
    if (delta_i < r->nargs && !arg_value(r, delta_i, &delta)) {
        mpb_value_free(key);
        return;
    }
    mpb_value *cur = mpb_map_get(m, key);
    mpb_value sum = cur ? *cur : mpb_int(0);
    char err[128];
    mpb_errkind k = value_add(&sum, &delta, err, sizeof err);
    mpb_value_free(&delta);
    if (k != MPB_E_NONE) {
        reply_error(r, k, "%s: %s", r->info->name, err);
        mpb_value_free(key);
        return;
    }
    mpb_value result = sum; /* numbers own no memory: copies are free */
    if (cur) {
        *cur = sum;
        mpb_value_free(key);
    } else if (map_store(m, key, &sum) < 0) {
        mpb_value_free(key);
        reply_oom(r);
        return;
    }
    reply_value(r, &result);
}

void map_cas(mpb_req *r, mpb_map *m, mpb_value *key, uint32_t expected_i)
{
    mpb_value expected, newv;
    if (!arg_value(r, expected_i, &expected)) {
        mpb_value_free(key);
        return;
    }
    if (!arg_value(r, expected_i + 1, &newv)) {
        mpb_value_free(&expected);
        mpb_value_free(key);
        return;
    }
    mpb_value *cur = mpb_map_get(m, key);
    bool match = cur ? mpb_value_equal(cur, &expected) : expected.type == MPB_NIL;
    mpb_value_free(&expected);
    if (!match) {
        mpb_value_free(&newv);
        mpb_value_free(key);
        reply_bool(r, false);
        return;
    }
    if (map_store(m, key, &newv) < 0) {
        mpb_value_free(&newv);
        mpb_value_free(key);
        reply_oom(r);
        return;
    }
    reply_bool(r, true);
}

/*--- Dict Commands ---*/

#define DICT(r) ((r)->self->u.map)

/* dict.getitem REF KEY */
void dict_getitem(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    mpb_value *v = mpb_map_get(DICT(r), &k);
    if (v) reply_value(r, v);
    else reply_key_error(r, &k);
    mpb_value_free(&k);
}

/* dict.setitem REF KEY VALUE */
void dict_setitem(mpb_req *r)
{
    mpb_value k, v;
    if (!arg_key(r, 0, &k)) return;
    if (!arg_value(r, 1, &v)) {
        mpb_value_free(&k);
        return;
    }
    if (map_store(DICT(r), &k, &v) < 0) {
        mpb_value_free(&k);
        mpb_value_free(&v);
        reply_oom(r);
        return;
    }
    reply_nil(r);
}

/* dict.delitem REF KEY */
void dict_delitem(mpb_req *r)
{
    mpb_value k, ko, vo;
    if (!arg_key(r, 0, &k)) return;
    if (mpb_map_del(DICT(r), &k, &ko, &vo)) {
        objects_discard_value(&ko);
        objects_discard_value(&vo);
        reply_nil(r);
    } else {
        reply_key_error(r, &k);
    }
    mpb_value_free(&k);
}

/* dict.get REF KEY [DEFAULT] */
void dict_get(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    mpb_value *v = mpb_map_get(DICT(r), &k);
    mpb_value_free(&k);
    if (v) reply_value(r, v);
    else if (r->nargs == 2) msgpack_pack_object(reply_begin(r), r->args[1]);
    else reply_nil(r);
}

/* dict.len REF */
void dict_len(mpb_req *r) { reply_int(r, (int64_t)DICT(r)->len); }

/* dict.contains REF KEY */
void dict_contains(mpb_req *r)
{
    mpb_value k;
    if (!arg_key(r, 0, &k)) return;
    reply_bool(r, mpb_map_get(DICT(r), &k) != NULL);
    mpb_value_free(&k);
}

/* Pack the keys (what 0), values (1) or pairs (2) of m as an array. */
static void pack_view(mpb_req *r, const mpb_map *m, int what)
{
    if (!limits_reply_items(r, m->len, "dict.items START [COUNT]")) return;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, m->len);
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(m, &it))) {
        if (what == 2) msgpack_pack_array(pk, 2);
        if (what != 1) mpb_value_pack(pk, &e->key);
        if (what != 0) mpb_value_pack(pk, &e->val);
    }
}

void map_reply_chunk(mpb_req *r, const mpb_map *m, bool pairs, uint32_t first)
{
    int64_t start, count;
    if (!arg_cursor(r, first, &start, &count)) return;
    size_t from = mpb_map_seek(m, (uint64_t)start), end = from, n = 0;
    while (n < (uint64_t)count && mpb_map_next(m, &end)) n++;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, n);
    mpb_map_entry *e;
    for (size_t it = from; it < end && (e = mpb_map_next(m, &it));) {
        if (pairs) msgpack_pack_array(pk, 2);
        mpb_value_pack(pk, &e->key);
        if (pairs) mpb_value_pack(pk, &e->val);
    }
    /* Trailing tombstones are always trimmed: a slot left means an entry left. */
    if (end < m->used) msgpack_pack_uint64(pk, mpb_map_cursor(m, end));
    else msgpack_pack_nil(pk);
}

/* dict.keys REF */
void dict_keys(mpb_req *r) { pack_view(r, DICT(r), 0); }
/* dict.values REF */
void dict_values(mpb_req *r) { pack_view(r, DICT(r), 1); }
/* dict.items REF [START [COUNT]] */
void dict_items(mpb_req *r)
{
    if (r->nargs == 0) pack_view(r, DICT(r), 2);
    else map_reply_chunk(r, DICT(r), true, 0);
}

/* dict.pop REF KEY [DEFAULT] */
void dict_pop(mpb_req *r)
{
    mpb_value k, ko, vo;
    if (!arg_key(r, 0, &k)) return;
    if (mpb_map_del(DICT(r), &k, &ko, &vo)) {
        reply_value(r, &vo);
        objects_discard_value(&ko);
        objects_discard_value(&vo);
    } else if (r->nargs == 2) {
        msgpack_pack_object(reply_begin(r), r->args[1]);
    } else {
        reply_key_error(r, &k);
    }
    mpb_value_free(&k);
}

/* dict.popitem REF */
void dict_popitem(mpb_req *r)
{
    mpb_value ko, vo;
    if (!mpb_map_pop_last(DICT(r), &ko, &vo)) {
        reply_error(r, MPB_E_KEY, "popitem(): dictionary is empty");
        return;
    }
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    mpb_value_pack(pk, &ko);
    mpb_value_pack(pk, &vo);
    objects_discard_value(&ko);
    objects_discard_value(&vo);
}

/* dict.setdefault REF KEY [DEFAULT] */
void dict_setdefault(mpb_req *r)
{
    mpb_value k, v = mpb_nil();
    if (!arg_key(r, 0, &k)) return;
    mpb_value *cur = mpb_map_get(DICT(r), &k);
    if (cur) {
        reply_value(r, cur);
        mpb_value_free(&k);
        return;
    }
    if (r->nargs == 2 && !arg_value(r, 1, &v)) {
        mpb_value_free(&k);
        return;
    }
    mpb_value shown;
    if (mpb_value_copy(&shown, &v) < 0 || map_store(DICT(r), &k, &v) < 0) {
        mpb_value_free(&shown); /* nil when the copy failed */
        mpb_value_free(&k);
        mpb_value_free(&v);
        reply_oom(r);
        return;
    }
    reply_value(r, &shown);
    mpb_value_free(&shown);
}

/* dict.update REF MAP|PAIRS */
void dict_update(mpb_req *r)
{
    if (map_update_from(r, DICT(r), 0, false)) reply_nil(r);
}

/* dict.clear REF */
void dict_clear(mpb_req *r)
{
    map_release_all(DICT(r));
    reply_nil(r);
}

/* dict.copy REF */
void dict_copy(mpb_req *r)
{
    if (!limits_reply_items(r, DICT(r)->len, "dict.items START [COUNT]")) return;
    mpb_value v = {.type = MPB_MAP, .v.m = DICT(r)};
    reply_value(r, &v);
}

/* dict.incr REF KEY [DELTA] */
void dict_incr(mpb_req *r)
{
    mpb_value k;
    if (arg_key(r, 0, &k)) map_incr(r, DICT(r), &k, 1);
}

/* dict.cas REF KEY EXPECTED NEW */
void dict_cas(mpb_req *r)
{
    mpb_value k;
    if (arg_key(r, 0, &k)) map_cas(r, DICT(r), &k, 1);
}

/* The snapshot form of a dict or namespace: the map itself. */
void dict_dump(const mpb_object *o, msgpack_packer *pk)
{
    mpb_value v = {.type = MPB_MAP, .v.m = o->u.map};
    mpb_value_pack(pk, &v);
}
