/* value_array.c - shared typed Value and Array, as multiprocessing's example:
 * a child sets Value('d') to 3.1415927 and negates Array('i', range(10)); the parent
 * prints both.
 *
 *   value_array [-s ADDRESS]
 */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static int fail(mpb_context *c, const char *what)
{
    fprintf(stderr, "value_array: %s: %s %s\n", what, c ? c->errkind : "",
            c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

/* The child: its own connection; num.value = 3.1415927; arr[i] = -arr[i]. */
static int child(const char *address, mpb_ref num, mpb_ref arr)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_value pi = mpb_float(3.1415927);
    if (mpb_shared_value_set(c, num, &pi) != MPB_OK) return fail(c, "value.set");
    int64_t n;
    if (mpb_shared_array_len(c, arr, &n) != MPB_OK) return fail(c, "array.len");
    for (int64_t i = 0; i < n; i++) {
        mpb_value x;
        if (mpb_shared_array_getitem(c, arr, i, &x) != MPB_OK) return fail(c, "array.getitem");
        x.v.i = -x.v.i;
        if (mpb_shared_array_setitem(c, arr, i, &x) != MPB_OK) return fail(c, "array.setitem");
    }
    mpb_free(c);
    return 0;
}

int main(int argc, char **argv)
{
    const char *address = NULL;
    int opt;
    ex_prog = "value_array";
    ex_usage = "usage: value_array [-s ADDRESS]\n"
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
    /* Value('d', 0.0) and Array('i', range(10)) */
    mpb_value vinit_items[2] = {mpb_str_borrowed("d", 1), mpb_float(0.0)};
    mpb_array vinit_arr = {2, 2, vinit_items};
    mpb_value vinit = {.type = MPB_ARRAY, .v.a = &vinit_arr};
    mpb_value range[10];
    for (int i = 0; i < 10; i++) range[i] = mpb_int(i);
    mpb_array range_arr = {10, 10, range};
    mpb_value ainit_items[2] = {mpb_str_borrowed("i", 1), {.type = MPB_ARRAY, .v.a = &range_arr}};
    mpb_array ainit_arr = {2, 2, ainit_items};
    mpb_value ainit = {.type = MPB_ARRAY, .v.a = &ainit_arr};
    mpb_ref num, arr;
    if (mpb_create(c, "value", &vinit, &num) != MPB_OK) return fail(c, "create value");
    if (mpb_create(c, "array", &ainit, &arr) != MPB_OK) return fail(c, "create array");

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) _exit(child(address, num, arr));
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st)) return fail(c, "child");

    mpb_value v, all;
    if (mpb_shared_value_get(c, num, &v) != MPB_OK) return fail(c, "value.get");
    if (mpb_shared_array_tolist(c, arr, &all) != MPB_OK) return fail(c, "array.tolist");
    mpb_value_print(stdout, &v);
    printf("\n");
    mpb_value_print(stdout, &all);
    printf("\n");
    mpb_value_free(&v);
    mpb_value_free(&all);
    mpb_free(c);
    return 0;
}
