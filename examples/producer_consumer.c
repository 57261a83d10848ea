/* producer_consumer.c - a writer and a reader share a queue, as in the
 * multiprocessing.Manager producer/consumer example.
 *
 * The writer puts m1, m2, m3; the reader loops on get(timeout) and prints each
 * message, then "all messages read" when the queue stays empty for the timeout.
 *
 *   producer_consumer [-s ADDRESS] [-t TIMEOUT]   (TIMEOUT seconds, default 3)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static const char *address;
static double timeout = 3;

static int fail(mpb_context *c, const char *what)
{
    fprintf(stderr, "producer_consumer: %s: %s %s\n", what, c ? c->errkind : "",
            c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

static int writer(mpb_ref q)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    static const char *const msgs[] = {"m1", "m2", "m3"};
    for (int i = 0; i < 3; i++) {
        mpb_value m = mpb_str_borrowed(msgs[i], strlen(msgs[i]));
        if (mpb_queue_put(c, q, &m, -1) != MPB_OK) return fail(c, "queue.put");
    }
    mpb_free(c);
    return 0;
}

static int reader(mpb_ref q)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    for (;;) {
        mpb_value m;
        int rc = mpb_queue_get(c, q, timeout, &m);
        if (rc == MPB_ERR_REPLY && strcmp(c->errkind, "Empty") == 0) break;
        if (rc != MPB_OK) return fail(c, "queue.get");
        if (m.type == MPB_STR) printf("%.*s\n", (int)m.len, m.v.s);
        else mpb_value_print(stdout, &m), printf("\n");
        fflush(stdout);
        mpb_value_free(&m);
    }
    printf("all messages read\n");
    mpb_free(c);
    return 0;
}

static pid_t spawn(int (*fn)(mpb_ref), mpb_ref q)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = fn(q);
        fflush(stdout);
        _exit(rc);
    }
    return pid;
}

int main(int argc, char **argv)
{
    int opt;
    ex_prog = "producer_consumer";
    ex_usage = "usage: producer_consumer [-s ADDRESS] [-t TIMEOUT]\n"
    "  -s ADDRESS  broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "              $MPBROKER_ADDRESS, else the default socket)\n"
    "  -t TIMEOUT  seconds the reader waits for the next message before it stops\n"
    "              (default 3)\n"
    "  -h, --help  this text\n"
    "  --version   the version (also -V)\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:t:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 't') timeout = ex_seconds("-t", optarg);
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_ref q;
    if (mpb_create(c, "queue", NULL, &q) != MPB_OK) return fail(c, "create queue");
    pid_t pw = spawn(writer, q), pr = spawn(reader, q);
    int sw, sr, ok = waitpid(pw, &sw, 0) == pw && waitpid(pr, &sr, 0) == pr &&
                     WIFEXITED(sw) && !WEXITSTATUS(sw) && WIFEXITED(sr) && !WEXITSTATUS(sr);
    mpb_free(c);
    return ok ? 0 : 1;
}
