/* auth.c - the authkey handshake: mutual HMAC-SHA256 challenge-response over two RPC
 * methods, what a connection may send before it, and loading the key.
 *
 * Modelled on Python 3.12's multiprocessing.connection: random challenges from
 * RAND_bytes, each named by a "{sha256}" prefix, HMAC-SHA256 proofs, constant-time
 * comparison (CRYPTO_memcmp), and, as there, the connecting side proves itself first:
 *
 *   client: auth.challenge [C]        C = "{sha256}" + 32..256 random bytes
 *   broker: S                         S = "{sha256}" + 40 random bytes
 *   client: auth.response ["{sha256}" + HMAC(key, "mpbroker-auth client" || S || C)]
 *   broker: checks it; wrong: AuthError and the connection closes; right:
 *           "{sha256}" + HMAC(key, "mpbroker-auth server" || C || S), which the client
 *           checks in turn before it sends anything else.
 *
 * A peer without the key so gets nothing from the broker that depends on the key (S
 * is random; an error's text is fixed): it cannot take a proof home and guess a weak
 * key offline. Each proof binds both challenges, and the two directions use distinct
 * labels, so nothing the broker ever sends is a proof it would accept (no reflection),
 * and a proof is worthless on any other connection.
 *
 * Before the handshake has succeeded a connection may send exactly two well-formed
 * requests (auth_serve): anything else gets at most one error reply and the connection
 * closes, and conn.c reads no more than AUTH_MAX_MSG bytes ahead. Handshake state
 * lives in a struct mpb_auth owned by the connection (c->auth), allocated when a
 * connection opens on a keyed broker and freed once the handshake ends or the
 * connection closes; its timer closes a connection that has not authenticated within
 * --auth-timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "limits.h"
#include "mpb_codec.h"

#define PREFIX "{sha256}"
#define PREFIX_LEN 8
#define SERVER_NONCE 40 /* random bytes, as Python's deliver_challenge */
#define CLIENT_NONCE_MIN 32
#define CLIENT_NONCE_MAX 256
#define DIGEST 32
#define PROOF_LEN (PREFIX_LEN + DIGEST)
#define KEY_MAX (64u << 10)
#define KEY_WEAK 16 /* bytes: a shorter key is warned about at start */

static const char LABEL_SERVER[] = "mpbroker-auth server";
static const char LABEL_CLIENT[] = "mpbroker-auth client";

/* Who a connection comes from, for --max-handshakes-per-peer: a uid on a Unix socket,
 * an IP address (without the port) over TCP. */
typedef struct peer_id {
    int family; /* AF_UNIX (addr holds the uid), AF_INET or AF_INET6 */
    unsigned char addr[16];
} peer_id;

struct mpb_auth {
    unsigned char client[PREFIX_LEN + CLIENT_NONCE_MAX]; /* C, as received */
    size_t client_len; /* 0 until auth.challenge */
    unsigned char server[PREFIX_LEN + SERVER_NONCE]; /* S */
    struct event timer; /* --auth-timeout: a connection cannot sit unauthenticated */
    mpb_conn *conn;
    peer_id peer;
    struct mpb_auth *prev, *next; /* the pending list, oldest first */
};

/* Connections still authenticating, oldest first (admission evicts from the front). */
static struct mpb_auth *pending_head, *pending_tail;
static size_t npending;

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
    /* Only a client that proves the key learns anything derived from it, but a short
     * key can still be guessed online, or offline by a fake broker a client was
     * tricked into trying. */
    if (n < KEY_WEAK)
        fprintf(stderr, "mpbroker-server: warning: the authkey from %s is only %zu bytes: "
                "use %d or more random bytes (e.g. head -c 32 /dev/urandom | base64)\n",
                from, n, KEY_WEAK);
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
    /* ...and a key another user owns is theirs to change (sshd's StrictModes rule):
     * only the broker's own user or root may own it. */
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        fprintf(stderr, "mpbroker-server: authkey file %s is owned by uid %lu, not by the "
                "broker's user (uid %lu) or root: that user could change the key\n", path,
                (unsigned long)st.st_uid, (unsigned long)geteuid());
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

/*--- Admission: connections still authenticating ---*/

