/* value.c - the mpb_value model: constructors, lifetime, arrays, Python semantics
 * (equality, ordering, hashing, truth) and Python-style repr.
 *
 * The insertion-ordered map lives in map.c and the msgpack codec in codec.c; this file
 * only knows maps through the mpb_map_* API. Numbers follow CPython exactly: an int64,
 * a uint64 and a double compare by mathematical value (no rounding through double),
 * and a double with an integral value hashes as that integer, so 1, 1.0 and True are
 * one dict key.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "mpb_value.h"

#define TWO63 9223372036854775808.0  /* 2^63, exact in a double */
#define TWO64 18446744073709551616.0 /* 2^64 */
#define UNORDERED 2                  /* num_cmp: a NaN was involved */

/*--- Constructors ---*/

mpb_value mpb_uint(uint64_t u)
{
    mpb_value v = {0};
    if (u <= (uint64_t)INT64_MAX) {
        v.type = MPB_INT;
        v.v.i = (int64_t)u;
    } else {
        v.type = MPB_UINT;
        v.v.u = u;
    }
    return v;
}

/* A NUL-terminated malloc'd copy of n bytes (p may be NULL when n is 0). */
static char *dup_bytes(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL)
        return NULL;
    if (n > 0)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static mpb_value bytes_value(uint8_t type, const void *p, size_t n)
{
    mpb_value v = {0};
    if (n > UINT32_MAX) /* .len is 32 bits, as msgpack's own str32/bin32 */
        return v;
    char *s = dup_bytes(p, n);
    if (s == NULL)
        return v;
    v.type = type;
    v.len = (uint32_t)n;
    v.v.s = s;
    return v;
}

static mpb_value borrowed_value(uint8_t type, const void *p, size_t n)
{
    mpb_value v = {0};
    if (n > UINT32_MAX)
        return v;
    v.type = type;
    v.flags = MPB_VF_BORROWED;
    v.len = (uint32_t)n;
    v.v.s = (char *)p; /* never written through: BORROWED values are read-only */
    return v;
}

mpb_value mpb_str(const char *s) { return bytes_value(MPB_STR, s, strlen(s)); }
mpb_value mpb_strn(const char *s, size_t n) { return bytes_value(MPB_STR, s, n); }
mpb_value mpb_bin(const void *p, size_t n) { return bytes_value(MPB_BIN, p, n); }
mpb_value mpb_str_borrowed(const char *s, size_t n) { return borrowed_value(MPB_STR, s, n); }
mpb_value mpb_bin_borrowed(const void *p, size_t n) { return borrowed_value(MPB_BIN, p, n); }

mpb_value mpb_array_value(size_t cap)
{
    mpb_value v = {0};
    mpb_array *a = malloc(sizeof *a);
    if (a == NULL)
        return v;
    mpb_array_init(a);
    if (mpb_array_reserve(a, cap) != 0) {
        free(a);
        return v;
    }
    v.type = MPB_ARRAY;
    v.v.a = a;
    return v;
}

mpb_value mpb_map_value(void)
{
    mpb_value v = {0};
    mpb_map *m = mpb_map_new();
    if (m == NULL)
        return v;
    v.type = MPB_MAP;
    v.v.m = m;
    return v;
}

/*--- Lifetime ---*/

void mpb_value_free(mpb_value *v)
{
    switch (v->type) {
    case MPB_STR:
    case MPB_BIN:
        if (!(v->flags & MPB_VF_BORROWED))
            free(v->v.s);
        break;
    case MPB_ARRAY:
        if (v->v.a != NULL) {
            mpb_array_clear(v->v.a);
            free(v->v.a);
        }
        break;
    case MPB_MAP:
        mpb_map_free(v->v.m);
        break;
    default:
        break;
    }
    *v = mpb_nil();
}

static mpb_array *array_dup(const mpb_array *src)
{
    mpb_array *a = malloc(sizeof *a);
    if (a == NULL)
        return NULL;
    mpb_array_init(a);
    if (mpb_array_reserve(a, src->len) != 0) {
        free(a);
        return NULL;
    }
    for (size_t i = 0; i < src->len; i++) {
        if (mpb_value_copy(&a->items[i], &src->items[i]) != 0) {
            mpb_array_clear(a); /* frees the a->len items copied so far */
            free(a);
            return NULL;
        }
        a->len = i + 1;
    }
    return a;
}

