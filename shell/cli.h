/* cli.h - the pieces of mpbroker-cli, the debug shell, and what they share.
 *
 * main.c reads options and runs one command, a script or the interactive loop;
 * commands.c holds the command table and every command; json.c converts between
 * JSON text and mpb_value (with the notation for references and bin); format.c prints
 * tables and indented values; interactive.c is the libedit session (history, tab
 * completion). The shell is only a client of libmpbroker: everything it knows about
 * the broker's types and methods comes from manager.methods at run time.
 */
#ifndef MPB_CLI_H
#define MPB_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "mpbroker.h"

/* Exit codes, and what every command returns. */
#define CLI_OK 0
#define CLI_FAIL 1  /* the command was understood but failed: broker error, no broker */
#define CLI_USAGE 2 /* the command line is wrong: unknown command or method, bad JSON */
#define CLI_QUIT 3  /* internal: `quit` asked the loop to stop (exit code 0) */

typedef struct mpb_cli {
    char address[320]; /* where to connect, as shown in the prompt ("unix:/path") */
    mpb_context *c;    /* NULL until connected; reconnected when it broke */
    bool json;         /* --json given before the command: applies to every command */
    bool oneshot;      /* one command from argv: the process exits right after */
    mpb_value methods; /* manager.methods of this connection, nil until fetched */
    mpb_value objects; /* manager.objects, fetched at most once per command */
    mpb_value types;   /* {id: type} from manager.typeof, for this command; nil */
} mpb_cli;

/* One word of a command line. quoted: it was written in 'single quotes' on a shell
 * line, so it is a plain string whatever it looks like. */
typedef struct cli_arg {
    char *s;
    bool quoted;
} cli_arg;

/* Per-command flags, written right after the command name. */
typedef struct cli_opts {
    bool json;
    int depth; /* show --depth N; -1 when not given */
} cli_opts;

/* References in the shell. A broker numbers objects SPACE << 32 | COUNTER (mpb_value.h);
 * the shell writes a reference of the broker's current space as its COUNTER (<ref 7:
 * list>, @7, {"$ref": 7}) and any other in full, and reads a number below 2^32 as a
 * COUNTER in that space. Full ids are read too, so what the shell prints reads back. */
uint64_t cli_ref_short(mpb_ref ref);
mpb_ref cli_ref_full(uint64_t n);
/* Take the space from c's broker now (manager.stats id_space); cli_conn makes its
 * connection the source, asked at the first use. */
void cli_learn_id_space(mpb_context *c);
/* The space is known to be this one (a reference the broker just created is in it). */
void cli_note_id_space(uint64_t space);

/*--- main.c ---*/
/* Print "error: <fmt>" on stderr. Returns code, for `return cli_error(CLI_FAIL, ...)`. */
int cli_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The failed library call's error on stderr ("error: KeyError: 'x'"). Returns CLI_FAIL. */
int cli_broker_error(const mpb_context *c);
/* "error: cannot connect to ADDRESS: why" for a context that failed to connect. */
int cli_connect_error(const mpb_cli *cli, const mpb_context *c);
/* The connection, (re)connecting when needed. NULL after printing "cannot connect". */
mpb_context *cli_conn(mpb_cli *cli);
/* The same, saying nothing: NULL when the broker cannot be reached. */
mpb_context *cli_conn_quiet(mpb_cli *cli);
/* Split a shell line into words: whitespace separates them except inside "JSON
 * strings", [brackets] and {braces}, which stay verbatim; 'single quotes' make a plain
 * string. 0 and *argv (free with cli_args_free) / *argc, or -1 with a message in err. */
int cli_split(const char *line, cli_arg **argv, int *argc, char *err, size_t n);
void cli_args_free(cli_arg *argv, int argc);
/* "  SYNTAX  summary", the summary wrapped at 80 columns in a column of its own. */
void cli_print_wrapped(FILE *f, const char *syn, const char *text);
/* Run one command line already split; returns a CLI_* code. */
int cli_run(mpb_cli *cli, int argc, cli_arg *argv);

/*--- commands.c ---*/
typedef struct cli_command {
    const char *name;
    const char *args;    /* syntax after the name */
    const char *summary; /* one line, for `help` */
    const char *help;    /* more lines for `help NAME`, or NULL */
    int min, max;        /* word count after the name and flags; max -1: any */
    int (*run)(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o);
} cli_command;

extern const cli_command cli_commands[];
const cli_command *cli_command_find(const char *name);
/* manager.methods of the connection, fetched once (borrowed). NULL when it cannot be
 * had (error printed when report is true). */
const mpb_value *cli_methods(mpb_cli *cli, bool report);
/* Every row of manager.objects or manager.clients, fetched page by page (START COUNT)
 * into *out (owned by the caller). MPB_OK or the failing call's code. */
int cli_list_all(mpb_context *c, const char *method, mpb_value *out);
/* manager.objects, fetched once per command (borrowed); NULL when unavailable. */
const mpb_value *cli_objects(mpb_cli *cli, bool report);
/* Drop what one command fetched (call between commands). */
void cli_forget(mpb_cli *cli);
/* The entry of manager.objects for ref, or NULL. */
const mpb_value *cli_object_info(mpb_cli *cli, mpb_ref ref);
/* Field `key` of a map value with str keys, or NULL. */
const mpb_value *cli_field(const mpb_value *map, const char *key);
/* A field as a C string / integer, with a fallback when absent or of another type. */
const char *cli_field_str(const mpb_value *map, const char *key, const char *def);
long long cli_field_int(const mpb_value *map, const char *key, long long def);
/* Resolve REF|NAME: "@7" is reference 7, "@NAME" and "NAME" a named object. */
int cli_resolve(mpb_cli *cli, const char *word, mpb_ref *out);
/* Candidates for completing the word `partial` after words[0..n): a NULL-terminated
 * array of malloc'd strings (free with cli_strv_free), never NULL unless out of memory. */
