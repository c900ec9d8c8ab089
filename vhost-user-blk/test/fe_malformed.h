/*
 * vub-frontend malformed: one deliberately bad ring entry or message, what the backend did about it,
 * and whether it still serves a new connection.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_MALFORMED_H
#define VUB_FE_MALFORMED_H

#include "fe_device.h"

/* ======================================================================================== */
/* malformed                                                                                */
/* ======================================================================================== */

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

/* After a message case: wait for the REPLY_ACK the bad message asked for. */
static void msg_case_reply(struct dev *d, struct mctx *m, uint32_t request)
{
	if (!vu_reply_ack(&d->vu)) {
		m->reply = "none";
		return;
	}
	uint64_t v = 0;
	uint32_t got = 0;
	int rc = vu_recv_reply(&d->vu, request, &v, sizeof v, &got, m->o->case_timeout_ms);
	if (rc == VU_OK)
		m->reply = got == sizeof v ? (v == 0 ? "ack" : "nack") : "bad";
	else if (rc == VU_CLOSED)
		m->reply = "closed";
	else if (rc == VU_TIMEOUT)
		m->reply = "none";
	else
		m->reply = "bad";
	if (rc != VU_OK && rc != VU_TIMEOUT && rc != VU_CLOSED)
		snprintf(m->detail, sizeof m->detail, "%s", d->vu.err);
}

/* Is the connection still served? A GET_FEATURES round trip says: closed, hung, or alive. */
static void probe_connection(struct dev *d, struct mctx *m)
{
	int saved = d->vu.timeout_ms;
	d->vu.timeout_ms = m->o->case_timeout_ms;
	uint64_t f;
	int rc = vu_get_u64(&d->vu, VHOST_USER_GET_FEATURES, &f);
	d->vu.timeout_ms = saved;
	if (rc == VU_CLOSED)
		m->closed = true;
	else if (rc == VU_TIMEOUT)
		m->hung = true;
	else if (rc != VU_OK && !m->detail[0])
		snprintf(m->detail, sizeof m->detail, "probe after the case: %s", d->vu.err);
}

static int msg_send_bad(struct dev *d, struct mctx *m, uint32_t request, uint32_t header_size, const void *payload, size_t len, const int *fds, unsigned nfds)
{
	struct vhost_user_hdr h = { .request = request, .flags = VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK, .size = header_size };
	int rc = vu_send_raw(&d->vu, &h, payload, len, fds, nfds);
	if (rc == VU_CLOSED) {
		m->closed = true;
		m->reply = "closed";
		return VU_CLOSED;
	}
	if (rc != VU_OK)
		die("sending the malformed message: %s", d->vu.err);
	msg_case_reply(d, m, request);
	probe_connection(d, m);
	if (m->closed)
		return VU_CLOSED;
	if (m->hung)
		return VU_TIMEOUT;
	return VU_OK;
}

static int msg_case_hook(struct dev *d, void *arg)
{
	struct mctx *m = arg;
	const char *c = m->name;
	if (strcmp(c, "msg-short") == 0) {
		uint32_t index = 0;
		return msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, sizeof index, &index, sizeof index, NULL, 0);
	}
	if (strcmp(c, "msg-oversize") == 0) {
		/* a header that claims 64 KiB, and the 64 KiB after it, so the stream stays in step for a backend that reads it all */
		uint32_t size = 65536;
		uint8_t *zeros = xcalloc(1, size);
		int rc = msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, size, zeros, size, NULL, 0);
		free(zeros);
		return rc;
	}
	if (strcmp(c, "msg-bad-fd-count") == 0) {
		uint64_t index = 0;
		int extra = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (extra < 0)
			die("eventfd: %s", strerror(errno));
		int fds[2] = { d->q[0].kick_fd, extra };
		int rc = msg_send_bad(d, m, VHOST_USER_SET_VRING_KICK, sizeof index, &index, sizeof index, fds, 2);
		if (close(extra) < 0)
			die("close: %s", strerror(errno));
		return rc;
	}
	if (strcmp(c, "mem-table-fd-mismatch") == 0) {
		/* two regions described (halves of the memory), one descriptor sent */
		struct vhost_user_memory mt;
		memset(&mt, 0, sizeof mt);
		mt.nregions = 2;
		uint64_t half = d->mem.size / 2;
		for (unsigned i = 0; i < 2; i++)
			mt.regions[i] = (struct vhost_user_mem_region){ .guest_phys_addr = i * half, .memory_size = half,
									.userspace_addr = uva_of(d->mem.base + i * half), .mmap_offset = i * half };
		uint32_t size = 8 + 2 * sizeof(struct vhost_user_mem_region);
		return msg_send_bad(d, m, VHOST_USER_SET_MEM_TABLE, size, &mt, size, &d->mem.fd, 1);
	}
	if (strcmp(c, "mem-region-overflow") == 0) {
		struct vhost_user_memory mt;
		memset(&mt, 0, sizeof mt);
		mt.nregions = 1;
		mt.regions[0] = (struct vhost_user_mem_region){ .guest_phys_addr = 0, .memory_size = d->mem.size,
								.userspace_addr = uva_of(d->mem.base), .mmap_offset = UINT64_MAX - 4095 };
		uint32_t size = 8 + sizeof(struct vhost_user_mem_region);
		return msg_send_bad(d, m, VHOST_USER_SET_MEM_TABLE, size, &mt, size, &d->mem.fd, 1);
	}
	if (strcmp(c, "queue-index-out-of-range") == 0) {
		struct vhost_user_vring_state st = { .index = 99, .num = d->o->ring_size };
		return msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, sizeof st, &st, sizeof st, NULL, 0);
	}
	if (strcmp(c, "ring-size-not-pow2") == 0) {
		struct vhost_user_vring_state st = { .index = 0, .num = 100 };
		return msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, sizeof st, &st, sizeof st, NULL, 0);
	}
	if (strcmp(c, "unknown-request") == 0)
		return msg_send_bad(d, m, 99, 0, NULL, 0, NULL, 0);
	die("internal error: message case %s", c);
}