int mpb_value_copy(mpb_value *dst, const mpb_value *src)
{
    mpb_value tmp = *src; /* scalars are complete already */
    tmp.flags = 0;        /* a copy owns its bytes, even of a borrowed value */
    switch (src->type) {
    case MPB_STR:
    case MPB_BIN:
        if ((tmp.v.s = dup_bytes(src->v.s, src->len)) == NULL)
            goto fail;
        break;
    case MPB_ARRAY:
        if ((tmp.v.a = array_dup(src->v.a)) == NULL)
            goto fail;
        break;
    case MPB_MAP:
        if ((tmp.v.m = mpb_map_dup(src->v.m)) == NULL)
            goto fail;
        break;
    default:
        break;
    }
    *dst = tmp;
    return 0;
fail:
    *dst = mpb_nil();
    return -1;
}

/*--- Arrays ---*/

void mpb_array_init(mpb_array *a)
{
    a->len = a->cap = 0;
    a->items = NULL;
}

void mpb_array_clear(mpb_array *a)
{
    for (size_t i = 0; i < a->len; i++)
        mpb_value_free(&a->items[i]);
    free(a->items);
    mpb_array_init(a);
}

int mpb_array_reserve(mpb_array *a, size_t extra)
{
    if (extra > SIZE_MAX / sizeof(mpb_value) - a->len)
        return -1;
    size_t need = a->len + extra;
    if (need <= a->cap)
        return 0;
    /* Doubling keeps appends amortised O(1); an exact request (extend, decode) that
     * is larger than double gets exactly what it asked for. */
    size_t cap = a->cap < 4 ? 4 : a->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / sizeof(mpb_value) / 2 ? need : cap * 2;
    mpb_value *items = realloc(a->items, cap * sizeof *items);
    if (items == NULL)
        return -1;
    a->items = items;
    a->cap = cap;
    return 0;
}

int mpb_array_push(mpb_array *a, mpb_value *v)
{
    if (a->len == a->cap && mpb_array_reserve(a, 1) != 0)
        return -1;
    a->items[a->len++] = *v;
    *v = mpb_nil();
    return 0;
}

int mpb_value_push(mpb_value *arr, mpb_value *item)
{
    if (arr->type != MPB_ARRAY)
        return -1;
    return mpb_array_push(arr->v.a, item);
}

/*--- Numbers: exact comparison across int64, uint64 and double ---*/

bool mpb_value_is_number(const mpb_value *v)
{
    return v->type == MPB_BOOL || v->type == MPB_INT || v->type == MPB_UINT ||
           v->type == MPB_FLOAT;
}

static int sign3(int lt, int gt) { return lt ? -1 : (gt ? 1 : 0); }

static int cmp_i_u(int64_t i, uint64_t u)
{
    if (i < 0)
        return -1;
    return sign3((uint64_t)i < u, (uint64_t)i > u);
}

/* CPython's int/float comparison: split the double into its integral part, which
 * converts exactly once it is known to be in range, and its fraction. */
static int cmp_i_f(int64_t i, double f)
{
    if (isnan(f))
        return UNORDERED;
    if (f >= TWO63)
        return -1;
    if (f < -TWO63)
        return 1;
    double t = trunc(f);
    int64_t ti = (int64_t)t;
    if (i != ti)
        return sign3(i < ti, i > ti);
    return sign3(f > t, f < t);
}

static int cmp_u_f(uint64_t u, double f)
{
    if (isnan(f))
        return UNORDERED;
    if (f < 0)
        return 1;
    if (f >= TWO64)
        return -1;
    double t = trunc(f);
    uint64_t tu = (uint64_t)t;
    if (u != tu)
        return sign3(u < tu, u > tu);
    return sign3(f > t, f < t);
}

