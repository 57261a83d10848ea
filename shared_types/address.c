/* address.c - default socket path and TCP address parsing, shared by the broker,
 * libmpbroker and the shell so that all three agree without configuration. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mpb_address.h"

char *mpb_default_socket_dir(char *buf, size_t n)
{
    /* $XDG_RUNTIME_DIR is the user's own (0700, made by pam_systemd). Without it
     * (cron, su, ssh without pam_systemd, containers), a directory of the broker's own
     * in the temporary directory, never a socket straight in world-writable /tmp:
     * another user could take that name first (docs/PROTOCOL.md, "Transport"). */
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const char *tmp = getenv("TMPDIR");
    if (xdg && xdg[0] == '/') snprintf(buf, n, "%s", xdg);
    else snprintf(buf, n, "%s/mpbroker-%lu", tmp && tmp[0] == '/' ? tmp : "/tmp",
                  (unsigned long)geteuid());
    return buf;
}

char *mpb_default_socket_path(char *buf, size_t n)
{
    char dir[4096];
    snprintf(buf, n, "%s/mpbroker.sock", mpb_default_socket_dir(dir, sizeof dir));
    return buf;
}

static int parse_host_port(const char *h, char *host, size_t hostlen, char *port,
                           size_t portlen);

int mpb_parse_tcp(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    if (strncmp(addr, "tcp://", 6) != 0) return -1;
    return parse_host_port(addr + 6, host, hostlen, port, portlen);
}

int mpb_parse_tls(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    if (strncmp(addr, "tls://", 6) != 0) return -1;
    return parse_host_port(addr + 6, host, hostlen, port, portlen);
}

/* h: what follows "tcp://" or "tls://". */
static int parse_host_port(const char *h, char *host, size_t hostlen, char *port,
                           size_t portlen)
{
    const char *colon;
    size_t hl;
    if (*h == '[') { /* [v6]:port */
        const char *end = strchr(h, ']');
        if (!end || end[1] != ':') return -1;
        h++;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(h, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - h);
    }
    size_t pl = strlen(colon + 1);
    if (hl == 0) { /* "tcp://:PORT": loopback, the safe default (never every address) */
        h = "127.0.0.1";
        hl = strlen(h);
    }
    if (hl >= hostlen || pl == 0 || pl >= portlen) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(port, colon + 1, pl + 1);
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    return 0;
}
