/* main.c - mpbroker-cli: options, the three ways to run (one command from argv, a
 * script on standard input, the interactive shell), line splitting and dispatch.
 *
 * Exit codes: 0 ok; 1 a command failed (broker error, no such object, no broker);
 * 2 the command line was wrong (bad option, unknown command or method, bad JSON). A
 * script runs every line and exits with the worst code; the interactive shell keeps
 * going after errors. The commands themselves are in commands.c.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static int script_line; /* the line being run in script mode, for error messages */
static bool json_errors; /* the command runs with --json: its errors are JSON too */

/* One error on stderr: "error: [line N: ]message", or with --json one line
 * {"error": KIND, "message": TEXT[, "line": N]}. */
static int emit_error(int code, const char *kind, const char *msg) {
    fflush(stdout); /* keep stdout and stderr in order on a shared terminal or pipe */
    if (json_errors) {
        json_t *j = json_pack("{s:s, s:s}", "error", kind, "message", msg);
        if (j != NULL && script_line > 0) json_object_set_new(j, "line", json_integer(script_line));
        char *text = j ? json_dumps(j, JSON_ENSURE_ASCII) : NULL;
        fprintf(stderr, "%s\n", text ? text : "{\"error\": \"OutOfMemory\"}");
        free(text);
        json_decref(j);
        return code;
    }
    if (script_line > 0) fprintf(stderr, "error: line %d: %s\n", script_line, msg);
    else fprintf(stderr, "error: %s\n", msg);
    return code;
}

int cli_error(int code, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* With --json the shell's own errors have kinds as the broker's do. */
    return emit_error(code, code == CLI_USAGE ? "UsageError" : "Error", msg);
}

int cli_connect_error(const mpb_cli *cli, const mpb_context *c) {
    /* "connect /path: No such file or directory": the address is said already. */
    const char *why = c->errstr, *colon = strrchr(why, ':');
    if (strncmp(why, "connect ", 8) == 0 && colon != NULL && colon[1] == ' ') why = colon + 2;
    bool kind = c->errkind[0] != '\0' && strcmp(c->errkind, "ConnectionError") != 0;
    return cli_error(CLI_FAIL, "cannot connect to %s: %s%s%s", cli->address,
                     kind ? c->errkind : "", kind ? ": " : "", why);
}

int cli_broker_error(const mpb_context *c) {
    if (json_errors) return emit_error(CLI_FAIL, c->errkind[0] ? c->errkind : "Error", c->errstr);
    if (strcmp(c->errkind, "AuthError") == 0)
        return cli_error(CLI_FAIL, "%s: %s (the key comes from $MPBROKER_AUTHKEY_FILE or "
                         "$MPBROKER_AUTHKEY)", c->errkind, c->errstr);
    if (c->errkind[0] != '\0') return cli_error(CLI_FAIL, "%s: %s", c->errkind, c->errstr);
    return cli_error(CLI_FAIL, "%s", c->errstr);
}

/* The broker whose id space the short form uses, asked at the first reference shown or
 * read (not at connect: a broker that wants a key would close on that question). */
static mpb_context *space_source;
static uint64_t id_space;
static bool space_known;

void cli_learn_id_space(mpb_context *c) {
    mpb_value s;
    space_source = c;
    space_known = true;
    id_space = 0; /* a broker without one, or an error: every reference in full */
    if (c == NULL || mpb_call(c, "manager.stats", NULL, 0, &s) != MPB_OK) return;
    long long space = cli_field_int(&s, "id_space", 0);
    if (space > 0 && (uint64_t)space < (UINT64_C(1) << MPB_REF_SPACE_BITS)) id_space = (uint64_t)space;
    mpb_value_free(&s);
}

void cli_note_id_space(uint64_t space) {
    if (space_known) return;
    space_known = true;
    id_space = space > 0 && space < (UINT64_C(1) << MPB_REF_SPACE_BITS) ? space : 0;
}

static uint64_t current_space(void) {
    if (!space_known) cli_learn_id_space(space_source);
    return id_space;
}

uint64_t cli_ref_short(mpb_ref ref) {
    uint64_t space = current_space();
    return space != 0 && mpb_ref_space(ref) == space ? ref & MPB_REF_COUNTER_MASK : ref;
}

