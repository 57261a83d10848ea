/* persist.c - the append-only log, snapshots and compaction, what happens when the
 * disk fails, and watching the data directory. Start-up loading is persist_load.c's,
 * the record format persist_file.c's.
 *
 * Files in the data directory (format 2, every record checksummed: persist_file.h):
 *   snapshot.mpb   header ["mpbroker-snapshot", 2, GEN, NEXT_ID], then ["obj", ID,
 *                  TYPEID, NAME|nil, VERSION] for every object (VERSION absent in
 *                  files of brokers before versions: 0), ["fill", ID, INITIAL] for each,
 *                  queue items as ["call", "queue.put_nowait", [REF, ITEM]], and
 *                  ["end", RECORDS]. Two passes (obj, then fill) let objects refer to
 *                  each other in any order, cycles included.
 *   log.GEN.mpb    header ["mpbroker-log", 2, GEN], then ["create", ID, TYPEID,
 *                  NAME|nil, INITIAL|nil] and ["call", METHOD, PARAMS] records appended
 *                  as changes happen, ["batch", [[METHOD, PARAMS]...]] for an atomic
 *                  batch (one record: all of it or none), ["version", ID, VERSION]
 *                  after writes that are not logged (lock.acquire) so that versions
 *                  never go back; replayed after the snapshot of the same GEN.
 *   lock           flock()ed while a broker uses the directory; holds its pid.
 * A new generation (compaction, recovery, converting format 1) is made by
 * new_generation(): every file appears under its name whole and synced, or not at all.
 *
 * Failure (docs/PROTOCOL.md, "Persistence"): when a write or fsync of the log fails,
 * or the directory or a live file is removed or replaced, nothing on disk can be
 * trusted to hold what the broker acknowledged, but memory holds all of it. The broker
 * turns read-only: writes are refused with PersistenceError, replies not yet sent are
 * held (conn.c), reads go on. Each tick it tries to store the whole state as a new
 * generation; once that is synced, the held replies go out and writes are accepted.
 *
 * Compaction runs in the loop (no fork): it is synchronous, so no write can slip
 * between the snapshot and the new log.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "mpb_codec.h"
#include "mpb_reader.h"
#include "persist.h"
#include "persist_file.h"
#include "persist_load.h"
#include "watch.h"

mpb_persist_config g_persist = {.fsync = MPB_FSYNC_EVERYSEC, .compact_min = PERSIST_DEFAULT_COMPACT_MIN};
size_t g_persist_buffered;

static msgpack_sbuffer logbuf;
static msgpack_packer logpk;
/* Effects of the call being served (a parked get served by a put): they go into the
 * log after the call, which replay must run first (see persist_call_begin). */
static msgpack_sbuffer effbuf;
static msgpack_packer effpk;
static int in_call;
/* The calls of an atomic batch being run (persist_batch_begin): [METHOD, PARAMS]
 * each, packed back to back. */
static msgpack_sbuffer batchbuf;
static msgpack_packer batchpk;
static bool batching;
static uint32_t batch_calls;

static int logfd = -1, dirfd_ = -1, lockfd = -1;
static uint64_t gen;
static size_t log_bytes, snap_bytes;
static bool need_fsync, replaying;
static struct event *tick_ev, *compact_ev;
static mpb_conn replay;
/* What the watch compares with: the directory, the live log and snapshot, and the
 * lock file this broker holds. */
static struct stat dir_st, log_st, snap_st, lock_st;
static bool have_snap;

/* Read-only mode. */
static bool failed;
static char failure[640];  /* what failed first */
static char last_try[640]; /* why the last try to store the state again failed, or "" */
static uint64_t nfailures;
static double failed_since, next_try, backoff;
static size_t need_bytes; /* free space a retry needs (0: unknown) */
static double compact_again; /* after a failed compaction, not before this */

#define RETRY_MAX 10.0 /* seconds between tries to recover, at most */


static unsigned long long free_bytes(void)
{
    struct statvfs sv;
    if (dirfd_ < 0 || fstatvfs(dirfd_, &sv) < 0) return 0;
    return (unsigned long long)sv.f_bavail * sv.f_frsize;
}

bool persist_is_replay(const mpb_conn *c) { return c == &replay; }

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/*--- Read-only mode ---*/

