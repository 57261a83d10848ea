/* test_durability.c - what a start does with the data directory it finds: damage in
 * the middle of a log or in its last record, a header-less or empty log, a missing
 * log, header fields that disagree, a record that fails when replayed, stale
 * temporaries, --repair, and format 1 files (converted at once).
 *
 * Files are damaged or written by hand (format 2 records are framed here with the
 * broker's own CRC-32C); every start is a real broker process.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "../server/crc32c.h"
#include "mpb_codec.h"
#include "testutil.h"

static char datadir[64];
static tb_broker B;
static mpb_context *C;

#define V(text) tb_lit(text)
#define R(r) mpb_refv(r)
#define EXPECT(want, method, ...) TB_EXPECT(C, want, method, __VA_ARGS__)

static void setup(void)
{
    snprintf(datadir, sizeof datadir, "/tmp/mpbdur.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(datadir));
}

static void teardown(void)
{
    if (C) mpb_free(C);
    C = NULL;
    if (B.pid > 0) ck_assert_int_eq(tb_stop(&B), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", datadir);
    ck_assert_int_eq(system(cmd), 0);
}

static void start(const char *compact)
{
    const char *args[] = {"--data-dir", datadir, "--fsync", "always", "--compact-size",
                          compact, "--quiet", NULL};
    tb_start(&B, 0, args);
    C = tb_connect(&B);
}

static void crash(void)
{
    mpb_free(C);
    C = NULL;
    kill(B.pid, SIGKILL);
    waitpid(B.pid, NULL, 0);
    B.pid = -1;
    tb_stop(&B);
}

static void stop(void)
{
    mpb_free(C);
    C = NULL;
    ck_assert_int_eq(tb_stop(&B), 0);
}

/* Run the server on datadir with extra arguments; its exit status, output in out. */
static int run_server(const char *extra, char *out, size_t n)
{
    char cmd[600];
    /* timeout: a start that should be refused but is not fails here, not at the
     * suite's timeout. */
    snprintf(cmd, sizeof cmd, "timeout 60 %s --socket %s/s.sock --quiet --data-dir %s %s 2>&1 "
             "</dev/null", getenv("MPB_SERVER"), datadir, datadir, extra);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A start must be refused, saying each of the words (NULL-terminated). */
static void refused(const char *const *words)
{
    char out[2000];
    int rc = run_server("", out, sizeof out);
    ck_assert_msg(rc == 1, "exit %d, want 1 (refused): %s", rc, out);
    for (int i = 0; words[i]; i++) ck_assert_msg(strstr(out, words[i]), "no '%s' in: %s", words[i], out);
}
#define REFUSED(...) refused((const char *const[]){__VA_ARGS__, NULL})

static char *path_of(const char *name)
{
    static char p[2][128];
    static int k;
    k ^= 1;
    snprintf(p[k], sizeof p[k], "%s/%s", datadir, name);
    return p[k];
}

static char *slurp(const char *name, size_t *len)
{
    FILE *f = fopen(path_of(name), "rb");
    ck_assert_msg(f != NULL, "open %s", name);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *d = malloc(*len + 1);
    ck_assert_uint_eq(fread(d, 1, *len, f), *len);
    fclose(f);
    return d;
}

static void spit(const char *name, const void *d, size_t len)
{
    FILE *f = fopen(path_of(name), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(d, 1, len, f), len);
    fclose(f);
}

static bool exists(const char *name)
{
    struct stat st;
    return stat(path_of(name), &st) == 0;
}

/* Offsets of the records of a format 2 file, into at (up to max); returns how many. */
static int records(const char *d, size_t len, size_t *at, int max)
{
    int n = 0;
    for (size_t off = 0; off + 12 <= len && n < max;) {
        const unsigned char *u = (const unsigned char *)d + off;
        size_t l = u[0] | u[1] << 8 | u[2] << 16 | (size_t)u[3] << 24;
        at[n++] = off;
        off += l + 12;
    }
    return n;
}

/*--- Writing files by hand ---*/

typedef struct file {
    msgpack_sbuffer sb;
    msgpack_sbuffer body;
    msgpack_packer pk; /* packs into body */
    bool v1;           /* format 1: bare records */
} file;

static void file_init(file *f, bool v1)
{
    msgpack_sbuffer_init(&f->sb);
    msgpack_sbuffer_init(&f->body);
    msgpack_packer_init(&f->pk, &f->body, msgpack_sbuffer_write);
    f->v1 = v1;
}

static void put32(msgpack_sbuffer *sb, uint32_t v)
{
    unsigned char b[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
    msgpack_sbuffer_write(sb, (const char *)b, 4);
}

/* Append the body packed so far as one record. */
static void file_rec(file *f)
{
    if (!f->v1) {
        unsigned char len[4] = {f->body.size & 0xff, (f->body.size >> 8) & 0xff,
                                (f->body.size >> 16) & 0xff, f->body.size >> 24};
        put32(&f->sb, (uint32_t)f->body.size);
        put32(&f->sb, mpb_crc32c(0, len, 4));
    }
    msgpack_sbuffer_write(&f->sb, f->body.data, f->body.size);
    if (!f->v1) put32(&f->sb, mpb_crc32c(0, f->body.data, f->body.size));
    msgpack_sbuffer_clear(&f->body);
}

static void file_save(file *f, const char *name)
{
    spit(name, f->sb.data, f->sb.size);
    msgpack_sbuffer_destroy(&f->sb);
    msgpack_sbuffer_destroy(&f->body);
}

static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static void log_header(file *f, const char *magic, unsigned format, uint64_t gen)
{
    msgpack_pack_array(&f->pk, 3);
    pstr(&f->pk, magic);
    msgpack_pack_uint8(&f->pk, (uint8_t)format);
    msgpack_pack_uint64(&f->pk, gen);
    file_rec(f);
}

static void log_create_list(file *f, uint64_t id, const char *name)
{
    msgpack_pack_array(&f->pk, 5);
    pstr(&f->pk, "create");
    msgpack_pack_uint64(&f->pk, id);
    pstr(&f->pk, "list");
    pstr(&f->pk, name);
    msgpack_pack_nil(&f->pk);
    file_rec(f);
}

static void log_append(file *f, uint64_t id, int64_t item)
{
    msgpack_pack_array(&f->pk, 3);
    pstr(&f->pk, "call");
    pstr(&f->pk, "list.append");
    msgpack_pack_array(&f->pk, 2);
    mpb_ref_pack(&f->pk, id);
    msgpack_pack_int64(&f->pk, item);
    file_rec(f);
}

static mpb_ref lookup(const char *name)
{
    mpb_ref r;
    ck_assert_msg(mpb_lookup(C, name, &r) == MPB_OK, "lookup %s: %s", name, C->errstr);
    return r;
}

/*--- Damage in the log ---*/

/* A list "l" with 0..9 appended, the broker then killed: log.0.mpb holds the header,
 * the create and ten calls (records 0, 1, 2..11). */
static mpb_ref ten_appends(void)
{
    start("67108864");
    mpb_ref l;
    ck_assert_int_eq(mpb_open(C, "list", "l", NULL, &l), MPB_OK);
    for (int i = 0; i < 10; i++) EXPECT("None", "list.append", R(l), mpb_int(i));
    crash();
    return l;
}

START_TEST(damage_mid_log_refuses_with_the_offset_and_repair_cuts_there_keeping_a_copy)
{
    /* The case: one byte of a record near the start changed; the broker took
     * it for a torn tail and truncated 990 of 1000 acknowledged records. */
    mpb_ref l = ten_appends();
    size_t len, at[16];
    char *d = slurp("log.0.mpb", &len);
    ck_assert_int_eq(records(d, len, at, 16), 12);
    d[at[5] + 9] ^= 0x20; /* in the body of record 5: list.append 3 */
    spit("log.0.mpb", d, len);
    char off[32], cut[64];
    snprintf(off, sizeof off, "at byte %zu ", at[5]);
    snprintf(cut, sizeof cut, "log.0.mpb.cut-%zu", at[5]);
    REFUSED("log.0.mpb is damaged", off, "record 5", "6 good records follow", "--repair", cut);
    size_t len2;
    char *same = slurp("log.0.mpb", &len2); /* a refused start changes nothing */
    ck_assert(len2 == len && memcmp(same, d, len) == 0);
    free(same);

    char out[2000];
    ck_assert_msg(run_server("--repair", out, sizeof out) == 0, "%s", out);
    ck_assert_msg(strstr(out, "cut") && strstr(out, cut), "%s", out);
    size_t kept_len;
    char *kept = slurp(cut, &kept_len);
    ck_assert_uint_eq(kept_len, len - at[5]); /* the cut bytes, exactly */
    ck_assert(memcmp(kept, d + at[5], kept_len) == 0);
    free(kept);
    free(d);

    start("67108864");
    EXPECT("[0, 1, 2]", "list.copy", R(l));
    EXPECT("None", "list.append", R(l), mpb_int(10));
    crash();
    start("67108864");
    EXPECT("[0, 1, 2, 10]", "list.copy", R(l));
}
END_TEST

START_TEST(a_bad_checksum_in_the_last_record_is_damage_not_a_torn_tail)
{
    mpb_ref l = ten_appends();
    size_t len, at[16];
    char *d = slurp("log.0.mpb", &len);
    ck_assert_int_eq(records(d, len, at, 16), 12);
    d[len - 6] ^= 0x01; /* one bit of the last record's body */
    spit("log.0.mpb", d, len);
    free(d);
    REFUSED("log.0.mpb is damaged", "record 11", "not as a write that did not finish");
    /* A flipped length is damage too, not a record that runs past the end. */
    d = slurp("log.0.mpb", &len);
    d[len - 6] ^= 0x01;
    d[at[11] + 1] ^= 0x10;
    spit("log.0.mpb", d, len);
    free(d);
    REFUSED("log.0.mpb is damaged", "record 11", "head whose checksum does not match");
    (void)l;
}
END_TEST

START_TEST(zeros_where_the_last_write_should_be_are_a_torn_tail)
{
    /* What a file system can leave after a power cut: the size grew, the data did
     * not reach the disk. Never acknowledged under --fsync always. */
    mpb_ref l = ten_appends();
    size_t len, at[16];
    char *d = slurp("log.0.mpb", &len);
    ck_assert_int_eq(records(d, len, at, 16), 12);
    memset(d + at[11] + 12, 0, len - at[11] - 12); /* the last record's end */
    spit("log.0.mpb", d, len);
    start("67108864");
    EXPECT("[0, 1, 2, 3, 4, 5, 6, 7, 8]", "list.copy", R(l));
    stop();
    /* And a run of zeros after the last record, from where the last sync ended: not a
     * block boundary (zeros from one are refused: see the block boundary test). */
    ck_assert_uint_ne(at[11] % 512, 0);
    char *z = calloc(1, 4096);
    FILE *f = fopen(path_of("log.0.mpb"), "ab");
    ck_assert_uint_eq(fwrite(z, 1, 4096, f), 4096);
    fclose(f);
    free(z);
    free(d);
    start("67108864");
    EXPECT("[0, 1, 2, 3, 4, 5, 6, 7, 8]", "list.copy", R(l));
}
END_TEST

START_TEST(zeros_from_inside_a_record_that_more_bytes_follow_are_damage)
{
    /* The ext4 case (PROTOCOL.md, "What it costs"): the file system block that held the
     * end of an acknowledged, fsynced record reads back as zeros, and so does everything
     * the failed write after it put there. The record's head is intact, its end and
     * the rest of the file zeros: bytes follow it, so it is not the last record
     * written, and cutting it as a torn tail would drop an acknowledged write in
     * silence. It is damage: refused, with the way out. */
    mpb_ref l = ten_appends();
    size_t len, at[16];
    char *d = slurp("log.0.mpb", &len);
    ck_assert_int_eq(records(d, len, at, 16), 12);
    memset(d + at[10] + 12, 0, len - at[10] - 12); /* record 10's end, all of record 11 */
    spit("log.0.mpb", d, len);
    char off[32], cut[64];
    snprintf(off, sizeof off, "at byte %zu ", at[10]);
    snprintf(cut, sizeof cut, "log.0.mpb.cut-%zu", at[10]);
    REFUSED("log.0.mpb is damaged", off, "record 10", "not the last record written", "--repair",
            cut);
    size_t len2;
    char *same = slurp("log.0.mpb", &len2); /* a refused start changes nothing */
    ck_assert(len2 == len && memcmp(same, d, len) == 0);
    free(same);
    /* With more zeros after it (the file grew further), the same. */
    char *z = calloc(1, 4096 + len);
    memcpy(z, d, len);
    spit("log.0.mpb", z, len + 4096);
    REFUSED("log.0.mpb is damaged", off, "record 10", "--repair");
    free(z);
    free(d);
    /* The way out cuts there and keeps what it cut. */
    char out[2000];
    ck_assert_msg(run_server("--repair", out, sizeof out) == 0, "%s", out);
    ck_assert(exists(cut));
    start("67108864");
    EXPECT("[0, 1, 2, 3, 4, 5, 6, 7]", "list.copy", R(l));
}
END_TEST

/* ["call", "list.append", [ID, "xxx..."]] with the string's length chosen so that the
 * record ends at byte `end` of the file. */
static void log_append_to(file *f, uint64_t id, size_t end)
{
    char pad[1024];
    memset(pad, 'x', sizeof pad);
    for (size_t k = 0; k < sizeof pad; k++) {
        msgpack_pack_array(&f->pk, 3);
        pstr(&f->pk, "call");
        pstr(&f->pk, "list.append");
        msgpack_pack_array(&f->pk, 2);
        mpb_ref_pack(&f->pk, id);
        msgpack_pack_str_with_body(&f->pk, pad, k);
        if (f->sb.size + 12 + f->body.size == end) {
            file_rec(f);
            return;
        }
        msgpack_sbuffer_clear(&f->body);
    }
    ck_abort_msg("no string makes the record end at byte %zu", end);
}

START_TEST(zeros_from_a_block_boundary_on_are_damage_not_a_torn_tail)
{
    /* A file system loses whole blocks. Zeros from a record's start to the end of the
     * file are a torn tail when they begin where the last sync ended, but when they
     * begin at a block boundary, the block may have held synced, acknowledged records
     * (ext4 after a failed fdatasync zeroes the block that shared the last acknowledged
     * bytes with the failed write): refused, not cut. */
    file f;
    file_init(&f, false);
    log_header(&f, "mpbroker-log", 2, 0);
    log_create_list(&f, 1, "l");
    log_append(&f, 1, 0);
    log_append_to(&f, 1, 512); /* the next record starts at byte 512 */
    log_append(&f, 1, 2);
    log_append(&f, 1, 3);
    size_t len = f.sb.size;
    memset(f.sb.data + 512, 0, len - 512);
    file_save(&f, "log.0.mpb");
    REFUSED("log.0.mpb is damaged", "at byte 512 ", "begins a disk block", "--repair",
            "log.0.mpb.cut-512");
    char out[2000];
    ck_assert_msg(run_server("--repair", out, sizeof out) == 0, "%s", out);
    ck_assert(exists("log.0.mpb.cut-512"));
    start("67108864");
    EXPECT("2", "list.len", R(lookup("l")));
}
END_TEST

/*--- Header-less, empty, missing ---*/

/* A snapshot of generation 1 (list "l" = [0..4]) and its log with [5]. */
static mpb_ref compacted(void)
{
    start("100");
    mpb_ref l;
    ck_assert_int_eq(mpb_open(C, "list", "l", NULL, &l), MPB_OK);
    for (int i = 0; i < 5; i++) EXPECT("None", "list.append", R(l), V("'some bytes to pass the size'"));
    stop();
    ck_assert(exists("snapshot.mpb"));
    return l;
}

static const char *live_log(void)
{
    static char name[64];
    for (int g = 0; g < 100; g++) {
        snprintf(name, sizeof name, "log.%d.mpb", g);
        if (exists(name)) return name;
    }
    ck_abort_msg("no log");
    return NULL;
}

START_TEST(a_header_less_or_empty_log_refuses_and_repair_gives_it_a_new_header)
{
    /* Before: accepted once as an empty state, taking new writes, then refused at the
     * next start ("not an mpbroker log"). */
    for (int cut = 5; cut >= 0; cut -= 5) {
        mpb_ref l = compacted();
        const char *name = live_log();
        ck_assert_int_eq(truncate(path_of(name), cut), 0);
        REFUSED(name, "has no valid header", "--repair");
        char out[2000];
        ck_assert_msg(run_server("--repair", out, sizeof out) == 0, "%s", out);
        start("100");
        EXPECT("5", "list.len", R(l)); /* the snapshot's state */
        EXPECT("None", "list.append", R(l), mpb_int(5));
        crash();
        start("100");
        EXPECT("6", "list.len", R(l));
        stop();
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s/*", datadir);
        ck_assert_int_eq(system(cmd), 0);
    }
}
END_TEST

START_TEST(a_missing_log_refuses_and_repair_starts_a_new_one)
{
    mpb_ref l = compacted();
    const char *name = live_log();
    ck_assert_int_eq(unlink(path_of(name)), 0);
    REFUSED(name, "is missing", "--repair");
    char out[2000];
    ck_assert_msg(run_server("--repair", out, sizeof out) == 0, "%s", out);
    start("100");
    EXPECT("5", "list.len", R(l));
}
END_TEST

START_TEST(stale_temporaries_are_removed_at_start)
{
    /* Before: a snapshot.tmp left by a compaction that failed or was killed stayed,
     * keeping its space, for ever. */
    mpb_ref l = compacted();
    char junk[3000];
    memset(junk, 'x', sizeof junk);
    spit("snapshot.tmp", junk, sizeof junk);
    spit("log.tmp", junk, 10);
    start("100");
    EXPECT("5", "list.len", R(l));
    ck_assert(!exists("snapshot.tmp") && !exists("log.tmp"));
}
END_TEST

/*--- Header fields and replay ---*/

START_TEST(header_fields_are_checked)
{
    file f;
    file_init(&f, false);
    log_header(&f, "mpbroker-log", 2, 7); /* log.0.mpb claiming generation 7 */
    file_save(&f, "log.0.mpb");
    REFUSED("log.0.mpb says it is generation 7", "refusing to start");

    file_init(&f, false);
    log_header(&f, "mpbroker-log", 3, 0);
    file_save(&f, "log.0.mpb");
    REFUSED("format 3", "newer mpbroker");

    file_init(&f, false);
    log_header(&f, "mpbroker-lag", 2, 0);
    file_save(&f, "log.0.mpb");
    REFUSED("does not begin with an mpbroker log header");
}
END_TEST

START_TEST(a_record_that_fails_on_replay_refuses_instead_of_being_skipped)
{
    /* Before: "warning: N logged calls did not replay", and the start went on. */
    file f;
    file_init(&f, false);
    log_header(&f, "mpbroker-log", 2, 0);
    log_create_list(&f, 1, "l");
    log_append(&f, 1, 5);
    size_t at = f.sb.size;
    log_append(&f, 99, 6); /* no object 99 */
    log_append(&f, 1, 7);
    file_save(&f, "log.0.mpb");
    char off[32];
    snprintf(off, sizeof off, "at byte %zu ", at);
    REFUSED("log.0.mpb is damaged", off, "list.append fails when replayed", "NoSuchObject");
}
END_TEST

/*--- Format 1 ---*/

START_TEST(format_1_files_are_read_and_converted)
{
    /* A format 1 snapshot (CRC-32 over the file) of generation 3, and its log. */
    file s;
    file_init(&s, true);
    msgpack_pack_array(&s.pk, 4);
    pstr(&s.pk, "mpbroker-snapshot");
    msgpack_pack_uint8(&s.pk, 1);
    msgpack_pack_uint64(&s.pk, 3);
    msgpack_pack_uint64(&s.pk, 2);
    file_rec(&s);
    msgpack_pack_array(&s.pk, 4);
    pstr(&s.pk, "obj");
    msgpack_pack_uint64(&s.pk, 1);
    pstr(&s.pk, "list");
    pstr(&s.pk, "l");
    file_rec(&s);
    msgpack_pack_array(&s.pk, 3);
    pstr(&s.pk, "fill");
    msgpack_pack_uint64(&s.pk, 1);
    msgpack_pack_array(&s.pk, 2);
    msgpack_pack_int64(&s.pk, 1);
    msgpack_pack_int64(&s.pk, 2);
    file_rec(&s);
    uLong crc = crc32(crc32(0, NULL, 0), (const Bytef *)s.sb.data, (uInt)s.sb.size);
    msgpack_pack_array(&s.pk, 3);
    pstr(&s.pk, "end");
    msgpack_pack_uint64(&s.pk, 3);
    msgpack_pack_uint32(&s.pk, (uint32_t)crc);
    file_rec(&s);
    file_save(&s, "snapshot.mpb");
    file f;
    file_init(&f, true);
    log_header(&f, "mpbroker-log", 1, 3);
    log_append(&f, 1, 3);
    msgpack_sbuffer_write(&f.sb, "\x93\xa4" "call", 6); /* a torn tail */
    file_save(&f, "log.3.mpb");

    char out[2000];
    int rc = run_server("--repair", out, sizeof out); /* loads, converts, exits */
    ck_assert_msg(rc == 0 && strstr(out, "converted"), "%d: %s", rc, out);
    ck_assert(!exists("log.3.mpb") && exists("log.4.mpb"));
    size_t len;
    char *d = slurp("snapshot.mpb", &len);
    ck_assert_msg((unsigned char)d[0] != 0x94, "still format 1");
    free(d);
    start("67108864");
    mpb_ref l = lookup("l");
    ck_assert_uint_eq(l, 1);
    EXPECT("[1, 2, 3]", "list.copy", R(l));
    EXPECT("None", "list.append", R(l), mpb_int(4));
    crash();
    start("67108864");
    EXPECT("[1, 2, 3, 4]", "list.copy", R(l));
}
END_TEST

static Suite *durability_suite(void)
{
    Suite *s = suite_create("durability");
    TCase *tc = tcase_create("durability");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, damage_mid_log_refuses_with_the_offset_and_repair_cuts_there_keeping_a_copy);
    tcase_add_test(tc, a_bad_checksum_in_the_last_record_is_damage_not_a_torn_tail);
    tcase_add_test(tc, zeros_where_the_last_write_should_be_are_a_torn_tail);
    tcase_add_test(tc, zeros_from_inside_a_record_that_more_bytes_follow_are_damage);
    tcase_add_test(tc, zeros_from_a_block_boundary_on_are_damage_not_a_torn_tail);
    tcase_add_test(tc, a_header_less_or_empty_log_refuses_and_repair_gives_it_a_new_header);
    tcase_add_test(tc, a_missing_log_refuses_and_repair_starts_a_new_one);
    tcase_add_test(tc, stale_temporaries_are_removed_at_start);
    tcase_add_test(tc, header_fields_are_checked);
    tcase_add_test(tc, a_record_that_fails_on_replay_refuses_instead_of_being_skipped);
    tcase_add_test(tc, format_1_files_are_read_and_converted);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tb_run(durability_suite());
}