static void peer_of(int fd, bool tcp, peer_id *out)
{
    memset(out, 0, sizeof *out);
    if (!tcp) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        out->family = AF_UNIX;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            memcpy(out->addr, &cred.uid, sizeof cred.uid);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) return;
    if (ss.ss_family == AF_INET) {
        out->family = AF_INET;
        memcpy(out->addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        out->family = AF_INET6;
        if (IN6_IS_ADDR_V4MAPPED(a)) { /* the same host as its IPv4 address */
            out->family = AF_INET;
            memcpy(out->addr, a->s6_addr + 12, 4);
        } else {
            memcpy(out->addr, a->s6_addr, 16);
        }
    }
}

static void peer_name(const peer_id *p, char *buf, size_t n)
{
    if (p->family == AF_UNIX) {
        uid_t uid;
        memcpy(&uid, p->addr, sizeof uid);
        snprintf(buf, n, "uid %lu", (unsigned long)uid);
    } else {
        evutil_inet_ntop(p->family, p->addr, buf, n);
    }
}

/* Close a connection still authenticating, telling it why. Only from the listener's
 * callback, where no connection's callback runs. */
static void evict(struct mpb_auth *a, const char *why)
{
    conn_refuse(a->conn, why); /* plain or inside TLS, as the connection speaks */
}

bool auth_make_room_for_peer(int fd, bool tcp, char *why, size_t n)
{
    if (!pending_head) return false; /* none (and none ever, keyless without TLS) */
    peer_id p;
    size_t same = 0;
    struct mpb_auth *oldest = NULL;
    peer_of(fd, tcp, &p);
    if (p.family == AF_UNIX) { /* the broker's own user and root are trusted anyway */
        uid_t uid;
        memcpy(&uid, p.addr, sizeof uid);
        if (uid == geteuid() || uid == 0) return false;
    }
    for (struct mpb_auth *a = pending_head; a; a = a->next)
        if (memcmp(&a->peer, &p, sizeof p) == 0 && same++ == 0) oldest = a;
    if (same < g_config.max_handshakes_per_peer) return false;
    /* Its oldest gives way rather than the new one being refused: a peer may be many
     * (every local user is 127.0.0.1), and a client with the key among them must
     * still get in. */
    char name[64];
    peer_name(&p, name, sizeof name);
    snprintf(why, n, "%zu connections from %s are already authenticating "
             "(--max-handshakes-per-peer)", same, name);
    evict(oldest, why);
    return true;
}

size_t auth_pending(void) { return npending; }

bool auth_evict_oldest(const char *why)
{
    if (!pending_head) return false;
    evict(pending_head, why);
    return true;
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

/* Track c as a connection still authenticating (admission counts and evicts these).
 * The state, or NULL when out of memory. */
static struct mpb_auth *track(mpb_conn *c)
{
    struct mpb_auth *a = c->auth = calloc(1, sizeof *c->auth);
    if (!a) return NULL;
    a->conn = c;
    peer_of(c->fd, c->is_tcp, &a->peer);
    a->prev = pending_tail;
    if (pending_tail) pending_tail->next = a;
    else pending_head = a;
    pending_tail = a;
    npending++;
    return a;
}

void auth_tls_start(mpb_conn *c)
{
    if (!c->auth) (void)track(c); /* keyed: tracked already, until it authenticates */
}

void auth_tls_done(mpb_conn *c)
{
    if (!g_config.authkey) auth_conn_free(c); /* the certificate was all it had to show */
}

void auth_conn_new(mpb_conn *c)
{
    c->authed = g_config.authkey == NULL;
    if (c->authed) return;
    c->in.max_msg = AUTH_MAX_MSG;
    /* Without memory for the handshake state the connection can only fail it. */
    if (!track(c)) return;
    if (g_config.auth_timeout <= 0) return;
    double whole = (double)(long)g_config.auth_timeout;
    struct timeval tv = {(time_t)whole, (suseconds_t)((g_config.auth_timeout - whole) * 1e6)};
    evtimer_assign(&c->auth->timer, event_get_base(&c->rev), on_auth_timeout, c);
    evtimer_add(&c->auth->timer, &tv);
}

void auth_conn_free(mpb_conn *c)
{
    struct mpb_auth *a = c->auth;
    if (!a) return;
    if (a->prev) a->prev->next = a->next;
    else pending_head = a->next;
    if (a->next) a->next->prev = a->prev;
    else pending_tail = a->prev;
    npending--;
    /* Never assigned under --auth-timeout 0: libevent would warn on stderr for each
     * stranger, --quiet or not. */
    if (event_initialized(&a->timer)) evtimer_del(&a->timer);
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
        reply_error(r, MPB_E_AUTH, "%s: this broker has no authkey: it cannot prove one",
                    r->info->name);
        return false;
    }
    if (r->conn->authed) {
        reply_error(r, MPB_E_AUTH, "%s: already authenticated", r->info->name);
        return false;
    }
    return true;
}

