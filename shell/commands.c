/* commands.c - the commands of mpbroker-cli, their table, and what they look up.
 *
 * Every command is `int cmd_x(cli, argc, argv, opts)` returning a CLI_* code, printing
 * its result on stdout (human form, or one line of JSON with --json) and its failure
 * on stderr. Types and methods are never hard-coded: they come from manager.methods,
 * so a type the broker gains is shown, called and completed without a change here.
 * Line splitting and the modes are main.c's; completion's candidates are built here
 * (they need the same look-ups), the editing is interactive.c's.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/*--- Look-ups ---*/

const mpb_value *cli_field(const mpb_value *map, const char *key) {
    if (map == NULL || map->type != MPB_MAP) return NULL;
    mpb_value k = mpb_str_borrowed(key, strlen(key));
    return mpb_map_get(map->v.m, &k);
}

const char *cli_field_str(const mpb_value *map, const char *key, const char *def) {
    const mpb_value *v = cli_field(map, key);
    return v != NULL && v->type == MPB_STR ? v->v.s : def;
}

long long cli_field_int(const mpb_value *map, const char *key, long long def) {
    const mpb_value *v = cli_field(map, key);
    if (v == NULL) return def;
    if (v->type == MPB_INT) return v->v.i;
    if (v->type == MPB_UINT) return (long long)v->v.u;
    if (v->type == MPB_BOOL) return v->v.b;
    return def;
}

static bool is(const char *a, const char *b) { return strcmp(a, b) == 0; }

static int by_id(const void *a, const void *b) {
    long long x = cli_field_int(a, "id", 0), y = cli_field_int(b, "id", 0);
    return x < y ? -1 : x > y;
}

static int by_ref(const void *a, const void *b) {
    const mpb_value *ra = cli_field(a, "ref");
    const mpb_value *rb = cli_field(b, "ref");
    mpb_ref x = ra && ra->type == MPB_REF ? ra->v.ref : 0;
    mpb_ref y = rb && rb->type == MPB_REF ? rb->v.ref : 0;
    return x < y ? -1 : x > y;
}

const mpb_value *cli_methods(mpb_cli *cli, bool report) {
    if (cli->methods.type == MPB_MAP) return &cli->methods;
    mpb_context *c = report ? cli_conn(cli) : cli->c;
    if (c == NULL || c->fd < 0) return NULL;
    if (mpb_call(c, "manager.methods", NULL, 0, &cli->methods) != MPB_OK) {
        if (report) cli_broker_error(c);
        return NULL;
    }
    return &cli->methods;
}

/* Every row of a paged listing (manager.objects, manager.clients), page by page with
 * START COUNT so that no one request is O(everything) on the broker. *out is owned by
 * the caller (an array). MPB_OK, or the failing call's code (c has the error). */
int cli_list_all(mpb_context *c, const char *method, mpb_value *out) {
    *out = mpb_array_value(0);
    if (out->type != MPB_ARRAY) return MPB_ERR_OOM;
    int64_t cursor = 0;
    do {
        mpb_value args[2] = {mpb_int(cursor), mpb_int(1000)}, pg;
        int rc = mpb_call(c, method, args, 2, &pg);
        if (rc != MPB_OK) {
            mpb_value_free(out);
            return rc;
        }
        mpb_value *rows = pg.type == MPB_ARRAY && pg.v.a->len == 2 ? &pg.v.a->items[0] : NULL;
        mpb_value *next = rows ? &pg.v.a->items[1] : NULL;
        if (rows == NULL || rows->type != MPB_ARRAY ||
            (next->type != MPB_NIL && next->type != MPB_INT) ||
            mpb_array_reserve(out->v.a, rows->v.a->len) < 0) {
            mpb_value_free(&pg);
            mpb_value_free(out);
            return MPB_ERR_PROTOCOL;
        }
        for (size_t i = 0; i < rows->v.a->len; i++) mpb_value_push(out, &rows->v.a->items[i]);
        cursor = next->type == MPB_INT ? next->v.i : -1;
        mpb_value_free(&pg);
    } while (cursor >= 0);
    return MPB_OK;
}

const mpb_value *cli_objects(mpb_cli *cli, bool report) {
    if (cli->objects.type == MPB_ARRAY) return &cli->objects;
    mpb_context *c = report ? cli_conn(cli) : cli->c;
    if (c == NULL || c->fd < 0) return NULL;
    if (cli_list_all(c, "manager.objects", &cli->objects) != MPB_OK) {
        if (report) cli_broker_error(c);
        mpb_value_free(&cli->objects);
        return NULL;
    }
    /* By reference, i.e. by age: the broker's own order is its hash table's. */
    if (cli->objects.v.a->len > 1)
        qsort(cli->objects.v.a->items, cli->objects.v.a->len, sizeof(mpb_value), by_ref);
    return &cli->objects;
}

void cli_forget(mpb_cli *cli) {
    mpb_value_free(&cli->objects);
    mpb_value_free(&cli->types);
}

const mpb_value *cli_object_info(mpb_cli *cli, mpb_ref ref) {
    const mpb_value *objs = cli_objects(cli, false);
    for (size_t i = 0; objs != NULL && i < objs->v.a->len; i++) {
        const mpb_value *r = cli_field(&objs->v.a->items[i], "ref");
        if (r != NULL && r->type == MPB_REF && r->v.ref == ref) return &objs->v.a->items[i];
    }
    return NULL;
}

/* The type of one object, from manager.typeof: O(1) on the broker, where finding it in
 * manager.objects walks every object (a one-shot `call NAME len` on a broker with a
 * million objects would page through all of them, and flood a monitor). The type is
 * copied into buf; NULL with the error in c. A broker without manager.typeof: the
 * listing, as before. */
static const char *object_type(mpb_cli *cli, mpb_ref ref, char *buf, size_t n) {
    mpb_value arg = mpb_refv(ref), res;
    if (mpb_call(cli->c, "manager.typeof", &arg, 1, &res) != MPB_OK) {
        if (!is(cli->c->errkind, "NoSuchMethod")) return NULL;
        const mpb_value *info = cli_object_info(cli, ref);
        if (info == NULL) return NULL;
        snprintf(buf, n, "%s", cli_field_str(info, "type", "?"));
        return buf;
    }
    snprintf(buf, n, "%s", res.type == MPB_STR ? res.v.s : "?");
    mpb_value_free(&res);
    return buf;
}

/* The type of a reference met in a value, for its label (<ref 7: list>) and its
 * expansion: from the listing when this command fetched it anyway, else one
 * manager.typeof per object, remembered until the command ends. Borrowed; "?" when
 * the object is gone. */
