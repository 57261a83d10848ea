/* mpb_methods.h - object types and the method table, as data both sides can read.
 *
 * The rows live in mpb_methods.def; this header expands them into an enum and a
 * table of descriptors without handlers (the server adds its handlers in dispatch.c).
 */
#ifndef MPB_METHODS_H
#define MPB_METHODS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Shared object types (method families): id, name. Methods belong to a family
 * ("queue.put" works on queues and joinable queues alike). */
#define MPB_OTYPES(X)          \
    X(LIST, "list")            \
    X(DICT, "dict")            \
    X(NAMESPACE, "namespace")  \
    X(QUEUE, "queue")          \
    X(LOCK, "lock")            \
    X(SEMAPHORE, "semaphore")  \
    X(CONDITION, "condition")  \
    X(EVENT, "event")          \
    X(BARRIER, "barrier")      \
    X(VALUE, "value")          \
    X(ARRAY, "array")          \
    X(SET, "set")              \
    X(PIPE, "pipe")            \
    X(CHANNEL, "channel")

/* Typeids that manager.create/open accept: name, family, variant. A variant is a
 * flavour of its family with the same methods (Python's JoinableQueue, RLock,
 * BoundedSemaphore). */
#define MPB_TYPEIDS(X)                          \
    X("list", LIST, 0)                          \
    X("dict", DICT, 0)                          \
    X("namespace", NAMESPACE, 0)                \
    X("queue", QUEUE, 0)                        \
    X("joinablequeue", QUEUE, 1)                \
    X("lock", LOCK, 0)                          \
    X("rlock", LOCK, 1)                         \
    X("semaphore", SEMAPHORE, 0)                \
    X("boundedsemaphore", SEMAPHORE, 1)         \
    X("condition", CONDITION, 0)                \
    X("event", EVENT, 0)                        \
    X("barrier", BARRIER, 0)                    \
    X("value", VALUE, 0)                        \
    X("array", ARRAY, 0)                        \
    X("set", SET, 0)                            \
    X("pipe", PIPE, 0)                          \
    X("channel", CHANNEL, 0)

typedef enum mpb_otype {
    MPB_OT_NONE = 0,
#define MPB_X_OT(id, name) MPB_OT_##id,
    MPB_OTYPES(MPB_X_OT)
#undef MPB_X_OT
    MPB_OT__COUNT
} mpb_otype;

/* Method flags. */
#define MPB_F_WRITE 0x01 /* changes shared state */
#define MPB_F_ADMIN 0x02 /* acts on the broker itself */
#define MPB_F_READ 0x08  /* only reads shared state: changes nothing, never waits (a
                            debugger may call it at any time) */
#define MPB_F_NOLOG 0x04 /* a write that persistence does not log as a call: its lasting
                            effect is logged otherwise, or it has none after a restart
                            (holds, lock ownership, barrier arrivals) */
#define MPB_F_BLOCKS 0x10 /* may park (wait for another client or a timeout): refused
                             inside manager.atomic */

typedef enum mpb_method_id {
#define MPB_METHOD(id, name, handler, self, min, max, flags, args, doc, cost) MPB_M_##id,
#include "mpb_methods.def"
#undef MPB_METHOD
    MPB_M__COUNT
} mpb_method_id;

typedef struct mpb_method_info {
    const char *name;
    mpb_otype self; /* MPB_OT_NONE: no reference parameter */
    unsigned char min, max;
    unsigned flags;
    const char *args, *doc;
    const char *cost; /* time complexity: "O(1)", "O(N log N)" (mpb_methods.def) */
} mpb_method_info;

/* The table, indexed by mpb_method_id. */
extern const mpb_method_info mpb_methods[MPB_M__COUNT];

/* Wire typeid of a type ("list"), or "" for MPB_OT_NONE. */
const char *mpb_otype_name(mpb_otype t);
/* Family for a family name, or MPB_OT_NONE. */
mpb_otype mpb_otype_from_name(const char *name, size_t len);
/* Family and variant for a typeid ("rlock" -> LOCK, 1); MPB_OT_NONE if unknown. */
mpb_otype mpb_typeid_lookup(const char *name, size_t len, int *variant);
/* The typeid of a family + variant ("rlock"), or the family name. */
const char *mpb_typeid_name(mpb_otype t, int variant);
/* Every typeid, NULL-terminated (for help and completion). */
extern const char *const mpb_typeids[];
/* Method id for a wire name, or -1. Hash lookup; cost independent of table size. */
int mpb_method_lookup(const char *name, size_t len);

#ifdef __cplusplus
}
#endif
#endif