mpb_ref cli_ref_full(uint64_t n) {
    return n <= MPB_REF_COUNTER_MASK ? (current_space() << MPB_REF_SPACE_SHIFT) | n : n;
}

mpb_context *cli_conn_quiet(mpb_cli *cli) {
    if (cli->c != NULL && cli->c->fd >= 0) return cli->c;
    mpb_context *c = mpb_connect(cli->address);
    if (c == NULL || c->err != MPB_OK) {
        mpb_free(c);
        return NULL;
    }
    mpb_free(cli->c);
    mpb_value_free(&cli->methods);
    mpb_value_free(&cli->objects);
    cli->c = c;
    space_source = c;
    space_known = false;
    return c;
}

mpb_context *cli_conn(mpb_cli *cli) {
    if (cli->c != NULL && cli->c->fd >= 0) return cli->c;
    bool again = cli->c != NULL;
    mpb_free(cli->c);
    cli->c = NULL;
    mpb_value_free(&cli->methods); /* the broker may have been replaced by a newer one */
    mpb_value_free(&cli->objects);
    mpb_context *c = mpb_connect(cli->address);
    if (c == NULL) {
        cli_error(CLI_FAIL, "out of memory");
        return NULL;
    }
    if (c->err != MPB_OK) {
        cli_connect_error(cli, c);
        mpb_free(c);
        return NULL;
    }
    if (again) fprintf(stderr, "(reconnected to %s)\n", cli->address);
    cli->c = c;
    space_source = c; /* a new broker, perhaps: ask again when needed */
    space_known = false;
    return c;
}

/*--- Splitting a line ---*/

void cli_args_free(cli_arg *argv, int argc) {
    for (int i = 0; argv != NULL && i < argc; i++) free(argv[i].s);
    free(argv);
}

int cli_split(const char *line, cli_arg **out, int *outc, char *err, size_t n) {
    size_t len = strlen(line);
    cli_arg *argv = calloc(len / 2 + 2, sizeof *argv); /* words are at least 1 char + gap */
    int argc = 0;
    const char *p = line;
    *out = NULL;
    *outc = 0;
    if (argv == NULL) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p == '\0') break;
        const char *start = p;
        bool quoted = *p == '\'';
        if (quoted) {
            const char *end = strchr(p + 1, '\'');
            if (end == NULL) {
                snprintf(err, n, "unterminated 'quote'");
                cli_args_free(argv, argc);
                return -1;
            }
            start = p + 1;
            p = end + 1;
            argv[argc].s = strndup(start, (size_t)(end - start));
        } else {
            /* JSON stays one word: spaces inside "strings", [...] and {...} do not split. */
            int depth = 0;
            bool in_str = false;
            for (; *p != '\0'; p++) {
                if (in_str) {
                    if (*p == '\\' && p[1] != '\0') p++;
                    else if (*p == '"') in_str = false;
                } else if (*p == '"') {
                    in_str = true;
                } else if (*p == '[' || *p == '{') {
                    depth++;
                } else if ((*p == ']' || *p == '}') && depth > 0) {
                    depth--;
                } else if (depth == 0 && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
                    break;
                }
            }
            if (in_str || depth > 0) {
                snprintf(err, n, "unterminated %s in %s", in_str ? "\"string\"" : "bracket", start);
                cli_args_free(argv, argc);
                return -1;
            }
            argv[argc].s = strndup(start, (size_t)(p - start));
        }
        argv[argc].quoted = quoted;
        if (argv[argc++].s == NULL) {
            snprintf(err, n, "out of memory");
            cli_args_free(argv, argc);
            return -1;
        }
    }
    *out = argv;
    *outc = argc;
    return 0;
}

/*--- Running one command ---*/

static int usage_of(const cli_command *c) {
    return cli_error(CLI_USAGE, "usage: %s%s%s", c->name, c->args[0] ? " " : "", c->args);
}

