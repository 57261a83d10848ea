/* seqidx.h - a creation-ordered index of pointers, for paged listings with cursors.
 *
 * Each entry sits under a key that grows with every append (a creation number: an
 * object's seq, a connection's id). Entries stay sorted by key whatever is removed,
 * so a cursor is simply "the next key to show" and a walk resumed at it finds its
 * place by binary search: every entry present for the whole walk is seen exactly once
 * and in order, whatever is created or removed meanwhile (new ones appear at the end;
 * removed ones are skipped). Removal leaves a hole, compacted once holes outnumber
 * live entries (amortised O(1)). It stores pointers it does not own.
 */
#ifndef MPB_SEQIDX_H
#define MPB_SEQIDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mpb_seqidx_entry {
    uint64_t key;
    void *ptr; /* NULL: removed (a hole until compaction) */
} mpb_seqidx_entry;

typedef struct mpb_seqidx {
    mpb_seqidx_entry *e;
    size_t used, cap; /* slots used (holes included), capacity */
    size_t live;
} mpb_seqidx;

/* Append ptr under key, which must be greater than every key appended before.
 * 0, or -1 on allocation failure (nothing changed). */
int seqidx_append(mpb_seqidx *s, uint64_t key, void *ptr);
/* Remove the entry under key (no-op when absent). O(log n), amortised. The last one
 * removed frees the index's memory. */
void seqidx_remove(mpb_seqidx *s, uint64_t key);
/* The slot of the first entry with a key >= key: start a walk there. O(log n). */
size_t seqidx_seek(const mpb_seqidx *s, uint64_t key);
/* The next live entry from slot *it (advanced past it), or NULL at the end. */
const mpb_seqidx_entry *seqidx_next(const mpb_seqidx *s, size_t *it);
void seqidx_free(mpb_seqidx *s);

#endif
