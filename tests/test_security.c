/* test_security.c - authentication and limits against a real broker.
 *
 * The authkey handshake from both ends (libmpbroker, and raw bytes where a test plays
 * a client, or a broker, that does it wrong), what a connection without the key may
 * cost the broker, every configurable limit (each hit is a clear error and leaves the
 * broker and the other connections as they were), and the graceful stop on SIGTERM.
 * Who may reach the broker (sockets, other users, TCP) is test_exposure.c's.
 */
#include <check.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/sockios.h> /* SIOCOUTQ */
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "mpb_address.h"
#include "mpb_codec.h"
#include "mpb_reader.h"
#include "testutil.h"

#define KEY "correct horse battery staple"

static tb_broker B;
static char keydir[64], keyfile[128];

/* A key file, mode 0600, holding KEY and a newline (as `echo` writes it). */
static void make_keyfile(void)
{
    snprintf(keydir, sizeof keydir, "/tmp/mpbkey.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(keydir));
    snprintf(keyfile, sizeof keyfile, "%s/key", keydir);
    FILE *f = fopen(keyfile, "w");
    ck_assert_ptr_nonnull(f);
    fputs(KEY "\n", f);
    fclose(f);
    ck_assert_int_eq(chmod(keyfile, 0600), 0);
}

static void drop_keyfile(void)
{
    unlink(keyfile);
    rmdir(keydir);
}

/*--- Raw protocol helpers ---*/


/* Read a response; returns it (caller frees). */
static mpb_value read_response(int fd)
{
    mpb_value m;
    ck_assert_msg(tb_read_msg(fd, &m, 5000) == 0, "no response");
    ck_assert_int_eq(m.type, MPB_ARRAY);
    ck_assert_uint_eq(m.v.a->len, 4);
    return m;
}

/* The next response is an error of this kind. */
static void expect_error(int fd, const char *kind)
{
    mpb_value m = read_response(fd);
    mpb_value *err = &m.v.a->items[2];
    ck_assert_int_eq(err->type, MPB_ARRAY);
    ck_assert_str_eq(err->v.a->items[0].v.s, kind);
    mpb_value_free(&m);
}

static void expect_pong(int fd)
{
    tb_send_call(fd, 77, "manager.ping", NULL, 0);
    mpb_value m = read_response(fd);
    ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
    ck_assert_str_eq(m.v.a->items[3].v.s, "pong");
    mpb_value_free(&m);
}

/* "{sha256}" + HMAC-SHA256(KEY, label || a || b) */
static void proof(unsigned char out[40], const char *label, const void *a, size_t alen,
                  const void *b, size_t blen)
{
    unsigned char msg[1024];
    size_t n = strlen(label);
    memcpy(msg, label, n);
    memcpy(msg + n, a, alen);
    memcpy(msg + n + alen, b, blen);
    unsigned int len = 32;
    memcpy(out, "{sha256}", 8);
    HMAC(EVP_sha256(), KEY, (int)strlen(KEY), msg, n + alen + blen, out + 8, &len);
}

/* auth.challenge with C; stores the broker's S (48 bytes: "{sha256}" + 40 random). */
static void raw_challenge(int fd, const unsigned char *C, size_t clen, unsigned char S[48])
{
    mpb_value arg = mpb_bin_borrowed(C, clen);
    tb_send_call(fd, 1, "auth.challenge", &arg, 1);
    mpb_value m = read_response(fd);
    ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
    mpb_value *res = &m.v.a->items[3];
    ck_assert_int_eq(res->type, MPB_BIN);
    ck_assert_uint_eq(res->len, 48);
    ck_assert(memcmp(res->v.s, "{sha256}", 8) == 0);
    memcpy(S, res->v.s, 48);
    mpb_value_free(&m);
}

/* auth.response with the right proof; checks the broker's proof that follows. */
static void raw_respond(int fd, const unsigned char *C, size_t clen, const unsigned char S[48])
{
    unsigned char cp[40], want[40];
    proof(cp, "mpbroker-auth client", S, 48, C, clen);
    mpb_value arg = mpb_bin_borrowed(cp, 40);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    mpb_value m = read_response(fd);
    ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
    mpb_value *res = &m.v.a->items[3];
    ck_assert_int_eq(res->type, MPB_BIN);
    ck_assert_uint_eq(res->len, 40);
    proof(want, "mpbroker-auth server", C, clen, S, 48);
    ck_assert_msg(memcmp(want, res->v.s, 40) == 0, "the broker's proof is wrong");
    mpb_value_free(&m);
}

static const unsigned char CLIENT_C[48] = "{sha256}0123456789abcdef0123456789abcdef01234567";

/*--- Authentication ---*/

/* The broker still serves a client with the key. */
static void expect_pong_keyed(void);

static void auth_setup(void)
{
    make_keyfile();
    const char *args[] = {"--authkey-file", keyfile, NULL};
    unsetenv("MPBROKER_AUTHKEY");
    unsetenv("MPBROKER_AUTHKEY_FILE");
    /* tb_start pings through mpb_connect: it must authenticate to see the broker up. */
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&B, 0, args);
    unsetenv("MPBROKER_AUTHKEY");
}

static void expect_pong_keyed(void)
{
    mpb_context *c = mpb_connect_with_key(B.address, KEY, strlen(KEY));
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
}

static void auth_teardown(void)
{
    setenv("MPBROKER_AUTHKEY", KEY, 1); /* tb_stop needs nothing, but be symmetric */
    ck_assert_int_eq(tb_stop(&B), 0);
    unsetenv("MPBROKER_AUTHKEY");
    drop_keyfile();
}

START_TEST(keyed_client_authenticates_and_works)
{
    mpb_context *c = mpb_connect_with_key(B.address, KEY, strlen(KEY));
    ck_assert_msg(c && c->err == MPB_OK, "%s", c ? c->errstr : "oom");
    mpb_ref l;
    mpb_value v = mpb_int(7);
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    TB_EXPECT(c, "[7]", "list.copy", mpb_refv(l));
    TB_EXPECT_ERR(c, "AuthError", "auth.challenge", mpb_bin(CLIENT_C, 48)); /* done already */
    mpb_free(c);
}
END_TEST

START_TEST(key_from_environment_or_file)
{
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    mpb_context *c = mpb_connect(B.address);
    ck_assert_msg(c && c->err == MPB_OK, "env key: %s", c ? c->errstr : "oom");
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    unsetenv("MPBROKER_AUTHKEY");
    setenv("MPBROKER_AUTHKEY_FILE", keyfile, 1);
    c = mpb_connect(B.address);
    ck_assert_msg(c && c->err == MPB_OK, "key file: %s", c ? c->errstr : "oom");
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    unsetenv("MPBROKER_AUTHKEY_FILE");
}
END_TEST

