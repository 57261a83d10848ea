/* persist_load.c - start-up: which files of the data directory are live, checking and
 * replaying them, and --repair.
 *
 * The live state is snapshot.mpb (generation G; without one, G is 0) followed by
 * log.G.mpb. Compaction (persist.c) creates log.G+1.mpb before it renames the new
 * snapshot into place, so a live snapshot always has its log: a missing live log is
 * damage, not a crash. Any other log.N.mpb is stale: N < G is already in the
 * snapshot, N > G is a compaction's new log whose snapshot never went live (it holds
 * only its header). *.tmp files are never live.
 *
 * Trust: a snapshot is written whole and synced before it goes live, so any damage in
 * it refuses the start. In the log, damage at the very end that an unfinished write
 * explains (pf_classify) is a torn tail, cut off with a line on stderr: no reply was
 * ever sent for it under --fsync always. Any other damage, a header that does not say
 * what the file name and the snapshot say, or a record that fails when replayed,
 * refuses the start with the file, the byte offset and the way out (--repair, which
 * cuts the log there and keeps what it cut). No record is ever skipped.
 *
 * Format 1 (before checksums: bare msgpack records, a CRC-32 over the whole
 * snapshot) is still read, byte damage refused as above, so that persist.c can
 * convert it to format 2 at once.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mpb_codec.h"
#include "mpb_reader.h"
#include "persist.h"
#include "persist_file.h"
#include "persist_load.h"

static int dfd;
static const char *dirname_;
static bool repair;
static mpb_conn *replay;
static unsigned long v1_failed_calls;

typedef struct loaded {
    char name[64]; /* inside the data directory */
    char *data;
    size_t len;
    int format; /* 1 or 2 */
} loaded;

/* A record's position, for messages. */
typedef struct where {
    const loaded *f;
    size_t at;
    uint64_t index; /* 0: the header */
} where;

const char *persist_log_name(uint64_t gen)
{
    static char name[64];
    snprintf(name, sizeof name, "log.%llu.mpb", (unsigned long long)gen);
    return name;
}

