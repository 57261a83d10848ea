/* auth.c - the authkey handshake: mutual HMAC-SHA256 challenge-response over two RPC
 * methods, and loading the key.
 *
 * Modelled on Python 3.12's multiprocessing.connection (deliver_challenge /
 * answer_challenge): random challenges from RAND_bytes, each named by a "{sha256}"
 * prefix, HMAC-SHA256 proofs, constant-time comparison (CRYPTO_memcmp). As an RPC it
 * is one round trip plus one request, both sides proving the key:
 *
 *   client: auth.challenge [C]        C = "{sha256}" + 32..256 random bytes
 *   broker: [S, "{sha256}" + HMAC(key, "mpbroker-auth server" || C || S)]
 *                                     S = "{sha256}" + 40 random bytes
 *   client: checks the broker's proof, then
 *           auth.response ["{sha256}" + HMAC(key, "mpbroker-auth client" || S || C)]
 *   broker: true, or AuthError and the connection closes.
 *
 * Each proof binds both challenges, and the two directions use distinct labels, so
 * nothing the broker ever sends is a proof it would accept (no reflection), and a
 * proof is worthless on any other connection. Handshake state lives in a struct
 * mpb_auth owned by the connection (c->auth), allocated when a connection opens on a
 * keyed broker and freed once the handshake ends or the connection closes; its timer
 * closes a connection that has not authenticated within --auth-timeout. What the handlers do not do is
 * dispatch's: the gate (auth_gate) runs before any other method is looked at.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "mpb_codec.h"

#define PREFIX "{sha256}"
#define PREFIX_LEN 8
#define SERVER_NONCE 40 /* random bytes, as Python's deliver_challenge */
#define CLIENT_NONCE_MIN 32
#define CLIENT_NONCE_MAX 256
#define DIGEST 32
#define PROOF_LEN (PREFIX_LEN + DIGEST)
#define KEY_MAX (64u << 10)

static const char LABEL_SERVER[] = "mpbroker-auth server";
static const char LABEL_CLIENT[] = "mpbroker-auth client";

struct mpb_auth {
    unsigned char client[PREFIX_LEN + CLIENT_NONCE_MAX]; /* C, as received */
    size_t client_len; /* 0 until auth.challenge */
    unsigned char server[PREFIX_LEN + SERVER_NONCE]; /* S */
    struct event timer; /* --auth-timeout: a connection cannot sit unauthenticated */
};

/*--- The key ---*/

static unsigned char *key_buf; /* g_config.authkey points here */

static int set_key(const void *p, size_t n, const char *from)
{
    if (n == 0) {
        fprintf(stderr, "mpbroker-server: the authkey from %s is empty\n", from);
        return -1;
    }
    if (n > KEY_MAX) {
        fprintf(stderr, "mpbroker-server: the authkey from %s is over %u bytes\n", from, KEY_MAX);
        return -1;
    }
    key_buf = malloc(n);
    if (!key_buf) {
        fprintf(stderr, "mpbroker-server: out of memory\n");
        return -1;
    }
    memcpy(key_buf, p, n);
    g_config.authkey = key_buf;
    g_config.authkey_len = n;
    return 0;
}

static int load_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "mpbroker-server: authkey file %s: %s\n", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    /* ssh's rule for private keys: a key others can read is not a secret. */
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        fprintf(stderr, "mpbroker-server: authkey file %s is accessible by group or others "
                "(mode %03o): chmod 600 it\n", path, (unsigned)(st.st_mode & 0777));
        close(fd);
        return -1;
    }
    unsigned char *buf = malloc(KEY_MAX + 2);
    size_t n = 0;
    ssize_t got;
    while (buf && n < KEY_MAX + 2 && (got = read(fd, buf + n, KEY_MAX + 2 - n)) != 0) {
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            fprintf(stderr, "mpbroker-server: authkey file %s: %s\n", path, strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        n += (size_t)got;
    }
    close(fd);
    if (!buf) {
        fprintf(stderr, "mpbroker-server: out of memory\n");
        return -1;
    }
    /* `echo secret > file` must work: one trailing newline is not part of the key. */
    if (n > 0 && buf[n - 1] == '\n') n--;
    if (n > 0 && buf[n - 1] == '\r') n--;
    int rc = set_key(buf, n, path);
    OPENSSL_cleanse(buf, KEY_MAX + 2);
    free(buf);
    return rc;
}

int auth_load_key(const char *file)
{
    if (file) return load_file(file);
    const char *env = getenv("MPBROKER_AUTHKEY_FILE");
    if (env && *env) return load_file(env);
    env = getenv("MPBROKER_AUTHKEY");
    if (env) return set_key(env, strlen(env), "$MPBROKER_AUTHKEY");
    return 0;
}

void auth_unload_key(void)
{
    if (key_buf) OPENSSL_cleanse(key_buf, g_config.authkey_len);
    free(key_buf);
    key_buf = NULL;
    g_config.authkey = NULL;
    g_config.authkey_len = 0;
}

/*--- Connections ---*/

static void on_auth_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mpb_conn *c = arg;
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) did not authenticate within "
                "%g s: closed\n", (unsigned long long)c->id, c->peer, g_config.auth_timeout);
    conn_close(c); /* a timer callback: no connection's callback is running */
}