/* The log cannot be trusted any more: stop acknowledging writes (see the top). */
__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    if (failed) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(failure, sizeof failure, fmt, ap);
    va_end(ap);
    failed = true;
    last_try[0] = '\0';
    nfailures++;
    failed_since = mpb_mono_seconds();
    backoff = 1;
    next_try = failed_since + backoff;
    msgpack_sbuffer_clear(&logbuf); /* memory has it all; a new generation will store it */
    g_persist_buffered = 0;
    need_fsync = false;
    fprintf(stderr, "mpbroker-server: PERSISTENCE FAILED: %s\n"
            "mpbroker-server: read-only until the whole state is stored again (tried after 1, "
            "2, 4, 8, then every 10 s): writes get PersistenceError, replies to writes not yet "
            "stored are held, reads go on\n", failure);
    conn_hold_unsent();
}

bool persist_failed(void) { return failed; }
const char *persist_failure(void)
{
    static char both[sizeof failure + sizeof last_try + 64];
    if (!failed) return NULL;
    if (!last_try[0]) return failure;
    snprintf(both, sizeof both, "%s; storing the state again failed: %s", failure, last_try);
    return both;
}
uint64_t persist_failures(void) { return nfailures; }

const char *persist_state(void)
{
    return !persist_enabled() ? "off" : failed ? "read-only" : "ok";
}

bool persist_refuses(mpb_req *r)
{
    if (!failed || (r->info->flags & (MPB_F_WRITE | MPB_F_NOLOG)) != MPB_F_WRITE) return false;
    reply_error(r, MPB_E_PERSISTENCE, "%s: the broker cannot store writes now: %s", r->info->name,
                failure);
    return true;
}

bool persist_refuses_create(mpb_req *r)
{
    if (!failed) return false;
    reply_error(r, MPB_E_PERSISTENCE, "%s: the broker cannot store new objects now: %s",
                r->info->name, failure);
    return true;
}

/* Fail with errno's text and, for a full disk, how much was needed and is free. */
static void fail_errno(const char *what, size_t needed)
{
    int e = errno;
    if ((e == ENOSPC || e == EDQUOT) && needed)
        fail("%s: %s: %zu bytes needed, the file system reports %llu free", what,
             persist_errtext(e), needed, free_bytes());
    else if (e == ENOSPC || e == EDQUOT)
        fail("%s: %s: the file system reports %llu bytes free", what, persist_errtext(e),
             free_bytes());
    else
        fail("%s: %s", what, persist_errtext(e));
}

/*--- Logging ---*/

static void logged(msgpack_sbuffer *sb, size_t start)
{
    if (pf_end(sb, start) < 0) fail("a record over 4 GiB cannot be logged");
    g_persist_buffered = logbuf.size;
}

void persist_log_call(const char *method, const msgpack_object *params)
{
    if (replaying || failed) return;
    if (batching) {
        msgpack_pack_array(&batchpk, 2);
        pack_str(&batchpk, method);
        msgpack_pack_object(&batchpk, *params);
        batch_calls++;
        return;
    }
    size_t at = pf_begin(&logbuf);
    msgpack_pack_array(&logpk, 3);
    pack_str(&logpk, "call");
    pack_str(&logpk, method);
    msgpack_pack_object(&logpk, *params);
    logged(&logbuf, at);
}

void persist_log_version(const mpb_object *o)
{
    if (!persist_enabled() || replaying || failed) return;
    size_t before = g_persist_buffered;
    size_t at = pf_begin(&logbuf);
    msgpack_pack_array(&logpk, 3);
    pack_str(&logpk, "version");
    msgpack_pack_uint64(&logpk, o->id);
    msgpack_pack_uint64(&logpk, o->version);
    logged(&logbuf, at);
    /* Nobody waits for it: the reply of a lock.acquire does not wait for an fsync. A
     * crash may lose it: then a lock's version after the restart is one it had before
     * (its state, ownership, is not kept anyway). */
    g_persist_buffered = before;
}

void persist_batch_begin(void)
{
    batching = persist_enabled() && !replaying;
    msgpack_sbuffer_clear(&batchbuf);
    batch_calls = 0;
}

void persist_batch_end(bool commit)
{
    if (!batching) return;
    batching = false;
    if (commit && batch_calls > 0 && !replaying && !failed) {
        size_t at = pf_begin(&logbuf);
        msgpack_pack_array(&logpk, 2);
        pack_str(&logpk, "batch");
        msgpack_pack_array(&logpk, batch_calls);
        msgpack_sbuffer_write(&logbuf, batchbuf.data, batchbuf.size);
        logged(&logbuf, at);
    }
    msgpack_sbuffer_clear(&batchbuf);
    batch_calls = 0;
}