/* Print "mpbroker-server: " and the message, then exit 1: the start is refused. */
__attribute__((format(printf, 1, 2), noreturn)) static void refuse(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mpbroker-server: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* "Permission denied (...)": strerror with what the operator can do about it. */
const char *persist_errtext(int e)
{
    static char buf[200];
    const char *hint = "";
    switch (e) {
    case EACCES:
    case EPERM: hint = " (the data directory and its files must be writable by this user)"; break;
    case EROFS: hint = " (the data directory is on a file system mounted read-only)"; break;
    case ENOSPC: hint = " (the disk is full)"; break;
    case EDQUOT: hint = " (over the disk quota)"; break;
    default: break;
    }
    snprintf(buf, sizeof buf, "%s%s", strerror(e), hint);
    return buf;
}

static bool read_file(const char *name, loaded *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return false;
        refuse("cannot open %s/%s: %s", dirname_, name, persist_errtext(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) refuse("cannot stat %s/%s: %s", dirname_, name, strerror(errno));
    f->len = (size_t)st.st_size;
    f->data = malloc(f->len + 1);
    if (!f->data) refuse("cannot read %s/%s: %s", dirname_, name, strerror(ENOMEM));
    for (size_t got = 0; got < f->len;) {
        ssize_t n = read(fd, f->data + got, f->len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) refuse("cannot read %s/%s: %s", dirname_, name, n ? strerror(errno) : "it shrank");
        got += (size_t)n;
    }
    close(fd);
    /* Format 1 began with a bare msgpack array: fixarray, then the magic string. */
    bool is_log = !strncmp(name, "log.", 4);
    const char *magic = is_log ? "mpbroker-log" : "mpbroker-snapshot";
    size_t ml = strlen(magic);
    f->format = f->len >= 2 + ml && (unsigned char)f->data[0] == (is_log ? 0x93 : 0x94) &&
                        (unsigned char)f->data[1] == (0xa0 | ml) && !memcmp(f->data + 2, magic, ml)
                    ? 1
                    : 2;
    return true;
}

static bool rec_is(const msgpack_object *rec, const char *tag, uint32_t size)
{
    const char *p;
    size_t n;
    return rec->type == MSGPACK_OBJECT_ARRAY && rec->via.array.size == size &&
           mpb_object_bytes(&rec->via.array.ptr[0], &p, &n) && n == strlen(tag) &&
           memcmp(p, tag, n) == 0;
}

static bool is_uint(const msgpack_object *o) { return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER; }

/*--- Cutting (--repair) ---*/

/* Keep f's bytes from `at` on in NAME.cut-AT (a new file, synced), then truncate f
 * there (synced). Exits on failure: a repair that half happened must say so. */
static void cut(const loaded *f, size_t at)
{
    char keep[128];
    int fd = -1;
    for (int n = 1; fd < 0 && n < 100; n++) {
        if (n == 1) snprintf(keep, sizeof keep, "%s.cut-%zu", f->name, at);
        else snprintf(keep, sizeof keep, "%s.cut-%zu.%d", f->name, at, n);
        fd = openat(dfd, keep, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            refuse("--repair: cannot create %s/%s: %s", dirname_, keep, persist_errtext(errno));
    }
    if (fd < 0) refuse("--repair: too many %s/%s.cut-* files", dirname_, f->name);
    if ((f->len > at && pf_write_all(fd, f->data + at, f->len - at, NULL) < 0) || fsync(fd) < 0 || close(fd) < 0 ||
        fsync(dfd) < 0)
        refuse("--repair: cannot write %s/%s: %s (nothing was cut)", dirname_, keep,
               persist_errtext(errno));
    fd = openat(dfd, f->name, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)at) < 0 || fdatasync(fd) < 0)
        refuse("--repair: cannot truncate %s/%s at byte %zu: %s (its tail is saved in %s)",
               dirname_, f->name, at, persist_errtext(errno), keep);
    close(fd);
    fprintf(stderr, "mpbroker-server: --repair: cut %s/%s at byte %zu; the %zu bytes cut off are "
            "in %s/%s\n", dirname_, f->name, at, f->len - at, dirname_, keep);
}

/* The live log is damaged at w (why: what is wrong). Refuse, or cut it there. */
static void log_damaged(const where *w, const char *why)
{
    if (repair) {
        cut(w->f, w->at);
        return;
    }
    refuse("%s/%s is damaged at byte %zu (record %llu: %s): refusing to start; nothing was "
           "changed.\n  To start from the %llu records before the damage, run once:\n"
           "    mpbroker-server --data-dir %s --repair\n"
           "  It cuts the log at byte %zu and keeps the %zu bytes cut off in %s/%s.cut-%zu.",
           dirname_, w->f->name, w->at, (unsigned long long)w->index, why,
           (unsigned long long)(w->index ? w->index - 1 : 0), dirname_, w->at,
           w->f->len - w->at, dirname_, w->f->name, w->at);
}

/* The live log has no header (why: what is there instead). Refuse, or with --repair
 * keep its bytes and let persist.c give it a new one. */
static void no_header(const loaded *f, const char *why)
{
    if (repair) {
        cut(f, 0);
        return;
    }
    refuse("%s/%s has no valid header (%zu bytes; %s): refusing to start. A log is created "
           "with its header synced, so this is damage. To start from the snapshot alone, run "
           "once:\n    mpbroker-server --data-dir %s --repair\n"
           "  which keeps the log's bytes in %s/%s.cut-0 and gives it a new header.", dirname_,
           f->name, f->len, why, dirname_, dirname_, f->name);
}

/*--- Replaying one record ---*/

/* Create object ID of TYPEID with NAME (nil: anonymous), held by the replay; a
 * snapshot's obj record may carry its VERSION (f[4]). */
static mpb_object *load_obj(const msgpack_object *f, uint32_t size)
{
    const char *tp, *np = NULL;
    size_t tn, nn = 0;
    int variant;
    if (!is_uint(&f[1]) || !mpb_object_bytes(&f[2], &tp, &tn)) return NULL;
    mpb_otype t = mpb_typeid_lookup(tp, tn, &variant);
    if (t == MPB_OT_NONE) return NULL;
    if (f[3].type != MSGPACK_OBJECT_NIL && !mpb_object_bytes(&f[3], &np, &nn)) return NULL;
    if (objects_get(f[1].via.u64)) return NULL; /* an id twice */
    if (size > 4 && !is_uint(&f[4])) return NULL;
    mpb_object *o = objects_create_id(t, variant, np, nn, f[1].via.u64);
    if (o) objects_hold(&replay->holds, o);
    if (o && size > 4) o->version = f[4].via.u64;
    return o;
}

/* Run an object's init_from on INITIAL, as manager.create would. */
static bool load_fill(mpb_object *o, const msgpack_object *initial)
{
    mpb_req r = {.conn = replay, .method = MPB_M_MANAGER_CREATE,
                 .info = &mpb_methods[MPB_M_MANAGER_CREATE], .args = initial, .nargs = 1};
    bool ok = manager_init_object(&r, o, 0);
    msgpack_sbuffer_clear(&replay->out);
    return ok;
}

/* Replay ["call", METHOD, PARAMS]. NULL when it worked, else why not (static). */
static const char *load_call(const msgpack_object *f)
{
    static char why[300];
    const char *mp;
    size_t mn;
    int id = mpb_object_bytes(&f[1], &mp, &mn) ? mpb_method_lookup(mp, mn) : -1;
    if (id < 0) return "a call of an unknown method";
    if (f[2].type != MSGPACK_OBJECT_ARRAY) return "a call whose params are not an array";
    mpb_req r = {.conn = replay, .method = id, .info = &mpb_methods[id]};
    dispatch_run(&r, &f[2]);
    const char *res = NULL;
    if (r.failed) {
        /* The reply is [1, MSGID, [KIND, MESSAGE], nil]: say its kind and message. */
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        const char *kind = "?", *msg = "";
        size_t kl = 1, ml = 0;
        if (msgpack_unpack_next(&u, replay->out.data, replay->out.size, NULL) ==
                MSGPACK_UNPACK_SUCCESS &&
            u.data.type == MSGPACK_OBJECT_ARRAY && u.data.via.array.size == 4) {
            const msgpack_object *e = &u.data.via.array.ptr[2];
            if (e->type == MSGPACK_OBJECT_ARRAY && e->via.array.size == 2) {
                mpb_object_bytes(&e->via.array.ptr[0], &kind, &kl);
                mpb_object_bytes(&e->via.array.ptr[1], &msg, &ml);
            }
        }
        snprintf(why, sizeof why, "%s fails when replayed: %.*s: %.*s", r.info->name, (int)kl,
                 kind, (int)(ml > 200 ? 200 : ml), msg);
        msgpack_unpacked_destroy(&u);
        res = why;
    }
    msgpack_sbuffer_clear(&replay->out);
    objects_collect();
    return res;
}

/* Replay ["batch", OPS]: each [METHOD, PARAMS] as a call, in order. The record is
 * whole (its checksum says so), so the batch is all there. */
static const char *load_batch(const msgpack_object *ops)
{
    if (ops->type != MSGPACK_OBJECT_ARRAY) return "a batch record that makes no sense";
    for (uint32_t i = 0; i < ops->via.array.size; i++) {
        const msgpack_object *op = &ops->via.array.ptr[i];
        if (op->type != MSGPACK_OBJECT_ARRAY || op->via.array.size != 2)
            return "a batch record that makes no sense";
        msgpack_object f[3] = {{.type = MSGPACK_OBJECT_NIL}, op->via.array.ptr[0],
                               op->via.array.ptr[1]};
        const char *why = load_call(f);
        if (why) return why;
    }
    return NULL;
}

/* Apply one record after the header. NULL when it worked, else what is wrong. */
static const char *apply(const msgpack_object *rec, bool snapshot)
{
    const msgpack_object *f = rec->via.array.ptr;
    if (snapshot && (rec_is(rec, "obj", 4) || rec_is(rec, "obj", 5)))
        return load_obj(f, rec->via.array.size) ? NULL : "an object record that makes no sense";
    if (snapshot && rec_is(rec, "fill", 3)) {
        mpb_object *o = is_uint(&f[1]) ? objects_get(f[1].via.u64) : NULL;
        return o && load_fill(o, &f[2]) ? NULL : "a fill record that makes no sense";
    }
    if (!snapshot && rec_is(rec, "create", 5)) {
        mpb_object *o = load_obj(f, 4);
        if (!o) return "a create record that makes no sense";
        return load_fill(o, &f[4]) ? NULL : "a create whose initial value fails when replayed";
    }
    if (snapshot && rec_is(rec, "call", 3)) {
        /* A queue's items: they rebuild its state, they are not writes (the obj
         * record gave its version). */
        mpb_ref ref;
        mpb_object *o = f[2].type == MSGPACK_OBJECT_ARRAY && f[2].via.array.size > 0 &&
                                mpb_object_is_ref(&f[2].via.array.ptr[0], &ref)
                            ? objects_get(ref) : NULL;
        uint64_t v = o ? o->version : 0;
        const char *why = load_call(f);
        if (o) o->version = v;
        return why;
    }
    if (rec_is(rec, "call", 3)) return load_call(f);
    if (!snapshot && rec_is(rec, "batch", 2)) return load_batch(&f[1]);
    if (!snapshot && rec_is(rec, "version", 3)) {
        /* A write that is not logged moved a version on (lock.acquire): never back. */
        if (!is_uint(&f[1]) || !is_uint(&f[2])) return "a version record that makes no sense";
        mpb_object *o = objects_get(f[1].via.u64);
        if (o && o->version < f[2].via.u64) o->version = f[2].via.u64;
        return NULL;
    }
    return "a record of no known kind";
}

/*--- Headers ---*/

/* Check a header record: [MAGIC, FORMAT, GEN] (a log) or [MAGIC, FORMAT, GEN,
 * NEXT_ID] (a snapshot). Refuses unless it says what it must. */
static void check_header(const loaded *f, const msgpack_object *rec, bool snapshot,
                         bool gen_known, uint64_t *gen)
{
    const char *magic = snapshot ? "mpbroker-snapshot" : "mpbroker-log";
    const msgpack_object *h = rec->via.array.ptr;
    if (rec->via.array.size >= 2 && is_uint(&h[1]) && h[1].via.u64 > PERSIST_FORMAT)
        refuse("%s/%s is in format %llu, written by a newer mpbroker (this one reads formats 1 "
               "and %d); refusing to start", dirname_, f->name, (unsigned long long)h[1].via.u64,
               PERSIST_FORMAT);
    if (!rec_is(rec, magic, snapshot ? 4 : 3) || !is_uint(&h[1]) || !is_uint(&h[2]) ||
        (snapshot && !is_uint(&h[3]))) {
        refuse("%s/%s does not begin with an mpbroker %s header; refusing to start", dirname_,
               f->name, snapshot ? "snapshot" : "log");
    }
    if (h[1].via.u64 != (uint64_t)f->format)
        refuse("%s/%s says it is in format %llu but is laid out in format %d; refusing to start",
               dirname_, f->name, (unsigned long long)h[1].via.u64, f->format);
    if (gen_known && h[2].via.u64 != *gen)
        refuse("%s/%s says it is generation %llu, but %s; refusing to start (the directory "
               "mixes files of different states)", dirname_, f->name,
               (unsigned long long)h[2].via.u64,
               snapshot ? "its name says otherwise"
                        : *gen ? "the snapshot is of another generation" : "there is no snapshot");
    *gen = h[2].via.u64;
    if (snapshot) objects_bump_next_id(h[3].via.u64);
}

/*--- Format 2 ---*/

/* Replay the records of f. A snapshot must be whole; a log may end in a torn tail.
 * Returns where the good records end. */
static size_t replay_v2(loaded *f, bool snapshot, uint64_t *gen)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1 << 16);
    where w = {.f = f};
    uint64_t next_id = 0;
    bool ended = false;
    while (w.at < f->len) {
        const char *body;
        uint32_t blen;
        size_t size;
        pf_status st = pf_check(f->data + w.at, f->len - w.at, &body, &blen, &size);
        if (st != PF_OK) {
            pf_damage d;
            pf_classify(f->data, f->len, w.at, st, &d);
            char why[300];
            if (d.resume)
                snprintf(why, sizeof why, "%s; %zu good record%s follow%s from byte %zu, so it is "
                         "not a torn tail", pf_status_text(st), d.good_after,
                         d.good_after == 1 ? "" : "s", d.good_after == 1 ? "s" : "", d.resume);
            else if (d.zeros_on_block)
                snprintf(why, sizeof why, "%s: only zeros from there on, and byte %zu begins a "
                         "disk block: a lost block, which may have held acknowledged records, "
                         "looks the same", pf_status_text(st), w.at);
            else if (d.zeros_after)
                snprintf(why, sizeof why, "%s: its end is zeros, and %zu more zero bytes follow "
                         "it, so it is not the last record written: it may have been "
                         "acknowledged", pf_status_text(st), d.zeros_after);
            else
                snprintf(why, sizeof why, "%s%s", pf_status_text(st),
                         d.torn ? "" : ", and not as a write that did not finish would leave it");
            if (snapshot)
                refuse("%s/%s is damaged at byte %zu (record %llu: %s): refusing to start. A "
                       "snapshot is written whole, so this is not a crash: restore it from a "
                       "backup, or move the directory's files away to start empty.", dirname_,
                       f->name, w.at, (unsigned long long)w.index, why);
            if (w.index == 0) {
                no_header(f, why);
                break;
            }
            if (d.torn && w.index > 0) {
                fprintf(stderr, "mpbroker-server: %s/%s ends in a torn record at byte %zu "
                        "(%s: a write that did not reach the disk, after a crash or a disk "
                        "failure); cutting the %zu bytes from there\n", dirname_, f->name,
                        w.at, pf_status_text(st), f->len - w.at);
                break;
            }
            log_damaged(&w, why);
            break;
        }
        msgpack_object rec;
        size_t used = 0;
        msgpack_zone_clear(&zone);
        if (msgpack_unpack(body, blen, &used, &zone, &rec) != MSGPACK_UNPACK_SUCCESS ||
            rec.type != MSGPACK_OBJECT_ARRAY || rec.via.array.size == 0) {
            if (snapshot || w.index == 0)
                refuse("%s/%s: record %llu at byte %zu checks out but does not decode; refusing "
                       "to start", dirname_, f->name, (unsigned long long)w.index, w.at);
            log_damaged(&w, "its checksum matches but it does not decode");
            break;
        }
        if (w.index == 0) {
            check_header(f, &rec, snapshot, !snapshot, gen);
            if (snapshot) next_id = rec.via.array.ptr[3].via.u64;
        } else if (ended) {
            refuse("%s/%s has records after its end record (byte %zu); refusing to start",
                   dirname_, f->name, w.at);
        } else if (snapshot && rec_is(&rec, "end", 2)) {
            const msgpack_object *e = rec.via.array.ptr;
            if (!is_uint(&e[1]) || e[1].via.u64 != w.index)
                refuse("%s/%s: its end record (byte %zu) counts %llu records, not %llu; refusing "
                       "to start", dirname_, f->name, w.at, (unsigned long long)e[1].via.u64,
                       (unsigned long long)w.index);
            ended = true;
        } else {
            const char *why = apply(&rec, snapshot);
            if (why && snapshot)
                refuse("%s/%s: record %llu at byte %zu: %s; refusing to start", dirname_, f->name,
                       (unsigned long long)w.index, w.at, why);
            if (why) {
                log_damaged(&w, why);
                break;
            }
        }
        w.index++;
        w.at += size;
    }
    msgpack_zone_destroy(&zone);
    if (w.index == 0 && f->len == 0) {
        if (snapshot)
            refuse("%s/%s is empty: refusing to start. A snapshot is written whole, so this is "
                   "not a crash: restore it from a backup, or move the directory's files away "
                   "to start empty.", dirname_, f->name);
        no_header(f, "the file is empty");
    }
    if (snapshot && !ended)
        refuse("%s/%s has no end record (%zu bytes): it is incomplete; refusing to start",
               dirname_, f->name, f->len);
    if (snapshot && objects_peek_next_id() > next_id)
        refuse("%s/%s holds an object id past the next id its header gives (%llu); refusing to "
               "start", dirname_, f->name, (unsigned long long)next_id);
    return w.at;
}

