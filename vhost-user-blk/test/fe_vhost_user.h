/*
 * vub-frontend: the vhost-user connection: messages (with the descriptors they carry), REPLY_ACK,
 * and the handshake up to SET_FEATURES.
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_VHOST_USER_H
#define VUB_FE_VHOST_USER_H

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "fe_util.h"

/* ======================================================================================== */
/* the vhost-user connection                                                                */
/* ======================================================================================== */

enum vu_rc {
	VU_OK = 0,
	VU_FAIL = -1,    /* a protocol error, or a failed syscall */
	VU_CLOSED = -2,  /* the backend closed the connection */
	VU_TIMEOUT = -3, /* no answer in time */
	VU_NACK = -4,    /* REPLY_ACK answered non-zero */
};

#define WANTED_PROTOCOL_FEATURES                                                                     \
	((1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ull << VHOST_USER_PROTOCOL_F_MQ) |                \
	 (1ull << VHOST_USER_PROTOCOL_F_CONFIG))
#define WANTED_FEATURES                                                                              \
	((1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) | \
	 (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) | \
	 (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH) |   \
	 (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_MQ) | (1ull << VIRTIO_BLK_F_DISCARD) |   \
	 (1ull << VIRTIO_BLK_F_WRITE_ZEROES))

struct vu_conn {
	int sock;
	bool want_inflight; /* ask for VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD too (set after vu_connect) */
	int timeout_ms;
	uint64_t features; /* offered by the backend */
	uint64_t acked_features;
	uint64_t protocol_features; /* offered */
	uint64_t acked_protocol;
	unsigned max_queues;
	struct virtio_blk_config cfg;
	char err[256];
};

static const char *request_name(uint32_t request)
{
	switch (request) {
	case VHOST_USER_GET_INFLIGHT_FD: return "GET_INFLIGHT_FD";
	case VHOST_USER_SET_INFLIGHT_FD: return "SET_INFLIGHT_FD";
	case VHOST_USER_GET_FEATURES: return "GET_FEATURES";
	case VHOST_USER_SET_FEATURES: return "SET_FEATURES";
	case VHOST_USER_SET_OWNER: return "SET_OWNER";
	case VHOST_USER_RESET_OWNER: return "RESET_OWNER";
	case VHOST_USER_SET_MEM_TABLE: return "SET_MEM_TABLE";
	case VHOST_USER_SET_VRING_NUM: return "SET_VRING_NUM";
	case VHOST_USER_SET_VRING_ADDR: return "SET_VRING_ADDR";
	case VHOST_USER_SET_VRING_BASE: return "SET_VRING_BASE";
	case VHOST_USER_GET_VRING_BASE: return "GET_VRING_BASE";
	case VHOST_USER_SET_VRING_KICK: return "SET_VRING_KICK";
	case VHOST_USER_SET_VRING_CALL: return "SET_VRING_CALL";
	case VHOST_USER_SET_VRING_ERR: return "SET_VRING_ERR";
	case VHOST_USER_GET_PROTOCOL_FEATURES: return "GET_PROTOCOL_FEATURES";
	case VHOST_USER_SET_PROTOCOL_FEATURES: return "SET_PROTOCOL_FEATURES";
	case VHOST_USER_GET_QUEUE_NUM: return "GET_QUEUE_NUM";
	case VHOST_USER_SET_VRING_ENABLE: return "SET_VRING_ENABLE";
	case VHOST_USER_GET_CONFIG: return "GET_CONFIG";
	case VHOST_USER_SET_CONFIG: return "SET_CONFIG";
	default: return "(unknown)";
	}
}

static int vu_fail(struct vu_conn *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int vu_fail(struct vu_conn *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof c->err, fmt, ap);
	va_end(ap);
	return rc;
}

