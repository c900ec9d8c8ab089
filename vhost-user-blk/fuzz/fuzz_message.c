/*
 * Fuzz the vhost-user message handler: the input is a stream of messages (header, payload) plus a
 * byte per message saying how many descriptors arrive with it (eventfds and memfds). Malformed
 * messages must be refused (the handler asks to close the connection), never crash.
 */
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>
#include "fuzz_common.h"
#include "vub.h"

extern int vub_log_min;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct vub_dev dev;
	static int pair[2] = { -1, -1 };
	if (pair[0] < 0) {
		vub_log_min = 3;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) < 0)
			abort();
	}
	vub_dev_init(&dev, fuzz_disk(false), 2, NULL);
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
			if (h.request == 5 /* SET_MEM_TABLE */) {
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
		if (vub_handle_message(&dev, &h, payload, fds, nfds) < 0)
			vub_dev_reset(&dev);
		/* drain replies so the socket never fills */
		uint8_t sink[4096];
		while (recv(pair[1], sink, sizeof sink, MSG_DONTWAIT) > 0) {
		}
	}
	vub_dev_reset(&dev);
	return 0;
}
