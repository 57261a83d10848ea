/* objects.h - the object table: ids, names, holds, containment and lifetime.
 *
 * An object lives while it has a name, or a connection holds it, or a value stored in
 * another object refers to it. When all three go, it is queued and freed by
 * objects_collect(), which dispatch calls after each request: never in the middle of
 * a handler, so a handler can never free the object it is working on, and one whose
 * reference was released and stored again by the same request (a swap) lives on.
 * Reference cycles between anonymous objects are not collected (as with Python's
 * Manager); named objects and holds are the way to keep things alive on purpose.
 */
#ifndef MPB_OBJECTS_H
#define MPB_OBJECTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mpb_methods.h"
#include "mpb_value.h"

/* uint64 -> pointer open-addressing table (keys != 0). Used for id -> object and for
 * a connection's holds (id -> count). */
typedef struct mpb_idmap {
    uint64_t *keys;
    void **vals;
    size_t len, cap; /* cap is 0 or a power of two */
    size_t tombs;
    uint64_t sum; /* maps of counts (holds): the sum of the counts, kept by their users */
} mpb_idmap;

void *idmap_get(const mpb_idmap *m, uint64_t key);
/* 0, or -1 on allocation failure. Replaces an existing value. */
int idmap_put(mpb_idmap *m, uint64_t key, void *val);
void *idmap_del(mpb_idmap *m, uint64_t key); /* returns the removed value or NULL */
void idmap_free(mpb_idmap *m);
/* Iterate: size_t it = 0; uint64_t k; void *v; while (idmap_next(m, &it, &k, &v)) */
bool idmap_next(const mpb_idmap *m, size_t *it, uint64_t *key, void **val);

typedef struct mpb_object {
    mpb_ref id;
    uint64_t seq;       /* creation number (this lifetime): position in paged listings */
    mpb_otype type;
    int variant;        /* flavour within the family: rlock, joinablequeue, ... */
    char *name;         /* owned; NULL when anonymous */
    uint32_t holders;   /* connections holding it */
    uint64_t holds;     /* holds in all */
    uint64_t contained; /* references to it stored inside other objects */
    uint32_t pins;      /* parked requests waiting on it: they keep it alive */
    bool queued;        /* waiting in the free queue */
    size_t charged;     /* bytes counted in objects_mem_used() for the object itself */
    uint64_t version;   /* grows by one with each write (watch.c); kept by --data-dir */
    struct mpb_watch *watch; /* watchers and wait_change waiters, or NULL (watch.c) */
    union {
        mpb_array list;
        mpb_map *map; /* dict and namespace */
        void *ptr;    /* types added later keep their state here */
    } u;
} mpb_object;

/* Per-type operations, one row per type file. */
typedef struct mpb_type_ops {
    /* Set up empty state; 0 or -1 on allocation failure. */
    int (*init)(mpb_object *o);
    /* Free the state, releasing the references its values hold. */
    void (*destroy)(mpb_object *o);
    /* The length that manager.objects reports. */
    size_t (*len)(const mpb_object *o);
    /* Heap bytes of the state (mpb_value_memsize of what it holds, plus its own). */
    size_t (*memsize)(const mpb_object *o);
    /* Optional: connection conn_id closed while it owned o `count` times (locks,
     * semaphores): give it all back, waking waiters. */
    void (*conn_gone)(mpb_object *o, uint64_t conn_id, uintptr_t count);
} mpb_type_ops;

/* A namespace is stored as a dict (str keys): it uses mpb_dict_ops. */
extern const mpb_type_ops mpb_list_ops, mpb_dict_ops, mpb_queue_ops, mpb_lock_ops,
    mpb_semaphore_ops, mpb_condition_ops, mpb_event_ops, mpb_barrier_ops, mpb_value_ops,
    mpb_array_ops, mpb_set_ops, mpb_pipe_ops, mpb_channel_ops;

void objects_init(void);
/* Free every object (at exit). */
void objects_shutdown(void);
/* A new empty object with a fresh id, not yet held by anyone (the caller holds it or
 * names it at once). name (may be NULL) is copied. NULL on allocation failure. */
mpb_object *objects_create(mpb_otype type, int variant, const char *name, size_t name_len);
/* The same with a given id (0: the next one), for replaying persisted state; NULL
 * also when the id is taken. */
mpb_object *objects_create_id(mpb_otype type, int variant, const char *name, size_t name_len,
                              mpb_ref id);
