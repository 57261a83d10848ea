/* mpb_codec.h - mpb_value <-> msgpack, and the wire form of a reference.
 *
 * Encoding appends to any msgpack_packer (the broker's packer writes straight into a
 * connection's output buffer). Decoding deep-copies a msgpack_object, which is only
 * borrowed: it dies when its zone or the bytes under it are reused.
 *
 * A reference travels as msgpack ext type MPB_EXT_REF (1) with an 8-byte big-endian
 * object id. Clients pass it back exactly as they received it.
 */
#ifndef MPB_CODEC_H
#define MPB_CODEC_H

#include <msgpack.h>
#include "mpb_errors.h"
#include "mpb_value.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MPB_EXT_REF 1

/* Append v to pk. Returns 0, or -1 if the packer's write callback failed. */
int mpb_value_pack(msgpack_packer *pk, const mpb_value *v);
/* Append a reference in its ext form. */
int mpb_ref_pack(msgpack_packer *pk, mpb_ref ref);

/* Is o a reference? Sets *ref when it is. */
bool mpb_object_is_ref(const msgpack_object *o, mpb_ref *ref);
/* Borrowed bytes of a str or bin object (both are accepted wherever the protocol says
 * "string", as real msgpack-rpc clients send either). false for other types. */
bool mpb_object_bytes(const msgpack_object *o, const char **p, size_t *n);
/* Integer value of o into *out if it is an integer that fits int64 (a float with an
 * integral value does not count, as Python refuses list[1.0]). */
bool mpb_object_int(const msgpack_object *o, int64_t *out);

/* Deep copy of o into *out, which then owns everything. Strings and bins are copied,
 * float32 and float64 both become MPB_FLOAT, non-negative integers MPB_INT or
 * MPB_UINT, ext MPB_EXT_REF an MPB_REF. Nesting deeper than max_depth (o itself is
 * depth 1 when it is a container) or another ext type fails.
 * Returns MPB_E_NONE, or an error kind with a message in err (may be NULL, size
 * errlen); on failure *out is nil and nothing leaks. */
mpb_errkind mpb_value_from_object(const msgpack_object *o, mpb_value *out, int max_depth,
                                  char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