/*--- Format 1 (read once, then converted) ---*/

static size_t replay_v1(loaded *f, bool snapshot, uint64_t *gen, bool *end_ok)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1 << 16);
    where w = {.f = f};
    *end_ok = false;
    while (w.at < f->len) {
        size_t size;
        mpb_read_status st = mpb_scan(f->data + w.at, f->len - w.at, (size_t)1 << 40,
                                      MPB_READER_MAX_DEPTH, &size);
        if (st == MPB_READ_NEED && !snapshot && w.index > 0) {
            fprintf(stderr, "mpbroker-server: %s/%s (format 1) ends in an incomplete record at "
                    "byte %zu; leaving its %zu bytes out\n", dirname_, f->name, w.at,
                    f->len - w.at);
            break;
        }
        msgpack_object rec;
        size_t used = 0;
        msgpack_zone_clear(&zone);
        if (st != MPB_READ_MSG || msgpack_unpack(f->data + w.at, size, &used, &zone, &rec) < 0 ||
            rec.type != MSGPACK_OBJECT_ARRAY || rec.via.array.size == 0) {
            if (snapshot || w.index == 0)
                refuse("%s/%s (format 1) is damaged at byte %zu; refusing to start", dirname_,
                       f->name, w.at);
            log_damaged(&w, "format 1 bytes that do not decode");
            break;
        }
        if (w.index == 0) {
            check_header(f, &rec, snapshot, !snapshot, gen);
        } else if (snapshot && rec_is(&rec, "end", 3)) {
            const msgpack_object *e = rec.via.array.ptr;
            uLong crc = crc32(crc32(0, NULL, 0), (const Bytef *)f->data, (uInt)w.at);
            *end_ok = e[1].via.u64 == w.index && e[2].via.u64 == (uint32_t)crc;
            w.at += size;
            break;
        } else {
            const char *why = apply(&rec, snapshot);
            /* Format 1 logs were written by brokers that logged some effects before their
             * cause (issue 18, bug 4): such calls fail here, as they always did. */
            if (why && !snapshot && rec_is(&rec, "call", 3)) {
                if (v1_failed_calls++ < 5)
                    fprintf(stderr, "mpbroker-server: warning: %s/%s (format 1) record %llu: "
                            "%s\n", dirname_, f->name, (unsigned long long)w.index, why);
            } else if (why) {
                refuse("%s/%s (format 1): record %llu at byte %zu: %s; refusing to start",
                       dirname_, f->name, (unsigned long long)w.index, w.at, why);
            }
        }
        w.index++;
        w.at += size;
    }
    msgpack_zone_destroy(&zone);
    if (snapshot && !*end_ok)
        refuse("%s/%s (format 1) is corrupted or incomplete (checksum); refusing to start",
               dirname_, f->name);
    return w.at;
}

