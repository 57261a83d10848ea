/* json.c - JSON text <-> mpb_value for mpbroker-cli, parsed and printed by jansson.
 *
 * JSON has no reference, no bytes and only string keys, so a one-member object whose
 * key starts with '$' stands for what it lacks; the same notation is read from command
 * arguments and written by --json, so output can be pasted back as input:
 *   {"$ref": 7}                 reference to object 7 (the human form is <ref 7: list>)
 *   {"$bin": "AAEC"}            msgpack bin, base64 (standard alphabet)
 *   {"$map": [[1, "a"], ...]}   a map with keys that are not all strings
 *   {"$uint": "18446744073709551615"}  an integer above 2^63-1
 *   {"$float": "nan"}           nan, inf, -inf
 * Command arguments add shorthands on top (cli_arg_value): @7, @NAME and bare words.
 * Nothing here talks to the broker except cli_arg_value's name lookup.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_DEPTH 64 /* deeper JSON is refused here; the broker allows 32 anyway */

/*--- base64 ---*/

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A new NUL-terminated base64 string of p[0..n), or NULL when out of memory. */
static char *b64_encode(const unsigned char *p, size_t n) {
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (out == NULL) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = b64[w >> 18 & 63];
        *o++ = b64[w >> 12 & 63];
        *o++ = i + 1 < n ? b64[w >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[w & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Decode s (padding optional) into a bin value. 0, or -1 when s is not base64 or
 * memory ran out (*out nil). */
static int b64_decode(const char *s, size_t n, mpb_value *out) {
    while (n > 0 && s[n - 1] == '=') n--;
    if (n % 4 == 1) return -1;
    unsigned char *buf = malloc(n / 4 * 3 + 3);
    size_t len = 0;
    uint32_t w = 0;
    if (buf == NULL) return -1;
    for (size_t i = 0; i < n; i++) {
        const char *at = s[i] ? strchr(b64, s[i]) : NULL;
        if (at == NULL) {
            free(buf);
            return -1;
        }
        w = w << 6 | (uint32_t)(at - b64);
        if (i % 4 == 3) {
            buf[len++] = (unsigned char)(w >> 16);
            buf[len++] = (unsigned char)(w >> 8);
            buf[len++] = (unsigned char)w;
            w = 0;
        }
    }
    if (n % 4 == 2) buf[len++] = (unsigned char)(w >> 4);
    if (n % 4 == 3) {
        buf[len++] = (unsigned char)(w >> 10);
        buf[len++] = (unsigned char)(w >> 2);
    }
    *out = mpb_bin(buf, len);
    free(buf);
    return out->type == MPB_BIN ? 0 : -1;
}

/*--- JSON -> value ---*/

static int fail(char *err, size_t n, const char *msg) {
    snprintf(err, n, "%s", msg);
    return -1;
}

static int to_value(const json_t *j, mpb_value *out, int depth, char *err, size_t n);

/* {"$map": [[k, v], ...]} */
static int map_from_pairs(const json_t *pairs, mpb_value *out, int depth, char *err,
                          size_t n) {
    if (!json_is_array(pairs)) return fail(err, n, "$map wants an array of [key, value]");
    *out = mpb_map_value();
    if (out->type != MPB_MAP) return fail(err, n, "out of memory");
    for (size_t i = 0; i < json_array_size(pairs); i++) {
        const json_t *p = json_array_get(pairs, i);
        mpb_value k, v;
        if (!json_is_array(p) || json_array_size(p) != 2) {
            mpb_value_free(out);
            return fail(err, n, "$map wants an array of [key, value]");
        }
        if (to_value(json_array_get(p, 0), &k, depth + 1, err, n) < 0) {
            mpb_value_free(out);
            return -1;
        }
        if (to_value(json_array_get(p, 1), &v, depth + 1, err, n) < 0) {
            mpb_value_free(&k);
            mpb_value_free(out);
            return -1;
        }
        int rc = mpb_map_set(out->v.m, &k, &v, NULL);
        if (rc < 0) {
            mpb_value_free(&k);
            mpb_value_free(&v);
            mpb_value_free(out);
            return fail(err, n, rc == -2 ? "unhashable $map key (a map)" : "out of memory");
        }
    }
    return 0;
}

/* A one-member object with a known $ key: its value in *out, 1. 0 when it is not
 * notation (then a plain map), -1 on a bad one. */
static int notation(const json_t *j, mpb_value *out, int depth, char *err, size_t n) {
    if (json_object_size(j) != 1) return 0;
    void *it = json_object_iter((json_t *)j);
    const char *key = json_object_iter_key(it);
    const json_t *v = json_object_iter_value(it);
    if (strcmp(key, "$ref") == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return fail(err, n, "$ref wants an object id, a non-negative integer");
        *out = mpb_refv(cli_ref_full((uint64_t)json_integer_value(v)));
        return 1;
    }
    if (strcmp(key, "$bin") == 0) {
        if (!json_is_string(v) ||
            b64_decode(json_string_value(v), json_string_length(v), out) < 0)
            return fail(err, n, "$bin wants a base64 string");
        return 1;
    }
    if (strcmp(key, "$map") == 0) return map_from_pairs(v, out, depth, err, n) < 0 ? -1 : 1;
    if (strcmp(key, "$uint") == 0) {
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        char *end;
        errno = 0;
        unsigned long long u = strtoull(s, &end, 10);
        if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno == ERANGE)
            return fail(err, n, "$uint wants a string of digits up to 18446744073709551615");
        *out = mpb_uint(u);
        return 1;
    }
    if (strcmp(key, "$float") == 0) {
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(s, "nan") == 0) *out = mpb_float(NAN);
        else if (strcmp(s, "inf") == 0) *out = mpb_float(INFINITY);
        else if (strcmp(s, "-inf") == 0) *out = mpb_float(-INFINITY);
        else return fail(err, n, "$float wants \"nan\", \"inf\" or \"-inf\"");
        return 1;
    }
    return 0;
}

static int to_value(const json_t *j, mpb_value *out, int depth, char *err, size_t n) {
    *out = mpb_nil();
    if (depth > MAX_DEPTH) return fail(err, n, "nested too deeply");
    switch (json_typeof(j)) {
    case JSON_NULL: return 0;
    case JSON_TRUE: *out = mpb_bool(true); return 0;
    case JSON_FALSE: *out = mpb_bool(false); return 0;
    case JSON_INTEGER: *out = mpb_int(json_integer_value(j)); return 0;
    case JSON_REAL: *out = mpb_float(json_real_value(j)); return 0;
    case JSON_STRING:
        *out = mpb_strn(json_string_value(j), json_string_length(j));
        return out->type == MPB_STR ? 0 : fail(err, n, "out of memory");
    case JSON_ARRAY: {
        size_t len = json_array_size(j);
        *out = mpb_array_value(len);
        if (out->type != MPB_ARRAY) return fail(err, n, "out of memory");
        for (size_t i = 0; i < len; i++) {
            mpb_value item;
            if (to_value(json_array_get(j, i), &item, depth + 1, err, n) < 0 ||
                mpb_value_push(out, &item) < 0) {
                mpb_value_free(&item);
                mpb_value_free(out);
                return err[0] ? -1 : fail(err, n, "out of memory");
            }
        }
        return 0;
    }
    case JSON_OBJECT: {
        int r = notation(j, out, depth, err, n);
        if (r != 0) return r < 0 ? -1 : 0;
        *out = mpb_map_value();
        if (out->type != MPB_MAP) return fail(err, n, "out of memory");
        for (void *it = json_object_iter((json_t *)j); it != NULL;
             it = json_object_iter_next((json_t *)j, it)) {
            mpb_value k = mpb_strn(json_object_iter_key(it), json_object_iter_key_len(it));
            mpb_value v;
            if (k.type != MPB_STR ||
                to_value(json_object_iter_value(it), &v, depth + 1, err, n) < 0) {
                mpb_value_free(&k);
                mpb_value_free(out);
                return err[0] ? -1 : fail(err, n, "out of memory");
            }
            if (mpb_map_set(out->v.m, &k, &v, NULL) < 0) {
                mpb_value_free(&k);
                mpb_value_free(&v);
                mpb_value_free(out);
                return fail(err, n, "out of memory");
            }
        }
        return 0;
    }
    }
    return fail(err, n, "unknown JSON type");
}

int cli_json_to_value(const json_t *j, mpb_value *out, char *err, size_t n) {
    if (n > 0) err[0] = '\0';
    return to_value(j, out, 0, err, n);
}

/*--- value -> JSON ---*/

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
    size_t len;
    uint32_t cp;
    if (p[0] < 0x80) return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) len = 2, cp = p[0] & 0x1f;
    else if (p[0] >= 0xe0 && p[0] <= 0xef) len = 3, cp = p[0] & 0x0f;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4) len = 4, cp = p[0] & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A JSON string of s; bytes that are not UTF-8 become U+FFFD (JSON strings cannot
 * hold them: the human form, the repr, shows them exactly). */
