/* persist.c - the append-only log, snapshots, compaction and start-up replay.
 *
 * Files in the data directory:
 *   snapshot.mpb   ["mpbroker-snapshot", 1, GEN, NEXT_ID], then ["obj", ID, TYPEID,
 *                  NAME|nil] for every object, then ["fill", ID, INITIAL] for each, then
 *                  ["end", RECORDS, CRC32 of every byte before this record]. Written to
 *                  snapshot.tmp, fsynced, renamed: it is whole or absent.
 *   log.GEN.mpb    ["mpbroker-log", 1, GEN], then records appended as changes happen:
 *                  ["create", ID, TYPEID, NAME|nil, INITIAL|nil] and
 *                  ["call", METHOD, PARAMS]. Replayed after the snapshot of the same GEN.
 *   lock           flock()ed while a broker uses the directory.
 * Two passes (obj, then fill) let objects refer to each other in any order, cycles
 * included. Records are msgpack, so a log cut short by a crash ends in an incomplete
 * record: it is truncated to the last whole one, with a warning. A snapshot that does
 * not check out refuses the start: silently starting empty would lose everything.
 *
 * Replay runs every record through the real handlers on a private connection that
 * holds every object while loading; its holds and ownerships are dropped at the end,
 * which frees anonymous objects nothing contains, and returns semaphore units.
 * Compaction runs in the loop (no fork): it is synchronous, so no write can slip
 * between the snapshot and the new log.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mpb_codec.h"
#include "persist.h"

mpb_persist_config g_persist = {.fsync = MPB_FSYNC_EVERYSEC, .compact_min = 64u << 20};
size_t g_persist_buffered;

static msgpack_sbuffer logbuf;
static msgpack_packer logpk;
/* Effects of the call being served (a parked get served by a put): they go into the
 * log after the call, which replay must run first (see persist_call_begin). */
static msgpack_sbuffer effbuf;
static msgpack_packer effpk;
static int in_call;
static int logfd = -1, dirfd_ = -1;
static uint64_t gen;
static size_t log_bytes, snap_bytes;
static bool need_fsync, replaying;
static struct event *fsync_timer, *compact_ev;
static mpb_conn replay;

#define RECORD_MAX ((size_t)1 << 40) /* the scanner's size cap: files are trusted sizes */

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "mpbroker-server: ");
    fprintf(stderr, fmt, arg, strerror(errno));
    fprintf(stderr, "\n");
    exit(1);
}

static char *path_in(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", g_persist.dir, name);
    return buf;
}

static char *log_name(uint64_t g)
{
    static char name[64];
    snprintf(name, sizeof name, "log.%llu.mpb", (unsigned long long)g);
    return name;
}

bool persist_is_replay(const mpb_conn *c) { return c == &replay; }

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/*--- Logging ---*/

static void logged(void) { g_persist_buffered = logbuf.size; }

void persist_log_call(const char *method, const msgpack_object *params)
{
    if (replaying) return;
    msgpack_pack_array(&logpk, 3);
    pack_str(&logpk, "call");
    pack_str(&logpk, method);
    msgpack_pack_object(&logpk, *params);
    logged();
}

void persist_log_effect(const char *method, const mpb_value *args, size_t n)
{
    if (!persist_enabled() || replaying) return;
    msgpack_packer *pk = in_call ? &effpk : &logpk;
    msgpack_pack_array(pk, 3);
    pack_str(pk, "call");
    pack_str(pk, method);
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) mpb_value_pack(pk, &args[i]);
    logged();
}

void persist_call_begin(void) { in_call++; }

void persist_call_end(void)
{
    if (--in_call > 0 || effbuf.size == 0) return;
    msgpack_sbuffer_write(&logbuf, effbuf.data, effbuf.size);
    msgpack_sbuffer_clear(&effbuf);
    logged();
}

void persist_log_create(const mpb_object *o, const msgpack_object *initial)
{
    if (!persist_enabled() || replaying) return;
    msgpack_pack_array(&logpk, 5);
    pack_str(&logpk, "create");
    msgpack_pack_uint64(&logpk, o->id);
    pack_str(&logpk, objects_typeid(o));
    if (o->name) pack_str(&logpk, o->name);
    else msgpack_pack_nil(&logpk);
    if (initial) msgpack_pack_object(&logpk, *initial);
    else msgpack_pack_nil(&logpk);
    logged();
}

static void write_all(int fd, const char *p, size_t n, const char *what)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        /* A write we cannot log must not be acknowledged: stop rather than lie. */
        if (w < 0) die("cannot write %s: %s", what);
        p += w;
        n -= (size_t)w;
    }
}