/* auth.challenge CLIENT_CHALLENGE: replies SERVER_CHALLENGE, random, nothing else. */
void auth_challenge(mpb_req *r)
{
    if (!may_handshake(r)) return;
    mpb_conn *c = r->conn;
    const char *p;
    size_t n;
    struct mpb_auth *a = c->auth;
    if (!a) {
        fail(r, "auth.challenge: out of memory");
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
    msgpack_pack_bin_with_body(reply_begin(r), a->server, sizeof a->server);
}

/* auth.response CLIENT_PROOF: checks it, then replies SERVER_PROOF. */
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
    if (!ok) {
        OPENSSL_cleanse(want, sizeof want);
        fail(r, "wrong authkey");
        return;
    }
    /* The client has proved the key: only now does the broker prove it in turn. */
    proof(want, LABEL_SERVER, a->client, a->client_len, a->server, sizeof a->server);
    msgpack_pack_bin_with_body(reply_begin(r), want, sizeof want);
    OPENSSL_cleanse(want, sizeof want);
    auth_conn_free(c);
    c->authed = true;
    if (!g_config.quiet)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) authenticated\n",
                (unsigned long long)c->id, c->peer);
    c->in.max_msg = g_config.max_msg;
}

/*--- Before the handshake ---*/

/* A request from an unauthenticated connection, checked and run: true when it was a
 * well-formed auth.challenge or auth.response that succeeded. On false an error has
 * been replied, unless the message had no msgid to reply to. */
static bool serve_unauthenticated(mpb_conn *c, const msgpack_object *msg)
{
    const msgpack_object *f = msg->via.array.ptr;
    bool is_req = msg->type == MSGPACK_OBJECT_ARRAY && msg->via.array.size == 4 &&
                  f[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && f[0].via.u64 == 0 &&
                  f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    if (!is_req) {
        /* Garbage gets one BadRequest; a notification or a response, nothing. */
        bool silent = msg->type == MSGPACK_OBJECT_ARRAY && msg->via.array.size > 0 &&
                      f[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                      (f[0].via.u64 == 1 || f[0].via.u64 == 2);
        bool has_id = msg->type == MSGPACK_OBJECT_ARRAY && msg->via.array.size >= 2 &&
                      f[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && f[0].via.u64 == 0 &&
                      f[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
        if (!silent)
            dispatch_reply_bad(c, has_id, has_id ? f[1].via.u64 : 0, MPB_E_BAD_REQUEST,
                               "expected [0, msgid, method, params]: authenticate first "
                               "(auth.challenge, then auth.response)");
        return false;
    }
    mpb_req r = {.conn = c, .msgid = f[1].via.u64};
    const char *name;
    size_t len;
    int id = mpb_object_bytes(&f[2], &name, &len) ? mpb_method_lookup(name, len) : -1;
    if (id != MPB_M_AUTH_CHALLENGE && id != MPB_M_AUTH_RESPONSE) {
        reply_error(&r, MPB_E_AUTH, "authenticate first: this broker has an authkey "
                    "(auth.challenge, then auth.response)");
        return false;
    }
    r.method = id;
    r.info = &mpb_methods[id];
    if (f[3].type != MSGPACK_OBJECT_ARRAY || f[3].via.array.size != 1) {
        reply_error(&r, MPB_E_AUTH, "%s takes one argument, a bin", r.info->name);
        return false;
    }
    r.args = f[3].via.array.ptr;
    r.nargs = 1;
    c->ops++;
    if (id == MPB_M_AUTH_CHALLENGE) auth_challenge(&r);
    else auth_response(&r);
    return !r.failed;
}

void auth_serve(mpb_conn *c, const msgpack_object *msg)
{
    if (serve_unauthenticated(c, msg)) return;
    /* One misstep ends it: a stranger cannot make the broker answer, or read, more. */
    if (!g_config.quiet && c->auth)
        fprintf(stderr, "mpbroker-server: connection %llu (%s) sent something other than "
                "the handshake: closed\n", (unsigned long long)c->id, c->peer);
    auth_conn_free(c);
    c->closing = true;
}