static const char *ref_type_of(mpb_cli *cli, mpb_ref ref) {
    if (cli->objects.type == MPB_ARRAY) {
        const mpb_value *info = cli_object_info(cli, ref);
        return info ? cli_field_str(info, "type", "?") : "?";
    }
    mpb_value key = mpb_uint(ref);
    if (cli->types.type == MPB_MAP) {
        const mpb_value *t = mpb_map_get(cli->types.v.m, &key);
        if (t != NULL) return t->type == MPB_STR ? t->v.s : "?";
    } else if ((cli->types.v.m = mpb_map_new()) != NULL) {
        cli->types.type = MPB_MAP;
    } else {
        return "?";
    }
    char buf[64];
    const char *type = cli->c != NULL ? object_type(cli, ref, buf, sizeof buf) : NULL;
    mpb_value val = type ? mpb_str(type) : mpb_nil();
    if (mpb_map_set(cli->types.v.m, &key, &val, NULL) < 0) {
        mpb_value_free(&val);
        return "?";
    }
    key = mpb_uint(ref); /* the map took the first */
    const mpb_value *t = mpb_map_get(cli->types.v.m, &key);
    return t != NULL && t->type == MPB_STR ? t->v.s : "?";
}

/* The manager.methods entry for a full method name, or NULL. */
static const mpb_value *method_info(mpb_cli *cli, const char *name) {
    const mpb_value *ms = cli_field(cli_methods(cli, false), "methods");
    for (size_t i = 0; ms != NULL && ms->type == MPB_ARRAY && i < ms->v.a->len; i++)
        if (is(cli_field_str(&ms->v.a->items[i], "name", ""), name)) return &ms->v.a->items[i];
    return NULL;
}

static bool is_type(mpb_cli *cli, const char *name) {
    const mpb_value *ts = cli_field(cli_methods(cli, false), "types");
    for (size_t i = 0; ts != NULL && ts->type == MPB_ARRAY && i < ts->v.a->len; i++)
        if (ts->v.a->items[i].type == MPB_STR && is(ts->v.a->items[i].v.s, name)) return true;
    return false;
}

/* The method family of a type: its methods are named "<family>.<method>". A variant
 * type (rlock, joinablequeue) has its family's methods. The library's table (the same
 * source as the broker's) knows every type it was built with, without a call; a type
 * it does not know is looked up in manager.methods "families". */
static const char *family_of(mpb_cli *cli, const char *type, char *buf, size_t n) {
    int variant;
    mpb_otype fam = mpb_typeid_lookup(type, strlen(type), &variant);
    const char *broker = fam != MPB_OT_NONE ? NULL
                         : cli_field_str(cli_field(cli_methods(cli, false), "families"), type, NULL);
    snprintf(buf, n, "%s", fam != MPB_OT_NONE ? mpb_otype_name(fam) : broker ? broker : type);
    return buf;
}

/* Does manager.methods mark m read-only (a broker without the mark: not a write)? */
static bool is_read_only(const mpb_value *m) {
    const mpb_value *r = cli_field(m, "read");
    if (r != NULL && r->type == MPB_BOOL) return r->v.b;
    return !cli_field_int(m, "write", 1);
}

/* "list, dict, namespace": the broker's types, for messages. */
static void type_list(mpb_cli *cli, char *buf, size_t n) {
    const mpb_value *ts = cli_field(cli_methods(cli, false), "types");
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; ts != NULL && ts->type == MPB_ARRAY && i < ts->v.a->len && len < n; i++)
        if (ts->v.a->items[i].type == MPB_STR)
            len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", ts->v.a->items[i].v.s);
}

int cli_resolve(mpb_cli *cli, const char *word, mpb_ref *out) {
    const char *name = word[0] == '@' ? word + 1 : word;
    if (word[0] == '@' && name[0] != '\0' && strspn(name, "0123456789") == strlen(name)) {
        *out = cli_ref_full(strtoull(name, NULL, 10));
        return CLI_OK;
    }
    mpb_context *c = cli_conn(cli);
    if (c == NULL) return CLI_FAIL;
    if (mpb_lookup(c, name, out) != MPB_OK) {
        if (is(c->errkind, "NoSuchObject"))
            return cli_error(CLI_FAIL, "no object named '%s' (objects lists them)", name);
        return cli_broker_error(c);
    }
    return CLI_OK;
}

/* The method that reads an object's whole content (list.copy, namespace.vars,
 * array.tolist, value.get), or NULL when its type has none. Only a read-only method
 * that needs no argument will do: show must not change what it shows. */
static const char *reader_method(mpb_cli *cli, const char *type, char *buf, size_t n) {
    static const char *const readers[] = {"copy", "vars", "tolist", "get"};
    char fbuf[64];
    const char *family = family_of(cli, type, fbuf, sizeof fbuf);
    for (size_t i = 0; i < sizeof readers / sizeof *readers; i++) {
        snprintf(buf, n, "%s.%s", family, readers[i]);
        const mpb_value *m = method_info(cli, buf);
        if (m != NULL && cli_field_int(m, "min", 1) == 0 && is_read_only(m)) return buf;
    }
    return NULL;
}

/* What show prints of an object without a content reader (a lock, a queue, an event):
 * every read-only method of its family that needs no argument, as a map from the
 * method's short name to its result ({'locked': False}). 3 (a state, not content)
 * and *out; 0 when there is none; -1 on a broker error. */
static int fetch_state(mpb_cli *cli, mpb_ref ref, const char *type, mpb_value *out) {
    char fbuf[64];
    const char *family = family_of(cli, type, fbuf, sizeof fbuf);
    const mpb_value *ms = cli_field(cli_methods(cli, false), "methods");
    mpb_map *m = NULL;
    for (size_t i = 0; ms != NULL && ms->type == MPB_ARRAY && i < ms->v.a->len; i++) {
        const mpb_value *info = &ms->v.a->items[i];
        const char *name = cli_field_str(info, "name", "");
        if (!is(cli_field_str(info, "type", ""), family) || cli_field_int(info, "min", 1) != 0 ||
            !is_read_only(info))
            continue;
        mpb_value arg = mpb_refv(ref), res;
        if (mpb_call(cli->c, name, &arg, 1, &res) != MPB_OK) {
            if (m != NULL) mpb_map_free(m);
            return -1;
        }
        const char *shortname = strchr(name, '.') + 1;
        mpb_value k = mpb_str(shortname);
        if ((m == NULL && (m = mpb_map_new()) == NULL) || mpb_map_set(m, &k, &res, NULL) < 0) {
            mpb_value_free(&k);
            mpb_value_free(&res);
            if (m != NULL) mpb_map_free(m);
            return cli_error(CLI_FAIL, "out of memory"), -1;
        }
    }
    if (m == NULL) return 0;
    *out = (mpb_value){.type = MPB_MAP, .v.m = m};
    return 3;
}

/*--- References in output: labelled, and expanded to a depth ---*/

typedef struct expand_ctx {
    mpb_cli *cli;
    int depth;          /* levels of references to expand below the root */
    mpb_ref path[64];   /* objects being expanded, outermost first: cycles stop here */
    int npath;
} expand_ctx;

static const char *ref_type(void *ctx, mpb_ref ref) {
    return ref_type_of(((expand_ctx *)ctx)->cli, ref);
}

/* The content of ref in *out: 1 (2: an array of a set's elements); else its state
 * from its read-only methods (fetch_state): 3; 0 when there is neither; -1 on error. */
static int fetch_content(mpb_cli *cli, mpb_ref ref, const char *type, mpb_value *out) {
    char buf[96], fbuf[64];
    const char *m = reader_method(cli, type, buf, sizeof buf);
    *out = mpb_nil();
    if (m == NULL) return fetch_state(cli, ref, type, out);
    mpb_value arg = mpb_refv(ref);
    if (mpb_call(cli->c, m, &arg, 1, out) != MPB_OK) return -1;
    return is(family_of(cli, type, fbuf, sizeof fbuf), "set") ? 2 : 1;
}

