/* test_shell.c - mpbroker-cli driven as a person or a script drives it, against a real
 * broker holding known objects: one-shot commands and scripts (exact output and exit
 * codes), --json, monitor seeing another process's requests, and an interactive
 * session on a pseudo-terminal using tab completion and history. Also the library
 * piece monitor needs: notifications queued while a reply is awaited.
 *
 * $MPB_CLI is the shell under test; every wait is bounded by a deadline.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpb_reader.h"
#include "testutil.h"

#define RUN_TIMEOUT_MS 20000

static tb_broker B;
static mpb_context *C;
static mpb_ref RECORDS, CONFIG, STATS;

#define S(s) mpb_str_borrowed((s), strlen(s))

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static mpb_value pair(const char *s, int64_t i) {
    mpb_value p = mpb_array_value(2), a = mpb_str(s), b = mpb_int(i);
    mpb_value_push(&p, &a);
    mpb_value_push(&p, &b);
    return p;
}

/* records = [['Computers', 1], ['History', 5], ['Hindi', 9]]
 * config = {'host': 'localhost', 'port': 7000, 'ratio': 0.5, 'jobs': <ref records>}
 * stats = Namespace(runs=3) */
static void populate(void) {
    ck_assert_int_eq(mpb_open(C, "list", "records", NULL, &RECORDS), MPB_OK);
    const char *names[] = {"Computers", "History", "Hindi"};
    int64_t scores[] = {1, 5, 9};
    for (int i = 0; i < 3; i++) {
        mpb_value p = pair(names[i], scores[i]);
        ck_assert_int_eq(mpb_list_append(C, RECORDS, &p), MPB_OK);
        mpb_value_free(&p);
    }
    ck_assert_int_eq(mpb_open(C, "dict", "config", NULL, &CONFIG), MPB_OK);
    mpb_value k1 = S("host"), v1 = S("localhost"), k2 = S("port"), v2 = mpb_int(7000),
              k3 = S("ratio"), v3 = mpb_float(0.5), k4 = S("jobs"), v4 = mpb_refv(RECORDS);
    ck_assert_int_eq(mpb_dict_setitem(C, CONFIG, &k1, &v1), MPB_OK);
    ck_assert_int_eq(mpb_dict_setitem(C, CONFIG, &k2, &v2), MPB_OK);
    ck_assert_int_eq(mpb_dict_setitem(C, CONFIG, &k3, &v3), MPB_OK);
    ck_assert_int_eq(mpb_dict_setitem(C, CONFIG, &k4, &v4), MPB_OK);
    ck_assert_int_eq(mpb_open(C, "namespace", "stats", NULL, &STATS), MPB_OK);
    ck_assert_int_eq(mpb_ns_incr(C, STATS, "runs", 3, NULL), MPB_OK);
}

static void setup(void) {
    tb_start(&B, 0, NULL);
    C = tb_connect(&B);
    populate();
}

static void setup_tcp(void) {
    tb_start(&B, 1, NULL);
    C = tb_connect(&B);
    populate();
}

static void teardown(void) {
    mpb_free(C);
    C = NULL;
    ck_assert_int_eq(tb_stop(&B), 0); /* under ASan: the broker leaked nothing */
}

/*--- Running the shell ---*/

typedef struct run {
    int code; /* exit status, or -1 if it did not exit normally */
    char out[16384], err[4096];
} run;

static const char *cli_path(void) {
    const char *p = getenv("MPB_CLI");
    ck_assert_msg(p != NULL && p[0] != '\0', "MPB_CLI is not set");
    return p;
}

/* Append what fd has to buf (NUL-terminated, capacity cap); 0 at EOF. */
static int drain(int fd, char *buf, size_t cap) {
    size_t have = strlen(buf);
    ssize_t n = read(fd, buf + have, cap - 1 - have);
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) return 0;
    buf[have + (size_t)n] = '\0';
    return have + (size_t)n < cap - 1;
}

/* Run the shell against B with argv (NULL-terminated; "-s SOCK" is put first unless
 * raw is set) and stdin from `input` (NULL: /dev/null); collect its output. */
