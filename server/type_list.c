/* type_list.c - the shared list: Python's list semantics over an mpb_array.
 *
 * Indexes and slices behave as Python's (negative indexes count from the end, slices
 * clamp, extended slices need matching lengths). A failing call changes nothing:
 * arguments are converted and checked before the list is touched.
 */
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "mpb_codec.h"
#include "persist.h"
#include "server.h"

/*--- List API ---*/

static int list_init(mpb_object *o)
{
    mpb_array_init(&o->u.list);
    return 0;
}

static void list_destroy(mpb_object *o)
{
    mpb_array *a = &o->u.list;
    for (size_t i = 0; i < a->len; i++) objects_release_value(&a->items[i]);
    mpb_array_clear(a);
}

static size_t list_length(const mpb_object *o) { return o->u.list.len; }

static size_t list_memsize(const mpb_object *o)
{
    const mpb_array *a = &o->u.list;
    size_t n = a->cap * sizeof *a->items;
    for (size_t i = 0; i < a->len; i++) n += mpb_value_memsize(&a->items[i]);
    return n;
}

const mpb_type_ops mpb_list_ops = {list_init, list_destroy, list_length, list_memsize, NULL};

bool list_init_from(mpb_req *r, mpb_object *o, uint32_t i)
{
    if (!has_initial(r, i)) return true;
    const msgpack_object *init = &r->args[i];
    if (init->type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "%s: a list's initial value must be an array", r->info->name);
        return false;
    }
    mpb_value v;
    if (!arg_value(r, i, &v)) return false;
    objects_retain_items(&v);
    o->u.list = *v.v.a; /* take the items over */
    free(v.v.a);
    return true;
}

/* A slice bound or step r->args[i]: nil or absent gives def; an integer past the
 * int64 range is clamped to it, as CPython clamps to Py_ssize_t (_PyEval_SliceIndex).
 * false after replying TypeError. */