static int ref_expand(void *vctx, mpb_ref ref, mpb_value *content) {
    expand_ctx *x = vctx;
    *content = mpb_nil();
    if (x->npath > x->depth || x->npath >= 64) return 0;
    for (int i = 0; i < x->npath; i++)
        if (x->path[i] == ref) return 0; /* a cycle: shown once, as Python's [...] */
    const char *type = ref_type_of(x->cli, ref);
    if (is(type, "?")) return 0; /* gone */
    int got = fetch_content(x->cli, ref, type, content);
    if (got <= 0) return 0;
    x->path[x->npath++] = ref;
    return got;
}

static void ref_done(void *vctx, mpb_ref ref) {
    expand_ctx *x = vctx;
    (void)ref;
    x->npath--;
}

/* Print a value: --json, or laid out with references labelled <ref 7: list> and
 * expanded `depth` levels down (the root object, if any, already on x's path); an
 * array at the top as seq (a set's elements print {1, 2}). */
static int print_value_as(const mpb_value *v, bool json, expand_ctx *x, cli_seq seq) {
    cli_layout lay = {ref_type, ref_expand, ref_done, x};
    if (json) return cli_print_json(stdout, cli_value_to_json_ex(v, &lay));
    cli_node nd;
    int rc = cli_node_build_as(&nd, v, &lay, seq);
    if (rc == 0) cli_node_print(&nd, stdout);
    cli_node_free(&nd);
    return rc == 0 ? CLI_OK : cli_error(CLI_FAIL, "out of memory");
}

static int print_value(const mpb_value *v, bool json, expand_ctx *x) {
    return print_value_as(v, json, x, CLI_SEQ_LIST);
}

/*--- objects ---*/

static int cmd_objects(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc, (void)argv;
    const mpb_value *objs = cli_objects(cli, true);
    if (objs == NULL) return CLI_FAIL;
    if (o->json) return cli_print_json(stdout, cli_value_to_json(objs));
    size_t n = objs->v.a->len;
    const mpb_value *rows = objs->v.a->items;

    static const char *const heads[] = {"REF", "TYPE", "NAME", "LEN", "HOLDERS", "HOLDS",
                                        "CONTAINED", "BYTES"};
    static const char *const fields[] = {"len", "holders", "holds", "contained", "bytes"};
    cli_table t;
    cli_table_init(&t, 8, heads, "rllrrrrr");
    int rc = CLI_OK;
    for (size_t i = 0; i < n && rc == CLI_OK; i++) {
        char cells[8][32];
        const char *row[8];
        const mpb_value *ref = cli_field(&rows[i], "ref"), *name = cli_field(&rows[i], "name");
        char *type = cli_display(cli_field(&rows[i], "type"));
        char *shown = name != NULL && name->type == MPB_STR ? cli_display(name) : strdup("-");
        snprintf(cells[0], 32, "%llu",
                 ref && ref->type == MPB_REF ? (unsigned long long)cli_ref_short(ref->v.ref) : 0);
        row[0] = cells[0];
        row[1] = type;
        row[2] = shown;
        for (int k = 0; k < 5; k++) {
            long long v = cli_field_int(&rows[i], fields[k], -1);
            /* No len: a lock, an event, a value, where a length means nothing. */
            snprintf(cells[3 + k], 32, v < 0 ? (k == 0 ? "" : "-") : "%lld", v);
            row[3 + k] = cells[3 + k];
        }
        if (type == NULL || shown == NULL || cli_table_add(&t, row) < 0)
            rc = cli_error(CLI_FAIL, "out of memory");
        free(type);
        free(shown);
    }
    if (rc == CLI_OK && n == 0) printf("(no objects)\n");
    else if (rc == CLI_OK) cli_table_print(&t, stdout);
    cli_table_free(&t);
    return rc;
}

/*--- show ---*/

/* "@7" (a reference by number), not a name. */
static bool is_ref_word(const char *w) {
    return w[0] == '@' && w[1] != '\0' && strspn(w + 1, "0123456789") == strlen(w + 1);
}

/* The object ref does not exist (or the broker failed: then its error). */
static int no_object(mpb_cli *cli, mpb_ref ref) {
    if (cli->c != NULL && cli->c->errkind[0] != '\0' && !is(cli->c->errkind, "NoSuchObject"))
        return cli_broker_error(cli->c);
    return cli_error(CLI_FAIL, "no object @%llu (objects lists them)",
                     (unsigned long long)cli_ref_short(ref));
}

/* The length show's header gives, as manager.objects counts it: the items of a
 * content read whole (list, dict, namespace, set, array), a queue's qsize; -1 for the
 * rest (a value's content is one item, not a length). */
static long long content_len(int got, const mpb_value *content) {
    if (got == 3) return cli_field_int(content, "qsize", -1); /* a state map */
    if (got == 0) return -1;
    if (content->type == MPB_ARRAY) return (long long)content->v.a->len;
    return content->type == MPB_MAP ? (long long)content->v.m->len : -1;
}

static int cmd_show(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc;
    mpb_ref ref;
    if (cli_conn(cli) == NULL) return CLI_FAIL;
    int rc = cli_resolve(cli, argv[0].s, &ref);
    if (rc != CLI_OK) return rc;
    /* By name: the name is known and the type costs one O(1) call. By @N: the name
     * (if any) is only in the listing. */
    bool by_name = !is_ref_word(argv[0].s);
    const mpb_value *info = by_name ? NULL : cli_object_info(cli, ref);
    char tbuf[64];
    const char *type = info ? cli_field_str(info, "type", "?") : NULL;
    if (type == NULL && (!by_name || (type = object_type(cli, ref, tbuf, sizeof tbuf)) == NULL))
        return no_object(cli, ref);
    mpb_value content;
    int got = fetch_content(cli, ref, type, &content);
    if (got < 0) return cli_broker_error(cli->c);
    expand_ctx x = {.cli = cli, .depth = o->depth >= 0 ? o->depth : 1, .path = {ref}, .npath = 1};
    if (!o->json) {
        const char *name = by_name ? argv[0].s + (argv[0].s[0] == '@')
                                   : cli_field_str(info, "name", NULL);
        long long len = info ? cli_field_int(info, "len", -1) : content_len(got, &content);
        printf("<ref %llu: %s>", (unsigned long long)cli_ref_short(ref), type);
        if (name != NULL) {
            mpb_value nv = mpb_str_borrowed(name, strlen(name));
            char *r = mpb_value_repr(&nv);
            printf(" %s", r ? r : "?");
            free(r);
        }
        if (len >= 0) printf(" len %lld", len);
        printf(got ? "\n" : "\n(no read-only method shows a %s: help %s lists its methods)\n",
               type, type);
        if (!got) return CLI_OK;
    }
    if (!got) { /* --json: the reference itself */
        mpb_value r = mpb_refv(ref);
        return cli_print_json(stdout, cli_value_to_json(&r));
    }
    rc = print_value_as(&content, o->json, &x, got == 2 ? CLI_SEQ_SET : CLI_SEQ_LIST);
    mpb_value_free(&content);
    return rc;
}

