/* sockfile.h - the broker's Unix socket file (sockfile.c): its default directory,
 * whose it is, and making it without a race. */
#ifndef MPB_SOCKFILE_H
#define MPB_SOCKFILE_H

#include <stdbool.h>

/* A listening, non-blocking Unix socket at path, created 0600 (0660 and owned by
 * group when group is not NULL; its name or number). is_default: path is
 * mpb_default_socket_path(), so its directory is checked (ours, private), and made
 * when it is the one in the temporary directory. A file already at path is replaced
 * only when it is our own socket and no broker answers on it. Prints why and exits
 * (2 for a refusal, 1 when a broker already listens there or the system says no). */
int sockfile_listen(const char *path, bool is_default, const char *group);

#endif