void auth_conn_new(mpb_conn *c)
{
    c->authed = g_config.authkey == NULL;
    if (c->authed) return;
    c->in.max_msg = AUTH_MAX_MSG;
    /* Without memory for the handshake state the connection can only fail it. */
    if (!(c->auth = calloc(1, sizeof *c->auth)) || g_config.auth_timeout <= 0) return;
    double whole = (double)(long)g_config.auth_timeout;
    struct timeval tv = {(time_t)whole, (suseconds_t)((g_config.auth_timeout - whole) * 1e6)};
    evtimer_assign(&c->auth->timer, event_get_base(&c->rev), on_auth_timeout, c);
    evtimer_add(&c->auth->timer, &tv);
}

void auth_conn_free(mpb_conn *c)
{
    if (!c->auth) return;
    evtimer_del(&c->auth->timer); /* harmless when never added */
    OPENSSL_cleanse(c->auth, sizeof *c->auth);
    free(c->auth);
    c->auth = NULL;
}

/* The handshake failed: say so, and close once the reply is written. */
static void fail(mpb_req *r, const char *why)
{
    if (!r->notify) reply_error(r, MPB_E_AUTH, "%s", why);
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) failed to authenticate: %s\n",
                (unsigned long long)r->conn->id, r->conn->peer, why);
    auth_conn_free(r->conn);
    r->conn->closing = true;
}

bool auth_gate(mpb_req *r, int id)
{
    if (id == MPB_M_AUTH_CHALLENGE || id == MPB_M_AUTH_RESPONSE) return true;
    fail(r, "authenticate first: this broker has an authkey (auth.challenge, then "
            "auth.response)");
    return false;
}

/* out = PREFIX + HMAC-SHA256(key, label || a || b). */
static void proof(unsigned char out[PROOF_LEN], const char *label, const unsigned char *a,
                  size_t alen, const unsigned char *b, size_t blen)
{
    unsigned char msg[sizeof LABEL_SERVER + 2 * (PREFIX_LEN + CLIENT_NONCE_MAX)];
    size_t n = strlen(label);
    memcpy(msg, label, n);
    memcpy(msg + n, a, alen);
    memcpy(msg + n + alen, b, blen);
    unsigned int len = DIGEST;
    memcpy(out, PREFIX, PREFIX_LEN);
    HMAC(EVP_sha256(), g_config.authkey, (int)g_config.authkey_len, msg, n + alen + blen,
         out + PREFIX_LEN, &len);
    OPENSSL_cleanse(msg, sizeof msg);
}

/* Common checks; false after replying. */
static bool may_handshake(mpb_req *r)
{
    if (!g_config.authkey) {
        /* A client that insists on authenticating must not trust a broker that cannot
         * prove the key; the connection itself is fine. */
        reply_error(r, MPB_E_AUTH, "this broker has no authkey: it cannot prove one");
        return false;
    }
    if (r->conn->authed) {
        reply_error(r, MPB_E_AUTH, "already authenticated");
        return false;
    }
    return true;
}

/* auth.challenge CLIENT_CHALLENGE */
void auth_challenge(mpb_req *r)
{
    if (!may_handshake(r)) return;
    mpb_conn *c = r->conn;
    const char *p;
    size_t n;
    struct mpb_auth *a = c->auth;
    if (!a) {
        reply_error(r, MPB_E_OUT_OF_MEMORY, "auth.challenge: out of memory");
        return;
    }
    if (a->client_len) {
        fail(r, "auth.challenge: the handshake was already started");
        return;
    }
    if (!mpb_object_bytes(&r->args[0], &p, &n) || n < PREFIX_LEN + CLIENT_NONCE_MIN ||
        n > PREFIX_LEN + CLIENT_NONCE_MAX || memcmp(p, PREFIX, PREFIX_LEN) != 0) {
        fail(r, "auth.challenge: CLIENT_CHALLENGE must be \"{sha256}\" and 32 to 256 "
                "random bytes");
        return;
    }
    memcpy(a->client, p, n);
    a->client_len = n;
    memcpy(a->server, PREFIX, PREFIX_LEN);
    if (RAND_bytes(a->server + PREFIX_LEN, SERVER_NONCE) != 1) {
        fail(r, "auth.challenge: no random bytes to be had");
        return;
    }
    unsigned char mine[PROOF_LEN];
    proof(mine, LABEL_SERVER, a->client, a->client_len, a->server, sizeof a->server);
    msgpack_packer *pk = reply_begin(r);
    msgpack_pack_array(pk, 2);
    msgpack_pack_bin_with_body(pk, a->server, sizeof a->server);
    msgpack_pack_bin_with_body(pk, mine, sizeof mine);
}

/* auth.response CLIENT_PROOF */
void auth_response(mpb_req *r)
{
    if (!may_handshake(r)) return;
    mpb_conn *c = r->conn;
    struct mpb_auth *a = c->auth;
    if (!a || !a->client_len) {
        fail(r, "auth.response: call auth.challenge first");
        return;
    }
    const char *p;
    size_t n;
    unsigned char want[PROOF_LEN];
    proof(want, LABEL_CLIENT, a->server, sizeof a->server, a->client, a->client_len);
    bool ok = mpb_object_bytes(&r->args[0], &p, &n) && n == PROOF_LEN &&
              CRYPTO_memcmp(p, want, PROOF_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    if (!ok) {
        fail(r, "wrong authkey");
        return;
    }
    auth_conn_free(c);
    c->authed = true;
    c->in.max_msg = g_config.max_msg;
    reply_bool(r, true);
}