enum case_kind { CASE_RING, CASE_MSG };

static const struct mcase {
	const char *name;
	enum case_kind kind;
	enum stage at;
} cases[] = {
	{ "desc-loop", CASE_RING, STAGE_NONE },
	{ "desc-loop-empty", CASE_RING, STAGE_NONE },
	{ "chain-too-long", CASE_RING, STAGE_NONE },
	{ "index-out-of-range", CASE_RING, STAGE_NONE },
	{ "avail-idx-jump", CASE_RING, STAGE_NONE },
	{ "addr-outside-memory", CASE_RING, STAGE_NONE },
	{ "addr-straddles-end", CASE_RING, STAGE_NONE },
	{ "indirect-bad-len", CASE_RING, STAGE_NONE },
	{ "indirect-nested", CASE_RING, STAGE_NONE },
	{ "too-many-segments", CASE_RING, STAGE_NONE },
	{ "sector-out-of-range", CASE_RING, STAGE_NONE },
	{ "len-not-512", CASE_RING, STAGE_NONE },
	{ "header-short", CASE_RING, STAGE_NONE },
	{ "status-not-writable", CASE_RING, STAGE_NONE },
	{ "msg-short", CASE_MSG, STAGE_BEFORE_VRINGS },
	{ "msg-oversize", CASE_MSG, STAGE_BEFORE_VRINGS },
	{ "msg-bad-fd-count", CASE_MSG, STAGE_BEFORE_KICK },
	{ "mem-table-fd-mismatch", CASE_MSG, STAGE_BEFORE_MEM_TABLE },
	{ "queue-index-out-of-range", CASE_MSG, STAGE_BEFORE_VRINGS },
	{ "ring-size-not-pow2", CASE_MSG, STAGE_BEFORE_VRINGS },
	{ "mem-region-overflow", CASE_MSG, STAGE_BEFORE_MEM_TABLE },
	{ "unknown-request", CASE_MSG, STAGE_BEFORE_VRINGS },
};

/* A good 4 KiB read at sector 0 in slot `slot` of queue 0: true when OK (its data in *out). */
static bool good_read(struct dev *d, unsigned slot, int timeout_ms, uint8_t *out, char *why, size_t whylen)
{
	struct shape sh = shape_for(d, 4096, false);
	struct sync_result res;
	int rc = blk_sync(d, 0, slot, VIRTIO_BLK_T_IN, 0, 4096, &sh, timeout_ms, &res);
	if (rc != VU_OK) {
		snprintf(why, whylen, "%s", d->vu.err);
		return false;
	}
	if (res.status != VIRTIO_BLK_S_OK) {
		snprintf(why, whylen, "status %u", res.status);
		return false;
	}
	memcpy(out, d->q[0].slots[slot].data, 4096);
	return true;
}

static const char *ring_outcome(const struct mctx *m)
{
	if (m->completed) {
		if (m->status == VIRTIO_BLK_S_IOERR)
			return "status-ioerr";
		if (m->status == VIRTIO_BLK_S_UNSUPP)
			return "status-unsupp";
		if (m->status == VIRTIO_BLK_S_OK)
			return "ok";
		return "no-status";
	}
	return m->closed ? "connection-closed" : "no-status";
}

static const char *msg_outcome(const struct mctx *m)
{
	if (m->closed)
		return "connection-closed";
	if (m->reply && strcmp(m->reply, "nack") == 0)
		return "reply-nack";
	if (m->hung)
		return "hang";
	return "ok";
}