START_TEST(wrong_key_is_auth_error_and_nothing_else_goes_through)
{
    mpb_context *c = mpb_connect_with_key(B.address, "guess", 5);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
    ck_assert_str_eq(c->errkind, "AuthError");
    ck_assert_int_ne(mpb_ping(c), MPB_OK);
    mpb_free(c);
    /* No key at all: the first call is refused and the connection closed. */
    c = mpb_connect(B.address);
    ck_assert_int_eq(c->err, MPB_OK); /* connecting needs no key */
    ck_assert_int_ne(mpb_ping(c), MPB_OK);
    ck_assert_str_eq(c->errkind, "AuthError");
    ck_assert_int_ne(mpb_ping(c), MPB_OK); /* and it stays closed */
    mpb_free(c);
}
END_TEST

START_TEST(any_method_before_the_handshake_is_auth_error_then_closed)
{
    const char *methods[] = {"manager.ping", "manager.objects", "list.append", "no.such", NULL};
    for (int i = 0; methods[i]; i++) {
        int fd = tb_raw_connect(&B);
        tb_send_call(fd, 5, methods[i], NULL, 0);
        expect_error(fd, "AuthError");
        ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
        close(fd);
    }
    /* A notification gets no reply but closes the connection all the same. */
    int fd = tb_raw_connect(&B);
    tb_write_all(fd, "\x93\x02\xacmanager.ping\x90", 16);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
}
END_TEST

START_TEST(raw_handshake_as_documented)
{
    int fd = tb_raw_connect(&B);
    unsigned char S[48];
    raw_challenge(fd, CLIENT_C, sizeof CLIENT_C, S);
    raw_respond(fd, CLIENT_C, sizeof CLIENT_C, S);
    expect_pong(fd);
    close(fd);
}
END_TEST

START_TEST(bad_responses_are_refused_and_closed)
{
    unsigned char S[48], cp[40];
    /* A wrong proof. */
    int fd = tb_raw_connect(&B);
    raw_challenge(fd, CLIENT_C, sizeof CLIENT_C, S);
    proof(cp, "mpbroker-auth client", S, 48, CLIENT_C, sizeof CLIENT_C);
    cp[20] ^= 1;
    mpb_value arg = mpb_bin_borrowed(cp, 40);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    expect_error(fd, "AuthError");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    /* Reflection: the proof the broker would give, sent as ours. */
    fd = tb_raw_connect(&B);
    raw_challenge(fd, CLIENT_C, sizeof CLIENT_C, S);
    proof(cp, "mpbroker-auth server", CLIENT_C, sizeof CLIENT_C, S, 48);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    expect_error(fd, "AuthError");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    /* A response without a challenge; a challenge too short. */
    fd = tb_raw_connect(&B);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    expect_error(fd, "AuthError");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    fd = tb_raw_connect(&B);
    arg = mpb_bin_borrowed(CLIENT_C, 20);
    tb_send_call(fd, 1, "auth.challenge", &arg, 1);
    expect_error(fd, "AuthError");
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
}
END_TEST

/* Every byte a stranger gets from a broker keyed with key: a challenge, then a wrong
 * proof, until the broker closes. n gets the count; S's offset in it goes to *s_at. */
static size_t stranger_transcript(const char *key, unsigned char *out, size_t cap, size_t *s_at)
{
    tb_broker t;
    setenv("MPBROKER_AUTHKEY", key, 1);
    const char *args[] = {"--quiet", NULL};
    tb_start(&t, 0, args);
    unsetenv("MPBROKER_AUTHKEY");
    int fd = tb_raw_connect(&t);
    mpb_value arg = mpb_bin_borrowed(CLIENT_C, sizeof CLIENT_C);
    tb_send_call(fd, 1, "auth.challenge", &arg, 1);
    size_t n = 0;
    /* The challenge's reply: [1, 1, nil, bin8 48 S] is 4 + 2 + 48 bytes. */
    while (n < 54) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        ck_assert_int_eq(poll(&pf, 1, 5000), 1);
        ssize_t got = read(fd, out + n, cap - n);
        ck_assert_int_gt(got, 0);
        n += (size_t)got;
    }
    ck_assert_uint_eq(n, 54);
    *s_at = 6;
    unsigned char cp[40];
    memset(cp, 0, sizeof cp);
    memcpy(cp, "{sha256}", 8);
    arg = mpb_bin_borrowed(cp, 40);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    for (ssize_t got; (got = read(fd, out + n, cap - n)) > 0;) n += (size_t)got;
    close(fd);
    ck_assert_int_eq(tb_stop(&t), 0);
    return n;
}

START_TEST(a_stranger_learns_nothing_that_depends_on_the_key)
{
    /* Two brokers with different keys, the same stranger's bytes: what comes back
     * must be the same, but for the 40 random bytes of S. (The old order sent the
     * broker's proof, an HMAC of the key, in reply to the first request.) */
    unsigned char a[4096], b[4096];
    size_t sa, sb;
    size_t na = stranger_transcript(KEY, a, sizeof a, &sa);
    size_t nb = stranger_transcript("another key, just as long!!!", b, sizeof b, &sb);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_gt(na, 54); /* the AuthError came too */
    ck_assert(memcmp(a, b, sa + 8) == 0);                     /* up to S's random bytes */
    ck_assert(memcmp(a + sa + 48, b + sb + 48, na - sa - 48) == 0); /* everything after */
    ck_assert(memcmp(a + sa + 8, b + sb + 8, 40) != 0);        /* S is random */
}
END_TEST

START_TEST(unauthenticated_requests_are_small)
{
    int fd = tb_raw_connect(&B);
    char big[4000];
    memset(big, 'x', sizeof big);
    mpb_value arg = mpb_bin_borrowed(big, sizeof big);
    tb_send_call(fd, 1, "auth.challenge", &arg, 1);
    mpb_value m;
    ck_assert_int_eq(tb_read_msg(fd, &m, 5000), 0);
    ck_assert_str_eq(m.v.a->items[2].v.a->items[0].v.s, "TooLarge");
    mpb_value_free(&m);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
}
END_TEST

/* A monitor's next event; its repr (free it). NULL when none came within ms. */
static char *next_event(mpb_context *mon, int ms)
{
    char method[64];
    mpb_value params;
    int got = 0;
    ck_assert_int_eq(mpb_get_notification(mon, ms, method, sizeof method, &params, &got), MPB_OK);
    if (!got) return NULL;
    ck_assert_str_eq(method, "monitor");
    char *s = tb_repr(&params);
    mpb_value_free(&params);
    return s;
}