/*--- The directory ---*/

static void remove_temporaries(void)
{
    static const char *const tmp[] = {PERSIST_SNAPSHOT_TMP, PERSIST_LOG_TMP};
    for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) {
        struct stat st;
        if (fstatat(dfd, tmp[i], &st, 0) < 0) continue;
        if (unlinkat(dfd, tmp[i], 0) < 0)
            refuse("cannot remove the stale %s/%s: %s", dirname_, tmp[i], persist_errtext(errno));
        fprintf(stderr, "mpbroker-server: removed %s/%s (%lld bytes), left by a compaction "
                "that did not finish\n", dirname_, tmp[i], (long long)st.st_size);
    }
}

/* Generations of the log.N.mpb files, into gens (up to max); returns how many. */
static size_t list_logs(uint64_t *gens, size_t max)
{
    int fd = dup(dfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) refuse("cannot list %s: %s", dirname_, persist_errtext(errno));
    rewinddir(d); /* the dup shares dfd's offset */
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long g;
        int end = 0;
        if (sscanf(e->d_name, "log.%llu.mpb%n", &g, &end) == 1 && e->d_name[end] == '\0' &&
            strcmp(e->d_name, persist_log_name(g)) == 0) {
            if (n == max) refuse("%s holds more than %zu log files; refusing to start", dirname_, max);
            gens[n++] = g;
        }
    }
    closedir(d);
    return n;
}

