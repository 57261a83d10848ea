/* fuzz_dispatch.c - libFuzzer target: arbitrary bytes into the broker's own request
 * path, in process: conn.c's reader and serving loop, dispatch (checks, auth gate,
 * limits), the object table and every type's handlers.
 *
 * One input is one session. Its first byte picks the set-up (bit 0: the broker has an
 * authkey, so connections start unauthenticated); the rest is the byte stream a client
 * sends. When a request parks (queue.get on an empty queue, a lock held by an earlier
 * connection...), the bytes not yet served move to a new connection, up to four, so
 * that later requests can wake the parked ones. Replies go to each connection's output
 * buffer and are dropped; the socket (one end of a socketpair) is never written, and
 * the event loop never runs, so no timer fires and nothing is freed behind our back.
 * After the input every connection is closed and every object freed: no state passes
 * from one input to the next, and LeakSanitizer sees anything the session leaked.
 *
 * Built with clang -fsanitize=fuzzer (make fuzz); replay.c drives the same function
 * over the corpus and regressions in the ordinary builds.
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../server/conn.h"
#include "../server/server.h"

#define MAX_CONNS 4
#define ROUNDS 64 /* serving passes per connection (each stops at 4 MiB of output) */

/* What main.c defines in the real broker. Limits are on, and small, so that their
 * paths are reached. */
mpb_config g_config = {
    .max_msg = 1u << 20,
    .max_depth = MPB_READER_MAX_DEPTH,
    .quiet = true,
    .max_clients = 100,
    .max_output = 1u << 20,
    .output_timeout = 0,
    .max_memory = 16u << 20,
    .auth_timeout = 10,
};
bool g_shutdown_requested;
void server_stop(void) { g_shutdown_requested = true; }

static struct event_base *base;
static const unsigned char KEY[] = "fuzz";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    return base ? 0 : -1;
}

static void drop_output(mpb_conn **cs, int n)
{
    for (int i = 0; i < n; i++) {
        msgpack_sbuffer_clear(&cs[i]->out);
        cs[i]->out_sent = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (!base && LLVMFuzzerInitialize(NULL, NULL) < 0) abort();
    bool keyed = data[0] & 1;
    g_config.authkey = keyed ? KEY : NULL;
    g_config.authkey_len = keyed ? sizeof KEY - 1 : 0;
    data++;
    size--;

    objects_init();
    mpb_conn *cs[MAX_CONNS];
    int peers[MAX_CONNS], n = 0;
    size_t left = size;
    while (n < MAX_CONNS && left > 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) abort();
        mpb_conn *c = conn_new(base, sv[0], false);
        if (!c) abort();
        cs[n] = c;
        peers[n++] = sv[1];
        if (mpb_reader_feed(&c->in, data + (size - left), left) < 0) break;
        for (int round = 0; round < ROUNDS; round++) {
            size_t before = mpb_reader_pending(&c->in);
            conn_serve(c);
            drop_output(cs, n);
            if (c->blocked || c->closing || mpb_reader_pending(&c->in) == before) break;
        }
        if (!c->blocked) break; /* all served, or the stream is dead */
        /* Parked: what it has not served goes to the next connection instead. */
        left = mpb_reader_pending(&c->in);
        mpb_reader_destroy(&c->in);
        if (mpb_reader_init(&c->in, g_config.max_msg, g_config.max_depth) < 0) abort();
    }
    drop_output(cs, n);
    for (int i = n - 1; i >= 0; i--) {
        conn_close(cs[i]);
        close(peers[i]);
    }
    objects_shutdown();
    g_shutdown_requested = false;
    return 0;
}