START_TEST(monitors_see_nothing_before_authentication)
{
    mpb_context *mon = mpb_connect_with_key(B.address, KEY, strlen(KEY));
    ck_assert_int_eq(mon->err, MPB_OK);
    ck_assert_int_eq(mpb_call(mon, "manager.monitor", NULL, 0, NULL), MPB_OK);
    /* Strangers: a challenge, a forged proof, a forged request. */
    int fd = tb_raw_connect(&B);
    unsigned char S[48];
    raw_challenge(fd, CLIENT_C, sizeof CLIENT_C, S);
    mpb_value arg = mpb_bin_borrowed("{sha256}forged: 1 [9 unix:pid=1] manager.delete('x')....", 40);
    tb_send_call(fd, 2, "auth.response", &arg, 1);
    expect_error(fd, "AuthError");
    close(fd);
    fd = tb_raw_connect(&B);
    arg = mpb_str_borrowed("forged", 6);
    tb_send_call(fd, 1, "manager.ping", &arg, 1);
    expect_error(fd, "AuthError");
    close(fd);
    /* A keyed client: its handshake is not shown, its first call is. */
    mpb_context *c = mpb_connect_with_key(B.address, KEY, strlen(KEY));
    ck_assert_int_eq(c->err, MPB_OK);
    mpb_value marker = mpb_str("marker");
    ck_assert_int_eq(mpb_call(c, "manager.ping", &marker, 1, NULL), MPB_OK);
    mpb_value_free(&marker);
    char *ev = next_event(mon, 5000);
    ck_assert_ptr_nonnull(ev);
    ck_assert_msg(strstr(ev, "'method': 'manager.ping', 'params': ['marker']") != NULL, "%s", ev);
    free(ev);
    ck_assert_ptr_null(next_event(mon, 200));
    mpb_free(c);
    mpb_free(mon);
}
END_TEST

/* Reply [1, msgid, nil, BIN] on fd. */
static void send_bin_reply(int fd, uint64_t msgid, const void *p, size_t n)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint64(&pk, msgid);
    msgpack_pack_nil(&pk);
    msgpack_pack_bin_with_body(&pk, p, n);
    tb_write_all(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* An impostor on path that does not know the key but plays the handshake: it sends a
 * challenge, then as its "proof" either the client's own proof (reflect) or random
 * bytes. Serves one connection; returns its pid. */
static pid_t fake_broker(const char *path, bool reflect)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(l, 4), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid > 0) {
        close(l);
        return pid;
    }
    int fd = accept(l, NULL, NULL);
    mpb_value m;
    if (fd < 0 || tb_read_msg(fd, &m, 5000) < 0) _exit(1);
    mpb_value_free(&m);
    send_bin_reply(fd, 1, CLIENT_C, 48); /* any 48 bytes starting {sha256} */
    if (tb_read_msg(fd, &m, 5000) < 0) _exit(1);
    unsigned char sp[40];
    memcpy(sp, m.v.a->items[3].v.a->items[0].v.s, 40);
    if (!reflect) memset(sp + 8, 0x5a, 32);
    mpb_value_free(&m);
    send_bin_reply(fd, 2, sp, 40);
    tb_wait_closed(fd, 5000);
    _exit(0);
}

START_TEST(a_broker_that_cannot_prove_the_key_is_refused)
{
    for (int reflect = 0; reflect < 2; reflect++) {
        char dir[] = "/tmp/mpbfake.XXXXXX", path[64];
        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/s", dir);
        pid_t pid = fake_broker(path, reflect);
        mpb_context *c = mpb_connect_with_key(path, KEY, strlen(KEY));
        ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
        ck_assert_str_eq(c->errkind, "AuthError");
        ck_assert_msg(strstr(c->errstr, "could not prove") != NULL, "%s", c->errstr);
        ck_assert_int_ne(mpb_ping(c), MPB_OK); /* and nothing else was sent */
        mpb_free(c);
        int st;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert_int_eq(WEXITSTATUS(st), 0);
        unlink(path);
        rmdir(dir);
    }
}
END_TEST

START_TEST(broker_without_key_does_not_fool_a_keyed_client)
{
    tb_broker nokey;
    tb_start(&nokey, 0, NULL);
    mpb_context *c = mpb_connect_with_key(nokey.address, KEY, strlen(KEY));
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
    ck_assert_str_eq(c->errkind, "AuthError");
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&nokey), 0);
}
END_TEST

START_TEST(connection_that_never_authenticates_is_closed)
{
    tb_broker t;
    const char *args[] = {"--authkey-file", keyfile, "--auth-timeout", "0.5", NULL};
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&t, 0, args);
    mpb_context *c = mpb_connect(t.address); /* authenticated: the timeout is not for it */
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_int_eq(c->err, MPB_OK);
    int idle = tb_raw_connect(&t), halfway = tb_raw_connect(&t);
    unsigned char S[48];
    raw_challenge(halfway, CLIENT_C, sizeof CLIENT_C, S); /* and then nothing */
    ck_assert_int_eq(tb_wait_closed(idle, 5000), 1);
    ck_assert_int_eq(tb_wait_closed(halfway, 5000), 1);
    close(idle);
    close(halfway);
    usleep(200000);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(strangers_cannot_make_a_quiet_broker_write_to_its_log)
{
    /* Before, with --auth-timeout 0 the never-armed timer was deleted all the same when
     * a connection closed unauthenticated, and libevent wrote "[warn] event_del_: event
     * has no event_base set." each time: a line per stranger, --quiet or not. */
    char dir[] = "/tmp/mpbquiet.XXXXXX", sock[64], log[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/s.sock", dir);
    snprintf(log, sizeof log, "%s/stderr", dir);
    const char *argv[] = {getenv("MPB_SERVER"), "--quiet", "--socket", sock, "--authkey-file",
                          keyfile, "--auth-timeout", "0", NULL};
    pid_t pid = tb_spawn(argv, -1, NULL, log);
    mpb_context *c = NULL;
    for (int i = 0; i < 1000; i++) {
        c = mpb_connect_with_key(sock, KEY, strlen(KEY));
        if (c->err == MPB_OK) break;
        mpb_free(c);
        c = NULL;
        usleep(10000);
    }
    ck_assert_ptr_nonnull(c);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock);
    for (int i = 0; i < 3; i++) { /* connect, then go without a word */
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
        close(fd);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0); /* send garbage, and be closed */
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    ck_assert_int_eq(tb_write_all(fd, "\xc0", 1), 0);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
    ck_assert_int_eq(mpb_ping(c), MPB_OK); /* all of them served by now */
    mpb_free(c);
    int st;
    kill(pid, SIGTERM);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    char out[1024] = "";
    FILE *f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    fclose(f);
    ck_assert_msg(n == 0, "a --quiet broker wrote: %s", out);
    unlink(log);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(a_short_key_is_warned_about_at_start)
{
    /* --socket none and nothing else: the broker reads its key, then exits 2
     * ("nothing to listen on"), which is all this needs. */
    char err[1024];
    const char *args[] = {"--socket", "none", NULL};
    setenv("MPBROKER_AUTHKEY", "sunshine42", 1);
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "warning: the authkey from $MPBROKER_AUTHKEY is only 10 bytes"),
                  "stderr: %s", err);
    setenv("MPBROKER_AUTHKEY", "sixteen bytes ok", 1);
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "warning") == NULL, "stderr: %s", err);
    unsetenv("MPBROKER_AUTHKEY");
}
END_TEST

