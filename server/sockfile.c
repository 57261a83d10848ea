/* sockfile.c - the broker's Unix socket file: where the default one lives, whose it
 * is, and making it without a race.
 *
 * The default socket lives in a directory that only the broker's user can write:
 * $XDG_RUNTIME_DIR, or ${TMPDIR:-/tmp}/mpbroker-$EUID, which the broker makes 0700 and
 * which must be its own (tmux's rule), never a name straight in world-writable /tmp
 * that another user could take first. An existing file at the socket's path is
 * replaced only when it is a socket of ours that nobody answers on; anything else
 * (another user's socket, a regular file) is refused. The socket is created 0600 by
 * the umask at bind(). With --socket-group it is bound inside a private staging
 * directory beside the final path (reached through its descriptor), given to the
 * group there (a name nobody else can reach), and renamed into place: no bind, chown
 * or chmod ever goes through a path that another user could swap for a symlink.
 *
 * Everything here runs once, at start, before the loop; failures print why and exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mpb_address.h"
#include "sockfile.h"

#define BACKLOG 1024

static void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int status, const char *fmt, ...)
{
    va_list ap;
    fputs("mpbroker-server: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(status);
}

static gid_t group_id(const char *group)
{
    struct group *g = getgrnam(group);
    if (g) return g->gr_gid;
    char *end;
    unsigned long n = strtoul(group, &end, 10);
    if (end == group || *end) die(2, "--socket-group: no group '%s'", group);
    return (gid_t)n;
}

/* The default socket's directory: ours, a real directory, writable by nobody else.
 * The one in the temporary directory is made when absent and kept at 0700 (0710 and
 * the group's, with --socket-group, so that its members can reach the socket). */
static void check_default_dir(const char *dir, bool ours_to_make, const char *group)
{
    if (ours_to_make && mkdir(dir, 0700) < 0 && errno != EEXIST)
        die(2, "cannot create %s: %s", dir, strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        die(2, "%s: %s%s", dir, strerror(errno),
            errno == ELOOP || errno == ENOTDIR ? " (not a directory: someone else's?)" : "");
    const char *remedy = ours_to_make ? "remove it, set XDG_RUNTIME_DIR, or give --socket PATH"
                                      : "fix XDG_RUNTIME_DIR, or give --socket PATH";
    if (st.st_uid != geteuid())
        die(2, "%s belongs to uid %lu, not to this user (uid %lu): refusing to put the socket "
            "there, another user may have made it first (%s)", dir, (unsigned long)st.st_uid,
            (unsigned long)geteuid(), remedy);
    if (!ours_to_make) {
        if (st.st_mode & (S_IWGRP | S_IWOTH))
            die(2, "%s is writable by group or others (mode %03o): not private (%s)", dir,
                (unsigned)(st.st_mode & 0777), remedy);
        if (group && !(st.st_mode & S_IXGRP))
            die(2, "--socket-group: members of %s cannot reach the default socket in %s "
                "(mode %03o): give --socket PATH in a directory they can reach", group, dir,
                (unsigned)(st.st_mode & 0777));
        close(fd);
        return;
    }
    /* Ours: made private now, through the descriptor (nothing to swap). */
    mode_t want = group ? 0710 : 0700;
    if ((group && fchown(fd, (uid_t)-1, group_id(group)) < 0) ||
        ((st.st_mode & 07777) != want && fchmod(fd, want) < 0))
        die(2, "%s: %s", dir, strerror(errno));
    close(fd);
}

/* Make room at path for our socket: nothing there, or a stale socket of ours (then
 * removed). Anything else is refused. */
static void clear_path(const char *path, const struct sockaddr_un *sun)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT) return;
        die(2, "%s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        die(2, "%s exists and is not a socket: refusing to replace it", path);
    if (st.st_uid != geteuid())
        die(2, "%s belongs to uid %lu, not to this user (uid %lu): refusing it (another "
            "user's broker, or someone squatting the path)", path, (unsigned long)st.st_uid,
            (unsigned long)geteuid());
    /* A live broker of ours already there? Then refuse; a stale file is removed. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (const struct sockaddr *)sun, sizeof *sun) == 0)
        die(1, "a broker is already listening on %s", path);
    if (probe >= 0) close(probe);
    if (unlink(path) < 0 && errno != ENOENT) die(2, "%s: %s", path, strerror(errno));
}

static int new_socket(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die(1, "socket: %s", strerror(errno));
    return fd;
}

/* bind() with the socket file created as 0777 & ~mask. */
static int bind_masked(int fd, const char *path, mode_t mask)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    mode_t old = umask(mask);
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    return rc;
}

/* bind() to name inside the directory open as dfd, whatever path leads there now:
 * the staging directory's own path runs through a directory that group members may
 * write, and one of them could rename the directory and leave a symlink in its place
 * (bind follows it, and would make a file of ours wherever it points). */
static int bind_in(int fd, int dfd, const char *name, mode_t mask)
{
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0) return -1;
    int rc = fchdir(dfd) < 0 ? -1 : bind_masked(fd, name, mask);
    int err = errno;
    if (fchdir(cwd) < 0) die(1, "cannot return to the working directory: %s", strerror(errno));
    close(cwd);
    errno = err;
    return rc;
}

/* --socket-group: bind in a private staging directory beside path, hand the file to
 * gid there, then rename it into place. */
static void bind_for_group(int fd, const char *path, gid_t gid)
{
    char stage[sizeof ((struct sockaddr_un *)0)->sun_path + 32];
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path) : 1;
    snprintf(stage, sizeof stage, "%.*s/.mpbroker-XXXXXX", dirlen, slash ? path : ".");
    if (!mkdtemp(stage)) die(2, "--socket-group: cannot create %s: %s", stage, strerror(errno));
    int dfd = open(stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int err = 0;
    if (dfd < 0 || bind_in(fd, dfd, "s", 0117) < 0 || /* 0660 from the start */
        fchownat(dfd, "s", (uid_t)-1, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
        renameat(dfd, "s", AT_FDCWD, path) < 0)
        err = errno;
    if (err) unlinkat(dfd, "s", 0);
    if (dfd >= 0) close(dfd);
    rmdir(stage);
    if (err) die(2, "--socket-group on %s: %s", path, strerror(err));
}

int sockfile_listen(const char *path, bool is_default, const char *group)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) die(2, "socket path too long: %s", path);
    strcpy(sun.sun_path, path);
    if (is_default) {
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        char dir[sizeof sun.sun_path];
        check_default_dir(mpb_default_socket_dir(dir, sizeof dir), !(xdg && xdg[0] == '/'),
                          group);
    }
    clear_path(path, &sun);
    int fd = new_socket();
    if (group) bind_for_group(fd, path, group_id(group));
    else if (bind_masked(fd, path, 0177) < 0) /* 0600: only our user may connect */
        die(1, "cannot listen on unix:%s: %s", path, strerror(errno));
    if (listen(fd, BACKLOG) < 0) {
        int e = errno;
        unlink(path);
        die(1, "cannot listen on unix:%s: %s", path, strerror(e));
    }
    return fd;
}
