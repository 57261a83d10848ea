/* mpb_value.h - the value model shared by the broker and its clients.
 *
 * An mpb_value is what a shared object stores and what travels in requests and
 * replies: nil, bool, int64, uint64, double, str, bin, array, map, or a reference to
 * a shared object. Values are plain data: a value never aliases another value, and
 * shared, mutable state lives only in broker objects reached through MPB_REF.
 *
 * Semantics follow Python's, because the broker replaces multiprocessing.Manager:
 * ints, floats and bools compare with each other (1 == 1.0 == true, and they hash
 * alike), str compares with str, and ordering between unrelated types is a TypeError.
 * Arrays stand for both lists and tuples; they are hashable when their items are, so
 * they can be dict keys. Maps are insertion-ordered, as Python's dicts are.
 *
 * The msgpack codec is in mpb_codec.h; the stream reader in mpb_reader.h.
 */
#ifndef MPB_VALUE_H
#define MPB_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mpb_type {
    MPB_NIL = 0,
    MPB_BOOL,
    MPB_INT,   /* int64; every integer in [INT64_MIN, INT64_MAX] is stored as MPB_INT */
    MPB_UINT,  /* only integers above INT64_MAX */
    MPB_FLOAT, /* double */
    MPB_STR,   /* UTF-8 expected, not enforced; length in .len */
    MPB_BIN,
    MPB_ARRAY,
    MPB_MAP,
    MPB_REF, /* reference to a broker object: .v.ref is its id */
} mpb_type;

/* Value flags. */
#define MPB_VF_BORROWED 0x01 /* .v.s is not owned: mpb_value_free leaves it alone */

typedef struct mpb_array mpb_array;
typedef struct mpb_map mpb_map;
typedef uint64_t mpb_ref;

/* An object id is SPACE << 32 | COUNTER. A broker starting without state picks a random
 * SPACE (1..2^31-1) and counts objects from 1 in it; --data-dir keeps the space with the
 * state; a used-up counter moves on to a new random space. So a broker that lost its
 * state never hands out an id an earlier lifetime did (an old reference names nothing:
 * NoSuchObject), and a client can tell from two ids of one name whether the broker it
 * reconnected to kept them (docs/PROTOCOL.md, "References"). Ids stay below 2^63. */
#define MPB_REF_SPACE_SHIFT 32
#define MPB_REF_SPACE_BITS 31
#define MPB_REF_COUNTER_MASK ((UINT64_C(1) << MPB_REF_SPACE_SHIFT) - 1)
static inline uint64_t mpb_ref_space(mpb_ref r) { return r >> MPB_REF_SPACE_SHIFT; }

/* 16 bytes, so that a list of a million ints costs 16 MB, not 32. */
typedef struct mpb_value {
    uint8_t type;  /* mpb_type */
    uint8_t flags; /* MPB_VF_* */
    uint16_t _pad;
    uint32_t len; /* byte length of MPB_STR / MPB_BIN */
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double f;
        char *s;      /* STR/BIN bytes, owned unless BORROWED; NUL-terminated when owned */
        mpb_array *a; /* owned */
        mpb_map *m;   /* owned */
        mpb_ref ref;
    } v;
} mpb_value;

struct mpb_array {
    size_t len, cap;
    mpb_value *items;
};

/* One map slot. key.type == MPB_TOMBSTONE marks a deleted slot (skip it). */
#define MPB_TOMBSTONE 0xff
typedef struct mpb_map_entry {
    uint64_t hash;
    mpb_value key;
    mpb_value val;
} mpb_map_entry;

/* Insertion-ordered hash map (the layout of CPython's compact dict): entries[] in
 * insertion order, index[] an open-addressing table of entry positions + 1. */
struct mpb_map {
    size_t len;  /* live entries */
    size_t used; /* entries[] slots used, tombstones included */
    size_t cap;  /* entries[] capacity */
    mpb_map_entry *entries;
    uint32_t *index; /* NULL while small: lookups scan entries[] */
    size_t index_cap; /* power of two, or 0 */
    uint64_t base;    /* entries[] slots dropped by compaction or clearing, ever: slot +
                         base is an entry's logical position (mpb_map_seek) */
};

