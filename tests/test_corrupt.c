/* test_corrupt.c - every single-bit flip in a small log and in a small snapshot: each
 * start either refuses with a message naming the file, or loads exactly the state the
 * undamaged files hold. Never a value changed in silence, never a record dropped.
 *
 * The files are made by a real mpbroker-server driven by mpbroker-cli. Each damaged
 * copy is then loaded in a forked child of this process by the broker's own start-up
 * code (persist_open, linked in as the fuzzer links it), which is what a start runs
 * before it listens: thousands of starts take seconds instead of minutes. The child
 * prints the loaded state (every object: id, typeid, name, and the form a snapshot
 * stores), and the parent compares it byte for byte. Under ASan every third bit is
 * flipped (its fork is slower); the ordinary build flips them all.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../server/persist.h"
#include "../server/server.h"

/* What main.c defines in the real broker. */
mpb_config g_config = {.max_msg = 1u << 20, .max_depth = MPB_READER_MAX_DEPTH, .quiet = true};
bool g_shutdown_requested;
void server_stop(void) { g_shutdown_requested = true; }

/* Every bit; under AddressSanitizer, whose fork is slower, every third (each bit of
 * each byte position still comes up once in every three bytes). */
#if defined(__SANITIZE_ADDRESS__)
#define STRIDE 3
#else
#define STRIDE 1
#endif

typedef struct blob {
    char *data;
    size_t len;
} blob;

static char work[64];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "%s: status %d", cmd, rc);
}

static blob slurp(const char *path)
{
    blob b = {0};
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    b.len = (size_t)ftell(f);
    rewind(f);
    b.data = malloc(b.len + 1);
    ck_assert_uint_eq(fread(b.data, 1, b.len, f), b.len);
    fclose(f);
    return b;
}

static void spit(const char *path, const blob *b)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b->data, 1, b->len, f), b->len);
    fclose(f);
}

/*--- Making the files with a real broker ---*/

static pid_t broker(const char *data, const char *compact)
{
    char sock[100];
    snprintf(sock, sizeof sock, "%s/s.sock", work);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(getenv("MPB_SERVER"), "mpbroker-server", "--socket", sock, "--quiet", "--data-dir",
              data, "--fsync", "always", "--compact-size", compact, (char *)NULL);
        _exit(127);
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(fd);
        if (ok) return pid;
        usleep(20000);
    }
    ck_abort_msg("the broker did not start");
    return -1;
}

/* The workload: a few objects of different types, each changed after its creation. */
static void workload(void)
{
    static const char *const cmds[] = {
        "create list l '[1, \"two\"]'", "call l list.append '\"three\"'",
        "create dict d", "call d dict.setitem '\"k\"' 3.5",
        "create queue q", "call q queue.put '\"job\"'",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        sh("%s -s %s/s.sock %s >/dev/null", getenv("MPB_CLI"), work, cmds[i]);
}

static void make_files(const char *data, const char *compact, int sig)
{
    pid_t pid = broker(data, compact);
    workload();
    kill(pid, sig);
    int st;
    waitpid(pid, &st, 0);
}

/*--- Loading in a child ---*/

static void dump_object(const mpb_object *o, msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, o->id);
    const char *t = objects_typeid(o);
    msgpack_pack_str_with_body(pk, t, strlen(t));
    if (o->name) msgpack_pack_str_with_body(pk, o->name, strlen(o->name));
    else msgpack_pack_nil(pk);
    switch (o->type) {
    case MPB_OT_LIST: list_dump(o, pk); break;
    case MPB_OT_DICT:
    case MPB_OT_NAMESPACE: dict_dump(o, pk); break;
    case MPB_OT_QUEUE: queue_dump(o, pk); queue_dump_items(o, pk); break;
    case MPB_OT_SEMAPHORE: sem_dump(o, pk); break;
    case MPB_OT_CONDITION: cond_dump(o, pk); break;
    case MPB_OT_EVENT: event_dump(o, pk); break;
    case MPB_OT_BARRIER: barrier_dump(o, pk); break;
    case MPB_OT_VALUE: value_dump(o, pk); break;
    case MPB_OT_ARRAY: array_dump(o, pk); break;
    case MPB_OT_SET: set_dump(o, pk); break;
    default: msgpack_pack_nil(pk); break;
    }
}

static int by_id(const void *a, const void *b)
{
    uint64_t x = (*(mpb_object *const *)a)->id, y = (*(mpb_object *const *)b)->id;
    return x < y ? -1 : x > y;
}

/* A refused start exits 1 from inside persist_open: leave at once, without the exit
 * handlers (under ASan, LeakSanitizer's scan of the whole process would take a
 * tenth of a second per load; this child's memory is the parent's copy anyway). */
static void refused_exit(void) { _exit(1); }

/* In the child: load dir as a start would, print the state to fd 1, exit 0. */
static void child_load(const char *dir)
{
    atexit(refused_exit);
    struct event_base *base = event_base_new();
    objects_init();
    objects_new_id_space(); /* as main does: a loaded state keeps its own */
    g_persist.dir = dir;
    g_persist.fsync = MPB_FSYNC_ALWAYS;
    persist_open(base);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_uint64(&pk, objects_peek_next_id());
    size_t n = objects_count(), it = 0, k = 0;
    mpb_object **all = calloc(n + 1, sizeof *all), *o;
    while (objects_next(&it, &o) && k < n) all[k++] = o;
    qsort(all, k, sizeof *all, by_id);
    for (size_t i = 0; i < k; i++) dump_object(all[i], &pk);
    ssize_t w = write(1, sb.data, sb.size);
    _exit(w == (ssize_t)sb.size ? 0 : 3);
}

