/* benchmark.c - mpbroker-benchmark: requests per second and latency of a broker, as
 * redis-benchmark measures Redis.
 *
 * Each test runs -n requests spread over -c client processes (fork()ed, one connection
 * each) against one shared object per test, with -P requests in flight per client.
 * Clients connect, warm up, then start together; the rate is all timed requests over
 * the time from that start to the last client's end. Latency is per request: from the
 * moment its batch starts being encoded and sent to the moment its own reply is taken,
 * so with -P 1 it is the full round trip and with -P N it grows with the reply's place
 * in the batch (redis-benchmark measures the same way). Clients record it in a
 * log-linear histogram (1/64 relative precision) in shared memory; the parent merges.
 *
 * This file is only a client of libmpbroker: everything it sends goes through the
 * pipelined blocking API (mpb_append_call / mpb_get_reply).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "mpbroker.h"

#define PROG "mpbroker-benchmark"
#define MAX_CLIENTS 1024
#define PREFILL_MAX 1000000 /* items put in place before a read test */

/*--- Latency histogram: exact below 128 ns, then 64 buckets per power of two ---*/

#define H_EXACT 128
#define H_SUB 64
#define H_BUCKETS (H_EXACT + (44 - 7) * H_SUB) /* up to 2^44 ns, about 4.9 hours */

typedef struct histogram {
    uint64_t count, sum_ns, min_ns, max_ns;
    uint32_t b[H_BUCKETS];
} histogram;

static unsigned h_bucket(uint64_t v) {
    if (v < H_EXACT) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 7 */
    unsigned b = H_EXACT + (msb - 7) * H_SUB + (unsigned)((v >> (msb - 6)) & (H_SUB - 1));
    return b < H_BUCKETS ? b : H_BUCKETS - 1;
}

/* The middle of bucket b, in ns. */
static double h_value(unsigned b) {
    if (b < H_EXACT) return b;
    unsigned msb = 7 + (b - H_EXACT) / H_SUB, sub = (b - H_EXACT) % H_SUB;
    double lo = (double)((uint64_t)(H_SUB + sub) << (msb - 6));
    return lo + (double)(1ull << (msb - 6)) / 2;
}

static void h_add(histogram *h, uint64_t ns) {
    h->b[h_bucket(ns)]++;
    h->count++;
    h->sum_ns += ns;
    if (h->count == 1 || ns < h->min_ns) h->min_ns = ns;
    if (ns > h->max_ns) h->max_ns = ns;
}

static void h_merge(histogram *into, const histogram *h) {
    if (h->count == 0) return;
    for (unsigned i = 0; i < H_BUCKETS; i++) into->b[i] += h->b[i];
    if (into->count == 0 || h->min_ns < into->min_ns) into->min_ns = h->min_ns;
    if (h->max_ns > into->max_ns) into->max_ns = h->max_ns;
    into->count += h->count;
    into->sum_ns += h->sum_ns;
}

/* The q-quantile (0..1) in ms. */
static double h_quantile_ms(const histogram *h, double q) {
    if (h->count == 0) return 0;
    uint64_t want = (uint64_t)(q * (double)h->count + 0.5), seen = 0;
    if (want < 1) want = 1;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            double v = h_value(i);
            if (v > (double)h->max_ns) v = (double)h->max_ns;
            if (v < (double)h->min_ns) v = (double)h->min_ns;
            return v / 1e6;
        }
    }
    return (double)h->max_ns / 1e6;
}

/*--- Options ---*/

typedef struct options {
    const char *address; /* NULL: $MPBROKER_ADDRESS or the default socket */
    char tcp[300];
    long clients, requests, pipeline, size, keyspace, warmup;
    bool quiet, csv, seq, keep, async;
    const char *spawn; /* --spawn-server PATH */
    char tests[512];
} options;

static options opt = {.clients = 50, .requests = 100000, .pipeline = 1, .size = 3,
                      .warmup = -1};

/*--- Tests ---*/

enum test_id {
    T_LIST_APPEND, T_LIST_GETITEM, T_DICT_SETITEM, T_DICT_GETITEM, T_NS_SETATTR,
    T_NS_INCR, T_QUEUE_PUTGET, T_PIPE_SENDRECV, T_COUNT
};

