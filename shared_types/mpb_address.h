/* mpb_address.h - where a broker listens, known to both sides. */
#ifndef MPB_ADDRESS_H
#define MPB_ADDRESS_H

#include <stddef.h>

/* The default socket's directory: $XDG_RUNTIME_DIR when it is set (to an absolute
 * path), else ${TMPDIR:-/tmp}/mpbroker-$EUID, a directory the broker makes 0700 and
 * checks it owns. Written into buf (size n, truncated if short); returns buf. */
char *mpb_default_socket_dir(char *buf, size_t n);
/* The default Unix socket path: that directory + "/mpbroker.sock". */
char *mpb_default_socket_path(char *buf, size_t n);

/* Split "tcp://HOST:PORT" (HOST may be [v6]; empty, as in "tcp://:PORT", means
 * 127.0.0.1) into host and port. 0, or -1 if the address is not of that form. */
int mpb_parse_tcp(const char *addr, char *host, size_t hostlen, char *port, size_t portlen);
/* The same for "tls://HOST:PORT" (a TLS listener or connection). */
int mpb_parse_tls(const char *addr, char *host, size_t hostlen, char *port, size_t portlen);

#endif
