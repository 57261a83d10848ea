/* limits.c - resource limits and exposure rules: connections (--max-clients, the file
 * descriptors they need, and the room strangers may take while authenticating), stored
 * data (--max-memory), reply size (--max-output, --max-op-items), loopback checks for
 * protected mode.
 * (The socket file's ownership and mode are sockfile.c's.)
 *
 * Where each limit is enforced: admission in main.c's accept callback; memory in
 * dispatch's arg_value (before a handler changes anything) and after manager.create;
 * output here for reads, and in conn.c for connections that stop reading. The memory
 * count itself is objects.c's (objects_mem_used).
 */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "limits.h"
#include "persist.h"

/* File descriptors the broker needs besides its connections: stdio, listeners, the
 * persistence log, libevent's own. */
#define FD_RESERVE 64

/* A number with an optional K, M or G suffix; what names it in the message ("a byte
 * count", "a number"). */
static size_t parse_scaled(const char *opt, const char *arg, size_t min, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(arg, &end, 10);
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10;
    else if (*end == 'M' || *end == 'm') shift = 20;
    else if (*end == 'G' || *end == 'g') shift = 30;
    if (shift) end++;
    if (end == arg || *end || errno || arg[0] == '-' || (shift && n > (~0ull >> shift)) ||
        (n << shift) < min) {
        fprintf(stderr, "mpbroker-server: %s wants %s >= %zu (K, M, G allowed), not '%s'\n",
                opt, what, min, arg);
        exit(2);
    }
    return (size_t)(n << shift);
}

size_t limits_parse_bytes(const char *opt, const char *arg, size_t min)
{
    return parse_scaled(opt, arg, min, "a byte count");
}

size_t limits_parse_count(const char *opt, const char *arg, size_t min)
{
    return parse_scaled(opt, arg, min, "a whole number");
}

double limits_parse_seconds(const char *opt, const char *arg)
{
    char *end;
    double s = strtod(arg, &end);
    if (end == arg || *end || !(s >= 0) || s > 1e9) {
        fprintf(stderr, "mpbroker-server: %s wants seconds >= 0, not '%s'\n", opt, arg);
        exit(2);
    }
    return s;
}

/*--- Connections ---*/

void limits_setup_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    rlim_t want = (rlim_t)g_config.max_clients + FD_RESERVE;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < want) {
        size_t fit = rl.rlim_cur > 2 * FD_RESERVE ? (size_t)rl.rlim_cur - FD_RESERVE : FD_RESERVE;
        fprintf(stderr, "mpbroker-server: only %llu file descriptors allowed (ulimit -n): "
                "--max-clients lowered from %zu to %zu\n", (unsigned long long)rl.rlim_cur,
                g_config.max_clients, fit);
        g_config.max_clients = fit;
    }
}