void persist_log_effect(const char *method, const mpb_value *args, size_t n)
{
    /* A logged effect is a write to args[0]: its version counts it, as replay will. */
    if (!replaying) watch_effect(method, args, n);
    if (!persist_enabled() || replaying || failed) return;
    msgpack_sbuffer *sb = in_call ? &effbuf : &logbuf;
    msgpack_packer *pk = in_call ? &effpk : &logpk;
    size_t at = pf_begin(sb);
    msgpack_pack_array(pk, 3);
    pack_str(pk, "call");
    pack_str(pk, method);
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) mpb_value_pack(pk, &args[i]);
    logged(sb, at);
}

void persist_call_begin(void) { in_call++; }

void persist_call_end(void)
{
    if (--in_call > 0 || effbuf.size == 0) return;
    if (!failed) msgpack_sbuffer_write(&logbuf, effbuf.data, effbuf.size);
    msgpack_sbuffer_clear(&effbuf);
    g_persist_buffered = logbuf.size;
}

void persist_log_create(const mpb_object *o, const msgpack_object *initial)
{
    if (!persist_enabled() || replaying || failed) return;
    size_t at = pf_begin(&logbuf);
    msgpack_pack_array(&logpk, 5);
    pack_str(&logpk, "create");
    msgpack_pack_uint64(&logpk, o->id);
    pack_str(&logpk, objects_typeid(o));
    if (o->name) pack_str(&logpk, o->name);
    else msgpack_pack_nil(&logpk);
    if (initial) msgpack_pack_object(&logpk, *initial);
    else msgpack_pack_nil(&logpk);
    logged(&logbuf, at);
}

/* Is the live log still the file in the directory? (rm -rf of the directory leaves
 * the broker writing into an unlinked file.) */
static bool log_unlinked(void)
{
    struct stat st;
    return fstat(logfd, &st) == 0 && st.st_nlink == 0;
}

bool persist_sync(void)
{
    if (failed) return false;
    if (logbuf.size == 0) return true;
    char what[600];
    if (pf_write_all(logfd, logbuf.data, logbuf.size, NULL) < 0) {
        snprintf(what, sizeof what, "writing %zu bytes to %s/%s", logbuf.size, g_persist.dir,
                 persist_log_name(gen));
        fail_errno(what, logbuf.size);
        return false;
    }
    log_bytes += logbuf.size;
    msgpack_sbuffer_clear(&logbuf);
    g_persist_buffered = 0;
    if (g_persist.fsync == MPB_FSYNC_ALWAYS) {
        if (fdatasync(logfd) < 0) {
            snprintf(what, sizeof what, "fdatasync of %s/%s", g_persist.dir, persist_log_name(gen));
            fail_errno(what, 0);
            return false;
        }
        if (log_unlinked()) {
            fail("%s/%s was removed while in use", g_persist.dir, persist_log_name(gen));
            return false;
        }
    } else {
        need_fsync = true;
    }
    if (log_bytes > g_persist.compact_min && log_bytes > 2 * snap_bytes && compact_ev &&
        mpb_mono_seconds() >= compact_again)
        event_active(compact_ev, EV_TIMEOUT, 0);
    return true;
}

/*--- Snapshots ---*/

/* A buffered writer of framed records that remembers its first error and goes on
 * counting bytes after it (so a full disk can say how much was needed). */
typedef struct snapw {
    int fd, err;
    size_t total;
    msgpack_sbuffer rec; /* the record being packed */
    msgpack_packer pk;   /* packs into rec */
    size_t len;
    char buf[1 << 16];
} snapw;

static void snap_out(snapw *w, const char *p, size_t n)
{
    w->total += n;
    if (w->err) return;
    if (w->len + n > sizeof w->buf) {
        if (pf_write_all(w->fd, w->buf, w->len, NULL) < 0) w->err = errno;
        w->len = 0;
    }
    if (w->err) return;
    if (n > sizeof w->buf) {
        if (pf_write_all(w->fd, p, n, NULL) < 0) w->err = errno;
    } else {
        memcpy(w->buf + w->len, p, n);
        w->len += n;
    }
}

