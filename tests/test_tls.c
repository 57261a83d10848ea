/* test_tls.c - TLS (issue 14): --tls-listen, tls:// clients, mutual TLS, refusals,
 * handshake deadline, SIGHUP reload, protected mode.
 *
 * Certificates are made at start by tests/tls-certs.sh ($MPB_TLS_CERTS) with the
 * openssl command into a temporary directory that every (forked) test reads.
 * Each broker listens on its Unix socket too: tb_start waits on it, and a plain
 * client there is the "other client" that a refused TLS client must not disturb.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <msgpack.h>
#include <openssl/ssl.h>

#include "testutil.h"

static char certs[256]; /* the directory of tls-certs.sh's files */

static const char *cert(const char *name)
{
    static char bufs[8][320];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", certs, name);
    return b;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(fd >= 0);
    ck_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* A broker with a TLS listener on a free loopback port, serving server_cert (a name
 * in certs, with .pem/.key), extra arguments after. tls receives "tls://127.0.0.1:PORT". */
static void start_tls(tb_broker *b, char *tls, size_t n, const char *server_cert,
                      const char *const *extra)
{
    static char listen[64], crt[320], key[320];
    snprintf(listen, sizeof listen, "tls://127.0.0.1:%d", free_port());
    snprintf(crt, sizeof crt, "%s/%s.pem", certs, server_cert);
    snprintf(key, sizeof key, "%s/%s.key", certs, server_cert);
    const char *args[40] = {"--tls-listen", listen, "--tls-cert", crt, "--tls-key", key};
    int k = 6;
    for (int i = 0; extra && extra[i]; i++) args[k++] = extra[i];
    args[k] = NULL;
    tb_start(b, 0, args);
    snprintf(tls, n, "%s", listen);
}

/* "tls://HOST:PORT" from "tls://127.0.0.1:PORT". */
static void with_host(char *out, size_t n, const char *tls, const char *host)
{
    snprintf(out, n, "tls://%s%s", host, strrchr(tls, ':'));
}

/* The connection works: a list round trip. */
static void works(mpb_context *c)
{
    ck_assert_msg(c != NULL && c->err == MPB_OK, "connect: %s: %s", c ? c->errkind : "",
                  c ? c->errstr : "");
    mpb_ref l = tb_create(c, "list", "[1, 2]");
    mpb_value v = mpb_int(3);
    ck_assert_msg(mpb_list_append(c, l, &v) == MPB_OK, "%s", c->errstr);
    int64_t len = 0;
    ck_assert_msg(mpb_list_len(c, l, &len) == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(len, 3);
    ck_assert(mpb_release(c, l) == MPB_OK);
}

/* A connect that must fail with kind and a message containing what. */
static void refused(const char *address, const char *kind, const char *what)
{
    mpb_context *c = mpb_connect(address);
    ck_assert(c != NULL);
    int rc = c->err == MPB_OK ? mpb_ping(c) : c->err;
    ck_assert_msg(rc != MPB_OK, "%s: connected", address);
    ck_assert_msg(strcmp(c->errkind, kind) == 0 && strstr(c->errstr, what) != NULL,
                  "%s: want %s ...%s..., got %s: %s", address, kind, what, c->errkind,
                  c->errstr);
    mpb_free(c);
}

/*--- Connecting ---*/

START_TEST(right_ca_works_by_name_and_by_address)
{
    tb_broker t;
    char tls[64], byname[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    with_host(byname, sizeof byname, tls, "localhost");
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *a = mpb_connect(tls), *b = mpb_connect(byname);
    works(a); /* 127.0.0.1: the certificate's IP SAN */
    works(b); /* localhost: its DNS SAN */
    mpb_free(a);
    mpb_free(b);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(settings_from_the_environment)
{
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--tls-ca", cert("ca.pem"), NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    setenv("MPBROKER_TLS_CA", cert("ca.pem"), 1);
    setenv("MPBROKER_TLS_CERT", cert("client.pem"), 1);
    setenv("MPBROKER_TLS_KEY", cert("client.key"), 1);
    mpb_context *c = mpb_connect(tls);
    works(c);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* Big values both ways, pipelined: replies span many TLS records, writes are
 * partial, and bytes wait in OpenSSL's buffer (SSL_pending) on both sides. */
START_TEST(big_pipelined_traffic)
{
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *c = mpb_connect(tls);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    mpb_ref l = tb_create(c, "list", NULL);
    static char blob[5000];
    memset(blob, 'x', sizeof blob);
    for (int i = 0; i < 1000; i++) {
        mpb_value args[2] = {mpb_refv(l), mpb_strn(blob, sizeof blob - (size_t)i)};
        ck_assert(mpb_append_call(c, "list.append", args, 2) == MPB_OK);
        mpb_value_free(&args[1]);
    }
    ck_assert_msg(mpb_flush(c) == MPB_OK, "%s", c->errstr);
    for (int i = 0; i < 1000; i++) {
        mpb_value r;
        ck_assert_msg(mpb_get_reply(c, &r) == MPB_OK, "reply %d: %s", i, c->errstr);
        mpb_value_free(&r);
    }
    mpb_value all;
    ck_assert_msg(mpb_list_copy(c, l, &all) == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(all.type, MPB_ARRAY);
    ck_assert_uint_eq(all.v.a->len, 1000);
    ck_assert_uint_eq(all.v.a->items[999].len, sizeof blob - 999);
    mpb_value_free(&all);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(authkey_handshake_runs_inside_tls)
{
    tb_broker t;
    char tls[64], keyfile[300];
    const char key[] = "a tls test key of enough bytes";
    snprintf(keyfile, sizeof keyfile, "%s/authkey", certs);
    FILE *f = fopen(keyfile, "w");
    ck_assert(f != NULL);
    fputs(key, f);
    fclose(f);
    chmod(keyfile, 0600);
    const char *extra[] = {"--authkey-file", keyfile, NULL};
    setenv("MPBROKER_AUTHKEY_FILE", keyfile, 1); /* for tb_start's ping */
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *c = mpb_connect_with_key(tls, key, sizeof key - 1);
    works(c);
    mpb_free(c);
    mpb_context *bad = mpb_connect_with_key(tls, "wrong", 5);
    ck_assert_msg(bad->err != MPB_OK && strcmp(bad->errkind, "AuthError") == 0, "%s: %s",
                  bad->errkind, bad->errstr);
    mpb_free(bad);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- Refusals: each with a clear error, none disturbing another client ---*/

/* A client of t's Unix socket, and one over TLS, both working before and after. */
typedef struct {
    mpb_context *plain, *tls;
} others;

static void others_open(others *o, const tb_broker *t, const char *tls)
{
    o->plain = tb_connect(t);
    o->tls = tls ? mpb_connect(tls) : NULL;
    works(o->plain);
    if (o->tls) works(o->tls);
}

static void others_check_close(others *o)
{
    works(o->plain);
    if (o->tls) works(o->tls);
    mpb_free(o->plain);
    mpb_free(o->tls);
}

START_TEST(wrong_ca_is_refused)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    others_open(&o, &t, tls);
    ck_assert(mpb_set_tls(cert("other-ca.pem"), NULL, NULL, 0) == MPB_OK);
    refused(tls, "TLSError", "the broker's certificate: unable to get local issuer certificate");
    /* And the system's trust store knows nothing of the test CA. */
    ck_assert(mpb_set_tls(NULL, NULL, NULL, 0) == MPB_OK);
    refused(tls, "TLSError", "the broker's certificate");
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(expired_certificate_is_refused)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "expired", extra);
    others_open(&o, &t, NULL);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    refused(tls, "TLSError", "certificate has expired");
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(wrong_host_name_is_refused_unless_told)
{
    tb_broker t;
    char tls[64], byname[64];
    others o;
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "wrongname", extra);
    with_host(byname, sizeof byname, tls, "localhost");
    others_open(&o, &t, NULL);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    refused(byname, "TLSError", "mismatch");
    refused(tls, "TLSError", "mismatch"); /* no IP SAN 127.0.0.1 either */
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, MPB_TLS_NO_VERIFY_NAME) == MPB_OK);
    mpb_context *c = mpb_connect(byname);
    works(c); /* the flag skips the name, not the chain */
    mpb_free(c);
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* $MPBROKER_TLS_NO_VERIFY_NAME: only 1 skips the name check ("false" did too: any
 * value but 0); another value is refused with a clear error. */
START_TEST(name_check_skipped_only_by_1_in_the_environment)
{
    tb_broker t;
    char tls[64], byname[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "wrongname", extra);
    with_host(byname, sizeof byname, tls, "localhost");
    setenv("MPBROKER_TLS_CA", cert("ca.pem"), 1); /* no mpb_set_tls: the environment */
    setenv("MPBROKER_TLS_NO_VERIFY_NAME", "0", 1);
    refused(byname, "TLSError", "mismatch");
    setenv("MPBROKER_TLS_NO_VERIFY_NAME", "false", 1);
    refused(byname, "TLSError", "MPBROKER_TLS_NO_VERIFY_NAME is 'false'");
    setenv("MPBROKER_TLS_NO_VERIFY_NAME", "no", 1);
    refused(byname, "TLSError", "MPBROKER_TLS_NO_VERIFY_NAME is 'no'");
    setenv("MPBROKER_TLS_NO_VERIFY_NAME", "1", 1);
    mpb_context *c = mpb_connect(byname);
    works(c);
    mpb_free(c);
    unsetenv("MPBROKER_TLS_NO_VERIFY_NAME");
    unsetenv("MPBROKER_TLS_CA");
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(plain_client_on_the_tls_port_is_told)
{
    tb_broker t;
    char tls[64], tcp[64];
    others o;
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    others_open(&o, &t, tls);
    snprintf(tcp, sizeof tcp, "tcp://%s", tls + 6);
    refused(tcp, "BadRequest", "this port speaks TLS");
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(tls_client_on_a_plain_port_is_told)
{
    tb_broker t;
    tb_start(&t, 1, NULL); /* plain TCP, --insecure */
    char tls[sizeof t.address + 8];
    snprintf(tls, sizeof tls, "tls://%s", t.address + 6);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    refused(tls, "TLSError", "TLS handshake with 127.0.0.1: wrong version number (the "
            "broker answered without TLS: not its TLS port");
    mpb_context *c = mpb_connect(t.address);
    works(c);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(client_certificate_required_and_checked)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--tls-ca", cert("ca.pem"), NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("client.pem"), cert("client.key"), 0) == MPB_OK);
    others_open(&o, &t, tls);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    /* TLS 1.3: the client's handshake ends before the broker judges its certificate;
     * the broker's alert comes with the first reply. */
    refused(tls, "TLSError", "certificate required");
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("other-client.pem"), cert("other-client.key"),
                          0) == MPB_OK);
    refused(tls, "TLSError", "unknown ca");
    /* Signed by the right CA, but expired. */
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("expired.pem"), cert("expired.key"), 0) == MPB_OK);
    refused(tls, "TLSError", "certificate expired");
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* Raw TCP to the TLS port: send what, then expect the broker to close within ms. */
static void stall(const char *tls, const void *what, size_t n, int ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(tls, ':') + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    if (n) ck_assert(tb_write_all(fd, what, n) == 0);
    ck_assert_msg(tb_wait_closed(fd, ms) == 1, "not closed within %d ms", ms);
    close(fd);
}

START_TEST(stalled_handshake_is_dropped)
{
    tb_broker t;
    char tls[64];
    others o;
    /* Not less: a loaded ASan broker took over 0.5 s to finish a good client's. */
    const char *extra[] = {"--tls-ca", cert("ca.pem"), "--auth-timeout", "3", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("client.pem"), cert("client.key"), 0) == MPB_OK);
    others_open(&o, &t, tls);
    /* The start of a ClientHello record, then nothing; then a silent client. */
    static const unsigned char hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01};
    stall(tls, hello, sizeof hello, 15000);
    stall(tls, NULL, 0, 15000);
    others_check_close(&o); /* served meanwhile, and not dropped by the deadline */
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* A plain client on the TLS port of a broker that requires certificates is a stranger:
 * it may neither outlive the handshake deadline nor make the broker buffer a large
 * first message (it was served as a keyless client: --max-message bytes, no limit in
 * time). */
START_TEST(plain_client_on_the_tls_port_is_still_a_stranger)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--tls-ca", cert("ca.pem"), "--auth-timeout", "3", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("client.pem"), cert("client.key"), 0) == MPB_OK);
    others_open(&o, &t, tls);
    /* The start of a request, then nothing: closed at the deadline. */
    static const unsigned char start[] = {0x94, 0x00};
    stall(tls, start, sizeof start, 15000);
    /* A request announcing a 15 MiB string: refused at once, with the reason. */
    static const unsigned char big[] = {0x94, 0x00, 0x07, 0xdb, 0x00, 0xf0, 0x00, 0x00};
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(tls, ':') + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    ck_assert(tb_write_all(fd, big, sizeof big) == 0);
    mpb_value r;
    ck_assert_msg(tb_read_msg(fd, &r, 5000) == 0, "no reply"); /* the deadline sends none */
    ck_assert(r.type == MPB_ARRAY && r.v.a->len == 4 && r.v.a->items[2].type == MPB_ARRAY);
    const mpb_value *why = &r.v.a->items[2].v.a->items[1];
    ck_assert_msg(why->type == MPB_STR && strstr(why->v.s, "speaks TLS"), "%s", why->v.s);
    mpb_value_free(&r);
    ck_assert(tb_wait_closed(fd, 5000) == 1);
    close(fd);
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* A raw TCP connection to the TLS port of the broker at tls ("tls://HOST:PORT"). */
static int raw_connect(const char *tls)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(tls, ':') + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    return fd;
}

/* Keyless with --tls-ca: a connection in its TLS handshake is a stranger, as one still
 * authenticating is on a keyed broker. Strangers that fill --max-clients must give way
 * to a client with a certificate (they kept it out for --auth-timeout, and it read the
 * plain TooManyClients reply as "wrong version number"); past
 * --max-handshakes-per-peer the oldest of them goes. */
START_TEST(tls_strangers_give_way_to_a_client_with_a_certificate)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--tls-ca", cert("ca.pem"), "--auth-timeout", "30",
                           "--max-clients", "4", "--max-handshakes-per-peer", "2", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), cert("client.pem"), cert("client.key"), 0) == MPB_OK);
    others_open(&o, &t, tls); /* two of the four */
    int a = raw_connect(tls), b = raw_connect(tls); /* silent: the broker is full */
    usleep(200000);
    mpb_context *c = mpb_connect(tls); /* the oldest stranger (a) gives way */
    works(c);
    ck_assert_msg(tb_wait_closed(a, 5000) == 1, "the oldest stranger was not closed");
    mpb_free(c);
    /* Per peer: b, then two more from 127.0.0.1; the third makes b go. */
    int d = raw_connect(tls);
    usleep(200000);
    int e = raw_connect(tls);
    ck_assert_msg(tb_wait_closed(b, 5000) == 1, "past --max-handshakes-per-peer: kept");
    close(a);
    close(b);
    close(d);
    close(e);
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* Keyed: a TLS client evicted while authenticating reads why inside TLS (plain bytes
 * written into its TLS stream read as a broken record). */