static int vu_connect(struct vu_conn *c, const char *path, int timeout_ms)
{
	memset(c, 0, sizeof *c);
	c->sock = -1;
	c->timeout_ms = timeout_ms;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	if (len >= sizeof addr.sun_path)
		return vu_fail(c, VU_FAIL, "socket path %s is too long", path);
	memcpy(addr.sun_path, path, len + 1);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return vu_fail(c, VU_FAIL, "socket: %s", strerror(errno));
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
			/* a backend that stops reading must not hang a send forever */
			struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
			if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
				int e = errno;
				close(fd);
				return vu_fail(c, VU_FAIL, "setsockopt(SO_SNDTIMEO): %s", strerror(e));
			}
			c->sock = fd;
			return VU_OK;
		}
		int e = errno;
		close(fd);
		/* a backend that is starting, or still tearing down the last connection, refuses for a moment */
		bool transient = e == ECONNREFUSED || e == ENOENT || e == EAGAIN || e == EINTR;
		if (!transient || now_ns() >= deadline)
			return vu_fail(c, VU_CLOSED, "connect to %s: %s", path, strerror(e));
		sleep_ms(20);
	}
}

static void vu_close(struct vu_conn *c)
{
	if (c->sock >= 0 && close(c->sock) < 0)
		die("close of the vhost-user socket: %s", strerror(errno));
	c->sock = -1;
}

/* Send one message as given (header, payload, descriptors): the malformed cases need headers that lie. */
static int vu_send_raw(struct vu_conn *c, const struct vhost_user_header *h, const void *payload, size_t len, const int *fds, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS)];
		struct cmsghdr align;
	} control;
	struct iovec iov[2] = { { (void *)h, sizeof *h }, { (void *)payload, len } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	if (nfds > VHOST_USER_MAX_FDS)
		return vu_fail(c, VU_FAIL, "internal error: %u descriptors in one message", nfds);
	if (nfds) {
		memset(&control, 0, sizeof control);
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	size_t left = sizeof *h + len;
	while (left > 0) {
		ssize_t n = sendmsg(c->sock, &msg, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				return vu_fail(c, VU_CLOSED, "sending %s: the backend closed the connection (%s)", request_name(h->request), strerror(errno));
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return vu_fail(c, VU_TIMEOUT, "sending %s: the backend stopped reading", request_name(h->request));
			return vu_fail(c, VU_FAIL, "sendmsg(%s): %s", request_name(h->request), strerror(errno));
		}
		left -= (size_t)n;
		/* the descriptors went with the first byte; step past what was sent */
		msg.msg_control = NULL;
		msg.msg_controllen = 0;
		size_t done = (size_t)n;
		while (done > 0 && msg.msg_iovlen > 0) {
			if (done >= msg.msg_iov->iov_len) {
				done -= msg.msg_iov->iov_len;
				msg.msg_iov++;
				msg.msg_iovlen--;
			} else {
				msg.msg_iov->iov_base = (char *)msg.msg_iov->iov_base + done;
				msg.msg_iov->iov_len -= done;
				done = 0;
			}
		}
	}
	return VU_OK;
}

static int vu_recv_exact(struct vu_conn *c, void *buf, size_t len, uint64_t deadline, const char *what)
{
	size_t got = 0;
	while (got < len) {
		struct pollfd p = { .fd = c->sock, .events = POLLIN };
		int r = poll(&p, 1, ms_until(deadline));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return vu_fail(c, VU_FAIL, "poll: %s", strerror(errno));
		}
		if (r == 0)
			return vu_fail(c, VU_TIMEOUT, "no reply to %s within %d ms", what, c->timeout_ms);
		ssize_t n = recv(c->sock, (char *)buf + got, len - got, MSG_DONTWAIT);
		if (n == 0)
			return vu_fail(c, VU_CLOSED, "waiting for the reply to %s: the backend closed the connection", what);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			if (errno == ECONNRESET)
				return vu_fail(c, VU_CLOSED, "waiting for the reply to %s: connection reset", what);
			return vu_fail(c, VU_FAIL, "recv: %s", strerror(errno));
		}
		got += (size_t)n;
	}
	return VU_OK;
}

