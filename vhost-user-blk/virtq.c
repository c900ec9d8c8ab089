#include "virtq.h"

#include <string.h>

static const struct vub_region *region_of(const struct vub_mem *m, uint64_t addr, bool by_uva)
{
	for (unsigned i = 0; i < m->n && i < VUB_MAX_REGIONS; i++) {
		const struct vub_region *r = &m->r[i];
		uint64_t base = by_uva ? r->uva : r->gpa;
		if (addr >= base && addr - base < r->size)
			return r;
	}
	return NULL;
}

static void *translate(const struct vub_mem *m, uint64_t addr, uint64_t len, bool by_uva)
{
	const struct vub_region *r = region_of(m, addr, by_uva);
	if (!r)
		return NULL;
	uint64_t off = addr - (by_uva ? r->uva : r->gpa);
	if (len > r->size - off)
		return NULL;
	return r->host + off;
}

void *vub_gpa_to_host(const struct vub_mem *m, uint64_t gpa, uint64_t len)
{
	return translate(m, gpa, len, false);
}

void *vub_uva_to_host(const struct vub_mem *m, uint64_t uva, uint64_t len)
{
	return translate(m, uva, len, true);
}

int vub_gpa_to_iov(const struct vub_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, unsigned max, unsigned *n)
{
	while (len > 0) {
		const struct vub_region *r = region_of(m, gpa, false);
		if (!r || *n >= max)
			return -1;
		uint64_t off = gpa - r->gpa;
		uint64_t chunk = r->size - off < len ? r->size - off : len;
		iov[*n].iov_base = r->host + off;
		iov[*n].iov_len = (size_t)chunk;
		(*n)++;
		if (gpa + chunk < gpa)
			return -1; /* wrapped the address space */
		gpa += chunk;
		len -= chunk;
	}
	return 0;
}

int vub_ring_map(struct vub_ring *r, const struct vub_mem *m, unsigned num, uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva)
{
	if (num == 0 || num > VUB_MAX_RING || (num & (num - 1)) != 0)
		return -1;
	/* the alignments the virtio spec requires of split rings */
	if ((desc_uva & 15) || (avail_uva & 1) || (used_uva & 3))
		return -1;
	/* the trailing u16 of avail and used rings is used_event / avail_event (EVENT_IDX) */
	struct vring_desc *desc = vub_uva_to_host(m, desc_uva, 16ull * num);
	struct vring_avail *avail = vub_uva_to_host(m, avail_uva, 4ull + 2ull * num + 2);
	struct vring_used *used = vub_uva_to_host(m, used_uva, 4ull + 8ull * num + 2);
	/* the host view must be aligned too: a region whose addresses are skewed against its mapping
	 * (an odd userspace_addr or mmap_offset) would make these misaligned */
	if (!desc || !avail || !used || ((uintptr_t)desc & 15) || ((uintptr_t)avail & 1) || ((uintptr_t)used & 3))
		return -1;
	r->num = num;
	r->desc = desc;
	r->avail = avail;
	r->used = used;
	r->broken = false;
	return 0;
}

bool vub_ring_has_work(struct vub_ring *r)
{
	uint16_t idx = __atomic_load_n(&r->avail->idx, __ATOMIC_ACQUIRE);
	return idx != r->last_avail;
}

static int add_buffer(struct vub_chain *c, const struct vub_mem *m, const struct vring_desc *d)
{
	bool writable = (d->flags & VRING_DESC_F_WRITE) != 0;
	if (!writable && c->n_in > 0)
		return -1; /* device-readable buffers must come before device-writable ones */
	if (d->len == 0)
		return 0;
	if (c->nbufs >= VUB_CHAIN_BUF_MAX)
		return -1;
	unsigned n = c->n_out + c->n_in;
	unsigned before = n;
	if (vub_gpa_to_iov(m, d->addr, d->len, c->iov, VUB_CHAIN_IOV_MAX, &n) < 0)
		return -1;
	if (writable) {
		c->n_in += n - before;
		c->in_bytes += d->len;
	} else {
		c->n_out += n - before;
		c->out_bytes += d->len;
		c->nbufs_out++;
	}
	c->buf_len[c->nbufs++] = d->len;
	return 0;
}