static json_t *json_text(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j != NULL) return j;
    char *buf = malloc(n * 3 + 1);
    size_t len = 0;
    if (buf == NULL) return NULL;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k == 0) {
            memcpy(buf + len, "\xef\xbf\xbd", 3);
            len += 3;
            i++;
        } else {
            memcpy(buf + len, s + i, k);
            len += k;
            i += k;
        }
    }
    j = json_stringn(buf, len);
    free(buf);
    return j;
}

/* {"<key>": value}, taking the reference to value. */
static json_t *tagged(const char *key, json_t *value) {
    json_t *o = value ? json_object() : NULL;
    if (o == NULL || json_object_set_new(o, key, value) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *to_json(const mpb_value *v, const cli_layout *lay);

static json_t *map_to_json(const mpb_map *m, const cli_layout *lay) {
    /* An object when every key is a UTF-8 str, except a lone '$' key, which would read
     * back as notation; else the $map form. */
    size_t it = 0;
    mpb_map_entry *e;
    bool object = true;
    while ((e = mpb_map_next(m, &it)) != NULL)
        if (e->key.type != MPB_STR || (m->len == 1 && e->key.len > 0 && e->key.v.s[0] == '$'))
            object = false;
    if (object) {
        json_t *o = json_object();
        it = 0;
        while (o != NULL && (e = mpb_map_next(m, &it)) != NULL) {
            json_t *v = to_json(&e->val, lay);
            if (v == NULL) {
                json_decref(o);
                return NULL;
            }
            if (json_object_setn_new(o, e->key.v.s, e->key.len, v) < 0) { /* not UTF-8 */
                json_decref(o);
                break;
            }
        }
        if (e == NULL) return o;
    }
    json_t *pairs = json_array();
    it = 0;
    while (pairs != NULL && (e = mpb_map_next(m, &it)) != NULL) {
        json_t *p = json_array();
        if (p == NULL || json_array_append_new(p, to_json(&e->key, lay)) < 0 ||
            json_array_append_new(p, to_json(&e->val, lay)) < 0 ||
            json_array_append_new(pairs, p) < 0) {
            json_decref(pairs);
            return NULL;
        }
    }
    return tagged("$map", pairs);
}

/* {"$ref": N}, or with "$type" and "$value" when lay expands it. */
static json_t *ref_to_json(mpb_ref ref, const cli_layout *lay) {
    mpb_value content;
    json_t *id = json_integer((json_int_t)cli_ref_short(ref));
    if (lay == NULL || lay->expand(lay->ctx, ref, &content) <= 0) return tagged("$ref", id);
    json_t *o = json_object(), *val = to_json(&content, lay);
    mpb_value_free(&content);
    if (lay->done) lay->done(lay->ctx, ref);
    if (o == NULL || val == NULL || json_object_set_new(o, "$ref", id) < 0 ||
        json_object_set_new(o, "$type", json_string(lay->type_of(lay->ctx, ref))) < 0 ||
        json_object_set_new(o, "$value", val) < 0) {
        json_decref(o);
        json_decref(val);
        return NULL;
    }
    return o;
}

static json_t *to_json(const mpb_value *v, const cli_layout *lay) {
    char buf[32];
    switch ((mpb_type)v->type) {
    case MPB_NIL: return json_null();
    case MPB_BOOL: return json_boolean(v->v.b);
    case MPB_INT: return json_integer(v->v.i);
    case MPB_UINT:
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)v->v.u);
        return tagged("$uint", json_string(buf));
    case MPB_FLOAT:
        if (isfinite(v->v.f)) return json_real(v->v.f);
        return tagged("$float", json_string(isnan(v->v.f) ? "nan" : v->v.f > 0 ? "inf" : "-inf"));
    case MPB_STR: return json_text(v->v.s, v->len);
    case MPB_BIN: {
        char *s = b64_encode((const unsigned char *)v->v.s, v->len);
        json_t *j = s ? tagged("$bin", json_string(s)) : NULL;
        free(s);
        return j;
    }
    case MPB_ARRAY: {
        json_t *a = json_array();
        for (size_t i = 0; a != NULL && i < v->v.a->len; i++)
            if (json_array_append_new(a, to_json(&v->v.a->items[i], lay)) < 0) {
                json_decref(a);
                return NULL;
            }
        return a;
    }
    case MPB_MAP: return map_to_json(v->v.m, lay);
    case MPB_REF: return ref_to_json(v->v.ref, lay);
    }
    return NULL;
}

