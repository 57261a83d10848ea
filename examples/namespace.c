/* namespace.c - a shared Namespace changed by a child process, as in Python's
 * multiprocessing docs (ns.x += 5; ns.y *= 10).
 *
 * The parent creates a namespace with x=1 and y=1 and prints it; a forked child, on
 * its own connection, adds 5 to x with the atomic namespace.incr and multiplies y by
 * 10 with a compare-and-set loop (the general way to apply any function atomically:
 * read, compute, store only if nobody changed it meanwhile, else retry); the parent
 * waits and prints it again:
 *
 *   before Namespace(x=1, y=1)
 *   after Namespace(x=6, y=10)
 *
 *   namespace [-s ADDRESS]
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
    fprintf(stderr, "namespace: %s: %s%s%s\n", what, c ? c->errkind : "",
            c && c->errkind[0] ? ": " : "", c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

/* "LABEL Namespace(a=1, b='x')", attributes in insertion order, values as repr. */
static int print_ns(mpb_context *c, mpb_ref ns, const char *label) {
    mpb_value vars;
    if (mpb_ns_vars(c, ns, &vars) != MPB_OK) return -1;
    printf("%s Namespace(", label);
    size_t it = 0;
    const char *sep = "";
    for (mpb_map_entry *e; (e = mpb_map_next(vars.v.m, &it)) != NULL; sep = ", ") {
        printf("%s", sep);
        if (e->key.type == MPB_STR)
            fwrite(e->key.v.s, 1, e->key.len, stdout);
        else
            mpb_value_print(stdout, &e->key);
        printf("=");
        mpb_value_print(stdout, &e->val);
    }
    printf(")\n");
    mpb_value_free(&vars);
    return 0;
}

/* ns.y *= 10, atomically: retry until no other writer got in between. */
static int multiply_y(mpb_context *c, mpb_ref ns) {
    for (;;) {
        mpb_value y, ny;
        int swapped;
        if (mpb_ns_getattr(c, ns, "y", &y) != MPB_OK) return -1;
        if (y.type == MPB_INT)
            ny = mpb_int(y.v.i * 10);
        else if (y.type == MPB_FLOAT)
            ny = mpb_float(y.v.f * 10);
        else {
            fprintf(stderr, "namespace: y is a %s, not a number\n", mpb_type_name(&y));
            mpb_value_free(&y);
            return -1;
        }
        int rc = mpb_ns_cas(c, ns, "y", &y, &ny, &swapped);
        mpb_value_free(&y);
        if (rc != MPB_OK) return -1;
        if (swapped) return 0;
    }
}

static int child(mpb_ref ns) {
    mpb_context *c = mpb_connect(address); /* never the parent's context after fork */
    if (c == NULL || c->err) return fail(c, "connect");
    if (mpb_ns_incr(c, ns, "x", 5, NULL) != MPB_OK) return fail(c, "namespace.incr x");
    if (multiply_y(c, ns) != 0) return fail(c, "y *= 10");
    mpb_free(c);
    return 0;
}

int main(int argc, char **argv) {
    int opt, st;
    ex_prog = "namespace";
    ex_usage = "usage: namespace [-s ADDRESS]\n"
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
    if (c == NULL || c->err) return fail(c, "connect");
    mpb_ref ns;
    mpb_value one = mpb_int(1);
    if (mpb_create(c, "namespace", NULL, &ns) != MPB_OK) return fail(c, "create namespace");
    if (mpb_ns_setattr(c, ns, "x", &one) != MPB_OK || mpb_ns_setattr(c, ns, "y", &one))
        return fail(c, "namespace.setattr");
    if (print_ns(c, ns, "before") != 0) return fail(c, "namespace.vars");

    fflush(stdout); /* or the child would print the parent's buffered output again */
    pid_t pid = fork();
    if (pid < 0) {
        perror("namespace: fork");
        mpb_free(c);
        return 1;
    }
    if (pid == 0) _exit(child(ns));
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "namespace: the child process failed\n");
        mpb_free(c);
        return 1;
    }
    if (print_ns(c, ns, "after") != 0) return fail(c, "namespace.vars");
    mpb_free(c);
    return 0;
}
