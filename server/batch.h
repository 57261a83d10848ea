/* batch.h - manager.atomic: operations run in order with nothing in between, all or
 * none (docs/PROTOCOL.md, "Atomic batches").
 */
#ifndef MPB_BATCH_H
#define MPB_BATCH_H

#include <stdbool.h>

#include "server.h"

/* Is a batch running its operations now? */
bool batch_active(void);
/* One operation r of the running batch, its params checked (dispatch_run): false
 * after replying when it may not run (it could wait, or wake a parked request that
 * an undo could not take back), or when its object could not be copied for the undo. */
bool batch_admit(mpb_req *r);

#endif
