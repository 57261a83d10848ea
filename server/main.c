/* main.c - mpbroker-server: options, listening sockets, signals, the loop.
 *
 * This file only listens and accepts; connections are conn.c's, requests dispatch.c's.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "auth.h"
#include "limits.h"
#include "mpb_address.h"
#include "persist.h"
#include "server.h"
#include "sockfile.h"
#include "tls.h"

mpb_config g_config = {.slowlog_us = MPB_DEFAULT_SLOWLOG_US, .slowlog_len = MPB_DEFAULT_SLOWLOG_LEN,
                       .max_op_items = MPB_DEFAULT_MAX_OP_ITEMS,
                       .max_msg = MPB_READER_DEFAULT_MAX_MSG, .max_depth = MPB_READER_MAX_DEPTH,
                       .max_clients = LIMITS_DEFAULT_MAX_CLIENTS,
                       .max_output = LIMITS_DEFAULT_MAX_OUTPUT,
                       .output_timeout = LIMITS_DEFAULT_OUTPUT_TIMEOUT,
                       .auth_timeout = LIMITS_DEFAULT_AUTH_TIMEOUT,
                       .max_handshakes = LIMITS_DEFAULT_MAX_HANDSHAKES,
                       .max_handshakes_per_peer = LIMITS_DEFAULT_MAX_HANDSHAKES_PER_PEER};
bool g_shutdown_requested;

static struct event_base *base;
static struct evconnlistener *listeners[17];
static int nlisteners;
static char socket_path[108];
static const char *socket_group; /* --socket-group, or NULL */
static bool insecure;             /* --insecure: keyless TCP on loopback allowed */
static struct event *accept_retry; /* re-enables the listeners after EMFILE */
#define DRAIN_SECONDS 5.0           /* at shutdown, for clients slow to read replies */

void server_stop(void)
{
    g_shutdown_requested = true;
    event_base_loopexit(base, NULL);
}

/* A byte count as --help writes it: "16 MiB", "64 KiB", "100 B". */
static const char *human_bytes(char *buf, size_t n, size_t bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB"};
    int u = 0;
    while (u < 3 && bytes >= 1024 && bytes % 1024 == 0) bytes /= 1024, u++;
    snprintf(buf, n, "%zu %s", bytes, units[u]);
    return buf;
}