/* Remove log.N.mpb for every N but the live one: older ones are in the snapshot,
 * newer ones hold only their header (refused otherwise). */
static void remove_stale_logs(const uint64_t *gens, size_t n, uint64_t live)
{
    for (size_t i = 0; i < n; i++) {
        if (gens[i] == live) continue;
        const char *name = persist_log_name(gens[i]);
        if (gens[i] > live) {
            loaded f;
            read_file(name, &f);
            const char *b;
            uint32_t bl;
            size_t size;
            bool header_only = f.format == 2 && pf_check(f.data, f.len, &b, &bl, &size) == PF_OK &&
                               size == f.len;
            free(f.data);
            if (!header_only)
                refuse("%s/%s is newer than the snapshot (generation %llu) and holds records; "
                       "refusing to start (the directory mixes files of different states)",
                       dirname_, name, (unsigned long long)live);
        }
        if (unlinkat(dfd, name, 0) < 0)
            fprintf(stderr, "mpbroker-server: warning: cannot remove the stale %s/%s: %s\n",
                    dirname_, name, strerror(errno));
    }
}

void persist_load(int dirfd, const char *dir, bool do_repair, mpb_conn *replay_conn,
                  persist_loaded *out)
{
    dfd = dirfd;
    dirname_ = dir;
    repair = do_repair;
    replay = replay_conn;
    memset(out, 0, sizeof *out);
    remove_temporaries();
    uint64_t gens[256];
    size_t ngens = list_logs(gens, sizeof gens / sizeof *gens);

    loaded f;
    bool end_ok;
    if (read_file(PERSIST_SNAPSHOT, &f)) {
        out->have_snapshot = true;
        out->old_format = f.format == 1;
        if (f.format == 1) replay_v1(&f, true, &out->gen, &end_ok);
        else replay_v2(&f, true, &out->gen);
        out->snap_bytes = f.len;
        free(f.data);
    }
    const char *live = persist_log_name(out->gen);
    if (read_file(live, &f)) {
        out->have_log = true;
        if (out->have_snapshot && f.format != 1 + !out->old_format)
            refuse("%s/%s is in format %d but %s/%s in format %d; refusing to start", dirname_,
                   f.name, f.format, dirname_, PERSIST_SNAPSHOT, 1 + !out->old_format);
        out->old_format = f.format == 1;
        uint64_t g = out->gen;
        size_t good = f.format == 1 ? replay_v1(&f, false, &g, &end_ok) : replay_v2(&f, false, &g);
        if (good == 0) { /* --repair of a header-less log (no_header): a new one follows */
            out->have_log = false;
            if (unlinkat(dfd, live, 0) < 0)
                refuse("--repair: cannot remove %s/%s: %s", dirname_, live, persist_errtext(errno));
        } else if (good < f.len && f.format == 2) {
            int fd = openat(dfd, live, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ftruncate(fd, (off_t)good) < 0 || fdatasync(fd) < 0)
                refuse("cannot cut %s/%s at byte %zu: %s", dirname_, live, good,
                       persist_errtext(errno));
            close(fd);
        }
        out->log_bytes = good;
        free(f.data);
    } else if (out->have_snapshot || ngens > 0) {
        if (!repair)
            refuse("%s/%s is missing, though the directory holds %s: refusing to start (the "
                   "changes since the snapshot would be lost in silence). To start from the "
                   "snapshot alone, run once:\n    mpbroker-server --data-dir %s --repair",
                   dirname_, live, out->have_snapshot ? "a snapshot of its generation" : "other logs",
                   dirname_);
        fprintf(stderr, "mpbroker-server: --repair: %s/%s is missing; starting a new one\n",
                dirname_, live);
    }
    if (v1_failed_calls)
        fprintf(stderr, "mpbroker-server: warning: %lu format-1 logged calls did not replay\n",
                v1_failed_calls);
    remove_stale_logs(gens, ngens, out->gen);
}