/* Walk one chain; every index is checked against the table it indexes, loops end at the table size. */
static int walk_chain(struct vub_ring *r, const struct vub_mem *m, uint16_t head, struct vub_chain *c)
{
	const struct vring_desc *table = r->desc;
	unsigned table_size = r->num;
	unsigned idx = head;
	unsigned steps = 0;
	bool in_indirect = false;
	for (;;) {
		if (idx >= table_size || steps++ >= table_size)
			return -1;
		struct vring_desc d;
		memcpy(&d, &table[idx], sizeof d); /* read the guest's descriptor once */
		if (d.flags & VRING_DESC_F_INDIRECT) {
			if (in_indirect || !r->indirect || (d.flags & VRING_DESC_F_NEXT) || d.len == 0 || d.len % sizeof(struct vring_desc) != 0 ||
			    d.len / sizeof(struct vring_desc) > VUB_MAX_RING)
				return -1;
			table = vub_gpa_to_host(m, d.addr, d.len);
			if (!table)
				return -1;
			table_size = d.len / sizeof(struct vring_desc);
			idx = 0;
			steps = 0;
			in_indirect = true;
			continue;
		}
		if (add_buffer(c, m, &d) < 0)
			return -1;
		if (!(d.flags & VRING_DESC_F_NEXT))
			return 0;
		idx = d.next;
	}
}

enum vub_pop vub_ring_pop(struct vub_ring *r, const struct vub_mem *m, struct vub_chain *c)
{
	if (r->broken)
		return VUB_POP_BROKEN;
	uint16_t avail_idx = __atomic_load_n(&r->avail->idx, __ATOMIC_ACQUIRE);
	if (avail_idx == r->last_avail)
		return VUB_POP_EMPTY;
	if ((uint16_t)(avail_idx - r->last_avail) > r->num) {
		r->broken = true; /* the driver claims more entries than the ring holds */
		return VUB_POP_BROKEN;
	}
	uint16_t head = __atomic_load_n(&r->avail->ring[r->last_avail % r->num], __ATOMIC_RELAXED);
	if (head >= r->num) {
		r->broken = true;
		return VUB_POP_BROKEN;
	}
	r->last_avail++;
	return vub_ring_chain(r, m, head, c);
}

enum vub_pop vub_ring_chain(struct vub_ring *r, const struct vub_mem *m, uint16_t head, struct vub_chain *c)
{
	if (head >= r->num) {
		r->broken = true;
		return VUB_POP_BROKEN;
	}
	memset(c, 0, offsetof(struct vub_chain, iov));
	c->head = head;
	if (walk_chain(r, m, head, c) < 0)
		return VUB_POP_BAD_CHAIN;
	return VUB_POP_OK;
}

void vub_ring_push(struct vub_ring *r, uint16_t head, uint32_t len)
{
	struct vring_used_elem *e = &r->used->ring[r->used_idx % r->num];
	e->id = head;
	e->len = len;
	r->used_idx++;
	__atomic_store_n(&r->used->idx, r->used_idx, __ATOMIC_RELEASE);
}

bool vub_ring_need_notify(struct vub_ring *r, uint16_t old_used)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!r->event_idx)
		return !(__atomic_load_n(&r->avail->flags, __ATOMIC_RELAXED) & 1); /* VRING_AVAIL_F_NO_INTERRUPT */
	uint16_t used_event = __atomic_load_n(&r->avail->ring[r->num], __ATOMIC_RELAXED);
	uint16_t new_idx = r->used_idx;
	return (uint16_t)(new_idx - used_event - 1) < (uint16_t)(new_idx - old_used);
}

void vub_ring_set_avail_event(struct vub_ring *r)
{
	if (!r->event_idx)
		return;
	uint16_t *avail_event = (uint16_t *)(void *)&r->used->ring[r->num];
	__atomic_store_n(avail_event, r->last_avail, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Copy between a buffer and the bytes of an iovec list from `skip` on, in either direction. */
static size_t iov_copy(const struct iovec *iov, unsigned n, size_t skip, uint8_t *buf, size_t len, bool to_iov)
{
	size_t done = 0;
	for (unsigned i = 0; i < n && done < len; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		size_t take = iov[i].iov_len - skip;
		if (take > len - done)
			take = len - done;
		uint8_t *at = (uint8_t *)iov[i].iov_base + skip;
		if (to_iov)
			memcpy(at, buf + done, take);
		else
			memcpy(buf + done, at, take);
		done += take;
		skip = 0;
	}
	return done;
}

size_t vub_iov_copy_from(const struct iovec *iov, unsigned n, size_t skip, void *dst, size_t len)
{
	return iov_copy(iov, n, skip, dst, len, false);
}

size_t vub_iov_copy_to(const struct iovec *iov, unsigned n, size_t skip, const void *src, size_t len)
{
	/* the buffer is only read in this direction */
	return iov_copy(iov, n, skip, (uint8_t *)(uintptr_t)src, len, true);
}

int vub_iov_slice(const struct iovec *iov, unsigned n, size_t skip, size_t len, struct iovec *out, unsigned max)
{
	unsigned k = 0;
	for (unsigned i = 0; i < n && len > 0; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		if (k >= max)
			return -1;
		size_t take = iov[i].iov_len - skip;
		if (take > len)
			take = len;
		out[k].iov_base = (uint8_t *)iov[i].iov_base + skip;
		out[k].iov_len = take;
		k++;
		len -= take;
		skip = 0;
	}
	return len == 0 ? (int)k : -1;
}
