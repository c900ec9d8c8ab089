/*
 * The device logic behind virtio-blk: a slipway disk made of the disk map, chunk files in the
 * cache's tier 1 (read straight into guest memory), and a copy-on-write overlay for writes.
 * Nothing here knows about vhost-user or virtqueues.
 */
#ifndef SLIPWAY_DISK_H
#define SLIPWAY_DISK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define VUB_MISS 1 /* an I/O needs a chunk that is not local yet: *missing says which */

struct vub_disk {
	uint64_t size;
	uint32_t chunk_log2;
	uint64_t chunk_size;
	uint64_t nchunks;
	const uint8_t *map; /* nchunks entries of 33 bytes: flags, sha256 */
	size_t map_len;
	void *map_mmap;
	int chunk_dir_fd;
	int *fds; /* per chunk: an open chunk file, or -1 */
	/* I/O on a cached chunk descriptor holds the read side from looking it up until the I/O is
	 * done; closing cached descriptors (out of descriptors: EMFILE) takes the write side, so no
	 * queue thread ever closes a descriptor another one is still reading */
	pthread_rwlock_t fd_lock;
	unsigned long cache_cap; /* chunk descriptors kept open at most; past it, one is opened per I/O */
	unsigned long cached;
	bool read_only;
	bool has_overlay;
	int ov_data_fd;
	int ov_dirty_fd;
	uint8_t *dirty; /* bitmap, one bit per chunk */
	size_t dirty_bytes;
	bool dirty_changed;
	pthread_mutex_t ov_lock;
	char serial[21];
};

/* 0, or -1 with a message naming what was wrong in err. */
int vub_disk_open(struct vub_disk *d, const char *map_path, const char *chunk_dir, const char *overlay_dir, bool read_only, const char *serial, char *err, size_t errlen);
void vub_disk_close(struct vub_disk *d);
/* Keep at most `cap` chunk files open between I/Os (room for the descriptors the device needs). */
void vub_disk_limit_cache(struct vub_disk *d, unsigned long cap);
/* Close the cached chunk files (once no I/O uses them): the process ran out of descriptors. */
void vub_disk_drop_cache(struct vub_disk *d);

/* 0, VUB_MISS (with *missing), or a negative errno. */
int vub_disk_readv(struct vub_disk *d, uint64_t off, const struct iovec *iov, unsigned n, uint64_t len, uint64_t *missing);
int vub_disk_writev(struct vub_disk *d, uint64_t off, const struct iovec *iov, unsigned n, uint64_t len, uint64_t *missing);
int vub_disk_zero(struct vub_disk *d, uint64_t off, uint64_t len, uint64_t *missing);
int vub_disk_flush(struct vub_disk *d);
bool vub_disk_is_dirty(const struct vub_disk *d, uint64_t chunk);

#endif
