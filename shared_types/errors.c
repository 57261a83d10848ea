/* errors.c - wire names of the error kinds, both ways, from MPB_ERRKINDS.
 *
 * The kinds themselves and their meaning are in mpb_errors.h; how an error reply is
 * built is the server's business.
 */
#include <string.h>

#include "mpb_errors.h"

static const char *const kind_names[MPB_E__COUNT] = {
#define MPB_X_NAME(id, name) [MPB_E_##id] = name,
    MPB_ERRKINDS(MPB_X_NAME)
#undef MPB_X_NAME
};

const char *mpb_errkind_name(mpb_errkind k)
{
    return (unsigned)k < MPB_E__COUNT ? kind_names[k] : "";
}

mpb_errkind mpb_errkind_from_name(const char *name, unsigned long len)
{
    /* Only error replies come here, and there are twenty kinds: a scan will do. */
    for (int k = MPB_E_NONE + 1; k < MPB_E__COUNT; k++)
        if (strlen(kind_names[k]) == len && memcmp(kind_names[k], name, len) == 0)
            return (mpb_errkind)k;
    return MPB_E_NONE;
}