static size_t rec_begin(snapw *w)
{
    msgpack_sbuffer_clear(&w->rec);
    return pf_begin(&w->rec);
}

static void rec_end(snapw *w, size_t at)
{
    if (pf_end(&w->rec, at) < 0 && !w->err) w->err = EFBIG; /* one object over 4 GiB */
    snap_out(w, w->rec.data, w->rec.size);
}

void persist_dump_state(const mpb_object *o, msgpack_packer *pk)
{
    switch (o->type) {
    case MPB_OT_LIST: list_dump(o, pk); return;
    case MPB_OT_DICT:
    case MPB_OT_NAMESPACE: dict_dump(o, pk); return;
    case MPB_OT_QUEUE: queue_dump(o, pk); return;
    case MPB_OT_SEMAPHORE: sem_dump(o, pk); return;
    case MPB_OT_CONDITION: cond_dump(o, pk); return;
    case MPB_OT_EVENT: event_dump(o, pk); return;
    case MPB_OT_BARRIER: barrier_dump(o, pk); return;
    case MPB_OT_VALUE: value_dump(o, pk); return;
    case MPB_OT_ARRAY: array_dump(o, pk); return;
    case MPB_OT_SET: set_dump(o, pk); return;
    case MPB_OT_PIPE: pipe_dump(o, pk); return; /* the kind only: not its contents */
    case MPB_OT_CHANNEL: channel_dump(o, pk); return;
    default: msgpack_pack_nil(pk); return; /* lock: ownership is not persisted */
    }
}

static void pack_snapshot(snapw *w, uint64_t g)
{
    msgpack_packer *pk = &w->pk;
    size_t at = rec_begin(w);
    msgpack_pack_array(pk, 4);
    pack_str(pk, "mpbroker-snapshot");
    msgpack_pack_uint8(pk, PERSIST_FORMAT);
    msgpack_pack_uint64(pk, g);
    msgpack_pack_uint64(pk, objects_peek_next_id());
    rec_end(w, at);
    uint64_t records = 1;
    size_t it = 0;
    mpb_object *o;
    for (; objects_next(&it, &o); records++) {
        at = rec_begin(w);
        msgpack_pack_array(pk, 5);
        pack_str(pk, "obj");
        msgpack_pack_uint64(pk, o->id);
        pack_str(pk, objects_typeid(o));
        if (o->name) pack_str(pk, o->name);
        else msgpack_pack_nil(pk);
        msgpack_pack_uint64(pk, o->version);
        rec_end(w, at);
    }
    for (it = 0; objects_next(&it, &o); records++) {
        at = rec_begin(w);
        msgpack_pack_array(pk, 3);
        pack_str(pk, "fill");
        msgpack_pack_uint64(pk, o->id);
        persist_dump_state(o, pk);
        rec_end(w, at);
    }
    /* Queue items, one record each (queue_dump_items packs them back to back). */
    msgpack_sbuffer items;
    msgpack_packer ipk;
    msgpack_sbuffer_init(&items);
    msgpack_packer_init(&ipk, &items, msgpack_sbuffer_write);
    for (it = 0; objects_next(&it, &o);) {
        if (o->type != MPB_OT_QUEUE) continue;
        msgpack_sbuffer_clear(&items);
        size_t n = queue_dump_items(o, &ipk);
        for (size_t i = 0, off = 0, size; i < n; i++, records++, off += size) {
            mpb_read_status st = mpb_scan(items.data + off, items.size - off, items.size,
                                          MPB_READER_MAX_DEPTH, &size);
            if (st != MPB_READ_MSG && st != MPB_READ_TOO_DEEP) {
                if (!w->err) w->err = EINVAL; /* cannot happen: we packed it */
                break;
            }
            at = rec_begin(w);
            msgpack_sbuffer_write(&w->rec, items.data + off, size);
            rec_end(w, at);
        }
    }
    msgpack_sbuffer_destroy(&items);
    at = rec_begin(w);
    msgpack_pack_array(pk, 2);
    pack_str(pk, "end");
    msgpack_pack_uint64(pk, records);
    rec_end(w, at);
}