/*--- call ---*/

/* The broker did not know the method: a usage error, naming where to look. */
static int unknown_method(const char *method) {
    const char *dot = strchr(method, '.');
    return cli_error(CLI_USAGE, "unknown method '%s' (help %.*s lists them)", method,
                     dot ? (int)(dot - method) : (int)strlen(method), method);
}

/* The method table is fetched only when a command needs it (a short method name, show,
 * help, completion): one-shot commands send no more than their call, so they do not
 * flood a monitor. A wrong method is the broker's NoSuchMethod. */
static int cmd_call(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    char full[128];
    const char *method;
    bool has_self = strncmp(argv[0].s, "manager.", 8) != 0; /* manager.*: no reference */
    mpb_ref ref = 0;
    if (cli_conn(cli) == NULL) return CLI_FAIL;

    if (!has_self) {
        method = argv[0].s;
        argc -= 1, argv += 1;
    } else {
        if (argc < 2) return cli_error(CLI_USAGE, "usage: call REF|NAME METHOD [ARGS...]");
        int rc = cli_resolve(cli, argv[0].s, &ref);
        if (rc != CLI_OK) return rc;
        method = argv[1].s;
        if (strchr(method, '.') == NULL) { /* a short name: the object's type says whose */
            char tbuf[64], fbuf[64];
            const char *type = object_type(cli, ref, tbuf, sizeof tbuf);
            if (type == NULL) return no_object(cli, ref);
            snprintf(full, sizeof full, "%s.%s", family_of(cli, type, fbuf, sizeof fbuf), method);
            method = full;
        }
        argc -= 2, argv += 2;
    }
    size_t n = (size_t)argc + has_self;
    mpb_value *args = calloc(n ? n : 1, sizeof *args);
    if (args == NULL) return cli_error(CLI_FAIL, "out of memory");
    int rc = CLI_OK;
    if (has_self) args[0] = mpb_refv(ref);
    for (int i = 0; i < argc && rc == CLI_OK; i++) rc = cli_arg_value(cli, &argv[i], &args[i + has_self]);
    mpb_value result = mpb_nil();
    if (rc == CLI_OK && mpb_call(cli->c, method, args, n, &result) != MPB_OK)
        rc = is(cli->c->errkind, "NoSuchMethod") ? unknown_method(method) : cli_broker_error(cli->c);
    for (size_t i = 0; i < n; i++) mpb_value_free(&args[i]);
    free(args);
    if (rc == CLI_OK) {
        expand_ctx x = {.cli = cli, .depth = -1};
        rc = print_value(&result, o->json, &x);
    }
    mpb_value_free(&result);
    return rc;
}

/*--- create, del ---*/

/* An object named name exists: say so, and whether INITIAL was left unused. The
 * broker's get-or-create (manager.open) would answer with the old object silently. */
static int exists_already(mpb_cli *cli, const char *name, mpb_ref ref, bool initial,
                          const cli_opts *o) {
    char tbuf[64];
    const char *type = object_type(cli, ref, tbuf, sizeof tbuf);
    mpb_value nv = mpb_str_borrowed(name, strlen(name));
    char *shown = cli_display(&nv);
    if (type == NULL) type = "?";
    int rc = CLI_OK;
    if (initial)
        rc = cli_error(CLI_FAIL, "'%s' exists already (<ref %llu: %s>): INITIAL not applied "
                       "(del it first to replace it)", shown ? shown : "?",
                       (unsigned long long)cli_ref_short(ref), type);
    else
        fprintf(stderr, "note: '%s' exists already: this is that %s\n", shown ? shown : "?", type);
    free(shown);
    if (rc == CLI_OK) {
        mpb_value r = mpb_refv(ref);
        expand_ctx x = {.cli = cli, .depth = -1};
        rc = print_value(&r, o->json, &x);
    }
    return rc;
}

static int cmd_create(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    char types[256];
    if (cli_conn(cli) == NULL) return CLI_FAIL;
    if (argc >= 2) {
        mpb_ref old;
        if (mpb_lookup(cli->c, argv[1].s, &old) == MPB_OK)
            return exists_already(cli, argv[1].s, old, argc >= 3, o);
        if (!is(cli->c->errkind, "NoSuchObject")) return cli_broker_error(cli->c);
    }
    mpb_value args[3] = {mpb_str_borrowed(argv[0].s, strlen(argv[0].s))};
    size_t n = 1;
    if (argc >= 2) args[n++] = mpb_str_borrowed(argv[1].s, strlen(argv[1].s));
    if (argc >= 3) {
        int rc = cli_arg_value(cli, &argv[2], &args[n++]);
        if (rc != CLI_OK) return rc;
    }
    mpb_value r;
    int rc = mpb_call(cli->c, argc >= 2 ? "manager.open" : "manager.create", args, n, &r);
    if (argc >= 3) mpb_value_free(&args[2]);
    if (rc != MPB_OK && is(cli->c->errkind, "ValueError") &&
        strstr(cli->c->errstr, "unknown type") != NULL && cli_methods(cli, false) != NULL) {
        type_list(cli, types, sizeof types);
        return cli_error(CLI_USAGE, "unknown type '%s' (types: %s)", argv[0].s, types);
    }
    if (rc != MPB_OK) return cli_broker_error(cli->c);
    if (argc < 2 && cli->oneshot)
        fprintf(stderr, "note: an anonymous object lives while held: this one goes when "
                "mpbroker-cli exits (give it a NAME to keep it)\n");
    /* A new object is numbered in the broker's current id space, and its type is the
     * one asked for: no manager.stats or manager.objects needed to print it. */
    if (r.type == MPB_REF) cli_note_id_space(mpb_ref_space(r.v.ref));
    if (o->json || r.type != MPB_REF) {
        expand_ctx x = {.cli = cli, .depth = -1};
        rc = print_value(&r, o->json, &x);
    } else {
        printf("<ref %llu: %s>\n", (unsigned long long)cli_ref_short(r.v.ref), argv[0].s);
    }
    mpb_value_free(&r);
    return rc;
}

static int cmd_del(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc;
    mpb_context *c = cli_conn(cli);
    if (c == NULL) return CLI_FAIL;
    if (mpb_delete(c, argv[0].s) != MPB_OK) {
        if (is(c->errkind, "NoSuchObject"))
            return cli_error(CLI_FAIL, "no object named '%s' (objects lists them)", argv[0].s);
        return cli_broker_error(c);
    }
    printf(o->json ? "null\n" : "OK\n");
    return CLI_OK;
}

/*--- stats, clients ---*/