void limits_refuse(int fd, const char *why)
{
    /* One small write: a fresh socket always takes it. */
    msgpack_sbuffer sb = {.size = 0, .data = NULL, .alloc = 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_nil(&pk);
    msgpack_pack_array(&pk, 2);
    const char *kind = mpb_errkind_name(MPB_E_TOO_MANY_CLIENTS);
    msgpack_pack_str_with_body(&pk, kind, strlen(kind));
    msgpack_pack_str_with_body(&pk, why, strlen(why));
    msgpack_pack_nil(&pk);
    if (sb.data) (void)!send(fd, sb.data, sb.size, MSG_NOSIGNAL | MSG_DONTWAIT);
    msgpack_sbuffer_destroy(&sb);
}

void limits_setup_handshakes(void)
{
    /* Connections that authenticate can always take the place of ones still trying,
     * so the handshake caps need no room of their own: they only must not exceed
     * the whole. */
    if (g_config.max_handshakes > g_config.max_clients)
        g_config.max_handshakes = g_config.max_clients;
    if (g_config.max_handshakes_per_peer > g_config.max_handshakes)
        g_config.max_handshakes_per_peer = g_config.max_handshakes;
}

/* Log what admission did at most once a second per kind, whatever the flood. */
static void log_admission(const char *what, const char *why, unsigned long *count,
                          time_t *last)
{
    ++*count;
    time_t now = time(NULL);
    if (g_config.quiet || now == *last) return;
    *last = now;
    fprintf(stderr, "mpbroker-server: %s: %s (%lu so far)\n", what, why, *count);
}

bool limits_admit(int fd, bool tcp)
{
    static unsigned long refused, evicted;
    static time_t refused_log, evicted_log;
    char why[160];
    if (auth_make_room_for_peer(fd, tcp, why, sizeof why)) /* --max-handshakes-per-peer */
        log_admission("closed a connection still authenticating to make room", why, &evicted,
                      &evicted_log);
    bool full = conn_count() >= g_config.max_clients;
    if (!full && auth_pending() < g_config.max_handshakes) return true;
    /* Full, or too many authenticating: a connection that has not authenticated yet
     * makes room (the oldest: a client with the key needs only one round trip), so
     * strangers never lock out those with the key. */
    snprintf(why, sizeof why, full ? "the broker serves at most %zu connections "
             "(--max-clients)" : "at most %zu connections may be authenticating at once "
             "(--max-handshakes)", full ? g_config.max_clients : g_config.max_handshakes);
    if (auth_evict_oldest(why)) {
        log_admission("closed a connection still authenticating to make room", why, &evicted,
                      &evicted_log);
        return true;
    }
    limits_refuse(fd, why);
    log_admission("refused a connection", why, &refused, &refused_log);
    return false;
}

bool limits_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        return (ntohl(s->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return sa->sa_family == AF_UNIX;
}

/*--- Memory ---*/

/* The lowest number in file over the cgroup root + cg and each of its ancestors (a
 * parent's limit binds its children: a service in a limited slice), or 0 when none
 * has one we can read. Cuts cg down as it climbs. */
static uint64_t lowest_up(const char *root, char *cg, const char *file)
{
    uint64_t limit = 0;
    for (;;) {
        char path[640];
        snprintf(path, sizeof path, "%s%s/%s", root, cg, file);
        FILE *m = fopen(path, "r");
        unsigned long long n;
        if (m && fscanf(m, "%llu", &n) == 1 && n > 0 && (limit == 0 || n < limit)) limit = n;
        if (m) fclose(m); /* "max" (v2) reads as no number: no limit */
        char *slash = strrchr(cg, '/');
        if (!slash) return limit;
        *slash = '\0';
    }
}

/* The memory limit of this process's cgroup or of any above it (v2 memory.max, v1
 * memory.limit_in_bytes), or 0 when there is none we can read. */
static uint64_t cgroup_limit(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512];
    uint64_t limit = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *ctl = strchr(line, ':'), *cg = ctl ? strchr(ctl + 1, ':') : NULL;
        if (!cg) continue;
        *cg++ = '\0';
        ctl++;
        uint64_t n;
        if (strcmp(line, "0") == 0 && ctl[0] == '\0') /* v2: "0::/path" */
            n = lowest_up("/sys/fs/cgroup", cg, "memory.max");
        else if (strstr(ctl, "memory")) /* v1: "N:memory:/path" */
            n = lowest_up("/sys/fs/cgroup/memory", cg, "memory.limit_in_bytes");
        else
            continue;
        if (n > 0 && (limit == 0 || n < limit)) limit = n;
    }
    if (f) fclose(f);
    return limit;
}

size_t limits_default_max_memory(void)
{
    /* Redis leaves maxmemory off on 64-bit systems (and sets 3 GB on 32-bit ones); a
     * broker any client can fill would rather refuse a write than meet the OOM killer,
     * so: half of what the process may use, physical RAM or its container's limit,
     * leaving the other half for what the count leaves out (allocator overhead,
     * buffers, requests being decoded). */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    uint64_t cg = cgroup_limit();
    if (cg && (ram == 0 || cg < ram)) ram = cg;
    if (ram == 0) return 0; /* unknown: no default limit */
    return ram / 2 > SIZE_MAX ? SIZE_MAX : (size_t)(ram / 2);
}