int cli_run(mpb_cli *cli, int argc, cli_arg *argv) {
    cli_opts o = {.json = cli->json, .depth = -1};
    /* --json before the command, as on mpbroker-cli's own command line. */
    for (; argc > 0 && !argv[0].quoted && strcmp(argv[0].s, "--json") == 0; argc--, argv++)
        o.json = true;
    json_errors = o.json;
    if (argc == 0) return CLI_OK;
    const cli_command *cmd = cli_command_find(argv[0].s);
    if (cmd == NULL)
        return cli_error(CLI_USAGE, "unknown command '%s' (help lists them)", argv[0].s);
    int i = 1;
    for (; i < argc && !argv[i].quoted && strncmp(argv[i].s, "--", 2) == 0; i++) {
        const char *f = argv[i].s;
        if (strcmp(f, "--") == 0) {
            i++;
            break;
        } else if (strcmp(f, "--json") == 0) {
            o.json = json_errors = true;
        } else if (strcmp(cmd->name, "show") == 0 &&
                   (strcmp(f, "--depth") == 0 || strncmp(f, "--depth=", 8) == 0)) {
            const char *v = f[7] == '=' ? f + 8 : (i + 1 < argc ? argv[++i].s : "");
            char *end;
            long d = strtol(v, &end, 10);
            if (v[0] == '\0' || *end != '\0' || d < 0 || d > 60)
                return cli_error(CLI_USAGE, "--depth wants a number from 0 to 60, not '%s'", v);
            o.depth = (int)d;
        } else {
            cli_error(CLI_USAGE, "unknown option %s for %s", f, cmd->name);
            return usage_of(cmd);
        }
    }
    int n = argc - i;
    if (n < cmd->min || (cmd->max >= 0 && n > cmd->max)) return usage_of(cmd);
    int rc = cmd->run(cli, n, argv + i, &o);
    cli_forget(cli);
    fflush(stdout);
    json_errors = cli->json;
    return rc;
}

/* Lines from f until its end or `quit`; every line runs, the worst code is returned. */
static int run_script(mpb_cli *cli, FILE *f) {
    char *line = NULL;
    size_t cap = 0;
    int worst = CLI_OK;
    while (getline(&line, &cap, f) >= 0) {
        script_line++;
        const char *p = line + strspn(line, " \t");
        if (*p == '#' || *p == '\n' || *p == '\0') continue;
        cli_arg *argv;
        int argc, rc;
        char err[160];
        if (cli_split(p, &argv, &argc, err, sizeof err) < 0) {
            rc = cli_error(CLI_USAGE, "%s", err);
        } else {
            rc = cli_run(cli, argc, argv);
            cli_args_free(argv, argc);
        }
        if (rc == CLI_QUIT) break;
        if (rc > worst) worst = rc;
    }
    free(line);
    script_line = 0;
    return worst;
}

/*--- Options ---*/

/* "  SYNTAX  summary" with the summary wrapped at 80 columns under its own column. */
void cli_print_wrapped(FILE *f, const char *syn, const char *text) {
    enum { COL = 33, WIDTH = 80 };
    int col = fprintf(f, "  %-*s", COL - 3, syn);
    if (col > COL - 1) col = fprintf(f, "\n%*s", COL - 1, "") - 1;
    while (*text) {
        size_t w = strcspn(text, " ");
        if (col + 1 + (int)w > WIDTH) col = fprintf(f, "\n%*s", COL - 1, "") - 1;
        col += fprintf(f, " %.*s", (int)w, text);
        text += w;
        text += strspn(text, " ");
    }
    fputc('\n', f);
}

