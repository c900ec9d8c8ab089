/*
 * Dirty-page logging for migration (vhost-user's VHOST_USER_PROTOCOL_F_LOG_SHMFD with the
 * VHOST_F_LOG_ALL feature; qemu/qemu docs/interop/vhost-user.rst, "Migration"). While the VMM has
 * logging on, every byte the backend writes into guest memory (a read's data, the status byte, the
 * used ring) marks its 4 KiB guest page in a bitmap the VMM shares with SET_LOG_BASE. QEMU will
 * not migrate a VM whose vhost-user backend lacks this; slipway's memory snapshots migrate with
 * the VM paused and RAM left out (x-ignore-shared), but the log is kept right for any migration.
 */
#ifndef SLIPWAY_VUB_DIRTY_H
#define SLIPWAY_VUB_DIRTY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "virtq.h"

/* virtio/vhost feature bit: the device logs its writes (set by the VMM while it migrates) */
#define VUB_F_LOG_ALL 26
#define VUB_LOG_PAGE 4096u

/* SET_LOG_BASE's payload */
struct vub_log_msg {
	uint64_t mmap_size;
	uint64_t mmap_offset;
};

struct vub_dirty_log {
	pthread_rwlock_t lock; /* queue threads log under the read side; SET_LOG_BASE swaps under the write side */
	uint8_t *bits;         /* one bit per guest page, inside map */
	uint64_t bytes;        /* bitmap bytes available from bits */
	void *map;
	size_t map_len;
};

void vub_dirty_init(struct vub_dirty_log *l);
/* Map the VMM's log (takes `fd`, closes it); replaces an earlier one. 0, or -1 when it is malformed or cannot be mapped. */
int vub_dirty_set(struct vub_dirty_log *l, int fd, const struct vub_log_msg *m);
/* Unmap the log (a reset, or the connection gone). */
void vub_dirty_clear(struct vub_dirty_log *l);
/* Mark the guest pages behind host bytes [host, host + len) of mapped guest memory. */
void vub_dirty_mark_host(struct vub_dirty_log *l, const struct vub_mem *mem, const void *host, size_t len);
/* Mark what completing `c` wrote: its device-writable buffers and used ring entry `slot` with the used index. */
void vub_dirty_mark_completion(struct vub_dirty_log *l, const struct vub_mem *mem, const struct vub_chain *c, const struct vub_ring *r, uint16_t slot);

#endif
