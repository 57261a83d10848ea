/* testutil.h - start a real mpbroker-server for integration tests.
 *
 * The server binary comes from $MPB_SERVER (set by meson). Each broker gets its own
 * temporary directory and Unix socket; tb_stop sends SIGTERM, waits, and reports how
 * the server exited, so a test can assert that it shut down cleanly.
 */
#ifndef MPB_TESTUTIL_H
#define MPB_TESTUTIL_H

#include <check.h>
#include <sys/types.h>
#include "mpbroker.h"

typedef struct tb_broker {
    pid_t pid;
    char dir[256];     /* temporary directory, removed by tb_stop */
    char sock[300];    /* socket path inside dir */
    char address[320]; /* "unix:<sock>", or "tcp://127.0.0.1:PORT" when started with TCP */
} tb_broker;

/* Start mpbroker-server with extra arguments (NULL-terminated list, may be NULL) and
 * wait until it answers manager.ping. Aborts the test (ck_abort) on failure. When tcp
 * is nonzero the broker also listens on a free loopback port (with --insecure, which
 * lets it do so without a key) and address is TCP. */
void tb_start(tb_broker *b, int tcp, const char *const *extra_args);
/* SIGTERM, wait for exit; returns the exit status as from waitpid (or -1). Removes
 * the temporary directory. */
int tb_stop(tb_broker *b);
/* Connect to the broker; aborts the test on failure. */
mpb_context *tb_connect(const tb_broker *b);
/* Connect a raw socket to the broker's Unix socket; returns the fd (aborts on error). */
int tb_raw_connect(const tb_broker *b);
/* Write all of buf; read exactly n bytes with a timeout in ms. 0 ok, -1 error/timeout. */
int tb_write_all(int fd, const void *buf, size_t n);
/* Write [0, msgid, method, params] packed by hand to a raw socket (asserts). */
void tb_send_call(int fd, uint64_t msgid, const char *method, const mpb_value *params, size_t n);
/* Read one whole msgpack message from fd within timeout_ms into a freshly allocated
 * mpb_value (caller frees). 0 ok, -1 on EOF/timeout/garbage. */
int tb_read_msg(int fd, mpb_value *out, int timeout_ms);
/* Read until EOF within timeout_ms; returns 1 if the peer closed, 0 if not. */
int tb_wait_closed(int fd, int timeout_ms);

/* The number of connections manager.clients lists (c's own included). */
int tb_client_count(mpb_context *c);
/* Send [0, 1, method, params] on a new raw connection and close it, both while the
 * broker is stopped (SIGSTOP), so that it reads the request and the hang-up in one
 * loop round: a client gone before its request runs. Returns once the broker has
 * closed that connection (asked through c). params are not freed. */
void tb_call_then_hang_up(const tb_broker *b, mpb_context *c, const char *method,
                          const mpb_value *params, size_t n);
/* Stop (SIGSTOP) the broker and return once it is stopped; tb_resume continues it. */
void tb_pause(const tb_broker *b);
void tb_resume(const tb_broker *b);

/*--- Other programs, maybe as another user ---*/
/* Start argv (argv[0] a path) with env changed ("NAME=value" set, "NAME" unset; env
 * may be NULL), as uid when uid >= 0 (setpriv --reuid=uid --regid=uid
 * --clear-groups: no user needs to exist; it is sent SIGTERM if this process dies),
 * stdout and stderr to the file out (NULL: inherited). Returns the pid. */
pid_t tb_spawn(const char *const *argv, long uid, const char *const *env, const char *out);
/* tb_spawn and wait: returns the exit status (128 + signal), with what the program
 * wrote to stdout and stderr in out (NUL-terminated, truncated to outlen). */
int tb_run_prog(const char *const *argv, long uid, const char *const *env, char *out,
                size_t outlen);
/* tb_run_prog of $MPB_SERVER with args (NULL-terminated) as this user. */
int tb_run_server(const char *const *args, char *out, size_t outlen);

/* Run every test of s (CK_ENV decides forking and verbosity) and return the exit
 * status for main: EXIT_FAILURE when any failed. Frees s. */
int tb_run(Suite *s);

/*--- Asserting calls, compared through Python's repr ---*/
/* An owned value from a Python literal: None True False 12 -3 2.5 'str' [a, b]
 * (a, b) {k: v}. Aborts the test on syntax it does not know. */
mpb_value tb_lit(const char *text);
/* Create an object of type with INITIAL written as a Python literal (NULL: none);
 * asserts success and returns its reference. */
mpb_ref tb_create(mpb_context *c, const char *type, const char *initial);
/* mpb_value_repr, asserted non-NULL; free() it. */
char *tb_repr(const mpb_value *v);
/* Call method with args (all freed afterwards) and assert the result's repr. */
void tb_expect_at(int line, mpb_context *c, const char *want, const char *method,
                  mpb_value *args, size_t n);
/* Call and assert an error reply of this kind. */
void tb_expect_err_at(int line, mpb_context *c, const char *kind, const char *method,
                      mpb_value *args, size_t n);

#define TB_ARGS(...) (mpb_value[]){__VA_ARGS__}, sizeof((mpb_value[]){__VA_ARGS__}) / sizeof(mpb_value)
#define TB_EXPECT(c, want, method, ...) tb_expect_at(__LINE__, c, want, method, TB_ARGS(__VA_ARGS__))
#define TB_EXPECT_ERR(c, kind, method, ...) \
    tb_expect_err_at(__LINE__, c, kind, method, TB_ARGS(__VA_ARGS__))

/* The fixture most suites use: a default broker B and one connection C, started for
 * each test; teardown requires the broker to exit 0 (under ASan: nothing leaked). */
#define TB_DEFAULT_FIXTURE                               \
    static tb_broker B;                                  \
    static mpb_context *C;                               \
    static void setup(void)                              \
    {                                                    \
        tb_start(&B, 0, NULL);                           \
        C = tb_connect(&B);                              \
    }                                                    \
    static void teardown(void)                           \
    {                                                    \
        mpb_free(C);                                     \
        ck_assert_int_eq(tb_stop(&B), 0);                \
    }

#endif
