/*
 * vub-frontend restart: every request completes exactly once across a backend restart.
 *
 * Three 4 KiB reads are queued on queue 0 with one kick: A at SLOW_OFFSET (a chunk the backend
 * cannot get yet: it parks), then B at 0 and C at 4096, which complete first, out of order. Once B
 * and C are back the frontend prints {"phase":"parked"} and waits for a line on stdin; meanwhile
 * the caller kills the backend (SIGKILL) and starts a new one. Then the frontend reconnects the way
 * QEMU does after losing its backend: the same guest memory and rings, SET_INFLIGHT_FD with the
 * region it kept (with --inflight, when offered), and SET_VRING_BASE at the ring's used index, the
 * last thing it knows the backend finished. A must complete with the image's bytes, B and C must
 * not complete again, and a new read D must complete after them.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_RESTART_H
#define VUB_FE_RESTART_H

#include "fe_device.h"

/* Connect again to a backend that lost everything, keeping memory, rings and requests in flight. */
static int dev_reconnect(struct dev *d, const char *path)
{
	vu_close(&d->vu);
	int rc = vu_connect(&d->vu, path, d->o->timeout_ms);
	if (rc != VU_OK)
		return rc;
	d->vu.want_inflight = d->o->inflight;
	if ((rc = vu_handshake(&d->vu)) != VU_OK || (rc = dev_inflight(d)) != VU_OK || (rc = dev_set_mem_table(d)) != VU_OK)
		return rc;
	for (unsigned i = 0; i < d->nq; i++) {
		struct vq *q = &d->q[i];
		uint16_t used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
		if ((rc = vring_state_msg(d, VHOST_USER_SET_VRING_NUM, i, q->num)) != VU_OK)
			return rc;
		struct vhost_vring_addr a = { .index = i, .flags = 0, .desc_user_addr = uva_of(q->desc), .used_user_addr = uva_of(q->used),
						   .avail_user_addr = uva_of(q->avail), .log_guest_addr = 0 };
		if ((rc = vu_msg(&d->vu, VHOST_USER_SET_VRING_ADDR, &a, sizeof a, NULL, 0)) != VU_OK ||
		    (rc = vring_state_msg(d, VHOST_USER_SET_VRING_BASE, i, used)) != VU_OK || (rc = dev_queue_start(d, q)) != VU_OK)
			return rc;
	}
	return VU_OK;
}

static bool image_matches(int fd, uint64_t off, const uint8_t *got, uint32_t len)
{
	uint8_t want[4096];
	if (len > sizeof want || pread(fd, want, len, (off_t)off) != (ssize_t)len)
		die("reading the image at %" PRIu64 ": %s", off, strerror(errno));
	return memcmp(want, got, len) == 0;
}

static int cmd_restart(int argc, char **argv)
{
	const char *path = socket_arg(argc, argv, 5);
	int image = open(argv[3], O_RDONLY | O_CLOEXEC);
	if (image < 0)
		die("open %s: %s", argv[3], strerror(errno));
	uint64_t slow = arg_u64("SLOW_OFFSET", argv[4], 0, UINT64_MAX - 4096);
	if (slow % 4096)
		die("SLOW_OFFSET must be a multiple of 4096");
	struct opts o;
	parse_opts(argc, argv, 5, &o);
	struct dev d;
	struct layout l = { .nq = 1, .nslots = 4, .slot_data = 4096 };
	dev_open_or_die(&d, path, &o, &l);
	bool inflight = d.inflight_fd >= 0;
	struct vq *q = &d.q[0];
	struct shape sh = shape_for(&d, 4096, false);
	const uint64_t offs[4] = { slow, 0, 4096, 8192 };
	for (unsigned i = 0; i < 3; i++)
		if (blk_submit(&d, q, &q->slots[i], VIRTIO_BLK_T_IN, offs[i] / SECTOR_BYTES, 4096, &sh) < 0)
			die("no room in the ring");
	if (vq_publish(q, true) < 0)
		die("kick eventfd: %s", strerror(errno));
	struct sync_result rb, rc;
	if (blk_wait(&d, 0, 1, o.timeout_ms, &rb) != VU_OK || blk_wait(&d, 0, 2, o.timeout_ms, &rc) != VU_OK)
		die("%s: the reads after the parked one: %s", path, d.vu.err);
	if (!q->slots[0].busy)
		die("the read at %" PRIu64 " completed before the restart (status %u): it was meant to wait for a chunk", slow, slot_status(&q->slots[0]));
	printf("{\"phase\":\"parked\",\"inflight\":%s}\n", inflight ? "true" : "false");
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof line, stdin))
		die("stdin closed before the backend was restarted");

	int rc_conn = dev_reconnect(&d, path);
	struct sync_result ra = { .status = STATUS_UNSET }, rd = { .status = STATUS_UNSET };
	char err[300] = "";
	int wa = rc_conn == VU_OK ? blk_wait(&d, 0, 0, o.timeout_ms, &ra) : rc_conn;
	if (wa == VU_OK) {
		/* a fourth read behind it: B or C completing again would show up first, as heads not in flight */
		if (blk_submit(&d, q, &q->slots[3], VIRTIO_BLK_T_IN, offs[3] / SECTOR_BYTES, 4096, &sh) < 0)
			die("no room in the ring");
		if (vq_publish(q, true) < 0)
			die("kick eventfd: %s", strerror(errno));
		wa = blk_wait(&d, 0, 3, o.timeout_ms, &rd);
	}
	if (wa != VU_OK)
		snprintf(err, sizeof err, "%s", d.vu.err);
	bool a_ok = ra.status == VIRTIO_BLK_S_OK && image_matches(image, slow, q->slots[0].data, 4096);
	bool d_ok = rd.status == VIRTIO_BLK_S_OK && image_matches(image, offs[3], q->slots[3].data, 4096);
	bool bc_ok = rb.status == VIRTIO_BLK_S_OK && rc.status == VIRTIO_BLK_S_OK && image_matches(image, 0, q->slots[1].data, 4096) &&
		     image_matches(image, 4096, q->slots[2].data, 4096);
	if (wa == VU_OK)
		dev_close_or_die(&d, path);
	else
		dev_close(&d, false);
	close(image);
	bool ok = wa == VU_OK && a_ok && d_ok && bc_ok;
	printf("{\"phase\":\"done\",\"ok\":%s,\"inflight\":%s,\"parked_status\":", ok ? "true" : "false", inflight ? "true" : "false");
	if (ra.status == STATUS_UNSET)
		printf("null");
	else
		printf("%u", ra.status);
	printf(",\"parked_data_matches\":%s,\"next_read_ok\":%s,\"early_reads_ok\":%s", a_ok ? "true" : "false", d_ok ? "true" : "false",
	       bc_ok ? "true" : "false");
	if (err[0]) {
		printf(",\"error\":");
		json_string(stdout, err, strlen(err));
	}
	printf("}\n");
	if (!ok) {
		fprintf(stderr, "vub-frontend: restart: %s\n", err[0] ? err : "a request completed wrong");
		return EXIT_CHECK_FAILED;
	}
	return 0;
}

#endif