void persist_sync(void)
{
    if (logbuf.size == 0) return;
    write_all(logfd, logbuf.data, logbuf.size, "the log");
    log_bytes += logbuf.size;
    msgpack_sbuffer_clear(&logbuf);
    g_persist_buffered = 0;
    if (g_persist.fsync == MPB_FSYNC_ALWAYS) fdatasync(logfd);
    else need_fsync = true;
    if (log_bytes > g_persist.compact_min && log_bytes > 2 * snap_bytes && compact_ev)
        event_active(compact_ev, EV_TIMEOUT, 0);
}

static void on_fsync_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (need_fsync && g_persist.fsync == MPB_FSYNC_EVERYSEC) fdatasync(logfd);
    need_fsync = false;
}

/*--- Snapshots ---*/

/* A streaming writer that checksums what it writes. */
typedef struct snapw {
    int fd;
    uLong crc;
    size_t bytes;
    char buf[1 << 16];
    size_t len;
} snapw;

static int snap_write(void *data, const char *p, size_t n)
{
    snapw *w = data;
    w->crc = crc32(w->crc, (const Bytef *)p, (uInt)n);
    w->bytes += n;
    if (w->len + n > sizeof w->buf) {
        write_all(w->fd, w->buf, w->len, "the snapshot");
        w->len = 0;
    }
    if (n > sizeof w->buf) write_all(w->fd, p, n, "the snapshot");
    else memcpy(w->buf + w->len, p, n), w->len += n;
    return 0;
}

static void dump_state(const mpb_object *o, msgpack_packer *pk)
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
    default: msgpack_pack_nil(pk); return; /* lock: ownership is not persisted */
    }
}

/* Write snapshot.mpb for generation g. Returns its size. */
static size_t write_snapshot(uint64_t g)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path_in("snapshot.tmp"));
    snapw *w = calloc(1, sizeof *w);
    if (!w) die("cannot write %s: %s", "the snapshot"); /* errno: ENOMEM */
    w->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) die("cannot create %s: %s", tmp);
    w->crc = crc32(0, NULL, 0);
    msgpack_packer pk;
    msgpack_packer_init(&pk, w, snap_write);
    msgpack_pack_array(&pk, 4);
    pack_str(&pk, "mpbroker-snapshot");
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint64(&pk, g);
    msgpack_pack_uint64(&pk, objects_peek_next_id());
    uint64_t records = 1;
    size_t it = 0;
    mpb_object *o;
    while (objects_next(&it, &o)) {
        msgpack_pack_array(&pk, 4);
        pack_str(&pk, "obj");
        msgpack_pack_uint64(&pk, o->id);
        pack_str(&pk, objects_typeid(o));
        if (o->name) pack_str(&pk, o->name);
        else msgpack_pack_nil(&pk);
        records++;
    }
    for (it = 0; objects_next(&it, &o); records++) {
        msgpack_pack_array(&pk, 3);
        pack_str(&pk, "fill");
        msgpack_pack_uint64(&pk, o->id);
        dump_state(o, &pk);
    }
    for (it = 0; objects_next(&it, &o);)
        if (o->type == MPB_OT_QUEUE) records += queue_dump_items(o, &pk);
    uLong crc = w->crc;
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "end");
    msgpack_pack_uint64(&pk, records);
    msgpack_pack_uint32(&pk, (uint32_t)crc);
    write_all(w->fd, w->buf, w->len, "the snapshot");
    if (fsync(w->fd) < 0 || close(w->fd) < 0) die("cannot write %s: %s", tmp);
    if (rename(tmp, path_in("snapshot.mpb")) < 0) die("cannot rename %s: %s", tmp);
    fsync(dirfd_);
    size_t bytes = w->bytes;
    free(w);
    return bytes;
}

/* Start log.g.mpb (truncating), replacing the open log. */
static void open_new_log(uint64_t g)
{
    int fd = open(path_in(log_name(g)), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) die("cannot create %s: %s", path_in(log_name(g)));
    msgpack_sbuffer hdr;
    msgpack_packer pk;
    msgpack_sbuffer_init(&hdr);
    msgpack_packer_init(&pk, &hdr, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "mpbroker-log");
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint64(&pk, g);
    write_all(fd, hdr.data, hdr.size, "the log");
    fdatasync(fd);
    fsync(dirfd_);
    log_bytes = hdr.size;
    msgpack_sbuffer_destroy(&hdr);
    if (logfd >= 0) close(logfd);
    logfd = fd;
}

static void compact(void)
{
    persist_sync();
    snap_bytes = write_snapshot(gen + 1);
    uint64_t old = gen++;
    open_new_log(gen);
    unlink(path_in(log_name(old)));
}

static void on_compact(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    compact();
}