char **cli_complete(mpb_cli *cli, char **words, int n, const char *partial);
void cli_strv_free(char **v);

/*--- json.c ---*/
/* JSON value -> mpb_value, with the $-notation ({"$ref": 7}, {"$bin": "base64"},
 * {"$map": [[k, v], ...]}, {"$uint": "N"}, {"$float": "nan"}). 0, or -1 with a message
 * in err. *out is owned by the caller. */
int cli_json_to_value(const json_t *j, mpb_value *out, char *err, size_t n);
/* mpb_value -> a new JSON value in the same notation (json_decref it), NULL if out of
 * memory. */
json_t *cli_value_to_json(const mpb_value *v);
struct cli_layout;
/* The same, with the references lay expands written {"$ref": 7, "$type": "list",
 * "$value": ...} (three members: it reads back as a plain map, not as notation). */
json_t *cli_value_to_json_ex(const mpb_value *v, const struct cli_layout *lay);
/* One command argument -> value: JSON; "@7" a reference; "@NAME" the reference of a
 * named object; a word that cannot start JSON, or a 'quoted' one, a string. CLI_OK, or
 * CLI_USAGE / CLI_FAIL after printing why. */
int cli_arg_value(mpb_cli *cli, const cli_arg *a, mpb_value *out);
/* Print j on one line (floats as short as they read back exactly) and a newline;
 * takes the reference to j. CLI_OK, or CLI_FAIL when out of memory. */
int cli_print_json(FILE *f, json_t *j);

/*--- format.c ---*/
/* An aligned table: add rows of ncols strings, print, free. */
typedef struct cli_table {
    int ncols;
    const char *const *heads;
    const char *align; /* per column: 'l' or 'r' */
    char **cells;      /* row-major, owned */
    size_t nrows, cap;
} cli_table;
void cli_table_init(cli_table *t, int ncols, const char *const *heads, const char *align);
/* Append a row of ncols strings (copied). 0, or -1 when out of memory. */
int cli_table_add(cli_table *t, const char *const *row);
void cli_table_print(const cli_table *t, FILE *f);
void cli_table_free(cli_table *t);

/* A value laid out for printing: scalars as their repr, references labelled and
 * maybe expanded. Built by commands.c (which can fetch), printed here. */
/* How an array prints: a list [a, b]; a tuple (a, b), as Python shows an array that is
 * a dict key or a set element (hashable, so a tuple there); a set's elements {a, b}. */
typedef enum cli_seq { CLI_SEQ_LIST, CLI_SEQ_TUPLE, CLI_SEQ_SET } cli_seq;

typedef struct cli_node {
    enum { CLI_N_ATOM, CLI_N_LIST, CLI_N_MAP, CLI_N_REF } kind;
    cli_seq seq;           /* LIST: how it prints */
    char *text;            /* ATOM: repr; REF: "<ref 7: list>" */
    struct cli_node *kids; /* LIST: items; MAP: key, value, key, value...; REF: 0 or 1 */
    size_t nkids;
    size_t flat; /* length of its one-line form */
} cli_node;
/* What to do with references: type_of(ctx, ref) names the object's type (borrowed)
 * for the label <ref 7: list>; expand(ctx, ref, &content) returns 1 and a value
 * (owned by the caller) to show after the label (2: an array of a set's elements), or 0
 * to leave it unexpanded; done is called once that content is laid out. */
typedef struct cli_layout {
    const char *(*type_of)(void *ctx, mpb_ref ref);
    int (*expand)(void *ctx, mpb_ref ref, mpb_value *content);
    void (*done)(void *ctx, mpb_ref ref); /* after the content of ref is laid out */
    void *ctx;
} cli_layout;
/* Lay v out into *nd (free with cli_node_free, also after a failure). 0, or -1 when
 * out of memory. */
int cli_node_build(cli_node *nd, const mpb_value *v, const cli_layout *lay);
/* The same, an array at the top printed as seq (a set's elements: CLI_SEQ_SET). */
int cli_node_build_as(cli_node *nd, const mpb_value *v, const cli_layout *lay, cli_seq seq);
void cli_node_free(cli_node *nd);
/* Print on one line when it fits in 80 columns, else one item a line, indented by two
 * spaces a level; ends with a newline. */
void cli_node_print(const cli_node *nd, FILE *f);
/* What the shell prints for a string it did not write (an object's name, a peer, a
 * method another client sent): the text itself when Python's repr would show it
 * unchanged between its quotes (printable, no quote or backslash), else that repr,
 * 'evil\n1 ...\x1b[31m', so no name can forge a line or send the terminal a control
 * sequence. v not a string: its repr. malloc'd (free it); NULL when out of memory. */
char *cli_display(const mpb_value *v);
/* A name that prints as itself and is one word: one completion may offer. */
bool cli_name_is_plain(const char *name);
/* Human forms of quantities: "1.5 KiB", "3m 20s". Into buf; returns buf. */
char *cli_bytes(char *buf, size_t n, double bytes);
char *cli_duration(char *buf, size_t n, double seconds);

/*--- interactive.c ---*/
/* The terminal session: prompt, line editing, history, completion. Returns the exit
 * code (0 after `quit` or end of input). */
int cli_interactive(mpb_cli *cli);

#endif