START_TEST(evicted_tls_client_reads_why)
{
    tb_broker t;
    char tls[64], keyfile[300];
    snprintf(keyfile, sizeof keyfile, "%s/authkey3", certs);
    FILE *f = fopen(keyfile, "w");
    ck_assert(f != NULL);
    fputs("a tls test key of enough bytes", f);
    fclose(f);
    chmod(keyfile, 0600);
    const char *extra[] = {"--authkey-file", keyfile, "--max-handshakes", "1", NULL};
    setenv("MPBROKER_AUTHKEY_FILE", keyfile, 1); /* for tb_start's ping */
    start_tls(&t, tls, sizeof tls, "server", extra);
    int fd = raw_connect(tls);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    ck_assert(SSL_CTX_load_verify_locations(ctx, cert("ca.pem"), NULL) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    ck_assert(SSL_connect(ssl) == 1);
    usleep(200000);
    int other = raw_connect(tls); /* past --max-handshakes 1: the TLS client goes */
    char buf[512];
    int n = SSL_read(ssl, buf, sizeof buf);
    ck_assert_msg(n > 0, "SSL_read: %d (error %d)", n, SSL_get_error(ssl, n));
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    ck_assert(msgpack_unpack_next(&up, buf, (size_t)n, NULL) == MSGPACK_UNPACK_SUCCESS);
    ck_assert(up.data.type == MSGPACK_OBJECT_ARRAY && up.data.via.array.size == 4);
    const msgpack_object *err = &up.data.via.array.ptr[2];
    ck_assert(err->type == MSGPACK_OBJECT_ARRAY && err->via.array.size == 2);
    const msgpack_object_str *kind = &err->via.array.ptr[0].via.str;
    ck_assert_msg(kind->size == 14 && memcmp(kind->ptr, "TooManyClients", 14) == 0, "%.*s",
                  (int)kind->size, kind->ptr);
    msgpack_unpacked_destroy(&up);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    close(other);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- Protected mode, options ---*/

START_TEST(keyless_certless_tls_is_refused)
{
    char out[4096], listen[64];
    snprintf(listen, sizeof listen, "tls://0.0.0.0:%d", free_port());
    const char *args[] = {"--socket", "none", "--tls-listen", listen, "--tls-cert",
                          cert("server.pem"), "--tls-key", cert("server.key"), "--insecure", NULL};
    ck_assert_int_eq(tb_run_server(args, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "refusing to listen on") && strstr(out, "--tls-ca"), "%s", out);
    snprintf(listen, sizeof listen, "tls://127.0.0.1:%d", free_port());
    const char *loop[] = {"--socket", "none", "--tls-listen", listen, "--tls-cert",
                          cert("server.pem"), "--tls-key", cert("server.key"), NULL};
    ck_assert_int_eq(tb_run_server(loop, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "--insecure"), "%s", out);
}
END_TEST

START_TEST(bad_tls_options_are_refused_at_start)
{
    char out[4096], listen[64];
    snprintf(listen, sizeof listen, "tls://127.0.0.1:%d", free_port());
    const char *nokey[] = {"--socket", "none", "--tls-listen", listen, "--tls-cert",
                           cert("server.pem"), "--insecure", NULL};
    ck_assert_int_eq(tb_run_server(nokey, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "needs --tls-cert and --tls-key"), "%s", out);
    const char *mismatch[] = {"--socket", "none", "--tls-listen", listen, "--tls-cert",
                              cert("server.pem"), "--tls-key", cert("client.key"),
                              "--insecure", NULL};
    ck_assert_int_eq(tb_run_server(mismatch, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "--tls-key") && strstr(out, "mismatch"), "%s", out);
    const char *nolisten[] = {"--socket", "none", "--tls-cert", cert("server.pem"), NULL};
    ck_assert_int_eq(tb_run_server(nolisten, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "need --tls-listen"), "%s", out);
}
END_TEST

/*--- SIGHUP ---*/

static void copy_file(const char *from, const char *to)
{
    char cmd[800];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    ck_assert(system(cmd) == 0);
}

START_TEST(sighup_reloads_the_certificate_and_keeps_connections)
{
    tb_broker t;
    char crt[320], key[320], listen[64];
    /* The broker's files are copies that the test replaces, as a renewal would. */
    snprintf(crt, sizeof crt, "%s/live-%d.pem", certs, (int)getpid());
    snprintf(key, sizeof key, "%s/live-%d.key", certs, (int)getpid());
    copy_file(cert("server.pem"), crt);
    copy_file(cert("server.key"), key);
    snprintf(listen, sizeof listen, "tls://127.0.0.1:%d", free_port());
    const char *args[] = {"--tls-listen", listen, "--tls-cert", crt, "--tls-key", key,
                          "--insecure", NULL};
    tb_start(&t, 0, args);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *old = mpb_connect(listen);
    works(old);

    /* A certificate of the other CA: after SIGHUP, new clients see it. */
    copy_file(cert("other-server.pem"), crt);
    copy_file(cert("other-server.key"), key);
    ck_assert(kill(t.pid, SIGHUP) == 0);
    usleep(300000);
    refused(listen, "TLSError", "the broker's certificate");
    ck_assert(mpb_set_tls(cert("other-ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *fresh = mpb_connect(listen);
    works(fresh);
    works(old); /* the connection from before the reload goes on */

    /* A broken file: the reload fails, the current certificate stays. */
    copy_file(cert("ca.srl"), crt);
    ck_assert(kill(t.pid, SIGHUP) == 0);
    usleep(300000);
    mpb_context *again = mpb_connect(listen);
    works(again);
    works(old);
    works(fresh);
    mpb_free(old);
    mpb_free(fresh);
    mpb_free(again);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- Faults over TLS ---*/

/* A TLS client that sends and never reads: closed at --max-output, others served. */
START_TEST(client_that_never_reads_is_closed)
{
    tb_broker t;
    char tls[64];
    others o;
    const char *extra[] = {"--insecure", "--max-output", "256K", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    others_open(&o, &t, tls);
    static char blob[60000];
    memset(blob, 'y', sizeof blob);
    mpb_value big = mpb_str_borrowed(blob, sizeof blob);
    mpb_ref l = tb_create(o.tls, "list", NULL);
    ck_assert(mpb_list_append(o.tls, l, &big) == MPB_OK);
    mpb_context *c = mpb_connect(tls);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    int rc = MPB_OK;
    for (int round = 0; round < 200 && rc == MPB_OK; round++) {
        mpb_value arg = mpb_refv(l);
        for (int i = 0; i < 10; i++) mpb_append_call(c, "list.copy", &arg, 1);
        int done;
        rc = mpb_buffer_write(c, &done); /* never a read */
        usleep(10000);
    }
    ck_assert_msg(rc != MPB_OK, "the broker kept a client that never reads");
    mpb_free(c);
    others_check_close(&o);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* A TLS client killed while it holds a lock: the lock is freed, the broker unharmed. */
START_TEST(killed_client_releases_its_lock)
{
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *c = mpb_connect(tls);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    mpb_ref lock;
    mpb_value none = mpb_nil();
    ck_assert(mpb_open(c, "lock", "L", &none, &lock) == MPB_OK);
    int pipefd[2];
    ck_assert(pipe(pipefd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        mpb_context *k = mpb_connect(tls);
        mpb_ref kl;
        int got = 0;
        if (k->err == MPB_OK && mpb_open(k, "lock", "L", &none, &kl) == MPB_OK &&
            mpb_lock_acquire(k, kl, -1, &got) == MPB_OK && got)
            (void)!write(pipefd[1], "x", 1);
        /* A request queued, never sent; then wait to be killed. */
        mpb_value arg[2] = {mpb_refv(kl), mpb_str("half")};
        mpb_append_call(k, "list.append", arg, 2);
        pause();
        _exit(0);
    }
    char b;
    ck_assert(read(pipefd[0], &b, 1) == 1);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    int got = 0;
    ck_assert_msg(mpb_lock_acquire(c, lock, 10.0, &got) == MPB_OK && got, "%s", c->errstr);
    works(c);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* A client writing to a broker that died gets an error, not SIGPIPE: OpenSSL's own
 * socket BIO writes with write(), which would raise it (the plain path sends with
 * MSG_NOSIGNAL). SIGPIPE's default action is restored first: it would kill the test. */
START_TEST(write_to_a_dead_broker_is_an_error_not_sigpipe)
{
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--insecure", NULL};
    signal(SIGPIPE, SIG_DFL);
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *c = mpb_connect(tls);
    works(c);
    kill(t.pid, SIGKILL);
    waitpid(t.pid, NULL, 0);
    t.pid = -1;
    /* Several MiB: the first bytes reach the closed port, its RST makes the next
     * write fail with EPIPE. */
    size_t n = 8u << 20;
    char *blob = malloc(n);
    ck_assert(blob != NULL);
    memset(blob, 'p', n);
    mpb_value v = mpb_str_borrowed(blob, n);
    for (int i = 0; i < 3; i++) {
        ck_assert(mpb_append_call(c, "list.append", &v, 1) == MPB_OK);
        int done;
        if (mpb_buffer_write(c, &done) != MPB_OK) break;
        usleep(100000);
    }
    ck_assert_int_ne(mpb_ping(c), MPB_OK);
    free(blob);
    mpb_free(c);
    tb_stop(&t);
}
END_TEST

/* Many TLS connections at once (each a handshake and an SSL object in the broker). */
START_TEST(many_tls_connections)
{
    enum { N = 200 };
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    static mpb_context *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = mpb_connect(tls);
        ck_assert_msg(cs[i]->err == MPB_OK, "connection %d: %s", i, cs[i]->errstr);
    }
    for (int i = 0; i < N; i++) ck_assert_msg(mpb_ping(cs[i]) == MPB_OK, "%s", cs[i]->errstr);
    for (int i = 0; i < N; i += 2) mpb_free(cs[i]); /* half go, the rest stay served */
    for (int i = 1; i < N; i += 2) {
        works(cs[i]);
        mpb_free(cs[i]);
    }
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- The async API over TLS ---*/

struct async_run {
    int replies, errors, inflight;
    mpb_ref list;
    struct event_base *base;
};

static void async_done(mpb_async_context *ac, mpb_reply *r, void *priv)
{
    (void)ac;
    struct async_run *run = priv;
    if (r->err != MPB_OK) run->errors++;
    else run->replies++;
    if (--run->inflight == 0) event_base_loopbreak(run->base);
}

/* 2000 pipelined appends of 3 KB through one libevent loop: replies span records, and
 * bytes OpenSSL decrypted must not wait for an epoll event that never comes. */
START_TEST(async_calls_over_tls)
{
    tb_broker t;
    char tls[64];
    const char *extra[] = {"--insecure", NULL};
    start_tls(&t, tls, sizeof tls, "server", extra);
    ck_assert(mpb_set_tls(cert("ca.pem"), NULL, NULL, 0) == MPB_OK);
    mpb_context *c = mpb_connect(tls);
    works(c);
    struct async_run run = {.base = event_base_new()};
    run.list = tb_create(c, "list", NULL);
    mpb_async_context *ac = mpb_async_connect(run.base, tls);
    ck_assert_msg(ac != NULL && ac->err == MPB_OK, "%s", ac ? ac->errstr : "NULL");
    static char blob[3000];
    memset(blob, 'z', sizeof blob);
    for (int i = 0; i < 2000; i++) {
        mpb_value args[2] = {mpb_refv(run.list), mpb_str_borrowed(blob, sizeof blob)};
        ck_assert(mpb_async_call(ac, "list.append", args, 2, async_done, &run) == MPB_OK);
        run.inflight++;
    }
    struct timeval limit = {30, 0};
    event_base_loopexit(run.base, &limit);
    event_base_dispatch(run.base);
    ck_assert_int_eq(run.errors, 0);
    ck_assert_int_eq(run.replies, 2000);
    int64_t len = 0;
    ck_assert(mpb_list_len(c, run.list, &len) == MPB_OK);
    ck_assert_int_eq(len, 2000);
    mpb_async_free(ac);
    event_base_free(run.base);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- Bytes OpenSSL holds that epoll never announces ---*/

/* Before the authkey handshake the broker reads at most 1 KiB at a time. Two
 * messages in one TLS record of more than that leave the rest decrypted inside
 * OpenSSL: no read event would ever come for it, so the broker must look again
 * itself. Both messages get their reply. */
START_TEST(bytes_held_by_openssl_are_served)
{
    tb_broker t;
    char tls[64], keyfile[300];
    const char key[] = "a tls test key of enough bytes";
    snprintf(keyfile, sizeof keyfile, "%s/authkey2", certs);
    FILE *f = fopen(keyfile, "w");
    ck_assert(f != NULL);
    fputs(key, f);
    fclose(f);
    chmod(keyfile, 0600);
    const char *extra[] = {"--authkey-file", keyfile, NULL};
    setenv("MPBROKER_AUTHKEY_FILE", keyfile, 1); /* for tb_start's ping */
    start_tls(&t, tls, sizeof tls, "server", extra);

    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(tls, ':') + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    ck_assert(SSL_CTX_load_verify_locations(ctx, cert("ca.pem"), NULL) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    ck_assert(SSL_connect(ssl) == 1);

    /* [0, 1, "auth.challenge", [bin "{sha256}" + 32 bytes]] and a 1000-byte call. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    unsigned char chal[8 + 32] = "{sha256}";
    memset(chal + 8, 7, 32);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str_with_body(&pk, "auth.challenge", 14);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, chal, sizeof chal);
    static char pad[960];
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_str_with_body(&pk, "manager.ping", 12);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, pad, sizeof pad);
    ck_assert_uint_gt(sb.size, 1024);
    ck_assert(SSL_write(ssl, sb.data, (int)sb.size) == (int)sb.size); /* one record */
    msgpack_sbuffer_destroy(&sb);

    msgpack_unpacker up;
    msgpack_unpacker_init(&up, 4096);
    msgpack_unpacked msg;
    msgpack_unpacked_init(&msg);
    int replies = 0;
    while (replies < 2) {
        msgpack_unpacker_reserve_buffer(&up, 4096);
        int n = SSL_read(ssl, msgpack_unpacker_buffer(&up), 4096);
        if (n <= 0) break; /* closed, or 5 s without a byte */
        msgpack_unpacker_buffer_consumed(&up, (size_t)n);
        while (msgpack_unpacker_next(&up, &msg) == MSGPACK_UNPACK_SUCCESS) replies++;
    }
    msgpack_unpacked_destroy(&msg);
    msgpack_unpacker_destroy(&up);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    ck_assert_int_eq(replies, 2);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

static Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("connect");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, right_ca_works_by_name_and_by_address);
    tcase_add_test(tc, settings_from_the_environment);
    tcase_add_test(tc, big_pipelined_traffic);
    tcase_add_test(tc, authkey_handshake_runs_inside_tls);
    tcase_add_test(tc, async_calls_over_tls);
    tcase_add_test(tc, bytes_held_by_openssl_are_served);
    suite_add_tcase(s, tc);
    tc = tcase_create("refused");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, wrong_ca_is_refused);
    tcase_add_test(tc, expired_certificate_is_refused);
    tcase_add_test(tc, wrong_host_name_is_refused_unless_told);
    tcase_add_test(tc, name_check_skipped_only_by_1_in_the_environment);
    tcase_add_test(tc, plain_client_on_the_tls_port_is_told);
    tcase_add_test(tc, tls_client_on_a_plain_port_is_told);
    tcase_add_test(tc, client_certificate_required_and_checked);
    tcase_add_test(tc, stalled_handshake_is_dropped);
    tcase_add_test(tc, plain_client_on_the_tls_port_is_still_a_stranger);
    tcase_add_test(tc, tls_strangers_give_way_to_a_client_with_a_certificate);
    tcase_add_test(tc, evicted_tls_client_reads_why);
    tcase_add_test(tc, keyless_certless_tls_is_refused);
    tcase_add_test(tc, bad_tls_options_are_refused_at_start);
    suite_add_tcase(s, tc);
    tc = tcase_create("reload");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sighup_reloads_the_certificate_and_keeps_connections);
    suite_add_tcase(s, tc);
    tc = tcase_create("faults");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, client_that_never_reads_is_closed);
    tcase_add_test(tc, killed_client_releases_its_lock);
    tcase_add_test(tc, many_tls_connections);
    tcase_add_test(tc, write_to_a_dead_broker_is_an_error_not_sigpipe);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *script = getenv("MPB_TLS_CERTS");
    if (!script) {
        fprintf(stderr, "MPB_TLS_CERTS is not set\n");
        return EXIT_FAILURE;
    }
    snprintf(certs, sizeof certs, "/tmp/mpbtls.XXXXXX");
    if (!mkdtemp(certs)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sh '%s' '%s'", script, certs);
    if (system(cmd) != 0) {
        fprintf(stderr, "%s failed\n", cmd);
        return EXIT_FAILURE;
    }
    int rc = tb_run(tls_suite());
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", certs);
    (void)!system(cmd);
    return rc;
}
