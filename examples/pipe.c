/* pipe.c - the seed's multiprocessing.Pipe programs through the broker.
 *
 * First: a child sends [42, None, 'hello'] and closes its end; the parent prints what
 * it receives, then the EOFError that follows. Then two processes greet each other
 * through a duplex pipe.
 *
 *   pipe [-s ADDRESS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static const char *address;

static int fail(mpb_context *c, const char *what)
{
    fprintf(stderr, "pipe: %s: %s %s\n", what, c ? c->errkind : "",
            c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

/* pipe.send REF END VALUE (value borrowed). */
static int send_on(mpb_context *c, mpb_ref p, int end, const mpb_value *v)
{
    mpb_value a[3] = {mpb_refv(p), mpb_int(end), *v};
    return mpb_call(c, "pipe.send", a, 3, NULL);
}

/* pipe.recv REF END: the value in *out (caller frees). */
static int recv_on(mpb_context *c, mpb_ref p, int end, mpb_value *out)
{
    mpb_value a[2] = {mpb_refv(p), mpb_int(end)};
    return mpb_call(c, "pipe.recv", a, 2, out);
}

/* def f(conn): conn.send([42, None, 'hello']); conn.close() */
static int f(mpb_ref p)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_value msg = mpb_array_value(3), x = mpb_int(42), none = mpb_nil(), s = mpb_str("hello");
    mpb_value_push(&msg, &x);
    mpb_value_push(&msg, &none);
    mpb_value_push(&msg, &s);
    int rc = send_on(c, p, 1, &msg);
    mpb_value_free(&msg);
    if (rc != MPB_OK) return fail(c, "pipe.send");
    mpb_value close[2] = {mpb_refv(p), mpb_int(1)};
    if (mpb_call(c, "pipe.close", close, 2, NULL) != MPB_OK) return fail(c, "pipe.close");
    mpb_free(c);
    return 0;
}

static int greeter(mpb_ref p)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_value hello = mpb_str_borrowed("hello from the child", 20), v;
    if (send_on(c, p, 1, &hello) != MPB_OK) return fail(c, "pipe.send");
    if (recv_on(c, p, 1, &v) != MPB_OK) return fail(c, "pipe.recv");
    printf("child got: %.*s\n", (int)v.len, v.v.s);
    fflush(stdout);
    mpb_value_free(&v);
    mpb_free(c); /* its connection goes: the end it used closes */
    return 0;
}

static pid_t spawn(int (*fn)(mpb_ref), mpb_ref p)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) _exit(fn(p));
    return pid;
}

static int reap(pid_t pid)
{
    int st;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv)
{
    int opt;
    ex_prog = "pipe";
    ex_usage = "usage: pipe [-s ADDRESS]\n"
    "  -s ADDRESS  broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "              $MPBROKER_ADDRESS, else the default socket)\n"
    "  -h, --help  this text\n"
    "  --version   the version (also -V)\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:")) != -1) {
        if (opt == 's') address = optarg;
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");

    /* parent_conn, child_conn = Pipe(): end 0 and end 1 */
    mpb_ref p;
    if (mpb_create(c, "pipe", NULL, &p) != MPB_OK) return fail(c, "create pipe");
    pid_t pid = spawn(f, p);
    mpb_value v;
    if (recv_on(c, p, 0, &v) != MPB_OK) return fail(c, "pipe.recv");
    mpb_value_print(stdout, &v);
    printf("\n");
    mpb_value_free(&v);
    if (!reap(pid)) return fail(c, "child");
    if (recv_on(c, p, 0, &v) == MPB_ERR_REPLY) printf("then %s\n", c->errkind);

    /* Two processes greet each other through a duplex pipe. */
    mpb_ref d;
    if (mpb_create(c, "pipe", NULL, &d) != MPB_OK) return fail(c, "create pipe");
    pid = spawn(greeter, d);
    if (recv_on(c, d, 0, &v) != MPB_OK) return fail(c, "pipe.recv");
    printf("parent got: %.*s\n", (int)v.len, v.v.s);
    fflush(stdout);
    mpb_value_free(&v);
    mpb_value hello = mpb_str_borrowed("hello from the parent", 21);
    if (send_on(c, d, 0, &hello) != MPB_OK) return fail(c, "pipe.send");
    int ok = reap(pid);
    mpb_free(c);
    return ok ? 0 : 1;
}
