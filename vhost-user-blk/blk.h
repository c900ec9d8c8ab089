/* virtio-blk requests: parse one popped chain, run it against the disk, write its status. */
#ifndef SLIPWAY_BLK_H
#define SLIPWAY_BLK_H

#include <stdint.h>
#include "disk.h"
#include "virtq.h"

/*
 * Execute the request in `c`. Returns 0 when it is complete (status written when the chain has
 * room for it; *used_len is what the device wrote), or VUB_MISS when it needs chunk *missing
 * first (nothing written; execute it again once the chunk is local).
 */
int vub_blk_execute(struct vub_disk *d, const struct vub_chain *c, uint32_t *used_len, uint64_t *missing);

/* Fail a request (bad chain, lost daemon): IOERR in its status byte when it has one. */
void vub_blk_fail(const struct vub_chain *c, uint8_t status, uint32_t *used_len);

void vub_blk_config(const struct vub_disk *d, unsigned queues, struct virtio_blk_config *cfg);

#endif