static bool slice_arg(mpb_req *r, uint32_t i, int64_t def, int64_t *out)
{
    if (i >= r->nargs || r->args[i].type == MSGPACK_OBJECT_NIL) {
        *out = def;
        return true;
    }
    if (r->args[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER && r->args[i].via.u64 > INT64_MAX) {
        *out = INT64_MAX;
        return true;
    }
    return arg_int(r, i, out);
}

/* CPython's PySlice_AdjustIndices for one bound. */
static int64_t adjust_bound(int64_t b, int64_t len, int64_t step)
{
    if (b < 0) {
        b += len; /* b >= INT64_MIN and len >= 0: no overflow */
        if (b < 0) b = step < 0 ? -1 : 0;
    } else if (b >= len) {
        b = step < 0 ? len - 1 : len;
    }
    return b;
}

int64_t seq_slice(mpb_req *r, uint32_t first, bool has_step, int64_t len, int64_t *start,
                  int64_t *stop, int64_t *step)
{
    /* PySlice_Unpack: the step first (its sign picks the defaults), never below
     * -INT64_MAX, so that -step exists. */
    *step = 1;
    if (has_step && !slice_arg(r, first + 2, 1, step)) return -1;
    if (*step == 0) {
        reply_error(r, MPB_E_VALUE, "slice step cannot be zero");
        return -1;
    }
    if (*step < -INT64_MAX) *step = -INT64_MAX;
    if (!slice_arg(r, first, *step < 0 ? INT64_MAX : 0, start) ||
        !slice_arg(r, first + 1, *step < 0 ? INT64_MIN : INT64_MAX, stop))
        return -1;
    /* PySlice_AdjustIndices: start and stop end in [-1, len]; the count follows. */
    *start = adjust_bound(*start, len, *step);
    *stop = adjust_bound(*stop, len, *step);
    if (*step < 0)
        return *stop < *start ? (*start - *stop - 1) / (-*step) + 1 : 0;
    return *start < *stop ? (*stop - *start - 1) / *step + 1 : 0;
}

int64_t seq_index(mpb_req *r, uint32_t i, int64_t len, const char *what)
{
    int64_t idx;
    if (!arg_int(r, i, &idx)) return -1;
    if (idx < 0) idx += len;
    if (idx < 0 || idx >= len) {
        reply_error(r, MPB_E_INDEX, "%s index out of range", what);
        return -1;
    }
    return idx;
}

bool arg_cursor(mpb_req *r, uint32_t i, int64_t *start, int64_t *count)
{
    /* Past int64 is past any end: clamped, as a slice bound is. */
    if (!slice_arg(r, i, 0, start) || !slice_arg(r, i + 1, INT64_MAX, count)) return false;
    if (i >= r->nargs || r->args[i].type == MSGPACK_OBJECT_NIL) { /* START: required */
        reply_error(r, MPB_E_TYPE, "%s: argument %u must be an integer, not None", r->info->name, i + 1);
        return false;
    }
    if (*start < 0 || *count < 1) {
        reply_error(r, MPB_E_VALUE, "%s: %s", r->info->name,
                    *start < 0 ? "START must be >= 0" : "COUNT must be >= 1");
        return false;
    }
    if (g_config.max_op_items && (uint64_t)*count > g_config.max_op_items)
        *count = (int64_t)g_config.max_op_items; /* one chunk is one bounded request */
    return true;
}

/* Index argument i resolved against the list: -1 after replying IndexError. */
static int64_t index_arg(mpb_req *r, uint32_t i, const char *what)
{
    return seq_index(r, i, (int64_t)r->self->u.list.len, what);
}

/* Remove n items at pos (they must already be released). */
static void remove_range(mpb_array *a, size_t pos, size_t n)
{
    if (n == 0) return; /* an empty list may have no buffer: no pointer arithmetic on NULL */
    memmove(a->items + pos, a->items + pos + n, (a->len - pos - n) * sizeof *a->items);
    a->len -= n;
}

/* Open a gap of n nil items at pos. 0, or -1 on allocation failure. */
static int open_gap(mpb_array *a, size_t pos, size_t n)
{
    if (n == 0) return 0; /* as in remove_range */
    if (mpb_array_reserve(a, n) < 0) return -1;
    memmove(a->items + pos + n, a->items + pos, (a->len - pos) * sizeof *a->items);
    memset(a->items + pos, 0, n * sizeof *a->items);
    a->len += n;
    return 0;
}

/*--- List Commands ---*/

/* list.append REF VALUE */
void list_append(mpb_req *r)
{
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    mpb_value copy = v;
    if (mpb_array_push(&r->self->u.list, &v) < 0) {
        mpb_value_free(&v);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "list.append: out of memory");
        return;
    }
    objects_retain_value(&copy);
    reply_nil(r);
}

/* list.extend REF ARRAY */
void list_extend(mpb_req *r)
{
    if (r->args[0].type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "list.extend: argument must be an array");
        return;
    }
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    mpb_array *a = &r->self->u.list;
    if (mpb_array_reserve(a, v.v.a->len) < 0) {
        mpb_value_free(&v);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "list.extend: out of memory");
        return;
    }
    objects_retain_items(&v);
    if (v.v.a->len > 0) /* none: maybe no buffers at all (memcpy with NULL is UB) */
        memcpy(a->items + a->len, v.v.a->items, v.v.a->len * sizeof *a->items);
    a->len += v.v.a->len;
    v.v.a->len = 0; /* items moved */
    mpb_value_free(&v);
    reply_nil(r);
}

/* The INDEX of list.pop and list.insert: an integer past int64 is OverflowError there,
 * as CPython's Py_ssize_t conversion says (getitem and friends say IndexError). */
static bool ssize_arg(mpb_req *r, uint32_t i, int64_t *out)
{
    if (r->args[i].type == MSGPACK_OBJECT_POSITIVE_INTEGER && r->args[i].via.u64 > INT64_MAX) {
        reply_error(r, MPB_E_OVERFLOW, "Python int too large to convert to C ssize_t");
        return false;
    }
    return arg_int(r, i, out);
}