static int cmd_malformed(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[2], "list") == 0) {
		printf("{\"cases\":[");
		for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
			printf("%s\"%s\"", i ? "," : "", cases[i].name);
		printf("]}\n");
		return 0;
	}
	const char *path = socket_arg(argc, argv, 4);
	const char *name = argv[3];
	struct opts o;
	parse_opts(argc, argv, 4, &o);
	const struct mcase *mc = NULL;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		if (strcmp(cases[i].name, name) == 0)
			mc = &cases[i];
	if (!mc)
		die("unknown case '%s' (vub-frontend malformed list)", name);
	struct layout l = { .nq = 1, .nslots = 2, .slot_data = SLOT_DATA_BYTES };
	struct mctx m = { .name = name, .o = &o, .status = STATUS_UNSET, .stray_offset = -1 };
	uint8_t baseline[4096], again[4096];
	char why[512] = "";

	/* 1: the backend works before the case, and what sector 0 holds */
	struct dev d;
	dev_open_or_die(&d, path, &o, &l);
	if (!good_read(&d, 1, o.timeout_ms, baseline, why, sizeof why))
		die("%s: the good read before the case failed: %s", path, why);
	dev_close_or_die(&d, path);

	/* 2: the case, and whether the same connection still serves a good read */
	bool same_ok = false;
	bool stop_ok = false;
	char same_why[512] = "";
	if (mc->kind == CASE_RING) {
		dev_open_or_die(&d, path, &o, &l);
		if (ring_case(&d, &m) == 0) {
			ring_case_run(&d, &m);
			probe_connection(&d, &m);
			if (!m.closed && !m.hung) {
				same_ok = good_read(&d, 1, o.case_timeout_ms, again, same_why, sizeof same_why) && memcmp(again, baseline, 4096) == 0;
				d.vu.timeout_ms = o.case_timeout_ms;
				stop_ok = dev_close(&d, true) == VU_OK;
				if (!stop_ok)
					snprintf(same_why + strlen(same_why), sizeof same_why - strlen(same_why), "%sGET_VRING_BASE: %s", same_why[0] ? "; " : "", d.vu.err);
			} else {
				dev_close(&d, false);
			}
		} else {
			m.skipped = true;
			dev_close(&d, false);
		}
	} else {
		struct hook h = { .at = mc->at, .fn = msg_case_hook, .arg = &m };
		int rc = dev_open(&d, path, &o, &l, &h);
		if (rc == VU_OK) {
			same_ok = good_read(&d, 1, o.case_timeout_ms, again, same_why, sizeof same_why) && memcmp(again, baseline, 4096) == 0;
			d.vu.timeout_ms = o.case_timeout_ms;
			stop_ok = dev_close(&d, true) == VU_OK;
		} else {
			if (!m.closed && !m.hung)
				snprintf(same_why, sizeof same_why, "setup after the case: %s", d.vu.err);
			dev_close(&d, false);
		}
	}

	/* 3: a new connection works and reads the same data */
	bool alive = false;
	char alive_why[512] = "";
	if (dev_open(&d, path, &o, &l, NULL) != VU_OK) {
		snprintf(alive_why, sizeof alive_why, "%s", d.vu.err);
		dev_close(&d, false);
	} else {
		if (good_read(&d, 1, o.timeout_ms, again, alive_why, sizeof alive_why)) {
			alive = memcmp(again, baseline, 4096) == 0;
			if (!alive)
				snprintf(alive_why, sizeof alive_why, "sector 0 reads differently after the case");
		}
		if (dev_close(&d, true) != VU_OK && alive) {
			alive = false;
			snprintf(alive_why, sizeof alive_why, "GET_VRING_BASE: %s", d.vu.err);
		}
	}

	printf("{\"case\":\"%s\",\"outcome\":", name);
	if (m.skipped)
		printf("\"skipped\"");
	else
		printf("\"%s\"", mc->kind == CASE_RING ? ring_outcome(&m) : msg_outcome(&m));
	printf(",\"alive\":%s", alive ? "true" : "false");
	if (mc->kind == CASE_RING && !m.skipped) {
		printf(",\"completed\":%s,\"used_len\":%u,\"status\":", m.completed ? "true" : "false", m.used_len);
		if (m.completed && m.status != STATUS_UNSET)
			printf("%u", m.status);
		else
			printf("null");
		printf(",\"err_signalled\":%s", m.err_signalled ? "true" : "false");
		if (m.stray_offset >= 0)
			printf(",\"status_written_into_data_at\":%" PRId64 ",\"status_written_into_data_value\":%u", m.stray_offset, m.stray_value);
	}
	if (mc->kind == CASE_MSG)
		printf(",\"reply\":\"%s\"", m.reply ? m.reply : "none");
	if (!m.skipped) {
		printf(",\"closed\":%s,\"same_connection_ok\":%s", m.closed ? "true" : "false", same_ok ? "true" : "false");
		if (!m.closed && !m.hung)
			printf(",\"stop_ok\":%s", stop_ok ? "true" : "false");
	}
	if (m.skipped) {
		printf(",\"reason\":");
		json_string(stdout, m.skip_reason, strlen(m.skip_reason));
	}
	if (m.detail[0]) {
		printf(",\"detail\":");
		json_string(stdout, m.detail, strlen(m.detail));
	}
	if (!same_ok && same_why[0]) {
		printf(",\"same_connection_error\":");
		json_string(stdout, same_why, strlen(same_why));
	}
	if (!alive) {
		printf(",\"alive_error\":");
		json_string(stdout, alive_why, strlen(alive_why));
	}
	printf("}\n");
	if (!alive) {
		fprintf(stderr, "vub-frontend: the backend does not serve a new connection after case %s: %s\n", name, alive_why);
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

#endif