START_TEST(a_key_file_others_can_read_or_change_is_refused)
{
    /* A key file is a secret only if nobody else can read it (mode) or rewrite it
     * (owner): each broker start with such a file fails, naming the reason. */
    char dir[] = "/tmp/mpb-keyfile-XXXXXX", path[128], err[1024];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/key", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("a key of twenty-four bytes\n", f);
    fclose(f);
    const char *args[] = {"--socket", "none", "--authkey-file", path, NULL};
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_int_eq(chmod(path, 0640), 0);
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "accessible by group or others (mode 640)"), "stderr: %s", err);
    ck_assert_int_eq(chmod(path, 0600), 0); /* the good case: read, then "nothing to listen on" */
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "authkey") == NULL, "stderr: %s", err);
    if (geteuid() == 0) { /* only root can give a file away */
        ck_assert_int_eq(chown(path, 65534, 65534), 0);
        ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
        ck_assert_msg(strstr(err, "is owned by uid 65534"), "stderr: %s", err);
    }
    unlink(path);
    rmdir(dir);
}
END_TEST

/*--- Before authentication ---*/

/* Pack one message into sb (cleared first) from a packing function. */
typedef void (*packfn)(msgpack_packer *pk);
static void pk_req(msgpack_packer *pk, const char *m, int nparams, bool params_array)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_str_with_body(pk, m, strlen(m));
    if (params_array) msgpack_pack_array(pk, (size_t)nparams);
    for (int i = 0; i < nparams; i++) msgpack_pack_bin_with_body(pk, CLIENT_C, sizeof CLIENT_C);
}
static void bad_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void bad_str(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "hello", 5); }
static void bad_empty(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }
static void bad_no_args(msgpack_packer *pk) { pk_req(pk, "auth.challenge", 0, true); }
static void bad_two_args(msgpack_packer *pk) { pk_req(pk, "auth.challenge", 2, true); }
static void bad_params(msgpack_packer *pk) { pk_req(pk, "auth.challenge", 1, false); }
static void bad_other(msgpack_packer *pk) { pk_req(pk, "manager.ping", 0, true); }
static void bad_method(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 7);
    msgpack_pack_array(pk, 0);
}
static void bad_notify(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, 2);
    msgpack_pack_str_with_body(pk, "auth.challenge", 14);
    msgpack_pack_array(pk, 1);
    msgpack_pack_bin_with_body(pk, CLIENT_C, sizeof CLIENT_C);
}
static void bad_response(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_nil(pk);
    msgpack_pack_nil(pk);
}
static void bad_deep(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 0);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_str_with_body(pk, "auth.challenge", 14);
    for (int i = 0; i < 40; i++) msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
}

/* Everything the broker sends on fd until it closes (at most cap bytes are kept);
 * -1 if it does not close within 5 s. */
static ssize_t read_until_closed(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    char scratch[65536];
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) != 1) return -1;
        ssize_t got = read(fd, scratch, sizeof scratch);
        if (got == 0 || (got < 0 && errno == ECONNRESET)) return (ssize_t)n;
        if (got < 0) return -1;
        if (n < cap) memcpy(buf + n, scratch, (size_t)got < cap - n ? (size_t)got : cap - n);
        n += (size_t)got;
    }
}

START_TEST(anything_but_the_handshake_gets_one_reply_then_closes)
{
    /* Each, followed by 100 KB of nils (each a whole message): at most one small
     * reply, then the connection is closed. (Before: a nil, a bad shape or a wrong
     * argument count got an error each and the connection stayed, so 100 KB of 0xc0
     * earned megabytes of replies.) */
    static const struct { const char *what; packfn f; bool replies; } cases[] = {
        {"a bare nil", bad_nil, true},          {"a bare str", bad_str, true},
        {"an empty array", bad_empty, true},    {"no argument", bad_no_args, true},
        {"two arguments", bad_two_args, true},  {"params not an array", bad_params, true},
        {"another method", bad_other, true},    {"a method not a string", bad_method, true},
        {"a notification", bad_notify, false},  {"a response", bad_response, false},
        {"nested too deep", bad_deep, true},
    };
    char *nils = malloc(100000);
    memset(nils, 0xc0, 100000);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int fd = tb_raw_connect(&B);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        cases[i].f(&pk);
        ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
        msgpack_sbuffer_destroy(&sb);
        (void)!tb_write_all(fd, nils, 100000); /* the broker may have closed already */
        char got[1024];
        ssize_t n = read_until_closed(fd, got, sizeof got);
        ck_assert_msg(n >= 0, "%s: the connection stayed open", cases[i].what);
        ck_assert_msg(n <= 300, "%s: %zd bytes of replies", cases[i].what, n);
        if (cases[i].replies) {
            mpb_reader r;
            msgpack_object o;
            ck_assert_int_eq(mpb_reader_init(&r, 0, MPB_READER_MAX_DEPTH), 0);
            ck_assert_int_eq(mpb_reader_feed(&r, got, (size_t)n), 0);
            ck_assert_msg(mpb_reader_next(&r, &o) == MPB_READ_MSG, "%s: no reply", cases[i].what);
            ck_assert_msg(mpb_reader_next(&r, &o) == MPB_READ_NEED, "%s: more than one reply",
                          cases[i].what);
            mpb_reader_destroy(&r);
        } else {
            ck_assert_msg(n == 0, "%s: %zd bytes of replies", cases[i].what, n);
        }
        close(fd);
    }
    free(nils);
    expect_pong_keyed();
}
END_TEST

/* Peak resident memory of process pid, in KiB (VmHWM). */
static long peak_rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