/* Start numbering in a random id space (docs/PROTOCOL.md, "References"), so that
 * this broker's ids are not those of an earlier lifetime that lost its state. Call
 * before loading persisted state: the first id loaded (the snapshot's next id, else the
 * first object created in the log) then takes over its space, which --data-dir keeps.
 * Without it (the fuzzer) ids are 1, 2, 3... */
void objects_new_id_space(void);
/* The id the next object will get; ids below `id` in its space are never handed out
 * again. */
uint64_t objects_peek_next_id(void);
void objects_bump_next_id(uint64_t id);
/* The typeid a client would use to create it ("rlock"). */
const char *objects_typeid(const mpb_object *o);
/* Ownership of locks and semaphores by connections (conn->owned: id -> count): */
int objects_own(mpb_idmap *owned, mpb_object *o);
void objects_disown(mpb_idmap *owned, mpb_object *o);
/* A connection closed: every object it owned gets conn_gone. */
void objects_drop_owned(mpb_idmap *owned, uint64_t conn_id);
/* Pin o while a parked request waits on it. */
void objects_pin(mpb_object *o);
void objects_unpin(mpb_object *o);
mpb_object *objects_get(mpb_ref id);
mpb_object *objects_by_name(const char *name, size_t len);
/* Remove the object's name; it may then be queued for freeing. */
void objects_unname(mpb_object *o);
size_t objects_count(void);
size_t objects_len(const mpb_object *o);
/* Approximate bytes the object uses: its header and its state. */
size_t objects_memsize(const mpb_object *o);
/* Iterate over live objects (in no order: O(number of objects), for exit and tests of
 * the whole state, never for one request). */
bool objects_next(size_t *it, mpb_object **o);
/* Paged walk in creation order (manager.objects): the next live object whose seq is
 * >= *cursor, examining at most *budget entries (each one examined counts down
 * *budget and counts in g_objects_scanned); *cursor moves past every entry examined.
 * NULL when the budget or the objects ran out. Every object that lives through a
 * whole walk is returned exactly once, whatever is created or freed meanwhile. */
mpb_object *objects_walk(uint64_t *cursor, size_t *budget);
/* Does any entry lie at or after cursor (so a walk has more to look at)? */
bool objects_walk_more(uint64_t cursor);
/* Entries examined by objects_walk since start: listings' work, for manager.stats. */
extern uint64_t g_objects_scanned;

/* Holds, per connection: holds maps id -> count (as uintptr_t). */
int objects_hold(mpb_idmap *holds, mpb_object *o);
/* false when the connection did not hold it. */
bool objects_unhold(mpb_idmap *holds, mpb_object *o);
/* Drop every hold in the map (disconnect), then empty it. */
void objects_drop_holds(mpb_idmap *holds);

/* Every reference inside v names a live object? Sets *bad to the first that does not. */
bool objects_refs_valid(const mpb_value *v, mpb_ref *bad);
/* v is being stored in an object: count its references as containment. */
void objects_retain_value(const mpb_value *v);
/* The items of an array value are being moved into an object one by one (list.extend):
 * retain each, as each will be released on its own. */
void objects_retain_items(const mpb_value *array);
/* v is leaving an object: uncount its references (may queue objects for freeing). */
void objects_release_value(const mpb_value *v);
/* Release and free a value that was stored in an object. */
void objects_discard_value(mpb_value *v);
/* Replace the value stored in *slot with *v (taken: left nil). The new value is
 * retained before the old one is released, so a reference stored over itself stays
 * alive. The rule for every overwrite; several at once (a slice, an update) retain
 * all the new values first, then release the old ones. */
void objects_replace_value(mpb_value *slot, mpb_value *v);
/* Memory accounting for --max-memory (approximate, but it never drifts: what is
 * counted when a value enters an object is uncounted when it leaves). Counted: each
 * stored value (objects_value_cost, through retain/release above), each object's
 * header and name, and the fixed-size state of the types that store no values
 * (locks, events, values, arrays...), through objects_charge_state after init. */
size_t objects_mem_used(void);
/* What storing v costs: its slot and its heap bytes. */
size_t objects_value_cost(const mpb_value *v);
void objects_charge_state(mpb_object *o);
/* That fixed state changed size in place (a value or array item replaced by one of
 * another length, as 'u' strings are): from `before` to `after` heap bytes. */
void objects_recharge_state(mpb_object *o, size_t before, size_t after);
/* Queue o for freeing if nothing keeps it alive any more. */
void objects_maybe_free(mpb_object *o);
/* Free everything queued (and what that releases in turn). */
void objects_collect(void);
/* watch.c: o is being freed, its watches end. */
void watch_object_freed(mpb_object *o);

#endif
