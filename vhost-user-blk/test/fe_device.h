/*
 * vub-frontend: a device (one connection, its guest memory and queues) set up the way QEMU does it,
 * with hooks where the malformed cases step in, and virtio-blk requests on it.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_DEVICE_H
#define VUB_FE_DEVICE_H

#include "fe_options.h"
#include "fe_vhost_user.h"
#include "fe_virtq.h"

/* ======================================================================================== */
/* the device: a connection, its guest memory and its queues                                */
/* ======================================================================================== */

struct dev {
	struct vu_conn vu;
	struct gmem mem;
	const struct opts *o;
	unsigned nq;
	struct vq q[MAX_QUEUES];
	uint64_t capacity_bytes;
	unsigned seg_max;   /* data segments the backend takes per request */
	uint32_t size_max;  /* bytes per segment, 0 for no limit */
	bool indirect;      /* negotiated */
	bool read_only;
	/* --inflight: the region GET_INFLIGHT_FD gave, handed back with SET_INFLIGHT_FD on every connection */
	int inflight_fd;
	struct vhost_user_inflight inflight;
};

enum stage {
	STAGE_NONE,
	STAGE_BEFORE_MEM_TABLE,
	STAGE_BEFORE_VRINGS,
	STAGE_BEFORE_KICK, /* queue 0's NUM, ADDR and BASE are set, its KICK not yet */
	STAGE_STARTED,     /* every queue started */
};

/* Something a malformed case does at a stage of the setup; a non-zero return stops the setup there. */
struct hook {
	enum stage at;
	int (*fn)(struct dev *d, void *arg);
	void *arg;
};

struct layout {
	unsigned nq;
	unsigned nslots;
	uint32_t slot_data;
};

static unsigned itable_cap_for(const struct dev *d, unsigned ring)
{
	unsigned segs = d->seg_max < 1024 ? d->seg_max : 1024;
	unsigned cap = segs + 3;
	return cap > 2 * ring ? cap : 2 * ring;
}

static uint64_t layout_bytes(const struct dev *d, const struct layout *l, unsigned ring)
{
	uint64_t per_queue = 3 * (16ull * ring + 8192) + 16384;
	uint64_t per_slot = 64 + 16ull * itable_cap_for(d, ring) + 64 + ((uint64_t)l->slot_data + 4095) / 4096 * 4096;
	return l->nq * (per_queue + l->nslots * per_slot);
}

static void vq_init(struct dev *d, struct vq *q, unsigned index, const struct layout *l)
{
	unsigned num = d->o->ring_size;
	struct gmem *m = &d->mem;
	unsigned region = index % m->n;
	memset(q, 0, sizeof *q);
	q->index = index;
	q->num = num;
	q->event_idx = (d->vu.acked_features >> VIRTIO_RING_F_EVENT_IDX) & 1;
	/* each part of the ring on its own page, at the alignment virtio asks for and more */
	q->desc = gmem_alloc(m, region, 16ull * num, 4096);
	q->avail = gmem_alloc(m, region, 6ull + 2ull * num, 4096);
	q->used = gmem_alloc(m, region, 6ull + 8ull * num, 4096);
	q->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	q->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	q->err_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->kick_fd < 0 || q->call_fd < 0 || q->err_fd < 0)
		die("eventfd: %s", strerror(errno));
	q->next_free = xcalloc(num, sizeof *q->next_free);
	q->chain_len = xcalloc(num, sizeof *q->chain_len);
	q->cookie = xcalloc(num, sizeof *q->cookie);
	q->scratch = xcalloc(MAX_CHAIN, sizeof *q->scratch);
	vq_reset_free(q, 0);
	q->nslots = l->nslots;
	q->slots = xcalloc(l->nslots, sizeof *q->slots);
	q->free_slots = xcalloc(l->nslots, sizeof *q->free_slots);
	unsigned cap = itable_cap_for(d, num);
	for (unsigned s = 0; s < l->nslots; s++) {
		struct slot *sl = &q->slots[s];
		/* spread the slots over the regions so that both are read and written */
		unsigned r = (index + s) % m->n;
		uint8_t *small = gmem_alloc(m, r, 64, 64);
		sl->hdr = (struct virtio_blk_outhdr *)(void *)small;
		sl->status = small + 32;
		sl->itable = gmem_alloc(m, r, 16ull * cap, 16);
		sl->itable_cap = cap;
		sl->data = gmem_alloc(m, r, l->slot_data, 4096);
		sl->data_cap = l->slot_data;
		q->free_slots[s] = l->nslots - 1 - s;
	}
	q->nfree_slots = l->nslots;
}

