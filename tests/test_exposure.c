/* test_exposure.c - who can reach a broker: the Unix socket's place, owner and mode,
 * other local users (a second uid through setpriv, as root), and TCP's protected mode.
 *
 * The tests that need a second uid run only as root (as in CI) and say "skipped"
 * otherwise; they use numeric uids, so no user has to exist. A sticky world-writable
 * directory of the test's own stands for /tmp (through $TMPDIR), so that nothing here
 * touches the real /tmp's names.
 */
#include <check.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mpb_address.h"
#include "testutil.h"

#define KEY "correct horse battery staple"
#define VICTIM 64001   /* uids of nobody: setpriv needs no user */
#define ATTACKER 64002

static char keydir[64], keyfile[128];

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

/*--- Helpers ---*/

static bool is_root(void)
{
    if (geteuid() == 0) return true;
    printf("skipped: needs root (setpriv to a second uid)\n");
    return false;
}

/* A sticky, world-writable directory standing for /tmp. */
static char shared[64];
static void make_shared(void)
{
    snprintf(shared, sizeof shared, "/tmp/mpbshared.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(shared));
    ck_assert_int_eq(chmod(shared, 01777), 0);
}

static void drop_shared(void)
{
    const char *argv[] = {"/bin/rm", "-rf", shared, NULL};
    char out[256];
    tb_run_prog(argv, -1, NULL, out, sizeof out);
}

/* Wait until path is a socket (10 s at most). */
static void wait_for_socket(const char *path)
{
    struct stat st;
    for (int i = 0; i < 1000; i++) {
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) return;
        usleep(10000);
    }
    ck_abort_msg("no socket at %s", path);
}

