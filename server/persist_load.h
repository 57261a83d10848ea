/* persist_load.h - start-up half of persistence: which files are live, checking and
 * replaying them, refusing what cannot be trusted, --repair. Used by persist.c only.
 */
#ifndef MPB_PERSIST_LOAD_H
#define MPB_PERSIST_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

#define PERSIST_FORMAT 2
#define PERSIST_SNAPSHOT "snapshot.mpb"
#define PERSIST_SNAPSHOT_TMP "snapshot.tmp"
#define PERSIST_LOG_TMP "log.tmp"

typedef struct persist_loaded {
    uint64_t gen;       /* the live generation */
    bool have_snapshot; /* snapshot.mpb exists */
    bool have_log;      /* log.GEN.mpb exists (and ends after its last good record) */
    bool old_format;    /* what was loaded is format 1: convert it */
    size_t snap_bytes, log_bytes;
} persist_loaded;

/* Load the data directory open as dirfd (dir is its name, for messages) into the
 * objects, replaying through the connection `replay`. Exits the process with a
 * message naming the file, the byte offset and the way out when something cannot be
 * trusted: damage anywhere but a torn log tail, a missing or header-less live log,
 * header fields that disagree. A torn tail is cut off (with a line on stderr). With
 * repair, damage in the live log is cut off instead, the cut bytes kept in
 * LOG.cut-OFFSET. Removes stale temporaries first, and stale generations once the
 * live one has loaded. */
void persist_load(int dirfd, const char *dir, bool repair, mpb_conn *replay,
                  persist_loaded *out);
/* strerror(e) and what to do about it ("... (the disk is full)"), in a static buffer. */
const char *persist_errtext(int e);
/* "log.GEN.mpb" in a static buffer. */
const char *persist_log_name(uint64_t gen);

#endif