static void run_argv(run *r, const char *input, int raw, const char *const *args) {
    const char *argv[64];
    int n = 0, in[2], out[2], err[2];
    argv[n++] = cli_path();
    if (!raw) {
        argv[n++] = "-s";
        argv[n++] = B.sock;
    }
    for (int i = 0; args[i] != NULL; i++) argv[n++] = args[i];
    argv[n] = NULL;
    memset(r, 0, sizeof *r);
    ck_assert(pipe(in) == 0 && pipe(out) == 0 && pipe(err) == 0);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(in[1]);
        close(out[0]);
        close(err[0]);
        if (input == NULL) {
            int fd = open("/dev/null", O_RDONLY);
            dup2(fd, 0);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (input != NULL) ck_assert(write(in[1], input, strlen(input)) == (ssize_t)strlen(input));
    close(in[1]);
    long long deadline = now_ms() + RUN_TIMEOUT_MS;
    struct pollfd pf[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    int open_fds = 2;
    while (open_fds > 0 && now_ms() < deadline) {
        if (poll(pf, 2, 100) <= 0) continue;
        for (int i = 0; i < 2; i++)
            if (pf[i].fd >= 0 && (pf[i].revents & (POLLIN | POLLHUP)) &&
                !drain(pf[i].fd, i ? r->err : r->out, i ? sizeof r->err : sizeof r->out)) {
                close(pf[i].fd);
                pf[i].fd = -1;
                open_fds--;
            }
    }
    if (open_fds > 0) kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    for (int i = 0; i < 2; i++)
        if (pf[i].fd >= 0) close(pf[i].fd);
    ck_assert_msg(open_fds == 0, "mpbroker-cli did not finish within %d s", RUN_TIMEOUT_MS / 1000);
    r->code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define RUN(r, input, ...) run_argv((r), (input), 0, (const char *const[]){__VA_ARGS__, NULL})
#define SCRIPT(r, input) run_argv((r), (input), 0, (const char *const[]){NULL})

/* Assert an exact output and exit code, showing everything on a mismatch. */
static void expect(const run *r, int code, const char *out, const char *err) {
    ck_assert_msg(r->code == code && strcmp(r->out, out) == 0 && (err == NULL || strcmp(r->err, err) == 0),
                  "exit %d (want %d)\n--- stdout:\n%s--- want:\n%s--- stderr:\n%s--- want:\n%s",
                  r->code, code, r->out, out, r->err, err ? err : "(anything)");
}

/* manager.objects' bytes for ref: the one column the test cannot know in advance. */
static long long bytes_of(mpb_ref ref) {
    mpb_value objs;
    long long b = -1;
    ck_assert_int_eq(mpb_call(C, "manager.objects", NULL, 0, &objs), MPB_OK);
    for (size_t i = 0; i < objs.v.a->len; i++) {
        mpb_map *m = objs.v.a->items[i].v.m;
        mpb_value kr = S("ref"), kb = S("bytes");
        if (mpb_map_get(m, &kr)->v.ref == ref) b = mpb_map_get(m, &kb)->v.i;
    }
    mpb_value_free(&objs);
    return b;
}

static char *repr_of_call(const char *method, mpb_value *args, size_t n) {
    mpb_value v;
    ck_assert_int_eq(mpb_call(C, method, args, n, &v), MPB_OK);
    char *s = mpb_value_repr(&v);
    mpb_value_free(&v);
    return s;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

/*--- One-shot ---*/

START_TEST(objects_is_an_aligned_table_of_every_object) {
    char want[1024];
    run r;
    RUN(&r, NULL, "objects");
    snprintf(want, sizeof want,
             "REF  TYPE       NAME     LEN  HOLDERS  HOLDS  CONTAINED  BYTES\n"
             "  1  list       records    3        1      1          1  %5lld\n"
             "  2  dict       config     4        1      1          0  %5lld\n"
             "  3  namespace  stats      1        1      1          0  %5lld\n",
             bytes_of(RECORDS), bytes_of(CONFIG), bytes_of(STATS));
    expect(&r, 0, want, "");
}
END_TEST

START_TEST(objects_escapes_names_that_would_forge_rows_or_reach_the_terminal) {
    /* A name with a newline and an escape sequence: printed as its repr (as show does),
     * so the table keeps one line per object and no control byte is written. */
    const char *evil = "evil\n1    list  forged\x1b[31m";
    mpb_ref e;
    ck_assert_int_eq(mpb_open(C, "list", evil, NULL, &e), MPB_OK);
    run r;
    RUN(&r, NULL, "objects");
    ck_assert_int_eq(r.code, 0);
    ck_assert_msg(strchr(r.out, '\x1b') == NULL, "an escape reached the terminal:\n%s", r.out);
    ck_assert_int_eq(count(r.out, "\n"), 5); /* the heading and four objects */
    ck_assert_msg(strstr(r.out, "'evil\\n1    list  forged\\x1b[31m'") != NULL, "%s", r.out);
    ck_assert_msg(strstr(r.out, "  records  ") != NULL, "plain names stay plain:\n%s", r.out);
    RUN(&r, NULL, "show", "--depth", "0", "@4");
    ck_assert_msg(strchr(r.out, '\x1b') == NULL && count(r.out, "\n") == 2, "%s", r.out);
}
END_TEST

START_TEST(the_deepest_value_shows_through_every_command) {
    /* The broker stores 30 levels under a key; dict.items chunks wrap it two deeper
     * (34 in all), which libmpbroker, and so the shell, must read. */
    mpb_value v = mpb_int(7);
    for (int i = 0; i < MPB_READER_MAX_DEPTH - 2; i++) {
        mpb_value a = mpb_array_value(1);
        ck_assert_int_eq(mpb_value_push(&a, &v), 0);
        v = a;
    }
    mpb_ref d;
    ck_assert_int_eq(mpb_open(C, "dict", "deep", NULL, &d), MPB_OK);
    mpb_value k = S("k");
    ck_assert_int_eq(mpb_dict_setitem(C, d, &k, &v), MPB_OK);
    mpb_value_free(&v);
    char want[256] = "[[['k', ";
    for (int i = 0; i < MPB_READER_MAX_DEPTH - 2; i++) strcat(want, "[");
    strcat(want, "7");
    for (int i = 0; i < MPB_READER_MAX_DEPTH - 2; i++) strcat(want, "]");
    strcat(want, "]], None]\n");
    run r;
    RUN(&r, NULL, "call", "deep", "items", "0", "10");
    expect(&r, 0, want, "");
    RUN(&r, NULL, "--json", "call", "deep", "items", "0", "10");
    ck_assert_int_eq(r.code, 0);
    RUN(&r, NULL, "show", "deep");
    ck_assert_int_eq(r.code, 0);
}
END_TEST

START_TEST(references_read_back_short_and_full) {
    /* The shell writes a reference of the broker's id space as its counter and reads it
     * back so; a full id reads too, and one of another space is shown in full. */
    char full[64], want[128];
    snprintf(full, sizeof full, "@%llu", (unsigned long long)STATS);
    run r;
    RUN(&r, NULL, "show", "--depth", "0", full);
    expect(&r, 0, "<ref 3: namespace> 'stats' len 1\n{'runs': 3}\n", "");
    RUN(&r, NULL, "show", "@3");
    expect(&r, 0, "<ref 3: namespace> 'stats' len 1\n{'runs': 3}\n", "");
    mpb_ref other = (STATS ^ (UINT64_C(1) << 40)) & ~MPB_REF_COUNTER_MASK; /* another space */
    snprintf(full, sizeof full, "{\"$ref\": %llu}", (unsigned long long)(other | 1));
    RUN(&r, NULL, "call", "manager.ping", full);
    snprintf(want, sizeof want, "<ref %llu: ?>\n", (unsigned long long)(other | 1));
    expect(&r, 0, want, "");
    RUN(&r, NULL, "--json", "call", "manager.ping", full);
    snprintf(want, sizeof want, "%s\n", full);
    expect(&r, 0, want, "");
}
END_TEST

START_TEST(objects_json_lists_refs_in_dollar_notation) {
    char want[1024];
    run r;
    RUN(&r, NULL, "--json", "objects");
    snprintf(want, sizeof want,
             "[{\"ref\": {\"$ref\": 1}, \"type\": \"list\", \"name\": \"records\", \"len\": 3, "
             "\"holders\": 1, \"holds\": 1, \"contained\": 1, \"bytes\": %lld}, "
             "{\"ref\": {\"$ref\": 2}, \"type\": \"dict\", \"name\": \"config\", \"len\": 4, "
             "\"holders\": 1, \"holds\": 1, \"contained\": 0, \"bytes\": %lld}, "
             "{\"ref\": {\"$ref\": 3}, \"type\": \"namespace\", \"name\": \"stats\", \"len\": 1, "
             "\"holders\": 1, \"holds\": 1, \"contained\": 0, \"bytes\": %lld}]\n",
             bytes_of(RECORDS), bytes_of(CONFIG), bytes_of(STATS));
    expect(&r, 0, want, "");
}
END_TEST

START_TEST(show_expands_nested_references_one_level) {
    run r;
    RUN(&r, NULL, "show", "config");
    expect(&r, 0,
           "<ref 2: dict> 'config' len 4\n"
           "{\n"
           "  'host': 'localhost',\n"
           "  'port': 7000,\n"
           "  'ratio': 0.5,\n"
           "  'jobs': <ref 1: list> [['Computers', 1], ['History', 5], ['Hindi', 9]]\n"
           "}\n",
           "");
    RUN(&r, NULL, "show", "--depth", "0", "@2");
    expect(&r, 0,
           "<ref 2: dict> 'config' len 4\n"
           "{'host': 'localhost', 'port': 7000, 'ratio': 0.5, 'jobs': <ref 1: list>}\n",
           "");
    RUN(&r, NULL, "show", "stats");
    expect(&r, 0, "<ref 3: namespace> 'stats' len 1\n{'runs': 3}\n", "");
}
END_TEST

START_TEST(show_json_writes_expanded_refs_with_type_and_value) {
    run r;
    RUN(&r, NULL, "--json", "show", "config");
    expect(&r, 0,
           "{\"host\": \"localhost\", \"port\": 7000, \"ratio\": 0.5, \"jobs\": {\"$ref\": 1, "
           "\"$type\": \"list\", \"$value\": [[\"Computers\", 1], [\"History\", 5], "
           "[\"Hindi\", 9]]}}\n",
           "");
    RUN(&r, NULL, "show", "--json", "--depth=0", "config");
    expect(&r, 0,
           "{\"host\": \"localhost\", \"port\": 7000, \"ratio\": 0.5, \"jobs\": {\"$ref\": 1}}\n", "");
}
END_TEST

START_TEST(show_stops_at_a_cycle) {
    mpb_value item = mpb_refv(RECORDS);
    ck_assert_int_eq(mpb_list_append(C, RECORDS, &item), MPB_OK); /* records holds itself */
    run r;
    RUN(&r, NULL, "show", "--depth", "5", "records");
    expect(&r, 0,
           "<ref 1: list> 'records' len 4\n"
           "[['Computers', 1], ['History', 5], ['Hindi', 9], <ref 1: list>]\n",
           "");
}
END_TEST

START_TEST(call_takes_json_short_or_full_names_and_bare_words) {
    run r;
    RUN(&r, NULL, "call", "records", "append", "[\"Maths\", 7]");
    expect(&r, 0, "None\n", "");
    RUN(&r, NULL, "call", "@1", "list.getitem", "-1");
    expect(&r, 0, "['Maths', 7]\n", "");
    RUN(&r, NULL, "call", "config", "setitem", "color", "blue"); /* bare words: strings */
    expect(&r, 0, "None\n", "");
    RUN(&r, NULL, "call", "stats", "incr", "runs", "2.5");
    expect(&r, 0, "5.5\n", "");
    RUN(&r, NULL, "--json", "call", "config", "get", "color");
    expect(&r, 0, "\"blue\"\n", "");
    mpb_value k = S("color");
    mpb_value args[] = {mpb_refv(CONFIG), k};
    char *s = repr_of_call("dict.getitem", args, 2);
    ck_assert_str_eq(s, "'blue'");
    free(s);
}
END_TEST

START_TEST(other_types_are_shown_and_called_through_their_family) {
    run r;
    RUN(&r, NULL, "create", "value", "counter", "[\"i\", 5]");
    expect(&r, 0, "<ref 4: value>\n", "");
    RUN(&r, NULL, "create", "array", "samples", "[\"d\", [1.5, 2]]");
    expect(&r, 0, "<ref 5: array>\n", "");
    RUN(&r, NULL, "create", "rlock", "guard");
    expect(&r, 0, "<ref 6: rlock>\n", "");
    RUN(&r, NULL, "show", "counter");
    expect(&r, 0, "<ref 4: value> 'counter'\n5\n", ""); /* no len: a value has none */
    RUN(&r, NULL, "show", "samples");
    expect(&r, 0, "<ref 5: array> 'samples' len 2\n[1.5, 2.0]\n", "");
    RUN(&r, NULL, "show", "guard"); /* no content: what its read-only methods say */
    expect(&r, 0, "<ref 6: rlock> 'guard'\n{'locked': False}\n", "");
    RUN(&r, NULL, "create", "queue", "inbox");
    RUN(&r, NULL, "call", "inbox", "put", "7");
    RUN(&r, NULL, "show", "inbox");
    expect(&r, 0, "<ref 7: queue> 'inbox' len 1\n{'qsize': 1, 'empty': False, 'full': False}\n", "");
    RUN(&r, NULL, "create", "event", "ready");
    RUN(&r, NULL, "--json", "show", "ready");
    expect(&r, 0, "{\"is_set\": false}\n", "");
    RUN(&r, NULL, "create", "set", "tags", "[1, [2, 3]]");
    RUN(&r, NULL, "show", "tags"); /* a set as Python prints it; an array in it a tuple */
    expect(&r, 0, "<ref 9: set> 'tags' len 2\n{1, (2, 3)}\n", "");
    RUN(&r, NULL, "call", "tags", "clear");
    RUN(&r, NULL, "show", "tags");
    expect(&r, 0, "<ref 9: set> 'tags' len 0\nset()\n", "");
    /* An rlock has lock.* methods: the short name finds them. */
    SCRIPT(&r, "call guard acquire\ncall guard locked\ncall guard release\ncall guard locked\n");
    expect(&r, 0, "True\nTrue\nNone\nFalse\n", "");
    RUN(&r, NULL, "call", "counter", "incr", "3");
    expect(&r, 0, "8\n", "");
}
END_TEST

START_TEST(call_writes_refs_and_bin_in_the_documented_notation) {
    run r;
    RUN(&r, NULL, "call", "config", "setitem", "counters", "@stats");
    expect(&r, 0, "None\n", "");
    RUN(&r, NULL, "call", "config", "setitem", "\"raw\"", "{\"$bin\": \"AAEC/w==\"}");
    expect(&r, 0, "None\n", "");
    RUN(&r, NULL, "call", "records", "append", "{\"$ref\": 2}");
    expect(&r, 0, "None\n", "");
    mpb_value args[] = {mpb_refv(CONFIG)};
    char *s = repr_of_call("dict.copy", args, 1), want[256];
    /* The library shows full ids; the shell, those of the broker's space as @1, @3. */
    snprintf(want, sizeof want, "{'host': 'localhost', 'port': 7000, 'ratio': 0.5, 'jobs': "
             "<ref %llu>, 'counters': <ref %llu>, 'raw': b'\\x00\\x01\\x02\\xff'}",
             (unsigned long long)RECORDS, (unsigned long long)STATS);
    ck_assert_str_eq(s, want);
    ck_assert_uint_eq(RECORDS & MPB_REF_COUNTER_MASK, 1);
    ck_assert_uint_eq(STATS & MPB_REF_COUNTER_MASK, 3);
    free(s);
    RUN(&r, NULL, "call", "config", "get", "raw");
    expect(&r, 0, "b'\\x00\\x01\\x02\\xff'\n", "");
    RUN(&r, NULL, "--json", "call", "config", "get", "raw");
    expect(&r, 0, "{\"$bin\": \"AAEC/w==\"}\n", "");
    RUN(&r, NULL, "call", "records", "pop");
    expect(&r, 0, "<ref 2: dict>\n", "");
}
END_TEST

START_TEST(json_notation_round_trips_through_the_broker) {
    /* manager.ping echoes its payload: what goes in must come out the same. */
    static const char *const cases[] = {
        "{\"$map\": [[1, \"a\"], [[2, 3], \"tuple key\"]]}",
        "{\"$uint\": \"18446744073709551615\"}",
        "[{\"$float\": \"nan\"}, {\"$float\": \"-inf\"}, 0.1, 1.0, 1e+300, -0.0]",
        "{\"$map\": [[\"$ref\", 7]]}",
        "{\"a\": null, \"b\": [true, false], \"\\u00e9\": \"caf\\u00e9\", \"n\": -9223372036854775808}",
    };
    static const char *const want[] = {
        "{\"$map\": [[1, \"a\"], [[2, 3], \"tuple key\"]]}\n",
        "{\"$uint\": \"18446744073709551615\"}\n",
        "[{\"$float\": \"nan\"}, {\"$float\": \"-inf\"}, 0.1, 1.0, 1e300, -0.0]\n",
        "{\"$map\": [[\"$ref\", 7]]}\n",
        "{\"a\": null, \"b\": [true, false], \"\xc3\xa9\": \"caf\xc3\xa9\", \"n\": -9223372036854775808}\n",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        run r;
        RUN(&r, NULL, "--json", "call", "manager.ping", cases[i]);
        expect(&r, 0, want[i], "");
    }
    run r;
    RUN(&r, NULL, "call", "manager.ping", "{\"$map\": [[1, \"a\"], [[2, 3], \"t\"]]}");
    expect(&r, 0, "{1: 'a', (2, 3): 't'}\n", ""); /* an array as a key: a tuple, as Python */
}
END_TEST

START_TEST(create_named_and_del) {
    run r;
    RUN(&r, NULL, "create", "list", "jobs", "[1, 2]");
    expect(&r, 0, "<ref 4: list>\n", "");
    RUN(&r, NULL, "create", "list", "jobs"); /* get or create: the same one, and it says so */
    expect(&r, 0, "<ref 4: list>\n", "note: 'jobs' exists already: this is that list\n");
    RUN(&r, NULL, "create", "list", "jobs", "[9, 9, 9]"); /* INITIAL cannot be applied */
    expect(&r, 1, "", "error: 'jobs' exists already (<ref 4: list>): INITIAL not applied (del "
                      "it first to replace it)\n");
    mpb_ref jobs;
    ck_assert_int_eq(mpb_lookup(C, "jobs", &jobs), MPB_OK);
    ck_assert_uint_eq(jobs, (RECORDS & ~MPB_REF_COUNTER_MASK) | 4); /* @4: in the broker's space */
    RUN(&r, NULL, "--json", "create", "namespace");
    expect(&r, 0, "{\"$ref\": 5}\n",
           "note: an anonymous object lives while held: this one goes when mpbroker-cli exits "
           "(give it a NAME to keep it)\n");
    RUN(&r, NULL, "del", "jobs");
    expect(&r, 0, "OK\n", "");
    ck_assert_int_eq(mpb_lookup(C, "jobs", &jobs), MPB_ERR_REPLY);
    RUN(&r, NULL, "del", "jobs");
    expect(&r, 1, "", "error: no object named 'jobs' (objects lists them)\n");
}
END_TEST

START_TEST(errors_are_clear_and_exit_nonzero) {
    run r;
    RUN(&r, NULL, "frobnicate");
    expect(&r, 2, "", "error: unknown command 'frobnicate' (help lists them)\n");
    RUN(&r, NULL, "call", "records", "frobnicate");
    expect(&r, 2, "", "error: unknown method 'list.frobnicate' (help list lists them)\n");
    RUN(&r, NULL, "call", "records", "append", "[1, 2");
    expect(&r, 2, "", "error: bad JSON in argument '[1, 2': ']' expected near end of file (column 5)\n");
    RUN(&r, NULL, "call", "records", "getitem", "10");
    expect(&r, 1, "", "error: IndexError: list index out of range\n");
    RUN(&r, NULL, "show", "nothing");
    expect(&r, 1, "", "error: no object named 'nothing' (objects lists them)\n");
    RUN(&r, NULL, "create", "tree");
    ck_assert_int_eq(r.code, 2);
    ck_assert_msg(strncmp(r.err, "error: unknown type 'tree' (types: list, dict, namespace", 56) == 0, "%s", r.err);
    RUN(&r, NULL, "show");
    expect(&r, 2, "", "error: usage: show [--depth N] REF|NAME\n");
    RUN(&r, NULL, "show", "--depth", "abc", "records"); /* a bad number is named */
    expect(&r, 2, "", "error: --depth wants a number from 0 to 60, not 'abc'\n");
    RUN(&r, NULL, "--bogus");
    ck_assert_int_eq(r.code, 2);
    run_argv(&r, NULL, 1, (const char *const[]){"-s", "/nonexistent/mpb.sock", "objects", NULL});
    expect(&r, 1, "", "error: cannot connect to unix:/nonexistent/mpb.sock: No such file or directory\n");
}
END_TEST

START_TEST(help_comes_from_the_method_table) {
    run r;
    RUN(&r, NULL, "help", "namespace");
    expect(&r, 0,
           "METHOD             ARGS                   COST                    WHAT IT DOES\n"
           "namespace.getattr  REF NAME               O(1)                    attribute NAME (AttributeError if none)\n"
           "namespace.setattr  REF NAME VALUE         O(1)                    set attribute NAME\n"
           "namespace.delattr  REF NAME               O(1)                    delete attribute NAME (AttributeError if none)\n"
           "namespace.vars     REF [START [COUNT]]    O(N), a chunk O(COUNT)  every attribute, as a map; with START a chunk: [PAIRS, NEXT]\n"
           "namespace.incr     REF NAME [DELTA]       O(1)                    add DELTA (1) to attribute NAME (absent counts as 0); returns the new value\n"
           "namespace.cas      REF NAME EXPECTED NEW  O(1)                    set NAME to NEW if it equals EXPECTED (absent matches nil); returns true if set\n",
           "");
    RUN(&r, NULL, "help", "list.append");
    expect(&r, 0,
           "METHOD       ARGS       COST  WHAT IT DOES\n"
           "list.append  REF VALUE  O(1)  append VALUE\n",
           "");
    RUN(&r, NULL, "--help");
    ck_assert_int_eq(r.code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "usage: mpbroker-cli [options] [COMMAND [ARGS...]]"));
}
END_TEST

START_TEST(stats_and_clients_describe_the_broker) {
    run r;
    RUN(&r, NULL, "stats");
    ck_assert_int_eq(r.code, 0);
    static const char *const lines[] = {"pid          ", "uptime       ", "connections  2\n",
                                        "objects      3\n", "operations   ", "memory       ",
                                        "limits       messages up to 16.0 MiB, nesting up to 32\n"};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++)
        ck_assert_msg(strstr(r.out, lines[i]) != NULL, "no '%s' in:\n%s", lines[i], r.out);
    RUN(&r, NULL, "--json", "stats");
    ck_assert_int_eq(r.code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "\"connections\": 2, \"objects\": 3, \"ops_total\": "));

    /* The test's own connection, seen from the shell: its pid, 3 holds. */
    RUN(&r, NULL, "clients");
    ck_assert_int_eq(r.code, 0);
    ck_assert_msg(strncmp(r.out, "ID  PEER", 8) == 0, "%s", r.out);
    char mine[64], pid[16];
    snprintf(mine, sizeof mine, "unix:pid=%d ", (int)getpid());
    snprintf(pid, sizeof pid, " %d ", (int)getpid());
    const char *row = strstr(r.out, mine);
    ck_assert_msg(row != NULL, "no '%s' in:\n%s", mine, r.out);
    ck_assert_msg(strstr(row + strlen(mine) - 1, pid) != NULL, "no pid column in:\n%s", r.out);
    ck_assert_msg(strstr(r.out, "  self\n") != NULL, "%s", r.out);
}
END_TEST

START_TEST(tcp_address_with_dash_H) {
    run r;
    run_argv(&r, NULL, 1, (const char *const[]){"-H", B.address, "call", "records", "len", NULL});
    expect(&r, 0, "3\n", "");
    /* A TCP peer has no pid or uid the broker could know: -, not 0 and -1. */
    run_argv(&r, NULL, 1, (const char *const[]){"-H", B.address, "clients", NULL});
    ck_assert_int_eq(r.code, 0);
    const char *row = strstr(r.out, "tcp:127.0.0.1:");
    ck_assert_msg(row != NULL, "%s", r.out);
    ck_assert_msg(strstr(row, "  -    -  ") != NULL, "no '-' PID and UID in:\n%s", r.out);
}
END_TEST

START_TEST(authkey_comes_from_the_environment) {
    char dir[] = "/tmp/mpbkey.XXXXXX", key[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(key, sizeof key, "%s/key", dir);
    FILE *f = fopen(key, "w");
    ck_assert_ptr_nonnull(f);
    fputs("open sesame\n", f);
    fclose(f);
    chmod(key, 0600);
    setenv("MPBROKER_AUTHKEY_FILE", key, 1); /* for tb_start's ping */
    tb_start(&B, 0, (const char *const[]){"--authkey-file", key, NULL});
    unsetenv("MPBROKER_AUTHKEY_FILE");
    run r;
    RUN(&r, NULL, "objects");
    expect(&r, 1, "", "error: AuthError: authenticate first: this broker has an authkey "
                      "(auth.challenge, then auth.response) (the key comes from "
                      "$MPBROKER_AUTHKEY_FILE or $MPBROKER_AUTHKEY)\n");
    setenv("MPBROKER_AUTHKEY", "open says me", 1);
    RUN(&r, NULL, "objects");
    ck_assert_int_eq(r.code, 1);
    ck_assert_msg(strstr(r.err, "error: cannot connect to unix:") == r.err &&
                  strstr(r.err, ": AuthError: ") != NULL, "%s", r.err);
    unsetenv("MPBROKER_AUTHKEY");
    setenv("MPBROKER_AUTHKEY_FILE", key, 1);
    RUN(&r, NULL, "objects");
    expect(&r, 0, "(no objects)\n", "");
    unsetenv("MPBROKER_AUTHKEY_FILE");
    RUN(&r, NULL, "--authkey-file", key, "objects"); /* the option, as the broker's */
    expect(&r, 0, "(no objects)\n", "");
    ck_assert_int_eq(tb_stop(&B), 0); /* under ASan: no leak in the broker either */
    unlink(key);
    rmdir(dir);
}
END_TEST

/*--- Script mode ---*/

START_TEST(script_runs_every_line_and_reports_the_failing_ones) {
    run r;
    RUN(&r,
        "# set up\n"
        "call stats setattr label 'two words'\n"
        "\n"
        "call records getitem 99\n"
        "call config setitem limits {\"max\": [1, 2]}\n"
        "show --depth 0 config\n"
        "nonsense here\n"
        "call stats getattr label\n",
        "--json"); /* --json before no command: applies to every line */
    expect(&r, 2,
           "null\n"
           "null\n"
           "{\"host\": \"localhost\", \"port\": 7000, \"ratio\": 0.5, \"jobs\": {\"$ref\": 1}, "
           "\"limits\": {\"max\": [1, 2]}}\n"
           "\"two words\"\n",
           /* with --json, errors are JSON too */
           "{\"error\": \"IndexError\", \"message\": \"list index out of range\", \"line\": 4}\n"
           "{\"error\": \"UsageError\", \"message\": \"unknown command 'nonsense' (help lists "
           "them)\", \"line\": 7}\n");
    SCRIPT(&r, "objects\nquit\ncall records clear\n");
    ck_assert_int_eq(r.code, 0);
    ck_assert_int_eq(mpb_list_len(C, RECORDS, &(int64_t){0}), MPB_OK);
    int64_t len;
    mpb_list_len(C, RECORDS, &len);
    ck_assert_int_eq(len, 3); /* quit stopped the script before the clear */
}
END_TEST

/*--- monitor ---*/

/* Is a monitoring connection registered yet? */
static int monitor_count(void) {
    mpb_value cs;
    int n = 0;
    ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &cs), MPB_OK);
    for (size_t i = 0; i < cs.v.a->len; i++) {
        mpb_value k = S("monitor");
        mpb_value *v = mpb_map_get(cs.v.a->items[i].v.m, &k);
        n += v != NULL && v->type == MPB_BOOL && v->v.b;
    }
    mpb_value_free(&cs);
    return n;
}