static void usage(FILE *f) {
    char def[256];
    fprintf(f,
            "usage: mpbroker-cli [options] [COMMAND [ARGS...]]\n"
            "\n"
            "The debug shell of mpbroker: look at shared objects, change them, watch\n"
            "requests as they happen. With a COMMAND it runs that one and exits; with\n"
            "standard input not a terminal it runs one command a line; else it is an\n"
            "interactive shell (tab completion, history in ~/.mpbroker_history or\n"
            "$MPBROKER_HISTFILE).\n"
            "\n"
            "  -s, --socket PATH        the broker's Unix socket (default $MPBROKER_ADDRESS,\n"
            "                           else %s)\n"
            "  -H, --host tcp://HOST:PORT  the broker's TCP address, or tls://HOST:PORT\n"
            "                           for its TLS one (--tls-listen)\n"
            "      --tls-ca FILE        CA certificate(s) the broker's certificate must\n"
            "                           chain to (default $MPBROKER_TLS_CA, else the\n"
            "                           system's)\n"
            "      --tls-cert FILE      this client's certificate, for a broker with\n"
            "                           --tls-ca (default $MPBROKER_TLS_CERT)\n"
            "      --tls-key FILE       its key (default $MPBROKER_TLS_KEY, else in the\n"
            "                           --tls-cert file)\n"
            "      --tls-no-verify-name do not check that the broker's certificate names\n"
            "                           HOST (anyone the CA certified could pose as it)\n"
            "      --json               print results as JSON, one line each\n"
            "      --authkey-file FILE  the broker's authkey (default $MPBROKER_AUTHKEY_FILE\n"
            "                           or $MPBROKER_AUTHKEY)\n"
            "  -h, --help               this text\n"
            "  -V, --version            the version\n"
            "\n"
            "Commands (help COMMAND in the shell, or mpbroker-cli help COMMAND):\n",
            mpb_default_address(def, sizeof def));
    for (const cli_command *c = cli_commands; c->name; c++) {
        char syn[64];
        snprintf(syn, sizeof syn, "%s %s", c->name, c->args);
        cli_print_wrapped(f, syn, c->summary);
    }
    fprintf(f, "\nExit status: 0 ok, 1 the command failed, 2 bad usage.\n");
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"host", required_argument, NULL, 'H'},
        {"json", no_argument, NULL, 'j'},
        {"authkey-file", required_argument, NULL, 'k'},
        {"tls-ca", required_argument, NULL, 'C'},
        {"tls-cert", required_argument, NULL, 'E'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-no-verify-name", no_argument, NULL, 'N'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    mpb_cli cli = {.methods = mpb_nil(), .objects = mpb_nil(), .types = mpb_nil()};
    const char *addr = getenv("MPBROKER_ADDRESS");
    char def[256];
    int opt;

    setvbuf(stdout, NULL, _IOLBF, 0); /* a line at a time, also into pipes: see monitor */
    if (addr == NULL || addr[0] == '\0') addr = mpb_default_address(def, sizeof def);
    /* '+': options end at COMMAND, so `call l getitem -1` keeps its -1. */
    while ((opt = getopt_long(argc, argv, "+s:H:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 's': addr = optarg; break;
        case 'H':
            if (strncmp(optarg, "tcp://", 6) != 0 && strncmp(optarg, "tls://", 6) != 0) {
                fprintf(stderr, "mpbroker-cli: -H wants tcp://HOST:PORT or tls://HOST:PORT, "
                        "not %s\n", optarg);
                return CLI_USAGE;
            }
            addr = optarg;
            break;
        case 'j': cli.json = true; break;
        /* libmpbroker reads the key where the broker does: through the environment. */
        case 'k': setenv("MPBROKER_AUTHKEY_FILE", optarg, 1); break;
        case 'C': setenv("MPBROKER_TLS_CA", optarg, 1); break;
        case 'E': setenv("MPBROKER_TLS_CERT", optarg, 1); break;
        case 'K': setenv("MPBROKER_TLS_KEY", optarg, 1); break;
        case 'N': setenv("MPBROKER_TLS_NO_VERIFY_NAME", "1", 1); break;
        case 'h': usage(stdout); return CLI_OK;
        case 'V': printf("mpbroker-cli %s\n", MPB_VERSION); return CLI_OK;
        default: /* getopt said which option, in one line */
            fprintf(stderr, "mpbroker-cli --help lists the options\n");
            return CLI_USAGE;
        }
    }
    bool scheme = strncmp(addr, "unix:", 5) == 0 || strncmp(addr, "tcp://", 6) == 0 ||
                  strncmp(addr, "tls://", 6) == 0;
    snprintf(cli.address, sizeof cli.address, "%s%s", scheme ? "" : "unix:", addr);

    int rc;
    if (optind < argc) {
        int n = argc - optind;
        cli_arg *args = calloc((size_t)n, sizeof *args);
        if (args == NULL) return CLI_FAIL;
        for (int i = 0; i < n; i++) args[i].s = argv[optind + i];
        cli.oneshot = true;
        rc = cli_run(&cli, n, args);
        free(args);
        if (rc == CLI_QUIT) rc = CLI_OK;
    } else if (isatty(STDIN_FILENO)) {
        rc = cli_interactive(&cli);
    } else {
        rc = run_script(&cli, stdin);
    }
    mpb_free(cli.c);
    mpb_value_free(&cli.methods);
    mpb_value_free(&cli.objects);
    mpb_value_free(&cli.types);
    return rc;
}