/* Write snapshot.tmp for generation g, synced. Its size, or 0 with why set. */
static size_t write_snapshot(uint64_t g, char *why, size_t whylen)
{
    snapw *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(why, whylen, "writing a snapshot: %s", strerror(ENOMEM));
        return 0;
    }
    w->fd = openat(dirfd_, PERSIST_SNAPSHOT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        snprintf(why, whylen, "creating %s/%s: %s", g_persist.dir, PERSIST_SNAPSHOT_TMP,
                 persist_errtext(errno));
        free(w);
        return 0;
    }
    msgpack_sbuffer_init(&w->rec);
    msgpack_packer_init(&w->pk, &w->rec, msgpack_sbuffer_write);
    pack_snapshot(w, g);
    if (!w->err && pf_write_all(w->fd, w->buf, w->len, NULL) < 0) w->err = errno;
    if (!w->err && fsync(w->fd) < 0) w->err = errno;
    if (close(w->fd) < 0 && !w->err) w->err = errno;
    size_t bytes = w->total;
    int err = w->err;
    msgpack_sbuffer_destroy(&w->rec);
    free(w);
    if (!err) return bytes;
    unlinkat(dirfd_, PERSIST_SNAPSHOT_TMP, 0);
    if (err == ENOSPC || err == EDQUOT) {
        need_bytes = bytes + 4096;
        snprintf(why, whylen, "writing %s/%s: %s: the snapshot needs %zu bytes, the file "
                 "system reports %llu free", g_persist.dir, PERSIST_SNAPSHOT_TMP,
                 persist_errtext(err), bytes, free_bytes());
    } else {
        snprintf(why, whylen, "writing %s/%s: %s", g_persist.dir, PERSIST_SNAPSHOT_TMP,
                 err == EFBIG ? "an object too large for one record (4 GiB)" : persist_errtext(err));
    }
    return 0;
}

/* The header record of log.g.mpb, into sb. */
static void log_header(msgpack_sbuffer *sb, uint64_t g)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    size_t at = pf_begin(sb);
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "mpbroker-log");
    msgpack_pack_uint8(&pk, PERSIST_FORMAT);
    msgpack_pack_uint64(&pk, g);
    pf_end(sb, at);
}

/* Create log.g.mpb with its header, atomically. Its fd (*bytes: the header's size),
 * or -1 with why set. Not yet the live log: the caller makes it that. */
static int create_log(uint64_t g, size_t *bytes, char *why, size_t whylen)
{
    msgpack_sbuffer hdr;
    msgpack_sbuffer_init(&hdr);
    log_header(&hdr, g);
    const char *step;
    int fd = pf_create(dirfd_, PERSIST_LOG_TMP, persist_log_name(g), hdr.data, hdr.size, &step);
    if (fd < 0)
        snprintf(why, whylen, "creating %s/%s (%s): %s", g_persist.dir, persist_log_name(g), step,
                 persist_errtext(errno));
    *bytes = hdr.size;
    msgpack_sbuffer_destroy(&hdr);
    return fd;
}

/* Remember what the watch compares with. */
static void note_files(void)
{
    fstat(dirfd_, &dir_st);
    fstat(logfd, &log_st);
    have_snap = fstatat(dirfd_, PERSIST_SNAPSHOT, &snap_st, 0) == 0;
}

/* Store the whole state as generation gen+1: snapshot.tmp written and synced; log.tmp
 * with its header synced and renamed to log.G+1.mpb; snapshot.tmp renamed to
 * snapshot.mpb and the directory synced. From that rename on, G+1 is live (a
 * snapshot's log exists before it does). Returns 1 stored; 0 failed with generation
 * gen still live and intact; -1 failed after the rename (what is on disk is unknown). */
static int new_generation(char *why, size_t whylen)
{
    uint64_t g = gen + 1;
    size_t bytes = write_snapshot(g, why, whylen);
    if (!bytes) return 0;
    size_t hdr_bytes;
    int fd = create_log(g, &hdr_bytes, why, whylen);
    if (fd < 0) {
        unlinkat(dirfd_, PERSIST_SNAPSHOT_TMP, 0);
        return 0;
    }
    if (renameat(dirfd_, PERSIST_SNAPSHOT_TMP, dirfd_, PERSIST_SNAPSHOT) < 0) {
        snprintf(why, whylen, "renaming %s/%s: %s", g_persist.dir, PERSIST_SNAPSHOT_TMP,
                 persist_errtext(errno));
        close(fd);
        unlinkat(dirfd_, persist_log_name(g), 0);
        unlinkat(dirfd_, PERSIST_SNAPSHOT_TMP, 0);
        return 0;
    }
    int synced = fsync(dirfd_);
    int e = errno;
    if (logfd >= 0) close(logfd);
    logfd = fd;
    log_bytes = hdr_bytes; /* only now: until the rename the old log went on */
    uint64_t old = gen;
    gen = g;
    snap_bytes = bytes;
    need_bytes = 0;
    if (synced < 0) {
        snprintf(why, whylen, "fsync of %s: %s", g_persist.dir, persist_errtext(e));
        note_files(); /* they are this broker's files (directory_again asks) */
        return -1;
    }
    unlinkat(dirfd_, persist_log_name(old), 0); /* in the snapshot now */
    note_files();
    return 1;
}

