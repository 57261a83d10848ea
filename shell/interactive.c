/* interactive.c - the terminal session of mpbroker-cli: libedit's native API for line
 * editing (emacs keys, ~/.editrc), a history file, tab completion, and a prompt that
 * says where the shell is connected.
 *
 * Completion candidates come from commands.c (cli_complete); this file only finds
 * the word under the cursor and edits the line. Ctrl-C at the prompt drops the line;
 * during a command it cancels the command and the session goes on: the shell's
 * connection is shut down, which is the one way to take back a call parked on the
 * broker (queue.get, lock.acquire), and a new one is opened (the old one's holds and
 * locks go, as they would for any client that disconnects). monitor catches it itself
 * to stop. Ctrl-D or `quit` ends the session.
 */
#include <errno.h>
#include <histedit.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wchar.h>

#include "cli.h"

#define HISTORY_SIZE 1000

static char prompt_buf[400];

static char *prompt(EditLine *el) {
    mpb_cli *cli;
    el_get(el, EL_CLIENTDATA, &cli);
    snprintf(prompt_buf, sizeof prompt_buf, "mpbroker %s%s> ", cli->address,
             cli->c != NULL && cli->c->fd >= 0 ? "" : " (not connected)");
    return prompt_buf;
}

/* Candidates in columns under the line, as a shell lists them. */
static void list_candidates(char **cands, size_t n) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(cands[i]) > w) w = strlen(cands[i]);
    size_t cols = 78 / (w + 2);
    if (cols == 0) cols = 1;
    size_t rows = (n + cols - 1) / cols;
    fputc('\n', stdout);
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols && c * rows + r < n; c++)
            printf("%-*s", (int)(c + 1 < cols ? w + 2 : 0), cands[c * rows + r]);
        fputc('\n', stdout);
    }
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Bound to Tab: complete the word before the cursor. */
static unsigned char complete(EditLine *el, int ch) {
    (void)ch;
    mpb_cli *cli;
    el_get(el, EL_CLIENTDATA, &cli);
    const LineInfo *li = el_line(el);
    char *text = strndup(li->buffer, (size_t)(li->cursor - li->buffer));
    char **words = text ? calloc(strlen(text) / 2 + 2, sizeof *words) : NULL;
    unsigned char ret = CC_REFRESH_BEEP;
    if (words == NULL) {
        free(text);
        return ret;
    }
    int n = 0;
    for (char *save, *w = strtok_r(text, " \t", &save); w; w = strtok_r(NULL, " \t", &save))
        words[n++] = w;
    const char *partial = "";
    if (n > 0 && li->cursor > li->buffer && li->cursor[-1] != ' ' && li->cursor[-1] != '\t')
        partial = words[--n];

    char **cands = cli_complete(cli, words, n, partial);
    size_t nc = 0;
    while (cands != NULL && cands[nc] != NULL) nc++;
    if (nc > 0) {
        qsort(cands, nc, sizeof *cands, by_name);
        size_t common = strlen(cands[0]);
        for (size_t i = 1; i < nc; i++) {
            size_t k = 0;
            while (k < common && cands[i][k] == cands[0][k]) k++;
            common = k;
        }
        size_t have = strlen(partial);
        if (nc == 1 || common > have) {
            size_t add = common - have;
            char *ins = malloc(add + 2);
            if (ins != NULL) {
                memcpy(ins, cands[0] + have, add);
                strcpy(ins + add, nc == 1 ? " " : ""); /* a whole word: on to the next */
                el_insertstr(el, ins);
                free(ins);
                ret = CC_REFRESH;
            }
        } else {
            list_candidates(cands, nc);
            ret = CC_REDISPLAY;
        }
    }
    cli_strv_free(cands);
    free(words);
    free(text);
    return ret;
}

static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig) {
    (void)sig;
    interrupted = 1;
}

/* The socket of the command running now, or -1. */
static volatile sig_atomic_t busy_fd = -1;
static void on_command_interrupt(int sig) {
    (void)sig;
    interrupted = 1;
    if (busy_fd >= 0) shutdown(busy_fd, SHUT_RDWR); /* async-signal-safe: the call returns */
}

/* Run one line; Ctrl-C cancels it (see the top of this file). */
static int run_line(mpb_cli *cli, int argc, cli_arg *argv) {
    struct sigaction cmd = {.sa_handler = on_command_interrupt}, dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&cmd.sa_mask); /* no SA_RESTART: a wait must return on the signal */
    sigemptyset(&dfl.sa_mask);
    interrupted = 0;
    /* Connected first, so the handler knows the socket to shut down. */
    busy_fd = cli_conn_quiet(cli) != NULL ? cli->c->fd : -1;
    sigaction(SIGINT, &cmd, NULL);
    int rc = cli_run(cli, argc, argv);
    sigaction(SIGINT, &dfl, NULL);
    busy_fd = -1;
    if (interrupted) {
        fprintf(stderr, "(interrupted: the command is cancelled; the shell's connection was "
                "closed, so its holds and locks are gone)\n");
        mpb_free(cli->c);
        cli->c = NULL;
        cli_conn_quiet(cli);
    }
    return rc;
}

/* libedit's reader retries a read() that a signal interrupted, so Ctrl-C alone would
 * not end el_gets. This one waits in ppoll(), the only place SIGINT is let through
 * (it is blocked elsewhere in el_gets), so a Ctrl-C always ends the line: -1. */