/* Wait until n monitoring connections are registered (10 s at most). */
static void wait_monitors(int n) {
    long long deadline = now_ms() + 10000;
    while (monitor_count() != n) {
        ck_assert_msg(now_ms() < deadline, "not %d monitors within 10 s", n);
        usleep(10000);
    }
}

/* Start `mpbroker-cli [--json] monitor` with its stdout on a pipe (*fd). */
static pid_t start_monitor(int json, int *fd) {
    int p[2];
    ck_assert(pipe(p) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        execl(cli_path(), cli_path(), "-s", B.sock, json ? "--json" : "monitor",
              json ? "monitor" : NULL, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *fd = p[0];
    wait_monitors(1);
    return pid;
}

/* Read from fd until buf holds needle; 1 found, 0 at EOF or after timeout_ms. */
static int read_until(int fd, char *buf, size_t cap, const char *needle, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    while (strstr(buf, needle) == NULL) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0) return 0;
        if (!drain(fd, buf, cap)) return strstr(buf, needle) != NULL;
    }
    return 1;
}

static int stop_child(pid_t pid) {
    int st;
    kill(pid, SIGINT);
    long long deadline = now_ms() + 10000;
    pid_t r;
    while ((r = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() < deadline) usleep(10000);
    if (r != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(monitor_shows_another_process_operations) {
    int fd;
    pid_t pid = start_monitor(0, &fd);
    /* Another process: a forked child with its own connection. */
    pid_t other = fork();
    ck_assert(other >= 0);
    if (other == 0) {
        mpb_context *c = mpb_connect(B.address);
        mpb_value v = S("from a child");
        int ok = c && !c->err && mpb_list_append(c, RECORDS, &v) == MPB_OK;
        mpb_free(c);
        _exit(ok ? 0 : 1);
    }
    int st;
    waitpid(other, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    mpb_value k = S("missing");
    mpb_value out;
    ck_assert_int_eq(mpb_dict_getitem(C, CONFIG, &k, &out), MPB_ERR_REPLY); /* failed ones too */

    char buf[8192] = "", want[128];
    snprintf(want, sizeof want, " unix:pid=%d] list.append(<ref 1>, 'from a child')\n", (int)other);
    ck_assert_msg(read_until(fd, buf, sizeof buf, want, 10000), "no '%s' in:\n%s", want, buf);
    snprintf(want, sizeof want, " unix:pid=%d] dict.getitem(<ref 2>, 'missing')\n", (int)getpid());
    ck_assert_msg(read_until(fd, buf, sizeof buf, want, 10000), "no '%s' in:\n%s", want, buf);
    ck_assert_int_eq(stop_child(pid), 0); /* Ctrl-C ends it cleanly */
    close(fd);
}
END_TEST

/*--- watch, atomic ---*/

START_TEST(watch_streams_writes_and_atomic_runs_a_batch) {
    int p[2];
    ck_assert(pipe(p) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        execl(cli_path(), cli_path(), "-s", B.sock, "watch", "stats", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    /* Write until the watch (registered some time after the start) shows a line. */
    char buf[8192] = "";
    int seen = 0;
    for (int i = 0; i < 100 && !seen; i++) {
        ck_assert_int_eq(mpb_ns_incr(C, STATS, "runs", 1, NULL), MPB_OK);
        seen = read_until(p[0], buf, sizeof buf, "namespace.incr('runs', 1)\n", 100);
    }
    ck_assert_msg(seen, "watch printed nothing:\n%s", buf);
    run r;
    RUN(&r, NULL, "atomic", "[[\"namespace.incr\", [\"@stats\", \"runs\", 10]], "
                            "[\"namespace.setattr\", [\"@stats\", \"who\", \"shell\"]]]");
    ck_assert_msg(r.code == 0, "exit %d: %s", r.code, r.err);
    ck_assert_msg(strstr(r.out, ", None]\n") != NULL, "%s", r.out);
    ck_assert_msg(read_until(p[0], buf, sizeof buf, " namespace.setattr('who', 'shell')\n", 10000),
                  "%s", buf);
    ck_assert_msg(strstr(buf, " namespace.incr('runs', 10)\n") != NULL, "%s", buf);
    /* A failing batch: the error, exit 1, nothing changed. */
    RUN(&r, NULL, "atomic", "[[\"namespace.incr\", [\"@stats\", \"runs\", 10]], "
                            "[\"namespace.delattr\", [\"@stats\", \"nope\"]]]");
    ck_assert_msg(r.code == 1 && strstr(r.err, "op 1: AttributeError") != NULL, "%d %s", r.code, r.err);
    ck_assert_int_eq(stop_child(pid), 0);
    close(p[0]);
}
END_TEST

START_TEST(oneshot_commands_send_only_what_they_need) {
    int fd;
    run r;
    pid_t pid = start_monitor(0, &fd);
    RUN(&r, NULL, "call", "records", "list.len");
    expect(&r, 0, "3\n", "");
    /* A short method name: the type comes from manager.typeof, not from a walk over
     * every object (issue 22's review: it was still manager.objects, page by page). */
    RUN(&r, NULL, "call", "records", "len");
    expect(&r, 0, "3\n", "");
    RUN(&r, NULL, "call", "manager.ping");
    expect(&r, 0, "'pong'\n", "");
    RUN(&r, NULL, "create", "list", "fresh", "[1]");
    expect(&r, 0, "<ref 4: list>\n", "");
    RUN(&r, NULL, "create", "list", "fresh"); /* exists: says so, with its type */
    expect(&r, 0, "<ref 4: list>\n", "note: 'fresh' exists already: this is that list\n");
    mpb_value v = S("end");
    ck_assert_int_eq(mpb_call(C, "manager.ping", &v, 1, NULL), MPB_OK); /* the marker */
    char buf[8192] = "";
    ck_assert(read_until(fd, buf, sizeof buf, "manager.ping('end')", 10000));
    ck_assert_msg(strstr(buf, "list.len(<ref 1>)") != NULL, "%s", buf);
    /* No table, no object list: a monitor sees the calls themselves. */
    ck_assert_msg(strstr(buf, "manager.methods") == NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "manager.objects") == NULL, "%s", buf);
    /* show by name needs the method table (which method reads a list) but no listing;
     * its header says the same as before: the name and the length. */
    RUN(&r, NULL, "show", "records");
    expect(&r, 0, "<ref 1: list> 'records' len 3\n"
                  "[['Computers', 1], ['History', 5], ['Hindi', 9]]\n", "");
    RUN(&r, NULL, "show", "nobody");
    expect(&r, 1, "", "error: no object named 'nobody' (objects lists them)\n");
    v = S("end2");
    ck_assert_int_eq(mpb_call(C, "manager.ping", &v, 1, NULL), MPB_OK);
    buf[0] = '\0';
    ck_assert(read_until(fd, buf, sizeof buf, "manager.ping('end2')", 10000));
    ck_assert_msg(strstr(buf, "list.copy(<ref 1>)") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "manager.objects") == NULL, "%s", buf);
    ck_assert_int_eq(stop_child(pid), 0);
    close(fd);
}
END_TEST

START_TEST(monitor_json_is_one_object_a_line) {
    int fd;
    pid_t pid = start_monitor(1, &fd);
    ck_assert_int_eq(mpb_ns_incr(C, STATS, "runs", 1, NULL), MPB_OK);
    char buf[8192] = "";
    const char *want = "\"method\": \"namespace.incr\", \"params\": [{\"$ref\": 3}, \"runs\", 1]}\n";
    ck_assert_msg(read_until(fd, buf, sizeof buf, want, 10000), "no '%s' in:\n%s", want, buf);
    ck_assert_msg(strncmp(buf, "{\"time\": ", 9) == 0, "%s", buf);
    ck_assert_int_eq(stop_child(pid), 0);
    close(fd);
}
END_TEST

START_TEST(monitor_escapes_the_method_another_client_sent) {
    int fd;
    pid_t pid = start_monitor(0, &fd);
    int raw = tb_raw_connect(&B);
    tb_send_call(raw, 1, "x\x1b[2J\nforged", NULL, 0);
    mpb_value reply;
    ck_assert_int_eq(tb_read_msg(raw, &reply, 5000), 0); /* NoSuchMethod */
    mpb_value_free(&reply);
    char buf[8192] = "";
    const char *want = "] 'x\\x1b[2J\\nforged'()\n";
    ck_assert_msg(read_until(fd, buf, sizeof buf, want, 10000), "no '%s' in:\n%s", want, buf);
    ck_assert_msg(strchr(buf, '\x1b') == NULL, "%s", buf);
    ck_assert_int_eq(stop_child(pid), 0);
    close(fd);
    close(raw);
}
END_TEST

/*--- Interactive, on a pseudo-terminal ---*/

typedef struct term {
    pid_t pid;
    int fd;
    char buf[65536]; /* what the shell wrote, less its terminal control sequences */
    size_t len;
    int esc; /* inside an escape sequence: 1 after ESC, 2 inside ESC [ ... */
    bool cr; /* a \r was read: kept only if a \n follows */
} term;

/* Read what the terminal has, dropping cursor motion: ESC [ ... sequences and a \r
 * not followed by \n (libedit redraws "obj<Tab>" as "obj", \r, ESC[33G, "ects ").
 * 0 at EOF or when full. */
static int term_read(term *t) {
    char raw[4096];
    ssize_t n = read(t->fd, raw, sizeof raw);
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) return 0;
    for (ssize_t i = 0; i < n && t->len < sizeof t->buf - 1; i++) {
        unsigned char ch = (unsigned char)raw[i];
        if (t->esc == 1) t->esc = ch == '[' ? 2 : 0;
        else if (t->esc == 2) t->esc = ch >= 0x40 && ch <= 0x7e ? 0 : 2;
        else if (ch == 0x1b) t->esc = 1;
        else if (ch == '\r') t->cr = true;
        else if (ch != 0x07) {
            if (t->cr && ch == '\n' && t->len < sizeof t->buf - 2) t->buf[t->len++] = '\r';
            t->cr = false;
            t->buf[t->len++] = (char)ch;
        }
    }
    t->buf[t->len] = '\0';
    return t->len < sizeof t->buf - 1;
}

/* The shell on a new terminal, connecting to sock, with HOME and its history in dir. */
static void term_start(term *t, const char *sock, const char *dir) {
    struct winsize ws = {.ws_row = 40, .ws_col = 120};
    memset(t, 0, sizeof *t);
    fflush(stdout);
    t->pid = forkpty(&t->fd, NULL, NULL, &ws);
    ck_assert_msg(t->pid >= 0, "forkpty: %s", strerror(errno));
    if (t->pid == 0) {
        char hist[128];
        snprintf(hist, sizeof hist, "%s/history", dir);
        setenv("TERM", "xterm", 1);
        setenv("HOME", dir, 1); /* no ~/.editrc of the person running the tests */
        setenv("MPBROKER_HISTFILE", hist, 1);
        execl(cli_path(), cli_path(), "-s", sock, (char *)NULL);
        _exit(127);
    }
}

/* Wait until the shell has written needle (counting from offset `from` of buf);
 * returns the offset just past it. */
static size_t term_expect(term *t, size_t from, const char *needle) {
    long long deadline = now_ms() + 10000;
    const char *at;
    while ((at = strstr(t->buf + from, needle)) == NULL) {
        struct pollfd pf = {.fd = t->fd, .events = POLLIN};
        long long left = deadline - now_ms();
        ck_assert_msg(left > 0 && poll(&pf, 1, (int)left) > 0 && term_read(t),
                      "the shell did not write '%s'; it wrote:\n%s", needle, t->buf + from);
    }
    return (size_t)(at - t->buf) + strlen(needle);
}

/* Type keys; wait for what they should bring; return the offset just past it. Wait
 * for the prompt after a command's output before typing more: libedit reads keys
 * typed ahead of its prompt a line at a time (no completion, ^D lost). */
static size_t term_type(term *t, const char *keys, const char *expect_after) {
    size_t from = t->len;
    ck_assert(write(t->fd, keys, strlen(keys)) == (ssize_t)strlen(keys));
    return term_expect(t, from, expect_after);
}

static void term_send(term *t, const char *keys) {
    ck_assert(write(t->fd, keys, strlen(keys)) == (ssize_t)strlen(keys));
}

/* Wait for the shell to exit (10 s at most); its exit status. */
static int term_end(term *t) {
    int st;
    long long deadline = now_ms() + 10000;
    pid_t r;
    while ((r = waitpid(t->pid, &st, WNOHANG)) == 0 && now_ms() < deadline) {
        struct pollfd pf = {.fd = t->fd, .events = POLLIN};
        if (poll(&pf, 1, 50) > 0 && !term_read(t)) usleep(10000); /* EIO once it closed */
    }
    if (r != t->pid) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, &st, 0);
    }
    close(t->fd);
    size_t len = strlen(t->buf);
    ck_assert_msg(r == t->pid, "the shell did not exit within 10 s; it wrote last:\n%s",
                  t->buf + (len > 400 ? len - 400 : 0));
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(interactive_completes_and_recalls_history) {
    term t;
    char prompt[400];
    snprintf(prompt, sizeof prompt, "mpbroker unix:%s> ", B.sock);
    term_start(&t, B.sock, B.dir); /* the history goes with the broker's directory */
    term_expect(&t, 0, prompt);

    /* obj<Tab> completes the command: the table proves it ran as `objects`. */
    term_type(&t, "obj\t", "objects ");
    size_t at = term_type(&t, "\r", "CONTAINED");
    term_expect(&t, at, prompt);
    /* Up-arrow recalls it. */
    at = term_type(&t, "\x1b[A\r", "CONTAINED");
    term_expect(&t, at, prompt);
    ck_assert_int_eq(count(t.buf, "CONTAINED"), 2);

    /* After a flag, as without: show --json rec<Tab>, call --json rec<Tab> le<Tab>,
     * show --depth 2 rec<Tab>; and the flags themselves: show --j<Tab>. */
    term_type(&t, "show --json rec\t", "ords ");
    at = term_type(&t, "\r", "[\"Hindi\", 9]]");
    term_expect(&t, at, prompt);
    term_type(&t, "call --json rec\t", "ords ");
    term_type(&t, "le\t", "n ");
    at = term_type(&t, "\r", "\r\n3\r\n");
    term_expect(&t, at, prompt);
    term_type(&t, "show --depth 0 rec\t", "ords ");
    at = term_type(&t, "\r", "'records' len 3");
    term_expect(&t, at, prompt);
    term_type(&t, "show --j\t", "son ");
    term_type(&t, "conf\t", "ig ");
    at = term_type(&t, "\r", "\"localhost\"");
    term_expect(&t, at, prompt);

    /* Object name, then method name: call rec<Tab> le<Tab> -> call records len */
    term_type(&t, "call rec\t", "records ");
    term_type(&t, "le\t", "n ");
    at = term_type(&t, "\r", "\r\n3\r\n");
    term_expect(&t, at, prompt);

    /* A type name: create nam<Tab> -> create namespace */
    term_type(&t, "create nam\t", "espace ");
    at = term_type(&t, "scratch\r", "<ref 4: namespace>");
    term_expect(&t, at, prompt);

    /* Two candidates: Tab lists them both. */
    term_type(&t, "call records co\t", "count");
    term_expect(&t, 0, "copy");
    term_send(&t, "\x15"); /* Ctrl-U: drop the line (else the next one fails) */

    /* An error does not end the session. */
    at = term_type(&t, "call records pop 42\r", "error: IndexError: pop index out of range");
    term_expect(&t, at, prompt);
    term_type(&t, "quit\r", "quit");
    ck_assert_int_eq(term_end(&t), 0);

    mpb_ref ns;
    ck_assert_int_eq(mpb_lookup(C, "scratch", &ns), MPB_OK);

    /* History survives in the file: a new session's up-arrow walks back through it. */
    term_start(&t, B.sock, B.dir);
    term_expect(&t, 0, prompt);
    term_type(&t, "\x1b[A", "quit");
    term_type(&t, "\x1b[A", "call records pop 42");
    at = term_type(&t, "\x1b[A\x1b[A\r", "\r\n3\r\n"); /* create ..., then call records len */
    term_expect(&t, at, prompt);
    term_send(&t, "\x04"); /* Ctrl-D on an empty line ends the session */
    ck_assert_int_eq(term_end(&t), 0);
}
END_TEST

START_TEST(interactive_ctrl_c_drops_the_line_and_goes_on) {
    term t;
    char prompt[400], fresh[404];
    snprintf(prompt, sizeof prompt, "mpbroker unix:%s> ", B.sock);
    snprintf(fresh, sizeof fresh, "\r\n%s", prompt);
    term_start(&t, B.sock, B.dir);
    term_expect(&t, 0, prompt);
    size_t at = term_type(&t, "call records clear", "clear");
    at = term_type(&t, "\x03", fresh); /* Ctrl-C: a new line, a new prompt */
    at = term_type(&t, "call records len\r", "\r\n3\r\n"); /* not cleared */
    term_expect(&t, at, prompt);
    term_type(&t, "exit\r", "exit");
    ck_assert_int_eq(term_end(&t), 0);
}
END_TEST

START_TEST(interactive_monitor_stops_on_ctrl_c_and_the_session_goes_on) {
    term t;
    char prompt[400], fresh[404];
    snprintf(prompt, sizeof prompt, "mpbroker unix:%s> ", B.sock);
    snprintf(fresh, sizeof fresh, "\r\n%s", prompt);
    term_start(&t, B.sock, B.dir);
    term_expect(&t, 0, prompt);
    size_t at = term_type(&t, "monitor\r", "monitor\r\n");
    wait_monitors(1);
    mpb_value v = mpb_str("seen");
    ck_assert_int_eq(mpb_list_append(C, RECORDS, &v), MPB_OK);
    mpb_value_free(&v);
    term_expect(&t, at, "] list.append(<ref 1>, 'seen')\r\n");
    at = term_type(&t, "\x03", fresh);
    at = term_type(&t, "call records len\r", "\r\n4\r\n");
    term_expect(&t, at, prompt);
    wait_monitors(0); /* its connection was closed */
    term_type(&t, "quit\r", "quit");
    ck_assert_int_eq(term_end(&t), 0);
}
END_TEST

/* Parked requests on the broker now (manager.clients "parked"). */
static int parked_count(void) {
    mpb_value cs;
    int n = 0;
    ck_assert_int_eq(mpb_call(C, "manager.clients", NULL, 0, &cs), MPB_OK);
    for (size_t i = 0; i < cs.v.a->len; i++) {
        mpb_value k = S("parked");
        mpb_value *v = mpb_map_get(cs.v.a->items[i].v.m, &k);
        n += v != NULL && v->type == MPB_INT ? (int)v->v.i : 0;
    }
    mpb_value_free(&cs);
    return n;
}

START_TEST(interactive_ctrl_c_cancels_a_blocking_call_and_the_session_goes_on) {
    term t;
    char prompt[400];
    mpb_ref jobs;
    snprintf(prompt, sizeof prompt, "mpbroker unix:%s> ", B.sock);
    ck_assert_int_eq(mpb_open(C, "queue", "jobs", NULL, &jobs), MPB_OK);
    term_start(&t, B.sock, B.dir);
    term_expect(&t, 0, prompt);
    size_t at = term_type(&t, "call jobs get\r", "get\r\n");
    long long deadline = now_ms() + 10000;
    while (parked_count() != 1) {
        ck_assert_msg(now_ms() < deadline, "the get never parked");
        usleep(10000);
    }
    at = term_type(&t, "\x03", "interrupted");
    term_expect(&t, at, prompt);
    ck_assert_int_eq(parked_count(), 0); /* the call is gone from the broker */
    /* An item put now stays: no cancelled get takes it. */
    mpb_value item = S("job-1");
    ck_assert_int_eq(mpb_queue_put(C, jobs, &item, -1), MPB_OK);
    at = term_type(&t, "call jobs qsize\r", "\r\n1\r\n");
    term_expect(&t, at, prompt);
    term_type(&t, "quit\r", "quit");
    ck_assert_int_eq(term_end(&t), 0);
}
END_TEST

START_TEST(interactive_json_before_the_command_and_errors_as_json) {
    term t;
    char prompt[400];
    snprintf(prompt, sizeof prompt, "mpbroker unix:%s> ", B.sock);
    term_start(&t, B.sock, B.dir);
    term_expect(&t, 0, prompt);
    term_type(&t, "--json sh\t", "ow "); /* completion sees past the leading --json */
    size_t at = term_type(&t, "config\r", "\"host\": \"localhost\"");
    term_expect(&t, at, prompt);
    at = term_type(&t, "--json call records pop 42\r",
                   "{\"error\": \"IndexError\", \"message\": \"pop index out of range\"}");
    term_expect(&t, at, prompt);
    term_type(&t, "quit\r", "quit");
    ck_assert_int_eq(term_end(&t), 0);
}
END_TEST

START_TEST(interactive_starts_without_a_broker) {
    term t;
    char dir[] = "/tmp/mpbcli.XXXXXX", hist[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    term_start(&t, "/nonexistent/mpb.sock", dir);
    term_expect(&t, 0, "error: cannot connect to unix:/nonexistent/mpb.sock: No such file or directory");
    term_expect(&t, 0, "mpbroker unix:/nonexistent/mpb.sock (not connected)> ");
    size_t at = term_type(&t, "objects\r", "cannot connect");
    term_expect(&t, at, "(not connected)> ");
    term_type(&t, "quit\r", "quit");
    ck_assert_int_eq(term_end(&t), 0);
    snprintf(hist, sizeof hist, "%s/history", dir);
    unlink(hist);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/*--- libmpbroker: notifications between replies ---*/

START_TEST(replies_are_read_past_queued_notifications) {
    mpb_context *m = tb_connect(&B);
    ck_assert_int_eq(mpb_call(m, "manager.monitor", NULL, 0, NULL), MPB_OK);
    mpb_value v = mpb_int(1);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(mpb_list_append(C, RECORDS, &v), MPB_OK);
    /* The events are on m's socket before this reply: they must not break it. */
    int64_t len;
    ck_assert_int_eq(mpb_list_len(m, RECORDS, &len), MPB_OK);
    ck_assert_int_eq(len, 6);
    for (int i = 0; i < 3; i++) {
        char method[32];
        mpb_value params;
        int got;
        ck_assert_int_eq(mpb_get_notification(m, 5000, method, sizeof method, &params, &got), MPB_OK);
        ck_assert_int_eq(got, 1);
        ck_assert_str_eq(method, "monitor");
        ck_assert_int_eq(params.type, MPB_ARRAY);
        mpb_value km = S("method");
        mpb_value *mv = mpb_map_get(params.v.a->items[0].v.m, &km);
        ck_assert_str_eq(mv->v.s, "list.append");
        mpb_value_free(&params);
    }
    int got = 1;
    ck_assert_int_eq(mpb_get_notification(m, 0, NULL, 0, NULL, &got), MPB_OK);
    ck_assert_int_eq(got, 0); /* nothing more, and no wait */
    ck_assert_int_eq(mpb_append_call(m, "manager.ping", NULL, 0), MPB_OK);
    ck_assert_int_eq(mpb_get_notification(m, 0, NULL, 0, NULL, &got), MPB_ERR_ARG);
    ck_assert_int_eq(mpb_get_reply(m, NULL), MPB_OK);
    mpb_free(m);
}
END_TEST

static Suite *shell_suite(void) {
    Suite *s = suite_create("shell");
    TCase *tc = tcase_create("oneshot");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, objects_is_an_aligned_table_of_every_object);
    tcase_add_test(tc, objects_json_lists_refs_in_dollar_notation);
    tcase_add_test(tc, objects_escapes_names_that_would_forge_rows_or_reach_the_terminal);
    tcase_add_test(tc, references_read_back_short_and_full);
    tcase_add_test(tc, the_deepest_value_shows_through_every_command);
    tcase_add_test(tc, show_expands_nested_references_one_level);
    tcase_add_test(tc, show_json_writes_expanded_refs_with_type_and_value);
    tcase_add_test(tc, show_stops_at_a_cycle);
    tcase_add_test(tc, call_takes_json_short_or_full_names_and_bare_words);
    tcase_add_test(tc, call_writes_refs_and_bin_in_the_documented_notation);
    tcase_add_test(tc, other_types_are_shown_and_called_through_their_family);
    tcase_add_test(tc, json_notation_round_trips_through_the_broker);
    tcase_add_test(tc, create_named_and_del);
    tcase_add_test(tc, errors_are_clear_and_exit_nonzero);
    tcase_add_test(tc, help_comes_from_the_method_table);
    tcase_add_test(tc, stats_and_clients_describe_the_broker);
    suite_add_tcase(s, tc);

    tc = tcase_create("tcp");
    tcase_add_checked_fixture(tc, setup_tcp, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, tcp_address_with_dash_H);
    suite_add_tcase(s, tc);

    tc = tcase_create("auth");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, authkey_comes_from_the_environment);
    suite_add_tcase(s, tc);

    tc = tcase_create("script");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, script_runs_every_line_and_reports_the_failing_ones);
    suite_add_tcase(s, tc);

    tc = tcase_create("monitor");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, monitor_shows_another_process_operations);
    tcase_add_test(tc, watch_streams_writes_and_atomic_runs_a_batch);
    tcase_add_test(tc, oneshot_commands_send_only_what_they_need);
    tcase_add_test(tc, monitor_json_is_one_object_a_line);
    tcase_add_test(tc, monitor_escapes_the_method_another_client_sent);
    tcase_add_test(tc, replies_are_read_past_queued_notifications);
    suite_add_tcase(s, tc);

    tc = tcase_create("interactive");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, interactive_completes_and_recalls_history);
    tcase_add_test(tc, interactive_ctrl_c_drops_the_line_and_goes_on);
    tcase_add_test(tc, interactive_monitor_stops_on_ctrl_c_and_the_session_goes_on);
    tcase_add_test(tc, interactive_ctrl_c_cancels_a_blocking_call_and_the_session_goes_on);
    tcase_add_test(tc, interactive_json_before_the_command_and_errors_as_json);
    suite_add_tcase(s, tc);

    tc = tcase_create("no_broker");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, interactive_starts_without_a_broker);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tb_run(shell_suite());
}