/* SIGTERM pid and return its exit status. */
static int stop(pid_t pid)
{
    int st;
    kill(pid, SIGTERM);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static const char *server(void) { return getenv("MPB_SERVER"); }
static const char *cli(void) { return getenv("MPB_CLI"); }

/*--- The default socket ---*/

START_TEST(default_socket_lives_in_a_private_directory_of_its_own)
{
    /* No XDG_RUNTIME_DIR (cron, su, ssh without pam_systemd, containers): before, the
     * default was /tmp/mpbroker-$UID.sock, a name anyone could take first. */
    make_shared();
    char dir[128], sock[160], def[256];
    snprintf(dir, sizeof dir, "%s/mpbroker-%lu", shared, (unsigned long)geteuid());
    snprintf(sock, sizeof sock, "%s/mpbroker.sock", dir);
    setenv("TMPDIR", shared, 1);
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("MPBROKER_ADDRESS");
    ck_assert_str_eq(mpb_default_address(def, sizeof def), sock);
    const char *argv[] = {server(), "--quiet", NULL};
    pid_t pid = tb_spawn(argv, -1, NULL, NULL);
    wait_for_socket(sock);
    struct stat st;
    ck_assert_int_eq(lstat(dir, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_uint_eq(st.st_uid, geteuid());
    ck_assert_int_eq(st.st_mode & 07777, 0700);
    ck_assert_int_eq(stat(sock, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    mpb_context *c = mpb_connect(NULL); /* the same default, found alike */
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(stop(pid), 0);
    /* With $XDG_RUNTIME_DIR (private by contract) the socket goes straight in it. */
    snprintf(dir, sizeof dir, "%s/xdg", shared);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    setenv("XDG_RUNTIME_DIR", dir, 1);
    snprintf(sock, sizeof sock, "%s/mpbroker.sock", dir);
    ck_assert_str_eq(mpb_default_address(def, sizeof def), sock);
    pid = tb_spawn(argv, -1, NULL, NULL);
    wait_for_socket(sock);
    c = mpb_connect(NULL);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(stop(pid), 0);
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("TMPDIR");
    drop_shared();
}
END_TEST

START_TEST(squatting_the_default_path_is_refused_by_broker_and_client)
{
    /* The finding: another user makes the victim's default path first, with a broker
     * of its own. Before, the victim's broker exited ("already listening") and the
     * victim's `mpbroker-cli create dict secrets ...` went to the attacker's broker. */
    if (!is_root()) return;
    make_shared();
    char vdir[128], vsock[160], env_tmp[96], out[2048];
    snprintf(vdir, sizeof vdir, "%s/mpbroker-%d", shared, VICTIM);
    snprintf(vsock, sizeof vsock, "%s/mpbroker.sock", vdir);
    snprintf(env_tmp, sizeof env_tmp, "TMPDIR=%s", shared);
    const char *env[] = {env_tmp, "XDG_RUNTIME_DIR", "MPBROKER_ADDRESS", "MPBROKER_AUTHKEY",
                         "MPBROKER_AUTHKEY_FILE", NULL};
    /* The attacker: the victim's directory, mode 0777, and a broker in it, 0777. */
    ck_assert_int_eq(mkdir(vdir, 0777), 0);
    ck_assert_int_eq(chmod(vdir, 0777), 0);
    ck_assert_int_eq(chown(vdir, ATTACKER, ATTACKER), 0);
    const char *attack[] = {server(), "--quiet", "--socket", vsock, NULL};
    pid_t attacker = tb_spawn(attack, ATTACKER, env, NULL);
    wait_for_socket(vsock);
    ck_assert_int_eq(chmod(vsock, 0777), 0);
    /* The victim's broker will not use the attacker's directory. */
    const char *broker[] = {server(), "--quiet", NULL};
    ck_assert_int_eq(tb_run_prog(broker, VICTIM, env, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "belongs to uid 64002, not to this user (uid 64001)"), "%s", out);
    /* The victim's client will not talk to the attacker's broker. */
    const char *secret[] = {cli(), "create", "dict", "secrets", "{\"db_password\": \"hunter2\"}",
                            NULL};
    ck_assert_int_eq(tb_run_prog(secret, VICTIM, env, out, sizeof out), 1);
    ck_assert_msg(strstr(out, "runs as uid 64002") && strstr(out, "refused"), "%s", out);
    /* ... so the attacker's broker got nothing (root looks, trusting it by name). */
    char addr[200];
    snprintf(addr, sizeof addr, "unix:%s", vsock);
    mpb_context *c = mpb_connect(addr);
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT); /* root does not trust it either */
    ck_assert_str_eq(c->errkind, "AuthError");
    mpb_free(c);
    snprintf(addr, sizeof addr, "unix:%s?peer=%d", vsock, ATTACKER);
    c = mpb_connect(addr);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    mpb_value objs;
    ck_assert_int_eq(mpb_call(c, "manager.objects", NULL, 0, &objs), MPB_OK);
    ck_assert_uint_eq(objs.v.a->len, 0);
    mpb_value_free(&objs);
    mpb_free(c);
    ck_assert_int_eq(stop(attacker), 0);
    /* A plain file in the way: refused with a clear message, not an obscure error. */
    const char *rm[] = {"/bin/rm", "-rf", vdir, NULL};
    tb_run_prog(rm, -1, NULL, out, sizeof out);
    FILE *f = fopen(vdir, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    ck_assert_int_eq(chown(vdir, ATTACKER, ATTACKER), 0);
    ck_assert_int_eq(tb_run_prog(broker, VICTIM, env, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "not a directory"), "%s", out);
    ck_assert_int_eq(unlink(vdir), 0);
    /* With nobody in the way the victim's broker makes its own private directory, and
     * the victim's client uses it. */
    pid_t victim = tb_spawn(broker, VICTIM, env, NULL);
    wait_for_socket(vsock);
    struct stat st;
    ck_assert_int_eq(lstat(vdir, &st), 0);
    ck_assert_uint_eq(st.st_uid, VICTIM);
    ck_assert_int_eq(st.st_mode & 07777, 0700);
    ck_assert_int_eq(tb_run_prog(secret, VICTIM, env, out, sizeof out), 0);
    const char *objects[] = {cli(), "objects", NULL};
    ck_assert_int_eq(tb_run_prog(objects, VICTIM, env, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "secrets"), "%s", out);
    ck_assert_int_eq(stop(victim), 0);
    drop_shared();
}
END_TEST

START_TEST(a_broker_refuses_a_socket_path_that_is_not_its_own)
{
    char dir[] = "/tmp/mpbpath.XXXXXX", path[64], out[1024];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.sock", dir);
    const char *args[] = {"--quiet", "--socket", path, NULL};
    /* A regular file: refused, and left as it was (before, it was deleted). */
    FILE *f = fopen(path, "w");
    fputs("precious", f);
    fclose(f);
    ck_assert_int_eq(tb_run_server(args, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "is not a socket: refusing to replace it"), "%s", out);
    char buf[16] = "";
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, f));
    fclose(f);
    ck_assert_str_eq(buf, "precious");
    unlink(path);
    /* A stale socket of our own (nobody listening) is replaced. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    const char *argv[] = {server(), "--quiet", "--socket", path, NULL};
    pid_t pid = tb_spawn(argv, -1, NULL, NULL);
    for (int i = 0; i < 500; i++) {
        mpb_context *c = mpb_connect(path);
        int ok = c->err == MPB_OK && mpb_ping(c) == MPB_OK;
        mpb_free(c);
        if (ok) break;
        usleep(10000);
    }
    ck_assert_int_eq(stop(pid), 0);
    if (geteuid() == 0) {
        /* Another user's socket at the path: refused (root too). */
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
        close(fd);
        ck_assert_int_eq(chown(path, ATTACKER, ATTACKER), 0);
        ck_assert_int_eq(tb_run_server(args, out, sizeof out), 2);
        ck_assert_msg(strstr(out, "belongs to uid 64002"), "%s", out);
        unlink(path);
        /* An XDG_RUNTIME_DIR that is not ours. */
        char xdg[96];
        snprintf(xdg, sizeof xdg, "%s/xdg", dir);
        ck_assert_int_eq(mkdir(xdg, 0700), 0);
        ck_assert_int_eq(chown(xdg, ATTACKER, ATTACKER), 0);
        char env_xdg[128];
        snprintf(env_xdg, sizeof env_xdg, "XDG_RUNTIME_DIR=%s", xdg);
        const char *env[] = {env_xdg, NULL};
        const char *dflt[] = {server(), "--quiet", NULL};
        ck_assert_int_eq(tb_run_prog(dflt, -1, env, out, sizeof out), 2);
        ck_assert_msg(strstr(out, "belongs to uid 64002"), "%s", out);
        rmdir(xdg);
    }
    rmdir(dir);
}
END_TEST

START_TEST(clients_trust_only_their_own_uid_or_root_unless_told)
{
    if (!is_root()) return;
    make_shared();
    char sock[128], addr[200], out[2048];
    snprintf(sock, sizeof sock, "%s/a.sock", shared);
    const char *argv[] = {server(), "--quiet", "--socket", sock, NULL};
    pid_t other = tb_spawn(argv, ATTACKER, NULL, NULL);
    wait_for_socket(sock);
    ck_assert_int_eq(chmod(sock, 0777), 0);
    /* Root, and another uid, refuse it by default, with the reason and the remedy. */
    mpb_context *c = mpb_connect(sock);
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
    ck_assert_str_eq(c->errkind, "AuthError");
    ck_assert_msg(strstr(c->errstr, "runs as uid 64002") && strstr(c->errstr, "?peer=64002"),
                  "%s", c->errstr);
    mpb_free(c);
    const char *ping[] = {cli(), "-s", sock, "call", "manager.ping", NULL};
    ck_assert_int_eq(tb_run_prog(ping, VICTIM, NULL, out, sizeof out), 1);
    ck_assert_msg(strstr(out, "runs as uid 64002"), "%s", out);
    /* Told to trust it: by uid, or anyone. */
    const char *trusted[] = {"64002", "any", NULL};
    for (int i = 0; trusted[i]; i++) {
        snprintf(addr, sizeof addr, "unix:%s?peer=%s", sock, trusted[i]);
        c = mpb_connect(addr);
        ck_assert_msg(c->err == MPB_OK, "%s: %s", addr, c->errstr);
        ck_assert_int_eq(mpb_ping(c), MPB_OK);
        mpb_free(c);
    }
    /* Told another user: refused; no such user, or a bad option: an error. */
    snprintf(addr, sizeof addr, "unix:%s?peer=0", sock);
    c = mpb_connect(addr);
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
    mpb_free(c);
    snprintf(addr, sizeof addr, "unix:%s?peer=no-such-user-here", sock);
    c = mpb_connect(addr);
    ck_assert_msg(c->err == MPB_ERR_CONNECT && strstr(c->errstr, "no such user"), "%s",
                  c->errstr);
    mpb_free(c);
    snprintf(addr, sizeof addr, "unix:%s?user=1", sock);
    c = mpb_connect(addr);
    ck_assert_int_eq(c->err, MPB_ERR_CONNECT);
    mpb_free(c);
    ck_assert_int_eq(stop(other), 0);
    /* A root broker is trusted by every user. */
    snprintf(sock, sizeof sock, "%s/r.sock", shared);
    pid_t mine = tb_spawn(argv, -1, NULL, NULL);
    wait_for_socket(sock);
    ck_assert_int_eq(chmod(sock, 0777), 0);
    ck_assert_int_eq(tb_run_prog(ping, VICTIM, NULL, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "pong"), "%s", out);
    ck_assert_int_eq(stop(mine), 0);
    drop_shared();
}
END_TEST

START_TEST(peer_is_a_name_or_a_plain_uid_never_a_signed_number)
{
    /* ?peer= took its number through strtoull, which also takes a sign and blanks and
     * negates: "-18446744073709551615" was uid 1, "-0" root. A uid is digits only. */
    tb_broker t;
    tb_start(&t, 0, NULL);
    unsigned long long me = geteuid();
    char neg[32], addr[400];
    if (me == 0) snprintf(neg, sizeof neg, "-0");
    else snprintf(neg, sizeof neg, "-%llu", 0ull - me); /* wraps back to me */
    const char *bad[] = {neg, "+%llu", " %llu", NULL};
    for (int i = 0; bad[i]; i++) {
        char who[40];
        snprintf(who, sizeof who, bad[i], me);
        snprintf(addr, sizeof addr, "%s?peer=%s", t.sock, who);
        mpb_context *c = mpb_connect(addr);
        ck_assert_msg(c->err == MPB_ERR_CONNECT && strstr(c->errstr, "no such user"),
                      "?peer=%s: %s", who, c->err ? c->errstr : "connected");
        mpb_free(c);
    }
    snprintf(addr, sizeof addr, "%s?peer=%llu", t.sock, me); /* the plain number works */
    mpb_context *c = mpb_connect(addr);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

/*--- The socket's group ---*/

START_TEST(socket_group_is_set_without_a_path_based_chown)
{
    /* Before, --socket-group ran chown(path) and chmod(path) after bind: a group
     * member who could write the directory swapped the socket for a symlink in
     * between and had any file of the broker's user made :GROUP 0660. Now the file is
     * given to the group inside a private staging directory and renamed into place;
     * under strace, no chown or chmod names the socket's path. */
    if (access("/usr/bin/strace", X_OK) != 0) {
        printf("skipped: no /usr/bin/strace\n");
        return;
    }
    char dir[] = "/tmp/mpbgroup.XXXXXX", sock[64], log[64], gid[32];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/s.sock", dir);
    snprintf(log, sizeof log, "%s/strace.log", dir);
    snprintf(gid, sizeof gid, "%lu", geteuid() == 0 ? 64003ul : (unsigned long)getgid());
    const char *argv[] = {"/usr/bin/strace", "-f", "-qq", "-e", "trace=/ch(own|mod)", "-o", log,
                          server(), "--quiet", "--socket", sock, "--socket-group", gid, NULL};
    /* LeakSanitizer stops the world with ptrace, which strace already holds. */
    const char *env[] = {"ASAN_OPTIONS=detect_leaks=0", NULL};
    pid_t pid = tb_spawn(argv, -1, env, NULL);
    mpb_context *c = NULL;
    for (int i = 0; i < 1000; i++) {
        c = mpb_connect(sock);
        if (c->err == MPB_OK && mpb_ping(c) == MPB_OK) break;
        mpb_free(c);
        c = NULL;
        usleep(10000);
    }
    ck_assert_ptr_nonnull(c);
    struct stat st;
    ck_assert_int_eq(stat(sock, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0660);
    ck_assert_uint_eq(st.st_gid, strtoul(gid, NULL, 10));
    ck_assert_int_eq(mpb_call(c, "manager.shutdown", NULL, 0, NULL), MPB_OK);
    mpb_free(c);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    FILE *f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    int chowns = 0;
    while (fgets(line, sizeof line, f)) {
        ck_assert_msg(strstr(line, sock) == NULL, "a path-based call on the socket: %s", line);
        ck_assert_msg(strstr(line, "AT_FDCWD") == NULL && strstr(line, "chown(\"") == NULL &&
                      strstr(line, "chmod(\"") == NULL, "a call by path: %s", line);
        if (strstr(line, "fchownat(") && strstr(line, "\"s\"") && strstr(line, "= 0")) chowns++;
    }
    fclose(f);
    ck_assert_int_eq(chowns, 1); /* the group was given, once, in the staging directory */
    unlink(log);
    ck_assert_int_eq(rmdir(dir), 0); /* and nothing was left behind */
}
END_TEST

START_TEST(socket_group_bind_cannot_be_redirected_by_a_group_member)
{
    /* --socket-group binds in a staging directory inside the socket's directory, which
     * group members may write. Before, bind() went through the staging directory's
     * path: a member who renamed that directory and left a symlink in its place while
     * bind ran had the broker (root here) make a socket file wherever the link
     * pointed. strace holds bind back for 2 s to open that window every time. */
    if (!is_root()) return;
    if (access("/usr/bin/strace", X_OK) != 0) {
        printf("skipped: no /usr/bin/strace\n");
        return;
    }
    const long member = 64003; /* uid and gid: setpriv makes it a member of the group */
    char top[] = "/tmp/mpbstage.XXXXXX", dir[64], victim[64], sock[80], script[512];
    ck_assert_ptr_nonnull(mkdtemp(top));
    ck_assert_int_eq(chmod(top, 0755), 0);
    snprintf(dir, sizeof dir, "%s/shared", top);
    snprintf(victim, sizeof victim, "%s/victim", top);
    snprintf(sock, sizeof sock, "%s/s.sock", dir);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    ck_assert_int_eq(chown(dir, 0, (gid_t)member), 0);
    ck_assert_int_eq(chmod(dir, 0770), 0); /* writable by the group, not sticky */
    ck_assert_int_eq(mkdir(victim, 0700), 0);
    /* The member: wait for the staging directory, move it aside, link to victim. */
    snprintf(script, sizeof script,
             "for i in $(seq 1000); do for s in %s/.mpbroker-*; do "
             "if [ -d \"$s\" ] && [ ! -L \"$s\" ]; then "
             "mv \"$s\" \"$s.moved\" && ln -s %s \"$s\" && exit 0; fi; done; sleep 0.01; "
             "done; exit 1", dir, victim);
    const char *att[] = {"/bin/sh", "-c", script, NULL};
    pid_t attacker = tb_spawn(att, member, NULL, NULL);
    char gid[32];
    snprintf(gid, sizeof gid, "%ld", member);
    const char *argv[] = {"/usr/bin/strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=bind",
                          "-e", "inject=bind:delay_enter=2000000", server(), "--quiet",
                          "--socket", sock, "--socket-group", gid, NULL};
    const char *env[] = {"ASAN_OPTIONS=detect_leaks=0", NULL}; /* LSan cannot ptrace */
    pid_t pid = tb_spawn(argv, -1, env, NULL);
    int st;
    ck_assert_int_eq(waitpid(attacker, &st, 0), attacker);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the swap did not happen");
    /* The broker binds in its own staging directory, wherever that was moved. */
    mpb_context *c = NULL;
    for (int i = 0; i < 1000 && waitpid(pid, &st, WNOHANG) == 0; i++) {
        c = mpb_connect(sock);
        if (c->err == MPB_OK && mpb_ping(c) == MPB_OK) break;
        mpb_free(c);
        c = NULL;
        usleep(10000);
    }
    char stray[96];
    snprintf(stray, sizeof stray, "%s/s", victim);
    ck_assert_msg(access(stray, F_OK) != 0, "the broker made %s", stray);
    ck_assert_msg(c != NULL, "the broker did not start");
    struct stat sst;
    ck_assert_int_eq(stat(sock, &sst), 0);
    ck_assert_int_eq(sst.st_mode & 0777, 0660);
    ck_assert_uint_eq(sst.st_gid, (gid_t)member);
    ck_assert_int_eq(mpb_call(c, "manager.shutdown", NULL, 0, NULL), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    const char *rm[] = {"/bin/rm", "-rf", top, NULL};
    char out[256];
    tb_run_prog(rm, -1, NULL, out, sizeof out);
}
END_TEST

/*--- TCP ---*/

START_TEST(tcp_beyond_loopback_needs_a_key)
{
    char err[1024];
    const char *args[] = {"--socket", "none", "--listen", "tcp://0.0.0.0:0", NULL};
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "without an authkey") != NULL, "stderr: %s", err);
    const char *args6[] = {"--socket", "none", "--listen", "tcp://[::]:0", NULL};
    ck_assert_int_eq(tb_run_server(args6, err, sizeof err), 2);
    /* --insecure does not open it to other hosts. */
    const char *args_i[] = {"--socket", "none", "--insecure", "--listen", "tcp://0.0.0.0:0", NULL};
    ck_assert_int_eq(tb_run_server(args_i, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "any host that reaches it") != NULL, "stderr: %s", err);
    /* A group/world-readable key file is refused too. */
    make_keyfile();
    chmod(keyfile, 0644);
    const char *args2[] = {"--socket", "none", "--authkey-file", keyfile, "--listen",
                           "tcp://127.0.0.1:0", NULL};
    ck_assert_int_eq(tb_run_server(args2, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "chmod 600") != NULL, "stderr: %s", err);
    drop_keyfile();
}
END_TEST

START_TEST(keyless_tcp_on_loopback_needs_insecure)
{
    /* Every local user can reach a loopback port (the Unix socket is 0600): without a
     * key the broker refuses it unless told --insecure. */
    char err[1024];
    const char *args[] = {"--socket", "none", "--listen", "tcp://127.0.0.1:0", NULL};
    ck_assert_int_eq(tb_run_server(args, err, sizeof err), 2);
    ck_assert_msg(strstr(err, "every local user could use every object") &&
                  strstr(err, "--insecure"), "stderr: %s", err);
    tb_broker t;
    tb_start(&t, 1, NULL); /* with --insecure (testutil adds it for TCP) */
    mpb_context *c = mpb_connect(t.address);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(tcp_without_a_host_is_loopback)
{
    char host[64], port[16];
    ck_assert_int_eq(mpb_parse_tcp("tcp://:7000", host, sizeof host, port, sizeof port), 0);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_str_eq(port, "7000");
    /* So it needs no key: a broker started that way serves on 127.0.0.1. */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(probe, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(probe, (struct sockaddr *)&sa, &len), 0);
    close(probe);
    char listen[64], address[64];
    snprintf(listen, sizeof listen, "tcp://:%d", ntohs(sa.sin_port));
    snprintf(address, sizeof address, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    tb_broker t;
    const char *args[] = {"--listen", listen, "--insecure", NULL};
    tb_start(&t, 0, args);
    mpb_context *c = mpb_connect(address);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST

START_TEST(tcp_any_address_with_a_key_serves)
{
    make_keyfile();
    tb_broker t;
    const char *args[] = {"--authkey-file", keyfile, NULL};
    setenv("MPBROKER_AUTHKEY", KEY, 1);
    tb_start(&t, 1, args); /* loopback TCP, with a key */
    mpb_context *c = mpb_connect(t.address);
    ck_assert_msg(c->err == MPB_OK, "%s", c->errstr);
    ck_assert_int_eq(mpb_ping(c), MPB_OK);
    mpb_free(c);
    unsetenv("MPBROKER_AUTHKEY");
    c = mpb_connect(t.address); /* over TCP without the key: refused */
    ck_assert_int_ne(mpb_ping(c), MPB_OK);
    mpb_free(c);
    ck_assert_int_eq(tb_stop(&t), 0);
    drop_keyfile();
}
END_TEST

START_TEST(unix_socket_is_private_or_group)
{
    tb_broker t;
    struct stat st;
    tb_start(&t, 0, NULL);
    ck_assert_int_eq(stat(t.sock, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(tb_stop(&t), 0);
    char gid[32];
    snprintf(gid, sizeof gid, "%lu", (unsigned long)getgid());
    const char *args[] = {"--socket-group", gid, NULL};
    tb_start(&t, 0, args);
    ck_assert_int_eq(stat(t.sock, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0660);
    ck_assert_uint_eq(st.st_gid, getgid());
    ck_assert_int_eq(tb_stop(&t), 0);
}
END_TEST


static Suite *exposure_suite(void)
{
    Suite *s = suite_create("exposure");
    TCase *tc = tcase_create("socket");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, default_socket_lives_in_a_private_directory_of_its_own);
    tcase_add_test(tc, a_broker_refuses_a_socket_path_that_is_not_its_own);
    tcase_add_test(tc, unix_socket_is_private_or_group);
    tcase_add_test(tc, socket_group_is_set_without_a_path_based_chown);
    tcase_add_test(tc, socket_group_bind_cannot_be_redirected_by_a_group_member);
    suite_add_tcase(s, tc);
    tc = tcase_create("users");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, squatting_the_default_path_is_refused_by_broker_and_client);
    tcase_add_test(tc, clients_trust_only_their_own_uid_or_root_unless_told);
    tcase_add_test(tc, peer_is_a_name_or_a_plain_uid_never_a_signed_number);
    suite_add_tcase(s, tc);
    tc = tcase_create("tcp");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, tcp_beyond_loopback_needs_a_key);
    tcase_add_test(tc, keyless_tcp_on_loopback_needs_insecure);
    tcase_add_test(tc, tcp_without_a_host_is_loopback);
    tcase_add_test(tc, tcp_any_address_with_a_key_serves);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tb_run(exposure_suite());
}
