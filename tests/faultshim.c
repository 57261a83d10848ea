/* faultshim.c - an LD_PRELOAD library that makes the broker's disk calls fail on cue,
 * for the diskfault suite (SQLite's and PostgreSQL's I/O error tests, done from
 * outside the process: the broker runs unchanged).
 *
 * It wraps write, fdatasync, fsync, rename and renameat. Only calls on files under
 * $MPB_FAULT_DIR count (sockets, pipes and stderr never do), and only once the file
 * $MPB_FAULT_ARM exists (when set): the test sets the broker up, then arms. Then
 * $MPB_FAULT says what fails, as comma-separated rules OP:N[+]:ERRNO[:short]:
 *   fdatasync:3:EIO        the 3rd fdatasync (counted from arming) fails with EIO
 *   write:1+:ENOSPC        every write from the 1st on fails, until $MPB_FAULT_HEAL
 *                          exists (the disk was freed)
 *   write:2:ENOSPC:short   the 2nd write writes half its bytes and returns that count
 *                          (a short write), and the write after it fails: what a
 *                          filling disk does
 * OP is write, fdatasync, fsync or rename (rename and renameat); ERRNO is EIO,
 * ENOSPC, EDQUOT or EROFS. With $MPB_FAULT_LOG set, every counted call appends a
 * line "OP N PATH ok|ERRNO" to that file, so a test can count a workload's calls.
 *
 * A failed fdatasync or fsync of a file also loses what it should have stored: the
 * bytes written since the file's last good sync (or since the shim first saw it)
 * become zeros, as ext4 left them in the case. Without that, the page cache
 * would keep them, and a broker that acknowledged writes after a failed sync would
 * still find them all after a restart.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OP_WRITE, OP_FDATASYNC, OP_FSYNC, OP_RENAME, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"write", "fdatasync", "fsync", "rename"};

typedef struct rule {
    int op;
    long n;
    bool from_on; /* N+ */
    int err;
    bool short_write;
} rule;

static rule rules[8];
static int nrules;
static long counts[OP_COUNT];
static bool fail_next_write; /* after a short write */

/* Per file (device and inode): its size at its last good sync. */
typedef struct synced {
    dev_t dev;
    ino_t ino;
    off_t size;
} synced;
static synced files[64];
static int nfiles;
static int fail_next_err;
static const char *dir, *arm, *heal, *logpath;
static bool ready;

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);

static int errno_of(const char *s)
{
    if (!strcmp(s, "EIO")) return EIO;
    if (!strcmp(s, "ENOSPC")) return ENOSPC;
    if (!strcmp(s, "EDQUOT")) return EDQUOT;
    if (!strcmp(s, "EROFS")) return EROFS;
    return 0;
}

static void setup(void)
{
    if (ready) return;
    ready = true;
    real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_rename = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    real_renameat = (int (*)(int, const char *, int, const char *))dlsym(RTLD_NEXT, "renameat");
    dir = getenv("MPB_FAULT_DIR");
    arm = getenv("MPB_FAULT_ARM");
    heal = getenv("MPB_FAULT_HEAL");
    logpath = getenv("MPB_FAULT_LOG");
    const char *spec = getenv("MPB_FAULT");
    static char buf[512];
    snprintf(buf, sizeof buf, "%s", spec ? spec : "");
    char *save = NULL;
    for (char *r = strtok_r(buf, ",", &save); r && nrules < 8; r = strtok_r(NULL, ",", &save)) {
        char op[16] = "", err[16] = "", extra[16] = "";
        long n = 0;
        char plus = 0;
        if (sscanf(r, "%15[a-z]:%ld%c", op, &n, &plus) < 2) continue;
        const char *p = strchr(strchr(r, ':') + 1, ':');
        if (!p || sscanf(p + 1, "%15[A-Z]:%15s", err, extra) < 1) continue;
        rule ru = {.op = -1, .n = n, .from_on = plus == '+', .err = errno_of(err),
                   .short_write = !strcmp(extra, "short")};
        for (int i = 0; i < OP_COUNT; i++)
            if (!strcmp(op, op_names[i])) ru.op = i;
        if (ru.op >= 0 && ru.err) rules[nrules++] = ru;
    }
}

/* The path of fd (or of dirfd/path), in buf; false if unknown. */
static bool fd_path(int fd, char *buf, size_t n)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, buf, n - 1);
    if (k < 0) return false;
    buf[k] = '\0';
    return true;
}

static bool at_path(int dirfd, const char *path, char *buf, size_t n)
{
    if (path[0] == '/') {
        snprintf(buf, n, "%s", path);
        return true;
    }
    char d[PATH_MAX - 64];
    if (dirfd == AT_FDCWD ? !getcwd(d, sizeof d) : !fd_path(dirfd, d, sizeof d)) return false;
    snprintf(buf, n, "%s/%s", d, path);
    return true;
}

