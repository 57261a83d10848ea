/* format.c - the human output of mpbroker-cli: aligned tables and indented values.
 *
 * A value is first laid out as a tree of cli_node (commands.c decides which references
 * to expand, since that takes broker calls), then printed: a node that fits in the
 * line is printed as Python's repr would, else one item a line, indented two spaces a
 * level, with its closing bracket on a line of its own. Nothing here talks to the
 * broker or knows JSON.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define WIDTH 80

/*--- Untrusted text ---*/

/* repr(v) when it differs from v between quotes, else NULL; *plain says which. */
static char *repr_if_needed(const char *p, size_t len, bool *plain) {
    mpb_value v = mpb_str_borrowed(p, len);
    char *r = mpb_value_repr(&v);
    *plain = r != NULL && strlen(r) == len + 2 && r[0] == '\'' && memcmp(r + 1, p, len) == 0;
    if (*plain) {
        free(r);
        return NULL;
    }
    return r;
}

char *cli_display(const mpb_value *v) {
    if (v == NULL) return strdup("?");
    if (v->type != MPB_STR && v->type != MPB_BIN) return mpb_value_repr(v);
    bool plain;
    char *r = repr_if_needed(v->v.s, v->len, &plain);
    return plain ? strndup(v->v.s, v->len) : r;
}

bool cli_name_is_plain(const char *name) {
    bool plain;
    free(repr_if_needed(name, strlen(name), &plain));
    return plain && strpbrk(name, " \t") == NULL;
}

/*--- Tables ---*/

void cli_table_init(cli_table *t, int ncols, const char *const *heads, const char *align) {
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    t->heads = heads;
    t->align = align;
}