static int cmd_stats(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc, (void)argv;
    mpb_context *c = cli_conn(cli);
    mpb_value s;
    if (c == NULL) return CLI_FAIL;
    if (mpb_call(c, "manager.stats", NULL, 0, &s) != MPB_OK) return cli_broker_error(c);
    if (o->json) {
        int rc = cli_print_json(stdout, cli_value_to_json(&s));
        mpb_value_free(&s);
        return rc;
    }
    const mpb_value *up = cli_field(&s, "uptime");
    char a[32], b[32];
    printf("pid          %lld\n", cli_field_int(&s, "pid", 0));
    printf("uptime       %s\n", cli_duration(a, sizeof a, up && up->type == MPB_FLOAT ? up->v.f : 0));
    printf("connections  %lld\n", cli_field_int(&s, "connections", 0));
    printf("objects      %lld\n", cli_field_int(&s, "objects", 0));
    printf("operations   %lld total, %lld/s\n", cli_field_int(&s, "ops_total", 0),
           cli_field_int(&s, "ops_per_sec", 0));
    printf("memory       %s resident\n", cli_bytes(a, sizeof a, (double)cli_field_int(&s, "rss_bytes", 0)));
    printf("limits       messages up to %s, nesting up to %lld\n",
           cli_bytes(b, sizeof b, (double)cli_field_int(&s, "max_message", 0)),
           cli_field_int(&s, "max_depth", 0));
    mpb_value_free(&s);
    return CLI_OK;
}

/* What a parked request waits on (manager.clients' "waiting"): "pipe.recv 7 end 0",
 * "manager.select 9 guards 3", "queue.get 4"; "-" when none. */
static void waiting_cell(const mpb_value *w, char *out, size_t n) {
    const mpb_value *ref = cli_field(w, "ref");
    if (w == NULL || w->type != MPB_MAP || ref == NULL || ref->type != MPB_REF) {
        snprintf(out, n, "-");
        return;
    }
    int len = snprintf(out, n, "%s %llu", cli_field_str(w, "method", "?"),
                       (unsigned long long)cli_ref_short(ref->v.ref));
    if (len < 0 || (size_t)len >= n) return;
    if (cli_field(w, "end")) snprintf(out + len, n - len, " end %lld", cli_field_int(w, "end", 0));
    else if (cli_field(w, "guards"))
        snprintf(out + len, n - len, " guards %lld", cli_field_int(w, "guards", 0));
}

static int cmd_clients(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc, (void)argv;
    mpb_context *c = cli_conn(cli);
    mpb_value cs;
    if (c == NULL) return CLI_FAIL;
    if (cli_list_all(c, "manager.clients", &cs) != MPB_OK) return cli_broker_error(c);
    if (cs.type == MPB_ARRAY && cs.v.a->len > 1) /* oldest first, not the broker's order */
        qsort(cs.v.a->items, cs.v.a->len, sizeof(mpb_value), by_id);
    if (o->json || cs.type != MPB_ARRAY) {
        int rc = cli_print_json(stdout, cli_value_to_json(&cs));
        mpb_value_free(&cs);
        return rc;
    }
    static const char *const heads[] = {"ID", "PEER", "PID", "UID", "AGE", "OPS", "HOLDS",
                                        "PARKED", "WAITING", "FLAGS"};
    static const char *const nums[] = {"pid", "uid", NULL, "ops", "holds", "parked"};
    cli_table t;
    int rc = CLI_OK;
    cli_table_init(&t, 10, heads, "rlrrrrrrll");
    for (size_t i = 0; i < cs.v.a->len && rc == CLI_OK; i++) {
        const mpb_value *e = &cs.v.a->items[i];
        char cells[10][80];
        const char *row[10];
        const mpb_value *age = cli_field(e, "age");
        snprintf(cells[0], 80, "%lld", cli_field_int(e, "id", 0));
        for (int k = 0; k < 6; k++)
            if (nums[k]) snprintf(cells[2 + k], 80, "%lld", cli_field_int(e, nums[k], 0));
        /* A TCP peer has no pid or uid the broker could know. */
        if (cli_field_int(e, "pid", 0) <= 0) strcpy(cells[2], "-");
        if (cli_field_int(e, "uid", -1) < 0) strcpy(cells[3], "-");
        cli_duration(cells[4], 80, age && age->type == MPB_FLOAT ? age->v.f : 0);
        snprintf(cells[9], 80, "%s%s%s", cli_field_int(e, "self", 0) ? "self" : "",
                 cli_field_int(e, "self", 0) && cli_field_int(e, "monitor", 0) ? "," : "",
                 cli_field_int(e, "monitor", 0) ? "monitor" : "");
        waiting_cell(cli_field(e, "waiting"), cells[8], 80);
        for (int k = 0; k < 10; k++) row[k] = cells[k];
        char *peer = cli_display(cli_field(e, "peer"));
        row[1] = peer;
        if (peer == NULL || cli_table_add(&t, row) < 0) rc = cli_error(CLI_FAIL, "out of memory");
        free(peer);
    }
    if (rc == CLI_OK) cli_table_print(&t, stdout);
    cli_table_free(&t);
    mpb_value_free(&cs);
    return rc;
}

/*--- monitor ---*/

static volatile sig_atomic_t monitor_stop;
static void on_stop(int sig) {
    (void)sig;
    monitor_stop = 1;
}

/* References in v written as the shell writes them (cli_ref_short), for printing. */
static void shorten_refs(mpb_value *v) {
    if (v->type == MPB_REF) {
        v->v.ref = cli_ref_short(v->v.ref);
    } else if (v->type == MPB_ARRAY) {
        for (size_t i = 0; i < v->v.a->len; i++) shorten_refs(&v->v.a->items[i]);
    } else if (v->type == MPB_MAP) {
        size_t it = 0;
        mpb_map_entry *e;
        while ((e = mpb_map_next(v->v.m, &it)) != NULL) shorten_refs(&e->val); /* keys: as is */
    }
}

/* One event: "1732671234.123456 [3 unix:pid=42] list.append(<ref 1>, 5)". */
static void print_event(mpb_value *ev, bool json) {
    long long dropped = cli_field_int(ev, "dropped", 0);
    if (json) {
        cli_print_json(stdout, cli_value_to_json(ev));
        return;
    }
    if (dropped > 0) printf("(%lld events dropped: this monitor fell behind)\n", dropped);
    const mpb_value *t = cli_field(ev, "time");
    mpb_value *params = (mpb_value *)cli_field(ev, "params"); /* ev is ours to change */
    /* The method is whatever another client sent: shown as any untrusted name. */
    char *peer = cli_display(cli_field(ev, "peer")), *method = cli_display(cli_field(ev, "method"));
    printf("%.6f [%lld %s] %s(", t && t->type == MPB_FLOAT ? t->v.f : 0.0,
           cli_field_int(ev, "conn", 0), peer ? peer : "?", method ? method : "?");
    free(peer);
    free(method);
    for (size_t i = 0; params && params->type == MPB_ARRAY && i < params->v.a->len; i++) {
        shorten_refs(&params->v.a->items[i]);
        char *r = mpb_value_repr(&params->v.a->items[i]);
        printf("%s%s", i ? ", " : "", r ? r : "?");
        free(r);
    }
    printf(")\n");
}

