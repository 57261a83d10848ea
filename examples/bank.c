/* bank.c - processes move money between accounts in a shared dict; the total never
 * changes.
 *
 * With a shared Lock (the default), each transfer reads two balances and writes both
 * back: without the lock two processes would interleave and create or destroy money.
 * A holder killed in the middle of a transfer leaves it half done, though (the broker
 * frees the lock of a dead connection, but cannot undo its writes).
 *
 * Lock-free (-l): a transfer is one atomic batch, [manager.expect ACCOUNTS VERSION,
 * dict.incr FROM -AMOUNT, dict.incr TO +AMOUNT], built after reading the dict's version
 * and the payer's balance, and sent again from the start on Conflict (another process
 * wrote in between). A process killed at any moment leaves whole transfers only: -k
 * kills that many workers at random moments, and the total still holds.
 *
 *   bank [-s ADDRESS] [-p PROCS] [-n TRANSFERS] [-a ACCOUNTS] [-l] [-k KILLS]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mpbroker.h"
#include "options.h"

static const char *address;

static int fail(mpb_context *c, const char *what)
{
    fprintf(stderr, "bank: %s: %s %s\n", what, c ? c->errkind : "", c ? c->errstr : "out of memory");
    mpb_free(c);
    return 1;
}

/* Sum of every balance. */
static int total(mpb_context *c, mpb_ref accounts, int64_t *sum)
{
    mpb_value all;
    if (mpb_dict_copy(c, accounts, &all) != MPB_OK) return -1;
    *sum = 0;
    size_t it = 0;
    mpb_map_entry *e;
    while ((e = mpb_map_next(all.v.m, &it))) *sum += e->val.v.i;
    mpb_value_free(&all);
    return 0;
}

/* One lock-free transfer: 1 done, 0 a Conflict (try again), -1 failed. */
static int transfer_atomic(mpb_context *c, mpb_ref accounts, int64_t from, int64_t to,
                           int64_t amount)
{
    int64_t version;
    mpb_value k = mpb_int(from), bal;
    if (mpb_version(c, accounts, &version) != MPB_OK) return -1;
    if (mpb_dict_getitem(c, accounts, &k, &bal) != MPB_OK) return -1;
    if (bal.v.i < amount) return 1; /* not enough: nothing to do */
    mpb_batch *b = mpb_batch_new();
    if (!b) return -1;
    mpb_value pay[3] = {mpb_refv(accounts), mpb_int(from), mpb_int(-amount)};
    mpb_value get[3] = {mpb_refv(accounts), mpb_int(to), mpb_int(amount)};
    mpb_batch_expect(b, accounts, version);
    mpb_batch_add(b, "dict.incr", pay, 3);
    mpb_batch_add(b, "dict.incr", get, 3);
    int rc = mpb_atomic(c, b, NULL);
    mpb_batch_free(b);
    if (rc == MPB_OK) return 1;
    return strcmp(c->errkind, "Conflict") == 0 ? 0 : -1;
}

static int worker_atomic(mpb_ref accounts, int id, int transfers, int naccounts)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    srand((unsigned)id * 7919u + 1);
    for (int t = 0; t < transfers; t++) {
        int64_t from = rand() % naccounts, to = rand() % naccounts, amount = rand() % 50;
        int r;
        while ((r = transfer_atomic(c, accounts, from, to, amount)) == 0) {
        }
        if (r < 0) return fail(c, "manager.atomic");
    }
    mpb_free(c);
    return 0;
}

static int worker(mpb_ref accounts, mpb_ref lock, int id, int transfers, int naccounts)
{
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    srand((unsigned)id * 7919u + 1);
    for (int t = 0; t < transfers; t++) {
        mpb_value from = mpb_int(rand() % naccounts), to = mpb_int(rand() % naccounts), a, b;
        int64_t amount = rand() % 50;
        if (mpb_lock_acquire(c, lock, -1, NULL) != MPB_OK) return fail(c, "lock.acquire");
        if (mpb_dict_getitem(c, accounts, &from, &a) != MPB_OK) return fail(c, "dict.getitem");
        if (a.v.i >= amount) {
            mpb_value na = mpb_int(a.v.i - amount);
            if (mpb_dict_setitem(c, accounts, &from, &na) != MPB_OK ||
                mpb_dict_getitem(c, accounts, &to, &b) != MPB_OK)
                return fail(c, "dict");
            mpb_value nb = mpb_int(b.v.i + amount);
            if (mpb_dict_setitem(c, accounts, &to, &nb) != MPB_OK) return fail(c, "dict.setitem");
        }
        if (mpb_lock_release(c, lock) != MPB_OK) return fail(c, "lock.release");
    }
    mpb_free(c);
    return 0;
}

