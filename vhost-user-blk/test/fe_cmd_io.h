/*
 * vub-frontend info, read, write, flush, getid, discard and zeroes: one device, one request at a
 * time, each printing one JSON object.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_CMD_IO_H
#define VUB_FE_CMD_IO_H

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fe_device.h"

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

/* The exit status for a request that completed with `status`, saying so on stderr when not OK. */
static int check_status(const char *what, uint8_t status)
{
	if (status == VIRTIO_BLK_S_OK)
		return 0;
	fprintf(stderr, "vub-frontend: %s completed with status %u (%s)\n", what, status, status_name(status));
	return EXIT_CHECK_FAILED;
}

static int finish_status(const char *what, uint8_t status, uint64_t bytes)
{
	printf("{\"status\":%u,\"bytes\":%" PRIu64 "}\n", status, bytes);
	return check_status(what, status);
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
	uint64_t len;
	int in = open_input(infile, &len);
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

/* For a command of SOCKET and options only: one queue of one slot, for one small request at a time. */
static const char *open_for_one_request(struct dev *d, struct opts *o, int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 3);
	parse_opts(argc, argv, 3, o);
	struct layout l = { .nq = 1, .nslots = 1, .slot_data = 4096 };
	dev_open_or_die(d, path, o, &l);
	return path;
}

static int cmd_flush(int argc, char **argv)
{
	struct opts o;
	struct dev d;
	const char *path = open_for_one_request(&d, &o, argc, argv);
	struct shape sh = shape_for(&d, 0, o.indirect);
	struct sync_result res;
	if (blk_sync(&d, 0, 0, VIRTIO_BLK_T_FLUSH, 0, 0, &sh, o.timeout_ms, &res) != VU_OK)
		die("%s: flush: %s", path, d.vu.err);
	dev_close_or_die(&d, path);
	return finish_status("flush", res.status, 0);
}

static int cmd_getid(int argc, char **argv)
{
	struct opts o;
	struct dev d;
	const char *path = open_for_one_request(&d, &o, argc, argv);
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
	return check_status("get id", res.status);
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
	return check_status(type == VIRTIO_BLK_T_DISCARD ? "discard" : "write zeroes", status);
}

static int cmd_discard(int argc, char **argv)
{
	return cmd_discard_zeroes(argc, argv, VIRTIO_BLK_T_DISCARD);
}

static int cmd_zeroes(int argc, char **argv)
{
	return cmd_discard_zeroes(argc, argv, VIRTIO_BLK_T_WRITE_ZEROES);
}

#endif