/* list.insert REF INDEX VALUE */
void list_insert(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    int64_t idx, len = (int64_t)a->len;
    if (!ssize_arg(r, 0, &idx)) return;
    if (idx < 0) idx = idx + len < 0 ? 0 : idx + len;
    if (idx > len) idx = len;
    mpb_value v;
    if (!arg_value(r, 1, &v)) return;
    if (open_gap(a, (size_t)idx, 1) < 0) {
        mpb_value_free(&v);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "list.insert: out of memory");
        return;
    }
    a->items[idx] = v;
    objects_retain_value(&v);
    reply_nil(r);
}

/* list.pop REF [INDEX] */
void list_pop(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    int64_t given; /* the argument is checked first, as Python does: [].pop(1.0) is TypeError */
    bool has_idx = r->nargs == 1 && r->args[0].type != MSGPACK_OBJECT_NIL;
    if (has_idx && !ssize_arg(r, 0, &given)) return;
    if (a->len == 0) {
        reply_error(r, MPB_E_INDEX, "pop from empty list");
        return;
    }
    int64_t idx = (int64_t)a->len - 1;
    if (has_idx && (idx = index_arg(r, 0, "pop")) < 0) return;
    mpb_value v = a->items[idx];
    remove_range(a, (size_t)idx, 1);
    reply_value(r, &v);
    objects_discard_value(&v);
}

/* Position of the first item equal to args[0] in [from, to), or -1. */
static int64_t find(const mpb_array *a, const mpb_value *v, int64_t from, int64_t to)
{
    for (int64_t i = from; i < to; i++)
        if (mpb_value_equal(&a->items[i], v)) return i;
    return -1;
}

/* list.remove REF VALUE */
void list_remove(mpb_req *r)
{
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    mpb_array *a = &r->self->u.list;
    int64_t i = find(a, &v, 0, (int64_t)a->len);
    mpb_value_free(&v);
    if (i < 0) {
        reply_error(r, MPB_E_VALUE, "list.remove(x): x not in list");
        return;
    }
    mpb_value gone = a->items[i];
    remove_range(a, (size_t)i, 1);
    objects_discard_value(&gone);
    reply_nil(r);
}

/* Python's clamping of index()'s start/stop. */
static int64_t clamp_bound(int64_t i, int64_t len)
{
    if (i < 0) i = i + len < 0 ? 0 : i + len;
    return i > len ? len : i;
}

/* list.index REF VALUE [START [STOP]] */
void list_index(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    int64_t len = (int64_t)a->len, start, stop;
    /* Bounds past int64 clamp, as CPython's (_PyEval_SliceIndexNotNone). */
    if (!slice_arg(r, 1, 0, &start) || !slice_arg(r, 2, len, &stop)) return;
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    int64_t i = find(a, &v, clamp_bound(start, len), clamp_bound(stop, len));
    if (i < 0) {
        char *s = mpb_value_repr(&v);
        reply_error(r, MPB_E_VALUE, "%.200s is not in list", s ? s : "value");
        free(s);
    } else {
        reply_int(r, i);
    }
    mpb_value_free(&v);
}

/* list.count REF VALUE */
void list_count(mpb_req *r)
{
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    mpb_array *a = &r->self->u.list;
    int64_t n = 0;
    for (size_t i = 0; i < a->len; i++) n += mpb_value_equal(&a->items[i], &v);
    mpb_value_free(&v);
    reply_int(r, n);
}

/* list.contains REF VALUE */
void list_contains(mpb_req *r)
{
    mpb_value v;
    if (!arg_value(r, 0, &v)) return;
    mpb_array *a = &r->self->u.list;
    bool found = find(a, &v, 0, (int64_t)a->len) >= 0;
    mpb_value_free(&v);
    reply_bool(r, found);
}

/* list.reverse REF */
void list_reverse(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    for (size_t i = 0, j = a->len; i + 1 < j; i++, j--) {
        mpb_value t = a->items[i];
        a->items[i] = a->items[j - 1];
        a->items[j - 1] = t;
    }
    reply_nil(r);
}

/* Stable merge sort of v[0, n) using tmp; sets *bad on an unorderable pair and
 * returns early (v is then a permutation of its items, to be discarded). */