int main(int argc, char **argv)
{
    int procs = 4, transfers = 500, naccounts = 10, kills = 0, opt;
    bool lockfree = false;
    ex_prog = "bank";
    ex_usage = "usage: bank [-s ADDRESS] [-p PROCS] [-n TRANSFERS] [-a ACCOUNTS] [-l] [-k KILLS]\n"
    "  -s ADDRESS    broker address: unix:PATH or tcp://HOST:PORT (default\n"
    "                $MPBROKER_ADDRESS, else the default socket)\n"
    "  -p PROCS      processes moving money, 1..1000 (default 4)\n"
    "  -n TRANSFERS  transfers per process, 0..10000000 (default 500)\n"
    "  -a ACCOUNTS   accounts of 1000 each, 1..100000 (default 10)\n"
    "  -l            lock-free: each transfer an atomic batch guarded by the version\n"
    "  -k KILLS      SIGKILL that many workers at random moments, 0..1000 (default 0)\n"
    "  -h, --help    this text\n"
    "  -V, --version the version\n";
    ex_early(argc, argv);
    while ((opt = getopt(argc, argv, "s:p:n:a:lk:")) != -1) {
        if (opt == 's') address = optarg;
        else if (opt == 'p') procs = (int)ex_count("-p", optarg, 1, 1000);
        else if (opt == 'n') transfers = (int)ex_count("-n", optarg, 0, 10000000);
        else if (opt == 'a') naccounts = (int)ex_count("-a", optarg, 1, 100000);
        else if (opt == 'l') lockfree = true;
        else if (opt == 'k') kills = (int)ex_count("-k", optarg, 0, 1000);
        else ex_bad_option();
    }
    ex_no_operands(optind, argc, argv);
    mpb_context *c = mpb_connect(address);
    if (!c || c->err) return fail(c, "connect");
    mpb_ref accounts, lock;
    if (mpb_create(c, "dict", NULL, &accounts) != MPB_OK || mpb_create(c, "lock", NULL, &lock) != MPB_OK)
        return fail(c, "create");
    for (int i = 0; i < naccounts; i++) {
        mpb_value k = mpb_int(i), v = mpb_int(1000);
        if (mpb_dict_setitem(c, accounts, &k, &v) != MPB_OK) return fail(c, "dict.setitem");
    }
    int64_t before, after;
    if (total(c, accounts, &before) < 0) return fail(c, "total");
    printf("total before: %lld\n", (long long)before);
    fflush(stdout);
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    if (!pids) return fail(c, "calloc");
    for (int p = 0; p < procs; p++)
        if ((pids[p] = fork()) == 0)
            _exit(lockfree ? worker_atomic(accounts, p, transfers, naccounts)
                           : worker(accounts, lock, p, transfers, naccounts));
    srand((unsigned)getpid());
    for (int k = 0; k < kills; k++) { /* a worker killed mid-flight: no chance to finish */
        usleep((useconds_t)(1000 + rand() % 20000));
        kill(pids[rand() % procs], SIGKILL);
    }
    int st, failed = 0;
    for (int p = 0; p < procs; p++)
        if (wait(&st) < 0 || (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && kills) &&
                              (!WIFEXITED(st) || WEXITSTATUS(st))))
            failed++;
    free(pids);
    if (total(c, accounts, &after) < 0) return fail(c, "total");
    printf("total after: %lld (%d processes, %d transfers each%s)\n", (long long)after, procs,
           transfers, lockfree ? ", lock-free" : "");
    mpb_free(c);
    return failed || after != before ? 1 : 0;
}