/*--- Constructors: the result owns what it points to (free with mpb_value_free) ---*/
static inline mpb_value mpb_nil(void) { mpb_value v = {0}; v.type = MPB_NIL; return v; }
static inline mpb_value mpb_bool(bool b) { mpb_value v = {0}; v.type = MPB_BOOL; v.v.b = b; return v; }
static inline mpb_value mpb_int(int64_t i) { mpb_value v = {0}; v.type = MPB_INT; v.v.i = i; return v; }
static inline mpb_value mpb_float(double f) { mpb_value v = {0}; v.type = MPB_FLOAT; v.v.f = f; return v; }
static inline mpb_value mpb_refv(mpb_ref r) { mpb_value v = {0}; v.type = MPB_REF; v.v.ref = r; return v; }
/* An unsigned integer, normalised: <= INT64_MAX becomes MPB_INT. */
mpb_value mpb_uint(uint64_t u);
/* Copies of the bytes; on allocation failure the result is MPB_NIL. */
mpb_value mpb_str(const char *s);
mpb_value mpb_strn(const char *s, size_t n);
mpb_value mpb_bin(const void *p, size_t n);
/* Borrowed str/bin: points at the caller's bytes, which must outlive the value. For
 * building request arguments without copying. mpb_value_free does not free them. */
mpb_value mpb_str_borrowed(const char *s, size_t n);
mpb_value mpb_bin_borrowed(const void *p, size_t n);
/* Empty containers with room for `cap` items; MPB_NIL on allocation failure. */
mpb_value mpb_array_value(size_t cap);
mpb_value mpb_map_value(void);

/*--- Lifetime ---*/
/* Frees what v owns, recursively, and leaves v as nil. Safe on nil and borrowed. */
void mpb_value_free(mpb_value *v);
/* Deep copy of src into *dst (borrowed bytes become owned). Returns 0, or -1 on
 * allocation failure (then *dst is nil and nothing leaks). */
int mpb_value_copy(mpb_value *dst, const mpb_value *src);

/*--- Arrays (the a of an MPB_ARRAY value, or a list object's storage) ---*/
void mpb_array_init(mpb_array *a);
void mpb_array_clear(mpb_array *a); /* frees items, keeps nothing */
/* Make room for `extra` more items. 0, or -1 on allocation failure. */
int mpb_array_reserve(mpb_array *a, size_t extra);
/* Takes ownership of *v (leaves it nil) on success; 0 or -1 (then *v is untouched). */
int mpb_array_push(mpb_array *a, mpb_value *v);
/* Append an item to an MPB_ARRAY value; ownership as mpb_array_push. */
int mpb_value_push(mpb_value *arr, mpb_value *item);

/*--- Maps ---*/
mpb_map *mpb_map_new(void); /* NULL on allocation failure; free with mpb_map_free */
void mpb_map_free(mpb_map *m);
void mpb_map_clear(mpb_map *m); /* frees every entry; m stays usable and empty */
/* Borrowed pointer to the value stored under key, or NULL. key must be hashable. */
mpb_value *mpb_map_get(const mpb_map *m, const mpb_value *key);
/* Insert or replace. Takes ownership of *key and *val (both left nil) on success. On
 * replace the stored key is kept and the old value is moved to *old (if old != NULL)
 * or freed. Returns 1 inserted, 0 replaced, -1 allocation failure (nothing taken),
 * -2 key unhashable (nothing taken). */
int mpb_map_set(mpb_map *m, mpb_value *key, mpb_value *val, mpb_value *old);
/* Remove key. Moves the stored key and value to *key_out / *val_out when non-NULL,
 * frees them otherwise. Returns true if the key was there. */
