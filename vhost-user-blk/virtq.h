/*
 * Guest memory and split virtqueues. Everything here reads memory the guest controls: each value
 * is read once into a local and checked before use (the rules in docs/vhost-user-blk.md).
 */
#ifndef SLIPWAY_VIRTQ_H
#define SLIPWAY_VIRTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "vhost_user.h"

struct vub_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t uva;
	uint8_t *host;
	void *mmap_base;
	size_t mmap_len;
};

struct vub_mem {
	unsigned n;
	struct vub_region r[VUB_MAX_REGIONS];
};

/* Host address of [gpa, gpa+len) when it lies inside one region, else NULL. */
void *vub_gpa_to_host(const struct vub_mem *m, uint64_t gpa, uint64_t len);
/* The same for the VMM's own addresses (ring addresses arrive as VMM virtual addresses). */
void *vub_uva_to_host(const struct vub_mem *m, uint64_t uva, uint64_t len);
/* Map [gpa, gpa+len) to iovecs, split where it crosses regions; -1 if any byte is unmapped or `max` is exceeded. */
int vub_gpa_to_iov(const struct vub_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, unsigned max, unsigned *n);

/*
 * Buffers (non-empty descriptors; a descriptor that points at an indirect table is none) one chain
 * may hold: seg_max data segments, the header and the status byte, and a few more for a driver that
 * splits its header. A buffer may span several memory regions, at most each of them once, so the
 * iovecs are sized for every buffer spanning every region: a request within the advertised limits is
 * never refused for where its buffers lie.
 */
#define VUB_CHAIN_BUF_MAX (VUB_SEG_MAX + 8)
#define VUB_CHAIN_IOV_MAX (VUB_CHAIN_BUF_MAX * VUB_MAX_REGIONS)

struct vub_chain {
	uint16_t head;
	unsigned n_out; /* device-readable iovecs: iov[0 .. n_out) */
	unsigned n_in;  /* device-writable iovecs: iov[n_out .. n_out + n_in) */
	size_t out_bytes;
	size_t in_bytes;
	unsigned nbufs;     /* buffers in chain order: buf_len[0 .. nbufs) */
	unsigned nbufs_out; /* the device-readable ones, which come first */
	uint32_t buf_len[VUB_CHAIN_BUF_MAX];
	struct iovec iov[VUB_CHAIN_IOV_MAX];
};

struct vub_ring {
	unsigned num;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t last_avail;
	uint16_t used_idx;
	bool event_idx;
	bool indirect;
	bool broken;
};

enum vub_pop {
	VUB_POP_EMPTY = 0,
	VUB_POP_OK = 1,
	VUB_POP_BAD_CHAIN = 2, /* head is valid, the chain is not: complete it with no data */
	VUB_POP_BROKEN = 3,    /* the ring itself cannot be trusted: stop the queue */
};

/* Translate and check the three ring areas; 0 or -1. */
int vub_ring_map(struct vub_ring *r, const struct vub_mem *m, unsigned num, uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva);
enum vub_pop vub_ring_pop(struct vub_ring *r, const struct vub_mem *m, struct vub_chain *c);
/* The chain at `head` (one popped earlier, run again after a restart). */
enum vub_pop vub_ring_chain(struct vub_ring *r, const struct vub_mem *m, uint16_t head, struct vub_chain *c);
void vub_ring_push(struct vub_ring *r, uint16_t head, uint32_t len);
/* After pushing: whether the driver wants an interrupt for entries old_used .. used_idx. */
bool vub_ring_need_notify(struct vub_ring *r, uint16_t old_used);
/* With EVENT_IDX: ask for a kick when the driver adds past what we have seen. */
void vub_ring_set_avail_event(struct vub_ring *r);
/* Whether the driver has added entries we have not popped. */
bool vub_ring_has_work(struct vub_ring *r);

/* iovec helpers */
size_t vub_iov_copy_from(const struct iovec *iov, unsigned n, size_t skip, void *dst, size_t len);
size_t vub_iov_copy_to(const struct iovec *iov, unsigned n, size_t skip, const void *src, size_t len);
/* Describe bytes [skip, skip+len) of an iovec array as a new array; returns its count or -1. */
int vub_iov_slice(const struct iovec *iov, unsigned n, size_t skip, size_t len, struct iovec *out, unsigned max);

#endif