/* -1, 0, 1, or UNORDERED when a NaN is involved. Both must be numbers. */
static int num_cmp(const mpb_value *a, const mpb_value *b)
{
    /* Bools are the ints 0 and 1 here, as in Python. */
    mpb_value x = *a, y = *b;
    if (x.type == MPB_BOOL)
        x = mpb_int(x.v.b);
    if (y.type == MPB_BOOL)
        y = mpb_int(y.v.b);
    int r;
    switch (x.type * 16 + y.type) {
    case MPB_INT * 16 + MPB_INT:
        return sign3(x.v.i < y.v.i, x.v.i > y.v.i);
    case MPB_INT * 16 + MPB_UINT:
        return cmp_i_u(x.v.i, y.v.u);
    case MPB_UINT * 16 + MPB_INT:
        return -cmp_i_u(y.v.i, x.v.u);
    case MPB_UINT * 16 + MPB_UINT:
        return sign3(x.v.u < y.v.u, x.v.u > y.v.u);
    case MPB_INT * 16 + MPB_FLOAT:
        return cmp_i_f(x.v.i, y.v.f);
    case MPB_FLOAT * 16 + MPB_INT:
        r = cmp_i_f(y.v.i, x.v.f);
        return r == UNORDERED ? r : -r;
    case MPB_UINT * 16 + MPB_FLOAT:
        return cmp_u_f(x.v.u, y.v.f);
    case MPB_FLOAT * 16 + MPB_UINT:
        r = cmp_u_f(y.v.u, x.v.f);
        return r == UNORDERED ? r : -r;
    default: /* float, float */
        if (isnan(x.v.f) || isnan(y.v.f))
            return UNORDERED;
        return sign3(x.v.f < y.v.f, x.v.f > y.v.f);
    }
}

static int bytes_cmp(const mpb_value *a, const mpb_value *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int r = n ? memcmp(a->v.s, b->v.s, n) : 0;
    if (r != 0)
        return r < 0 ? -1 : 1;
    return sign3(a->len < b->len, a->len > b->len);
}

/*--- Equality and ordering ---*/

static bool map_equal(const mpb_map *a, const mpb_map *b)
{
    if (a->len != b->len)
        return false;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(a, &it)) != NULL) {
        const mpb_value *w = mpb_map_get(b, &e->key);
        if (w == NULL || !mpb_value_equal(&e->val, w))
            return false;
    }
    return true;
}

bool mpb_value_equal(const mpb_value *a, const mpb_value *b)
{
    if (mpb_value_is_number(a) && mpb_value_is_number(b))
        return num_cmp(a, b) == 0;
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MPB_NIL:
        return true;
    case MPB_STR:
    case MPB_BIN:
        return a->len == b->len && (a->len == 0 || memcmp(a->v.s, b->v.s, a->len) == 0);
    case MPB_ARRAY:
        if (a->v.a->len != b->v.a->len)
            return false;
        for (size_t i = 0; i < a->v.a->len; i++)
            if (!mpb_value_equal(&a->v.a->items[i], &b->v.a->items[i]))
                return false;
        return true;
    case MPB_MAP:
        return map_equal(a->v.m, b->v.m);
    case MPB_REF:
        return a->v.ref == b->v.ref;
    default:
        return false;
    }
}

/* Python's list comparison: find the first items that are not ==, then order those
 * two; with no such pair the shorter list is first. So [None] vs [None] is equal
 * (never asks None < None), while [None] vs [1] is a TypeError. */
static int array_cmp(const mpb_array *a, const mpb_array *b, int *out)
{
    size_t n = a->len < b->len ? a->len : b->len;
    for (size_t i = 0; i < n; i++)
        if (!mpb_value_equal(&a->items[i], &b->items[i]))
            return mpb_value_compare(&a->items[i], &b->items[i], out);
    *out = sign3(a->len < b->len, a->len > b->len);
    return 0;
}

int mpb_value_compare(const mpb_value *a, const mpb_value *b, int *out)
{
    if (mpb_value_is_number(a) && mpb_value_is_number(b)) {
        int r = num_cmp(a, b);
        /* NaN: Python's < and > are both False, the nearest a 3-way result gets. */
        *out = r == UNORDERED ? 0 : r;
        return 0;
    }
    if (a->type != b->type)
        return -1;
    switch (a->type) {
    case MPB_STR:
    case MPB_BIN:
        *out = bytes_cmp(a, b);
        return 0;
    case MPB_ARRAY:
        return array_cmp(a->v.a, b->v.a, out);
    default: /* nil, map, ref: Python has no order for them */
        return -1;
    }
}

/*--- Hashing ---*/

