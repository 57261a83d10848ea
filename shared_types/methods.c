/* methods.c - the method table and object type names, as data, plus name lookup.
 *
 * mpb_methods[] is mpb_methods.def expanded without handlers; the server pairs it
 * with its handlers in dispatch.c, the shell and manager.methods read it as is.
 * Lookup by wire name goes through a small open-addressing hash table built once,
 * on first use (pthread_once, as clients may look names up from several threads).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "mpb_methods.h"

const mpb_method_info mpb_methods[MPB_M__COUNT] = {
#define MPB_METHOD(id, name_, handler, self_, min_, max_, flags_, args_, doc_, cost_)       \
    [MPB_M_##id] = {.name = name_, .self = MPB_OT_##self_, .min = min_, .max = max_, \
                    .flags = flags_, .args = args_, .doc = doc_, .cost = cost_},
#include "mpb_methods.def"
#undef MPB_METHOD
};

static const char *const otype_names[MPB_OT__COUNT] = {
    [MPB_OT_NONE] = "",
#define MPB_X_OT(id, name) [MPB_OT_##id] = name,
    MPB_OTYPES(MPB_X_OT)
#undef MPB_X_OT
};

const char *mpb_otype_name(mpb_otype t)
{
    return (unsigned)t < MPB_OT__COUNT ? otype_names[t] : "";
}

mpb_otype mpb_otype_from_name(const char *name, size_t len)
{
    /* A handful of types: a scan is the fastest lookup there is. */
    for (int t = MPB_OT_NONE + 1; t < MPB_OT__COUNT; t++)
        if (strlen(otype_names[t]) == len && memcmp(otype_names[t], name, len) == 0)
            return (mpb_otype)t;
    return MPB_OT_NONE;
}

static const struct {
    const char *name;
    mpb_otype type;
    int variant;
} typeid_rows[] = {
#define MPB_X_TYPEID(name, type, variant) {name, MPB_OT_##type, variant},
    MPB_TYPEIDS(MPB_X_TYPEID)
#undef MPB_X_TYPEID
};
#define NTYPEIDS (sizeof typeid_rows / sizeof typeid_rows[0])

const char *const mpb_typeids[] = {
#define MPB_X_TYPEID(name, type, variant) name,
    MPB_TYPEIDS(MPB_X_TYPEID)
#undef MPB_X_TYPEID
    NULL,
};

mpb_otype mpb_typeid_lookup(const char *name, size_t len, int *variant)
{
    for (size_t i = 0; i < NTYPEIDS; i++)
        if (strlen(typeid_rows[i].name) == len && memcmp(typeid_rows[i].name, name, len) == 0) {
            *variant = typeid_rows[i].variant;
            return typeid_rows[i].type;
        }
    return MPB_OT_NONE;
}

const char *mpb_typeid_name(mpb_otype t, int variant)
{
    for (size_t i = 0; i < NTYPEIDS; i++)
        if (typeid_rows[i].type == t && typeid_rows[i].variant == variant) return typeid_rows[i].name;
    return mpb_otype_name(t);
}

/*--- Lookup by name ---*/

/* Power of two, at least twice the rows, so probes stay short; slots hold id + 1. */
#define LOOKUP_SLOTS 512
_Static_assert(MPB_M__COUNT * 2 <= LOOKUP_SLOTS, "grow LOOKUP_SLOTS with the table");
_Static_assert(MPB_M__COUNT < UINT16_MAX, "slots are uint16_t");

static uint16_t slots[LOOKUP_SLOTS];
static pthread_once_t slots_once = PTHREAD_ONCE_INIT;

/* FNV-1a: names are short, and this needs no seed. */
static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void build_slots(void)
{
    for (int id = 0; id < MPB_M__COUNT; id++) {
        const char *name = mpb_methods[id].name;
        uint32_t i = name_hash(name, strlen(name)) & (LOOKUP_SLOTS - 1);
        while (slots[i] != 0)
            i = (i + 1) & (LOOKUP_SLOTS - 1);
        slots[i] = (uint16_t)(id + 1);
    }
}

int mpb_method_lookup(const char *name, size_t len)
{
    pthread_once(&slots_once, build_slots);
    uint32_t i = name_hash(name, len) & (LOOKUP_SLOTS - 1);
    for (; slots[i] != 0; i = (i + 1) & (LOOKUP_SLOTS - 1)) {
        const char *cand = mpb_methods[slots[i] - 1].name;
        if (strlen(cand) == len && memcmp(cand, name, len) == 0)
            return slots[i] - 1;
    }
    return -1;
}
