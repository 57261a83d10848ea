/* mpb_errors.h - the error kinds of the wire protocol, one enum, one table.
 *
 * An error reply is [kind, message]; kind is one of these stable strings, named as
 * Python names the failure where Python has one. Adding a kind: one row here and a
 * line in docs/PROTOCOL.md.
 */
#ifndef MPB_ERRORS_H
#define MPB_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

#define MPB_ERRKINDS(X)                                                                 \
    X(NONE, "")                                                                         \
    X(BAD_REQUEST, "BadRequest")       /* not a msgpack-rpc request, malformed bytes */ \
    X(NO_SUCH_METHOD, "NoSuchMethod")                                                   \
    X(NO_SUCH_OBJECT, "NoSuchObject")  /* unknown or released reference or name */      \
    X(TYPE, "TypeError")                                                                \
    X(VALUE, "ValueError")                                                              \
    X(KEY, "KeyError")                                                                  \
    X(INDEX, "IndexError")                                                              \
    X(ATTRIBUTE, "AttributeError")                                                      \
    X(OVERFLOW, "OverflowError")                                                        \
    X(ZERO_DIVISION, "ZeroDivisionError")                                               \
    X(RUNTIME, "RuntimeError")                                                          \
    X(EMPTY, "Empty")                                                                   \
    X(FULL, "Full")                                                                     \
    X(BROKEN_BARRIER, "BrokenBarrierError")                                             \
    X(TOO_LARGE, "TooLarge")           /* message over the size limit */                \
    X(TOO_DEEP, "TooDeep")             /* message nested over the depth limit */        \
    X(OUT_OF_MEMORY, "OutOfMemory")                                                     \
    X(AUTH, "AuthError")               /* wrong or missing authkey handshake */        \
    X(TOO_MANY_CLIENTS, "TooManyClients") /* over --max-clients: then closed */        \
    X(PERSISTENCE, "PersistenceError") /* --data-dir cannot store writes now */         \
    X(CONNECTION, "ConnectionError")   /* client side: the connection is gone */       \
    X(PROTOCOL, "ProtocolError")       /* client side: the broker's reply made no sense */ \
    X(CONFLICT, "Conflict")            /* manager.expect: the object's version moved on */ \
    X(EOF_ERROR, "EOFError")           /* pipe: the other end is closed, nothing left */   \
    X(OS, "OSError")                   /* pipe: this end is closed, or the wrong way */    \
    X(BROKEN_PIPE, "BrokenPipeError")  /* pipe: sending to an end that is closed */       \
    X(TIMEOUT, "TimeoutError")         /* pipe.recv, channel.read/write: TIMEOUT passed */ \
    X(CHANNEL_POISONED, "ChannelPoisoned")                                              \
    X(CHANNEL_RETIRED, "ChannelRetired")

typedef enum mpb_errkind {
#define MPB_X_ENUM(id, name) MPB_E_##id,
    MPB_ERRKINDS(MPB_X_ENUM)
#undef MPB_X_ENUM
    MPB_E__COUNT
} mpb_errkind;

/* The wire name of a kind ("KeyError"); "" for MPB_E_NONE. */
const char *mpb_errkind_name(mpb_errkind k);
/* The kind for a wire name, or MPB_E_NONE when unknown. */
mpb_errkind mpb_errkind_from_name(const char *name, unsigned long len);

#ifdef __cplusplus
}
#endif
#endif
