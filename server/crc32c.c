/* crc32c.c - CRC-32C: slicing-by-8 tables in software, the SSE4.2 crc32 instruction
 * when the CPU has it (chosen once, at start-up). */
#include <string.h>

#include "crc32c.h"

#define POLY 0x82F63B78u /* Castagnoli, reflected */

static uint32_t table[8][256];
static uint32_t (*impl)(uint32_t, const unsigned char *, size_t);

static uint32_t sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n > 0 && ((uintptr_t)p & 7) != 0) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ /* the tables are built for it */
    for (; n >= 8; p += 8, n -= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
              table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
              table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
    }
#endif
    while (n-- > 0) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HAVE_HW 1
__attribute__((target("sse4.2"))) static uint32_t hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n > 0 && ((uintptr_t)p & 7) != 0) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    while (n-- > 0) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

/* Tables and the choice of implementation, before main (so before any thread). */
__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1)));
        table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
    impl = sw;
#ifdef HAVE_HW
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) impl = hw;
#endif
}

uint32_t mpb_crc32c(uint32_t crc, const void *buf, size_t len)
{
    return ~impl(~crc, buf, len);
}

uint32_t mpb_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    return ~sw(~crc, buf, len);
}