static int cmd_monitor(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc, (void)argv;
    /* A connection of its own: the broker has no way to stop monitoring, and the
     * session's connection (with its holds) must stay usable after Ctrl-C. */
    mpb_context *m = mpb_connect(cli->address);
    if (m == NULL || m->err) {
        if (m) cli_connect_error(cli, m);
        mpb_free(m);
        return CLI_FAIL;
    }
    if (mpb_call(m, "manager.monitor", NULL, 0, NULL) != MPB_OK) {
        int rc = cli_broker_error(m);
        mpb_free(m);
        return rc;
    }
    cli_learn_id_space(m); /* now: m is the connection this command prints from */
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "monitoring %s: every other connection's requests; Ctrl-C stops\n",
                cli->address);
    struct sigaction sa = {.sa_handler = on_stop}, old_int, old_term;
    sigemptyset(&sa.sa_mask); /* no SA_RESTART: the wait below must return on a signal */
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    monitor_stop = 0;
    int rc = CLI_OK;
    while (!monitor_stop) {
        char method[32];
        mpb_value params;
        int got;
        if (mpb_get_notification(m, 500, method, sizeof method, &params, &got) != MPB_OK) {
            rc = cli_broker_error(m);
            break;
        }
        if (got && is(method, "monitor") && params.type == MPB_ARRAY)
            for (size_t i = 0; i < params.v.a->len; i++) print_event(&params.v.a->items[i], o->json);
        mpb_value_free(&params);
        fflush(stdout);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (monitor_stop && isatty(STDERR_FILENO)) fputc('\n', stderr);
    mpb_free(m);
    return rc;
}

/*--- watch, atomic ---*/

/* watch REF|NAME: stream the object's changes (manager.watch) until Ctrl-C. */
static int cmd_watch(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc;
    mpb_ref ref;
    if (cli_conn(cli) == NULL) return CLI_FAIL;
    int rc = cli_resolve(cli, argv[0].s, &ref);
    if (rc != CLI_OK) return rc;
    /* A connection of its own, as monitor: Ctrl-C leaves the session's usable. */
    mpb_context *m = mpb_connect(cli->address);
    if (m == NULL || m->err) {
        if (m) cli_connect_error(cli, m);
        mpb_free(m);
        return CLI_FAIL;
    }
    int64_t from;
    if (mpb_watch(m, ref, &from) != MPB_OK) {
        rc = cli_broker_error(m);
        mpb_free(m);
        return rc;
    }
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "watching @%llu from version %lld: every write to it; Ctrl-C stops\n",
                (unsigned long long)cli_ref_short(ref), (long long)from);
    struct sigaction sa = {.sa_handler = on_stop}, old_int, old_term;
    sigemptyset(&sa.sa_mask); /* no SA_RESTART: the wait below must return on a signal */
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    monitor_stop = 0;
    rc = CLI_OK;
    while (!monitor_stop) {
        mpb_change ch;
        int got;
        if (mpb_next_change(m, 500, &ch, &got) != MPB_OK) {
            rc = cli_broker_error(m);
            break;
        }
        if (!got) continue;
        shorten_refs(&ch.args);
        if (o->json) {
            json_t *j = json_object();
            json_object_set_new(j, "ref", json_integer((json_int_t)cli_ref_short(ch.ref)));
            json_object_set_new(j, "version", json_integer(ch.version));
            if (ch.overflow) {
                json_object_set_new(j, "overflow", json_true());
            } else {
                json_object_set_new(j, "method", json_string(ch.method));
                json_object_set_new(j, "args", cli_value_to_json(&ch.args));
            }
            cli_print_json(stdout, j);
        } else if (ch.overflow) {
            printf("%lld (overflow: changes from here on were dropped while this watch fell "
                   "behind: read the object again)\n", (long long)ch.version);
        } else {
            printf("%lld %s(", (long long)ch.version, ch.method);
            for (size_t i = 0; ch.args.type == MPB_ARRAY && i < ch.args.v.a->len; i++) {
                char *r = mpb_value_repr(&ch.args.v.a->items[i]);
                printf("%s%s", i ? ", " : "", r ? r : "?");
                free(r);
            }
            printf(")\n");
        }
        mpb_value_free(&ch.args);
        fflush(stdout);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (monitor_stop && isatty(STDERR_FILENO)) fputc('\n', stderr);
    mpb_free(m);
    return rc;
}

/* atomic JSON: manager.atomic; an op's reference may be written "@NAME" or "@7". */
static int cmd_atomic(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)argc;
    mpb_context *c = cli_conn(cli);
    if (c == NULL) return CLI_FAIL;
    mpb_value ops;
    int rc = cli_arg_value(cli, &argv[0], &ops);
    if (rc != CLI_OK) return rc;
    if (ops.type != MPB_ARRAY) {
        mpb_value_free(&ops);
        return cli_error(CLI_USAGE, "atomic takes a JSON array of [METHOD, [PARAMS...]]");
    }
    for (size_t i = 0; i < ops.v.a->len && rc == CLI_OK; i++) {
        mpb_value *op = &ops.v.a->items[i];
        if (op->type != MPB_ARRAY || op->v.a->len != 2 || op->v.a->items[1].type != MPB_ARRAY ||
            op->v.a->items[1].v.a->len == 0)
            continue; /* the broker says what is wrong */
        mpb_value *first = &op->v.a->items[1].v.a->items[0];
        if (first->type == MPB_STR && first->len > 1 && first->v.s[0] == '@') {
            mpb_ref r;
            rc = cli_resolve(cli, first->v.s, &r);
            if (rc == CLI_OK) {
                mpb_value_free(first);
                *first = mpb_refv(r);
            }
        }
    }
    mpb_value result = mpb_nil();
    if (rc == CLI_OK && mpb_call(c, "manager.atomic", &ops, 1, &result) != MPB_OK)
        rc = cli_broker_error(c);
    mpb_value_free(&ops);
    if (rc == CLI_OK) {
        expand_ctx x = {.cli = cli, .depth = -1};
        rc = print_value(&result, o->json, &x);
    }
    mpb_value_free(&result);
    return rc;
}

/*--- slowlog ---*/

/* slowlog [COUNT|reset]: the slow log, newest first (manager.slowlog). */
static int cmd_slowlog(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    mpb_context *c = cli_conn(cli);
    if (c == NULL) return CLI_FAIL;
    if (argc == 1 && is(argv[0].s, "reset")) {
        if (mpb_call(c, "manager.slowlog_reset", NULL, 0, NULL) != MPB_OK) return cli_broker_error(c);
        if (!o->json) printf("slow log emptied\n");
        return o->json ? cli_print_json(stdout, cli_value_to_json(&(mpb_value){.type = MPB_NIL}))
                       : CLI_OK;
    }
    char *end = NULL;
    long long count = argc == 1 ? strtoll(argv[0].s, &end, 10) : 10;
    if (argc == 1 && (*end || count < 0))
        return cli_error(CLI_USAGE, "slowlog: COUNT is a number >= 0 (or reset), not '%s'",
                         argv[0].s);
    mpb_value arg = mpb_int(count), log;
    if (mpb_call(c, "manager.slowlog", &arg, 1, &log) != MPB_OK) return cli_broker_error(c);
    if (o->json || log.type != MPB_ARRAY) {
        int rc = cli_print_json(stdout, cli_value_to_json(&log));
        mpb_value_free(&log);
        return rc;
    }
    static const char *const heads[] = {"ID", "WHEN", "DURATION", "METHOD", "ARG BYTES", "CONN",
                                        "PEER"};
    cli_table t;
    int rc = CLI_OK;
    cli_table_init(&t, 7, heads, "rrrlrrl");
    for (size_t i = 0; i < log.v.a->len && rc == CLI_OK; i++) {
        const mpb_value *e = &log.v.a->items[i];
        const mpb_value *when = cli_field(e, "time");
        char cells[7][48];
        const char *row[7];
        snprintf(cells[0], 48, "%lld", cli_field_int(e, "id", 0));
        time_t tt = when && when->type == MPB_FLOAT ? (time_t)when->v.f : 0;
        struct tm tm;
        strftime(cells[1], 48, "%H:%M:%S", localtime_r(&tt, &tm));
        snprintf(cells[2], 48, "%.3f ms", (double)cli_field_int(e, "duration_us", 0) / 1000);
        snprintf(cells[3], 48, "%s", cli_field_str(e, "method", "?"));
        snprintf(cells[4], 48, "%lld", cli_field_int(e, "arg_bytes", 0));
        snprintf(cells[5], 48, "%lld", cli_field_int(e, "conn", 0));
        snprintf(cells[6], 48, "%s", cli_field_str(e, "peer", "?"));
        for (int k = 0; k < 7; k++) row[k] = cells[k];
        if (cli_table_add(&t, row) < 0) rc = cli_error(CLI_FAIL, "out of memory");
    }
    if (rc == CLI_OK && log.v.a->len == 0) printf("(no slow requests)\n");
    else if (rc == CLI_OK) cli_table_print(&t, stdout);
    cli_table_free(&t);
    mpb_value_free(&log);
    return rc;
}

