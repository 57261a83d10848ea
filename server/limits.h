/* limits.h - the broker's resource limits and exposure rules, apart from the reader's
 * own (--max-message, --max-depth) and the connection's output rules (conn.c).
 *
 * Each limit, when hit, gives a clear error and leaves the broker and every other
 * connection as they were (docs/PROTOCOL.md, "Limits").
 */
#ifndef MPB_LIMITS_H
#define MPB_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "server.h"

#define LIMITS_DEFAULT_MAX_CLIENTS 10000
#define LIMITS_DEFAULT_MAX_OUTPUT ((size_t)256 << 20)
#define LIMITS_DEFAULT_OUTPUT_TIMEOUT 60.0
#define LIMITS_DEFAULT_AUTH_TIMEOUT 10.0
#define LIMITS_DEFAULT_MAX_HANDSHAKES 1024
#define LIMITS_DEFAULT_MAX_HANDSHAKES_PER_PEER 128

/* A byte count with an optional K, M or G suffix (powers of 1024); exits 2 with a
 * message naming opt when arg is not one, or is below min. */
size_t limits_parse_bytes(const char *opt, const char *arg, size_t min);
/* The same for a count (connections, entries, microseconds): the message says "a
 * whole number", not "a byte count". */
size_t limits_parse_count(const char *opt, const char *arg, size_t min);
/* Seconds (a non-negative number); exits 2 otherwise. */
double limits_parse_seconds(const char *opt, const char *arg);

/* At start: raise RLIMIT_NOFILE's soft limit as far as --max-clients needs (up to the
 * hard limit), and lower --max-clients, with a warning, when it cannot. */
void limits_setup_nofile(void);
/* At start (after limits_setup_nofile): the handshake caps fit --max-clients. */
void limits_setup_handshakes(void);
/* A new socket: true when it may be served. When its peer already has
 * --max-handshakes-per-peer connections authenticating, the oldest of those is closed
 * to make room; when the broker is full (--max-clients) or too many connections are
 * authenticating (--max-handshakes), the oldest of all those still authenticating is;
 * with none to close, it writes the socket a TooManyClients error and returns false
 * (the caller closes it). */
bool limits_admit(int fd, bool tcp);
/* Write [1, nil, ["TooManyClients", why], nil] to fd, without blocking. */
void limits_refuse(int fd, const char *why);
/* Is this a loopback address (127.0.0.0/8, ::1, or v4-mapped loopback)? */
bool limits_is_loopback(const struct sockaddr *sa);

/* The default --max-memory: half of physical RAM, or of the lowest memory limit of
 * the process's cgroup and those above it when that is lower (a container, a limited
 * slice); 0 (none) when neither can be read. */
size_t limits_default_max_memory(void);
/* --max-memory: may r store v? false after replying OutOfMemory. Deletions (remove,
 * pop, delitem, discard, delattr) are never refused: they free memory. What one
 * request is granted adds up (a key and its value, several operands), so a request
 * is refused when all it brings would pass the limit. */
bool limits_memory_for_value(mpb_req *r, const mpb_value *v);
/* The same for `bytes` r is about to store that no argument value accounts for (a
 * set.update copying another object's elements, an array created from a length):
 * call it before allocating them. */
bool limits_memory_for_bytes(mpb_req *r, size_t bytes);
/* After manager.create/open filled a new object: false after replying OutOfMemory
 * when the data is now over the limit (the caller frees the object). */
bool limits_memory_after_create(mpb_req *r);
/* --max-output: r was served with its reply starting at c->out.size == mark. A read
 * whose reply took the unsent output over the limit is replaced by TooLarge (a
 * write's reply is left, and conn.c closes a connection that stays over). */
void limits_check_reply(mpb_req *r, size_t mark);

/* --max-op-items: may a read answer n items (values, keys, pairs, elements) in one
 * reply? false after replying TooLarge, which names walk, the cursor form that reads
 * the same a bounded chunk at a time. Called before the reply is built, so a refused
 * read costs O(1) (set algebra: the counting walk), and changes nothing. */
bool limits_reply_items(mpb_req *r, size_t n, const char *walk);
/* --max-op-items as given: a count with K, M or G, 0 (none) or at least MPB_PAGE_MAX
 * (the chunk clients page with must fit); exits 2 otherwise. */
size_t limits_parse_op_items(const char *arg);

#endif