/* Writes that take values only to find and remove things: never refused. */
static bool frees_memory(const char *method)
{
    /* set.difference_update and intersection_update only remove: their OTHER is read,
     * never stored. */
    static const char *const suffixes[] = {".remove", ".discard", ".delitem", ".delattr",
                                           ".pop", ".difference_update",
                                           ".intersection_update", NULL};
    const char *dot = strrchr(method, '.');
    for (int i = 0; dot && suffixes[i]; i++)
        if (strcmp(dot, suffixes[i]) == 0) return true;
    return false;
}

static bool over_memory(mpb_req *r, size_t adding)
{
    size_t used = objects_mem_used();
    if (adding <= g_config.max_memory && used <= g_config.max_memory - adding) return false;
    reply_error(r, MPB_E_OUT_OF_MEMORY, "%s: the shared data would pass the %zu-byte "
                "--max-memory limit (%zu bytes used); nothing was changed", r->info->name,
                g_config.max_memory, used);
    return true;
}

bool limits_memory_for_bytes(mpb_req *r, size_t bytes)
{
    if (g_config.max_memory == 0 || !(r->info->flags & MPB_F_WRITE) ||
        frees_memory(r->info->name) || persist_is_replay(r->conn))
        return true; /* what was stored before a restart is loaded whatever the limit */
    size_t total = r->mem_granted + bytes < bytes ? SIZE_MAX : r->mem_granted + bytes;
    if (over_memory(r, total)) return false;
    r->mem_granted = total;
    return true;
}

bool limits_memory_for_value(mpb_req *r, const mpb_value *v)
{
    return limits_memory_for_bytes(r, objects_value_cost(v));
}

bool limits_memory_after_create(mpb_req *r)
{
    return g_config.max_memory == 0 || persist_is_replay(r->conn) || !over_memory(r, 0);
}

/*--- Output ---*/

void limits_check_reply(mpb_req *r, size_t mark)
{
    mpb_conn *c = r->conn;
    if (g_config.max_output == 0 || (r->info->flags & MPB_F_WRITE) || c->out.size <= mark ||
        c->out.size - c->out_sent <= g_config.max_output)
        return;
    /* A read changed nothing: answering TooLarge instead loses nothing, and the client
     * learns why (a write's reply must stand: its effect happened). */
    size_t reply = c->out.size - mark;
    c->out.size = mark;
    reply_error(r, MPB_E_TOO_LARGE, "%s: a reply of %zu bytes would take this connection's "
                "unsent output over the %zu-byte --max-output limit", r->info->name, reply,
                g_config.max_output);
}

/*--- Items per reply ---*/

bool limits_reply_items(mpb_req *r, size_t n, const char *walk)
{
    if (g_config.max_op_items == 0 || n <= g_config.max_op_items) return true;
    /* The broker is one loop: building a reply of millions of items holds every other
     * client meanwhile. The cursor form reads the same in bounded requests. */
    reply_error(r, MPB_E_TOO_LARGE, "%s: %zu items in one reply, over the --max-op-items "
                "limit of %zu: walk it with %s (docs/PROTOCOL.md, Cursors)", r->info->name, n,
                g_config.max_op_items, walk);
    return false;
}

size_t limits_parse_op_items(const char *arg)
{
    size_t n = limits_parse_bytes("--max-op-items", arg, 0);
    if (n != 0 && n < MPB_PAGE_MAX) {
        fprintf(stderr, "mpbroker-server: --max-op-items wants 0 (no limit) or at least %d, "
                "not '%s'\n", MPB_PAGE_MAX, arg);
        exit(2);
    }
    return n;
}
