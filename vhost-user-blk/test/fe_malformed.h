/*
 * vub-frontend malformed: one deliberately bad ring entry or message, what the backend did about it,
 * and whether it still serves a new connection.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_MALFORMED_H
#define VUB_FE_MALFORMED_H

#include "fe_ring_cases.h"

/* ======================================================================================== */
/* malformed                                                                                */
/* ======================================================================================== */

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
	struct vhost_user_header h = { .request = request, .flags = VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK, .size = header_size };
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
		struct vhost_memory mt;
		memset(&mt, 0, sizeof mt);
		mt.nregions = 2;
		uint64_t half = d->mem.size / 2;
		for (unsigned i = 0; i < 2; i++)
			mt.regions[i] = (struct vhost_memory_region){ .guest_phys_addr = i * half, .memory_size = half,
									.userspace_addr = uva_of(d->mem.base + i * half), .mmap_offset = i * half };
		uint32_t size = 8 + 2 * sizeof(struct vhost_memory_region);
		return msg_send_bad(d, m, VHOST_USER_SET_MEM_TABLE, size, &mt, size, &d->mem.fd, 1);
	}
	if (strcmp(c, "mem-region-overflow") == 0) {
		struct vhost_memory mt;
		memset(&mt, 0, sizeof mt);
		mt.nregions = 1;
		mt.regions[0] = (struct vhost_memory_region){ .guest_phys_addr = 0, .memory_size = d->mem.size,
								.userspace_addr = uva_of(d->mem.base), .mmap_offset = UINT64_MAX - 4095 };
		uint32_t size = 8 + sizeof(struct vhost_memory_region);
		return msg_send_bad(d, m, VHOST_USER_SET_MEM_TABLE, size, &mt, size, &d->mem.fd, 1);
	}
	if (strcmp(c, "queue-index-out-of-range") == 0) {
		struct vhost_vring_state st = { .index = 99, .num = d->o->ring_size };
		return msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, sizeof st, &st, sizeof st, NULL, 0);
	}
	if (strcmp(c, "ring-size-not-pow2") == 0) {
		struct vhost_vring_state st = { .index = 0, .num = 100 };
		return msg_send_bad(d, m, VHOST_USER_SET_VRING_NUM, sizeof st, &st, sizeof st, NULL, 0);
	}
	if (strcmp(c, "mem-table-unmaps-ring") == 0) {
		/* a new table without region 0, where queue 2's ring lies: the backend stops every queue,
		 * restarts queue 1 (region 1) and cannot restart queue 2. Queue 0 is stopped first
		 * (GET_VRING_BASE) so that its kick and stop descriptors leave the lowest free numbers: the
		 * table's descriptor takes one, and queue 1's new stop eventfd gets it once the backend has
		 * closed the table's descriptor; a backend that closes it a second time on the way out
		 * closes queue 1's stop eventfd and can never stop that queue. */
		if (d->nq < 3 || d->mem.n != 2)
			die("mem-table-unmaps-ring needs --queues 3 --regions 2");
		struct vhost_vring_state st = { .index = 0, .num = 0 }, reply;
		if (vu_get(&d->vu, VHOST_USER_GET_VRING_BASE, &st, sizeof st, &reply, sizeof reply) != VU_OK)
			die("GET_VRING_BASE before the case: %s", d->vu.err);
		struct vhost_memory mt;
		memset(&mt, 0, sizeof mt);
		mt.nregions = 1;
		const struct gregion *r1 = &d->mem.r[1];
		mt.regions[0] = (struct vhost_memory_region){ .guest_phys_addr = r1->gpa, .memory_size = r1->size,
								.userspace_addr = uva_of(r1->host), .mmap_offset = r1->mmap_offset };
		uint32_t size = 8 + sizeof(struct vhost_memory_region);
		return msg_send_bad(d, m, VHOST_USER_SET_MEM_TABLE, size, &mt, size, &d->mem.fd, 1);
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
	{ "loop-whole-table", CASE_RING, STAGE_NONE },
	{ "indirect-loop-whole-table", CASE_RING, STAGE_NONE },
	{ "segments-span-regions", CASE_RING, STAGE_NONE },
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
	{ "mem-table-unmaps-ring", CASE_MSG, STAGE_STARTED },
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
	struct layout l = { .nq = o.queues, .nslots = 2, .slot_data = SLOT_DATA_BYTES };
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