static void vq_destroy(struct vq *q)
{
	int fds[3] = { q->kick_fd, q->call_fd, q->err_fd };
	for (unsigned i = 0; i < 3; i++)
		if (fds[i] >= 0 && close(fds[i]) < 0)
			die("close of an eventfd: %s", strerror(errno));
	free(q->next_free);
	free(q->chain_len);
	free(q->cookie);
	free(q->scratch);
	free(q->slots);
	free(q->free_slots);
	memset(q, 0, sizeof *q);
	q->kick_fd = q->call_fd = q->err_fd = -1;
}

static int dev_set_mem_table(struct dev *d)
{
	struct vhost_memory mt;
	memset(&mt, 0, sizeof mt);
	mt.nregions = d->mem.n;
	int fds[MAX_REGIONS];
	for (unsigned i = 0; i < d->mem.n; i++) {
		const struct gregion *r = &d->mem.r[i];
		mt.regions[i] = (struct vhost_memory_region){ .guest_phys_addr = r->gpa, .memory_size = r->size,
								.userspace_addr = uva_of(r->host), .mmap_offset = r->mmap_offset };
		fds[i] = d->mem.fd;
	}
	uint32_t size = (uint32_t)(8 + d->mem.n * sizeof(struct vhost_memory_region));
	return vu_msg(&d->vu, VHOST_USER_SET_MEM_TABLE, &mt, size, fds, d->mem.n);
}

static int vring_state_msg(struct dev *d, uint32_t request, unsigned index, unsigned num)
{
	struct vhost_vring_state st = { .index = index, .num = num };
	return vu_msg(&d->vu, request, &st, sizeof st, NULL, 0);
}

static int vring_fd_msg(struct dev *d, uint32_t request, unsigned index, int fd)
{
	uint64_t v = index;
	return vu_msg(&d->vu, request, &v, sizeof v, &fd, 1);
}

static int dev_queue_layout(struct dev *d, struct vq *q)
{
	int rc = vring_state_msg(d, VHOST_USER_SET_VRING_NUM, q->index, q->num);
	if (rc != VU_OK)
		return rc;
	/* ring addresses are this process's addresses (userspace_addr), as QEMU sends them */
	struct vhost_vring_addr a = { .index = q->index, .flags = 0, .desc_user_addr = uva_of(q->desc),
					   .used_user_addr = uva_of(q->used), .avail_user_addr = uva_of(q->avail), .log_guest_addr = 0 };
	rc = vu_msg(&d->vu, VHOST_USER_SET_VRING_ADDR, &a, sizeof a, NULL, 0);
	if (rc != VU_OK)
		return rc;
	return vring_state_msg(d, VHOST_USER_SET_VRING_BASE, q->index, 0);
}

static int dev_queue_start(struct dev *d, struct vq *q)
{
	int rc = vring_fd_msg(d, VHOST_USER_SET_VRING_KICK, q->index, q->kick_fd);
	if (rc == VU_OK)
		rc = vring_fd_msg(d, VHOST_USER_SET_VRING_CALL, q->index, q->call_fd);
	if (rc == VU_OK)
		rc = vring_fd_msg(d, VHOST_USER_SET_VRING_ERR, q->index, q->err_fd);
	/* with VHOST_USER_F_PROTOCOL_FEATURES rings start disabled */
	if (rc == VU_OK && ((d->vu.acked_features >> VHOST_USER_F_PROTOCOL_FEATURES) & 1))
		rc = vring_state_msg(d, VHOST_USER_SET_VRING_ENABLE, q->index, 1);
	return rc;
}

/* With --inflight and a backend that offers it: the region (asked for once, as QEMU does), handed over. */
static int dev_inflight(struct dev *d)
{
	if (!d->o->inflight || !((d->vu.acked_protocol >> VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) & 1))
		return VU_OK;
	if (d->inflight_fd < 0) {
		struct vhost_user_inflight req = { .num_queues = (uint16_t)d->nq, .queue_size = (uint16_t)d->o->ring_size };
		int rc = vu_get_fd(&d->vu, VHOST_USER_GET_INFLIGHT_FD, &req, sizeof req, &d->inflight, sizeof d->inflight, &d->inflight_fd);
		if (rc != VU_OK)
			return rc;
	}
	return vu_msg(&d->vu, VHOST_USER_SET_INFLIGHT_FD, &d->inflight, sizeof d->inflight, &d->inflight_fd, 1);
}

static int run_hook(struct dev *d, const struct hook *h, enum stage at)
{
	if (!h || h->at != at)
		return VU_OK;
	return h->fn(d, h->arg);
}

/*
 * Connect and negotiate the whole device: handshake, guest memory, mem table, queues. A hook runs
 * at its stage. On failure the message is in d->vu.err and the connection stays for dev_close.
 */
static int dev_open(struct dev *d, const char *path, const struct opts *o, const struct layout *l, const struct hook *hook)
{
	memset(d, 0, sizeof *d);
	d->o = o;
	d->mem.fd = -1;
	d->inflight_fd = -1;
	for (unsigned i = 0; i < MAX_QUEUES; i++)
		d->q[i].kick_fd = d->q[i].call_fd = d->q[i].err_fd = -1;
	int rc = vu_connect(&d->vu, path, o->timeout_ms);
	if (rc != VU_OK)
		return rc;
	d->vu.want_inflight = o->inflight;
	rc = vu_handshake(&d->vu);
	if (rc != VU_OK)
		return rc;
	const struct virtio_blk_config *cfg = &d->vu.cfg;
	uint64_t f = d->vu.acked_features;
	d->capacity_bytes = cfg->capacity * SECTOR_BYTES;
	d->seg_max = ((f >> VIRTIO_BLK_F_SEG_MAX) & 1) && cfg->seg_max ? cfg->seg_max : 1;
	d->size_max = ((f >> VIRTIO_BLK_F_SIZE_MAX) & 1) ? cfg->size_max : 0;
	d->indirect = (f >> VIRTIO_RING_F_INDIRECT_DESC) & 1;
	d->read_only = (f >> VIRTIO_BLK_F_RO) & 1;
	if (l->nq > d->vu.max_queues)
		return vu_fail(&d->vu, VU_FAIL, "%u queues asked for, the backend has %u", l->nq, d->vu.max_queues);
	if (o->indirect && !d->indirect)
		return vu_fail(&d->vu, VU_FAIL, "--indirect: the backend does not offer VIRTIO_RING_F_INDIRECT_DESC");
	uint64_t need = layout_bytes(d, l, o->ring_size) * 2 + (4ull << 20); /* two regions each take their share */
	uint64_t mem = o->mem_bytes;
	if (!mem) {
		mem = need > DEFAULT_MEM_BYTES ? need : DEFAULT_MEM_BYTES;
		mem = (mem + (2ull << 20) - 1) & ~((2ull << 20) - 1);
	}
	gmem_init(&d->mem, mem, o->regions, o->adjacent);
	d->nq = l->nq;
	for (unsigned i = 0; i < l->nq; i++)
		vq_init(d, &d->q[i], i, l);
	if ((rc = dev_inflight(d)) != VU_OK)
		return rc;
	if ((rc = run_hook(d, hook, STAGE_BEFORE_MEM_TABLE)) != VU_OK)
		return rc;
	if ((rc = dev_set_mem_table(d)) != VU_OK)
		return rc;
	if ((rc = run_hook(d, hook, STAGE_BEFORE_VRINGS)) != VU_OK)
		return rc;
	for (unsigned i = 0; i < l->nq; i++) {
		if ((rc = dev_queue_layout(d, &d->q[i])) != VU_OK)
			return rc;
		if (i == 0 && (rc = run_hook(d, hook, STAGE_BEFORE_KICK)) != VU_OK)
			return rc;
		if ((rc = dev_queue_start(d, &d->q[i])) != VU_OK)
			return rc;
	}
	return run_hook(d, hook, STAGE_STARTED);
}

