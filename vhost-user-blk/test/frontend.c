/*
 * vub-frontend: a vhost-user-blk frontend (the VMM's side of QEMU docs/interop/vhost-user.rst) for
 * testing and benchmarking vhost-user-blk backends (slipway-blk, qemu-storage-daemon, any other).
 *
 * It owns the "guest memory" (a memfd, split into two regions with a hole between them on request),
 * negotiates the way QEMU does, lays split virtqueues out in that memory (ring addresses are given
 * as this process's own addresses, buffer addresses as guest-physical ones), and drives virtio-blk
 * requests through them, kicking and waiting on eventfds. Every subcommand prints one JSON object.
 *
 * Exit status: 0 success, 1 the backend answered but the check failed (a non-OK status, wrong data,
 * a dead backend), 2 usage, setup or protocol errors (the message on stderr says which).
 * Everything this program decides for itself (memory layout, offsets, data) is deterministic unless
 * --seed says otherwise, so a failing run repeats.
 *
 * Parts: vub_proto.h (wire formats), fe_util.h (limits, helpers), fe_options.h (command line),
 * fe_vhost_user.h (messages, handshake), fe_virtq.h (guest memory, the driver's split virtqueue),
 * fe_device.h (a negotiated device and virtio-blk requests), fe_ring_cases.h (hand-written chains),
 * fe_malformed.h (the malformed cases), fe_restart.h (a backend restart with a request in flight);
 * this file holds the other subcommands.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fe_device.h"
#include "fe_malformed.h"
#include "fe_restart.h"

/* ======================================================================================== */
/* info, read, write, flush, getid, discard, zeroes                                         */
/* ======================================================================================== */

static void print_feature_names(uint64_t f)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {
		{ VIRTIO_BLK_F_SIZE_MAX, "SIZE_MAX" }, { VIRTIO_BLK_F_SEG_MAX, "SEG_MAX" }, { VIRTIO_BLK_F_GEOMETRY, "GEOMETRY" },
		{ VIRTIO_BLK_F_RO, "RO" }, { VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE" }, { VIRTIO_BLK_F_FLUSH, "FLUSH" },
		{ VIRTIO_BLK_F_TOPOLOGY, "TOPOLOGY" }, { VIRTIO_BLK_F_CONFIG_WCE, "CONFIG_WCE" }, { VIRTIO_BLK_F_MQ, "MQ" },
		{ VIRTIO_BLK_F_DISCARD, "DISCARD" }, { VIRTIO_BLK_F_WRITE_ZEROES, "WRITE_ZEROES" }, { VIRTIO_BLK_F_LIFETIME, "LIFETIME" },
		{ VIRTIO_BLK_F_SECURE_ERASE, "SECURE_ERASE" }, { VIRTIO_F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY" },
		{ VIRTIO_F_ANY_LAYOUT, "ANY_LAYOUT" }, { VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC" },
		{ VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX" }, { VHOST_USER_F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES" },
		{ VIRTIO_F_VERSION_1, "VERSION_1" }, { VIRTIO_F_ACCESS_PLATFORM, "ACCESS_PLATFORM" },
		{ VIRTIO_F_RING_PACKED, "RING_PACKED" }, { VIRTIO_F_IN_ORDER, "IN_ORDER" },
	};
	bool first = true;
	putchar('[');
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		if ((f >> names[i].bit) & 1) {
			printf("%s\"%s\"", first ? "" : ",", names[i].name);
			first = false;
		}
	}
	putchar(']');
}

static int cmd_info(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	struct vu_conn c;
	if (vu_connect(&c, path, o.timeout_ms) != VU_OK || vu_handshake(&c) != VU_OK)
		die("%s: %s", path, c.err);
	vu_close(&c);
	const struct virtio_blk_config *cfg = &c.cfg;
	printf("{\"features\":\"0x%016" PRIx64 "\",\"features_acked\":\"0x%016" PRIx64 "\",\"feature_names\":", c.features, c.acked_features);
	print_feature_names(c.features);
	printf(",\"protocol_features\":\"0x%" PRIx64 "\",\"protocol_features_acked\":\"0x%" PRIx64 "\",\"queues\":%u,"
	       "\"capacity\":%" PRIu64 ",\"capacity_bytes\":%" PRIu64 ",\"size_max\":%u,\"seg_max\":%u,\"blk_size\":%u,"
	       "\"num_queues\":%u,\"read_only\":%s,\"max_discard_sectors\":%u,\"max_discard_seg\":%u,"
	       "\"max_write_zeroes_sectors\":%u,\"max_write_zeroes_seg\":%u}\n",
	       c.protocol_features, c.acked_protocol, c.max_queues, (uint64_t)cfg->capacity, (uint64_t)cfg->capacity * SECTOR_BYTES,
	       cfg->size_max, cfg->seg_max, cfg->blk_size, cfg->num_queues, ((c.features >> VIRTIO_BLK_F_RO) & 1) ? "true" : "false",
	       cfg->max_discard_sectors, cfg->max_discard_seg, cfg->max_write_zeroes_sectors, cfg->max_write_zeroes_seg);
	return 0;
}

static uint64_t offset_arg(const char *s)
{
	uint64_t off = arg_u64("OFFSET", s, 0, UINT64_MAX - SECTOR_BYTES);
	if (off % SECTOR_BYTES)
		die("OFFSET %" PRIu64 " is not a multiple of 512: virtio-blk addresses sectors", off);
	return off;
}

static int finish_status(const char *what, uint8_t status, uint64_t bytes)
{
	printf("{\"status\":%u,\"bytes\":%" PRIu64 "}\n", status, bytes);
	if (status != VIRTIO_BLK_S_OK) {
		fprintf(stderr, "vub-frontend: %s completed with status %u (%s)\n", what, status, status_name(status));
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* Requests of at most one slot's bytes, one after another, until a status is not OK. */
static int cmd_read(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 6);
	uint64_t off = offset_arg(argv[3]);
	uint64_t len = arg_u64("LENGTH", argv[4], 0, UINT64_MAX);
	const char *outfile = argv[5];
	struct opts o;
	parse_opts(argc, argv, 6, &o);
	int out = open(outfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		die("open %s: %s", outfile, strerror(errno));
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = SLOT_DATA_BYTES };
	dev_open_or_die(&d, path, &o, &l);
	struct slot *s = &d.q[0].slots[0];
	uint8_t *buf = xcalloc(1, SLOT_DATA_BYTES);
	uint8_t status = VIRTIO_BLK_S_OK;
	uint64_t done = 0;
	while (done < len && status == VIRTIO_BLK_S_OK) {
		uint32_t n = len - done < SLOT_DATA_BYTES ? (uint32_t)(len - done) : SLOT_DATA_BYTES;
		struct shape sh = shape_for(&d, n, o.indirect);
		struct sync_result res;
		if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_IN, (off + done) / SECTOR_BYTES, n, &sh, o.timeout_ms, &res) != VU_OK)
			die("%s: read at %" PRIu64 ": %s", path, off + done, d.vu.err);
		status = res.status;
		if (status != VIRTIO_BLK_S_OK)
			break;
		slot_copy_out(s, buf, n);
		for (uint32_t w = 0; w < n;) {
			ssize_t k = write(out, buf + w, n - w);
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				die("write %s: %s", outfile, strerror(errno));
			w += (uint32_t)k;
		}
		done += n;
	}
	if (close(out) < 0)
		die("close %s: %s", outfile, strerror(errno));
	free(buf);
	dev_close_or_die(&d, path);
	return finish_status("read", status, done);
}

