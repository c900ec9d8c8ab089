/*
 * vub-frontend verify and bench: one thread per queue keeping its ring full. verify reads the
 * whole disk and compares it with an image; bench reads for a while and reports IOPS and latency.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_CMD_LOAD_H
#define VUB_FE_CMD_LOAD_H

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fe_device.h"

/* Run fn on each of the n workers (an array of `size`-byte elements), one thread each, until all
 * have returned: one thread per queue. A worker that fails returns why (a string it owns), and
 * once all have returned the command (`what`, on the backend at `path`) dies with the first. */
static void run_workers(unsigned n, void *(*fn)(void *), void *workers, size_t size, const char *path, const char *what)
{
	pthread_t *th = xcalloc(n, sizeof *th);
	for (unsigned i = 0; i < n; i++) {
		int rc = pthread_create(&th[i], NULL, fn, (char *)workers + i * size);
		if (rc)
			die("pthread_create: %s", strerror(rc));
	}
	const char *failed = NULL;
	for (unsigned i = 0; i < n; i++) {
		void *why;
		int rc = pthread_join(th[i], &why);
		if (rc)
			die("pthread_join: %s", strerror(rc));
		if (why && !failed)
			failed = why;
	}
	free(th);
	if (failed)
		die("%s: %s: %s", path, what, failed);
}

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
	bool failed; /* reading the image failed (verify_check; err says why) */
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
				return w->err;
			}
			s->tag = next;
			next += w->stride;
			inflight++;
		}
		if (!queue_kick(q, w->err, sizeof w->err) || !queue_reap(d, w->qi, &inflight, w->err, sizeof w->err, verify_done, w))
			return w->err;
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
	uint64_t image_bytes;
	int fd = open_input(image, &image_bytes);
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
	uint64_t t0 = now_ns();
	for (unsigned i = 0; i < d.nq; i++) {
		w[i] = (struct verify_worker){ .d = &d, .qi = i, .reqs = reqs, .nreq = nreq, .stride = d.nq, .image_fd = fd,
					       .expect = xcalloc(1, SLOT_DATA_BYTES), .first_mismatch = UINT64_MAX, .first_bad_status = UINT64_MAX };
	}
	run_workers(d.nq, verify_thread, w, sizeof *w, path, "verify");
	uint64_t bytes = 0, mism = 0, bad = 0, requests = 0, short_used = 0, first_mismatch = UINT64_MAX, first_bad = UINT64_MAX;
	for (unsigned i = 0; i < d.nq; i++) {
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
				return w->err;
			}
			inflight++;
		}
		if (!queue_kick(q, w->err, sizeof w->err))
			return w->err;
		if (inflight == 0)
			break;
		if (!queue_reap(d, w->qi, &inflight, w->err, sizeof w->err, bench_done, w))
			return w->err;
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
	uint64_t deadline = now_ns() + (uint64_t)(o.seconds * 1e9);
	uint64_t blocks = d.capacity_bytes / o.bs;
	bool random = strcmp(o.mode, "randread") == 0;
	for (unsigned i = 0; i < d.nq; i++) {
		/* each queue reads its own part of the disk sequentially; random reads go anywhere */
		uint64_t start = random ? 0 : blocks * i / d.nq * o.bs;
		uint64_t end = random ? blocks * o.bs : blocks * (i + 1) / d.nq * o.bs;
		w[i] = (struct bench_worker){ .d = &d, .qi = i, .random = random, .bs = (uint32_t)o.bs, .qd = o.qd, .deadline_ns = deadline,
					      .rng = o.seed + i * 0x1000193ull, .span_start = start, .span_end = end, .seq_next = start };
	}
	run_workers(d.nq, bench_thread, w, sizeof *w, path, "bench");
	uint64_t requests = 0, errors = 0, first = UINT64_MAX, last = 0;
	size_t nlat = 0;
	for (unsigned i = 0; i < d.nq; i++) {
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
	if (errors) {
		fprintf(stderr, "vub-frontend: bench: %" PRIu64 " requests completed with a status other than OK\n", errors);
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

#endif