static void usage(FILE *f)
{
    char def[108], msg[32], out[32], mem[32], compact[32];
    fprintf(f,
            "usage: mpbroker-server [options]\n"
            "\n"
            "The mpbroker shared-object broker: lists, dicts, namespaces, sets, queues,\n"
            "locks, semaphores, conditions, events, barriers, values and arrays shared\n"
            "between processes over MessagePack-RPC (see docs/PROTOCOL.md).\n"
            "BYTES take K, M and G suffixes (1024-based): 512K, 16M, 1G.\n"
            "\n"
            "  -s, --socket PATH       Unix socket to listen on; --socket none: none.\n"
            "                          Default: $MPBROKER_ADDRESS when it is unix:PATH\n"
            "                          (tcp://HOST:PORT stands for --socket none --listen\n"
            "                          tcp://HOST:PORT), else\n"
            "                            %s\n"
            "                          in a directory of its own that must be this\n"
            "                          user's; mode 0600\n"
            "  -l, --listen tcp://HOST:PORT\n"
            "                          also listen on TCP (repeatable); tcp://:PORT is\n"
            "                          127.0.0.1. Needs an authkey, or --insecure\n"
            "      --insecure          allow --listen on loopback without an authkey:\n"
            "                          every local user can then use every object\n"
            "      --tls-listen tls://HOST:PORT\n"
            "                          also listen for TLS clients (repeatable; TLS 1.2\n"
            "                          and 1.3 only, no renegotiation). Needs --tls-cert\n"
            "                          and --tls-key; beyond loopback an authkey or\n"
            "                          --tls-ca, on loopback one of them or --insecure\n"
            "      --tls-cert FILE     the server's certificate (PEM, chain after it)\n"
            "      --tls-key FILE      its private key (PEM). SIGHUP reloads both (and\n"
            "                          --tls-ca) for new connections; open ones stay\n"
            "      --tls-ca FILE       require client certificates signed by a CA in\n"
            "                          FILE (PEM): mutual TLS\n"
            "      --max-message BYTES largest request accepted (default %s)\n"
            "      --max-depth N       deepest nesting accepted, 3..%d (default %d)\n"
            "      --data-dir DIR      persist state in DIR (append-only log + snapshot);\n"
            "                          off by default\n"
            "      --fsync POLICY      always (fsync before replies: one per loop round),\n"
            "                          everysec (default), or no (leave it to the OS)\n"
            "      --compact-size BYTES\n"
            "                          compact the log into a snapshot past BYTES (and\n"
            "                          twice the snapshot; default %s)\n"
            "      --repair            with --data-dir: load it, cutting a damaged log at\n"
            "                          the damage (the cut bytes are kept in\n"
            "                          DIR/log.N.mpb.cut-OFFSET), then exit; run it when\n"
            "                          a start was refused and said to\n"
            "      --authkey-file FILE clients must prove they know the key in FILE (mode\n"
            "                          0600) by the auth.* handshake; default\n"
            "                          $MPBROKER_AUTHKEY_FILE, else $MPBROKER_AUTHKEY,\n"
            "                          else none\n"
            "      --auth-timeout S    close a connection that has not authenticated after\n"
            "                          S seconds (default %g; 0: never); bounds the TLS\n"
            "                          handshake too\n"
            "      --max-handshakes N  connections authenticating at once (default %d);\n"
            "                          past it the oldest of them is closed for a new one\n"
            "      --max-handshakes-per-peer N\n"
            "                          the same from one other uid (Unix socket) or IP\n"
            "                          address (default %d); past it that peer's oldest\n"
            "                          is closed for the new one\n"
            "      --socket-group GROUP\n"
            "                          the Unix socket is 0660 and belongs to GROUP\n"
            "      --max-clients N     connections served at once (default %d); more are\n"
            "                          refused with TooManyClients\n"
            "      --max-output BYTES  unsent replies per connection (default %s;\n"
            "                          0: no limit): a read over it is TooLarge, else the\n"
            "                          connection is closed\n"
            "      --output-timeout S  close a connection that reads none of its replies\n"
            "                          for S seconds (default %g; 0: never)\n"
            "      --max-memory BYTES  stored data (default half of RAM or of the\n"
            "                          cgroup's limit, here %s; 0: none); writes\n"
            "                          past it are OutOfMemory\n"
            "      --slowlog-us N      record requests that run N microseconds or more in\n"
            "                          the slow log, manager.slowlog (default %d; K, M\n"
            "                          allowed: 10K is 10240)\n"
            "      --slowlog-len N     entries the slow log keeps (default %d; 0: none)\n"
            "      --max-op-items N    items a read answers in one reply (default 1M, i.e.\n"
            "                          %zu; 0: no limit; else at least %d): a whole\n"
            "                          list.copy, dict.items... over it is TooLarge, and\n"
            "                          the cursor forms (list.slice...) walk it\n"
            "  -q, --quiet             no start-up message, no connection log\n"
            "  -h, --help              this text\n"
            "  -V, --version           the version\n"
            "\n"
            "SIGINT or SIGTERM (or manager.shutdown) stop the broker cleanly: no new\n"
            "connections, requests already received are answered, the socket file is\n"
            "removed, exit 0 (1 if --data-dir could not store every write). With\n"
            "--tls-listen, SIGHUP reloads the TLS certificate and key.\n",
            mpb_default_socket_path(def, sizeof def),
            human_bytes(msg, sizeof msg, MPB_READER_DEFAULT_MAX_MSG),
            MPB_READER_MAX_DEPTH, MPB_READER_MAX_DEPTH,
            human_bytes(compact, sizeof compact, (size_t)PERSIST_DEFAULT_COMPACT_MIN),
            LIMITS_DEFAULT_AUTH_TIMEOUT,
            LIMITS_DEFAULT_MAX_HANDSHAKES, LIMITS_DEFAULT_MAX_HANDSHAKES_PER_PEER,
            LIMITS_DEFAULT_MAX_CLIENTS,
            human_bytes(out, sizeof out, LIMITS_DEFAULT_MAX_OUTPUT),
            LIMITS_DEFAULT_OUTPUT_TIMEOUT,
            human_bytes(mem, sizeof mem, limits_default_max_memory() & ~(size_t)0xFFFFF),
            MPB_DEFAULT_SLOWLOG_US, MPB_DEFAULT_SLOWLOG_LEN, MPB_DEFAULT_MAX_OP_ITEMS,
            MPB_PAGE_MAX);
}