START_TEST(strangers_flooding_bytes_cost_the_broker_little)
{
    /* 100 connections each pour up to 256 KiB of nils and read nothing. The broker
     * reads at most 1 KiB of each, answers once and closes: its peak memory grows by
     * a few tens of KiB per connection. (Before: each got up to 4 MiB of unread
     * replies buffered, about 400 MB in all.) */
    enum { N = 100 };
    int fds[N];
    char *nils = malloc(256 << 10);
    memset(nils, 0xc0, 256 << 10);
    long before = peak_rss_kib(B.pid);
    for (int i = 0; i < N; i++) {
        fds[i] = tb_raw_connect(&B);
        int fl = 1;
        ck_assert_int_eq(ioctl(fds[i], FIONBIO, &fl), 0);
        size_t off = 0;
        ssize_t w;
        while (off < (256u << 10) &&
               (w = send(fds[i], nils + off, (256u << 10) - off, MSG_NOSIGNAL)) > 0)
            off += (size_t)w;
    }
    for (int i = 0; i < N; i++) {
        int fl = 0;
        ioctl(fds[i], FIONBIO, &fl);
        char got[512];
        ck_assert_msg(read_until_closed(fds[i], got, sizeof got) >= 0, "connection %d open", i);
        close(fds[i]);
    }
    long after = peak_rss_kib(B.pid);
    ck_assert_msg(after - before < N * 64, "peak RSS grew by %ld KiB for %d strangers",
                  after - before, N);
    free(nils);
    expect_pong_keyed();
}
END_TEST

/*--- Room for clients with the key ---*/

/* A raw TCP connection to t from the loopback address src (127.x.y.z: each is
 * another peer to the broker). */
static int tcp_from(const tb_broker *t, const char *src)
{
    const char *colon = strrchr(t->address, ':');
    struct sockaddr_in from = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
    to.sin_port = htons((uint16_t)atoi(colon + 1));
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    inet_pton(AF_INET, src, &from.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&from, sizeof from), 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
    return fd;
}

/* fd gets TooManyClients naming cap, then is closed. */
static void expect_refused(int fd, const char *cap)
{
    mpb_value m;
    ck_assert_int_eq(tb_read_msg(fd, &m, 5000), 0);
    ck_assert_str_eq(m.v.a->items[2].v.a->items[0].v.s, "TooManyClients");
    ck_assert_msg(strstr(m.v.a->items[2].v.a->items[1].v.s, cap) != NULL, "%s",
                  m.v.a->items[2].v.a->items[1].v.s);
    mpb_value_free(&m);
    ck_assert_int_eq(tb_wait_closed(fd, 5000), 1);
    close(fd);
}

/* fd is still open, and the broker has sent nothing on it (in 200 ms). */
static bool still_waiting(int fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    return poll(&pf, 1, 200) == 0;
}

START_TEST(strangers_cannot_lock_out_clients_with_the_key)
{
    /* Before: connections that never authenticate counted like any other, so enough
     * of them (re-opened as --auth-timeout closed them) kept every client with the
     * key out with TooManyClients. */
    make_keyfile();
    tb_broker t;
    const char *args[] = {"--authkey-file", keyfile, "--max-clients", "8", "--max-handshakes",
                          "4", "--max-handshakes-per-peer", "2", "--auth-timeout", "60", NULL};
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&t, 1, args);
    mpb_context *k[9];
    k[0] = tb_connect(&t); /* from 127.0.0.1, authenticated */
    /* One stranger's address gets two handshakes at a time, no more: a third takes
     * the place of its oldest. */
    int a1 = tcp_from(&t, "127.0.0.2"), a2 = tcp_from(&t, "127.0.0.2");
    int a3 = tcp_from(&t, "127.0.0.2");
    expect_refused(a1, "--max-handshakes-per-peer");
    ck_assert(still_waiting(a2) && still_waiting(a3));
    /* Two more addresses fill --max-handshakes; one more stranger takes the place of
     * the oldest. */
    int b1 = tcp_from(&t, "127.0.0.3"), b2 = tcp_from(&t, "127.0.0.3");
    ck_assert(still_waiting(b1) && still_waiting(b2));
    int c1 = tcp_from(&t, "127.0.0.4");
    expect_refused(a2, "--max-handshakes");
    ck_assert(still_waiting(c1));
    /* Clients with the key fill the whole broker, each taking a stranger's place
     * when there is no other room: first a3's, and at --max-clients b1's, b2's,
     * c1's. */
    for (int i = 1; i < 8; i++) k[i] = tb_connect(&t);
    expect_refused(a3, "--max-handshakes");
    expect_refused(b1, "--max-clients");
    expect_refused(b2, "--max-clients");
    expect_refused(c1, "--max-clients");
    /* Now all 8 have the key: nobody else comes in, strangers or not. */
    expect_refused(tcp_from(&t, "127.0.0.5"), "--max-clients");
    k[8] = mpb_connect(t.address);
    ck_assert_int_eq(k[8]->err, MPB_ERR_CONNECT);
    ck_assert_str_eq(k[8]->errkind, "TooManyClients");
    mpb_free(k[8]);
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(mpb_ping(k[i]), MPB_OK);
        mpb_free(k[i]);
    }
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_int_eq(tb_stop(&t), 0);
    drop_keyfile();
}
END_TEST

START_TEST(strangers_sharing_a_clients_address_cannot_lock_it_out)
{
    /* Over TCP a peer is an IP address, and every local user is 127.0.0.1. Before, a
     * peer at --max-handshakes-per-peer had its new connections refused: any local
     * user holding that many idle connections (re-opened as --auth-timeout closed
     * them) kept every client with the key out of a loopback broker. Now the peer's
     * oldest handshake gives way, and the client needs only its round trip. */
    make_keyfile();
    tb_broker t;
    const char *args[] = {"--authkey-file", keyfile, "--max-handshakes-per-peer", "3",
                          "--auth-timeout", "60", NULL};
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&t, 1, args);
    int idle[3];
    for (int i = 0; i < 3; i++) idle[i] = tcp_from(&t, "127.0.0.1"); /* another local user */
    ck_assert(still_waiting(idle[0]));
    mpb_context *c = mpb_connect(t.address); /* from 127.0.0.1 too, with the key */
    ck_assert_msg(c->err == MPB_OK, "%s: %s", c->errkind, c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    expect_refused(idle[0], "--max-handshakes-per-peer"); /* the oldest made room */
    ck_assert(still_waiting(idle[1]) && still_waiting(idle[2]));
    close(idle[1]);
    close(idle[2]);
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_int_eq(tb_stop(&t), 0);
    drop_keyfile();
}
END_TEST

/* In a child running as uid: open n raw connections to path and report, through the
 * exit status, how many were refused (TooManyClients) within a second. */
