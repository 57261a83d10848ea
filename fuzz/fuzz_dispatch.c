/* fuzz_dispatch.c - libFuzzer target: arbitrary bytes into the broker's own request
 * path, in process: conn.c's reader and serving loop, dispatch (checks, auth gate,
 * limits), the object table and every type's handlers.
 *
 * One input is one session. Its first byte picks the set-up (bit 0: the broker has an
 * authkey, so connections start unauthenticated; bit 1, with bit 0: each connection
 * first does the handshake with the right key, as libmpbroker would, so the rest
 * reaches a keyed broker's whole method set); the rest is the byte stream a client
 * sends. Before a connection has authenticated, the target checks what the broker
 * promises a stranger (docs/PROTOCOL.md, "Authentication"): the connection never
 * becomes authenticated without the key, and the broker answers it at most twice
 * (the challenge, then one error) before closing it; a breach aborts. When a request parks (queue.get on an empty queue, a lock held by an earlier
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
#include <openssl/hmac.h>
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
    .max_handshakes = 100,
    .max_handshakes_per_peer = 100,
    .slowlog_us = 0, /* every request goes through the slow log's ring */
    .slowlog_len = 4,
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

/* What a stranger may be sent before closing: the challenge's reply and one error. */
#define PREAUTH_MAX_OUT 512

/* The handshake with the right key on a new connection (bit 1 of the set-up). */
static void handshake(mpb_conn *c)
{
    static const unsigned char C[48] = "{sha256}fuzz-client-challenge-fuzz-client-chall";
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_str_with_body(&pk, "auth.challenge", 14);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, C, sizeof C);
    if (mpb_reader_feed(&c->in, sb.data, sb.size) < 0) abort();
    conn_serve(c);
    /* The reply [1, 0, nil, S]: S is the last 48 bytes. */
    unsigned char msg[20 + 48 + 48], cp[40];
    if (c->out.size < 48) abort();
    memcpy(msg, "mpbroker-auth client", 20);
    memcpy(msg + 20, c->out.data + c->out.size - 48, 48);
    memcpy(msg + 68, C, sizeof C);
    unsigned int len = 32;
    memcpy(cp, "{sha256}", 8);
    HMAC(EVP_sha256(), KEY, (int)sizeof KEY - 1, msg, sizeof msg, cp + 8, &len);
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "auth.response", 13);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, cp, sizeof cp);
    if (mpb_reader_feed(&c->in, sb.data, sb.size) < 0) abort();
    conn_serve(c);
    msgpack_sbuffer_destroy(&sb);
    if (!c->authed) abort();
    msgpack_sbuffer_clear(&c->out);
    c->out_sent = 0;
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
    bool keyed = data[0] & 1, knows_key = keyed && (data[0] & 2);
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
        if (knows_key) handshake(c);
        if (mpb_reader_feed(&c->in, data + (size - left), left) < 0) break;
        for (int round = 0; round < ROUNDS; round++) {
            size_t before = mpb_reader_pending(&c->in);
            bool stranger = !c->authed;
            conn_serve(c);
            /* Without the key: never in, and answered at most twice before closing. */
            if (stranger && (c->authed || c->out.size > PREAUTH_MAX_OUT)) abort();
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
    slowlog_free();
    g_shutdown_requested = false;
    return 0;
}
