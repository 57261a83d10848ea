/* seqidx.c - the creation-ordered index behind paged listings (seqidx.h). */
#include <stdlib.h>

#include "seqidx.h"

int seqidx_append(mpb_seqidx *s, uint64_t key, void *ptr)
{
    if (s->used == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 64;
        mpb_seqidx_entry *e = realloc(s->e, ncap * sizeof *e);
        if (!e) return -1;
        s->e = e;
        s->cap = ncap;
    }
    s->e[s->used++] = (mpb_seqidx_entry){key, ptr};
    s->live++;
    return 0;
}

size_t seqidx_seek(const mpb_seqidx *s, uint64_t key)
{
    size_t lo = 0, hi = s->used; /* keys are sorted, holes keep theirs */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->e[mid].key < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Drop the holes. Keys keep their order, so cursors (keys) stay valid. */
static void compact(mpb_seqidx *s)
{
    size_t j = 0;
    for (size_t i = 0; i < s->used; i++)
        if (s->e[i].ptr) s->e[j++] = s->e[i];
    s->used = j;
}

void seqidx_remove(mpb_seqidx *s, uint64_t key)
{
    size_t i = seqidx_seek(s, key);
    if (i == s->used || s->e[i].key != key || !s->e[i].ptr) return;
    s->e[i].ptr = NULL;
    s->live--;
    if (s->live == 0) { /* empty: give the memory back (nothing to free at exit) */
        seqidx_free(s);
        return;
    }
    while (s->used > 0 && !s->e[s->used - 1].ptr) s->used--; /* trailing holes: free */
    if (s->used - s->live > s->live && s->used > 64) compact(s);
}

const mpb_seqidx_entry *seqidx_next(const mpb_seqidx *s, size_t *it)
{
    while (*it < s->used) {
        const mpb_seqidx_entry *e = &s->e[(*it)++];
        if (e->ptr) return e;
    }
    return NULL;
}

void seqidx_free(mpb_seqidx *s)
{
    free(s->e);
    *s = (mpb_seqidx){0};
}
