/*
 * vub-frontend ring cases: one hand-written chain on queue 0 (bad ones for malformed, and chains at
 * the edge of the advertised limits), and what the backend did with it.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_RING_CASES_H
#define VUB_FE_RING_CASES_H

#include "fe_device.h"

struct mctx {
	const char *name;
	const struct opts *o;
	/* ring cases */
	bool completed;
	uint32_t used_len;
	uint8_t status;
	bool err_signalled;
	int64_t stray_offset; /* status unwritten: the first byte of the data buffer the backend changed, or -1 */
	uint8_t stray_value;
	bool skipped;
	char skip_reason[160];
	/* message cases */
	const char *reply; /* "ack", "nack", "none", "closed", "bad" */
	bool hung;
	/* both */
	bool closed;
	char detail[512];
};

struct raw {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* Write a chain by hand into the ring's table at 0..n-1 (the queue must be idle) and make head `head_entry` available. */
static void raw_direct(struct vq *q, const struct raw *r, unsigned n, uint16_t head_entry)
{
	for (unsigned i = 0; i < n; i++)
		q->desc[i] = (struct vring_desc){ .addr = r[i].addr, .len = r[i].len, .flags = r[i].flags, .next = r[i].next };
	vq_reset_free(q, n);
	if (head_entry < q->num) {
		q->cookie[head_entry] = &raw_chain_cookie;
		q->chain_len[head_entry] = 0; /* never freed: later requests use descriptors n.. */
	}
	q->avail->ring[q->avail_idx % q->num] = head_entry;
	q->avail_idx++;
}

/* One indirect descriptor at 0 pointing at a table written by hand; len_bytes 0: the table's own size. */
static void raw_indirect(struct dev *d, struct vq *q, struct slot *s, const struct raw *r, unsigned n, uint32_t len_bytes)
{
	if (n > s->itable_cap)
		die("internal error: indirect table of %u entries", n);
	for (unsigned i = 0; i < n; i++)
		s->itable[i] = (struct vring_desc){ .addr = r[i].addr, .len = r[i].len, .flags = r[i].flags, .next = r[i].next };
	struct raw head = { gmem_gpa(&d->mem, s->itable), len_bytes ? len_bytes : (uint32_t)(n * sizeof(struct vring_desc)), VRING_DESC_F_INDIRECT, 0 };
	raw_direct(q, &head, 1, 0);
}

#define R_NEXT VRING_DESC_F_NEXT
#define R_W VRING_DESC_F_WRITE

/* The usual parts of a 4 KiB read in slot s: header, data, status. */
static void raw_read_parts(struct dev *d, struct slot *s, uint64_t sector, struct raw *hdr, struct raw *data, struct raw *status)
{
	s->hdr->type = VIRTIO_BLK_T_IN;
	s->hdr->ioprio = 0;
	s->hdr->sector = sector;
	*s->status = STATUS_UNSET;
	*hdr = (struct raw){ gmem_gpa(&d->mem, s->hdr), sizeof *s->hdr, R_NEXT, 1 };
	*data = (struct raw){ gmem_gpa(&d->mem, s->data), 4096, R_W | R_NEXT, 2 };
	*status = (struct raw){ gmem_gpa(&d->mem, s->status), 1, R_W, 0 };
}

/* Each ring case puts one bad request on queue 0 using slot 0; 0, or 1 when skipped (reason in m). */
static int ring_case(struct dev *d, struct mctx *m)
{
	struct vq *q = &d->q[0];
	struct slot *s = &q->slots[0];
	struct raw r[MAX_CHAIN];
	memset(s->data, 0xa5, s->data_cap); /* so that a status byte written into the data shows */
	raw_read_parts(d, s, 0, &r[0], &r[1], &r[2]);
	const char *c = m->name;
	if (strcmp(c, "desc-loop") == 0) {
		/* header, data, status, and the status points back at the data: data, status, data, ... */
		r[2].flags |= R_NEXT;
		r[2].next = 1;
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "desc-loop-empty") == 0) {
		/* header, data, status, then two empty descriptors that point at each other: only a bound on
		 * the walk ends it (empty buffers add no iovecs, so no iovec limit does) */
		r[2].flags |= R_NEXT;
		r[2].next = 3;
		r[3] = (struct raw){ gmem_gpa(&d->mem, s->data), 0, R_W | R_NEXT, 4 };
		r[4] = (struct raw){ gmem_gpa(&d->mem, s->data), 0, R_W | R_NEXT, 3 };
		raw_direct(q, r, 5, 0);
	} else if (strcmp(c, "chain-too-long") == 0) {
		/* a chain of twice the ring size: only possible without a loop behind an indirect table */
		if (!d->indirect) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "the backend does not offer INDIRECT_DESC");
			return 1;
		}
		unsigned n = 2 * q->num;
		for (unsigned i = 1; i + 1 < n; i++)
			r[i] = (struct raw){ gmem_gpa(&d->mem, s->data + (i - 1) * SECTOR_BYTES), SECTOR_BYTES, R_W | R_NEXT, (uint16_t)(i + 1) };
		r[n - 1] = (struct raw){ gmem_gpa(&d->mem, s->status), 1, R_W, 0 };
		raw_indirect(d, q, s, r, n, 0);
	} else if (strcmp(c, "index-out-of-range") == 0) {
		raw_direct(q, r, 3, 0);
		q->cookie[0] = NULL;
		q->avail->ring[(uint16_t)(q->avail_idx - 1) % q->num] = (uint16_t)q->num; /* head == ring size */
	} else if (strcmp(c, "avail-idx-jump") == 0) {
		raw_direct(q, r, 3, 0);
		/* claim more entries than the ring holds */
		q->avail_idx = (uint16_t)(q->published + q->num + 1);
	} else if (strcmp(c, "addr-outside-memory") == 0) {
		r[1].addr = 1ull << 40;
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "addr-straddles-end") == 0) {
		/* the data buffer starts 2 KiB before the end of region 0 and runs on past it */
		r[1].addr = d->mem.r[0].gpa + d->mem.r[0].size - 2048;
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "indirect-bad-len") == 0) {
		if (!d->indirect) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "the backend does not offer INDIRECT_DESC");
			return 1;
		}
		raw_indirect(d, q, s, r, 3, 3 * sizeof(struct vring_desc) - 8); /* 40 bytes: 2.5 descriptors */
	} else if (strcmp(c, "indirect-nested") == 0) {
		if (!d->indirect) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "the backend does not offer INDIRECT_DESC");
			return 1;
		}
		/* the inner table (a good read) sits in slot 1's table; the outer one points at it */
		struct slot *inner = &q->slots[1];
		for (unsigned i = 0; i < 3; i++)
			inner->itable[i] = (struct vring_desc){ .addr = r[i].addr, .len = r[i].len, .flags = r[i].flags, .next = r[i].next };
		struct raw outer = { gmem_gpa(&d->mem, inner->itable), 3 * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0 };
		raw_indirect(d, q, s, &outer, 1, 0);
	} else if (strcmp(c, "too-many-segments") == 0) {
		/* seg_max + 1 data segments of 512 bytes: in the ring when they fit, else behind a table */
		unsigned nseg = d->seg_max + 1;
		unsigned n = nseg + 2;
		if (n > MAX_CHAIN || n > s->itable_cap || (uint64_t)nseg * SECTOR_BYTES > s->data_cap) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "seg_max %u is larger than this frontend builds chains for", d->seg_max);
			return 1;
		}
		for (unsigned i = 1; i <= nseg; i++)
			r[i] = (struct raw){ gmem_gpa(&d->mem, s->data + (i - 1) * SECTOR_BYTES), SECTOR_BYTES, R_W | R_NEXT, (uint16_t)(i + 1) };
		r[n - 1] = (struct raw){ gmem_gpa(&d->mem, s->status), 1, R_W, 0 };
		if (n + 4 <= q->num) {
			raw_direct(q, r, n, 0);
		} else if (d->indirect) {
			raw_indirect(d, q, s, r, n, 0);
		} else {
			snprintf(m->skip_reason, sizeof m->skip_reason, "seg_max %u does not fit the ring and there is no INDIRECT_DESC", d->seg_max);
			return 1;
		}
	} else if (strcmp(c, "loop-whole-table") == 0 || strcmp(c, "indirect-loop-whole-table") == 0) {
		/* header, data, ..., status, every descriptor of the table linked once, and the status
		 * linking back to the header: a chain longer than its table */
		bool ind = c[0] == 'i';
		if (ind && !d->indirect) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "the backend does not offer INDIRECT_DESC");
			return 1;
		}
		unsigned n = ind ? 8 : q->num;
		if (n > MAX_CHAIN || (uint64_t)(n - 2) * SECTOR_BYTES > s->data_cap) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "a ring of %u is larger than this frontend builds chains for", n);
			return 1;
		}
		for (unsigned i = 1; i + 1 < n; i++)
			r[i] = (struct raw){ gmem_gpa(&d->mem, s->data + (i - 1) * SECTOR_BYTES), SECTOR_BYTES, R_W | R_NEXT, (uint16_t)(i + 1) };
		r[n - 1] = (struct raw){ gmem_gpa(&d->mem, s->status), 1, R_W | R_NEXT, 0 };
		if (ind) {
			raw_indirect(d, q, s, r, n, 0);
		} else {
			raw_direct(q, r, n, 0);
			q->chain_len[0] = (uint16_t)n; /* the whole table: take it back when the chain completes */
		}
	} else if (strcmp(c, "segments-span-regions") == 0) {
		/* not malformed: seg_max data segments of 4 KiB, each spanning the boundary of two adjacent
		 * regions (so each is two pieces of host memory); within every advertised limit, so OK */
		const struct gregion *r0 = &d->mem.r[0];
		if (d->mem.n != 2 || d->mem.r[1].gpa != r0->gpa + r0->size) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "needs --regions 2 --adjacent");
			return 1;
		}
		unsigned nseg = d->seg_max < MAX_DATA_SEGS ? d->seg_max : MAX_DATA_SEGS;
		unsigned n = nseg + 2;
		if (n + 4 > q->num) {
			snprintf(m->skip_reason, sizeof m->skip_reason, "%u descriptors do not fit a ring of %u", n, q->num);
			return 1;
		}
		/* every segment reads into the same straddling page: the data is not checked, the status is */
		for (unsigned i = 1; i <= nseg; i++)
			r[i] = (struct raw){ r0->gpa + r0->size - 2048, 4096, R_W | R_NEXT, (uint16_t)(i + 1) };
		r[n - 1] = (struct raw){ gmem_gpa(&d->mem, s->status), 1, R_W, 0 };
		raw_direct(q, r, n, 0);
		q->chain_len[0] = (uint16_t)n;
	} else if (strcmp(c, "sector-out-of-range") == 0) {
		s->hdr->sector = d->capacity_bytes / SECTOR_BYTES; /* the first sector past the end */
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "len-not-512") == 0) {
		r[1].len = 1000;
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "header-short") == 0) {
		r[0].len = 8;
		raw_direct(q, r, 3, 0);
	} else if (strcmp(c, "status-not-writable") == 0) {
		r[2].flags &= (uint16_t)~R_W;
		raw_direct(q, r, 3, 0);
	} else {
		die("internal error: ring case %s", c);
	}
	return 0;
}