static int cmd_write(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 5);
	uint64_t off = offset_arg(argv[3]);
	const char *infile = argv[4];
	struct opts o;
	parse_opts(argc, argv, 5, &o);
	int in = open(infile, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		die("open %s: %s", infile, strerror(errno));
	struct stat st;
	if (fstat(in, &st) < 0)
		die("fstat %s: %s", infile, strerror(errno));
	uint64_t len = (uint64_t)st.st_size;
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = SLOT_DATA_BYTES };
	dev_open_or_die(&d, path, &o, &l);
	struct slot *s = &d.q[0].slots[0];
	uint8_t status = VIRTIO_BLK_S_OK;
	uint64_t done = 0;
	while (done < len && status == VIRTIO_BLK_S_OK) {
		uint32_t n = len - done < SLOT_DATA_BYTES ? (uint32_t)(len - done) : SLOT_DATA_BYTES;
		for (uint32_t r = 0; r < n;) {
			ssize_t k = pread(in, s->data + r, n - r, (off_t)(done + r));
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				die("read %s: %s", infile, k < 0 ? strerror(errno) : "the file shrank");
			r += (uint32_t)k;
		}
		struct shape sh = shape_for(&d, n, o.indirect);
		struct sync_result res;
		if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_OUT, (off + done) / SECTOR_BYTES, n, &sh, o.timeout_ms, &res) != VU_OK)
			die("%s: write at %" PRIu64 ": %s", path, off + done, d.vu.err);
		status = res.status;
		if (status == VIRTIO_BLK_S_OK)
			done += n;
	}
	if (close(in) < 0)
		die("close %s: %s", infile, strerror(errno));
	dev_close_or_die(&d, path);
	return finish_status("write", status, done);
}

static int cmd_flush(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = 4096 };
	dev_open_or_die(&d, path, &o, &l);
	struct shape sh = shape_for(&d, 0, o.indirect);
	struct sync_result res;
	if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_FLUSH, 0, 0, &sh, o.timeout_ms, &res) != VU_OK)
		die("%s: flush: %s", path, d.vu.err);
	dev_close_or_die(&d, path);
	return finish_status("flush", res.status, 0);
}