/* splitmix64's finaliser: a bijection with full avalanche, so the low bits the map
 * index uses depend on every input bit. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

#define SEED_INT 0x9e3779b97f4a7c15ULL
#define SEED_STR 0x243f6a8885a308d3ULL
#define SEED_BIN 0x13198a2e03707344ULL
#define SEED_ARRAY 0xa4093822299f31d0ULL
#define SEED_REF 0x082efa98ec4e6c89ULL
#define SEED_FLOAT 0x452821e638d01377ULL
#define SEED_NIL 0xbe5466cf34e90c6cULL

/* Mixed into every hash: 0 unless mpb_hash_randomize() picked a secret one, so that
 * a client cannot choose keys that all land in one stretch of a map's index. */
static uint64_t hash_key;

void mpb_hash_randomize(void)
{
    uint64_t k;
    if (getrandom(&k, sizeof k, 0) == (ssize_t)sizeof k) hash_key = k;
}

/* Integers hash by value: an int64 and a uint64 holding the same non-negative number
 * have the same bits. */
static uint64_t hash_int_bits(uint64_t x) { return mix64(x ^ SEED_INT ^ hash_key); }

static uint64_t hash_float(double f)
{
    if (f == trunc(f)) { /* integral (inf and NaN fail this or the ranges below) */
        if (f >= -TWO63 && f < TWO63)
            return hash_int_bits((uint64_t)(int64_t)f);
        if (f >= 0 && f < TWO64)
            return hash_int_bits((uint64_t)f);
    }
    uint64_t bits;
    memcpy(&bits, &f, sizeof bits);
    return mix64(bits ^ SEED_FLOAT ^ hash_key);
}

/* Eight bytes per round through the mixer; the length goes into the seed so that
 * "ab" and "ab\0" differ. */
static uint64_t hash_bytes(const char *p, size_t n, uint64_t seed)
{
    uint64_t h = seed ^ hash_key ^ mix64(n);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + SEED_INT;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = mix64(h ^ w);
    }
    return mix64(h);
}

bool mpb_value_hashable(const mpb_value *v)
{
    if (v->type == MPB_MAP) return false; /* maps are mutable, as Python's dicts */
    if (v->type != MPB_ARRAY) return true;
    for (size_t i = 0; i < v->v.a->len; i++)
        if (!mpb_value_hashable(&v->v.a->items[i])) return false;
    return true;
}

int mpb_value_hash(const mpb_value *v, uint64_t *out)
{
    switch (v->type) {
    case MPB_NIL:
        *out = mix64(SEED_NIL);
        return 0;
    case MPB_BOOL:
        *out = hash_int_bits(v->v.b ? 1 : 0);
        return 0;
    case MPB_INT:
        *out = hash_int_bits((uint64_t)v->v.i);
        return 0;
    case MPB_UINT:
        *out = hash_int_bits(v->v.u);
        return 0;
    case MPB_FLOAT:
        *out = hash_float(v->v.f);
        return 0;
    case MPB_STR:
        *out = hash_bytes(v->v.s, v->len, SEED_STR);
        return 0;
    case MPB_BIN:
        *out = hash_bytes(v->v.s, v->len, SEED_BIN);
        return 0;
    case MPB_REF:
        *out = mix64(v->v.ref ^ SEED_REF ^ hash_key);
        return 0;
    case MPB_ARRAY: {
        uint64_t h = SEED_ARRAY ^ mix64(v->v.a->len);
        for (size_t i = 0; i < v->v.a->len; i++) {
            uint64_t ih;
            if (mpb_value_hash(&v->v.a->items[i], &ih) != 0)
                return -1;
            h = mix64(h ^ ih) + SEED_ARRAY; /* order matters: (1, 2) != (2, 1) */
        }
        *out = h;
        return 0;
    }
    default: /* maps are mutable, hence unhashable, as Python's dicts */
        return -1;
    }
}

/*--- Names and truth ---*/

const char *mpb_type_name(const mpb_value *v)
{
    switch (v->type) {
    case MPB_NIL: return "NoneType";
    case MPB_BOOL: return "bool";
    case MPB_INT:
    case MPB_UINT: return "int";
    case MPB_FLOAT: return "float";
    case MPB_STR: return "str";
    case MPB_BIN: return "bytes";
    case MPB_ARRAY: return "list";
    case MPB_MAP: return "dict";
    case MPB_REF: return "ref";
    default: return "object";
    }
}