/* Post the bad chain, wait for a used entry (or the case timeout), note what came back. */
static void ring_case_run(struct dev *d, struct mctx *m)
{
	struct vq *q = &d->q[0];
	struct slot *s = &q->slots[0];
	if (vq_publish(q, true) < 0)
		die("kick eventfd: %s", strerror(errno));
	uint64_t deadline = now_ns() + (uint64_t)m->o->case_timeout_ms * 1000000ull;
	for (;;) {
		void *cookie = NULL;
		uint32_t len = 0;
		int g = vq_get_used(q, &cookie, &len, m->detail, sizeof m->detail);
		if (g < 0)
			return; /* detail says what the backend put in the used ring */
		if (g == 1) {
			m->completed = true;
			m->used_len = len;
			m->status = slot_status(s);
			if (m->status == STATUS_UNSET) {
				for (uint32_t i = 0; i < s->data_cap; i++) {
					if (s->data[i] != 0xa5) {
						m->stray_offset = i;
						m->stray_value = s->data[i];
						break;
					}
				}
			}
			return;
		}
		int left = ms_until(deadline);
		if (left == 0)
			return;
		int w = vq_wait(q, left);
		if (w < 0)
			die("waiting on the call eventfd: %s", strerror(errno));
		if (w == 2)
			m->err_signalled = true;
	}
}


#endif