static void compact(void)
{
    if (failed || !persist_sync()) return;
    char why[600];
    int r = new_generation(why, sizeof why);
    if (r < 0) fail("%s", why);
    if (r == 0) {
        compact_again = mpb_mono_seconds() + 30;
        fprintf(stderr, "mpbroker-server: warning: compaction failed, the log goes on "
                "(tried again in 30 s): %s\n", why);
    }
}

static void on_compact(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    compact();
}

/*--- Recovery ---*/

/* Take the lock of the directory open as fd. 0, or -1 with why set. */
static int take_lock(int fd, char *why, size_t whylen)
{
    int lfd = openat(fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0) {
        snprintf(why, whylen, "cannot open %s/lock: %s", g_persist.dir, persist_errtext(errno));
        return -1;
    }
    if (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        char pid[32] = "";
        ssize_t n = pread(lfd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(why, whylen, "%s is in use by another broker%s%s%s", g_persist.dir,
                 pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "");
        close(lfd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(lfd, 0) == 0 && pwrite(lfd, pid, (size_t)n, 0) == n) {
        /* only for messages: a full disk must not stop a start */
    }
    if (lockfd >= 0) close(lockfd);
    lockfd = lfd;
    fstat(lockfd, &lock_st);
    return 0;
}

/* Is DIR/lock still the file this broker holds locked? (emptying DIR unlinks it: a second
 * broker would then create a new one, lock it and share the directory.) */
static bool lock_is_ours(void)
{
    struct stat st;
    return fstatat(dirfd_, "lock", &st, 0) == 0 && st.st_dev == lock_st.st_dev &&
           st.st_ino == lock_st.st_ino;
}

/* Is st this broker's live log or snapshot (as note_files last saw them)? */
static bool own_file(const struct stat *st)
{
    return (st->st_dev == log_st.st_dev && st->st_ino == log_st.st_ino) ||
           (have_snap && st->st_dev == snap_st.st_dev && st->st_ino == snap_st.st_ino);
}

/* Does the directory open as fd hold a snapshot or a log (with own_ok, other than
 * this broker's own live ones)? */
static bool holds_data(int fd, bool own_ok)
{
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) return true; /* cannot tell: do not write over it */
    rewinddir(d); /* the dup shares fd's offset, which an earlier listing left at the end */
    bool data = false;
    for (struct dirent *e; !data && (e = readdir(d));) {
        if (strcmp(e->d_name, PERSIST_SNAPSHOT) != 0 && strncmp(e->d_name, "log.", 4) != 0)
            continue;
        struct stat st;
        data = !own_ok || fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !own_file(&st);
    }
    closedir(d);
    return data;
}

/* After the directory was removed or replaced: use what is at its path now, if it is
 * ours to use (absent: created; empty of data: taken). 0, or -1 with why set. */
static int directory_again(char *why, size_t whylen)
{
    struct stat st;
    if (stat(g_persist.dir, &st) == 0 && st.st_dev == dir_st.st_dev && st.st_ino == dir_st.st_ino) {
        /* The same directory: only a file went. If that was the lock, lock it again
         * (a broker started on the directory since holds it: then not ours), unless
         * files this broker did not write are there (one that came and went). */
        if (lock_is_ours()) return 0;
        int saved = lockfd;
        struct stat saved_st = lock_st;
        lockfd = -1;
        if (take_lock(dirfd_, why, whylen) < 0) {
            lockfd = saved;
            return -1;
        }
        if (holds_data(dirfd_, true)) {
            snprintf(why, whylen, "%s holds data this broker did not write (another broker "
                     "used it meanwhile): not writing over it (move its files away to let this "
                     "broker store its state there)", g_persist.dir);
            close(lockfd);
            lockfd = saved;
            lock_st = saved_st;
            return -1;
        }
        if (saved >= 0) close(saved);
        return 0;
    }
    if (mkdir(g_persist.dir, 0700) < 0 && errno != EEXIST) {
        snprintf(why, whylen, "cannot create %s again: %s", g_persist.dir, persist_errtext(errno));
        return -1;
    }
    int fd = open(g_persist.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", g_persist.dir, persist_errtext(errno));
        return -1;
    }
    int saved = lockfd;
    struct stat saved_st = lock_st;
    lockfd = -1;
    if (take_lock(fd, why, whylen) < 0) {
        lockfd = saved;
        close(fd);
        return -1;
    }
    if (holds_data(fd, false)) {
        snprintf(why, whylen, "%s was replaced by a directory that holds other data: not "
                 "writing over it (move it away to let this broker store its state there)",
                 g_persist.dir);
        close(lockfd);
        lockfd = saved;
        lock_st = saved_st;
        close(fd);
        return -1;
    }
    if (saved >= 0) close(saved);
    close(dirfd_);
    dirfd_ = fd;
    fstat(dirfd_, &dir_st);
    return 0;
}

static void recover(void)
{
    char why[600];
    if (need_bytes && free_bytes() < need_bytes) {
        next_try = mpb_mono_seconds() + 1; /* quietly: nothing changed */
        return;
    }
    int r = directory_again(why, sizeof why) < 0 ? 0 : new_generation(why, sizeof why);
    if (r <= 0) {
        backoff = backoff * 2 > RETRY_MAX ? RETRY_MAX : backoff * 2;
        next_try = mpb_mono_seconds() + backoff;
        if (strcmp(why, last_try) != 0) {
            snprintf(last_try, sizeof last_try, "%s", why);
            fprintf(stderr, "mpbroker-server: still read-only: %s\n", last_try);
        }
        return;
    }
    failed = false;
    fprintf(stderr, "mpbroker-server: persistence recovered after %.1f s: the whole state is "
            "stored in %s (generation %llu); writes are accepted again\n",
            mpb_mono_seconds() - failed_since, g_persist.dir, (unsigned long long)gen);
    conn_release_held();
}

void persist_try_recover(void)
{
    if (persist_enabled() && failed) recover();
}

/*--- The tick: fsync (everysec), watch, recover ---*/

/* Has the directory, the live log or the snapshot been removed or replaced? */
static void watch(void)
{
    struct stat st;
    if (stat(g_persist.dir, &st) < 0 || st.st_dev != dir_st.st_dev || st.st_ino != dir_st.st_ino) {
        fail("the data directory %s was removed or replaced while in use", g_persist.dir);
        return;
    }
    const char *log = persist_log_name(gen);
    if (fstatat(dirfd_, log, &st, 0) < 0 || st.st_ino != log_st.st_ino) {
        fail("%s/%s was removed or replaced while in use", g_persist.dir, log);
        return;
    }
    if (have_snap && (fstatat(dirfd_, PERSIST_SNAPSHOT, &st, 0) < 0 || st.st_ino != snap_st.st_ino)) {
        fail("%s/%s was removed or replaced while in use", g_persist.dir, PERSIST_SNAPSHOT);
        return;
    }
    if (!lock_is_ours())
        fail("%s/lock was removed or replaced while in use (another broker could take the "
             "directory)", g_persist.dir);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (failed) {
        if (mpb_mono_seconds() >= next_try) recover();
        return;
    }
    if (logbuf.size > 0 && !persist_pending() && !persist_sync()) return; /* version records */
    if (need_fsync && g_persist.fsync == MPB_FSYNC_EVERYSEC) {
        need_fsync = false;
        if (fdatasync(logfd) < 0) {
            char what_[600];
            snprintf(what_, sizeof what_, "fdatasync of %s/%s", g_persist.dir, persist_log_name(gen));
            fail_errno(what_, 0);
            return;
        }
    }
    watch();
}

/*--- Start and stop ---*/

static void die(const char *what, const char *path)
{
    fprintf(stderr, "mpbroker-server: %s %s: %s\n", what, path, persist_errtext(errno));
    exit(1);
}

void persist_open(struct event_base *base)
{
    if (!persist_enabled()) return;
    if (mkdir(g_persist.dir, 0700) < 0 && errno != EEXIST) die("cannot create", g_persist.dir);
    dirfd_ = open(g_persist.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_ < 0) die("cannot open", g_persist.dir);
    char why[600];
    if (take_lock(dirfd_, why, sizeof why) < 0) {
        fprintf(stderr, "mpbroker-server: %s\n", why);
        exit(1);
    }
    /* Its files may be writable while the directory is not: the log would go on, but
     * no compaction and no recovery after a disk failure could ever create a file. */
    int probe = openat(dirfd_, "probe.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (probe < 0 || unlinkat(dirfd_, "probe.tmp", 0) < 0) {
        snprintf(why, sizeof why, "files in %s", g_persist.dir);
        die("cannot create", why);
    }
    close(probe);
    msgpack_sbuffer_init(&logbuf);
    msgpack_packer_init(&logpk, &logbuf, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&effbuf);
    msgpack_packer_init(&effpk, &effbuf, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&batchbuf);
    msgpack_packer_init(&batchpk, &batchbuf, msgpack_sbuffer_write);
    replay.id = UINT64_MAX;
    msgpack_sbuffer_init(&replay.out);
    msgpack_packer_init(&replay.pk, &replay.out, msgpack_sbuffer_write);

    persist_loaded l;
    double t0 = mpb_mono_seconds();
    replaying = true;
    persist_load(dirfd_, g_persist.dir, g_persist.repair, &replay, &l);
    /* Loaded: nothing holds or owns anything now. The semaphore units the replay held
     * are returned, and that is logged (buffered, written before the next write): the
     * log goes on from here, and the next load must replay what follows with these
     * units back, not still held. (--repair writes nothing but its cut.) */
    replaying = g_persist.repair;
    objects_drop_owned(&replay.owned, replay.id);
    objects_drop_holds(&replay.holds);
    objects_collect();
    replaying = false;
    msgpack_sbuffer_destroy(&replay.out);
    gen = l.gen;
    snap_bytes = l.snap_bytes;
    log_bytes = l.log_bytes;
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: loaded %zu object%s from %s (snapshot %zu bytes, "
                "log %zu bytes) in %.3f s\n", objects_count(), objects_count() == 1 ? "" : "s", g_persist.dir, l.snap_bytes,
                l.log_bytes, mpb_mono_seconds() - t0);

    if (l.old_format) { /* format 1: store it as format 2 now */
        msgpack_sbuffer_clear(&logbuf); /* the returns above: in its snapshot */
        int r = new_generation(why, sizeof why);
        if (r <= 0) {
            fprintf(stderr, "mpbroker-server: cannot convert %s to format 2: %s\n",
                    g_persist.dir, why);
            exit(1);
        }
        fprintf(stderr, "mpbroker-server: converted %s to format 2 (generation %llu)\n",
                g_persist.dir, (unsigned long long)gen);
    } else if (l.have_log) {
        logfd = openat(dirfd_, persist_log_name(gen), O_WRONLY | O_APPEND | O_CLOEXEC);
        if (logfd < 0) {
            snprintf(why, sizeof why, "%s/%s", g_persist.dir, persist_log_name(gen));
            die("cannot open for writing", why);
        }
    } else if ((logfd = create_log(gen, &log_bytes, why, sizeof why)) < 0) {
        fprintf(stderr, "mpbroker-server: %s\n", why);
        exit(1);
    }
    note_files();
    tick_ev = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval one = {1, 0};
    event_add(tick_ev, &one);
    compact_ev = event_new(base, -1, 0, on_compact, NULL);
}

bool persist_close(void)
{
    if (!persist_enabled() || logfd < 0) return true;
    bool ok = persist_sync();
    if (ok && fdatasync(logfd) < 0) {
        fail_errno("fdatasync of the log at exit", 0);
        ok = false;
    }
    if (!ok)
        fprintf(stderr, "mpbroker-server: stopping with writes not stored: %s\n", failure);
    close(logfd);
    logfd = -1;
    if (lockfd >= 0) close(lockfd);
    if (dirfd_ >= 0) close(dirfd_);
    msgpack_sbuffer_destroy(&logbuf);
    msgpack_sbuffer_destroy(&effbuf);
    msgpack_sbuffer_destroy(&batchbuf);
    if (tick_ev) event_free(tick_ev);
    if (compact_ev) event_free(compact_ev);
    return ok;
}
