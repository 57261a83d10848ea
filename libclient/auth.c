/* auth.c - libmpbroker's half of the authkey handshake (docs/PROTOCOL.md,
 * "Authentication"; the broker's half is server/auth.c), where a key comes from, and
 * who may be on the other end of a Unix socket.
 *
 *   -> auth.challenge [C]      C = "{sha256}" + 40 random bytes
 *   <- S                       the broker's random challenge
 *   -> auth.response ["{sha256}" + HMAC-SHA256(key, "mpbroker-auth client" || S || C)]
 *   <- "{sha256}" + HMAC-SHA256(key, "mpbroker-auth server" || C || S)
 *      the broker's proof, checked (constant time) before anything else is sent
 *
 * The client proves itself first (as in Python's multiprocessing), so that a broker
 * reachable by strangers never hands out anything derived from the key; a client, in
 * turn, must not prove the key to an impostor, which is why a Unix socket's peer is
 * checked before the handshake (mpb_client_check_peer).
 *
 * It runs on the raw socket with its own encoder and reader, before the context has
 * any call in flight, so it neither depends on nor disturbs the pipelining state in
 * client.c (and works the same for a first connection and a reconnect).
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth.h"
#include "internal.h"
#include "mpb_reader.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

#define PREFIX "{sha256}"
#define PREFIX_LEN 8
#define NONCE 40
#define DIGEST 32
#define PROOF_LEN (PREFIX_LEN + DIGEST)
#define SERVER_CHALLENGE_MAX 256
#define KEY_MAX (64u << 10)
#define REPLY_TIMEOUT_MS 10000

static int fail(mpb_context *c, int err, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(mpb_context *c, int err, const char *kind, const char *fmt, ...)
{
    va_list ap;
    c->err = err;
    snprintf(c->errkind, sizeof c->errkind, "%s", kind);
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    return err;
}

/*--- The key ---*/

int mpb_client_key(mpb_context *c, const void *key, size_t len, unsigned char **out,
                   size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    unsigned char *buf = NULL;
    size_t n = 0;
    const char *file = getenv("MPBROKER_AUTHKEY_FILE");
    const char *env = getenv("MPBROKER_AUTHKEY");
    if (key != NULL) {
        if ((buf = malloc(len ? len : 1)) == NULL) goto oom;
        memcpy(buf, key, len);
        n = len;
    } else if (file != NULL && file[0] != '\0') {
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return fail(c, MPB_ERR_CONNECT, "AuthError", "authkey file %s: %s", file,
                        strerror(errno));
        if ((buf = malloc(KEY_MAX + 2)) == NULL) {
            close(fd);
            goto oom;
        }
        ssize_t got;
        while (n < KEY_MAX + 2 && (got = read(fd, buf + n, KEY_MAX + 2 - n)) != 0) {
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) {
                int e = errno;
                close(fd);
                mpb_client_key_free(buf, KEY_MAX + 2);
                return fail(c, MPB_ERR_CONNECT, "AuthError", "authkey file %s: %s", file,
                            strerror(e));
            }
            n += (size_t)got;
        }
        close(fd);
        if (n > 0 && buf[n - 1] == '\n') n--; /* as the broker reads it */
        if (n > 0 && buf[n - 1] == '\r') n--;
    } else if (env != NULL) {
        n = strlen(env);
        if ((buf = malloc(n ? n : 1)) == NULL) goto oom;
        memcpy(buf, env, n);
    } else {
        return MPB_OK; /* no key: no handshake */
    }
    if (n == 0 || n > KEY_MAX) {
        mpb_client_key_free(buf, n);
        return fail(c, MPB_ERR_CONNECT, "AuthError", "the authkey is %s",
                    n == 0 ? "empty" : "over 64 KiB");
    }
    *out = buf;
    *outlen = n;
    return MPB_OK;
oom:
    return fail(c, MPB_ERR_OOM, "OutOfMemory", "reading the authkey");
}

void mpb_client_key_free(unsigned char *key, size_t len)
{
    if (key != NULL) OPENSSL_cleanse(key, len);
    free(key);
}

