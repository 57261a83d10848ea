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

/* Shared object types: id, wire typeid. */
#define MPB_OTYPES(X)          \
    X(LIST, "list")            \
    X(DICT, "dict")            \
    X(NAMESPACE, "namespace")

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

typedef enum mpb_method_id {
#define MPB_METHOD(id, name, handler, self, min, max, flags, args, doc) MPB_M_##id,
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
} mpb_method_info;

/* The table, indexed by mpb_method_id. */
extern const mpb_method_info mpb_methods[MPB_M__COUNT];

/* Wire typeid of a type ("list"), or "" for MPB_OT_NONE. */
const char *mpb_otype_name(mpb_otype t);
/* Type for a typeid, or MPB_OT_NONE. */
mpb_otype mpb_otype_from_name(const char *name, size_t len);
/* Method id for a wire name, or -1. Hash lookup; cost independent of table size. */
int mpb_method_lookup(const char *name, size_t len);

#ifdef __cplusplus
}
#endif
#endif