static int cmd_getid(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = 4096 };
	dev_open_or_die(&d, path, &o, &l);
	struct shape sh = shape_for(&d, VIRTIO_BLK_ID_BYTES, o.indirect);
	struct slot *s = &d.q[0].slots[0];
	memset(s->data, 0, VIRTIO_BLK_ID_BYTES);
	struct sync_result res;
	if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, &sh, o.timeout_ms, &res) != VU_OK)
		die("%s: get id: %s", path, d.vu.err);
	char id[VIRTIO_BLK_ID_BYTES];
	memcpy(id, s->data, sizeof id);
	dev_close_or_die(&d, path);
	printf("{\"status\":%u,\"id\":", res.status);
	json_string(stdout, id, strnlen(id, sizeof id));
	printf(",\"used_len\":%u}\n", res.used_len);
	if (res.status != VIRTIO_BLK_S_OK) {
		fprintf(stderr, "vub-frontend: get id completed with status %u (%s)\n", res.status, status_name(res.status));
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* DISCARD or WRITE_ZEROES of [OFFSET, OFFSET+LENGTH): one segment per request, split at the backend's maximum. */
static int cmd_discard_zeroes(int argc, char **argv, uint32_t type)
{
	const char *path = socket_arg(argc, argv, 5);
	uint64_t off = offset_arg(argv[3]);
	uint64_t len = arg_u64("LENGTH", argv[4], 0, UINT64_MAX);
	if (len % SECTOR_BYTES)
		die("LENGTH %" PRIu64 " is not a multiple of 512", len);
	struct opts o;
	parse_opts(argc, argv, 5, &o);
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = 4096 };
	dev_open_or_die(&d, path, &o, &l);
	uint32_t max = type == VIRTIO_BLK_T_DISCARD ? d.vu.cfg.max_discard_sectors : d.vu.cfg.max_write_zeroes_sectors;
	if (max == 0)
		max = UINT32_MAX;
	struct slot *s = &d.q[0].slots[0];
	uint8_t status = VIRTIO_BLK_S_OK;
	uint64_t sector = off / SECTOR_BYTES, left = len / SECTOR_BYTES;
	uint64_t requests = 0;
	do {
		uint32_t n = left < max ? (uint32_t)left : max;
		struct virtio_blk_discard_write_zeroes seg = {
			.sector = sector, .num_sectors = n,
			.flags = (type == VIRTIO_BLK_T_WRITE_ZEROES && o.unmap) ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0
		};
		memcpy(s->data, &seg, sizeof seg);
		struct shape sh = shape_for(&d, sizeof seg, o.indirect);
		struct sync_result res;
		if (blk_sync(&d, 0, 0, type, 0, sizeof seg, &sh, o.timeout_ms, &res) != VU_OK)
			die("%s: %s at sector %" PRIu64 ": %s", path, type == VIRTIO_BLK_T_DISCARD ? "discard" : "write zeroes", sector, d.vu.err);
		status = res.status;
		requests++;
		sector += n;
		left -= n;
	} while (left > 0 && status == VIRTIO_BLK_S_OK);
	dev_close_or_die(&d, path);
	printf("{\"status\":%u,\"requests\":%" PRIu64 "}\n", status, requests);
	if (status != VIRTIO_BLK_S_OK) {
		fprintf(stderr, "vub-frontend: %s completed with status %u (%s)\n", type == VIRTIO_BLK_T_DISCARD ? "discard" : "write zeroes", status,
			status_name(status));
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* ======================================================================================== */
/* verify                                                                                   */
/* ======================================================================================== */

struct vreq {
	uint64_t off;
	uint32_t len;
};

struct verify_worker {
	struct dev *d;
	unsigned qi;
	const struct vreq *reqs;
	size_t nreq;
	size_t stride;
	int image_fd;
	uint8_t *expect;
	uint64_t requests, bytes, mismatched_sectors, bad_status, short_used;
	uint64_t first_mismatch; /* UINT64_MAX: none */
	uint64_t first_bad_status;
	char err[256];
	bool failed;
};

static void verify_check(struct verify_worker *w, struct slot *s, uint32_t used_len)
{
	uint8_t status = slot_status(s);
	w->requests++;
	if (status != VIRTIO_BLK_S_OK) {
		w->bad_status++;
		if (s->offset < w->first_bad_status)
			w->first_bad_status = s->offset;
		return;
	}
	/* the backend reports the bytes it wrote: the data plus the status byte */
	if (used_len != s->len + 1)
		w->short_used++;
	for (uint32_t r = 0; r < s->len;) {
		ssize_t k = pread(w->image_fd, w->expect + r, s->len - r, (off_t)(s->offset + r));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			snprintf(w->err, sizeof w->err, "reading the image at %" PRIu64 ": %s", s->offset + r, k < 0 ? strerror(errno) : "end of file");
			w->failed = true;
			return;
		}
		r += (uint32_t)k;
	}
	for (uint32_t at = 0; at < s->len; at += SECTOR_BYTES) {
		uint32_t n = s->len - at < SECTOR_BYTES ? s->len - at : SECTOR_BYTES;
		if (memcmp(slot_at(s, at), w->expect + at, n) != 0) {
			w->mismatched_sectors++;
			if (s->offset + at < w->first_mismatch)
				w->first_mismatch = s->offset + at;
		}
	}
	w->bytes += s->len;
}

/*
 * The two halves of a queue worker's round, shared by verify and bench: kick the queue with what
 * was queued, then wait for completions and hand each used slot to `done` before it is freed.
 * Both return false with `err` filled when the queue failed; queue_reap also when `done` does.
 */
typedef bool (*reap_fn)(void *ctx, struct slot *s, uint32_t used_len, uint64_t now);

static bool queue_kick(struct vq *q, char *err, size_t errlen)
{
	if (vq_publish(q, false) == 0)
		return true;
	snprintf(err, errlen, "kick eventfd: %s", strerror(errno));
	return false;
}

static bool queue_reap(struct dev *d, unsigned qi, unsigned *inflight, char *err, size_t errlen, reap_fn done, void *ctx)
{
	struct vq *q = &d->q[qi];
	int r = vq_wait(q, d->o->timeout_ms);
	if (r != 1) {
		snprintf(err, errlen, "queue %u: %s with %u requests in flight", qi,
			 r == 0 ? "no completion within the timeout" : r == 2 ? "the backend signalled the error eventfd" : strerror(errno), *inflight);
		return false;
	}
	uint64_t now = now_ns();
	for (;;) {
		void *cookie;
		uint32_t used_len;
		int g = vq_get_used(q, &cookie, &used_len, err, errlen);
		if (g <= 0)
			return g == 0;
		struct slot *s = cookie;
		s->busy = false;
		(*inflight)--;
		bool ok = done(ctx, s, used_len, now);
		q->free_slots[q->nfree_slots++] = (unsigned)(s - q->slots);
		if (!ok)
			return false;
	}
}

static bool verify_done(void *ctx, struct slot *s, uint32_t used_len, uint64_t now)
{
	(void)now;
	struct verify_worker *w = ctx;
	verify_check(w, s, used_len);
	return !w->failed;
}

static void *verify_thread(void *arg)
{
	struct verify_worker *w = arg;
	struct dev *d = w->d;
	struct vq *q = &d->q[w->qi];
	size_t next = w->qi;
	unsigned inflight = 0;
	while (next < w->nreq || inflight > 0) {
		while (next < w->nreq && q->nfree_slots > 0) {
			const struct vreq *r = &w->reqs[next];
			struct shape sh = shape_for(d, r->len, d->o->indirect);
			if (ring_descs_for(&sh, r->len) > q->num_free)
				break;
			struct slot *s = &q->slots[q->free_slots[--q->nfree_slots]];
			/* a poisoned buffer: a backend that answers OK without writing the data is caught */
			memset(s->data, 0xa5, r->len);
			if (blk_submit(d, q, s, VIRTIO_BLK_T_IN, r->off / SECTOR_BYTES, r->len, &sh) < 0) {
				snprintf(w->err, sizeof w->err, "queue %u: no room in the ring", w->qi);
				w->failed = true;
				return NULL;
			}
			s->tag = next;
			next += w->stride;
			inflight++;
		}
		if (!queue_kick(q, w->err, sizeof w->err) || !queue_reap(d, w->qi, &inflight, w->err, sizeof w->err, verify_done, w)) {
			w->failed = true;
			return NULL;
		}
	}
	return NULL;
}

static int cmd_verify(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 4);
	const char *image = argv[3];
	struct opts o;
	parse_opts(argc, argv, 4, &o);
	unsigned depth = o.qd_given ? o.qd : 4;
	int fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", image, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		die("fstat %s: %s", image, strerror(errno));
	uint64_t image_bytes = (uint64_t)st.st_size;
	struct dev d;
	struct layout l = { .nq = o.queues, .nslots = depth, .slot_data = SLOT_DATA_BYTES };
	dev_open_or_die(&d, path, &o, &l);
	uint64_t total = d.capacity_bytes < image_bytes ? d.capacity_bytes : image_bytes;
	static const uint32_t sizes[3] = { 4096, 65536, 1u << 20 };
	size_t nreq = 0, cap = 1024;
	struct vreq *reqs = xcalloc(cap, sizeof *reqs);
	for (uint64_t off = 0; off < total; nreq++) {
		uint64_t left = total - off;
		uint32_t len = left < sizes[nreq % 3] ? (uint32_t)left : sizes[nreq % 3];
		if (nreq == cap) {
			cap *= 2;
			reqs = realloc(reqs, cap * sizeof *reqs);
			if (!reqs)
				die("out of memory");
		}
		reqs[nreq] = (struct vreq){ off, len };
		off += len;
	}
	struct verify_worker *w = xcalloc(d.nq, sizeof *w);
	pthread_t *th = xcalloc(d.nq, sizeof *th);
	uint64_t t0 = now_ns();
	for (unsigned i = 0; i < d.nq; i++) {
		w[i] = (struct verify_worker){ .d = &d, .qi = i, .reqs = reqs, .nreq = nreq, .stride = d.nq, .image_fd = fd,
					       .expect = xcalloc(1, SLOT_DATA_BYTES), .first_mismatch = UINT64_MAX, .first_bad_status = UINT64_MAX };
		int rc = pthread_create(&th[i], NULL, verify_thread, &w[i]);
		if (rc)
			die("pthread_create: %s", strerror(rc));
	}
	uint64_t bytes = 0, mism = 0, bad = 0, requests = 0, short_used = 0, first_mismatch = UINT64_MAX, first_bad = UINT64_MAX;
	for (unsigned i = 0; i < d.nq; i++) {
		int rc = pthread_join(th[i], NULL);
		if (rc)
			die("pthread_join: %s", strerror(rc));
		if (w[i].failed)
			die("%s: verify: %s", path, w[i].err);
		bytes += w[i].bytes;
		mism += w[i].mismatched_sectors;
		bad += w[i].bad_status;
		requests += w[i].requests;
		short_used += w[i].short_used;
		if (w[i].first_mismatch < first_mismatch)
			first_mismatch = w[i].first_mismatch;
		if (w[i].first_bad_status < first_bad)
			first_bad = w[i].first_bad_status;
		free(w[i].expect);
	}
	double secs = (double)(now_ns() - t0) / 1e9;
	dev_close_or_die(&d, path);
	if (close(fd) < 0)
		die("close %s: %s", image, strerror(errno));
	bool size_differs = d.capacity_bytes != image_bytes;
	printf("{\"bytes\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"bad_status\":%" PRIu64 ",\"wrong_used_len\":%" PRIu64
	       ",\"capacity_bytes\":%" PRIu64 ",\"image_bytes\":%" PRIu64 ",\"queues\":%u,\"depth\":%u,\"indirect\":%s,\"regions\":%u,\"seconds\":%.3f,\"mbps\":%.1f",
	       bytes, mism, requests, bad, short_used, d.capacity_bytes, image_bytes, d.nq, depth, o.indirect ? "true" : "false", o.regions, secs,
	       secs > 0 ? (double)bytes / secs / 1e6 : 0.0);
	if (first_mismatch != UINT64_MAX)
		printf(",\"first_mismatch_offset\":%" PRIu64, first_mismatch);
	if (first_bad != UINT64_MAX)
		printf(",\"first_bad_status_offset\":%" PRIu64, first_bad);
	printf("}\n");
	free(reqs);
	free(w);
	free(th);
	if (mism || bad || size_differs) {
		fprintf(stderr, "vub-frontend: verify failed: %" PRIu64 " mismatched sectors, %" PRIu64 " requests with a bad status%s\n", mism, bad,
			size_differs ? ", and the disk and image sizes differ" : "");
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* ======================================================================================== */
/* bench                                                                                    */
/* ======================================================================================== */

struct bench_worker {
	struct dev *d;
	unsigned qi;
	bool random;
	uint32_t bs;
	unsigned qd;
	uint64_t deadline_ns;
	uint64_t rng;
	uint64_t span_start, span_end, seq_next; /* bytes, bs-aligned */
	uint64_t requests, errors;
	uint64_t start_ns, end_ns;
	uint32_t *lat_ns;
	size_t nlat, cap;
	char err[256];
	bool failed;
};

static uint64_t bench_next_offset(struct bench_worker *w)
{
	uint64_t blocks = (w->span_end - w->span_start) / w->bs;
	if (w->random)
		return w->span_start + (splitmix64(&w->rng) % blocks) * w->bs;
	uint64_t off = w->seq_next;
	w->seq_next += w->bs;
	if (w->seq_next + w->bs > w->span_end)
		w->seq_next = w->span_start;
	return off;
}

static bool bench_done(void *ctx, struct slot *s, uint32_t used_len, uint64_t now)
{
	(void)used_len;
	struct bench_worker *w = ctx;
	w->requests++;
	if (slot_status(s) != VIRTIO_BLK_S_OK)
		w->errors++;
	if (w->nlat == w->cap) {
		w->cap = w->cap ? w->cap * 2 : 65536;
		w->lat_ns = realloc(w->lat_ns, w->cap * sizeof *w->lat_ns);
		if (!w->lat_ns)
			die("out of memory");
	}
	uint64_t lat = now - s->submit_ns;
	w->lat_ns[w->nlat++] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
	return true;
}

static void *bench_thread(void *arg)
{
	struct bench_worker *w = arg;
	struct dev *d = w->d;
	struct vq *q = &d->q[w->qi];
	struct shape sh = shape_for(d, w->bs, d->o->indirect);
	unsigned inflight = 0;
	w->start_ns = now_ns();
	for (;;) {
		bool more = now_ns() < w->deadline_ns;
		while (more && q->nfree_slots > 0 && ring_descs_for(&sh, w->bs) <= q->num_free) {
			struct slot *s = &q->slots[q->free_slots[--q->nfree_slots]];
			if (blk_submit(d, q, s, VIRTIO_BLK_T_IN, bench_next_offset(w) / SECTOR_BYTES, w->bs, &sh) < 0) {
				snprintf(w->err, sizeof w->err, "queue %u: no room in the ring", w->qi);
				w->failed = true;
				return NULL;
			}
			inflight++;
		}
		if (!queue_kick(q, w->err, sizeof w->err)) {
			w->failed = true;
			return NULL;
		}
		if (inflight == 0)
			break;
		if (!queue_reap(d, w->qi, &inflight, w->err, sizeof w->err, bench_done, w)) {
			w->failed = true;
			return NULL;
		}
	}
	w->end_ns = now_ns();
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int cmd_bench(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	if (!o.mode || !o.bs || !o.qd_given)
		die("bench needs --mode, --bs and --qd");
	if (o.bs % SECTOR_BYTES)
		die("--bs must be a multiple of 512");
	struct dev d;
	struct layout l = { .nq = o.queues, .nslots = o.qd, .slot_data = (uint32_t)o.bs };
	dev_open_or_die(&d, path, &o, &l);
	struct shape sh = shape_for(&d, (uint32_t)o.bs, o.indirect);
	if ((uint64_t)o.qd * ring_descs_for(&sh, (uint32_t)o.bs) > o.ring_size)
		die("--qd %u of %u-descriptor requests does not fit a ring of %u; use --indirect or --ring", o.qd, ring_descs_for(&sh, (uint32_t)o.bs), o.ring_size);
	if (d.capacity_bytes < o.bs * d.nq)
		die("the disk (%" PRIu64 " bytes) is smaller than --bs times the queues", d.capacity_bytes);
	struct bench_worker *w = xcalloc(d.nq, sizeof *w);
	pthread_t *th = xcalloc(d.nq, sizeof *th);
	uint64_t deadline = now_ns() + (uint64_t)(o.seconds * 1e9);
	uint64_t blocks = d.capacity_bytes / o.bs;
	bool random = strcmp(o.mode, "randread") == 0;
	for (unsigned i = 0; i < d.nq; i++) {
		/* each queue reads its own part of the disk sequentially; random reads go anywhere */
		uint64_t start = random ? 0 : blocks * i / d.nq * o.bs;
		uint64_t end = random ? blocks * o.bs : blocks * (i + 1) / d.nq * o.bs;
		w[i] = (struct bench_worker){ .d = &d, .qi = i, .random = random, .bs = (uint32_t)o.bs, .qd = o.qd, .deadline_ns = deadline,
					      .rng = o.seed + i * 0x1000193ull, .span_start = start, .span_end = end, .seq_next = start };
		int rc = pthread_create(&th[i], NULL, bench_thread, &w[i]);
		if (rc)
			die("pthread_create: %s", strerror(rc));
	}
	uint64_t requests = 0, errors = 0, first = UINT64_MAX, last = 0;
	size_t nlat = 0;
	for (unsigned i = 0; i < d.nq; i++) {
		int rc = pthread_join(th[i], NULL);
		if (rc)
			die("pthread_join: %s", strerror(rc));
		if (w[i].failed)
			die("%s: bench: %s", path, w[i].err);
		requests += w[i].requests;
		errors += w[i].errors;
		nlat += w[i].nlat;
		if (w[i].start_ns < first)
			first = w[i].start_ns;
		if (w[i].end_ns > last)
			last = w[i].end_ns;
	}
	uint32_t *all = xcalloc(nlat, sizeof *all);
	size_t at = 0;
	for (unsigned i = 0; i < d.nq; i++) {
		memcpy(all + at, w[i].lat_ns, w[i].nlat * sizeof *all);
		at += w[i].nlat;
		free(w[i].lat_ns);
	}
	qsort(all, nlat, sizeof *all, cmp_u32);
	double secs = (double)(last - first) / 1e9;
	double p50 = nlat ? all[(nlat - 1) / 2] / 1e3 : 0, p99 = nlat ? all[(size_t)((double)(nlat - 1) * 0.99)] / 1e3 : 0;
	double p999 = nlat ? all[(size_t)((double)(nlat - 1) * 0.999)] / 1e3 : 0;
	uint64_t kicks = 0, calls = 0;
	for (unsigned i = 0; i < d.nq; i++) {
		kicks += d.q[i].kicks;
		calls += d.q[i].calls;
	}
	dev_close_or_die(&d, path);
	printf("{\"mode\":\"%s\",\"bs\":%" PRIu64 ",\"qd\":%u,\"queues\":%u,\"indirect\":%s,\"seconds\":%.3f,\"requests\":%" PRIu64 ",\"errors\":%" PRIu64
	       ",\"iops\":%.0f,\"mbps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"kicks\":%" PRIu64 ",\"calls\":%" PRIu64 "}\n",
	       o.mode, o.bs, o.qd, d.nq, o.indirect ? "true" : "false", secs, requests, errors, secs > 0 ? (double)requests / secs : 0.0,
	       secs > 0 ? (double)requests * (double)o.bs / secs / 1e6 : 0.0, p50, p99, p999, kicks, calls);
	free(all);
	free(w);
	free(th);
	if (errors) {
		fprintf(stderr, "vub-frontend: bench: %" PRIu64 " requests completed with a status other than OK\n", errors);
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* ======================================================================================== */
/* reconnect                                                                                */
/* ======================================================================================== */

static int cmd_reconnect(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	uint64_t seed = o.seed;
	if (!o.seed_given && getrandom(&seed, sizeof seed, 0) != sizeof seed)
		die("getrandom: %s", strerror(errno));
	uint64_t rng = seed;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = 4096 };
	struct dev d;
	dev_open_or_die(&d, path, &o, &l);
	if (d.capacity_bytes < 4096)
		die("the disk is smaller than 4 KiB");
	uint64_t off = splitmix64(&rng) % (d.capacity_bytes / 4096) * 4096;
	uint8_t data[4096];
	for (unsigned i = 0; i < sizeof data; i += 8) {
		uint64_t v = splitmix64(&rng);
		memcpy(data + i, &v, 8);
	}
	struct slot *s = &d.q[0].slots[0];
	memcpy(s->data, data, sizeof data);
	struct shape sh = shape_for(&d, 4096, o.indirect);
	struct sync_result wr, fl = { .status = STATUS_UNSET }, rd;
	if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_OUT, off / SECTOR_BYTES, 4096, &sh, o.timeout_ms, &wr) != VU_OK)
		die("%s: write: %s", path, d.vu.err);
	bool has_flush = (d.vu.acked_features >> VIRTIO_BLK_F_FLUSH) & 1;
	if (has_flush) {
		struct shape none = shape_for(&d, 0, false);
		if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_FLUSH, 0, 0, &none, o.timeout_ms, &fl) != VU_OK)
			die("%s: flush: %s", path, d.vu.err);
	}
	/* gone without stopping the rings: the way a VMM that dies goes */
	dev_close(&d, false);
	dev_open_or_die(&d, path, &o, &l);
	memset(d.q[0].slots[0].data, 0, 4096);
	if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_IN, off / SECTOR_BYTES, 4096, &sh, o.timeout_ms, &rd) != VU_OK)
		die("%s: read after reconnecting: %s", path, d.vu.err);
	s = &d.q[0].slots[0];
	uint8_t back[4096];
	slot_copy_out(s, back, 4096);
	bool same = memcmp(back, data, sizeof data) == 0;
	dev_close_or_die(&d, path);
	bool survived = wr.status == VIRTIO_BLK_S_OK && (!has_flush || fl.status == VIRTIO_BLK_S_OK) && rd.status == VIRTIO_BLK_S_OK && same;
	printf("{\"survived\":%s,\"offset\":%" PRIu64 ",\"seed\":%" PRIu64 ",\"write_status\":%u,\"flush_status\":", survived ? "true" : "false", off, seed, wr.status);
	if (has_flush)
		printf("%u", fl.status);
	else
		printf("null");
	printf(",\"read_status\":%u,\"data_matches\":%s}\n", rd.status, same ? "true" : "false");
	if (!survived) {
		fprintf(stderr, "vub-frontend: the write at %" PRIu64 " did not survive the reconnect (write %s, flush %s, read %s, data %s)\n", off,
			status_name(wr.status), has_flush ? status_name(fl.status) : "not offered", status_name(rd.status), same ? "same" : "different");
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/* ======================================================================================== */
/* race                                                                                     */
/* ======================================================================================== */

static void fill_pattern(uint8_t *p, uint32_t len, uint64_t seed)
{
	uint64_t st = seed;
	for (uint32_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix64(&st);
		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

/*
 * Two writes to one chunk at once, on two queues: a write of the whole chunk (queue 0) and a 4 KiB
 * write over its last 4 KiB (queue 1), kicked back to back, in alternating order. Only the whole
 * write touches the first chunk - 4 KiB, so they must read back as its data whatever the order; the
 * last 4 KiB may hold either write. A backend that copies a chunk up before a partial write and lets
 * a whole-chunk write run beside it loses the whole write. Each iteration takes the next chunk.
 */
static int cmd_race(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	struct opts o;
	parse_opts(argc, argv, 3, &o);
	uint32_t chunk = (uint32_t)o.chunk_bytes;
	struct dev d;
	struct layout l = { .nq = 2, .nslots = 2, .slot_data = chunk };
	o.queues = 2;
	dev_open_or_die(&d, path, &o, &l);
	uint64_t nchunks = d.capacity_bytes / chunk;
	if (nchunks == 0)
		die("the disk is smaller than one --chunk");
	uint64_t iterations = o.iterations ? o.iterations : nchunks;
	uint8_t *whole = xcalloc(1, chunk), *tail = xcalloc(1, 4096), *back = xcalloc(1, chunk);
	uint64_t lost = 0, lost_bytes = 0, torn_tail = 0, bad_status = 0, first_lost = UINT64_MAX;
	for (uint64_t it = 0; it < iterations; it++) {
		uint64_t base = (it % nchunks) * chunk;
		struct slot *sw = &d.q[0].slots[0], *st = &d.q[1].slots[0];
		fill_pattern(whole, chunk, o.seed ^ (it * 2 + 1));
		fill_pattern(tail, 4096, o.seed ^ (it * 2 + 2));
		memcpy(sw->data, whole, chunk);
		memcpy(st->data, tail, 4096);
		struct shape shw = shape_for(&d, chunk, o.indirect), sht = shape_for(&d, 4096, o.indirect);
		if (blk_submit(&d, &d.q[0], sw, VIRTIO_BLK_T_OUT, base / SECTOR_BYTES, chunk, &shw) < 0 ||
		    blk_submit(&d, &d.q[1], st, VIRTIO_BLK_T_OUT, (base + chunk - 4096) / SECTOR_BYTES, 4096, &sht) < 0)
			die("no room in the rings");
		unsigned first = it % 2;
		if (vq_publish(&d.q[first], true) < 0 || vq_publish(&d.q[1 - first], true) < 0)
			die("kick eventfd: %s", strerror(errno));
		struct sync_result rw, rt, rr;
		if (blk_wait(&d, 0, 0, o.timeout_ms, &rw) != VU_OK || blk_wait(&d, 1, 0, o.timeout_ms, &rt) != VU_OK)
			die("%s: race at %" PRIu64 ": %s", path, base, d.vu.err);
		if (rw.status != VIRTIO_BLK_S_OK || rt.status != VIRTIO_BLK_S_OK) {
			bad_status++;
			continue;
		}
		struct shape shr = shape_for(&d, chunk, false);
		if (blk_sync(&d, 0, 1, VIRTIO_BLK_T_IN, base / SECTOR_BYTES, chunk, &shr, o.timeout_ms, &rr) != VU_OK)
			die("%s: reading back at %" PRIu64 ": %s", path, base, d.vu.err);
		if (rr.status != VIRTIO_BLK_S_OK) {
			bad_status++;
			continue;
		}
		memcpy(back, d.q[0].slots[1].data, chunk);
		uint64_t differing = 0;
		for (uint32_t at = 0; at < chunk - 4096; at += SECTOR_BYTES)
			if (memcmp(back + at, whole + at, SECTOR_BYTES) != 0)
				differing += SECTOR_BYTES;
		if (differing) {
			lost++;
			lost_bytes += differing;
			if (base < first_lost)
				first_lost = base;
		}
		if (memcmp(back + chunk - 4096, tail, 4096) != 0 && memcmp(back + chunk - 4096, whole + chunk - 4096, 4096) != 0)
			torn_tail++;
	}
	dev_close_or_die(&d, path);
	printf("{\"iterations\":%" PRIu64 ",\"chunk\":%u,\"lost_writes\":%" PRIu64 ",\"lost_bytes\":%" PRIu64 ",\"torn_tail\":%" PRIu64
	       ",\"bad_status\":%" PRIu64, iterations, chunk, lost, lost_bytes, torn_tail, bad_status);
	if (first_lost != UINT64_MAX)
		printf(",\"first_lost_offset\":%" PRIu64, first_lost);
	printf("}\n");
	free(whole);
	free(tail);
	free(back);
	if (lost || torn_tail || bad_status) {
		fprintf(stderr, "vub-frontend: race: %" PRIu64 " whole-chunk writes lost bytes outside the overlap, %" PRIu64 " torn tails, %" PRIu64 " bad statuses\n",
			lost, torn_tail, bad_status);
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

/*
 * Replay a recorded read trace ("offset bytes" per line, e.g. a boot's blk_co_preadv events) at
 * queue depth 1, in order, as the guest issued it; prints the reads, bytes and elapsed time.
 */
static int cmd_replay(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 4);
	const char *trace = argv[3];
	struct opts o;
	parse_opts(argc, argv, 4, &o);
	FILE *f = fopen(trace, "r");
	if (!f)
		die("open %s: %s", trace, strerror(errno));
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = SLOT_DATA_BYTES };
	dev_open_or_die(&d, path, &o, &l);
	uint64_t reads = 0, bytes = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	char line[256];
	while (fgets(line, sizeof line, f)) {
		char *end = NULL;
		errno = 0;
		unsigned long long off = strtoull(line, &end, 10);
		if (errno || end == line)
			continue;
		unsigned long long len = strtoull(end, NULL, 10);
		if (off % SECTOR_BYTES || len == 0 || len % SECTOR_BYTES)
			die("%s: bad trace line: %s", trace, line);
		for (uint64_t done = 0; done < len;) {
			uint32_t n = len - done < SLOT_DATA_BYTES ? (uint32_t)(len - done) : SLOT_DATA_BYTES;
			struct shape sh = shape_for(&d, n, o.indirect);
			struct sync_result res;
			if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_IN, (off + done) / SECTOR_BYTES, n, &sh, o.timeout_ms, &res) != VU_OK)
				die("%s: read at %" PRIu64 ": %s", path, (uint64_t)(off + done), d.vu.err);
			if (res.status != VIRTIO_BLK_S_OK)
				die("%s: read at %" PRIu64 " failed with status %u", path, (uint64_t)(off + done), res.status);
			done += n;
		}
		reads++;
		bytes += len;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fclose(f);
	dev_close_or_die(&d, path);
	double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	printf("{\"reads\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"ms\":%.3f}\n", reads, bytes, ms);
	return 0;
}

/* ======================================================================================== */

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage();
		return argc < 2 ? EXIT_ERROR : 0;
	}
	/* a backend that goes away must show up as EPIPE, not kill us */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die("signal(SIGPIPE): %s", strerror(errno));
	const char *cmd = argv[1];
	if (strcmp(cmd, "info") == 0)
		return cmd_info(argc, argv);
	if (strcmp(cmd, "read") == 0)
		return cmd_read(argc, argv);
	if (strcmp(cmd, "write") == 0)
		return cmd_write(argc, argv);
	if (strcmp(cmd, "flush") == 0)
		return cmd_flush(argc, argv);
	if (strcmp(cmd, "getid") == 0)
		return cmd_getid(argc, argv);
	if (strcmp(cmd, "discard") == 0)
		return cmd_discard_zeroes(argc, argv, VIRTIO_BLK_T_DISCARD);
	if (strcmp(cmd, "zeroes") == 0)
		return cmd_discard_zeroes(argc, argv, VIRTIO_BLK_T_WRITE_ZEROES);
	if (strcmp(cmd, "verify") == 0)
		return cmd_verify(argc, argv);
	if (strcmp(cmd, "bench") == 0)
		return cmd_bench(argc, argv);
	if (strcmp(cmd, "malformed") == 0)
		return cmd_malformed(argc, argv);
	if (strcmp(cmd, "reconnect") == 0)
		return cmd_reconnect(argc, argv);
	if (strcmp(cmd, "race") == 0)
		return cmd_race(argc, argv);
	if (strcmp(cmd, "replay") == 0)
		return cmd_replay(argc, argv);
	if (strcmp(cmd, "restart") == 0)
		return cmd_restart(argc, argv);
	usage();
	die("unknown command '%s'", cmd);
}