/*--- help, quit ---*/

static int help_type(mpb_cli *cli, const char *type, const char *only) {
    static const char *const heads[] = {"METHOD", "ARGS", "COST", "WHAT IT DOES"};
    const mpb_value *ms = cli_field(cli_methods(cli, false), "methods");
    cli_table t;
    cli_table_init(&t, 4, heads, "llll");
    for (size_t i = 0; ms != NULL && ms->type == MPB_ARRAY && i < ms->v.a->len; i++) {
        const mpb_value *m = &ms->v.a->items[i];
        const char *name = cli_field_str(m, "name", "");
        const char *mt = cli_field_str(m, "type", "manager");
        if (only ? !is(name, only) : !is(mt, type)) continue;
        char args[160];
        snprintf(args, sizeof args, "%s%s%s", is(mt, "manager") ? "" : "REF",
                 is(mt, "manager") || !*cli_field_str(m, "args", "") ? "" : " ",
                 cli_field_str(m, "args", ""));
        /* COST: the time complexity (a broker before issue 21 sends none). */
        const char *row[4] = {name, args, cli_field_str(m, "cost", "-"),
                              cli_field_str(m, "doc", "")};
        if (cli_table_add(&t, row) < 0) break;
    }
    int found = t.nrows > 0;
    if (found) cli_table_print(&t, stdout);
    cli_table_free(&t);
    return found;
}

static int cmd_help(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)o;
    if (argc == 0) {
        printf("Commands (COMMAND --json prints JSON; help COMMAND, help TYPE, help METHOD):\n");
        for (const cli_command *c = cli_commands; c->name; c++) {
            char syn[64];
            snprintf(syn, sizeof syn, "%s %s", c->name, c->args);
            cli_print_wrapped(stdout, syn, c->summary);
        }
        printf("Arguments are JSON; @7 is reference 7, @NAME a named object's reference;\n"
               "{\"$bin\": \"BASE64\"} is bytes; a bare word is a string (help call).\n");
        return CLI_OK;
    }
    const char *what = argv[0].s;
    const cli_command *c = cli_command_find(what);
    if (c != NULL) {
        printf("%s %s\n  %s\n", c->name, c->args, c->summary);
        if (c->help) printf("%s", c->help);
        return CLI_OK;
    }
    if (cli_methods(cli, true) == NULL) return CLI_FAIL;
    char fbuf[64];
    if (is_type(cli, what) || is(what, "manager"))
        return help_type(cli, family_of(cli, what, fbuf, sizeof fbuf), NULL), CLI_OK;
    if (help_type(cli, NULL, what)) return CLI_OK;
    return cli_error(CLI_USAGE, "no command, type or method '%s' (help lists them)", what);
}

static int cmd_quit(mpb_cli *cli, int argc, cli_arg *argv, const cli_opts *o) {
    (void)cli, (void)argc, (void)argv, (void)o;
    return CLI_QUIT;
}

const cli_command cli_commands[] = {
    {"objects", "", "every shared object: ref, type, name, length, holders, bytes", NULL, 0, 0,
     cmd_objects},
    {"show", "[--depth N] REF|NAME", "an object's value, references expanded N levels (1)",
     "  REF|NAME: @7 is object 7; anything else (or @NAME) a named object.\n"
     "  References inside are shown as <ref 7: list> followed by that object's value,\n"
     "  down to --depth levels (0: not expanded); a cycle is shown once.\n"
     "  --json: the value as JSON; an expanded reference becomes\n"
     "  {\"$ref\": 7, \"$type\": \"list\", \"$value\": [...]}.\n",
     1, 1, cmd_show},
    {"call", "REF|NAME METHOD [ARGS...]", "call any method; ARGS are JSON",
     "  METHOD is short (append) or full (list.append); help TYPE lists them.\n"
     "  call manager.METHOD [ARGS...] calls a method that takes no reference.\n"
     "  ARGS: JSON values (\"text\", 12, 2.5, true, null, [1, 2], {\"k\": 1}), and\n"
     "    @7 / {\"$ref\": 7}        reference to object 7;  @NAME: a named object's\n"
     "    {\"$bin\": \"AAEC\"}        bytes, base64\n"
     "    {\"$map\": [[1, \"a\"]]}    a map with keys that are not strings\n"
     "    {\"$uint\": \"N\"}, {\"$float\": \"nan\"}   integers past 2^63-1; nan, inf, -inf\n"
     "    a bare word (one that cannot start JSON) is a string: color = \"color\";\n"
     "    on a shell line, 'single quotes' make a string of anything.\n"
     "  The result is printed as Python's repr (--json: as JSON, same notation).\n",
     1, -1, cmd_call},
    {"create", "TYPE [NAME [INITIAL]]", "a new object; with NAME, get or create it",
     "  Without NAME the object is anonymous and lives while this shell holds it.\n"
     "  INITIAL is a JSON value (a list's items, a dict's or namespace's map).\n",
     1, 3, cmd_create},
    {"del", "NAME", "remove a name (the object lives on while held or contained)", NULL, 1, 1,
     cmd_del},
    {"stats", "", "uptime, connections, objects, operations per second, memory", NULL, 0, 0,
     cmd_stats},
    {"clients", "", "every connection: id, peer, pid, operations, holds, parked requests",
     NULL, 0, 0, cmd_clients},
    {"slowlog", "[COUNT|reset]", "the COUNT (10) newest requests slower than --slowlog-us",
     "  One row each, newest first: id, when, duration, method, argument bytes,\n"
     "  connection and peer (manager.slowlog). slowlog reset empties it.\n",
     0, 1, cmd_slowlog},
    {"monitor", "", "print every request other connections make, until Ctrl-C",
     "  One line each: TIME [CONNECTION PEER] METHOD(ARGS...); --json: one JSON object\n"
     "  a line, {time, conn, peer, method, params}.\n",
     0, 0, cmd_monitor},
    {"watch", "REF|NAME", "print every write to one object as it happens, until Ctrl-C",
     "  One line each: VERSION METHOD(ARGS...), the writer's own writes included\n"
     "  (manager.watch); --json: {ref, version, method, args} a line. A watch that\n"
     "  falls behind gets one overflow line (read the object again), then goes on.\n",
     1, 1, cmd_watch},
    {"atomic", "JSON", "run operations all or none (manager.atomic)",
     "  JSON: [[METHOD, [REF, ARGS...]], ...], e.g.\n"
     "    atomic '[[\"manager.expect\", [\"@bank\", 4]], [\"dict.incr\", [\"@bank\", \"a\", -5]],\n"
     "             [\"dict.incr\", [\"@bank\", \"b\", 5]]]'\n"
     "  An op's reference may be \"@NAME\" or \"@7\" (or {\"$ref\": 7}). Prints the\n"
     "  results; if an op fails nothing of the batch stays (\"op N: KIND: ...\").\n",
     1, 1, cmd_atomic},
    {"help", "[COMMAND|TYPE|METHOD]", "this list, or more about one thing", NULL, 0, 1,
     cmd_help},
    {"quit", "", "leave the shell (also exit, Ctrl-D)", NULL, 0, 0, cmd_quit},
    {"exit", "", "leave the shell", NULL, 0, 0, cmd_quit},
    {NULL, NULL, NULL, NULL, 0, 0, NULL},
};

