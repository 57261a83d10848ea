/* testutil.c - spawn and stop a real mpbroker-server for the integration suites, and
 * talk to it over raw sockets where a test needs bytes libmpbroker would never send.
 *
 * Each broker runs in its own temporary directory (/tmp/mpbtest.XXXXXX) on a Unix
 * socket, plus a loopback TCP port when asked. Anything that goes wrong while setting
 * up aborts the current test through Check: these are fixtures, not code under test.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpb_codec.h"
#include "mpb_reader.h"
#include "testutil.h"

#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Milliseconds left until deadline (never negative). */
static int left_ms(long long deadline) {
    long long d = deadline - now_ms();
    return d > 0 ? (int)d : 0;
}

/* A loopback port nobody listens on right now. The broker binds it a moment later;
 * another process taking it in between is possible but not on a test machine. */
static int free_tcp_port(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        int e = errno;
        close(fd);
        ck_abort_msg("finding a free TCP port: %s", strerror(e));
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* Remove dir and the files in it (the broker's socket, if it left it). */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        char path[600];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

void tb_start(tb_broker *b, int tcp, const char *const *extra_args) {
    const char *server = getenv("MPB_SERVER");
    char listen[64];
    const char *argv[64];
    int n = 0;

    memset(b, 0, sizeof *b);
    b->pid = -1;
    ck_assert_msg(server != NULL && server[0] != '\0', "MPB_SERVER is not set");
    snprintf(b->dir, sizeof b->dir, "/tmp/mpbtest.XXXXXX");
    ck_assert_msg(mkdtemp(b->dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(b->sock, sizeof b->sock, "%s/s.sock", b->dir);
    snprintf(b->address, sizeof b->address, "unix:%s", b->sock);

    argv[n++] = server;
    argv[n++] = "--socket";
    argv[n++] = b->sock;
    if (tcp) {
        int port = free_tcp_port();
        snprintf(listen, sizeof listen, "tcp://127.0.0.1:%d", port);
        snprintf(b->address, sizeof b->address, "%s", listen);
        argv[n++] = "--listen";
        argv[n++] = listen;
        argv[n++] = "--insecure"; /* keyless TCP: the test's own broker (no-op with a key) */
    }
    for (size_t i = 0; extra_args != NULL && extra_args[i] != NULL; i++) {
        ck_assert_msg(n < 63, "too many extra arguments");
        argv[n++] = extra_args[i];
    }
    argv[n] = NULL;

    pid_t self = getpid();
    fflush(stdout);
    fflush(stderr);
    b->pid = fork();
    ck_assert_msg(b->pid >= 0, "fork: %s", strerror(errno));
    if (b->pid == 0) {
#ifdef __linux__
        /* A test that fails between tb_start and tb_stop exits at once: take the broker
         * with it, or it would hold meson's output pipe open until the suite times out. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != self) _exit(127); /* it is already gone */
#endif
        execv(server, (char *const *)argv);
        fprintf(stderr, "testutil: exec %s: %s\n", server, strerror(errno));
        _exit(127);
    }

    /* Up when it answers a ping; a broker that died is reported at once. */
    long long deadline = now_ms() + START_TIMEOUT_MS;
    char last[300] = "";
    for (;;) {
        int st;
        if (waitpid(b->pid, &st, WNOHANG) == b->pid) {
            b->pid = -1;
            remove_dir(b->dir);
            ck_abort_msg("%s exited during startup (%s %d)", server,
                         WIFEXITED(st) ? "status" : "signal",
                         WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        }
        mpb_context *c = mpb_connect(b->address);
        if (c != NULL && c->err == MPB_OK && mpb_ping(c) == MPB_OK) {
            mpb_free(c);
            return;
        }
        if (c != NULL) snprintf(last, sizeof last, "%s", c->errstr);
        mpb_free(c);
        if (now_ms() >= deadline) {
            tb_stop(b);
            ck_abort_msg("%s did not answer a ping within %d s: %s", server,
                         START_TIMEOUT_MS / 1000, last);
        }
        sleep_ms(20);
    }
}

int tb_stop(tb_broker *b) {
    int st = -1;
    if (b->pid > 0) {
        kill(b->pid, SIGTERM);
        long long deadline = now_ms() + STOP_TIMEOUT_MS;
        pid_t r;
        while ((r = waitpid(b->pid, &st, WNOHANG)) == 0 && now_ms() < deadline) sleep_ms(10);
        if (r != b->pid) { /* hung (or waitpid failed): do not leave it running */
            kill(b->pid, SIGKILL);
            while (waitpid(b->pid, NULL, 0) < 0 && errno == EINTR) {
            }
            st = -1;
        }
        b->pid = -1;
    }
    if (b->dir[0] != '\0') remove_dir(b->dir);
    b->dir[0] = '\0';
    return st;
}

mpb_context *tb_connect(const tb_broker *b) {
    mpb_context *c = mpb_connect(b->address);
    ck_assert_msg(c != NULL, "mpb_connect: out of memory");
    if (c->err != MPB_OK) {
        char why[sizeof c->errstr];
        snprintf(why, sizeof why, "%s", c->errstr);
        mpb_free(c);
        ck_abort_msg("connect %s: %s", b->address, why);
    }
    return c;
}

int tb_raw_connect(const tb_broker *b) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    ck_assert_msg(strlen(b->sock) < sizeof sa.sun_path, "socket path too long");
    strcpy(sa.sun_path, b->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        ck_abort_msg("connect %s: %s", b->sock, strerror(e));
    }
    return fd;
}

int tb_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        /* MSG_NOSIGNAL: a test that writes to a connection the broker closed must see
         * EPIPE, not die of SIGPIPE. */
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Wait until fd is readable or the deadline passes. 1 readable, 0 timeout, -1 error. */
static int wait_readable(int fd, long long deadline) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    for (;;) {
        int r = poll(&pf, 1, left_ms(deadline));
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Reads exactly one message and never a byte of the next: whatever the peer sent
 * after it stays in the socket for the next tb_read_msg. Bytes are peeked, scanned,
 * and only those of the first message are consumed. */
int tb_read_msg(int fd, mpb_value *out, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    size_t have = 0, cap = 4096, size = 0;
    char *buf = malloc(cap);
    mpb_read_status st = MPB_READ_NEED;
    int rc = -1;

    *out = mpb_nil();
    while (buf != NULL) {
        if (wait_readable(fd, deadline) != 1) break;
        ssize_t n = recv(fd, buf + have, cap - have, MSG_PEEK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* EOF or error */
        st = mpb_scan(buf, have + (size_t)n, MPB_READER_DEFAULT_MAX_MSG, MPB_READER_MAX_DEPTH,
                      &size);
        if (st == MPB_READ_BAD) break;
        /* A whole message: take just its bytes. Otherwise every byte peeked belongs to
         * the first message, which is longer: take them all and wait for more. */
        size_t take = st == MPB_READ_NEED ? (size_t)n : size - have;
        if (recv(fd, buf + have, take, MSG_WAITALL) != (ssize_t)take) break;
        have += take;
        if (st != MPB_READ_NEED) break;
        if (have == cap) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) break;
            buf = nb;
            cap *= 2;
        }
    }
    mpb_reader r;
    msgpack_object obj;
    if (buf != NULL && st == MPB_READ_MSG &&
        mpb_reader_init(&r, MPB_READER_DEFAULT_MAX_MSG, MPB_READER_MAX_DEPTH) == 0) {
        if (mpb_reader_feed(&r, buf, size) == 0 && mpb_reader_next(&r, &obj) == MPB_READ_MSG &&
            mpb_value_from_object(&obj, out, MPB_READER_MAX_DEPTH, NULL, 0) == MPB_E_NONE)
            rc = 0;
        mpb_reader_destroy(&r);
    }
    free(buf);
    return rc;
}

int tb_wait_closed(int fd, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    char buf[4096];
    for (;;) {
        if (wait_readable(fd, deadline) != 1) return 0;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) return 1;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == ECONNRESET ? 1 : 0;
    }
}

/*--- A Python-literal reader for test arguments: None True False 12 -3 2.5 'str'
 * [a, b] (a, b) {k: v}. Aborts the test on syntax it does not know. ---*/
static mpb_value lit_parse(const char **p);

static void lit_ws(const char **p)
{
    while (**p == ' ') (*p)++;
}

static mpb_value lit_seq(const char **p, char close, bool is_map)
{
    mpb_value v = is_map ? mpb_map_value() : mpb_array_value(4);
    (*p)++;
    for (lit_ws(p); **p != close; lit_ws(p)) {
        mpb_value item = lit_parse(p);
        lit_ws(p);
        if (is_map) {
            ck_assert_msg(**p == ':', "literal: ':' expected at '%s'", *p);
            (*p)++;
            mpb_value val = lit_parse(p);
            ck_assert_int_eq(mpb_map_set(v.v.m, &item, &val, NULL), 1);
        } else {
            ck_assert_int_eq(mpb_value_push(&v, &item), 0);
        }
        lit_ws(p);
        if (**p == ',') (*p)++;
    }
    (*p)++;
    return v;
}

static mpb_value lit_parse(const char **p)
{
    lit_ws(p);
    const char *s = *p;
    if (*s == '[') return lit_seq(p, ']', false);
    if (*s == '(') return lit_seq(p, ')', false);
    if (*s == '{') return lit_seq(p, '}', true);
    if (*s == '\'') {
        const char *e = strchr(s + 1, '\'');
        ck_assert_msg(e != NULL, "literal: unterminated string");
        *p = e + 1;
        return mpb_strn(s + 1, (size_t)(e - s - 1));
    }
    if (!strncmp(s, "None", 4)) return *p += 4, mpb_nil();
    if (!strncmp(s, "True", 4)) return *p += 4, mpb_bool(true);
    if (!strncmp(s, "False", 5)) return *p += 5, mpb_bool(false);
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (end != s && *end != '.' && *end != 'e') {
        *p = end;
        if (errno == ERANGE && *s != '-') return mpb_uint(strtoull(s, NULL, 10)); /* 2**63.. */
        return mpb_int(i);
    }
    double d = strtod(s, &end);
    ck_assert_msg(end != s, "literal: cannot read '%s'", s);
    *p = end;
    return mpb_float(d);
}

mpb_value tb_lit(const char *text)
{
    const char *p = text;
    mpb_value v = lit_parse(&p);
    lit_ws(&p);
    ck_assert_msg(*p == '\0', "literal: trailing '%s'", p);
    return v;
}

char *tb_repr(const mpb_value *v)
{
    char *s = mpb_value_repr(v);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Call; frees args (owned or borrowed alike); returns the rc and the result. */
static int call_args(mpb_context *c, const char *method, mpb_value *args, size_t n,
                     mpb_value *res)
{
    int rc = mpb_call(c, method, args, n, res);
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    return rc;
}

void tb_expect_at(int line, mpb_context *c, const char *want, const char *method,
                      mpb_value *args, size_t n)
{
    mpb_value res;
    int rc = call_args(c, method, args, n, &res);
    ck_assert_msg(rc == MPB_OK, "line %d: %s failed: %s: %s", line, method, c->errkind, c->errstr);
    char *got = tb_repr(&res);
    ck_assert_msg(strcmp(got, want) == 0, "line %d: %s gave %s, want %s", line, method, got, want);
    free(got);
    mpb_value_free(&res);
}

void tb_expect_err_at(int line, mpb_context *c, const char *kind, const char *method,
                          mpb_value *args, size_t n)
{
    mpb_value res = mpb_nil();
    int rc = call_args(c, method, args, n, &res);
    ck_assert_msg(rc == MPB_ERR_REPLY, "line %d: %s gave %d, want error %s", line, method, rc, kind);
    ck_assert_msg(strcmp(c->errkind, kind) == 0, "line %d: %s: got %s (%s), want %s", line,
                  method, c->errkind, c->errstr, kind);
    ck_assert_msg(c->errstr[0] != '\0', "line %d: empty message", line);
    ck_assert_int_eq(res.type, MPB_NIL);
}

int tb_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

void tb_send_call(int fd, uint64_t msgid, const char *method, const mpb_value *params, size_t n)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint64(&pk, msgid);
    msgpack_pack_str_with_body(&pk, method, strlen(method));
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) mpb_value_pack(&pk, &params[i]);
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
}

mpb_ref tb_create(mpb_context *c, const char *type, const char *initial)
{
    mpb_ref r;
    mpb_value init = initial ? tb_lit(initial) : mpb_nil();
    int rc = mpb_create(c, type, &init, &r);
    ck_assert_msg(rc == MPB_OK, "create %s: %s %s", type, c->errkind, c->errstr);
    mpb_value_free(&init);
    return r;
}

/*--- Other programs, maybe as another user ---*/

pid_t tb_spawn(const char *const *argv, long uid, const char *const *env, const char *out)
{
    int fd = -1;
    if (out != NULL) {
        fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_msg(fd >= 0, "%s: %s", out, strerror(errno));
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid > 0) {
        if (fd >= 0) close(fd);
        return pid;
    }
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        const char *eq = strchr(env[i], '=');
        if (eq == NULL) {
            unsetenv(env[i]);
        } else {
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)(eq - env[i]), env[i]);
            setenv(name, eq + 1, 1);
        }
    }
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
    if (uid < 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    char reuid[32], regid[32];
    snprintf(reuid, sizeof reuid, "--reuid=%ld", uid);
    snprintf(regid, sizeof regid, "--regid=%ld", uid);
    const char *as[72] = {"setpriv", reuid, regid, "--clear-groups", "--pdeathsig", "TERM"};
    size_t n = 6;
    for (size_t i = 0; argv[i] != NULL && n < 71; i++) as[n++] = argv[i];
    as[n] = NULL;
    execvp("setpriv", (char *const *)as);
    _exit(127);
}