static int refused_as(const char *path, uid_t uid, int n)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
            _exit(100);
        int fds[16], refused = 0;
        for (int i = 0; i < n; i++) {
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
            fds[i] = socket(AF_UNIX, SOCK_STREAM, 0);
            if (connect(fds[i], (struct sockaddr *)&sa, sizeof sa) < 0) _exit(101);
        }
        for (int i = 0; i < n; i++) {
            struct pollfd pf = {.fd = fds[i], .events = POLLIN};
            if (poll(&pf, 1, i == 0 ? 1000 : 100) == 1) refused++;
        }
        _exit(refused);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WEXITSTATUS(st);
}

START_TEST(only_strangers_are_capped_per_peer_on_the_unix_socket)
{
    /* The per-peer cap is for strangers: on the Unix socket another uid (a member of
     * --socket-group, say) is capped, the broker's own uid and root are not. */
    if (geteuid() != 0) {
        printf("skipped: needs root (a second uid)\n");
        return;
    }
    make_keyfile();
    tb_broker t;
    const char *args[] = {"--authkey-file", keyfile, "--max-handshakes-per-peer", "2", NULL};
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&t, 0, args);
    unsetenv("MPBROKER_AUTHKEY");
    ck_assert_int_eq(chmod(t.dir, 0755), 0);
    ck_assert_int_eq(chmod(t.sock, 0777), 0);
    ck_assert_int_eq(refused_as(t.sock, 0, 5), 0);
    ck_assert_int_eq(refused_as(t.sock, 64001, 5), 3);
    ck_assert_int_eq(tb_stop(&t), 0);
    drop_keyfile();
}
END_TEST

/*--- Limits ---*/

static void limits_setup(void)
{
    static const char *const args[] = {"--max-clients", "4", "--max-memory", "256K",
                                       "--max-output", "1M", NULL};
    tb_start(&B, 0, args);
}
static void limits_teardown(void) { ck_assert_int_eq(tb_stop(&B), 0); }

static int64_t stat_int(mpb_context *c, const char *key)
{
    mpb_value st;
    ck_assert_int_eq(mpb_call(c, "manager.stats", NULL, 0, &st), MPB_OK);
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    mpb_value *v = mpb_map_get(st.v.m, &k);
    ck_assert_ptr_nonnull(v);
    int64_t n = v->v.i;
    mpb_value_free(&st);
    return n;
}

START_TEST(max_clients_refuses_the_extra_connection_only)
{
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = tb_raw_connect(&B);
        expect_pong(fds[i]);
    }
    int extra = tb_raw_connect(&B);
    mpb_value m;
    ck_assert_int_eq(tb_read_msg(extra, &m, 5000), 0);
    ck_assert_int_eq(m.v.a->items[1].type, MPB_NIL);
    ck_assert_str_eq(m.v.a->items[2].v.a->items[0].v.s, "TooManyClients");
    mpb_value_free(&m);
    ck_assert_int_eq(tb_wait_closed(extra, 5000), 1);
    close(extra);
    for (int i = 0; i < 4; i++) expect_pong(fds[i]);
    /* One leaves: there is room again (the broker notices the close first). */
    close(fds[3]);
    mpb_context *c = NULL;
    for (int tries = 0; tries < 100; tries++) {
        c = mpb_connect(B.address);
        if (c->err == MPB_OK && mpb_ping(c) == MPB_OK) break;
        mpb_free(c);
        c = NULL;
        usleep(20000);
    }
    ck_assert_ptr_nonnull(c);
    mpb_free(c);
    for (int i = 0; i < 3; i++) close(fds[i]);
}
END_TEST

START_TEST(max_memory_refuses_writes_and_changes_nothing)
{
    mpb_context *c = tb_connect(&B);
    int64_t base = stat_int(c, "memory_used");
    ck_assert_int_eq(stat_int(c, "max_memory"), 256 * 1024);
    mpb_ref l, d;
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    ck_assert_int_eq(mpb_create(c, "dict", NULL, &d), MPB_OK);
    char chunk[10000];
    memset(chunk, 'm', sizeof chunk);
    mpb_value v = mpb_str_borrowed(chunk, sizeof chunk);
    int stored = 0, rc;
    while ((rc = mpb_list_append(c, l, &v)) == MPB_OK) stored++;
    ck_assert_str_eq(c->errkind, "OutOfMemory");
    ck_assert_int_gt(stored, 10);
    ck_assert_int_lt(stored, 27);
    int64_t n;
    ck_assert_int_eq(mpb_list_len(c, l, &n), MPB_OK);
    ck_assert_int_eq(n, stored);
    /* Every way in is refused; nothing half-done. */
    mpb_value key = mpb_str("k");
    ck_assert_int_eq(mpb_dict_setitem(c, d, &key, &v), MPB_ERR_REPLY);
    ck_assert_str_eq(c->errkind, "OutOfMemory");
    TB_EXPECT(c, "0", "dict.len", mpb_refv(d));
    TB_EXPECT_ERR(c, "OutOfMemory", "manager.create", mpb_str("array"),
                  tb_lit("['d', 100000]"));
    TB_EXPECT_ERR(c, "OutOfMemory", "manager.open", mpb_str("array"), mpb_str("big"),
                  tb_lit("['d', 100000]"));
    TB_EXPECT_ERR(c, "NoSuchObject", "manager.lookup", mpb_str("big"));
    /* Deleting always works, and makes room. */
    TB_EXPECT(c, "None", "list.remove", mpb_refv(l), mpb_str_borrowed(chunk, sizeof chunk));
    mpb_value out;
    ck_assert_int_eq(mpb_list_pop(c, l, -1, &out), MPB_OK);
    mpb_value_free(&out);
    ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    mpb_value_free(&key);
    /* Everything released: the count is back where it started. */
    ck_assert_int_eq(mpb_release(c, l), MPB_OK);
    ck_assert_int_eq(mpb_release(c, d), MPB_OK);
    ck_assert_int_eq(stat_int(c, "memory_used"), base);
    mpb_free(c);
}
END_TEST

/* Create an object of type with initial literal (NULL: none); returns its reference. */
static mpb_ref make(mpb_context *c, const char *type, const char *initial)
{
    mpb_ref r;
    mpb_value init = initial ? tb_lit(initial) : mpb_nil();
    ck_assert_int_eq(mpb_create(c, type, &init, &r), MPB_OK);
    mpb_value_free(&init);
    return r;
}