static sigset_t wait_mask; /* the mask while waiting for a key: SIGINT unblocked */

static int read_char(EditLine *el, wchar_t *wc) {
    static mbstate_t st;
    (void)el;
    for (;;) {
        struct pollfd pf = {.fd = STDIN_FILENO, .events = POLLIN};
        int r = ppoll(&pf, 1, NULL, &wait_mask);
        if (interrupted) return -1;
        if (r < 0 && errno == EINTR) continue;
        char ch;
        ssize_t n = r < 0 ? -1 : read(STDIN_FILENO, &ch, 1);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return (int)n; /* 0: end of input */
        size_t k = mbrtowc(wc, &ch, 1, &st);
        if (k == (size_t)-2) continue; /* more bytes of this character to come */
        if (k == (size_t)-1) {         /* not in the locale's encoding: take the byte */
            memset(&st, 0, sizeof st);
            *wc = (wchar_t)(unsigned char)ch;
        }
        return 1;
    }
}

/* The history file: $MPBROKER_HISTFILE ("" for none), else ~/.mpbroker_history. */
static const char *history_file(char *buf, size_t n) {
    const char *f = getenv("MPBROKER_HISTFILE");
    if (f != NULL) return f[0] ? f : NULL;
    const char *home = getenv("HOME");
    if (home == NULL || home[0] == '\0') return NULL;
    snprintf(buf, n, "%s/.mpbroker_history", home);
    return buf;
}

int cli_interactive(mpb_cli *cli) {
    char hbuf[512];
    const char *hfile = history_file(hbuf, sizeof hbuf);
    HistEvent ev;
    History *h = history_init();
    EditLine *el = el_init("mpbroker-cli", stdin, stdout, stderr);
    if (h == NULL || el == NULL) {
        if (h) history_end(h);
        if (el) el_end(el);
        return cli_error(CLI_FAIL, "cannot start line editing");
    }
    history(h, &ev, H_SETSIZE, HISTORY_SIZE);
    history(h, &ev, H_SETUNIQUE, 1);
    if (hfile != NULL) history(h, &ev, H_LOAD, hfile); /* none yet is fine */
    setlocale(LC_CTYPE, ""); /* the terminal's encoding, for the editor's characters */
    el_set(el, EL_EDITOR, "emacs");
    el_set(el, EL_GETCFN, read_char);
    el_set(el, EL_SIGNAL, 1); /* the terminal is put back on signals and resizes */
    el_set(el, EL_PROMPT, prompt);
    el_set(el, EL_HIST, history, h);
    el_set(el, EL_CLIENTDATA, cli);
    /* The wide form: el_set(EL_ADDFN) copies the names and never frees them. */
    el_wset(el, EL_ADDFN, L"mpb-complete", L"complete a command, object, type or method",
            complete);
    el_set(el, EL_BIND, "^I", "mpb-complete", NULL);
    el_source(el, NULL); /* ~/.editrc, as other libedit programs */

    cli_conn(cli); /* says so if the broker is not there; the prompt shows it too */
    struct sigaction on = {.sa_handler = on_interrupt}, dfl = {.sa_handler = SIG_DFL};
    sigset_t intr, unblocked;
    sigemptyset(&on.sa_mask);
    sigemptyset(&dfl.sa_mask);
    sigemptyset(&intr);
    sigaddset(&intr, SIGINT);
    sigprocmask(SIG_SETMASK, NULL, &unblocked);
    sigdelset(&unblocked, SIGINT);
    wait_mask = unblocked;
    for (;;) {
        int count;
        interrupted = 0;
        sigaction(SIGINT, &on, NULL);
        sigprocmask(SIG_BLOCK, &intr, NULL);
        /* Raw mode before the prompt shows: libedit may set it only once it reads,
         * and a Ctrl-D typed in between would reach a cooked terminal. */
        el_set(el, EL_PREP_TERM, 1);
        const char *line = el_gets(el, &count);
        sigprocmask(SIG_SETMASK, &unblocked, NULL); /* a Ctrl-C pending now: just the flag */
        sigaction(SIGINT, &dfl, NULL);
        if (line == NULL || count <= 0) {
            if (interrupted) {
                fputc('\n', stdout);
                continue;
            }
            fputc('\n', stdout); /* Ctrl-D: leave the terminal on a fresh line */
            break;
        }
        char *copy = strdup(line);
        if (copy == NULL) break;
        size_t len = strlen(copy); /* no newline, nor the space completion leaves */
        while (len > 0 && strchr(" \t\r\n", copy[len - 1]) != NULL) copy[--len] = '\0';
        if (copy[strspn(copy, " \t")] == '\0') {
            free(copy);
            continue;
        }
        history(h, &ev, H_ENTER, copy);
        if (hfile != NULL) history(h, &ev, H_SAVE, hfile); /* now: Ctrl-C may end us later */
        cli_arg *argv;
        int argc, rc;
        char err[160];
        if (cli_split(copy, &argv, &argc, err, sizeof err) < 0) {
            rc = cli_error(CLI_USAGE, "%s", err);
        } else {
            rc = run_line(cli, argc, argv);
            cli_args_free(argv, argc);
        }
        free(copy);
        if (rc == CLI_QUIT) break;
    }
    el_end(el);
    history_end(h);
    return CLI_OK;
}
