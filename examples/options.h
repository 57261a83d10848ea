/* options.h - the command line the examples share: -h/--help and --version anywhere on
 * the line, an unknown option in one line and a hint, numbers checked and named when
 * wrong. Header-only, so each example stays one file plus this.
 *
 * An example sets ex_prog and ex_usage, calls ex_early(argc, argv) before getopt,
 * ex_bad_option() from getopt's '?' case, and ex_count / ex_seconds for numbers; each
 * exits with status 2 after saying what was wrong.
 */
#ifndef MPB_EXAMPLE_OPTIONS_H
#define MPB_EXAMPLE_OPTIONS_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MPB_VERSION
#define MPB_VERSION "unknown"
#endif

static const char *ex_prog;  /* "counter" */
static const char *ex_usage; /* the whole --help text */

/* -h, --help, -V, --version anywhere (before a "--"): print and exit 0. */
static inline void ex_early(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(ex_usage, stdout);
            exit(0);
        }
        if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("%s (mpbroker %s)\n", ex_prog, MPB_VERSION);
            exit(0);
        }
    }
}

/* getopt said which option was wrong, in one line: add the hint. */
static inline int ex_bad_option(void)
{
    fprintf(stderr, "%s --help lists the options\n", ex_prog);
    exit(2);
}

/* A whole number in [min, max] for option opt, or exit 2 naming the value. */
static inline long ex_count(const char *opt, const char *arg, long min, long max)
{
    char *end;
    errno = 0;
    long n = strtol(arg, &end, 10);
    if (end == arg || *end != '\0' || errno || n < min || n > max) {
        fprintf(stderr, "%s: %s wants a whole number from %ld to %ld, not '%s'\n", ex_prog,
                opt, min, max, arg);
        exit(2);
    }
    return n;
}

/* Seconds >= 0 (fractions allowed) for option opt, or exit 2 naming the value. */
static inline double ex_seconds(const char *opt, const char *arg)
{
    char *end;
    double s = strtod(arg, &end);
    if (end == arg || *end != '\0' || !isfinite(s) || s < 0 || s > 1e6) {
        fprintf(stderr, "%s: %s wants seconds from 0 to 1000000, not '%s'\n", ex_prog, opt,
                arg);
        exit(2);
    }
    return s;
}

/* Words left after the options: none is expected. */
static inline void ex_no_operands(int optind_, int argc, char **argv)
{
    if (optind_ < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", ex_prog, argv[optind_]);
        ex_bad_option();
    }
}

#endif