START_TEST(memory_count_returns_to_zero_after_every_type)
{
    /* What --max-memory counts must come back exactly when everything goes: a drift
     * would slowly refuse writes (or let them through). Every way in and out. */
    mpb_context *c = tb_connect(&B);
    ck_assert_int_eq(stat_int(c, "memory_used"), 0);
    mpb_ref l = make(c, "list", "[1, 'ab', [1, 2]]"), d = make(c, "dict", "{'a': 1}"),
            n = make(c, "namespace", "{'x': 1}"), q = make(c, "queue", NULL),
            s = make(c, "set", "[1, 2, 'z']"), a = make(c, "array", "['d', 100]"),
            v = make(c, "value", "['u', 'a']"), cv = make(c, "condition", NULL);
    TB_EXPECT(c, "None", "list.extend", mpb_refv(l), tb_lit("['xx', [3, [4]], {'k': 'v'}]"));
    TB_EXPECT(c, "None", "list.setitem", mpb_refv(l), mpb_int(0), mpb_int(2), mpb_nil(),
              tb_lit("['a', 'b', 'c']"));
    TB_EXPECT(c, "None", "list.setitem", mpb_refv(l), mpb_int(0), mpb_int(6), mpb_int(2),
              tb_lit("['p', 'q', 'r']"));
    TB_EXPECT(c, "None", "list.insert", mpb_refv(l), mpb_int(1), mpb_str("ins"));
    TB_EXPECT(c, "None", "list.remove", mpb_refv(l), mpb_str("ins"));
    TB_EXPECT(c, "None", "list.delitem", mpb_refv(l), mpb_int(0), mpb_int(2));
    TB_EXPECT(c, "None", "dict.update", mpb_refv(d), tb_lit("{'a': 'xxxx', 'c': 3}"));
    TB_EXPECT(c, "[1]", "dict.setdefault", mpb_refv(d), mpb_str("s"), tb_lit("[1]"));
    TB_EXPECT(c, "5", "dict.incr", mpb_refv(d), mpb_str("n"), mpb_int(5));
    TB_EXPECT(c, "True", "dict.cas", mpb_refv(d), mpb_str("c"), mpb_int(3), mpb_str("three"));
    TB_EXPECT(c, "'xxxx'", "dict.pop", mpb_refv(d), mpb_str("a"));
    TB_EXPECT(c, "None", "dict.setitem", mpb_refv(d), tb_lit("(1, 2)"), mpb_refv(l));
    TB_EXPECT(c, "None", "dict.delitem", mpb_refv(d), mpb_str("s"));
    TB_EXPECT(c, "None", "namespace.setattr", mpb_refv(n), mpb_str("y"), mpb_str("yyyy"));
    TB_EXPECT(c, "3", "namespace.incr", mpb_refv(n), mpb_str("x"), mpb_int(2));
    TB_EXPECT(c, "None", "namespace.delattr", mpb_refv(n), mpb_str("x"));
    for (int i = 0; i < 4; i++) TB_EXPECT(c, "None", "queue.put", mpb_refv(q), tb_lit("['item']"));
    TB_EXPECT(c, "['item']", "queue.get", mpb_refv(q));
    TB_EXPECT(c, "None", "set.add", mpb_refv(s), tb_lit("(1, 2)"));
    TB_EXPECT(c, "None", "set.discard", mpb_refv(s), mpb_int(1));
    TB_EXPECT(c, "None", "value.set", mpb_refv(v), mpb_str("b"));
    ck_assert_int_gt(stat_int(c, "memory_used"), 0);
    mpb_ref all[] = {l, d, n, q, s, a, v, cv};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ck_assert_int_eq(mpb_release(c, all[i]), MPB_OK);
    ck_assert_int_eq(stat_int(c, "memory_used"), 0);
    mpb_free(c);
}
END_TEST

START_TEST(max_output_makes_a_big_read_too_large)
{
    mpb_context *c = tb_connect(&B);
    mpb_ref l;
    ck_assert_int_eq(mpb_create(c, "list", NULL, &l), MPB_OK);
    char chunk[10000];
    memset(chunk, 'o', sizeof chunk);
    mpb_value v = mpb_str_borrowed(chunk, sizeof chunk);
    for (int i = 0; i < 15; i++) ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    /* manager.ping echoes its payload: 1.5 MB back is over the 1 MiB --max-output. */
    size_t n = 1500000;
    char *big = malloc(n);
    memset(big, 'p', n);
    TB_EXPECT_ERR(c, "TooLarge", "manager.ping", mpb_str_borrowed(big, n));
    free(big);
    /* The connection goes on; a 150 KB read is fine. */
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_value all;
    ck_assert_int_eq(mpb_list_copy(c, l, &all), MPB_OK);
    ck_assert_uint_eq(all.v.a->len, 15);
    mpb_value_free(&all);
    mpb_free(c);
}
END_TEST

START_TEST(stored_data_is_bounded_by_default)
{
    /* Before, nothing bounded stored data unless --max-memory was given: any client
     * could fill the machine. Now the default is half of RAM (or of the cgroup's
     * limit), and --max-memory 0 still means none. */
    tb_broker t;
    tb_start(&t, 0, NULL);
    mpb_context *c = tb_connect(&t);
    int64_t max = stat_int(c, "max_memory");
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    ck_assert_int_gt(max, 0);
    ck_assert_uint_le((uint64_t)max, ram / 2);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
    const char *args[] = {"--max-memory", "0", NULL};
    tb_start(&t, 0, args);
    c = tb_connect(&t);
    ck_assert_int_eq(stat_int(c, "max_memory"), 0);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/* Write s into the file at path; false when it cannot be opened or written. */
static bool write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return false;
    bool ok = fputs(s, f) >= 0;
    return fclose(f) == 0 && ok;
}

START_TEST(default_memory_limit_follows_a_parent_cgroup)
{
    /* A cgroup's memory limit binds its children: a broker in a child of a limited
     * cgroup (a service in a limited slice, a container's process in a sub-group) may
     * use no more than the parent allows. Before, only the broker's own cgroup was
     * read, and the default was half of all RAM there. Needs root and a memory
     * cgroup hierarchy it may write (v1 here, v2 elsewhere). */
    if (geteuid() != 0) {
        printf("skipped: needs root (cgroups)\n");
        return;
    }
    const char *base = "/sys/fs/cgroup", *file = "memory.max";
    char line[512], top[128], leaf[160], path[256];
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, ":memory:")) {
            base = "/sys/fs/cgroup/memory";
            file = "memory.limit_in_bytes";
        }
    if (f) fclose(f);
    snprintf(top, sizeof top, "%s/mpbtest.XXXXXX", base);
    if (mkdtemp(top) == NULL) {
        printf("skipped: cannot make a cgroup in %s: %s\n", base, strerror(errno));
        return;
    }
    snprintf(leaf, sizeof leaf, "%s/leaf", top);
    snprintf(path, sizeof path, "%s/cgroup.subtree_control", top);
    if (strcmp(file, "memory.max") == 0) (void)!write_file(path, "+memory");
    snprintf(path, sizeof path, "%s/%s", top, file);
    bool made = write_file(path, "268435456\n") && mkdir(leaf, 0755) == 0;
    snprintf(path, sizeof path, "%s/%s", leaf, file);
    if (!made || access(path, F_OK) != 0) {
        printf("skipped: cannot limit memory in %s\n", top);
        rmdir(leaf);
        rmdir(top);
        return;
    }
    /* The broker in the leaf, which has no limit of its own; its parent has 256 MiB. */
    char script[512], out[16384];
    snprintf(script, sizeof script, "echo $$ > %s/cgroup.procs && exec %s --help", leaf,
             getenv("MPB_SERVER"));
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    int rc = tb_run_prog(argv, -1, NULL, out, sizeof out);
    for (int i = 0; i < 100 && rmdir(leaf) < 0 && errno == EBUSY; i++) usleep(10000);
    rmdir(top);
    ck_assert_msg(rc == 0, "%.1000s", out); /* Check caps messages at 4 KiB */
    const char *here = strstr(out, "here ");
    ck_assert_msg(here != NULL, "%.1000s", out);
    ck_assert_msg(strtoul(here + 5, NULL, 10) == 128, "default --max-memory: %.20s", here);
}
END_TEST