/* Read all of fd into b (freeing what it had). */
static void read_all(int fd, blob *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    size_t cap = 0;
    for (;;) {
        if (b->len + 4096 > cap) b->data = realloc(b->data, cap = cap * 2 + 8192);
        ssize_t n = read(fd, b->data + b->len, cap - b->len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        b->len += (size_t)n;
    }
    b->data[b->len] = '\0';
}

/* Load dir in a child: its exit status; what it printed in out and err. */
static int load(const char *dir, blob *out, blob *err)
{
    int po[2], pe[2];
    ck_assert_int_eq(pipe(po), 0);
    ck_assert_int_eq(pipe(pe), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        child_load(dir);
    }
    close(po[1]);
    close(pe[1]);
    read_all(po[0], out); /* small: the pipe never fills before stderr does */
    read_all(pe[0], err);
    close(po[0]);
    close(pe[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Empty dir of files (a load leaves only plain files: lock, logs, cut copies). */
static void empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        return;
    }
    char path[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ck_assert_int_eq(unlink(path), 0);
    }
    closedir(d);
}

/* Write every file of files (names and contents) into a fresh dir. */
static void lay_out(const char *dir, const char *const *names, const blob *contents, int n)
{
    empty_dir(dir);
    char path[256];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        spit(path, &contents[i]);
    }
}

/* Flip every bit of file `victim` of the set, one at a time, and load each. */
static void sweep(const char *const *names, blob *contents, int n, int victim)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/load", work);
    blob ref = {0}, out = {0}, err = {0};
    lay_out(dir, names, contents, n);
    int rc = load(dir, &ref, &err);
    ck_assert_msg(rc == 0, "the undamaged files do not load (%d): %s", rc, err.data);
    blob *v = &contents[victim];
    size_t refused = 0, same = 0, flips = 0;
    for (size_t bit = 0; bit < v->len * 8; bit += STRIDE, flips++) {
        v->data[bit / 8] ^= (char)(1 << (bit % 8));
        lay_out(dir, names, contents, n);
        v->data[bit / 8] ^= (char)(1 << (bit % 8));
        rc = load(dir, &out, &err);
        if (rc == 1) {
            ck_assert_msg(strstr(err.data, names[victim]) && strstr(err.data, "refusing to start"),
                          "%s bit %zu: refused without naming the file: %s", names[victim], bit,
                          err.data);
            refused++;
            continue;
        }
        ck_assert_msg(rc == 0, "%s bit %zu: the load died (%d): %s", names[victim], bit, rc,
                      err.data);
        ck_assert_msg(out.len == ref.len && memcmp(out.data, ref.data, ref.len) == 0,
                      "%s bit %zu: started with a different state (%s)", names[victim], bit,
                      err.data);
        same++;
    }
    printf("corrupt: %s (%zu bytes): %zu single-bit flips%s, %zu refused with a message, %zu "
           "loaded the same state, 0 otherwise\n", names[victim], v->len, flips,
           STRIDE > 1 ? " (every third bit: ASan build)" : "", refused, same);
    free(ref.data);
    free(out.data);
    free(err.data);
}

static void setup(void)
{
    snprintf(work, sizeof work, "/tmp/mpbcorrupt.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(work));
}

static void teardown(void) { sh("rm -rf %s", work); }

START_TEST(every_bit_flip_in_a_small_log_refuses_or_loads_the_same_state)
{
    char data[128];
    snprintf(data, sizeof data, "%s/data", work);
    make_files(data, "67108864", SIGKILL); /* everything in log.0.mpb */
    char path[256];
    snprintf(path, sizeof path, "%s/log.0.mpb", data);
    const char *names[] = {"log.0.mpb"};
    blob files[] = {slurp(path)};
    sweep(names, files, 1, 0);
    free(files[0].data);
}
END_TEST

START_TEST(every_bit_flip_in_a_small_snapshot_refuses_or_loads_the_same_state)
{
    char data[128];
    snprintf(data, sizeof data, "%s/data", work);
    make_files(data, "1", SIGTERM); /* compacts at every write: all in the snapshot */
    DIR *d = opendir(data);
    ck_assert_ptr_nonnull(d);
    char log[64] = "";
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "log.", 4) && strlen(e->d_name) < sizeof log) strcpy(log, e->d_name);
    closedir(d);
    ck_assert_msg(log[0], "no log");
    char p1[256], p2[256];
    snprintf(p1, sizeof p1, "%s/snapshot.mpb", data);
    snprintf(p2, sizeof p2, "%s/%s", data, log);
    const char *names[] = {"snapshot.mpb", log};
    blob files[] = {slurp(p1), slurp(p2)};
    sweep(names, files, 2, 0);
    free(files[0].data);
    free(files[1].data);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("corrupt");
    TCase *tc = tcase_create("corrupt");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, every_bit_flip_in_a_small_log_refuses_or_loads_the_same_state);
    tcase_add_test(tc, every_bit_flip_in_a_small_snapshot_refuses_or_loads_the_same_state);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