int tb_run_prog(const char *const *argv, long uid, const char *const *env, char *out,
                size_t outlen)
{
    char path[] = "/tmp/mpbtest-out.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_msg(fd >= 0, "mkstemp: %s", strerror(errno));
    pid_t pid = tb_spawn(argv, uid, env, path);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    ssize_t n = read(fd, out, outlen - 1);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int tb_run_server(const char *const *args, char *out, size_t outlen)
{
    const char *argv[40] = {getenv("MPB_SERVER")};
    ck_assert_msg(argv[0] != NULL, "MPB_SERVER is not set");
    for (size_t i = 0; args[i] != NULL && i < 38; i++) argv[i + 1] = args[i];
    return tb_run_prog(argv, -1, NULL, out, outlen);
}

int tb_client_count(mpb_context *c)
{
    mpb_value cl;
    ck_assert_int_eq(mpb_call(c, "manager.clients", NULL, 0, &cl), MPB_OK);
    ck_assert_int_eq(cl.type, MPB_ARRAY);
    int n = (int)cl.v.a->len;
    mpb_value_free(&cl);
    return n;
}

/* The state letter of process pid (/proc/PID/stat), or '?'. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    return p && p[1] == ' ' ? p[2] : '?';
}

void tb_pause(const tb_broker *b)
{
    ck_assert_int_eq(kill(b->pid, SIGSTOP), 0);
    for (int i = 0; i < 1000 && proc_state(b->pid) != 'T'; i++) usleep(1000);
    ck_assert_int_eq(proc_state(b->pid), 'T');
}

void tb_resume(const tb_broker *b) { ck_assert_int_eq(kill(b->pid, SIGCONT), 0); }

void tb_call_then_hang_up(const tb_broker *b, mpb_context *c, const char *method,
                          const mpb_value *params, size_t n)
{
    int before = tb_client_count(c);
    int fd = tb_raw_connect(b);
    for (int i = 0; i < 500 && tb_client_count(c) == before; i++) usleep(10000);
    ck_assert_int_eq(tb_client_count(c), before + 1); /* accepted (and no handshake) */
    tb_pause(b);
    tb_send_call(fd, 1, method, params, n);
    close(fd);
    tb_resume(b);
    for (int i = 0; i < 500 && tb_client_count(c) > before; i++) usleep(10000);
    ck_assert_int_eq(tb_client_count(c), before);
}
