/* persist_file.c - checksummed records, atomic file creation, and telling a torn tail
 * from damage (see persist_file.h for the format). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"
#include "persist_file.h"

static void put32(char *p, uint32_t v)
{
    p[0] = (char)(v & 0xff);
    p[1] = (char)((v >> 8) & 0xff);
    p[2] = (char)((v >> 16) & 0xff);
    p[3] = (char)(v >> 24);
}

static uint32_t get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

/*--- Writing ---*/

size_t pf_begin(msgpack_sbuffer *sb)
{
    static const char zero[PF_HEAD];
    size_t start = sb->size;
    msgpack_sbuffer_write(sb, zero, PF_HEAD);
    return start;
}

int pf_end(msgpack_sbuffer *sb, size_t start)
{
    size_t len = sb->size - start - PF_HEAD;
    if (sb->size < start + PF_HEAD || len == 0 || len > UINT32_MAX) {
        sb->size = start;
        return -1;
    }
    char *head = sb->data + start, tail[PF_TAIL];
    put32(head, (uint32_t)len);
    put32(head + 4, mpb_crc32c(0, head, 4));
    put32(tail, mpb_crc32c(0, head + PF_HEAD, len));
    msgpack_sbuffer_write(sb, tail, PF_TAIL);
    return 0;
}

int pf_write_all(int fd, const void *buf, size_t n, size_t *done)
{
    const char *p = buf;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO; /* no progress and no reason: do not spin */
            if (done) *done = n - left;
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (done) *done = n;
    return 0;
}

int pf_create(int dirfd, const char *tmp, const char *name, const void *head, size_t n,
              const char **step)
{
    *step = "create";
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if ((*step = "write", pf_write_all(fd, head, n, NULL) < 0) ||
        (*step = "fdatasync", fdatasync(fd) < 0) ||
        (*step = "rename", renameat(dirfd, tmp, dirfd, name) < 0)) {
        int e = errno;
        close(fd);
        unlinkat(dirfd, tmp, 0);
        errno = e;
        return -1;
    }
    /* Renamed: only the directory entry may still be in the page cache. */
    if ((*step = "fsync of the directory", fsync(dirfd) < 0)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/*--- Reading ---*/

pf_status pf_check(const char *p, size_t avail, const char **body, uint32_t *body_len,
                   size_t *size)
{
    if (avail < PF_HEAD) return PF_SHORT_HEAD;
    uint32_t len = get32(p);
    if (len == 0 || get32(p + 4) != mpb_crc32c(0, p, 4)) return PF_BAD_HEAD;
    /* Not len + PF_OVERHEAD > avail: with a 32-bit size_t that sum wraps for a LEN
     * near 2^32, and the body would be read past the end of the file. */
    if (avail < PF_OVERHEAD || len > avail - PF_OVERHEAD) return PF_SHORT_BODY;
    if (get32(p + PF_HEAD + len) != mpb_crc32c(0, p + PF_HEAD, len)) return PF_BAD_BODY;
    *body = p + PF_HEAD;
    *body_len = len;
    *size = (size_t)len + PF_OVERHEAD;
    return PF_OK;
}

static bool all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

void pf_classify(const char *data, size_t len, size_t at, pf_status status, pf_damage *d)
{
    *d = (pf_damage){.at = at, .status = status};
    /* Any good record after the bad one means the bad one is in the middle. Every
     * offset is tried: a flipped length says nothing about where the next record is. */
    for (size_t p = at + 1; p + PF_OVERHEAD < len + 1; p++) {
        const char *b;
        uint32_t bl;
        size_t size;
        if (pf_check(data + p, len - p, &b, &bl, &size) != PF_OK) continue;
        if (!d->resume) d->resume = p;
        d->good_after++;
        p += size - 1; /* count whole records from there on */
    }
    if (d->resume) return;
    switch (status) {
    case PF_SHORT_HEAD:
    case PF_SHORT_BODY: d->torn = true; return;
    case PF_BAD_HEAD:
        /* Only zeros from a record's start on: what a file system shows for writes that
         * never reached the disk, beginning where the last good sync ended (the end of
         * a record: anywhere). But a file system loses whole blocks: when the zeros
         * begin at a block boundary, the lost block may also have held the end of
         * what was synced and acknowledged (ext4 after a failed fdatasync: see
         * PF_BAD_BODY), records that began exactly there. Damage, then. */
        if (!all_zero(data + at, len - at)) return;
        d->torn = at % PF_BLOCK != 0;
        d->zeros_on_block = !d->torn;
        return;
    case PF_BAD_BODY: {
        /* The last record written, whose end never reached the disk: its BCRC is
         * zeros and the file ends with it. One flipped bit cannot make that (BCRC
         * would need to have had exactly that one bit set). Zeros that go on past
         * its end are not that: the file grew after this record, so it may have
         * been acknowledged and fsynced before a later write failed (on ext4 the
         * block holding such a record's end can read back as zeros after the write
         * that shared it failed: PROTOCOL.md). Cutting it would drop an
         * acknowledged write in silence: it is damage. */
        size_t tail = at + PF_HEAD + get32(data + at);
        bool zero_end = all_zero(data + tail, len - tail);
        d->torn = zero_end && tail + PF_TAIL == len;
        if (zero_end && !d->torn) d->zeros_after = len - tail - PF_TAIL;
        return;
    }
    case PF_OK: return;
    }
}

const char *pf_status_text(pf_status s)
{
    switch (s) {
    case PF_OK: return "a good record";
    case PF_SHORT_HEAD: return "the file ends inside a record's head";
    case PF_SHORT_BODY: return "the file ends inside a record";
    case PF_BAD_HEAD: return "a record head whose checksum does not match";
    case PF_BAD_BODY: return "a record whose checksum does not match";
    }
    return "?";
}
