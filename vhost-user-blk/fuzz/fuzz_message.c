/*
 * Fuzz the vhost-user message handler: the input is a stream of messages (header, payload) plus a
 * byte per message saying how many descriptors arrive with it (eventfds and memfds). Malformed
 * messages must be refused (the handler asks to close the connection), never crash. Descriptors
 * have one owner: after every message each descriptor the device holds is open and held once, and
 * each one handed over is either held by the device or closed (a leak or a double close traps).
 */
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include "fuzz_common.h"
#include "vub.h"

extern int vub_log_min;

/* The descriptors the device holds now (the queue threads' own chunk files are the disk's). */
static unsigned held_fds(const struct vub_dev *dev, int *out)
{
	unsigned n = 0;
	for (unsigned i = 0; i < VUB_MAX_QUEUES; i++) {
		const struct vub_queue *q = &dev->q[i];
		int fds[6] = { q->kick_fd, q->call_fd, q->err_fd, q->stop_fd, q->ep, q->daemon_fd };
		for (unsigned k = 0; k < 6; k++)
			if (fds[k] >= 0)
				out[n++] = fds[k];
	}
	return n;
}

static void check_ownership(const struct vub_dev *dev, const int *given, const struct stat *given_st, unsigned ngiven)
{
	int held[VUB_MAX_QUEUES * 6];
	unsigned n = held_fds(dev, held);
	for (unsigned i = 0; i < n; i++) {
		if (fcntl(held[i], F_GETFD) < 0)
			__builtin_trap(); /* the device holds a closed descriptor: something closed it twice */
		for (unsigned j = 0; j < i; j++)
			if (held[i] == held[j])
				__builtin_trap(); /* one descriptor held in two places */
	}
	for (unsigned g = 0; g < ngiven; g++) {
		struct stat st;
		if (fstat(given[g], &st) < 0 || st.st_dev != given_st[g].st_dev || st.st_ino != given_st[g].st_ino)
			continue; /* closed (its number may be something else's by now) */
		bool kept = false;
		for (unsigned i = 0; i < n; i++)
			kept |= held[i] == given[g];
		if (!kept)
			__builtin_trap(); /* handed over, neither kept nor closed: leaked */
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vub_dev dev;
	static int pair[2] = { -1, -1 };
	if (pair[0] < 0) {
		vub_log_min = 3;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) < 0)
			abort();
	}
	vub_dev_init(&dev, fuzz_disk(false), 3, NULL);
	dev.sock = pair[0];
	size_t at = 0;
	static uint8_t payload[VUB_PAYLOAD_MAX];
	while (at + 1 + sizeof(struct vhost_user_header) <= size) {
		unsigned nfd_wanted = data[at] % 4;
		at++;
		struct vhost_user_header h;
		memcpy(&h, data + at, sizeof h);
		at += sizeof h;
		h.flags = (h.flags & ~VHOST_USER_VERSION_MASK) | VHOST_USER_VERSION;
		size_t avail = size - at;
		if (h.size > VUB_PAYLOAD_MAX)
			h.size = VUB_PAYLOAD_MAX;
		if (h.size > avail)
			h.size = (uint32_t)avail;
		memcpy(payload, data + at, h.size);
		at += h.size;
		int fds[VUB_MAX_FDS];
		unsigned nfds = 0;
		for (unsigned i = 0; i < nfd_wanted; i++) {
			int fd;
			if (h.request == VHOST_USER_SET_INFLIGHT_FD) {
				/* an in-flight region as GET_INFLIGHT_FD makes them: sealed against shrinking */
				fd = memfd_create("fuzz-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
				if (fd >= 0 && (ftruncate(fd, 1 << 20) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)) {
					close(fd);
					fd = -1;
				}
			} else if (h.request == 5 /* SET_MEM_TABLE */) {
				fd = memfd_create("fuzz-mem", MFD_CLOEXEC);
				if (fd >= 0 && ftruncate(fd, 1 << 20) < 0) {
					close(fd);
					fd = -1;
				}
			} else {
				fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
			}
			if (fd >= 0)
				fds[nfds++] = fd;
		}
		int given[VUB_MAX_FDS];
		struct stat given_st[VUB_MAX_FDS];
		for (unsigned i = 0; i < nfds; i++) {
			given[i] = fds[i];
			if (fstat(fds[i], &given_st[i]) < 0)
				abort();
		}
		int rc = vub_handle_message(&dev, &h, payload, fds, nfds);
		check_ownership(&dev, given, given_st, nfds);
		if (rc < 0)
			vub_dev_reset(&dev);
		/* drain replies so the socket never fills */
		uint8_t sink[4096];
		while (recv(pair[1], sink, sizeof sink, MSG_DONTWAIT) > 0) {
		}
	}
	vub_dev_reset(&dev);
	return 0;
}