int cli_table_add(cli_table *t, const char *const *row) {
    if (t->nrows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 16;
        char **n = realloc(t->cells, ncap * (size_t)t->ncols * sizeof *n);
        if (n == NULL) return -1;
        t->cells = n;
        t->cap = ncap;
    }
    char **r = t->cells + t->nrows * (size_t)t->ncols;
    for (int i = 0; i < t->ncols; i++) {
        if ((r[i] = strdup(row[i])) == NULL) {
            while (i-- > 0) free(r[i]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

static void print_row(const cli_table *t, FILE *f, const char *const *row, const size_t *w) {
    for (int i = 0; i < t->ncols; i++) {
        int pad = (int)(w[i] - strlen(row[i]));
        bool last = i == t->ncols - 1;
        if (t->align[i] == 'r') fprintf(f, "%*s%s", pad, "", row[i]);
        else fprintf(f, "%s%*s", row[i], last ? 0 : pad, "");
        fputs(last ? "\n" : "  ", f);
    }
}

void cli_table_print(const cli_table *t, FILE *f) {
    size_t w[32] = {0};
    for (int i = 0; i < t->ncols && i < 32; i++) {
        w[i] = strlen(t->heads[i]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t l = strlen(t->cells[r * (size_t)t->ncols + (size_t)i]);
            if (l > w[i]) w[i] = l;
        }
    }
    print_row(t, f, t->heads, w);
    for (size_t r = 0; r < t->nrows; r++)
        print_row(t, f, (const char *const *)t->cells + r * (size_t)t->ncols, w);
}

void cli_table_free(cli_table *t) {
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

/*--- Laying a value out ---*/

static int build_kids(cli_node *nd, size_t n) {
    nd->kids = n ? calloc(n, sizeof *nd->kids) : NULL;
    nd->nkids = 0;
    return n && nd->kids == NULL ? -1 : 0;
}

/* One-line length: [a, b], {k: v, ...}, <ref 7: list> [...]. */
static void measure(cli_node *nd) {
    size_t n = 0;
    switch (nd->kind) {
    case CLI_N_ATOM: n = strlen(nd->text); break;
    case CLI_N_REF: n = strlen(nd->text) + (nd->nkids ? 1 + nd->kids[0].flat : 0); break;
    case CLI_N_LIST:
        n = 2 + (nd->seq == CLI_SEQ_TUPLE && nd->nkids == 1); /* (x,) */
        if (nd->seq == CLI_SEQ_SET && nd->nkids == 0) n = 5; /* set() */
        for (size_t i = 0; i < nd->nkids; i++) n += nd->kids[i].flat + (i ? 2 : 0);
        break;
    case CLI_N_MAP:
        n = 2;
        for (size_t i = 0; i < nd->nkids; i += 2)
            n += nd->kids[i].flat + 2 + nd->kids[i + 1].flat + (i ? 2 : 0);
        break;
    }
    nd->flat = n;
}

/* seq: how an array here prints; inside a tuple or a set every array is a tuple
 * (only hashable values get there). */
static int build(cli_node *nd, const mpb_value *v, const cli_layout *lay, cli_seq seq) {
    memset(nd, 0, sizeof *nd);
    switch ((mpb_type)v->type) {
    case MPB_ARRAY: {
        cli_seq inner = seq == CLI_SEQ_LIST ? CLI_SEQ_LIST : CLI_SEQ_TUPLE;
        nd->kind = CLI_N_LIST;
        nd->seq = seq;
        if (build_kids(nd, v->v.a->len) < 0) return -1;
        /* Each kid is counted before it is built, so that cli_node_free reaches what a
         * build that ran out of memory half-way allocated. */
        for (size_t i = 0; i < v->v.a->len; i++)
            if (build(&nd->kids[nd->nkids++], &v->v.a->items[i], lay, inner) < 0) return -1;
        break;
    }
    case MPB_MAP: {
        size_t it = 0;
        mpb_map_entry *e;
        nd->kind = CLI_N_MAP;
        if (build_kids(nd, v->v.m->len * 2) < 0) return -1;
        while ((e = mpb_map_next(v->v.m, &it)) != NULL) {
            if (build(&nd->kids[nd->nkids++], &e->key, lay, CLI_SEQ_TUPLE) < 0 ||
                build(&nd->kids[nd->nkids++], &e->val, lay, CLI_SEQ_LIST) < 0)
                return -1;
        }
        break;
    }
    case MPB_REF: {
        mpb_value content;
        nd->kind = CLI_N_REF;
        const char *type = lay->type_of(lay->ctx, v->v.ref);
        size_t len = strlen(type) + 32;
        if ((nd->text = malloc(len)) == NULL) return -1;
        snprintf(nd->text, len, "<ref %llu: %s>", (unsigned long long)cli_ref_short(v->v.ref),
                 type);
        int r = lay->expand(lay->ctx, v->v.ref, &content);
        if (r < 0) return -1;
        if (r > 0) {
            if (build_kids(nd, 1) < 0) {
                mpb_value_free(&content);
                return -1;
            }
            nd->nkids = 1;
            r = build(&nd->kids[0], &content, lay, r == 2 ? CLI_SEQ_SET : CLI_SEQ_LIST);
            mpb_value_free(&content);
            if (lay->done) lay->done(lay->ctx, v->v.ref);
            if (r < 0) return -1;
        }
        break;
    }
    default:
        nd->kind = CLI_N_ATOM;
        if ((nd->text = mpb_value_repr(v)) == NULL) return -1;
    }
    measure(nd);
    return 0;
}

int cli_node_build(cli_node *nd, const mpb_value *v, const cli_layout *lay) {
    return build(nd, v, lay, CLI_SEQ_LIST);
}

int cli_node_build_as(cli_node *nd, const mpb_value *v, const cli_layout *lay, cli_seq seq) {
    return build(nd, v, lay, seq);
}

static const char *const opens = "[({", *const closes = "])}";

void cli_node_free(cli_node *nd) {
    for (size_t i = 0; i < nd->nkids; i++) cli_node_free(&nd->kids[i]);
    free(nd->kids);
    free(nd->text);
    memset(nd, 0, sizeof *nd);
}

/*--- Printing ---*/

static void print_flat(const cli_node *nd, FILE *f) {
    switch (nd->kind) {
    case CLI_N_ATOM: fputs(nd->text, f); break;
    case CLI_N_REF:
        fputs(nd->text, f);
        if (nd->nkids) {
            fputc(' ', f);
            print_flat(&nd->kids[0], f);
        }
        break;
    case CLI_N_LIST:
        if (nd->seq == CLI_SEQ_SET && nd->nkids == 0) {
            fputs("set()", f);
            break;
        }
        fputc(opens[nd->seq], f);
        for (size_t i = 0; i < nd->nkids; i++) {
            if (i) fputs(", ", f);
            print_flat(&nd->kids[i], f);
        }
        if (nd->seq == CLI_SEQ_TUPLE && nd->nkids == 1) fputc(',', f);
        fputc(closes[nd->seq], f);
        break;
    case CLI_N_MAP:
        fputc('{', f);
        for (size_t i = 0; i < nd->nkids; i += 2) {
            if (i) fputs(", ", f);
            print_flat(&nd->kids[i], f);
            fputs(": ", f);
            print_flat(&nd->kids[i + 1], f);
        }
        fputc('}', f);
        break;
    }
}

/* nd starts at column `col` of a line whose items are indented by `indent`. */
static void print_node(const cli_node *nd, FILE *f, size_t indent, size_t col) {
    if (col + nd->flat <= WIDTH || nd->kind == CLI_N_ATOM) {
        print_flat(nd, f);
        return;
    }
    if (nd->kind == CLI_N_REF) { /* the label, then its content broken up */
        fputs(nd->text, f);
        if (nd->nkids) {
            fputc(' ', f);
            print_node(&nd->kids[0], f, indent, col + strlen(nd->text) + 1);
        }
        return;
    }
    bool map = nd->kind == CLI_N_MAP;
    size_t step = map ? 2 : 1;
    char open = map ? '{' : opens[nd->seq], close = map ? '}' : closes[nd->seq];
    fprintf(f, "%c\n", open);
    for (size_t i = 0; i < nd->nkids; i += step) {
        size_t c = indent + 2;
        fprintf(f, "%*s", (int)c, "");
        if (map) {
            print_node(&nd->kids[i], f, indent + 2, c);
            fputs(": ", f);
            c += nd->kids[i].flat + 2;
        }
        print_node(&nd->kids[i + step - 1], f, indent + 2, c);
        fputs(i + step < nd->nkids || (nd->seq == CLI_SEQ_TUPLE && nd->nkids == 1) ? ",\n" : "\n", f);
    }
    fprintf(f, "%*s%c", (int)indent, "", close);
}

void cli_node_print(const cli_node *nd, FILE *f) {
    print_node(nd, f, 0, 0);
    fputc('\n', f);
}

/*--- Quantities ---*/

char *cli_bytes(char *buf, size_t n, double bytes) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    if (u == 0) snprintf(buf, n, "%.0f B", bytes);
    else snprintf(buf, n, "%.1f %s", bytes, units[u]);
    return buf;
}

char *cli_duration(char *buf, size_t n, double s) {
    unsigned long long t = (unsigned long long)s;
    if (s < 60) snprintf(buf, n, "%.1fs", s);
    else if (t < 3600) snprintf(buf, n, "%llum %02llus", t / 60, t % 60);
    else if (t < 86400) snprintf(buf, n, "%lluh %02llum", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%llud %02lluh", t / 86400, t / 3600 % 24);
    return buf;
}
