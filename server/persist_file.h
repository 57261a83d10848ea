/* persist_file.h - the on-disk form of persistence (format 2): checksummed records,
 * files that appear whole or not at all, and reading records back with a torn tail
 * told apart from damage. No broker state here: persist.c decides what goes in.
 *
 * A file is a run of records, each
 *
 *     LEN   u32 little-endian   length of BODY, 1 .. 2^32-1
 *     HCRC  u32 little-endian   CRC-32C of the 4 LEN bytes
 *     BODY  LEN bytes           one msgpack array (see persist.c for what arrays)
 *     BCRC  u32 little-endian   CRC-32C of BODY
 *
 * HCRC lets a reader trust LEN before reading BODY: a flipped length is damage, not a
 * record that runs past the end of the file. The first record is the file's header.
 */
#ifndef MPB_PERSIST_FILE_H
#define MPB_PERSIST_FILE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PF_HEAD 8  /* LEN + HCRC */
#define PF_TAIL 4  /* BCRC */
#define PF_OVERHEAD (PF_HEAD + PF_TAIL)
/* The smallest block a file system or disk loses whole (a sector): zeros that begin at
 * a multiple of it may be a lost block, not the end of what was written. */
#define PF_BLOCK 512

/*--- Writing ---*/

/* Start a record in sb: reserves its head; returns where it starts. */
size_t pf_begin(msgpack_sbuffer *sb);
/* End the record begun at `start`: fills its head in and appends its BCRC. Returns 0,
 * or -1 when the body is empty or longer than a record may be (the record is taken
 * back out of sb). */
int pf_end(msgpack_sbuffer *sb, size_t start);

/* write(2) all of p, retrying on EINTR and short writes. 0, or -1 with errno set
 * (*done: how many bytes went in before the failure, when done is not NULL). */
int pf_write_all(int fd, const void *p, size_t n, size_t *done);

/* Create dir/name with `head` as its only content, atomically: written to dir/tmp,
 * fdatasynced, renamed to name, the directory fsynced. Returns an O_APPEND descriptor
 * of it, or -1 with errno set, *step saying which step failed ("create", "write",
 * "fdatasync", "rename", "fsync of the directory") and the temporary file removed. */
int pf_create(int dirfd, const char *tmp, const char *name, const void *head, size_t n,
              const char **step);

/*--- Reading ---*/

typedef enum pf_status {
    PF_OK,           /* a whole record that checks out */
    PF_SHORT_HEAD,   /* fewer bytes left than a record head */
    PF_BAD_HEAD,     /* LEN and HCRC disagree (or LEN is 0) */
    PF_SHORT_BODY,   /* a good head, but the file ends inside the record */
    PF_BAD_BODY,     /* the whole record is there, and BCRC disagrees */
} pf_status;

/* Check the record at p (avail bytes to the end of the file). On PF_OK, *body and
 * *body_len give its body and *size the whole record's length. */
pf_status pf_check(const char *p, size_t avail, const char **body, uint32_t *body_len,
                   size_t *size);

/* What damage found at offset `at` of a file of `len` bytes is. */
typedef struct pf_damage {
    size_t at;        /* where the first bad record starts */
    pf_status status; /* what is wrong with it */
    bool torn;        /* explained by a write that did not finish (see pf_classify) */
    size_t resume;    /* the first good record after it, or 0 when none */
    size_t good_after;/* how many good records follow it (when resume != 0) */
    size_t zeros_after;/* not torn: its end is zeros, and this many zero bytes follow it */
    bool zeros_on_block;/* not torn: only zeros from `at` on, and `at` is a block boundary */
} pf_damage;

/* Classify the damage at `at` (status from pf_check). It is a torn tail only when
 * nothing good follows it and an unfinished write explains it: a record head cut
 * short, a record whose body runs past the end of the file, the file's last record
 * whose end (its BCRC, the file's last 4 bytes) is zeros that never reached the disk,
 * or only zeros from `at` on where `at` is not a multiple of PF_BLOCK. Anything else
 * is damage: a bad record with good ones after it, a whole last record whose checksum
 * fails, a record whose end is zeros with more bytes after it (it was not the last
 * record written), or zeros from a block boundary on (a lost block may have held
 * acknowledged records). */
void pf_classify(const char *data, size_t len, size_t at, pf_status status, pf_damage *d);

/* A short, human description of a status ("its checksum does not match"). */
const char *pf_status_text(pf_status s);

#endif
