/* watch.c - what watching and atomic batches cost (issue 12), against a running broker.
 *
 *   mpbroker-watchbench -s ADDRESS [-n OPS] [-w WATCHERS,...]
 *
 * 1. One writer does OPS dict.setitem calls (one round trip each) on a watched dict,
 *    with 0, 1, 100... watchers (forked processes, each on its own connection, reading
 *    every notification with mpb_next_change): the writer's ops/s.
 * 2. Transfers of K dict.incr (K = 2, 10) sent one by one (K round trips) against one
 *    manager.atomic of the same K ops (one round trip): operations/s either way.
 * Each figure is the best of 3 runs. Nothing is asserted: it reports.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpbroker.h"

static const char *address;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static mpb_context *conn(void)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) {
        fprintf(stderr, "watchbench: connect: %s\n", c ? c->errstr : "out of memory");
        exit(1);
    }
    return c;
}

static void check(mpb_context *c, int rc, const char *what)
{
    if (rc == MPB_OK) return;
    fprintf(stderr, "watchbench: %s: %s %s\n", what, c->errkind, c->errstr);
    exit(1);
}

/* A watcher: watch d, then read changes until killed. */
static void watcher(mpb_ref d, int ready_fd)
{
    mpb_context *c = conn();
    check(c, mpb_watch(c, d, NULL), "manager.watch");
    char x = 1;
    if (write(ready_fd, &x, 1) != 1) _exit(1);
    for (;;) {
        mpb_change ch;
        int got;
        if (mpb_next_change(c, -1, &ch, &got) != MPB_OK) _exit(0);
        if (got) mpb_value_free(&ch.args);
    }
}

static double writer_rate(int watchers, int ops)
{
    mpb_context *c = conn();
    mpb_ref d;
    check(c, mpb_create(c, "dict", NULL, &d), "create");
    pid_t *kids = calloc((size_t)watchers + 1, sizeof *kids);
    int p[2];
    if (pipe(p) < 0) exit(1);
    for (int i = 0; i < watchers; i++)
        if ((kids[i] = fork()) == 0) watcher(d, p[1]);
    for (int i = 0; i < watchers; i++) {
        char x;
        if (read(p[0], &x, 1) != 1) exit(1);
    }
    close(p[0]);
    close(p[1]);
    mpb_value k = mpb_str("key");
    double best = 0;
    for (int run = 0; run < 3; run++) {
        double t0 = now();
        for (int i = 0; i < ops; i++) {
            mpb_value v = mpb_int(i);
            check(c, mpb_dict_setitem(c, d, &k, &v), "dict.setitem");
        }
        double r = ops / (now() - t0);
        if (r > best) best = r;
    }
    mpb_value_free(&k);
    for (int i = 0; i < watchers; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < watchers; i++) waitpid(kids[i], NULL, 0);
    free(kids);
    mpb_free(c);
    return best;
}

/* K dict.incr per transfer, `transfers` times: one by one, or as one batch each. */
static double transfer_rate(int k, int transfers, int batched)
{
    mpb_context *c = conn();
    mpb_ref d;
    check(c, mpb_create(c, "dict", NULL, &d), "create");
    mpb_batch *b = mpb_batch_new();
    for (int i = 0; i < k; i++) {
        mpb_value a[3] = {mpb_refv(d), mpb_int(i), mpb_int(i % 2 ? 1 : -1)};
        mpb_batch_add(b, "dict.incr", a, 3);
    }
    double best = 0;
    for (int run = 0; run < 3; run++) {
        double t0 = now();
        for (int t = 0; t < transfers; t++) {
            if (batched) {
                check(c, mpb_atomic(c, b, NULL), "manager.atomic");
                continue;
            }
            for (int i = 0; i < k; i++) {
                mpb_value key = mpb_int(i);
                check(c, mpb_dict_incr(c, d, &key, i % 2 ? 1 : -1, NULL), "dict.incr");
            }
        }
        double r = (double)transfers * k / (now() - t0);
        if (r > best) best = r;
    }
    mpb_batch_free(b);
    mpb_free(c);
    return best;
}

int main(int argc, char **argv)
{
    int ops = 20000, opt;
    const char *wlist = "0,1,100";
    while ((opt = getopt(argc, argv, "s:n:w:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 'n') ops = atoi(optarg);
        else if (opt == 'w') wlist = optarg;
        else {
            fprintf(stderr, "usage: mpbroker-watchbench [-s ADDRESS] [-n OPS] [-w WATCHERS,...]\n");
            return 2;
        }
    }
    char *list = strdup(wlist);
    printf("| watchers | writer dict.setitem ops/s |\n|---|---|\n");
    for (char *save, *w = strtok_r(list, ",", &save); w; w = strtok_r(NULL, ",", &save))
        printf("| %d | %.0f |\n", atoi(w), writer_rate(atoi(w), ops));
    free(list);
    printf("\n| ops per transfer | one by one, ops/s | manager.atomic, ops/s | ratio |\n"
           "|---|---|---|---|\n");
    int ks[] = {2, 10};
    for (int i = 0; i < 2; i++) {
        int transfers = ops / ks[i];
        double one = transfer_rate(ks[i], transfers, 0), bat = transfer_rate(ks[i], transfers, 1);
        printf("| %d | %.0f | %.0f | %.1fx |\n", ks[i], one, bat, bat / one);
    }
    return 0;
}