/*--- Loading ---*/

typedef struct loaded {
    char *data;
    size_t len;
} loaded;

static bool read_file(const char *path, loaded *f)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return false;
        die("cannot open %s: %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) die("cannot stat %s: %s", path);
    f->len = (size_t)st.st_size;
    f->data = malloc(f->len + 1);
    if (!f->data) die("cannot read %s: %s", path); /* errno: ENOMEM */
    size_t got = 0;
    while (got < f->len) {
        ssize_t n = read(fd, f->data + got, f->len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("cannot read %s: %s", path);
        got += (size_t)n;
    }
    close(fd);
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

static unsigned long replay_errors;

/* Create object ID of TYPEID with NAME (nil: anonymous), held by the replay. */
static mpb_object *load_obj(const msgpack_object *f)
{
    const char *tp, *np = NULL;
    size_t tn, nn = 0;
    int variant;
    if (f[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || !mpb_object_bytes(&f[2], &tp, &tn))
        return NULL;
    mpb_otype t = mpb_typeid_lookup(tp, tn, &variant);
    if (t == MPB_OT_NONE) return NULL;
    if (f[3].type != MSGPACK_OBJECT_NIL && !mpb_object_bytes(&f[3], &np, &nn)) return NULL;
    mpb_object *o = objects_create_id(t, variant, np, nn, f[1].via.u64);
    if (o) objects_hold(&replay.holds, o);
    return o;
}

/* Run an object's init_from on INITIAL, as manager.create would. */
static bool load_fill(mpb_object *o, const msgpack_object *initial)
{
    mpb_req r = {.conn = &replay, .method = MPB_M_MANAGER_CREATE,
                 .info = &mpb_methods[MPB_M_MANAGER_CREATE], .args = initial, .nargs = 1};
    bool ok = manager_init_object(&r, o, 0);
    msgpack_sbuffer_clear(&replay.out);
    return ok;
}

static void load_call(const msgpack_object *f)
{
    const char *mp;
    size_t mn;
    int id = mpb_object_bytes(&f[1], &mp, &mn) ? mpb_method_lookup(mp, mn) : -1;
    if (id < 0 || f[2].type != MSGPACK_OBJECT_ARRAY) {
        replay_errors++;
        return;
    }
    mpb_req r = {.conn = &replay, .method = id, .info = &mpb_methods[id]};
    dispatch_run(&r, &f[2]);
    if (r.failed && replay_errors++ < 5)
        fprintf(stderr, "mpbroker-server: warning: replaying %s failed: %.*s\n", r.info->name,
                (int)(replay.out.size > 200 ? 200 : replay.out.size), replay.out.data);
    msgpack_sbuffer_clear(&replay.out);
    objects_collect();
}

/* Apply one record; false when it makes no sense (corruption). */
static bool apply(const msgpack_object *rec, bool snapshot)
{
    const msgpack_object *f = rec->via.array.ptr;
    if (snapshot && rec_is(rec, "obj", 4)) return load_obj(f) != NULL;
    if (snapshot && rec_is(rec, "fill", 3)) {
        mpb_object *o = f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER ? objects_get(f[1].via.u64) : NULL;
        return o && load_fill(o, &f[2]);
    }
    if (!snapshot && rec_is(rec, "create", 5)) {
        mpb_object *o = load_obj(f);
        if (o && !load_fill(o, &f[4])) replay_errors++;
        return o != NULL;
    }
    if (rec_is(rec, "call", 3)) {
        load_call(f);
        return true;
    }
    return false;
}

/* Read records from f; returns the offset after the last whole record. Sets *end_ok
 * when a snapshot's "end" record checked out. */
static size_t load_records(const char *path, loaded *f, bool snapshot, uint64_t *g, bool *end_ok)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1 << 16);
    size_t off = 0;
    uint64_t records = 0;
    *end_ok = false;
    while (off < f->len) {
        size_t size;
        mpb_read_status st = mpb_scan(f->data + off, f->len - off, RECORD_MAX,
                                      MPB_READER_MAX_DEPTH, &size);
        if (st == MPB_READ_NEED) break; /* a torn tail */
        msgpack_object rec;
        size_t used = 0;
        msgpack_zone_clear(&zone);
        if (st != MPB_READ_MSG ||
            msgpack_unpack(f->data + off, size, &used, &zone, &rec) < 0 ||
            rec.type != MSGPACK_OBJECT_ARRAY || rec.via.array.size == 0) {
            fprintf(stderr, "mpbroker-server: %s is corrupted at byte %zu; refusing to start "
                    "(move it away to start without it)\n", path, off);
            exit(1);
        }
        const msgpack_object *fl = rec.via.array.ptr;
        if (records == 0) { /* the header */
            const char *want = snapshot ? "mpbroker-snapshot" : "mpbroker-log";
            if (!rec_is(&rec, want, snapshot ? 4 : 3) || fl[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                fprintf(stderr, "mpbroker-server: %s is not an mpbroker %s; refusing to start\n",
                        path, snapshot ? "snapshot" : "log");
                exit(1);
            }
            *g = fl[2].via.u64;
            if (snapshot) objects_bump_next_id(fl[3].via.u64);
        } else if (snapshot && rec_is(&rec, "end", 3)) {
            uLong crc = crc32(crc32(0, NULL, 0), (const Bytef *)f->data, (uInt)off);
            *end_ok = fl[1].via.u64 == records && fl[2].via.u64 == (uint32_t)crc;
            off += size;
            break;
        } else if (!apply(&rec, snapshot)) {
            fprintf(stderr, "mpbroker-server: %s: record %llu at byte %zu makes no sense; "
                    "refusing to start\n", path, (unsigned long long)records, off);
            exit(1);
        }
        records++;
        off += size;
    }
    msgpack_zone_destroy(&zone);
    return off;
}

static void load(void)
{
    loaded f;
    uint64_t g = 0;
    bool end_ok;
    replaying = true;
    if (read_file(path_in("snapshot.mpb"), &f)) {
        load_records(path_in("snapshot.mpb"), &f, true, &g, &end_ok);
        free(f.data);
        if (!end_ok) {
            fprintf(stderr, "mpbroker-server: %s is corrupted or incomplete (checksum); "
                    "refusing to start (move it away to start without it)\n", path_in("snapshot.mpb"));
            exit(1);
        }
        snap_bytes = f.len;
    }
    gen = g;
    char lp[4096];
    snprintf(lp, sizeof lp, "%s", path_in(log_name(gen)));
    if (read_file(lp, &f)) {
        uint64_t lg = gen;
        size_t good = load_records(lp, &f, false, &lg, &end_ok);
        if (good < f.len) {
            fprintf(stderr, "mpbroker-server: warning: %s ends in an incomplete record "
                    "(a crash mid-write): truncated from %zu to %zu bytes\n", lp, f.len, good);
            if (truncate(lp, (off_t)good) < 0) die("cannot truncate %s: %s", lp);
        }
        log_bytes = good;
        free(f.data);
    }
    /* Loaded: nothing holds or owns anything now. */
    objects_drop_owned(&replay.owned, replay.id);
    objects_drop_holds(&replay.holds);
    objects_collect();
    replaying = false;
    if (replay_errors)
        fprintf(stderr, "mpbroker-server: warning: %lu logged calls did not replay\n", replay_errors);
}

void persist_open(struct event_base *base)
{
    if (!persist_enabled()) return;
    if (mkdir(g_persist.dir, 0700) < 0 && errno != EEXIST) die("cannot create %s: %s", g_persist.dir);
    dirfd_ = open(g_persist.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_ < 0) die("cannot open %s: %s", g_persist.dir);
    int lockfd = open(path_in("lock"), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) < 0)
        die("%s is in use by another broker (%s)", g_persist.dir);
    /* lockfd stays open (and locked) until exit */
    msgpack_sbuffer_init(&logbuf);
    msgpack_packer_init(&logpk, &logbuf, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&effbuf);
    msgpack_packer_init(&effpk, &effbuf, msgpack_sbuffer_write);
    replay.id = UINT64_MAX;
    msgpack_sbuffer_init(&replay.out);
    msgpack_packer_init(&replay.pk, &replay.out, msgpack_sbuffer_write);
    load();
    msgpack_sbuffer_destroy(&replay.out);
    struct stat st;
    if (stat(path_in(log_name(gen)), &st) == 0) {
        logfd = open(path_in(log_name(gen)), O_WRONLY | O_APPEND | O_CLOEXEC);
        if (logfd < 0) die("cannot open %s: %s", path_in(log_name(gen)));
    } else {
        open_new_log(gen);
    }
    fsync_timer = event_new(base, -1, EV_PERSIST, on_fsync_timer, NULL);
    struct timeval one = {1, 0};
    event_add(fsync_timer, &one);
    compact_ev = event_new(base, -1, 0, on_compact, NULL);
}

void persist_close(void)
{
    if (!persist_enabled() || logfd < 0) return;
    persist_sync();
    fdatasync(logfd);
    close(logfd);
    logfd = -1;
    msgpack_sbuffer_destroy(&logbuf);
    msgpack_sbuffer_destroy(&effbuf);
    if (fsync_timer) event_free(fsync_timer);
    if (compact_ev) event_free(compact_ev);
}