/*--- The exchange ---*/

/* Send [0, msgid, method, [bin arg]] whole. */
static int send_call(mpb_context *c, uint32_t msgid, const char *method,
                     const unsigned char *arg, size_t n)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, msgid);
    msgpack_pack_str_with_body(&pk, method, strlen(method));
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, arg, n);
    size_t off = 0;
    int rc = MPB_OK;
    while (sb.data != NULL && off < sb.size) {
        ssize_t w = mpb_client_send(c, sb.data + off, sb.size - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { /* a TLS socket is non-blocking */
            struct pollfd pf = {.fd = c->fd, .events = POLLOUT | POLLIN};
            if (poll(&pf, 1, REPLY_TIMEOUT_MS) > 0) continue;
        }
        if (w <= 0) {
            rc = fail(c, MPB_ERR_IO, "ConnectionError", "%s: write: %s", method,
                      w < 0 ? mpb_client_strerror(c, errno) : "closed");
            break;
        }
        off += (size_t)w;
    }
    if (sb.data == NULL) rc = fail(c, MPB_ERR_OOM, "OutOfMemory", "%s", method);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* Read one reply into r; *o borrows from r. Error replies become the context's error
 * (an AuthError from the broker, most likely). */
static int read_reply(mpb_context *c, mpb_reader *r, uint32_t msgid, msgpack_object *o)
{
    for (;;) {
        mpb_read_status st = mpb_reader_next(r, o);
        if (st == MPB_READ_MSG) break;
        if (st != MPB_READ_NEED)
            return fail(c, MPB_ERR_PROTOCOL, "ProtocolError", "handshake: bad reply: %s",
                        r->errstr);
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int p = mpb_client_buffered(c) ? 1 : poll(&pf, 1, REPLY_TIMEOUT_MS);
        if (p < 0 && errno == EINTR) continue;
        if (p <= 0)
            return fail(c, MPB_ERR_IO, "ConnectionError", "handshake: %s",
                        p == 0 ? "no reply from the broker" : strerror(errno));
        size_t avail;
        char *space = mpb_reader_space(r, 4096, &avail);
        if (space == NULL) return fail(c, MPB_ERR_OOM, "OutOfMemory", "handshake");
        ssize_t n = mpb_client_recv(c, space, avail, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0 && errno == EPROTO) /* a TLS alert: the broker refused our certificate */
            return fail(c, MPB_ERR_CONNECT, "TLSError", "handshake: %s",
                        mpb_client_strerror(c, errno));
        if (n <= 0)
            return fail(c, MPB_ERR_EOF, "ConnectionError", "handshake: the broker closed "
                        "the connection");
        mpb_reader_commit(r, (size_t)n);
    }
    const msgpack_object *f = o->via.array.ptr;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4 ||
        f[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[0].via.u64 != 1)
        return fail(c, MPB_ERR_PROTOCOL, "ProtocolError", "handshake: not a response");
    if (f[2].type == MSGPACK_OBJECT_ARRAY && f[2].via.array.size == 2 &&
        f[2].via.array.ptr[0].type == MSGPACK_OBJECT_STR &&
        f[2].via.array.ptr[1].type == MSGPACK_OBJECT_STR) {
        const msgpack_object_str *k = &f[2].via.array.ptr[0].via.str;
        const msgpack_object_str *m = &f[2].via.array.ptr[1].via.str;
        fail(c, MPB_ERR_REPLY, "", "%.*s", (int)m->size, m->ptr);
        snprintf(c->errkind, sizeof c->errkind, "%.*s", (int)k->size, k->ptr);
        return MPB_ERR_REPLY;
    }
    if (f[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[1].via.u64 != msgid)
        return fail(c, MPB_ERR_PROTOCOL, "ProtocolError", "handshake: reply out of order");
    return MPB_OK;
}

/* fork() in a threaded program copies every lock as it is, and OpenSSL 3 takes locks
 * (its random generator's, its algorithm store's) that another thread of the parent may
 * hold at that instant: a child that then calls into them waits for ever (seen: a
 * Python Manager child stuck in RAND_bytes). So the handshake's nonce comes from
 * getrandom(2), which takes no lock, and its HMAC runs under hmac_lock, which
 * pthread_atfork takes before any fork: no fork happens while a thread of ours is
 * inside OpenSSL's HMAC. (Other code of the program calling OpenSSL is its own.) */
static pthread_mutex_t hmac_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static void hmac_lock_take(void) { pthread_mutex_lock(&hmac_lock); }
static void hmac_lock_give(void) { pthread_mutex_unlock(&hmac_lock); }
static void hmac_atfork(void) { pthread_atfork(hmac_lock_take, hmac_lock_give, hmac_lock_give); }

static int nonce(unsigned char *buf, size_t n)
{
    while (n > 0) {
        ssize_t got = getrandom(buf, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        buf += got;
        n -= (size_t)got;
    }
    return 0;
}

/* out = PREFIX + HMAC-SHA256(key, label || a || b). */
static void proof(unsigned char out[PROOF_LEN], const unsigned char *key, size_t keylen,
                  const char *label, const void *a, size_t alen, const void *b, size_t blen)
{
    unsigned char msg[32 + 2 * (PREFIX_LEN + SERVER_CHALLENGE_MAX)];
    size_t n = strlen(label);
    memcpy(msg, label, n);
    memcpy(msg + n, a, alen);
    memcpy(msg + n + alen, b, blen);
    unsigned int len = DIGEST;
    memcpy(out, PREFIX, PREFIX_LEN);
    pthread_once(&hmac_once, hmac_atfork);
    hmac_lock_take();
    HMAC(EVP_sha256(), key, (int)keylen, msg, n + alen + blen, out + PREFIX_LEN, &len);
    hmac_lock_give();
    OPENSSL_cleanse(msg, sizeof msg);
}

/* The result of the reply read into o, if it is a bin of lo..hi bytes; else NULL. */
static const msgpack_object_bin *bin_result(const msgpack_object *o, size_t lo, size_t hi)
{
    const msgpack_object *res = &o->via.array.ptr[3];
    if (res->type != MSGPACK_OBJECT_BIN || res->via.bin.size < lo || res->via.bin.size > hi ||
        memcmp(res->via.bin.ptr, PREFIX, PREFIX_LEN) != 0)
        return NULL;
    return &res->via.bin;
}

int mpb_client_handshake(mpb_context *c, const unsigned char *key, size_t keylen)
{
    unsigned char mine[PREFIX_LEN + NONCE], cp[PROOF_LEN], want[PROOF_LEN];
    unsigned char server[PREFIX_LEN + SERVER_CHALLENGE_MAX];
    size_t slen = 0;
    mpb_reader r;
    msgpack_object o;
    const msgpack_object_bin *b;
    int rc;
    memcpy(mine, PREFIX, PREFIX_LEN);
    if (nonce(mine + PREFIX_LEN, NONCE) < 0)
        return fail(c, MPB_ERR_CONNECT, "AuthError", "no random bytes to be had");
    if (mpb_reader_init(&r, 1 << 16, MPB_READER_MAX_DEPTH) < 0)
        return fail(c, MPB_ERR_OOM, "OutOfMemory", "handshake");
    if ((rc = send_call(c, 1, "auth.challenge", mine, sizeof mine)) != MPB_OK ||
        (rc = read_reply(c, &r, 1, &o)) != MPB_OK)
        goto done;
    /* S, the broker's challenge: ours to answer first. */
    if ((b = bin_result(&o, PREFIX_LEN + 16, sizeof server)) == NULL) {
        rc = fail(c, MPB_ERR_PROTOCOL, "ProtocolError", "auth.challenge: unexpected reply "
                  "(a broker older than this library's handshake?)");
        goto done;
    }
    slen = b->size;
    memcpy(server, b->ptr, slen);
    proof(cp, key, keylen, "mpbroker-auth client", server, slen, mine, sizeof mine);
    if ((rc = send_call(c, 2, "auth.response", cp, sizeof cp)) != MPB_OK ||
        (rc = read_reply(c, &r, 2, &o)) != MPB_OK)
        goto done;
    /* The broker's proof, now that it has ours: it must know the key too. */
    proof(want, key, keylen, "mpbroker-auth server", mine, sizeof mine, server, slen);
    if ((b = bin_result(&o, PROOF_LEN, PROOF_LEN)) == NULL ||
        CRYPTO_memcmp(want, b->ptr, PROOF_LEN) != 0)
        rc = fail(c, MPB_ERR_CONNECT, "AuthError", "the broker could not prove it knows "
                  "the authkey (wrong key on one side)");
done:
    if (rc == MPB_ERR_REPLY) c->err = rc = MPB_ERR_CONNECT; /* the broker said no */
    OPENSSL_cleanse(cp, sizeof cp);
    OPENSSL_cleanse(want, sizeof want);
    mpb_reader_destroy(&r);
    return rc;
}

/*--- The peer ---*/

int mpb_client_unix_address(mpb_context *c, const char *address, char *path, size_t n,
                            char *peer, size_t pn)
{
    const char *q = strchr(address, '?');
    size_t len = q ? (size_t)(q - address) : strlen(address);
    peer[0] = '\0';
    if (len == 0 || len >= n || len >= sizeof ((struct sockaddr_un *)0)->sun_path)
        return fail(c, MPB_ERR_CONNECT, "ConnectionError", "bad Unix socket path '%s'",
                    address);
    memcpy(path, address, len);
    path[len] = '\0';
    if (q == NULL) return MPB_OK;
    if (strncmp(q, "?peer=", 6) != 0 || q[6] == '\0' || strlen(q + 6) >= pn)
        return fail(c, MPB_ERR_CONNECT, "ConnectionError", "bad address '%s': after the "
                    "path only ?peer=USER (a name, a uid, or any) may come", address);
    memcpy(peer, q + 6, strlen(q + 6) + 1);
    return MPB_OK;
}

/* uid for a user name or number; -1 if there is no such user. */
static long long uid_of(const char *who)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(who, &end, 10); /* digits only: it takes "-1" too */
    if (who[0] >= '0' && who[0] <= '9' && *end == '\0')
        return errno == 0 && n <= (uid_t)-1 ? (long long)n : -1;
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwnam_r(who, &pw, buf, sizeof buf, &res) != 0 || res == NULL) return -1;
    return (long long)res->pw_uid;
}

static void user_name(uid_t uid, char *out, size_t n)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res != NULL)
        snprintf(out, n, "%lu (%s)", (unsigned long)uid, res->pw_name);
    else
        snprintf(out, n, "%lu", (unsigned long)uid);
}