/* arg: non-NULL on a --tls-listen listener. */
static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    (void)salen;
    bool tcp = sa->sa_family == AF_INET || sa->sa_family == AF_INET6;
    if (!limits_admit(fd, tcp)) { /* --max-clients, --max-handshakes[-per-peer] */
        close(fd);
        return;
    }
    if (tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    mpb_conn *c = conn_new(base, fd, tcp);
    if (!c) close(fd);
    else if (arg) conn_start_tls(c); /* closes c when it fails */
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    /* EMFILE and friends: keep serving the connections we have. The pending connection
     * stays queued and would fire again at once: pause accepting for a moment. */
    int e = errno;
    fprintf(stderr, "mpbroker-server: accept: %s\n", strerror(e));
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        for (int i = 0; i < nlisteners; i++) evconnlistener_disable(listeners[i]);
        struct timeval pause = {0, 100000};
        evtimer_add(accept_retry, &pause);
    }
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    for (int i = 0; i < nlisteners; i++) evconnlistener_enable(listeners[i]);
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    if (tls_reload() == 0 && !g_config.quiet)
        fprintf(stderr, "mpbroker-server: SIGHUP: TLS certificate and key reloaded\n");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    (void)arg;
    server_stop();
}

static void add_listener(struct evconnlistener *l, const char *what)
{
    if (!l) {
        fprintf(stderr, "mpbroker-server: cannot listen on %s: %s\n", what, strerror(errno));
        exit(1);
    }
    evconnlistener_set_error_cb(l, on_accept_error);
    listeners[nlisteners++] = l;
    if (!g_config.quiet) fprintf(stderr, "mpbroker-server: listening on %s\n", what);
}

static void listen_unix(const char *path, bool is_default)
{
    int fd = sockfile_listen(path, is_default, socket_group); /* exits when it cannot */
    snprintf(socket_path, sizeof socket_path, "%s", path);
    struct evconnlistener *l = evconnlistener_new(
        base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    char what[128];
    snprintf(what, sizeof what, "unix:%s", path);
    add_listener(l, what);
}

/* A --listen tcp://HOST:PORT or, with tls, a --tls-listen tls://HOST:PORT. */
static void listen_tcp(const char *addr, bool tls)
{
    char host[256], port[16];
    if ((tls ? mpb_parse_tls : mpb_parse_tcp)(addr, host, sizeof host, port, sizeof port) < 0) {
        fprintf(stderr, "mpbroker-server: bad --%slisten address '%s' (want %s://HOST:PORT)\n",
                tls ? "tls-" : "", addr, tls ? "tls" : "tcp");
        exit(2);
    }
    struct evutil_addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE}, *ai;
    int rc = evutil_getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "mpbroker-server: %s: %s\n", addr, evutil_gai_strerror(rc));
        exit(2);
    }
    /* Protected mode, stricter than Redis's: a TCP port, even on loopback, is open to
     * every local user (the Unix socket is the owner's alone), so without a key it
     * takes --insecure, and beyond loopback a key, always. */
    bool loopback = limits_is_loopback(ai->ai_addr);
    /* Over TLS, client certificates (--tls-ca) prove who connects as a key does. */
    bool certs = tls && g_tls.ca;
    if (!g_config.authkey && !certs && (!insecure || !loopback)) {
        fprintf(stderr, "mpbroker-server: refusing to listen on %s without an authkey: "
                "%s could use every object. Give --authkey-file (or $MPBROKER_AUTHKEY)%s%s\n",
                addr, loopback ? "every local user" : "any host that reaches it",
                tls ? ", or --tls-ca to require client certificates" : "",
                loopback ? ", or --insecure to accept that" : "");
        if (socket_path[0]) unlink(socket_path);
        exit(2);
    }
    if (!g_config.authkey && !certs && !g_config.quiet)
        fprintf(stderr, "mpbroker-server: warning: --insecure: %s has no authkey: every "
                "local user can use every object\n", addr);
    struct evconnlistener *l = evconnlistener_new_bind(
        base, on_accept, tls ? (void *)&g_tls : NULL,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 1024, ai->ai_addr,
        (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    /* Port 0: the kernel picked one; say which, or nobody could connect. */
    char what[300];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (l && strcmp(port, "0") == 0 &&
        getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &sl) == 0) {
        unsigned p = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                    : ((struct sockaddr_in *)&ss)->sin_port);
        snprintf(what, sizeof what, "%s://%s%s%s:%u", tls ? "tls" : "tcp",
                 strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", p);
        addr = what;
    }
    add_listener(l, addr);
}