/*--- Shutdown ---*/

START_TEST(sigterm_answers_requests_already_received)
{
    tb_broker t;
    tb_start(&t, 0, NULL);
    mpb_context *c = tb_connect(&t);
    mpb_ref l;
    ck_assert_int_eq(mpb_open(c, "list", "big", NULL, &l), MPB_OK);
    char chunk[16384];
    memset(chunk, 's', sizeof chunk);
    mpb_value v = mpb_str_borrowed(chunk, sizeof chunk);
    for (int i = 0; i < 16; i++) ck_assert_int_eq(mpb_list_append(c, l, &v), MPB_OK);
    mpb_free(c);
    /* 24 copies of 256 KiB asked for at once, none read: the broker stops serving them
     * after about 4 MiB of unsent replies. The rest sit read but unanswered. (Small
     * enough to be written well within the 5 s a stopping broker gives slow readers,
     * also under ASan on a loaded machine: 20 MiB took 7 s there.) They go
     * in one write, so that one read takes them all (sent one by one, the later ones
     * could still be in the socket when the broker stops reading, and requests not
     * read at SIGTERM are not answered); SIGTERM only once the broker read them. */
    int fd = tb_raw_connect(&t);
    mpb_value r = mpb_refv(l);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (int i = 0; i < 24; i++) {
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint64(&pk, (uint64_t)i);
        msgpack_pack_str_with_body(&pk, "list.copy", 9);
        msgpack_pack_array(&pk, 1);
        mpb_value_pack(&pk, &r);
    }
    ck_assert_int_eq(tb_write_all(fd, sb.data, sb.size), 0);
    msgpack_sbuffer_destroy(&sb);
    int unread = -1; /* a Unix socket's SIOCOUTQ: bytes the peer has not read yet */
    for (int i = 0; i < 1000; i++) {
        ck_assert_int_eq(ioctl(fd, SIOCOUTQ, &unread), 0);
        if (unread == 0) break;
        usleep(10000);
    }
    ck_assert_int_eq(unread, 0);
    ck_assert_int_eq(kill(t.pid, SIGTERM), 0);
    for (int i = 0; i < 24; i++) {
        mpb_value m;
        ck_assert_msg(tb_read_msg(fd, &m, 10000) == 0, "reply %d missing", i);
        ck_assert_int_eq(m.v.a->items[1].v.i, i);
        ck_assert_int_eq(m.v.a->items[2].type, MPB_NIL);
        ck_assert_uint_eq(m.v.a->items[3].v.a->len, 16);
        mpb_value_free(&m);
    }
    ck_assert_int_eq(tb_wait_closed(fd, 10000), 1);
    close(fd);
    int st;
    ck_assert_int_eq(waitpid(t.pid, &st, 0), t.pid);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    ck_assert_int_ne(access(t.sock, F_OK), 0); /* the socket file is gone */
    t.pid = -1;
    tb_stop(&t);
}
END_TEST

static Suite *security_suite(void)
{
    Suite *s = suite_create("security");
    TCase *tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, auth_setup, auth_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, keyed_client_authenticates_and_works);
    tcase_add_test(tc, key_from_environment_or_file);
    tcase_add_test(tc, wrong_key_is_auth_error_and_nothing_else_goes_through);
    tcase_add_test(tc, any_method_before_the_handshake_is_auth_error_then_closed);
    tcase_add_test(tc, raw_handshake_as_documented);
    tcase_add_test(tc, bad_responses_are_refused_and_closed);
    tcase_add_test(tc, a_stranger_learns_nothing_that_depends_on_the_key);
    tcase_add_test(tc, unauthenticated_requests_are_small);
    tcase_add_test(tc, broker_without_key_does_not_fool_a_keyed_client);
    tcase_add_test(tc, a_broker_that_cannot_prove_the_key_is_refused);
    tcase_add_test(tc, connection_that_never_authenticates_is_closed);
    tcase_add_test(tc, strangers_cannot_make_a_quiet_broker_write_to_its_log);
    tcase_add_test(tc, monitors_see_nothing_before_authentication);
    suite_add_tcase(s, tc);
    tc = tcase_create("preauth");
    tcase_add_checked_fixture(tc, auth_setup, auth_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, anything_but_the_handshake_gets_one_reply_then_closes);
    tcase_add_test(tc, strangers_flooding_bytes_cost_the_broker_little);
    suite_add_tcase(s, tc);
    tc = tcase_create("room");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, strangers_cannot_lock_out_clients_with_the_key);
    tcase_add_test(tc, strangers_sharing_a_clients_address_cannot_lock_it_out);
    tcase_add_test(tc, only_strangers_are_capped_per_peer_on_the_unix_socket);
    suite_add_tcase(s, tc);
    tc = tcase_create("key");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_short_key_is_warned_about_at_start);
    tcase_add_test(tc, a_key_file_others_can_read_or_change_is_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, limits_setup, limits_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, max_clients_refuses_the_extra_connection_only);
    tcase_add_test(tc, max_memory_refuses_writes_and_changes_nothing);
    tcase_add_test(tc, max_output_makes_a_big_read_too_large);
    tcase_add_test(tc, memory_count_returns_to_zero_after_every_type);
    suite_add_tcase(s, tc);
    tc = tcase_create("defaults");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, stored_data_is_bounded_by_default);
    tcase_add_test(tc, default_memory_limit_follows_a_parent_cgroup);
    suite_add_tcase(s, tc);
    tc = tcase_create("shutdown");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sigterm_answers_requests_already_received);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tb_run(security_suite());
}