bool mpb_value_truthy(const mpb_value *v)
{
    switch (v->type) {
    case MPB_NIL: return false;
    case MPB_BOOL: return v->v.b;
    case MPB_INT: return v->v.i != 0;
    case MPB_UINT: return v->v.u != 0;
    case MPB_FLOAT: return v->v.f != 0.0; /* NaN is true, as in Python */
    case MPB_STR:
    case MPB_BIN: return v->len > 0;
    case MPB_ARRAY: return v->v.a->len > 0;
    case MPB_MAP: return v->v.m->len > 0;
    default: return true;
    }
}

/*--- Repr ---*/

/* A growing string; after the first allocation failure every write is a no-op and
 * oom says so, which keeps the printers free of error plumbing. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len < n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }
static void sb_putc(sbuf *b, char c) { sb_putn(b, &c, 1); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[64]; /* only short, numeric formats come here */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_putn(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Python's float repr: the shortest digit string that reads back as the same double,
 * printed positionally when the decimal exponent is in [-4, 16), else as d.ddde+XX. */
static void repr_float(sbuf *b, double f)
{
    if (isnan(f)) {
        sb_puts(b, "nan");
        return;
    }
    if (isinf(f)) {
        sb_puts(b, f > 0 ? "inf" : "-inf");
        return;
    }
    if (f == 0) {
        sb_puts(b, signbit(f) ? "-0.0" : "0.0");
        return;
    }
    char tmp[48];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    /* Pull the digits and exponent out of "-d.ddde+XX"; any non-digit before the 'e'
     * is the locale's decimal point. */
    char digits[24];
    int nd = 0, exp10 = 0;
    const char *s = tmp;
    if (*s == '-') {
        sb_putc(b, '-');
        s++;
    }
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9' && nd < (int)sizeof digits - 1)
            digits[nd++] = *s;
    if (*s == 'e')
        exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    if (decpt <= -4 || decpt > 16) {
        sb_putc(b, digits[0]);
        if (nd > 1) {
            sb_putc(b, '.');
            sb_putn(b, digits + 1, (size_t)nd - 1);
        }
        sb_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        sb_puts(b, "0.");
        for (int i = 0; i < -decpt; i++)
            sb_putc(b, '0');
        sb_putn(b, digits, (size_t)nd);
    } else if (decpt >= nd) {
        sb_putn(b, digits, (size_t)nd);
        for (int i = nd; i < decpt; i++)
            sb_putc(b, '0');
        sb_puts(b, ".0");
    } else {
        sb_putn(b, digits, (size_t)decpt);
        sb_putc(b, '.');
        sb_putn(b, digits + decpt, (size_t)(nd - decpt));
    }
}

/* Length of a valid UTF-8 sequence at p (2..4) with its code point, or 0. */
static int utf8_seq(const unsigned char *p, size_t n, uint32_t *cp)
{
    int len;
    uint32_t c, min;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2, c = p[0] & 0x1f, min = 0x80;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3, c = p[0] & 0x0f, min = 0x800;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* The non-ASCII code points Python's str.isprintable() rejects that are common
 * enough to matter (C1 controls, odd spaces, format marks, private use); without
 * Unicode tables, unassigned code points print as themselves. */
static bool cp_unprintable(uint32_t c)
{
    return (c >= 0x80 && c <= 0xa0) || c == 0xad || c == 0x61c || c == 0x1680 ||
           c == 0x180e || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
           (c >= 0x205f && c <= 0x206f) || c == 0x3000 || (c >= 0xe000 && c <= 0xf8ff) ||
           c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) || c == 0xfffe || c == 0xffff ||
           c >= 0xf0000;
}

/* Python picks single quotes unless the text has a ' and no ". */
static char pick_quote(const char *s, size_t n)
{
    if (n == 0)
        return '\'';
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    return sq && !dq ? '"' : '\'';
}

/* An ASCII byte in a str or bytes literal; false when it is not printable ASCII. */
static bool repr_ascii(sbuf *b, unsigned char c, char quote)
{
    switch (c) {
    case '\\': sb_puts(b, "\\\\"); return true;
    case '\n': sb_puts(b, "\\n"); return true;
    case '\r': sb_puts(b, "\\r"); return true;
    case '\t': sb_puts(b, "\\t"); return true;
    default:
        if (c < 0x20 || c >= 0x7f)
            return false;
        if (c == (unsigned char)quote)
            sb_putc(b, '\\');
        sb_putc(b, (char)c);
        return true;
    }
}

static void repr_text(sbuf *b, const char *s, size_t n, bool is_str)
{
    char quote = pick_quote(s, n);
    const unsigned char *p = (const unsigned char *)s;
    if (!is_str)
        sb_putc(b, 'b');
    sb_putc(b, quote);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int len;
        if (repr_ascii(b, p[i], quote)) {
            i++;
        } else if (is_str && (len = utf8_seq(p + i, n - i, &cp)) > 0) {
            if (!cp_unprintable(cp))
                sb_putn(b, s + i, (size_t)len);
            else if (cp < 0x100)
                sb_printf(b, "\\x%02x", cp);
            else if (cp < 0x10000)
                sb_printf(b, "\\u%04x", cp);
            else
                sb_printf(b, "\\U%08x", cp);
            i += (size_t)len;
        } else { /* control byte, any byte of bytes, or invalid UTF-8 */
            sb_printf(b, "\\x%02x", p[i]);
            i++;
        }
    }
    sb_putc(b, quote);
}