/* The default address, as clients take it: $MPBROKER_ADDRESS when set (unix:PATH or
 * PATH: that socket; tcp://HOST:PORT: listen there, and on no Unix socket), else def.
 * Called only when --socket was not given. */
static const char *address_from_env(const char *def)
{
    const char *env = getenv("MPBROKER_ADDRESS");
    if (env == NULL || env[0] == '\0') return def;
    if (strncmp(env, "tcp://", 6) == 0) {
        if (g_config.ntcp == 8) {
            fprintf(stderr, "mpbroker-server: at most 8 --listen addresses\n");
            exit(2);
        }
        g_config.tcp[g_config.ntcp++] = env;
        return "none";
    }
    return strncmp(env, "unix:", 5) == 0 ? env + 5 : env;
}

static void parse_args(int argc, char **argv, const char **sock, const char **authkey_file)
{
    enum { OPT_MAX_MSG = 256, OPT_MAX_DEPTH, OPT_DATA_DIR, OPT_FSYNC, OPT_COMPACT,
           OPT_AUTHKEY_FILE, OPT_SOCKET_GROUP, OPT_MAX_CLIENTS, OPT_MAX_OUTPUT,
           OPT_OUTPUT_TIMEOUT, OPT_MAX_MEMORY, OPT_AUTH_TIMEOUT, OPT_INSECURE,
           OPT_MAX_HANDSHAKES, OPT_MAX_HANDSHAKES_PER_PEER, OPT_REPAIR, OPT_TLS_LISTEN,
           OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA,
           OPT_SLOWLOG_US, OPT_SLOWLOG_LEN, OPT_MAX_OP_ITEMS };
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"listen", required_argument, NULL, 'l'},
        {"max-message", required_argument, NULL, OPT_MAX_MSG},
        {"max-depth", required_argument, NULL, OPT_MAX_DEPTH},
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"fsync", required_argument, NULL, OPT_FSYNC},
        {"compact-size", required_argument, NULL, OPT_COMPACT},
        {"repair", no_argument, NULL, OPT_REPAIR},
        {"authkey-file", required_argument, NULL, OPT_AUTHKEY_FILE},
        {"auth-timeout", required_argument, NULL, OPT_AUTH_TIMEOUT},
        {"socket-group", required_argument, NULL, OPT_SOCKET_GROUP},
        {"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
        {"max-output", required_argument, NULL, OPT_MAX_OUTPUT},
        {"output-timeout", required_argument, NULL, OPT_OUTPUT_TIMEOUT},
        {"max-memory", required_argument, NULL, OPT_MAX_MEMORY},
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES},
        {"max-handshakes-per-peer", required_argument, NULL, OPT_MAX_HANDSHAKES_PER_PEER},
        {"tls-listen", required_argument, NULL, OPT_TLS_LISTEN},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"tls-ca", required_argument, NULL, OPT_TLS_CA},
        {"slowlog-us", required_argument, NULL, OPT_SLOWLOG_US},
        {"slowlog-len", required_argument, NULL, OPT_SLOWLOG_LEN},
        {"max-op-items", required_argument, NULL, OPT_MAX_OP_ITEMS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "s:l:qhV", opts, NULL)) != -1) {
        switch (ch) {
        case 's': *sock = optarg; break;
        case 'l':
            if (g_config.ntcp == 8) {
                fprintf(stderr, "mpbroker-server: at most 8 --listen addresses\n");
                exit(2);
            }
            g_config.tcp[g_config.ntcp++] = optarg;
            break;
        case OPT_MAX_MSG:
            g_config.max_msg = limits_parse_bytes("--max-message", optarg, 64);
            break;
        case OPT_DATA_DIR: g_persist.dir = optarg; break;
        case OPT_FSYNC:
            if (!strcmp(optarg, "always")) g_persist.fsync = MPB_FSYNC_ALWAYS;
            else if (!strcmp(optarg, "everysec")) g_persist.fsync = MPB_FSYNC_EVERYSEC;
            else if (!strcmp(optarg, "no")) g_persist.fsync = MPB_FSYNC_NO;
            else {
                fprintf(stderr, "mpbroker-server: --fsync wants always, everysec or no, not "
                        "'%s'\n", optarg);
                exit(2);
            }
            break;
        case OPT_COMPACT:
            g_persist.compact_min = limits_parse_bytes("--compact-size", optarg, 0);
            break;
        case OPT_REPAIR: g_persist.repair = true; break;
        case OPT_MAX_DEPTH:
            g_config.max_depth = (int)strtol(optarg, &end, 10);
            if (*end || g_config.max_depth < 3 || g_config.max_depth > MPB_READER_MAX_DEPTH) {
                fprintf(stderr, "mpbroker-server: --max-depth wants 3..%d, not '%s'\n",
                        MPB_READER_MAX_DEPTH, optarg);
                exit(2);
            }
            break;
        case OPT_AUTHKEY_FILE: *authkey_file = optarg; break;
        case OPT_SOCKET_GROUP: socket_group = optarg; break;
        case OPT_AUTH_TIMEOUT:
            g_config.auth_timeout = limits_parse_seconds("--auth-timeout", optarg);
            break;
        case OPT_MAX_CLIENTS:
            g_config.max_clients = limits_parse_count("--max-clients", optarg, 1);
            break;
        case OPT_MAX_OUTPUT:
            g_config.max_output = limits_parse_bytes("--max-output", optarg, 0);
            break;
        case OPT_OUTPUT_TIMEOUT:
            g_config.output_timeout = limits_parse_seconds("--output-timeout", optarg);
            break;
        case OPT_MAX_MEMORY:
            g_config.max_memory = limits_parse_bytes("--max-memory", optarg, 0);
            break;
        case OPT_INSECURE: insecure = true; break;
        case OPT_MAX_HANDSHAKES:
            g_config.max_handshakes = limits_parse_count("--max-handshakes", optarg, 1);
            break;
        case OPT_MAX_HANDSHAKES_PER_PEER:
            g_config.max_handshakes_per_peer =
                limits_parse_count("--max-handshakes-per-peer", optarg, 1);
            break;
        case OPT_TLS_LISTEN:
            if (g_tls.nlisten == 8) {
                fprintf(stderr, "mpbroker-server: at most 8 --tls-listen addresses\n");
                exit(2);
            }
            g_tls.listen[g_tls.nlisten++] = optarg;
            break;
        case OPT_TLS_CERT: g_tls.cert = optarg; break;
        case OPT_TLS_KEY: g_tls.key = optarg; break;
        case OPT_TLS_CA: g_tls.ca = optarg; break;
        case OPT_SLOWLOG_US:
            g_config.slowlog_us = limits_parse_count("--slowlog-us", optarg, 0);
            break;
        case OPT_SLOWLOG_LEN:
            g_config.slowlog_len = limits_parse_count("--slowlog-len", optarg, 0);
            if (g_config.slowlog_len > 1000000) {
                fprintf(stderr, "mpbroker-server: --slowlog-len wants at most 1000000, not '%s'\n",
                        optarg);
                exit(2);
            }
            break;
        case OPT_MAX_OP_ITEMS: g_config.max_op_items = limits_parse_op_items(optarg); break;
        case 'q': g_config.quiet = true; break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("mpbroker-server %s\n", MPB_VERSION); exit(0);
        default: /* getopt said which option, in one line */
            fprintf(stderr, "mpbroker-server --help lists the options\n");
            exit(2);
        }
    }
    if (g_persist.repair && !g_persist.dir) {
        fprintf(stderr, "mpbroker-server: --repair needs --data-dir\n");
        exit(2);
    }
    if (optind < argc) {
        fprintf(stderr, "mpbroker-server: unexpected argument '%s'\n"
                "mpbroker-server --help lists the options\n", argv[optind]);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    char def[108];
    const char *sock = mpb_default_socket_path(def, sizeof def);
    const char *authkey_file = NULL;
    g_config.max_memory = SIZE_MAX; /* until parse_args: not given */
    parse_args(argc, argv, &sock, &authkey_file);
    if (sock == def) sock = address_from_env(def);
    if (g_config.max_memory == SIZE_MAX) g_config.max_memory = limits_default_max_memory();
    if (auth_load_key(authkey_file) < 0) return 2;
    limits_setup_nofile();
    limits_setup_handshakes();
    if ((g_tls.cert || g_tls.key || g_tls.ca) && g_tls.nlisten == 0) {
        fprintf(stderr, "mpbroker-server: --tls-cert, --tls-key and --tls-ca need --tls-listen\n");
        return 2;
    }
    if (tls_setup() < 0) return 2;
    if (strcmp(sock, "none") == 0) sock = NULL;
    if (!sock && g_config.ntcp == 0 && g_tls.nlisten == 0 && !g_persist.repair) {
        fprintf(stderr, "mpbroker-server: nothing to listen on\n");
        return 2;
    }
    /* libevent writes with writev, without MSG_NOSIGNAL: a vanished client must not
     * kill the broker. */
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (!base) {
        fprintf(stderr, "mpbroker-server: event_base_new failed\n");
        return 1;
    }
    mpb_hash_randomize(); /* before any map exists */
    objects_init();
    objects_new_id_space(); /* a state loaded next keeps its own */
    persist_open(base); /* before listening: clients see the loaded state */
    if (g_persist.repair) { /* loaded (and cut where it had to be): done */
        int rc = persist_close() ? 0 : 1;
        objects_shutdown();
        auth_unload_key();
        event_base_free(base);
        fprintf(stderr, "mpbroker-server: --repair: %s loads; start the broker without "
                "--repair\n", g_persist.dir);
        return rc;
    }
    admin_init(base);
    accept_retry = evtimer_new(base, on_accept_retry, NULL);
    if (sock) listen_unix(sock, sock == def);
    for (int i = 0; i < g_config.ntcp; i++) listen_tcp(g_config.tcp[i], false);
    for (int i = 0; i < g_tls.nlisten; i++) listen_tcp(g_tls.listen[i], true);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, NULL);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, NULL);
    /* Only with TLS: without it SIGHUP keeps its default (the broker stops), as before. */
    struct event *sighup = g_tls.nlisten ? evsignal_new(base, SIGHUP, on_sighup, NULL) : NULL;
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    if (sighup) event_add(sighup, NULL);

    event_base_dispatch(base);

    for (int i = 0; i < nlisteners; i++) evconnlistener_free(listeners[i]);
    if (socket_path[0]) unlink(socket_path);
    conn_drain_all(base, DRAIN_SECONDS); /* answer what was received */
    conn_close_all();
    bool stored = persist_close();
    objects_shutdown();
    slowlog_free();
    event_free(sigint);
    event_free(sigterm);
    if (sighup) event_free(sighup);
    event_free(accept_retry);
    tls_shutdown();
    auth_unload_key();
    event_base_free(base);
    if (!g_config.quiet) fprintf(stderr, "mpbroker-server: stopped\n");
    return stored ? 0 : 1;
}