static const struct test_def {
    const char *name;
    const char *type; /* of the object it works on */
} tests[T_COUNT] = {
    [T_LIST_APPEND] = {"list.append", "list"},
    [T_LIST_GETITEM] = {"list.getitem", "list"},
    [T_DICT_SETITEM] = {"dict.setitem", "dict"},
    [T_DICT_GETITEM] = {"dict.getitem", "dict"},
    [T_NS_SETATTR] = {"namespace.setattr", "namespace"},
    [T_NS_INCR] = {"namespace.incr", "namespace"},
    [T_QUEUE_PUTGET] = {"queue.put+get", "queue"},
    [T_PIPE_SENDRECV] = {"pipe.send+recv", "pipe"},
};

/* What one client process reports, in memory shared with the parent. */
typedef struct client_slot {
    double t_end;      /* CLOCK_MONOTONIC seconds when its last reply came */
    uint64_t errors;   /* error replies */
    int failed;        /* could not run at all (connect, I/O): see err */
    char err[320];     /* the first error */
    histogram h;
} client_slot;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* xorshift64*: keys for -r, cheap and reproducible per client. */
static uint64_t rnd_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Everything a client needs to build its requests. */
typedef struct loadgen {
    enum test_id test;
    mpb_ref ref;
    mpb_value value; /* a str of -d bytes (borrowed from payload) */
    uint64_t rnd;
    char key[32];
} loadgen;

static char *payload;

/* The key (dict key, attribute name) or index of request number seq. */
static uint64_t pick(loadgen *g, uint64_t seq) {
    if (opt.seq) return seq;
    if (opt.keyspace > 0) return rnd_next(&g->rnd) % (uint64_t)opt.keyspace;
    return 0;
}

/* A 4-byte prefix and k in 12 digits, as redis-benchmark's "key:000000000042" (no
 * printf: it would cost the client more than the broker spends on the request). */
static mpb_value key_str(loadgen *g, const char *prefix, uint64_t k) {
    memcpy(g->key, prefix, 4);
    memset(g->key + 4, '0', 12);
    for (int i = 15; i >= 4 && k > 0; i--, k /= 10) g->key[i] = (char)('0' + k % 10);
    return mpb_str_borrowed(g->key, 16);
}

static mpb_value key_value(loadgen *g, uint64_t k) {
    return opt.seq ? mpb_int((int64_t)k) : key_str(g, "key:", k);
}

/* The attribute name for namespace.setattr: fixed, random (-r) or numbered (--seq). */
static mpb_value attr_name(loadgen *g, uint64_t seq) {
    if (!opt.seq && opt.keyspace == 0) return mpb_str_borrowed("attr", 4);
    return key_str(g, "attr", pick(g, seq));
}

/* One request, ready for mpb_append_call or mpb_async_call (strings borrowed from g
 * and payload). */
typedef struct request {
    const char *method;
    mpb_value a[3];
    size_t n;
} request;

/* Request number seq (seq also numbers the values with --seq; local counts this
 * client's requests). For queue.put+get, even local numbers put and odd ones get, so a
 * client's gets never outnumber its puts and no get waits; pipe.send+recv the same,
 * sending from end 1 and receiving at end 0. */
static void make_request(loadgen *g, uint64_t seq, uint64_t local, request *r) {
    mpb_value v = opt.seq ? mpb_int((int64_t)seq) : g->value;
    r->a[0] = mpb_refv(g->ref);
    r->n = 2;
    switch (g->test) {
    case T_LIST_APPEND:
        r->method = "list.append";
        r->a[1] = v;
        break;
    case T_LIST_GETITEM:
        r->method = "list.getitem";
        r->a[1] = mpb_int((int64_t)(opt.keyspace > 0 ? pick(g, seq) : 0));
        break;
    case T_DICT_SETITEM:
        r->method = "dict.setitem";
        r->a[1] = key_value(g, pick(g, seq));
        r->a[2] = v;
        r->n = 3;
        break;
    case T_DICT_GETITEM:
        r->method = "dict.getitem";
        r->a[1] = key_value(g, opt.keyspace > 0 ? pick(g, seq) : 0);
        break;
    case T_NS_SETATTR:
        r->method = "namespace.setattr";
        r->a[1] = attr_name(g, seq);
        r->a[2] = v;
        r->n = 3;
        break;
    case T_NS_INCR:
        r->method = "namespace.incr";
        r->a[1] = mpb_str_borrowed("counter", 7);
        r->a[2] = mpb_int(1);
        r->n = 3;
        break;
    case T_PIPE_SENDRECV:
        r->method = local % 2 == 0 ? "pipe.send" : "pipe.recv";
        r->a[1] = mpb_int(local % 2 == 0 ? 1 : 0);
        r->a[2] = v;
        r->n = local % 2 == 0 ? 3 : 2;
        break;
    case T_QUEUE_PUTGET:
    default:
        r->method = local % 2 == 0 ? "queue.put" : "queue.get";
        r->a[1] = v;
        r->n = local % 2 == 0 ? 2 : 1;
        break;
    }
}

