/* crc32c.h - CRC-32C (Castagnoli), the checksum of every persistence record.
 *
 * Why CRC-32C rather than zlib's CRC-32: for the lengths our records have (tens of
 * bytes to a few KiB) the Castagnoli polynomial detects more (Hamming distance 6 up to
 * 5243 bits, against 268 for CRC-32; Koopman 2002), and x86-64 computes it in
 * hardware (SSE4.2), as ext4, Btrfs, iSCSI and LevelDB's log use it. Both catch every
 * single-bit error and every burst up to 32 bits.
 */
#ifndef MPB_CRC32C_H
#define MPB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of len bytes, continuing from crc (0 to start): mpb_crc32c(0, "123456789",
 * 9) == 0xE3069283. Uses the CPU's crc32 instruction when it has one. */
uint32_t mpb_crc32c(uint32_t crc, const void *buf, size_t len);
/* The same, always in software (tests compare the two). */
uint32_t mpb_crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif
