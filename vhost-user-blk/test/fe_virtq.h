/*
 * vub-frontend: guest memory (a memfd in one or two regions) and the driver's side of a split
 * virtqueue: free descriptors, adding chains (direct or indirect), publishing and kicking with
 * EVENT_IDX, taking used entries, waiting on the call eventfd.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_VIRTQ_H
#define VUB_FE_VIRTQ_H

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fe_util.h"

/* ======================================================================================== */
/* guest memory                                                                             */
/* ======================================================================================== */

struct gregion {
	uint64_t gpa;
	uint64_t size;
	uint64_t mmap_offset; /* where the region starts in the memfd */
	uint8_t *host;        /* = its userspace_addr */
	uint64_t used;        /* bump allocator */
};

struct gmem {
	int fd;
	uint8_t *base;
	uint64_t size;
	unsigned n;
	struct gregion r[MAX_REGIONS];
};

/* adjacent: the second region starts where the first ends in guest-physical space (as two memory
 * backends side by side do), so one buffer may span both; its first page is kept free. */
static void gmem_init(struct gmem *m, uint64_t size, unsigned nregions, bool adjacent)
{
	memset(m, 0, sizeof *m);
	m->fd = memfd_create("vub-frontend-guest", MFD_CLOEXEC);
	if (m->fd < 0)
		die("memfd_create: %s", strerror(errno));
	if (ftruncate(m->fd, (off_t)size) < 0)
		die("ftruncate of the guest memory memfd to %" PRIu64 " bytes: %s", size, strerror(errno));
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (p == MAP_FAILED)
		die("mmap of %" PRIu64 " bytes of guest memory: %s", size, strerror(errno));
	m->base = p;
	m->size = size;
	m->n = nregions;
	uint64_t part = size / nregions;
	for (unsigned i = 0; i < nregions; i++) {
		m->r[i].gpa = i == 0 ? 0 : adjacent ? i * part : REGION1_GPA;
		m->r[i].size = part;
		m->r[i].mmap_offset = i * part;
		m->r[i].host = m->base + i * part;
		m->r[i].used = i > 0 && adjacent ? 4096 : 0;
	}
}

static void gmem_free(struct gmem *m)
{
	if (m->base && munmap(m->base, m->size) < 0)
		die("munmap of guest memory: %s", strerror(errno));
	if (m->fd >= 0 && close(m->fd) < 0)
		die("close of the guest memory memfd: %s", strerror(errno));
	m->base = NULL;
	m->fd = -1;
}

/* Bump-allocate len bytes inside one region, the preferred one if it has room; never across regions. */
static void *gmem_alloc(struct gmem *m, unsigned preferred, uint64_t len, uint64_t align)
{
	for (unsigned k = 0; k < m->n; k++) {
		struct gregion *r = &m->r[(preferred + k) % m->n];
		uint64_t start = (r->used + align - 1) & ~(align - 1);
		if (start <= r->size && len <= r->size - start) {
			r->used = start + len;
			return r->host + start;
		}
	}
	die("guest memory (%" PRIu64 " bytes) is too small for this run; raise --mem", m->size);
}

static uint64_t gmem_gpa(const struct gmem *m, const void *p)
{
	const uint8_t *b = p;
	for (unsigned i = 0; i < m->n; i++)
		if (b >= m->r[i].host && b < m->r[i].host + m->r[i].size)
			return m->r[i].gpa + (uint64_t)(b - m->r[i].host);
	die("internal error: %p is not in guest memory", p);
}

static uint64_t uva_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* ======================================================================================== */
/* the driver's side of a split virtqueue                                                   */
/* ======================================================================================== */

struct buf {
	uint64_t gpa;
	uint32_t len;
	uint16_t flags; /* VRING_DESC_F_WRITE or 0 */
};

/* One request's worth of guest memory, reused request after request. */
struct slot {
	struct virtio_blk_outhdr *hdr;
	uint8_t *status;
	struct vring_desc *itable;
	unsigned itable_cap;
	uint8_t *data;
	uint32_t data_cap;
	/* the request in flight, or the last one */
	bool busy;
	uint32_t type;
	uint64_t offset;
	uint32_t len;
	uint32_t used_len;
	uint32_t seg_bytes;
	unsigned nseg;
	bool reversed; /* data segments placed in reverse order in `data` */
	uint64_t submit_ns;
	size_t tag;
};

struct vq {
	unsigned index;
	unsigned num;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	int kick_fd, call_fd, err_fd;
	bool event_idx;
	uint16_t avail_idx; /* entries added, published or not */
	uint16_t published; /* avail->idx as last stored */
	uint16_t last_used; /* used entries consumed */
	uint16_t free_head;
	unsigned num_free;
	uint16_t *next_free; /* the free list and the links of each chain in flight (our copy, not the ring's) */
	uint16_t *chain_len;
	void **cookie; /* per head: the request in flight there, NULL when none */
	struct slot *slots;
	unsigned nslots;
	unsigned *free_slots;
	unsigned nfree_slots;
	struct buf *scratch; /* MAX_CHAIN entries: the chain being built (one thread per queue) */
	uint64_t kicks, calls, err_signals;
};

/* marks a chain the malformed cases wrote by hand */
static char raw_chain_cookie;

static uint16_t *used_event_of(struct vq *q)
{
	return &q->avail->ring[q->num];
}

static uint16_t *avail_event_of(struct vq *q)
{
	return (uint16_t *)(void *)&q->used->ring[q->num];
}

/* Free list holds first .. num-1 (descriptors below `first` stay taken: hand-written chains). */
static void vq_reset_free(struct vq *q, unsigned first)
{
	for (unsigned i = 0; i < q->num; i++)
		q->next_free[i] = (uint16_t)(i + 1);
	q->free_head = (uint16_t)first;
	q->num_free = first < q->num ? q->num - first : 0;
}

/* Add a chain (into the ring's table, or into itable behind one indirect descriptor); the head, or -1 without room. */
static int vq_add(struct vq *q, const struct buf *bufs, unsigned n, struct vring_desc *itable, uint64_t itable_gpa, unsigned itable_cap, void *cookie)
{
	uint16_t head;
	if (n == 0)
		return -1;
	if (itable) {
		if (n > itable_cap || q->num_free < 1)
			return -1;
		for (unsigned i = 0; i < n; i++) {
			bool more = i + 1 < n;
			itable[i] = (struct vring_desc){ .addr = bufs[i].gpa, .len = bufs[i].len,
							 .flags = (uint16_t)(bufs[i].flags | (more ? VRING_DESC_F_NEXT : 0)),
							 .next = (uint16_t)(more ? i + 1 : 0) };
		}
		head = q->free_head;
		q->free_head = q->next_free[head];
		q->num_free--;
		q->desc[head] = (struct vring_desc){ .addr = itable_gpa, .len = (uint32_t)(n * sizeof(struct vring_desc)), .flags = VRING_DESC_F_INDIRECT, .next = 0 };
		q->chain_len[head] = 1;
	} else {
		if (q->num_free < n)
			return -1;
		head = q->free_head;
		uint16_t idx = head;
		for (unsigned i = 0; i < n; i++) {
			bool more = i + 1 < n;
			q->desc[idx] = (struct vring_desc){ .addr = bufs[i].gpa, .len = bufs[i].len,
							    .flags = (uint16_t)(bufs[i].flags | (more ? VRING_DESC_F_NEXT : 0)),
							    .next = more ? q->next_free[idx] : 0 };
			idx = q->next_free[idx];
		}
		q->free_head = idx;
		q->num_free -= n;
		q->chain_len[head] = (uint16_t)n;
	}
	q->cookie[head] = cookie;
	q->avail->ring[q->avail_idx % q->num] = head;
	q->avail_idx++;
	return head;
}

/* Make the added entries visible and kick when the backend asked for it (or always, with force). */
static int vq_publish(struct vq *q, bool force_kick)
{
	uint16_t old = q->published, new_idx = q->avail_idx;
	if (old == new_idx && !force_kick)
		return 0;
	__atomic_store_n(&q->avail->idx, new_idx, __ATOMIC_RELEASE);
	q->published = new_idx;
	/* the index store must be visible before we read whether the backend wants a kick */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	bool kick;
	if (q->event_idx)
		kick = vring_need_event(__atomic_load_n(avail_event_of(q), __ATOMIC_RELAXED), new_idx, old);
	else
		kick = !(__atomic_load_n(&q->used->flags, __ATOMIC_RELAXED) & VRING_USED_F_NO_NOTIFY);
	if (kick || force_kick) {
		if (eventfd_write(q->kick_fd, 1) < 0)
			return -1;
		q->kicks++;
	}
	return 0;
}

/*
 * Take one used entry: 1 with its cookie and length, 0 when there is none, -1 (message in err) when
 * the backend returned something impossible. Everything read here is the backend's to write.
 */
static int vq_get_used(struct vq *q, void **cookie, uint32_t *len, char *err, size_t errlen)
{
	uint16_t used_idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	if (used_idx == q->last_used)
		return 0;
	if ((uint16_t)(used_idx - q->last_used) > q->num) {
		snprintf(err, errlen, "queue %u: the used index jumped from %u to %u (ring of %u)", q->index, q->last_used, used_idx, q->num);
		return -1;
	}
	struct vring_used_elem e;
	memcpy(&e, &q->used->ring[q->last_used % q->num], sizeof e);
	if (e.id >= q->num || !q->cookie[e.id]) {
		snprintf(err, errlen, "queue %u: used entry %u names descriptor %u, which is not the head of a request in flight", q->index, q->last_used, e.id);
		return -1;
	}
	q->last_used++;
	*cookie = q->cookie[e.id];
	*len = e.len;
	q->cookie[e.id] = NULL;
	unsigned n = q->chain_len[e.id];
	if (n > 0) {
		uint16_t last = (uint16_t)e.id;
		for (unsigned i = 1; i < n; i++)
			last = q->next_free[last];
		q->next_free[last] = q->free_head;
		q->free_head = (uint16_t)e.id;
		q->num_free += n;
	}
	return 1;
}

/* Wait for news in the used ring: 1 news, 0 timeout, 2 the backend signalled the error eventfd, -1 a failed syscall. */
static int vq_wait(struct vq *q, int timeout_ms)
{
	if (q->event_idx)
		__atomic_store_n(used_event_of(q), q->last_used, __ATOMIC_RELAXED);
	/* publish used_event before the last look at the used index, or a completion slips between */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) != q->last_used)
		return 1;
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	for (;;) {
		struct pollfd p[2] = { { .fd = q->call_fd, .events = POLLIN }, { .fd = q->err_fd, .events = POLLIN } };
		int r = poll(p, 2, ms_until(deadline));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		eventfd_t v;
		if (p[0].revents & POLLIN) {
			if (eventfd_read(q->call_fd, &v) < 0 && errno != EAGAIN)
				return -1;
			q->calls++;
		}
		bool err_signalled = false;
		if (p[1].revents & POLLIN) {
			if (eventfd_read(q->err_fd, &v) < 0 && errno != EAGAIN)
				return -1;
			q->err_signals++;
			err_signalled = true;
		}
		if (__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) != q->last_used)
			return 1;
		if (err_signalled)
			return 2;
		if (r == 0 || ms_until(deadline) == 0)
			return 0;
	}
}

#endif