static int append_request(mpb_context *c, loadgen *g, uint64_t seq, uint64_t local) {
    request r;
    make_request(g, seq, local, &r);
    return mpb_append_call(c, r.method, r.a, r.n);
}

static void note_error(client_slot *s, const char *what, const mpb_context *c) {
    if (s->err[0] == '\0')
        snprintf(s->err, sizeof s->err, "%s: %s%s%s", what, c ? c->errkind : "",
                 c && c->errkind[0] ? ": " : "", c ? c->errstr : "out of memory");
}

/* Run `count` requests numbered first, first + stride, ...; record latencies into h
 * when h is not NULL. Returns 0, or -1 when the connection failed (s->err says why). */
static int run_requests(mpb_context *c, loadgen *g, client_slot *s, histogram *h,
                        uint64_t first, uint64_t stride, uint64_t count, uint64_t *local) {
    uint64_t done = 0;
    while (done < count) {
        uint64_t batch = count - done;
        if (batch > (uint64_t)opt.pipeline) batch = (uint64_t)opt.pipeline;
        uint64_t t0 = h ? now_ns() : 0;
        for (uint64_t i = 0; i < batch; i++) {
            if (append_request(c, g, first + (done + i) * stride, (*local)++) != MPB_OK) {
                note_error(s, tests[g->test].name, c);
                return -1;
            }
        }
        for (uint64_t i = 0; i < batch; i++) {
            mpb_value r;
            int rc = mpb_get_reply(c, &r);
            if (h) h_add(h, now_ns() - t0);
            mpb_value_free(&r);
            if (rc == MPB_ERR_REPLY) {
                note_error(s, tests[g->test].name, c);
                s->errors++;
            } else if (rc != MPB_OK) {
                note_error(s, tests[g->test].name, c);
                return -1;
            }
        }
        done += batch;
    }
    return 0;
}