json_t *cli_value_to_json(const mpb_value *v) { return to_json(v, NULL); }

json_t *cli_value_to_json_ex(const mpb_value *v, const cli_layout *lay) {
    return to_json(v, lay);
}

/*--- Printing ---*/

/* Fewest significant digits that read back as exactly f (Python's repr rule). */
static int shortest_digits(double f) {
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, f);
        if (strtod(buf, NULL) == f) return p;
    }
    return 17;
}

static int max_digits(const json_t *j) {
    int m = 1;
    if (json_is_real(j)) return shortest_digits(json_real_value(j));
    if (json_is_array(j))
        for (size_t i = 0; i < json_array_size(j); i++) {
            int d = max_digits(json_array_get(j, i));
            if (d > m) m = d;
        }
    if (json_is_object(j))
        for (void *it = json_object_iter((json_t *)j); it; it = json_object_iter_next((json_t *)j, it)) {
            int d = max_digits(json_object_iter_value(it));
            if (d > m) m = d;
        }
    return m;
}

int cli_print_json(FILE *f, json_t *j) {
    /* jansson prints every real with one precision. The largest of the shortest
     * round-trip precisions reads each one back exactly, and %g drops the zeros it
     * does not need: 0.1 stays 0.1 instead of 0.10000000000000001. */
    char *s = j ? json_dumps(j, JSON_ENCODE_ANY | JSON_REAL_PRECISION(max_digits(j))) : NULL;
    json_decref(j);
    if (s == NULL) return cli_error(CLI_FAIL, "out of memory");
    fprintf(f, "%s\n", s);
    free(s);
    return CLI_OK;
}