const cli_command *cli_command_find(const char *name) {
    for (const cli_command *c = cli_commands; c->name; c++)
        if (is(c->name, name)) return c;
    return NULL;
}

/*--- Completion candidates ---*/

typedef struct strv {
    char **v;
    size_t n, cap;
    const char *prefix;
} strv;

static void add(strv *s, const char *word) {
    if (strncmp(word, s->prefix, strlen(s->prefix)) != 0) return;
    for (size_t i = 0; i < s->n; i++)
        if (is(s->v[i], word)) return;
    if (s->n + 2 > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        char **n = realloc(s->v, ncap * sizeof *n);
        if (n == NULL) return;
        s->v = n;
        s->cap = ncap;
    }
    if ((s->v[s->n] = strdup(word)) != NULL) s->n++;
    s->v[s->n] = NULL;
}

static void add_objects(mpb_cli *cli, strv *s, bool refs) {
    const mpb_value *objs = cli_objects(cli, false);
    for (size_t i = 0; objs != NULL && i < objs->v.a->len; i++) {
        const mpb_value *e = &objs->v.a->items[i], *r = cli_field(e, "ref");
        const char *name = cli_field_str(e, "name", NULL);
        if (name != NULL && cli_name_is_plain(name)) add(s, name); /* others need quotes */
        if (refs && r != NULL && r->type == MPB_REF) {
            char buf[32];
            snprintf(buf, sizeof buf, "@%llu", (unsigned long long)cli_ref_short(r->v.ref));
            add(s, buf);
        }
    }
}

/* Methods of a type ("manager" for those without a reference): short names, or full
 * ones when full is set. */
static void add_methods(mpb_cli *cli, strv *s, const char *type, bool full) {
    const mpb_value *ms = cli_field(cli_methods(cli, false), "methods");
    for (size_t i = 0; ms != NULL && ms->type == MPB_ARRAY && i < ms->v.a->len; i++) {
        const mpb_value *m = &ms->v.a->items[i];
        const char *name = cli_field_str(m, "name", "");
        if (type && !is(cli_field_str(m, "type", "manager"), type)) continue;
        const char *dot = strchr(name, '.');
        add(s, full || dot == NULL ? name : dot + 1);
    }
}

static void add_types(mpb_cli *cli, strv *s) {
    const mpb_value *ts = cli_field(cli_methods(cli, false), "types");
    for (size_t i = 0; ts != NULL && ts->type == MPB_ARRAY && i < ts->v.a->len; i++)
        if (ts->v.a->items[i].type == MPB_STR) add(s, ts->v.a->items[i].v.s);
}

/* The type of the object a word names, from manager.objects (no extra call). */
static const char *word_type(mpb_cli *cli, const char *word) {
    const mpb_value *objs = cli_objects(cli, false);
    for (size_t i = 0; objs != NULL && i < objs->v.a->len; i++) {
        const mpb_value *e = &objs->v.a->items[i], *r = cli_field(e, "ref");
        char buf[32];
        snprintf(buf, sizeof buf, "@%llu",
                 r && r->type == MPB_REF ? (unsigned long long)cli_ref_short(r->v.ref) : 0);
        const char *name = cli_field_str(e, "name", NULL);
        if (is(buf, word) || (name && (is(name, word) || (word[0] == '@' && is(name, word + 1)))))
            return cli_field_str(e, "type", NULL);
    }
    return NULL;
}

char **cli_complete(mpb_cli *cli, char **words, int n, const char *partial) {
    strv s = {.prefix = partial, .cap = 16, .v = calloc(16, sizeof(char *))};
    if (s.v == NULL) return NULL;
    while (n > 0 && is(words[0], "--json")) words++, n--; /* --json before the command */
    /* Flags come right after the command (as cli_run reads them) and change nothing
     * about what the next word can be: drop them, and the number after --depth. */
    int i = 1, kept = n > 0 ? 1 : 0;
    for (; i < n && strncmp(words[i], "--", 2) == 0 && !is(words[i], "--"); i++) {
        if (is(words[i], "--depth") && ++i == n) { /* it wants a number: no candidates */
            cli_forget(cli);
            return s.v;
        }
    }
    bool only_flags = i == n;
    if (i < n && is(words[i], "--")) i++; /* the end of the flags */
    for (; i < n; i++) words[kept++] = words[i];
    n = kept;
    const char *cmd = n > 0 ? words[0] : "";
    if (n >= 1 && only_flags && strncmp(partial, "--", 2) == 0) {
        add(&s, "--json");
        if (is(cmd, "show")) add(&s, "--depth");
    } else if (n == 0) {
        for (const cli_command *c = cli_commands; c->name; c++) add(&s, c->name);
    } else if (n == 1 && is(cmd, "help")) {
        for (const cli_command *c = cli_commands; c->name; c++) add(&s, c->name);
        add_types(cli, &s);
        add_methods(cli, &s, NULL, true);
    } else if (n == 1 && (is(cmd, "show") || is(cmd, "call"))) {
        add_objects(cli, &s, partial[0] == '@');
        if (is(cmd, "call")) add_methods(cli, &s, "manager", true);
    } else if (n == 1 && is(cmd, "del")) {
        add_objects(cli, &s, false);
    } else if (n == 1 && is(cmd, "create")) {
        add_types(cli, &s);
    } else if (n == 2 && is(cmd, "call")) {
        const char *type = word_type(cli, words[1]);
        char fbuf[64];
        if (type) add_methods(cli, &s, family_of(cli, type, fbuf, sizeof fbuf), strchr(partial, '.') != NULL);
    }
    cli_forget(cli);
    return s.v;
}

void cli_strv_free(char **v) {
    for (size_t i = 0; v != NULL && v[i] != NULL; i++) free(v[i]);
    free(v);
}