/* tuple: v is (inside) a dict key or a set element, where only hashable values get:
 * an array there is a tuple, (1, 'x'), as Python prints it. */
static void repr_value(sbuf *b, const mpb_value *v, bool tuple)
{
    switch (v->type) {
    case MPB_NIL: sb_puts(b, "None"); break;
    case MPB_BOOL: sb_puts(b, v->v.b ? "True" : "False"); break;
    case MPB_INT: sb_printf(b, "%" PRId64, v->v.i); break;
    case MPB_UINT: sb_printf(b, "%" PRIu64, v->v.u); break;
    case MPB_FLOAT: repr_float(b, v->v.f); break;
    case MPB_STR: repr_text(b, v->v.s, v->len, true); break;
    case MPB_BIN: repr_text(b, v->v.s, v->len, false); break;
    case MPB_REF: sb_printf(b, "<ref %" PRIu64 ">", v->v.ref); break;
    case MPB_ARRAY:
        sb_putc(b, tuple ? '(' : '[');
        for (size_t i = 0; i < v->v.a->len; i++) {
            if (i > 0)
                sb_puts(b, ", ");
            repr_value(b, &v->v.a->items[i], tuple);
        }
        if (tuple && v->v.a->len == 1)
            sb_putc(b, ',');
        sb_putc(b, tuple ? ')' : ']');
        break;
    case MPB_MAP: {
        size_t it = 0;
        mpb_map_entry *e;
        sb_putc(b, '{');
        for (bool first = true; (e = mpb_map_next(v->v.m, &it)) != NULL; first = false) {
            if (!first)
                sb_puts(b, ", ");
            repr_value(b, &e->key, true);
            sb_puts(b, ": ");
            repr_value(b, &e->val, false);
        }
        sb_putc(b, '}');
        break;
    }
    default: sb_puts(b, "<?>"); break;
    }
}

static char *repr(const mpb_value *v, bool tuple)
{
    sbuf b = {0};
    repr_value(&b, v, tuple);
    sb_putn(&b, "", 0); /* an empty repr still needs its NUL */
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

char *mpb_value_repr(const mpb_value *v) { return repr(v, false); }

char *mpb_value_repr_key(const mpb_value *v) { return repr(v, true); }

int mpb_value_print(FILE *f, const mpb_value *v)
{
    char *s = mpb_value_repr(v);
    if (s == NULL)
        return -1;
    size_t n = strlen(s);
    int rc = fwrite(s, 1, n, f) == n ? 0 : -1;
    free(s);
    return rc;
}

size_t mpb_value_memsize(const mpb_value *v)
{
    switch (v->type) {
    case MPB_STR:
    case MPB_BIN: return v->flags & MPB_VF_BORROWED ? 0 : (size_t)v->len + 1;
    case MPB_ARRAY: {
        size_t n = sizeof *v->v.a + v->v.a->cap * sizeof(mpb_value);
        for (size_t i = 0; i < v->v.a->len; i++) n += mpb_value_memsize(&v->v.a->items[i]);
        return n;
    }
    case MPB_MAP: return mpb_map_memsize(v->v.m);
    default: return 0;
    }
}