/*--- Command arguments ---*/

int cli_arg_value(mpb_cli *cli, const cli_arg *a, mpb_value *out) {
    const char *s = a->s;
    *out = mpb_nil();
    if (s[0] == '@' && s[1] != '\0' && !a->quoted) {
        mpb_ref r;
        int rc = cli_resolve(cli, s, &r);
        if (rc == CLI_OK) *out = mpb_refv(r);
        return rc;
    }
    json_error_t e;
    json_t *j = a->quoted ? NULL : json_loads(s, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (j == NULL) {
        /* Not JSON. A word that could not have been meant as JSON (not a number, array,
         * object or "string") is a plain string: `call d setitem color blue`. */
        if (a->quoted || s[0] == '\0' || strchr("[{\"-0123456789", s[0]) == NULL) {
            *out = mpb_str(s);
            return out->type == MPB_STR ? CLI_OK : cli_error(CLI_FAIL, "out of memory");
        }
        return cli_error(CLI_USAGE, "bad JSON in argument '%s': %s (column %d)", s, e.text,
                         e.column);
    }
    char err[128];
    int rc = cli_json_to_value(j, out, err, sizeof err);
    json_decref(j);
    if (rc < 0) return cli_error(CLI_USAGE, "bad argument '%s': %s", s, err);
    return CLI_OK;
}