/* A client process: connect, warm up, say ready, wait for the start, run, report. */
static void client_main(int index, enum test_id test, mpb_ref ref, uint64_t count,
                        client_slot *s, int ready_fd, int start_fd) {
    loadgen g = {.test = test, .ref = ref, .rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(index + 1),
                 .value = mpb_str_borrowed(payload, (size_t)opt.size)};
    uint64_t local = 0;
    char byte = 'R';
    mpb_context *c = mpb_connect(opt.address);
    if (c == NULL || c->err) {
        note_error(s, "connect", c);
        s->failed = 1;
        byte = 'E';
    } else if (opt.warmup > 0 &&
               run_requests(c, &g, s, NULL, 0, 1, (uint64_t)opt.warmup, &local) < 0) {
        s->failed = 1;
        byte = 'E';
    }
    s->errors = 0; /* warm-up errors show up again in the timed run */
    if (write(ready_fd, &byte, 1) != 1 || byte == 'E') _exit(1);
    close(ready_fd);
    ssize_t n;
    while ((n = read(start_fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n != 0) _exit(1); /* the parent gave up */
    local += local % 2; /* queue.put+get, pipe.send+recv: start on a put */
    if (run_requests(c, &g, s, &s->h, (uint64_t)index, (uint64_t)opt.clients, count,
                     &local) < 0)
        s->failed = 1;
    s->t_end = now_s();
    mpb_free(c);
    _exit(s->failed ? 1 : 0);
}

/*--- --async: every client a connection of one process, on one libevent loop ---*/

typedef struct aclient {
    mpb_async_context *ac;
    loadgen g;
    uint64_t first, count, done, local; /* requests numbered first + k * clients */
    uint64_t inflight, t0;
} aclient;

static struct event_base *abase;
static histogram *ahist; /* NULL while warming up */
static client_slot *aslot;
static long aleft; /* clients not finished */

static void async_reply(mpb_async_context *ac, mpb_reply *r, void *privdata);

static void async_send_batch(aclient *a) {
    uint64_t batch = a->count - a->done;
    if (batch > (uint64_t)opt.pipeline) batch = (uint64_t)opt.pipeline;
    a->t0 = ahist ? now_ns() : 0;
    for (uint64_t i = 0; i < batch; i++) {
        request r;
        make_request(&a->g, a->first + (a->done + i) * (uint64_t)opt.clients, a->local++, &r);
        if (mpb_async_call(a->ac, r.method, r.a, r.n, async_reply, a) != MPB_OK) {
            if (aslot->err[0] == '\0')
                snprintf(aslot->err, sizeof aslot->err, "%s: %s: %s", tests[a->g.test].name,
                         a->ac->errkind, a->ac->errstr);
            aslot->failed = 1;
            event_base_loopbreak(abase);
            return;
        }
        a->inflight++;
    }
}

static void async_reply(mpb_async_context *ac, mpb_reply *r, void *privdata) {
    (void)ac;
    aclient *a = privdata;
    if (ahist) h_add(ahist, now_ns() - a->t0);
    if (r->err != MPB_OK) {
        if (aslot->err[0] == '\0')
            snprintf(aslot->err, sizeof aslot->err, "%s: %s: %s", tests[a->g.test].name,
                     r->errkind, r->errstr);
        if (r->err == MPB_ERR_REPLY) {
            aslot->errors++;
        } else {
            aslot->failed = 1;
            event_base_loopbreak(abase);
        }
    }
    a->done++;
    if (--a->inflight > 0) return;
    if (a->done < a->count) async_send_batch(a);
    else if (--aleft == 0) event_base_loopbreak(abase);
}

/* Run `count[i]` requests on each client; 0, or -1 on failure. */
static int async_phase(aclient *cl, long n, bool timed) {
    ahist = timed ? &aslot->h : NULL;
    aleft = 0;
    for (long i = 0; i < n; i++) {
        cl[i].done = cl[i].inflight = 0;
        if (cl[i].count > 0) aleft++;
    }
    for (long i = 0; i < n && !aslot->failed; i++)
        if (cl[i].count > 0) async_send_batch(&cl[i]);
    if (aleft > 0 && !aslot->failed) event_base_dispatch(abase);
    return aslot->failed || aleft > 0 ? -1 : 0;
}

/* The one process of --async: opt.clients connections, warm-up, start, run, report. */
static void async_main(enum test_id test, mpb_ref ref, client_slot *s, int ready_fd,
                       int start_fd) {
    aclient *cl = calloc((size_t)opt.clients, sizeof *cl);
    char byte = 'R';
    aslot = s;
    abase = event_base_new();
    if (cl == NULL || abase == NULL) {
        snprintf(s->err, sizeof s->err, "out of memory");
        s->failed = 1;
    }
    for (long i = 0; i < opt.clients && !s->failed; i++) {
        aclient *a = &cl[i];
        a->g = (loadgen){.test = test, .ref = ref,
                         .rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1),
                         .value = mpb_str_borrowed(payload, (size_t)opt.size)};
        a->first = (uint64_t)i;
        a->ac = mpb_async_connect(abase, opt.address);
        if (a->ac == NULL || a->ac->err) {
            snprintf(s->err, sizeof s->err, "connect: %s", a->ac ? a->ac->errstr : "out of memory");
            s->failed = 1;
        }
    }
    for (long i = 0; i < opt.clients && !s->failed; i++) cl[i].count = (uint64_t)opt.warmup;
    if (!s->failed && async_phase(cl, opt.clients, false) < 0) s->failed = 1;
    s->errors = 0;
    if (s->failed) byte = 'E';
    if (write(ready_fd, &byte, 1) != 1 || byte == 'E') _exit(1);
    close(ready_fd);
    ssize_t n;
    while ((n = read(start_fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n != 0) _exit(1);
    for (long i = 0; i < opt.clients; i++) {
        cl[i].count = (uint64_t)(opt.requests / opt.clients +
                                 (i < opt.requests % opt.clients ? 1 : 0));
        cl[i].local += cl[i].local % 2;
    }
    if (async_phase(cl, opt.clients, true) < 0) s->failed = 1;
    s->t_end = now_s();
    for (long i = 0; i < opt.clients; i++) mpb_async_free(cl[i].ac);
    event_base_free(abase);
    free(cl);
    _exit(s->failed ? 1 : 0);
}

/*--- The parent: set up an object, fork the clients, report ---*/

static mpb_context *ctl; /* the parent's own connection */

static int report_ctl_error(const char *what) {
    fprintf(stderr, PROG ": %s: %s%s%s\n", what, ctl->errkind, ctl->errkind[0] ? ": " : "",
            ctl->errstr);
    return -1;
}

/* Pipelined fill of a read test's object: n items (or keys) with the payload. */
static int prefill(enum test_id test, mpb_ref ref, long n) {
    mpb_value v = mpb_str_borrowed(payload, (size_t)opt.size);
    loadgen g = {.test = test, .ref = ref};
    for (long i = 0; i < n; i++) {
        mpb_value a[3] = {mpb_refv(ref), v, v};
        int rc;
        if (test == T_LIST_GETITEM) {
            rc = mpb_append_call(ctl, "list.append", a, 2);
        } else {
            a[1] = key_value(&g, (uint64_t)i);
            rc = mpb_append_call(ctl, "dict.setitem", a, 3);
        }
        if (rc != MPB_OK) return report_ctl_error("prefill");
        if (mpb_pending(ctl) >= 256 || i == n - 1)
            while (mpb_pending(ctl) > 0)
                if (mpb_get_reply(ctl, NULL) != MPB_OK) return report_ctl_error("prefill");
    }
    return 0;
}

typedef struct result {
    double seconds, rps;
    uint64_t requests, errors;
    histogram h;
} result;

/* 0 done, -1 failed, -2 not supported by this broker (message printed). */
static int run_test(enum test_id test, client_slot *slots, result *res) {
    char name[96];
    mpb_ref ref;
    snprintf(name, sizeof name, "mpbroker-benchmark:%ld:%s", (long)getpid(), tests[test].name);
    if (mpb_open(ctl, tests[test].type, name, NULL, &ref) != MPB_OK) {
        if (ctl->err == MPB_ERR_REPLY && (strcmp(ctl->errkind, "ValueError") == 0 ||
                                         strcmp(ctl->errkind, "NoSuchMethod") == 0)) {
            fprintf(stderr, PROG ": %s: this broker has no %s type (%s: %s); skipped\n",
                    tests[test].name, tests[test].type, ctl->errkind, ctl->errstr);
            return -2;
        }
        return report_ctl_error("manager.open");
    }
    if (test == T_LIST_GETITEM || test == T_DICT_GETITEM) {
        long n = opt.keyspace > 0 ? opt.keyspace : 1;
        if (n > PREFILL_MAX) n = PREFILL_MAX;
        if (prefill(test, ref, n) < 0) return -1;
    }

    int ready[2], start[2];
    if (pipe(ready) < 0 || pipe(start) < 0) {
        perror(PROG ": pipe");
        return -1;
    }
    long nprocs = opt.async ? 1 : opt.clients;
    memset(slots, 0, sizeof *slots * (size_t)nprocs);
    pid_t pids[MAX_CLIENTS];
    long started = 0;
    fflush(stdout);
    fflush(stderr);
    for (long i = 0; i < nprocs; i++) {
        uint64_t count = (uint64_t)(opt.requests / opt.clients +
                                    (i < opt.requests % opt.clients ? 1 : 0));
        pid_t p = fork();
        if (p < 0) {
            perror(PROG ": fork");
            break;
        }
        if (p == 0) {
            close(ready[0]);
            close(start[1]);
            if (opt.async) async_main(test, ref, &slots[0], ready[1], start[0]);
            client_main((int)i, test, ref, count, &slots[i], ready[1], start[0]);
        }
        pids[started++] = p;
    }
    close(ready[1]);
    close(start[0]);
    long nready = 0;
    bool ok = started == nprocs;
    for (char b; ok && nready < started;) {
        ssize_t n = read(ready[0], &b, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n != 1 || b != 'R') ok = false;
        else nready++;
    }
    double t0 = now_s();
    if (!ok) /* a client could not start: stop the others before they begin */
        for (long i = 0; i < started; i++) kill(pids[i], SIGTERM);
    close(start[1]); /* go */
    close(ready[0]);
    for (long i = 0; i < started; i++)
        while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR) {
        }

    memset(res, 0, sizeof *res);
    double t_end = t0;
    for (long i = 0; i < started; i++) {
        client_slot *s = &slots[i];
        if (s->failed) ok = false;
        if (s->err[0] && (s->failed || s->errors)) {
            fprintf(stderr, PROG ": client %ld: %s\n", i, s->err);
            if (!s->failed && s->errors && strstr(s->err, "NoSuchMethod"))
                fprintf(stderr, PROG ": %s: this broker does not serve %s\n",
                        tests[test].name, tests[test].name);
        }
        if (s->t_end > t_end) t_end = s->t_end;
        res->errors += s->errors;
        h_merge(&res->h, &s->h);
    }
    res->requests = res->h.count;
    res->seconds = t_end - t0;
    res->rps = res->seconds > 0 ? (double)res->requests / res->seconds : 0;

    if (!opt.keep) {
        if (mpb_delete(ctl, name) != MPB_OK || mpb_release(ctl, ref) != MPB_OK)
            report_ctl_error("cleaning up");
    }
    if (!ok) return -1;
    if (res->errors) {
        fprintf(stderr, PROG ": %s: %llu error replies\n", tests[test].name,
                (unsigned long long)res->errors);
        return -1;
    }
    return 0;
}

static void print_result(enum test_id test, const result *r) {
    const histogram *h = &r->h;
    double avg = h->count ? (double)h->sum_ns / (double)h->count / 1e6 : 0;
    if (opt.csv) {
        printf("\"%s\",\"%.2f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\"\n",
               tests[test].name, r->rps, avg, (double)h->min_ns / 1e6,
               h_quantile_ms(h, 0.50), h_quantile_ms(h, 0.95), h_quantile_ms(h, 0.99),
               (double)h->max_ns / 1e6);
    } else if (opt.quiet) {
        printf("%s: %.2f requests per second, p50=%.3f msec, p99=%.3f msec\n",
               tests[test].name, r->rps, h_quantile_ms(h, 0.50), h_quantile_ms(h, 0.99));
    } else {
        printf("====== %s ======\n"
               "  %llu requests completed in %.2f seconds\n"
               "  %ld parallel clients (%s)\n"
               "  %ld bytes payload%s\n"
               "  pipeline depth %ld\n\n"
               "Latency per request, from its batch's send to its reply (msec):\n"
               "    avg       min       p50       p95       p99       max\n"
               "  %7.3f   %7.3f   %7.3f   %7.3f   %7.3f   %7.3f\n\n"
               "Throughput: %.2f requests per second\n\n",
               tests[test].name, (unsigned long long)r->requests, r->seconds, opt.clients,
               opt.async ? "connections of one event-loop process" : "processes", opt.size, opt.seq ? " (--seq: int values)" : "", opt.pipeline, avg,
               (double)h->min_ns / 1e6, h_quantile_ms(h, 0.50), h_quantile_ms(h, 0.95),
               h_quantile_ms(h, 0.99), (double)h->max_ns / 1e6, r->rps);
    }
    fflush(stdout);
}

/*--- A broker of our own (--spawn-server) ---*/

static pid_t spawned = -1;
static char spawn_dir[64], spawn_addr[128];

static int spawn_server(const char *path) {
    snprintf(spawn_dir, sizeof spawn_dir, "/tmp/mpb-bench.XXXXXX");
    if (mkdtemp(spawn_dir) == NULL) {
        perror(PROG ": mkdtemp");
        return -1;
    }
    char sock[96];
    snprintf(sock, sizeof sock, "%s/s.sock", spawn_dir);
    snprintf(spawn_addr, sizeof spawn_addr, "unix:%s", sock);
    fflush(stdout);
    fflush(stderr);
    spawned = fork();
    if (spawned < 0) {
        perror(PROG ": fork");
        return -1;
    }
    if (spawned == 0) {
        execl(path, path, "--socket", sock, "--quiet", (char *)NULL);
        fprintf(stderr, PROG ": cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    opt.address = spawn_addr;
    for (int i = 0; i < 1000; i++) { /* up to 10 s */
        mpb_context *c = mpb_connect(opt.address);
        bool up = c != NULL && c->err == MPB_OK && mpb_ping(c) == MPB_OK;
        mpb_free(c);
        if (up) return 0;
        if (waitpid(spawned, NULL, WNOHANG) == spawned) {
            spawned = -1;
            break;
        }
        usleep(10000);
    }
    fprintf(stderr, PROG ": the broker %s did not start\n", path);
    return -1;
}

/* SIGTERM it and wait; 0 when it exited 0. */
static int stop_server(void) {
    int st = 0, rc = 0;
    if (spawned > 0) {
        kill(spawned, SIGTERM);
        while (waitpid(spawned, &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, PROG ": the spawned broker did not exit cleanly (status %d)\n", st);
            rc = -1;
        }
    }
    if (spawn_dir[0]) {
        char sock[96];
        snprintf(sock, sizeof sock, "%s/s.sock", spawn_dir);
        unlink(sock);
        rmdir(spawn_dir);
    }
    return rc;
}

/*--- main ---*/

static void usage(FILE *f) {
    fprintf(f,
        "usage: " PROG " [options]\n"
        "\n"
        "Requests per second and latency of an mpbroker, as redis-benchmark measures Redis.\n"
        "\n"
        "  -s ADDRESS       broker address: /path, unix:/path, tcp://HOST:PORT or\n"
        "                   tls://HOST:PORT (default $MPBROKER_ADDRESS, else the\n"
        "                   default socket)\n"
        "  -H HOST          TCP host (with -p; default port 7000)\n"
        "      --tls        with -H: connect with TLS (tls://HOST:PORT)\n"
        "      --tls-ca FILE, --tls-cert FILE, --tls-key FILE\n"
        "                   TLS settings, as $MPBROKER_TLS_CA, _CERT, _KEY\n"
        "      --tls-no-verify-name\n"
        "                   do not check the broker's certificate names HOST\n"
        "  -p PORT          TCP port\n"
        "  -c CLIENTS       client processes, one connection each (default 50)\n"
        "      --async      instead, the -c clients are connections of one process,\n"
        "                   driven by the async API on one libevent loop (as\n"
        "                   redis-benchmark runs its clients)\n"
        "  -n REQUESTS      total requests per test (default 100000)\n"
        "  -P DEPTH         requests in flight per client (default 1: no pipelining)\n"
        "  -d BYTES         value size: a str of that many bytes (default 3; K, M\n"
        "                   allowed)\n"
        "  -r KEYSPACE      random keys/indexes in [0, KEYSPACE) instead of one fixed\n"
        "                   key (dict, namespace.setattr, list.getitem); read tests\n"
        "                   prefill that many items\n"
        "  -t TESTS         comma-separated tests (default all): list.append,\n"
        "                   list.getitem, dict.setitem, dict.getitem, namespace.setattr,\n"
        "                   namespace.incr, queue.put+get, pipe.send+recv\n"
        "  -q               quiet: one line per test\n"
        "      --csv        CSV output (the columns of redis-benchmark --csv)\n"
        "      --warmup N   untimed requests per client first (default min(1000, n/c))\n"
        "      --seq        values, dict keys and attribute names are the request's\n"
        "                   number (an int; unique across clients): -n 1000000 -t\n"
        "                   list.append --seq builds a list of 1M small ints; no warm-up\n"
        "      --keep       leave the objects (named mpbroker-benchmark:PID:TEST)\n"
        "      --spawn-server PATH\n"
        "                   start the broker PATH on a temporary socket for the run and\n"
        "                   stop it after (exit status 1 if it does not exit 0)\n"
        "  -h, --help       this text\n"
        "  -V, --version    the version\n"
        "\n"
        "Latency is per request: from the start of sending its batch to its own reply.\n"
        "Exit status: 0 all tests ran, 1 a test failed, 2 bad usage, 3 a test is not\n"
        "supported by the broker (skipped; the others ran).\n");
}

static long parse_long(const char *s, const char *what, long min, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, PROG ": %s must be a number in [%ld, %ld], not '%s'\n", what, min,
                max, s);
        exit(2);
    }
    return v;
}

/* A byte count as the broker's size options take it: K, M or G (1024-based) allowed. */
static long parse_bytes(const char *s, const char *what, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    int shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20
              : *end == 'G' || *end == 'g' ? 30 : 0;
    if (shift) end++;
    if (errno || end == s || *end || v < 0 || v > (max >> shift)) {
        fprintf(stderr, PROG ": %s must be a byte count in [0, %ld MiB] (K, M, G allowed), "
                "not '%s'\n", what, max >> 20, s);
        exit(2);
    }
    return v << shift;
}

static void parse_args(int argc, char **argv, bool want[T_COUNT]) {
    enum { O_CSV = 256, O_WARMUP, O_SEQ, O_KEEP, O_SPAWN, O_ASYNC, O_TLS, O_TLS_CA, O_TLS_CERT,
           O_TLS_KEY, O_TLS_NO_VERIFY_NAME };
    static const struct option longopts[] = {
        {"csv", no_argument, NULL, O_CSV},           {"warmup", required_argument, NULL, O_WARMUP},
        {"seq", no_argument, NULL, O_SEQ},           {"keep", no_argument, NULL, O_KEEP},
        {"spawn-server", required_argument, NULL, O_SPAWN},
        {"async", no_argument, NULL, O_ASYNC},
        {"tls", no_argument, NULL, O_TLS},          {"tls-ca", required_argument, NULL, O_TLS_CA},
        {"tls-cert", required_argument, NULL, O_TLS_CERT},
        {"tls-key", required_argument, NULL, O_TLS_KEY},
        {"tls-no-verify-name", no_argument, NULL, O_TLS_NO_VERIFY_NAME},
        {"help", no_argument, NULL, 'h'},            {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *host = NULL, *port = "7000";
    bool tls = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "s:H:p:c:n:P:d:r:t:qhV", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': opt.address = optarg; break;
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 'c': opt.clients = parse_long(optarg, "-c", 1, MAX_CLIENTS); break;
        case 'n': opt.requests = parse_long(optarg, "-n", 1, 1000000000L); break;
        case 'P': opt.pipeline = parse_long(optarg, "-P", 1, 1000000); break;
        case 'd': opt.size = parse_bytes(optarg, "-d", 64L << 20); break;
        case 'r': opt.keyspace = parse_long(optarg, "-r", 0, 1000000000L); break;
        case 't': snprintf(opt.tests, sizeof opt.tests, "%s", optarg); break;
        case 'q': opt.quiet = true; break;
        case O_CSV: opt.csv = true; break;
        case O_WARMUP: opt.warmup = parse_long(optarg, "--warmup", 0, 1000000000L); break;
        case O_SEQ: opt.seq = true; break;
        case O_KEEP: opt.keep = true; break;
        case O_SPAWN: opt.spawn = optarg; break;
        case O_ASYNC: opt.async = true; break;
        /* Through the environment: the client processes inherit it. */
        case O_TLS: tls = true; break;
        case O_TLS_CA: setenv("MPBROKER_TLS_CA", optarg, 1); break;
        case O_TLS_CERT: setenv("MPBROKER_TLS_CERT", optarg, 1); break;
        case O_TLS_KEY: setenv("MPBROKER_TLS_KEY", optarg, 1); break;
        case O_TLS_NO_VERIFY_NAME: setenv("MPBROKER_TLS_NO_VERIFY_NAME", "1", 1); break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("mpbroker-benchmark %s\n", MPB_VERSION); exit(0);
        default: /* getopt said which option, in one line */
            fprintf(stderr, "mpbroker-benchmark --help lists the options\n");
            exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
        exit(2);
    }
    if (host) {
        snprintf(opt.tcp, sizeof opt.tcp, "%s://%s:%s", tls ? "tls" : "tcp", host, port);
        opt.address = opt.tcp;
    }
    if (opt.clients > opt.requests) opt.clients = opt.requests;
    if (opt.warmup < 0) {
        long per = opt.requests / opt.clients / 10;
        opt.warmup = opt.seq ? 0 : per < 1000 ? per : 1000;
    }
    if (opt.warmup % 2) opt.warmup++; /* queue.put+get, pipe.send+recv: as many gets as puts */
    if (opt.tests[0] == '\0') {
        for (int t = 0; t < T_COUNT; t++) want[t] = true;
        return;
    }
    char list[512];
    snprintf(list, sizeof list, "%s", opt.tests);
    for (char *save, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int t;
        for (t = 0; t < T_COUNT && strcmp(tok, tests[t].name) != 0; t++) {
        }
        if (t == T_COUNT) {
            fprintf(stderr, PROG ": unknown test '%s' (see --help)\n", tok);
            exit(2);
        }
        want[t] = true;
    }
}

int main(int argc, char **argv) {
    bool want[T_COUNT] = {0};
    int status = 0;
    parse_args(argc, argv, want);
    signal(SIGPIPE, SIG_IGN);
    if ((payload = malloc((size_t)opt.size + 1)) == NULL) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    memset(payload, 'x', (size_t)opt.size);
    payload[opt.size] = '\0';
    if (opt.spawn && spawn_server(opt.spawn) < 0) {
        stop_server();
        return 1;
    }
    ctl = mpb_connect(opt.address);
    if (ctl == NULL || ctl->err) {
        fprintf(stderr, PROG ": connect: %s\n", ctl ? ctl->errstr : "out of memory");
        mpb_free(ctl);
        stop_server();
        return 1;
    }
    client_slot *slots = mmap(NULL, sizeof *slots * (size_t)opt.clients,
                              PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) {
        perror(PROG ": mmap");
        return 1;
    }
    if (opt.csv)
        printf("\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\","
               "\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n");
    for (int t = 0; t < T_COUNT; t++) {
        if (!want[t]) continue;
        result r;
        int rc = run_test((enum test_id)t, slots, &r);
        if (rc == 0) print_result((enum test_id)t, &r);
        else if (rc == -2 && status == 0) status = 3;
        else if (rc == -1) status = 1;
        if (ctl->fd < 0) break; /* the broker is gone */
    }
    munmap(slots, sizeof *slots * (size_t)opt.clients);
    mpb_free(ctl);
    if (stop_server() < 0) status = 1;
    free(payload);
    return status;
}