/* Stop the rings the way a VMM does (GET_VRING_BASE) when `stop`, then let go of everything. */
static int dev_close(struct dev *d, bool stop)
{
	int rc = VU_OK;
	if (stop && d->vu.sock >= 0) {
		for (unsigned i = 0; i < d->nq && rc == VU_OK; i++) {
			struct vhost_vring_state st = { .index = i, .num = 0 }, reply;
			rc = vu_get(&d->vu, VHOST_USER_GET_VRING_BASE, &st, sizeof st, &reply, sizeof reply);
			if (rc == VU_OK && reply.index != i)
				rc = vu_fail(&d->vu, VU_FAIL, "GET_VRING_BASE for queue %u answered for queue %u", i, reply.index);
		}
	}
	vu_close(&d->vu);
	for (unsigned i = 0; i < MAX_QUEUES; i++)
		if (d->q[i].next_free || d->q[i].kick_fd >= 0)
			vq_destroy(&d->q[i]);
	if (d->mem.base)
		gmem_free(&d->mem);
	if (d->inflight_fd >= 0 && close(d->inflight_fd) < 0)
		die("close of the in-flight region: %s", strerror(errno));
	d->inflight_fd = -1;
	return rc;
}

static void dev_open_or_die(struct dev *d, const char *path, const struct opts *o, const struct layout *l)
{
	if (dev_open(d, path, o, l, NULL) != VU_OK)
		die("%s: %s", path, d->vu.err);
}

static void dev_close_or_die(struct dev *d, const char *path)
{
	if (dev_close(d, true) != VU_OK)
		die("%s: stopping the rings: %s", path, d->vu.err);
}

/* ======================================================================================== */
/* virtio-blk requests                                                                      */
/* ======================================================================================== */

struct shape {
	bool indirect;
	uint32_t seg_bytes;
	bool reverse; /* reads only: lay the segments out back to front in the slot */
};

static unsigned seg_count(uint32_t len, uint32_t seg)
{
	return len == 0 ? 0 : (len + seg - 1) / seg;
}

/*
 * How a request of len bytes is cut: one descriptor unless size_max forces more; with --indirect,
 * 4 KiB descriptors behind an indirect table, in reverse order; --seg BYTES cuts direct chains too.
 * Never more than seg_max segments.
 */
static struct shape shape_for(const struct dev *d, uint32_t len, bool indirect)
{
	struct shape s = { .indirect = indirect, .seg_bytes = len ? len : SECTOR_BYTES, .reverse = indirect };
	if (indirect)
		s.seg_bytes = 4096;
	if (d->o->seg_bytes && len > d->o->seg_bytes)
		s.seg_bytes = (uint32_t)d->o->seg_bytes;
	if (d->size_max && s.seg_bytes > d->size_max)
		s.seg_bytes = d->size_max >= SECTOR_BYTES ? d->size_max & ~(SECTOR_BYTES - 1) : d->size_max;
	unsigned limit = d->seg_max < MAX_DATA_SEGS ? d->seg_max : MAX_DATA_SEGS;
	while (seg_count(len, s.seg_bytes) > limit)
		s.seg_bytes += indirect ? 4096 : SECTOR_BYTES;
	return s;
}

/* Descriptors a request takes in the ring itself. */
static unsigned ring_descs_for(const struct shape *s, uint32_t len)
{
	return s->indirect ? 1 : seg_count(len, s->seg_bytes) + 2;
}

static uint8_t *slot_at(const struct slot *s, uint32_t logical)
{
	if (!s->reversed)
		return s->data + logical;
	uint32_t seg = logical / s->seg_bytes;
	return s->data + (size_t)(s->nseg - 1 - seg) * s->seg_bytes + logical % s->seg_bytes;
}

static void slot_copy_out(const struct slot *s, uint8_t *dst, uint32_t len)
{
	if (!s->reversed) {
		memcpy(dst, s->data, len);
		return;
	}
	for (uint32_t at = 0; at < len; at += s->seg_bytes) {
		uint32_t n = len - at < s->seg_bytes ? len - at : s->seg_bytes;
		memcpy(dst + at, slot_at(s, at), n);
	}
}

static uint8_t slot_status(const struct slot *s)
{
	return __atomic_load_n(s->status, __ATOMIC_RELAXED);
}

