/* csp.c - a CSP network through broker channels, as PyCSP's classic example: a
 * producer, a pool of workers and a consumer, stopped by poison.
 *
 * The producer writes 1, 2, 3, ... to `jobs` until poisoned; each worker reads a job
 * and writes its square to `results`; the consumer reads N results, checks that they
 * are the squares of N distinct jobs (which jobs depends on the workers' race), then
 * poisons `results`. Poison spreads: a worker that meets it poisons both its channels
 * and stops, and so does the producer.
 *
 *   csp [-s ADDRESS] [-w WORKERS] [-n N]   (defaults 4 and 100)
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
    fprintf(stderr, "csp: %s: %s %s\n", what, c ? c->errkind : "",
            c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

static int poisoned(mpb_context *c) { return strcmp(c->errkind, "ChannelPoisoned") == 0; }

static void poison(mpb_context *c, mpb_ref ch)
{
    mpb_value a = mpb_refv(ch);
    mpb_call(c, "channel.poison", &a, 1, NULL);
}

static int write_int(mpb_context *c, mpb_ref ch, int64_t i)
{
    mpb_value a[2] = {mpb_refv(ch), mpb_int(i)};
    return mpb_call(c, "channel.write", a, 2, NULL);
}

static int read_int(mpb_context *c, mpb_ref ch, int64_t *out)
{
    mpb_value a = mpb_refv(ch), v;
    int rc = mpb_call(c, "channel.read", &a, 1, &v);
    if (rc == MPB_OK) *out = v.v.i;
    if (rc == MPB_OK) mpb_value_free(&v);
    return rc;
}

static int producer(mpb_context *c, mpb_ref jobs, mpb_ref results, int64_t n)
{
    (void)results, (void)n;
    for (int64_t i = 1;; i++)
        if (write_int(c, jobs, i) != MPB_OK) return poisoned(c) ? 0 : fail(c, "write");
}

static int worker(mpb_context *c, mpb_ref jobs, mpb_ref results, int64_t n)
{
    (void)n;
    int64_t x;
    while (read_int(c, jobs, &x) == MPB_OK && write_int(c, results, x * x) == MPB_OK) {
    }
    if (!poisoned(c)) return fail(c, "channel");
    poison(c, jobs);
    poison(c, results);
    return 0;
}

static int by_value(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int consumer(mpb_context *c, mpb_ref jobs, mpb_ref results, int64_t n)
{
    (void)jobs;
    int64_t *roots = malloc((size_t)n * sizeof *roots), x;
    if (!roots) return fail(c, "malloc");
    for (int64_t i = 0; i < n; i++) {
        if (read_int(c, results, &x) != MPB_OK) return fail(c, "read");
        int64_t r = 0;
        while (r * r < x) r++;
        roots[i] = r * r == x ? r : -1;
    }
    qsort(roots, (size_t)n, sizeof *roots, by_value);
    int ok = roots[0] > 0;
    for (int64_t i = 1; i < n; i++) ok &= roots[i] != roots[i - 1];
    free(roots);
    printf("%lld results: %s\n", (long long)n,
           ok ? "squares of distinct jobs" : "WRONG (not squares of distinct jobs)");
    fflush(stdout);
    poison(c, results);
    return ok ? 0 : 1;
}

typedef int (*proc_fn)(mpb_context *, mpb_ref, mpb_ref, int64_t);

static pid_t spawn(proc_fn fn, mpb_ref jobs, mpb_ref results, int64_t n)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        mpb_context *c = mpb_connect(address);
        if (!c || c->err) _exit(fail(c, "connect"));
        int rc = fn(c, jobs, results, n);
        mpb_free(c);
        _exit(rc);
    }
    return pid;
}

int main(int argc, char **argv)
{
    int opt;
    long workers = 4, n = 100;
    ex_prog = "csp";
    ex_usage = "usage: csp [-s ADDRESS] [-w WORKERS] [-n N]\n"
    "  -s ADDRESS  broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "              $MPBROKER_ADDRESS, else the default socket)\n"
    "  -w WORKERS  worker processes (default 4)\n"
    "  -n N        results the consumer takes before it poisons the network (100)\n"
    "  -h, --help  this text\n"
    "  --version   the version (also -V)\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:w:n:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 'w') workers = ex_count("-w", optarg, 1, 64);
        else if (opt == 'n') n = ex_count("-n", optarg, 1, 1000000);
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_ref jobs, results;
    if (mpb_create(c, "channel", NULL, &jobs) != MPB_OK ||
        mpb_create(c, "channel", NULL, &results) != MPB_OK)
        return fail(c, "create channel");
    pid_t pids[66];
    int np = 0;
    pids[np++] = spawn(producer, jobs, results, n);
    for (long i = 0; i < workers; i++) pids[np++] = spawn(worker, jobs, results, n);
    pids[np++] = spawn(consumer, jobs, results, n);
    int ok = 1;
    for (int i = 0; i < np; i++) {
        int st;
        ok &= waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    printf("%d processes stopped by poison\n", np);
    mpb_free(c);
    return ok ? 0 : 1;
}
