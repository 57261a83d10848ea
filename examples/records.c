/* records.c - a shared list of records, as in the multiprocessing.Manager tutorials.
 *
 * The parent creates a list of (name, score) tuples on the broker; worker processes
 * each append one record through their own connection; then one more process prints
 * them all. Only the reference (a number) crosses fork(): every child connects anew,
 * because a context shared across processes would interleave their bytes.
 *
 *   records [-s ADDRESS] [-w WORKERS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static const char *address; /* NULL: $MPBROKER_ADDRESS or the default */

static int fail(mpb_context *c, const char *what) {
    fprintf(stderr, "records: %s: %s%s%s\n", what, c ? c->errkind : "",
            c && c->errkind[0] ? ": " : "", c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

/* A 2-tuple (name, score) built on the caller's stack: packing only reads it. */
static mpb_value record(mpb_value items[2], mpb_array *arr, const char *name, int64_t score) {
    items[0] = mpb_str_borrowed(name, strlen(name));
    items[1] = mpb_int(score);
    *arr = (mpb_array){.len = 2, .cap = 2, .items = items};
    mpb_value v = {.type = MPB_ARRAY};
    v.v.a = arr;
    return v;
}

static int insert_record(mpb_ref list, int i) {
    mpb_context *c = mpb_connect(address);
    if (c == NULL || c->err) return fail(c, "connect");
    char name[32];
    mpb_value items[2];
    mpb_array arr;
    snprintf(name, sizeof name, "Worker-%d", i);
    mpb_value rec = record(items, &arr, name, 10 * (int64_t)i);
    if (mpb_list_append(c, list, &rec) != MPB_OK) return fail(c, "list.append");
    printf("New record added!\n");
    mpb_free(c);
    return 0;
}

static int print_records(mpb_ref list, int unused) {
    (void)unused;
    mpb_context *c = mpb_connect(address);
    if (c == NULL || c->err) return fail(c, "connect");
    mpb_value all;
    if (mpb_list_copy(c, list, &all) != MPB_OK) return fail(c, "list.copy");
    for (size_t i = 0; i < all.v.a->len; i++) {
        const mpb_value *r = &all.v.a->items[i];
        if (r->type != MPB_ARRAY || r->v.a->len != 2) {
            fprintf(stderr, "records: item %zu is not a (name, score) record\n", i);
            mpb_value_free(&all);
            mpb_free(c);
            return 1;
        }
        const mpb_value *name = &r->v.a->items[0];
        printf("Name: ");
        if (name->type == MPB_STR)
            fwrite(name->v.s, 1, name->len, stdout);
        else
            mpb_value_print(stdout, name);
        printf("\nScore: ");
        mpb_value_print(stdout, &r->v.a->items[1]);
        printf("\n\n");
    }
    mpb_value_free(&all);
    mpb_free(c);
    return 0;
}

/* Run fn(list, arg) in a child process; returns its pid, or -1. */
static pid_t spawn(int (*fn)(mpb_ref, int), mpb_ref list, int arg) {
    fflush(stdout); /* or the child would print the parent's buffered output again */
    pid_t pid = fork();
    if (pid == 0) {
        int rc = fn(list, arg);
        fflush(stdout);
        _exit(rc);
    }
    if (pid < 0) perror("records: fork");
    return pid;
}

/* Wait for n children; returns how many failed. */
static int reap(const pid_t *pids, int n) {
    int failed = 0, st;
    for (int i = 0; i < n; i++)
        if (pids[i] < 0 || waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0)
            failed++;
    return failed;
}

int main(int argc, char **argv) {
    int workers = 2, opt;
    ex_prog = "records";
    ex_usage = "usage: records [-s ADDRESS] [-w WORKERS]\n"
    "  -s ADDRESS  broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "              $MPBROKER_ADDRESS, else the default socket)\n"
    "  -w WORKERS  processes that each add a record, 1..10000 (default 2)\n"
    "  -h, --help  this text\n"
    "  --version   the version (also -V)\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:w:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 'w') workers = (int)ex_count("-w", optarg, 1, 10000);
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);

    mpb_context *c = mpb_connect(address);
    if (c == NULL || c->err) return fail(c, "connect");
    mpb_value items[3][2], init_items[3];
    mpb_array arrs[3];
    init_items[0] = record(items[0], &arrs[0], "Computers", 1);
    init_items[1] = record(items[1], &arrs[1], "History", 5);
    init_items[2] = record(items[2], &arrs[2], "Hindi", 9);
    mpb_array init_arr = {.len = 3, .cap = 3, .items = init_items};
    mpb_value init = {.type = MPB_ARRAY};
    init.v.a = &init_arr;
    mpb_ref list;
    if (mpb_create(c, "list", &init, &list) != MPB_OK) return fail(c, "create list");

    /* The parent's connection stays open: it holds the list while the children work. */
    pid_t *pids = calloc((size_t)workers, sizeof *pids);
    if (pids == NULL) return fail(c, "calloc");
    for (int i = 0; i < workers; i++) pids[i] = spawn(insert_record, list, i + 1);
    int failed = reap(pids, workers);
    pid_t printer = spawn(print_records, list, 0);
    failed += reap(&printer, 1);
    free(pids);
    mpb_free(c);
    if (failed) fprintf(stderr, "records: %d child process(es) failed\n", failed);
    return failed ? 1 : 0;
}