/* Queue one request in slot s (not yet published). 0, or -1 when the ring has no room. */
static int blk_submit(struct dev *d, struct vq *q, struct slot *s, uint32_t type, uint64_t sector, uint32_t len, const struct shape *sh)
{
	struct buf *bufs = q->scratch;
	unsigned n = 0;
	if (len > s->data_cap)
		die("internal error: a %u-byte request in a %u-byte slot", len, s->data_cap);
	s->hdr->type = type;
	s->hdr->ioprio = 0;
	s->hdr->sector = sector;
	*s->status = STATUS_UNSET;
	bufs[n++] = (struct buf){ gmem_gpa(&d->mem, s->hdr), sizeof *s->hdr, 0 };
	bool device_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	unsigned nseg = seg_count(len, sh->seg_bytes);
	if (nseg + 2 > MAX_CHAIN)
		die("internal error: %u segments", nseg);
	s->nseg = nseg;
	s->seg_bytes = sh->seg_bytes;
	s->reversed = sh->reverse && type == VIRTIO_BLK_T_IN && nseg > 1 && len % sh->seg_bytes == 0;
	for (unsigned i = 0; i < nseg; i++) {
		uint32_t at = i * sh->seg_bytes;
		uint32_t piece = len - at < sh->seg_bytes ? len - at : sh->seg_bytes;
		bufs[n++] = (struct buf){ gmem_gpa(&d->mem, slot_at(s, at)), piece, device_writes ? VRING_DESC_F_WRITE : 0 };
	}
	bufs[n++] = (struct buf){ gmem_gpa(&d->mem, s->status), 1, VRING_DESC_F_WRITE };
	s->type = type;
	s->offset = sector * SECTOR_BYTES;
	s->len = len;
	struct vring_desc *itable = sh->indirect ? s->itable : NULL;
	if (vq_add(q, bufs, n, itable, itable ? gmem_gpa(&d->mem, itable) : 0, s->itable_cap, s) < 0)
		return -1;
	s->busy = true;
	s->submit_ns = now_ns();
	return 0;
}

struct sync_result {
	uint8_t status; /* STATUS_UNSET when the backend wrote none */
	uint32_t used_len;
};

/* Wait for the request in queue qi's slot `slot`: VU_OK with its result, VU_TIMEOUT, or VU_FAIL. */
static int blk_wait(struct dev *d, unsigned qi, unsigned slot, int timeout_ms, struct sync_result *res)
{
	struct vq *q = &d->q[qi];
	struct slot *s = &q->slots[slot];
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	while (s->busy) {
		void *cookie = NULL;
		uint32_t used_len = 0;
		char err[200];
		int r = vq_get_used(q, &cookie, &used_len, err, sizeof err);
		if (r < 0)
			return vu_fail(&d->vu, VU_FAIL, "%s", err);
		if (r == 1) {
			/* another slot's request, or a hand-written chain of a malformed case completing late */
			struct slot *done = cookie;
			if (cookie != &raw_chain_cookie) {
				done->busy = false;
				done->used_len = used_len;
			}
			continue;
		}
		int left = ms_until(deadline);
		if (left == 0)
			return vu_fail(&d->vu, VU_TIMEOUT, "queue %u: no completion within %d ms", qi, timeout_ms);
		int w = vq_wait(q, left);
		if (w < 0)
			return vu_fail(&d->vu, VU_FAIL, "waiting on the call eventfd: %s", strerror(errno));
		if (w == 2)
			return vu_fail(&d->vu, VU_FAIL, "queue %u: the backend signalled the error eventfd", qi);
	}
	res->status = slot_status(s);
	res->used_len = s->used_len;
	return VU_OK;
}

/*
 * One request in queue qi's slot `slot`, waited for. VU_OK with the result, VU_TIMEOUT, or VU_FAIL
 * (message in d->vu.err). The caller fills the slot's data first for writes.
 */
static int blk_sync(struct dev *d, unsigned qi, unsigned slot, uint32_t type, uint64_t sector, uint32_t len, const struct shape *sh, int timeout_ms, struct sync_result *res)
{
	struct vq *q = &d->q[qi];
	struct slot *s = &q->slots[slot];
	if (s->busy)
		return vu_fail(&d->vu, VU_FAIL, "queue %u slot %u still has a request the backend never completed", qi, slot);
	if (blk_submit(d, q, s, type, sector, len, sh) < 0)
		return vu_fail(&d->vu, VU_FAIL, "queue %u has no free descriptors for the request", qi);
	if (vq_publish(q, false) < 0)
		return vu_fail(&d->vu, VU_FAIL, "kick eventfd: %s", strerror(errno));
	return blk_wait(d, qi, slot, timeout_ms, res);
}

static const char *status_name(uint8_t st)
{
	switch (st) {
	case VIRTIO_BLK_S_OK: return "OK";
	case VIRTIO_BLK_S_IOERR: return "IOERR";
	case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
	case STATUS_UNSET: return "not written";
	default: return "invalid";
	}
}

#endif