static void merge_sort(mpb_value *v, mpb_value *tmp, size_t n, int sign, bool *bad,
                       const mpb_value **pa, const mpb_value **pb)
{
    if (n < 2 || *bad) return;
    size_t h = n / 2;
    merge_sort(v, tmp, h, sign, bad, pa, pb);
    merge_sort(v + h, tmp, n - h, sign, bad, pa, pb);
    if (*bad) return;
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int c;
        if (mpb_value_compare(&v[j], &v[i], &c) < 0) {
            *bad = true;
            *pa = &v[j];
            *pb = &v[i];
            return;
        }
        /* Take from the right only when strictly before: keeps the sort stable. */
        tmp[k++] = c * sign < 0 ? v[j++] : v[i++];
    }
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

/* list.sort REF [REVERSE] */
void list_sort(mpb_req *r)
{
    bool reverse = false;
    if (r->nargs == 1 && !arg_bool(r, 0, &reverse)) return;
    mpb_array *a = &r->self->u.list;
    if (a->len < 2) {
        reply_nil(r);
        return;
    }
    /* Sort a copy of the item slots, so that a TypeError leaves the list unchanged. */
    mpb_value *work = malloc(a->len * sizeof *work), *tmp = malloc(a->len * sizeof *tmp);
    if (!work || !tmp) {
        free(work);
        free(tmp);
        reply_error(r, MPB_E_OUT_OF_MEMORY, "list.sort: out of memory");
        return;
    }
    memcpy(work, a->items, a->len * sizeof *work);
    bool bad = false;
    const mpb_value *pa = NULL, *pb = NULL;
    merge_sort(work, tmp, a->len, reverse ? -1 : 1, &bad, &pa, &pb);
    if (bad) {
        reply_error(r, MPB_E_TYPE, "'<' not supported between instances of '%s' and '%s'",
                    mpb_type_name(pa), mpb_type_name(pb));
        free(work);
    } else {
        free(a->items);
        a->items = work;
        a->cap = a->len; /* work holds exactly len: a later append must grow it */
        reply_nil(r);
    }
    free(tmp);
}

/* list.len REF */
void list_len(mpb_req *r) { reply_int(r, (int64_t)r->self->u.list.len); }

/* list.getitem REF INDEX | REF START STOP [STEP] */
void list_getitem(mpb_req *r) { seq_getitem(r, &r->self->u.list, "list"); }

void seq_getitem(mpb_req *r, const mpb_array *a, const char *what)
{
    if (r->nargs == 1) {
        int64_t i = seq_index(r, 0, (int64_t)a->len, what);
        if (i >= 0) reply_value(r, &a->items[i]);
        return;
    }
    int64_t start, stop, step;
    int64_t n = seq_slice(r, 0, r->nargs == 3, (int64_t)a->len, &start, &stop, &step);
    if (n < 0 || !limits_reply_items(r, (size_t)n, strcmp(what, "list") == 0 ?
                                     "list.slice START [COUNT]" :
                                     "array.getitem START STOP, a slice at a time"))
        return;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, (size_t)n);
    /* start + k * step for k < n is an index: computed so, it never overflows (a
     * running i += step would, past the last item, for a step near 2^63). */
    for (int64_t k = 0; k < n; k++) mpb_value_pack(pk, &a->items[start + k * step]);
}

