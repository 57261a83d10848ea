/* counter.c - many processes increment one shared counter; none of the adds is lost.
 *
 * PROCS forked processes each run namespace.incr OPS times on the attribute "count" of
 * one namespace. The broker applies each incr atomically, so the total is exact
 * (with Python's `ns.count += 1` on a Manager Namespace, a read and a write, it is
 * not). Exits 0 only when count == PROCS * OPS.
 *
 *   counter [-s ADDRESS] [-p PROCS] [-n OPS]
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static const char *address; /* NULL: $MPBROKER_ADDRESS or the default */

static int fail(mpb_context *c, const char *what) {
    fprintf(stderr, "counter: %s: %s%s%s\n", what, c ? c->errkind : "",
            c && c->errkind[0] ? ": " : "", c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

static int worker(mpb_ref ns, long ops) {
    mpb_context *c = mpb_connect(address); /* never the parent's context after fork */
    if (c == NULL || c->err) return fail(c, "connect");
    for (long i = 0; i < ops; i++)
        if (mpb_ns_incr(c, ns, "count", 1, NULL) != MPB_OK) return fail(c, "namespace.incr");
    mpb_free(c);
    return 0;
}

int main(int argc, char **argv) {
    long procs = 4, ops = 10000;
    int opt, failed = 0;
    ex_prog = "counter";
    ex_usage = "usage: counter [-s ADDRESS] [-p PROCS] [-n OPS]\n"
    "  -s ADDRESS  broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "              $MPBROKER_ADDRESS, else the default socket)\n"
    "  -p PROCS    processes to fork, 1..10000 (default 4)\n"
    "  -n OPS      increments per process (default 10000)\n"
    "  -h, --help  this text\n"
    "  --version   the version (also -V)\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:p:n:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 'p') procs = ex_count("-p", optarg, 1, 10000);
        else if (opt == 'n') ops = ex_count("-n", optarg, 1, INT_MAX);
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);

    mpb_context *c = mpb_connect(address);
    if (c == NULL || c->err) return fail(c, "connect");
    mpb_ref ns;
    mpb_value zero = mpb_int(0);
    if (mpb_create(c, "namespace", NULL, &ns) != MPB_OK) return fail(c, "create namespace");
    if (mpb_ns_setattr(c, ns, "count", &zero) != MPB_OK) return fail(c, "namespace.setattr");

    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    if (pids == NULL) return fail(c, "calloc");
    fflush(stdout); /* or each child would print the parent's buffered output again */
    for (long i = 0; i < procs; i++) {
        if ((pids[i] = fork()) == 0) _exit(worker(ns, ops));
        if (pids[i] < 0) perror("counter: fork");
    }
    for (long i = 0; i < procs; i++) {
        int st;
        if (pids[i] < 0 || waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0)
            failed++;
    }
    free(pids);

    int64_t count, expected = (int64_t)procs * ops;
    mpb_value v;
    if (mpb_ns_getattr(c, ns, "count", &v) != MPB_OK) return fail(c, "namespace.getattr");
    count = v.type == MPB_INT ? v.v.i : -1;
    printf("count = ");
    mpb_value_print(stdout, &v);
    printf(" (expected %lld)\n", (long long)expected);
    mpb_value_free(&v);
    mpb_free(c);
    if (failed) fprintf(stderr, "counter: %d worker process(es) failed\n", failed);
    return failed == 0 && count == expected ? 0 : 1;
}
