/* test_examples.c - the examples run against a real broker and print the right thing.
 *
 * The binaries come from $MPB_EXAMPLES (set by meson); each runs as its own process
 * tree (it forks its workers), and its standard output is compared with what the
 * example promises in the README.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

static tb_broker B;
static void setup(void) { tb_start(&B, 0, NULL); }
/* The broker must exit 0: under ASan that also means it leaked nothing. */
static void teardown(void) { ck_assert_int_eq(tb_stop(&B), 0); }

/* Run `example args` against B; returns its stdout (malloc'd) and exit status. */
static char *run_example(const char *name, const char *args, int *status)
{
    const char *dir = getenv("MPB_EXAMPLES");
    ck_assert_msg(dir != NULL, "MPB_EXAMPLES not set");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/%s -s %s %s", dir, name, B.address, args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) out = realloc(out, cap *= 2);
    }
    out[len] = '\0';
    *status = pclose(p);
    return out;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

START_TEST(records_prints_seed_and_worker_records)
{
    int st;
    char *out = run_example("records", "-w 3", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_int_eq(count_of(out, "New record added!\n"), 3);
    /* the seed records first, in order */
    const char *seed = "Name: Computers\nScore: 1\n\nName: History\nScore: 5\n\nName: Hindi\nScore: 9\n\n";
    const char *at = strstr(out, seed);
    ck_assert_msg(at != NULL, "seed records missing:\n%s", out);
    ck_assert_ptr_nonnull(strstr(at, "Name: Worker-1\nScore: 10\n"));
    ck_assert_ptr_nonnull(strstr(at, "Name: Worker-2\nScore: 20\n"));
    ck_assert_ptr_nonnull(strstr(at, "Name: Worker-3\nScore: 30\n"));
    ck_assert_int_eq(count_of(out, "Name: "), 6);
    free(out);
}
END_TEST

START_TEST(namespace_prints_before_and_after)
{
    int st;
    char *out = run_example("namespace", "", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "before Namespace(x=1, y=1)\nafter Namespace(x=6, y=10)\n");
    free(out);
}
END_TEST

START_TEST(counter_total_is_exact)
{
    int st;
    char *out = run_example("counter", "-p 8 -n 2500", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "count = 20000 (expected 20000)\n");
    free(out);
}
END_TEST

START_TEST(producer_consumer_reads_every_message_then_stops)
{
    int st;
    char *out = run_example("producer_consumer", "-t 0.5", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "m1\nm2\nm3\nall messages read\n");
    free(out);
}
END_TEST

START_TEST(value_array_shows_the_childs_changes)
{
    int st;
    char *out = run_example("value_array", "", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n");
    free(out);
}
END_TEST

START_TEST(bank_total_never_changes)
{
    int st;
    char *out = run_example("bank", "-p 6 -n 300 -a 5", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "total before: 5000\ntotal after: 5000 (6 processes, 300 transfers each)\n");
    free(out);
}
END_TEST

/* Lock-free: atomic batches guarded by manager.expect; workers SIGKILLed at random
 * moments leave whole transfers only. */
START_TEST(bank_lock_free_total_holds_while_workers_are_killed)
{
    int st;
    char *out = run_example("bank", "-p 6 -n 300 -a 5 -l", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "total before: 5000\ntotal after: 5000 (6 processes, 300 transfers each, lock-free)\n");
    free(out);
    out = run_example("bank", "-p 6 -n 3000 -a 3 -l -k 4", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "total before: 3000\ntotal after: 3000 (6 processes, 3000 transfers each, lock-free)\n");
    free(out);
}
END_TEST

START_TEST(pipe_runs_the_seed_programs)
{
    int st;
    char *out = run_example("pipe", "", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "[42, None, 'hello']\nthen EOFError\nparent got: hello from the child\n"
                          "child got: hello from the parent\n");
    free(out);
}
END_TEST

START_TEST(csp_network_stops_on_poison)
{
    int st;
    char *out = run_example("csp", "-w 8 -n 200", &st);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", st, out);
    ck_assert_str_eq(out, "200 results: squares of distinct jobs\n10 processes stopped by poison\n");
    free(out);
}
END_TEST

START_TEST(examples_fail_cleanly_without_a_broker)
{
    int st;
    tb_stop(&B);
    char *out = run_example("counter", "-p 1 -n 1 2>/dev/null", &st);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    free(out);
    tb_start(&B, 0, NULL); /* for teardown */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("examples");
    TCase *tc = tcase_create("examples");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, records_prints_seed_and_worker_records);
    tcase_add_test(tc, namespace_prints_before_and_after);
    tcase_add_test(tc, counter_total_is_exact);
    tcase_add_test(tc, producer_consumer_reads_every_message_then_stops);
    tcase_add_test(tc, value_array_shows_the_childs_changes);
    tcase_add_test(tc, bank_total_never_changes);
    tcase_add_test(tc, bank_lock_free_total_holds_while_workers_are_killed);
    tcase_add_test(tc, pipe_runs_the_seed_programs);
    tcase_add_test(tc, csp_network_stops_on_poison);
    tcase_add_test(tc, examples_fail_cleanly_without_a_broker);
    suite_add_tcase(s, tc);
    return tb_run(s);
}