/* list.setitem REF INDEX VALUE | REF START STOP [STEP] ARRAY */
void list_setitem(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    if (r->nargs == 2) {
        int64_t i = index_arg(r, 0, "list assignment");
        mpb_value v;
        if (i < 0 || !arg_value(r, 1, &v)) return;
        objects_replace_value(&a->items[i], &v);
        reply_nil(r);
        return;
    }
    uint32_t vi = r->nargs - 1;
    if (r->args[vi].type != MSGPACK_OBJECT_ARRAY) {
        reply_error(r, MPB_E_TYPE, "can only assign an iterable"); /* Python's text */
        return;
    }
    int64_t start, stop, step;
    int64_t n = seq_slice(r, 0, r->nargs == 4, (int64_t)a->len, &start, &stop, &step);
    if (n < 0) return;
    int64_t m = r->args[vi].via.array.size;
    if (step != 1 && m != n) {
        reply_error(r, MPB_E_VALUE,
                    "attempt to assign sequence of size %lld to extended slice of size %lld",
                    (long long)m, (long long)n);
        return;
    }
    mpb_value v;
    if (!arg_value(r, vi, &v)) return;
    if (step == 1) {
        if (stop < start) stop = start; /* a[5:2] = x inserts at 5 */
        if (m > n && mpb_array_reserve(a, (size_t)(m - n)) < 0) {
            mpb_value_free(&v);
            reply_error(r, MPB_E_OUT_OF_MEMORY, "list.setitem: out of memory");
            return;
        }
    }
    /* The new items first, then the old ones go: an item that is both (a swap) must
     * never reach a count of zero. */
    objects_retain_items(&v);
    if (step == 1) {
        for (int64_t i = start; i < stop; i++) objects_discard_value(&a->items[i]);
        remove_range(a, (size_t)start, (size_t)(stop - start));
        open_gap(a, (size_t)start, (size_t)m); /* room reserved above: cannot fail */
        if (m > 0) /* an empty array may have no items buffer (memcpy from NULL is UB) */
            memcpy(a->items + start, v.v.a->items, (size_t)m * sizeof *a->items);
    } else {
        for (int64_t k = 0; k < n; k++) { /* as in seq_getitem: no running index */
            objects_discard_value(&a->items[start + k * step]);
            a->items[start + k * step] = v.v.a->items[k];
        }
    }
    v.v.a->len = 0; /* items moved into the list */
    mpb_value_free(&v);
    reply_nil(r);
}

/* list.delitem REF INDEX | REF START STOP [STEP] */
void list_delitem(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    if (r->nargs == 1) {
        int64_t i = index_arg(r, 0, "list assignment");
        if (i < 0) return;
        mpb_value gone = a->items[i];
        remove_range(a, (size_t)i, 1);
        objects_discard_value(&gone);
        reply_nil(r);
        return;
    }
    int64_t start, stop, step;
    int64_t n = seq_slice(r, 0, r->nargs == 3, (int64_t)a->len, &start, &stop, &step);
    if (n <= 0) {
        if (n == 0) reply_nil(r); /* nothing to delete (and no first item to compute) */
        return;
    }
    if (step < 0) { /* walk it forwards: the same set of items */
        start = start + (n - 1) * step;
        step = -step;
    }
    /* Compact in one pass: keep every item not on the slice. */
    size_t w = 0;
    for (size_t i = 0, k = 0; i < a->len; i++) {
        if (k < (size_t)n && (int64_t)i == start + (int64_t)k * step) {
            objects_discard_value(&a->items[i]);
            k++;
        } else {
            a->items[w++] = a->items[i];
        }
    }
    a->len = w;
    reply_nil(r);
}

/* list.clear REF */
void list_clear(mpb_req *r)
{
    list_destroy(r->self);
    reply_nil(r);
}

/* list.slice REF START [COUNT] */
void list_slice(mpb_req *r)
{
    int64_t start, count;
    if (!arg_cursor(r, 0, &start, &count)) return;
    const mpb_array *a = &r->self->u.list;
    size_t from = (uint64_t)start < a->len ? (size_t)start : a->len;
    size_t n = a->len - from < (uint64_t)count ? a->len - from : (size_t)count;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, n);
    for (size_t i = from; i < from + n; i++) mpb_value_pack(pk, &a->items[i]);
    if (from + n < a->len) msgpack_pack_uint64(pk, from + n);
    else msgpack_pack_nil(pk);
}

/* list.copy REF */
void list_copy(mpb_req *r)
{
    mpb_array *a = &r->self->u.list;
    if (!limits_reply_items(r, a->len, "list.slice START [COUNT]")) return;
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, a->len);
    for (size_t i = 0; i < a->len; i++) mpb_value_pack(pk, &a->items[i]);
}

/* The snapshot form: the items. */
void list_dump(const mpb_object *o, msgpack_packer *pk)
{
    mpb_value v = {.type = MPB_ARRAY, .v.a = (mpb_array *)&o->u.list};
    mpb_value_pack(pk, &v);
}