/* Receive the reply to `request`: header checked, payload at most `max` bytes. */
static int vu_recv_reply(struct vu_conn *c, uint32_t request, void *payload, size_t max, uint32_t *size, int timeout_ms)
{
	struct vhost_user_header h;
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	const char *what = request_name(request);
	int rc = vu_recv_exact(c, &h, sizeof h, deadline, what);
	if (rc != VU_OK)
		return rc;
	if ((h.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION || !(h.flags & VHOST_USER_REPLY_MASK) || h.request != request)
		return vu_fail(c, VU_FAIL, "reply to %s (%u): got request %u with flags 0x%x", what, request, h.request, h.flags);
	if (h.size > max)
		return vu_fail(c, VU_FAIL, "reply to %s carries %u bytes of payload, more than the %zu expected", what, h.size, max);
	rc = vu_recv_exact(c, payload, h.size, deadline, what);
	if (rc != VU_OK)
		return rc;
	*size = h.size;
	return VU_OK;
}

static bool vu_reply_ack(const struct vu_conn *c)
{
	return (c->acked_protocol >> VHOST_USER_PROTOCOL_F_REPLY_ACK) & 1;
}

/* A message without a reply of its own; with REPLY_ACK it asks for one and checks it, as QEMU does. */
static int vu_msg(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size, const int *fds, unsigned nfds)
{
	bool ack = vu_reply_ack(c);
	struct vhost_user_header h = { .request = request, .flags = VHOST_USER_VERSION | (ack ? VHOST_USER_NEED_REPLY_MASK : 0), .size = size };
	int rc = vu_send_raw(c, &h, payload, size, fds, nfds);
	if (rc != VU_OK || !ack)
		return rc;
	uint64_t v = 0;
	uint32_t got = 0;
	rc = vu_recv_reply(c, request, &v, sizeof v, &got, c->timeout_ms);
	if (rc != VU_OK)
		return rc;
	if (got != sizeof v)
		return vu_fail(c, VU_FAIL, "the REPLY_ACK to %s has %u bytes, not 8", request_name(request), got);
	if (v != 0)
		return vu_fail(c, VU_NACK, "the backend refused %s (REPLY_ACK %" PRIu64 ")", request_name(request), v);
	return VU_OK;
}

/* A message with a reply of exactly reply_size bytes. */
static int vu_get(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size, void *reply, uint32_t reply_size)
{
	struct vhost_user_header h = { .request = request, .flags = VHOST_USER_VERSION, .size = size };
	int rc = vu_send_raw(c, &h, payload, size, NULL, 0);
	if (rc != VU_OK)
		return rc;
	uint32_t got = 0;
	rc = vu_recv_reply(c, request, reply, reply_size, &got, c->timeout_ms);
	if (rc != VU_OK)
		return rc;
	if (got != reply_size)
		return vu_fail(c, VU_FAIL, "the reply to %s has %u bytes, expected %u", request_name(request), got, reply_size);
	return VU_OK;
}

/* A message whose reply carries one descriptor (GET_INFLIGHT_FD): the reply of exactly reply_size bytes and *fd. */
static int vu_get_fd(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size, void *reply, uint32_t reply_size, int *fd)
{
	struct vhost_user_header h = { .request = request, .flags = VHOST_USER_VERSION, .size = size };
	int rc = vu_send_raw(c, &h, payload, size, NULL, 0);
	if (rc != VU_OK)
		return rc;
	/* the descriptor comes with the first byte of the reply */
	struct pollfd p = { .fd = c->sock, .events = POLLIN };
	int r;
	do {
		r = poll(&p, 1, c->timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r <= 0)
		return vu_fail(c, r == 0 ? VU_TIMEOUT : VU_FAIL, "no reply to %s within %d ms", request_name(request), c->timeout_ms);
	struct vhost_user_header rh;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { &rh, sizeof rh };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf };
	ssize_t n = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	if (n == 0)
		return vu_fail(c, VU_CLOSED, "waiting for the reply to %s: the backend closed the connection", request_name(request));
	if (n != (ssize_t)sizeof rh)
		return vu_fail(c, VU_FAIL, "the reply to %s: a short header", request_name(request));
	*fd = -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	if (*fd < 0 || rh.request != request || !(rh.flags & VHOST_USER_REPLY_MASK) || rh.size != reply_size)
		return vu_fail(c, VU_FAIL, "the reply to %s: request %u, %u bytes, %s", request_name(request), rh.request, rh.size,
			       *fd < 0 ? "no descriptor" : "one descriptor");
	return vu_recv_exact(c, reply, reply_size, now_ns() + (uint64_t)c->timeout_ms * 1000000ull, request_name(request));
}

static int vu_get_u64(struct vu_conn *c, uint32_t request, uint64_t *out)
{
	return vu_get(c, request, NULL, 0, out, sizeof *out);
}

/* Features, protocol features, owner, queue count, config space, then the features acked. */
static int vu_handshake(struct vu_conn *c)
{
	int rc = vu_get_u64(c, VHOST_USER_GET_FEATURES, &c->features);
	if (rc != VU_OK)
		return rc;
	if ((c->features >> VHOST_USER_F_PROTOCOL_FEATURES) & 1) {
		rc = vu_get_u64(c, VHOST_USER_GET_PROTOCOL_FEATURES, &c->protocol_features);
		if (rc != VU_OK)
			return rc;
		uint64_t want = c->protocol_features & (WANTED_PROTOCOL_FEATURES | (c->want_inflight ? 1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD : 0));
		/* sent before REPLY_ACK is in force: no ack asked */
		rc = vu_msg(c, VHOST_USER_SET_PROTOCOL_FEATURES, &want, sizeof want, NULL, 0);
		if (rc != VU_OK)
			return rc;
		c->acked_protocol = want;
	}
	rc = vu_msg(c, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0);
	if (rc != VU_OK)
		return rc;
	c->max_queues = 1;
	if ((c->acked_protocol >> VHOST_USER_PROTOCOL_F_MQ) & 1) {
		uint64_t n = 0;
		rc = vu_get_u64(c, VHOST_USER_GET_QUEUE_NUM, &n);
		if (rc != VU_OK)
			return rc;
		if (n == 0 || n > 0xffff)
			return vu_fail(c, VU_FAIL, "GET_QUEUE_NUM answered %" PRIu64, n);
		c->max_queues = (unsigned)n;
	}
	if (!((c->acked_protocol >> VHOST_USER_PROTOCOL_F_CONFIG) & 1))
		return vu_fail(c, VU_FAIL, "the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG; the virtio-blk config space is needed");
	struct vhost_user_config req;
	memset(&req, 0, sizeof req);
	req.offset = 0;
	req.size = sizeof(struct virtio_blk_config);
	struct vhost_user_config reply;
	uint32_t reply_size = (uint32_t)(VHOST_USER_CONFIG_HDR_SIZE + sizeof(struct virtio_blk_config));
	rc = vu_get(c, VHOST_USER_GET_CONFIG, &req, reply_size, &reply, reply_size);
	if (rc != VU_OK)
		return rc;
	if (reply.offset != 0 || reply.size != sizeof(struct virtio_blk_config))
		return vu_fail(c, VU_FAIL, "GET_CONFIG answered offset %u size %u", reply.offset, reply.size);
	memcpy(&c->cfg, reply.region, sizeof c->cfg);
	c->acked_features = c->features & WANTED_FEATURES;
	return vu_msg(c, VHOST_USER_SET_FEATURES, &c->acked_features, sizeof c->acked_features, NULL, 0);
}

#endif