int mpb_client_check_peer(mpb_context *c, int fd, const char *path, const char *peer)
{
#ifdef SO_PEERCRED
    if (strcmp(peer, "any") == 0) return MPB_OK;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return fail(c, MPB_ERR_CONNECT, "AuthError", "%s: who is the broker? (SO_PEERCRED: "
                    "%s)", path, strerror(errno));
    uid_t me = geteuid();
    long long want = peer[0] ? uid_of(peer) : -1;
    if (peer[0] && want < 0)
        return fail(c, MPB_ERR_CONNECT, "AuthError", "%s?peer=%s: no such user", path, peer);
    if (peer[0] ? (long long)cred.uid == want : cred.uid == me || cred.uid == 0)
        return MPB_OK;
    /* Someone else's broker: whatever we would send it (objects, a proof of our key)
     * would be theirs. */
    char who[96], whom[96];
    user_name(cred.uid, who, sizeof who);
    if (peer[0]) user_name((uid_t)want, whom, sizeof whom);
    else snprintf(whom, sizeof whom, "you (uid %lu) or root", (unsigned long)me);
    return fail(c, MPB_ERR_CONNECT, "AuthError", "%s: the broker there runs as uid %s, not "
                "as %s: refused: it may be another user squatting the path (add "
                "?peer=%lu to the address to trust it)", path, who, whom,
                (unsigned long)cred.uid);
#else
    (void)c;
    (void)fd;
    (void)path;
    (void)peer;
    return MPB_OK; /* no peer credentials here: the socket's directory must be private */
#endif
}
