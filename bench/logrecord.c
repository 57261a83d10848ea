/* logrecord.c - what the log's per-record checksums cost: packing a typical record
 * (list.append of a small int) with and without its frame (LEN, CRC-32C of LEN, body,
 * CRC-32C of body; server/persist_file.c), in CPU time per record.
 *
 *   build/bench/mpbroker-logrecord [ROUNDS]      (default 5; prints each, then the best)
 *
 * CPU time (CLOCK_PROCESS_CPUTIME_ID), best of the rounds: on a shared machine the
 * best round is the one least disturbed. bench/fsync shows the same cost from outside
 * (server CPU per write), where it is lost in the noise.
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../server/crc32c.h"
#include "../server/persist_file.h"

enum { N = 5000000 };

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ["call", "list.append", [REF, i]], as persist_log_call packs it. */
static void pack(msgpack_packer *pk, int i)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_str_with_body(pk, "call", 4);
    msgpack_pack_str_with_body(pk, "list.append", 11);
    msgpack_pack_array(pk, 2);
    msgpack_pack_ext(pk, 8, 1);
    msgpack_pack_ext_body(pk, "\0\0\0\0\0\0\0\1", 8);
    msgpack_pack_int64(pk, i);
}

int main(int argc, char **argv)
{
    const char *a = argc > 1 ? argv[1] : "5";
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
        printf("usage: mpbroker-logrecord [ROUNDS]\n\n"
               "What the persistence log's per-record checksums cost: CPU time to pack a\n"
               "list.append record bare and framed, best of ROUNDS (default 5) rounds.\n");
        return 0;
    }
    if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
        printf("mpbroker-logrecord %s\n", MPB_VERSION);
        return 0;
    }
    char *end;
    long n = strtol(a, &end, 10);
    if (argc > 2 || end == a || *end || n < 1 || n > 1000) {
        fprintf(stderr, "mpbroker-logrecord: ROUNDS is a whole number from 1 to 1000, not '%s'\n"
                "mpbroker-logrecord --help says more\n", argc > 2 ? argv[2] : a);
        return 2;
    }
    int rounds = (int)n;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack(&pk, 5);
    size_t body = sb.size;
    double best_bare = 1e9, best_framed = 1e9;
    for (int r = 0; r < rounds; r++) {
        msgpack_sbuffer_clear(&sb);
        double t0 = cpu_now();
        for (int i = 0; i < N; i++) {
            if (sb.size > (1u << 20)) msgpack_sbuffer_clear(&sb);
            pack(&pk, i);
        }
        double t1 = cpu_now();
        for (int i = 0; i < N; i++) {
            if (sb.size > (1u << 20)) msgpack_sbuffer_clear(&sb);
            size_t at = pf_begin(&sb);
            pack(&pk, i);
            pf_end(&sb, at);
        }
        double t2 = cpu_now();
        double bare = (t1 - t0) / N * 1e9, framed = (t2 - t1) / N * 1e9;
        printf("round %d: packing %.1f ns, packing and framing %.1f ns\n", r + 1, bare, framed);
        if (bare < best_bare) best_bare = bare;
        if (framed < best_framed) best_framed = framed;
    }
    printf("best: a %zu-byte record costs %.1f ns to pack, %.1f ns more to frame "
           "(+%d bytes on disk)\n", body, best_bare, best_framed - best_bare, PF_OVERHEAD);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
