/*
 * vub-frontend reconnect, race and replay: a write that must survive the VMM going away, two
 * writes to one chunk at once on two queues, and a recorded read trace played back.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_CMD_CHECKS_H
#define VUB_FE_CMD_CHECKS_H

#include <sys/random.h>
#include <time.h>
#include "fe_device.h"

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

#endif