static bool counted_path(const char *path)
{
    size_t dl = dir ? strlen(dir) : 0;
    if (!dl || strncmp(path, dir, dl) != 0 || (path[dl] != '/' && path[dl] != '\0' && path[dl] != ' '))
        return false;
    return !arm || access(arm, F_OK) == 0;
}

static void note(int op, long n, const char *path, int err)
{
    if (!logpath) return;
    int fd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    char line[PATH_MAX + 64];
    int len = snprintf(line, sizeof line, "%s %ld %s %s\n", op_names[op], n, path,
                       err ? strerror(err) : "ok");
    if (len > 0) real_write(fd, line, (size_t)(len < (int)sizeof line ? len : (int)sizeof line - 1));
    close(fd);
}

/* Count a call of op on path; the errno it must fail with, or 0. *short_write: write
 * half and fail the next one. */
static int decide(int op, const char *path, bool *short_write)
{
    if (!counted_path(path)) return 0;
    long n = ++counts[op];
    int err = 0;
    if (op == OP_WRITE && fail_next_write) {
        fail_next_write = false;
        err = fail_next_err;
    }
    bool healed = heal && access(heal, F_OK) == 0;
    for (int i = 0; i < nrules && !err; i++) {
        const rule *r = &rules[i];
        if (r->op != op || (r->from_on ? n < r->n || healed : n != r->n)) continue;
        if (r->short_write && short_write) {
            *short_write = true;
            fail_next_write = true;
            fail_next_err = r->err;
            note(op, n, path, 0);
            return 0;
        }
        err = r->err;
    }
    note(op, n, path, err);
    return err;
}

/* The entry of fd's file when it is a regular file (added with its size now), or
 * NULL. */
static synced *file_of(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) return NULL;
    for (int i = 0; i < nfiles; i++)
        if (files[i].dev == st.st_dev && files[i].ino == st.st_ino) return &files[i];
    if (nfiles == (int)(sizeof files / sizeof *files)) return NULL;
    files[nfiles] = (synced){st.st_dev, st.st_ino, st.st_size};
    return &files[nfiles++];
}

/* A sync of fd failed: zero what was written since its last good sync. (Through a
 * descriptor of our own: pwrite on an O_APPEND one appends.) */
static void lose_unsynced(int fd, const char *path)
{
    synced *f = file_of(fd);
    struct stat st;
    if (!f || fstat(fd, &st) < 0 || st.st_size <= f->size) return;
    int w = open(path, O_WRONLY | O_CLOEXEC);
    if (w < 0) return;
    static const char zeros[4096];
    for (off_t at = f->size; at < st.st_size;) {
        size_t n = st.st_size - at < (off_t)sizeof zeros ? (size_t)(st.st_size - at) : sizeof zeros;
        ssize_t k = pwrite(w, zeros, n, at);
        if (k <= 0) break;
        at += k;
    }
    real_fdatasync(w); /* the loss itself is durable */
    close(w);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    setup();
    char path[PATH_MAX];
    bool half = false;
    bool known = fd_path(fd, path, sizeof path);
    if (known && counted_path(path)) file_of(fd); /* its size before this write: synced */
    int err = known ? decide(OP_WRITE, path, &half) : 0;
    if (err) {
        errno = err;
        return -1;
    }
    if (half && count > 1) return real_write(fd, buf, count / 2);
    return real_write(fd, buf, count);
}

static int sync_call(int op, int fd, int (*real)(int))
{
    setup();
    char path[PATH_MAX];
    bool known = fd_path(fd, path, sizeof path);
    int err = known ? decide(op, path, NULL) : 0;
    if (err) {
        lose_unsynced(fd, path);
        errno = err;
        return -1;
    }
    int r = real(fd);
    synced *f = known && counted_path(path) ? file_of(fd) : NULL;
    struct stat st;
    if (r == 0 && f && fstat(fd, &st) == 0) f->size = st.st_size;
    return r;
}

int fdatasync(int fd) { return sync_call(OP_FDATASYNC, fd, (setup(), real_fdatasync)); }
int fsync(int fd) { return sync_call(OP_FSYNC, fd, (setup(), real_fsync)); }

int rename(const char *from, const char *to)
{
    setup();
    char path[PATH_MAX];
    int err = at_path(AT_FDCWD, from, path, sizeof path) ? decide(OP_RENAME, path, NULL) : 0;
    if (err) {
        errno = err;
        return -1;
    }
    return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
    setup();
    char path[PATH_MAX];
    int err = at_path(fromfd, from, path, sizeof path) ? decide(OP_RENAME, path, NULL) : 0;
    if (err) {
        errno = err;
        return -1;
    }
    return real_renameat(fromfd, from, tofd, to);
}