bool mpb_map_del(mpb_map *m, const mpb_value *key, mpb_value *key_out, mpb_value *val_out);
/* Remove the most recently inserted entry (Python's popitem). false when empty. */
bool mpb_map_pop_last(mpb_map *m, mpb_value *key_out, mpb_value *val_out);
/* Iterate: size_t it = 0; mpb_map_entry *e; while ((e = mpb_map_next(m, &it))) ... */
mpb_map_entry *mpb_map_next(const mpb_map *m, size_t *it);
/* Deep copy; NULL on allocation failure. */
mpb_map *mpb_map_dup(const mpb_map *m);
/* Give m, which holds the same entries as model in the same order (a copy made by
 * reinserting model's entries), model's exact layout: the same slots, tombstones and
 * base, so that every entry has the position it has in model and a cursor into model
 * is one into m. 0, or -1 (allocation failure, or not the same keys in the same
 * order) with m unchanged. */
int mpb_map_layout_like(mpb_map *m, const mpb_map *model);
/* Cursors over insertion order that survive deletions and compaction. An entry's
 * logical position (its slot + base) grows with insertion order and never decreases,
 * so a walk resumed at a cursor sees, once each and in order, every entry present
 * for the whole walk; one already seen is seen again only if entries after the cursor
 * were deleted and the map was compacted meanwhile. mpb_map_seek gives the iterator
 * (for mpb_map_next) that resumes at logical position cursor; mpb_map_cursor the
 * logical position of iterator it. */
static inline size_t mpb_map_seek(const mpb_map *m, uint64_t cursor)
{
    return cursor > m->base ? (size_t)(cursor - m->base) : 0;
}
static inline uint64_t mpb_map_cursor(const mpb_map *m, size_t it) { return m->base + it; }

/*--- Python semantics ---*/
/* Equality as Python's ==: numbers across int/uint/float/bool, str with str, bin with
 * bin, arrays item by item, maps as sets of pairs, refs by id. NaN != NaN. */
bool mpb_value_equal(const mpb_value *a, const mpb_value *b);
/* Ordering as Python's <: numbers with numbers, str with str (bytewise, which is code
 * point order for UTF-8), bin with bin, arrays lexicographically. Sets *out to <0, 0,
 * >0 and returns 0; returns -1 when the types do not order (Python's TypeError; nil,
 * maps and refs never order). */
int mpb_value_compare(const mpb_value *a, const mpb_value *b, int *out);
/* Hash consistent with mpb_value_equal (1, 1.0 and true hash alike). Returns 0 and
 * sets *out, or -1 when unhashable (a map, or an array that holds a map). */
int mpb_value_hash(const mpb_value *v, uint64_t *out);
/* Key every hash in this process with a random secret (the broker calls it at start):
 * without it a client could pick dict keys that collide in a map's index and make
 * every lookup slow. Call before any map exists. Not a cryptographic PRF (Python uses
 * SipHash); a process's maps never leave it, so only timing could reveal the key. */
void mpb_hash_randomize(void);
/* Can v be a dict key (mpb_value_hash would succeed)? A type check for scalars,
 * without computing the hash: callers that only validate need no more. */
bool mpb_value_hashable(const mpb_value *v);
/* Python's type name of a value, for error messages: "NoneType", "int", "str", ... */
const char *mpb_type_name(const mpb_value *v);
/* Is it a number (bool, int, uint, float)? */
bool mpb_value_is_number(const mpb_value *v);
/* Python's truth value for a number, nil, bool, str, container. */
bool mpb_value_truthy(const mpb_value *v);

/* Heap bytes owned by v beyond its own 16-byte slot (strings, containers, recursively):
 * what `objects` reports as an object's size. Allocator overhead is not counted. */
size_t mpb_value_memsize(const mpb_value *v);
size_t mpb_map_memsize(const mpb_map *m);

/*--- Printing ---*/
/* Python repr: None, True, 3, 2.5, 'text', b'\x00', [1, 2], {'a': 1}, <ref 7>. Writes
 * to f; returns 0 or -1 on a write error. */
int mpb_value_print(FILE *f, const mpb_value *v);
/* The same into a newly allocated NUL-terminated string (free() it), or NULL. An array
 * used as a map key prints as a tuple, {(2, 3): 'x'}. */
char *mpb_value_repr(const mpb_value *v);
/* repr of v as a dict key or set element: arrays are tuples, (1, 'x') and (1,). */
char *mpb_value_repr_key(const mpb_value *v);

#ifdef __cplusplus
}
#endif
#endif
