/*
 * The vhost-user protocol: reading messages and one handler per message type. Queue threads are in
 * vub_queue.c, the miss client in vub_miss.c, the log in vub_log.c.
 */
#include "vub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "blk.h"
#include "vub_queue.h"

static void close_fds(int *fds, unsigned nfds)
{
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

uint64_t vub_offered_features(const struct vub_dev *dev)
{
	uint64_t f = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
		     (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
		     (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_MQ) | (1ull << VUB_F_LOG_ALL);
	if (dev->disk->read_only)
		f |= 1ull << VIRTIO_BLK_F_RO;
	else
		f |= (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
	return f;
}

uint64_t vub_offered_protocol_features(void)
{
	return (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |
	       (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) | (1ull << VHOST_USER_PROTOCOL_F_LOG_SHMFD);
}

void vub_dev_init(struct vub_dev *dev, struct vub_disk *disk, unsigned nqueues, const char *daemon_socket)
{
	memset(dev, 0, sizeof *dev);
	dev->sock = -1;
	dev->disk = disk;
	dev->nqueues = nqueues;
	dev->daemon_socket = daemon_socket;
	vub_dirty_init(&dev->dirty);
	for (unsigned i = 0; i < VUB_MAX_QUEUES; i++) {
		struct vub_queue *q = &dev->q[i];
		q->dev = dev;
		q->index = i;
		q->kick_fd = q->call_fd = q->err_fd = q->stop_fd = q->ep = q->daemon_fd = -1;
	}
}

static void replace_fd(int *slot, int fd)
{
	if (*slot >= 0)
		close(*slot);
	*slot = fd;
}

static void unmap_memory(struct vub_mem *m)
{
	for (unsigned i = 0; i < m->n; i++)
		if (m->r[i].mmap_base)
			munmap(m->r[i].mmap_base, m->r[i].mmap_len);
	memset(m, 0, sizeof *m);
}

void vub_dev_reset(struct vub_dev *dev)
{
	for (unsigned i = 0; i < VUB_MAX_QUEUES; i++) {
		struct vub_queue *q = &dev->q[i];
		vub_queue_stop(q);
		replace_fd(&q->kick_fd, -1);
		replace_fd(&q->call_fd, -1);
		replace_fd(&q->err_fd, -1);
		memset(&q->ring, 0, sizeof q->ring);
		q->num = 0;
		q->addr_set = q->enabled = false;
	}
	unmap_memory(&dev->mem);
	vub_inflight_unmap(dev);
	vub_dirty_clear(&dev->dirty);
	dev->features = dev->protocol_features = 0;
	dev->features_set = dev->owner = false;
	vub_disk_flush(dev->disk);
}

/* ---------------- messages ---------------- */

int vub_read_message(int sock, struct vhost_user_header *hdr, uint8_t *payload, int *fds, unsigned *nfds)
{
	char control[CMSG_SPACE(sizeof(int) * VUB_MAX_FDS)];
	struct iovec iov = { .iov_base = hdr, .iov_len = sizeof *hdr };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
	*nfds = 0;
	ssize_t n;
	do {
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	} while (n < 0 && errno == EINTR);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *got = (int *)(void *)CMSG_DATA(cm);
		for (size_t i = 0; i < count; i++) {
			if (*nfds < VUB_MAX_FDS)
				fds[(*nfds)++] = got[i];
			else
				close(got[i]);
		}
	}
	if (n == 0)
		goto eof;
	if (n < 0 || (size_t)n != sizeof *hdr || (msg.msg_flags & MSG_CTRUNC)) {
		vub_log("warn", "short or truncated vhost-user message header (%zd bytes)", n);
		goto bad;
	}
	if ((hdr->flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION || hdr->size > VUB_PAYLOAD_MAX) {
		vub_log("warn", "vhost-user message %u: bad version or payload size %u", hdr->request, hdr->size);
		goto bad;
	}
	for (size_t got = 0; got < hdr->size;) {
		ssize_t m = recv(sock, payload + got, hdr->size - got, 0);
		if (m < 0 && errno == EINTR)
			continue;
		if (m <= 0) {
			vub_log("warn", "vhost-user message %u: payload cut short", hdr->request);
			goto bad;
		}
		got += (size_t)m;
	}
	return 1;
eof:
	close_fds(fds, *nfds);
	*nfds = 0;
	return 0;
bad:
	close_fds(fds, *nfds);
	*nfds = 0;
	return -1;
}

static int send_reply(struct vub_dev *dev, const struct vhost_user_header *req, const void *payload, uint32_t size)
{
	struct vhost_user_header h = { .request = req->request, .flags = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, .size = size };
	struct iovec iov[2] = { { &h, sizeof h }, { (void *)payload, size } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };
	ssize_t n;
	do {
		n = sendmsg(dev->sock, &msg, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n != (ssize_t)(sizeof h + size)) {
		vub_log("warn", "replying to message %u: %s", req->request, n < 0 ? strerror(errno) : "short write");
		return -1;
	}
	return 0;
}

static int reply_u64(struct vub_dev *dev, const struct vhost_user_header *req, uint64_t v)
{
	return send_reply(dev, req, &v, sizeof v);
}

/* payload size exactly as the request needs, or the message is malformed */
static bool payload_is(const struct vhost_user_header *h, size_t want)
{
	if (h->size != want) {
		vub_log("warn", "vhost-user message %u: payload of %u bytes, expected %zu", h->request, h->size, want);
		return false;
	}
	return true;
}

static bool fd_count_is(const struct vhost_user_header *h, unsigned nfds, unsigned want)
{
	if (nfds != want) {
		vub_log("warn", "vhost-user message %u: %u file descriptors, expected %u", h->request, nfds, want);
		return false;
	}
	return true;
}

/* A payload of exactly `len` bytes and no file descriptor, copied to `out`. */
static bool payload_take(const struct vhost_user_header *h, const uint8_t *payload, unsigned nfds, void *out, size_t len)
{
	if (!payload_is(h, len) || !fd_count_is(h, nfds, 0))
		return false;
	memcpy(out, payload, len);
	return true;
}

static struct vub_queue *queue_at(struct vub_dev *dev, uint32_t index, const struct vhost_user_header *h)
{
	if (index >= dev->nqueues) {
		vub_log("warn", "vhost-user message %u: queue %u of %u", h->request, index, dev->nqueues);
		return NULL;
	}
	return &dev->q[index];
}

/*
 * Map the new table, then swap it in with the queues stopped. The region descriptors are this
 * function's alone: it closes them on every path, once, when it is done (a second close would hit
 * whatever the backend opened next under the same number, such as a restarted queue's stop eventfd).
 */
static int set_mem_table(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, const int *fds, unsigned nfds);

static int handle_set_mem_table(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, int *fds, unsigned nfds)
{
	int rc = set_mem_table(dev, h, payload, fds, nfds);
	close_fds(fds, nfds);
	return rc;
}

static int set_mem_table(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, const int *fds, unsigned nfds)
{
	struct vhost_memory mem;
	if (h->size < 8)
		return -1;
	memcpy(&mem, payload, 8);
	if (mem.nregions == 0 || mem.nregions > VUB_MAX_REGIONS || h->size != 8 + mem.nregions * sizeof(struct vhost_memory_region) || nfds != mem.nregions) {
		vub_log("warn", "SET_MEM_TABLE: %u regions with %u descriptors in %u bytes", mem.nregions, nfds, h->size);
		return -1;
	}
	memcpy(mem.regions, payload + 8, mem.nregions * sizeof(struct vhost_memory_region));
	struct vub_mem next = { 0 };
	for (unsigned i = 0; i < mem.nregions; i++) {
		const struct vhost_memory_region *r = &mem.regions[i];
		uint64_t end;
		if (r->memory_size == 0 || __builtin_add_overflow(r->mmap_offset, r->memory_size, &end) || end > SIZE_MAX ||
		    r->guest_phys_addr + r->memory_size < r->guest_phys_addr || r->userspace_addr + r->memory_size < r->userspace_addr) {
			vub_log("warn", "SET_MEM_TABLE: region %u has an impossible size or offset", i);
			unmap_memory(&next);
			return -1;
		}
		for (unsigned j = 0; j < i; j++) {
			const struct vhost_memory_region *o = &mem.regions[j];
			if (r->guest_phys_addr < o->guest_phys_addr + o->memory_size && o->guest_phys_addr < r->guest_phys_addr + r->memory_size) {
				vub_log("warn", "SET_MEM_TABLE: regions %u and %u overlap", j, i);
				unmap_memory(&next);
				return -1;
			}
		}
		/* a file shorter than the region would turn guest accesses into SIGBUS */
		struct stat sb;
		if (fstat(fds[i], &sb) < 0 || (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size < end)) {
			vub_log("warn", "SET_MEM_TABLE: region %u needs %llu bytes of its file, which is shorter", i, (unsigned long long)end);
			unmap_memory(&next);
			return -1;
		}
		void *base = mmap(NULL, (size_t)end, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fds[i], 0);
		if (base == MAP_FAILED) {
			vub_log("warn", "SET_MEM_TABLE: mmap of region %u (%llu bytes): %s", i, (unsigned long long)end, strerror(errno));
			unmap_memory(&next);
			return -1;
		}
		next.r[i] = (struct vub_region){ .gpa = r->guest_phys_addr, .size = r->memory_size, .uva = r->userspace_addr,
						 .host = (uint8_t *)base + r->mmap_offset, .mmap_base = base, .mmap_len = (size_t)end };
		next.n = i + 1;
	}
	/* queue threads translate through the table: stop them while it changes */
	bool was[VUB_MAX_QUEUES];
	for (unsigned i = 0; i < dev->nqueues; i++) {
		was[i] = dev->q[i].started;
		vub_queue_stop(&dev->q[i]);
	}
	unmap_memory(&dev->mem);
	dev->mem = next;
	for (unsigned i = 0; i < dev->nqueues; i++)
		if (was[i] && vub_queue_start(dev, &dev->q[i]) < 0)
			return -1;
	return 0;
}

static int handle_get_config(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload)
{
	struct vhost_user_config req;
	if (h->size < 12 || h->size > sizeof req)
		return -1;
	memset(&req, 0, sizeof req);
	memcpy(&req, payload, h->size);
	if (req.size > VUB_CONFIG_SPACE || req.offset > VUB_CONFIG_SPACE - req.size || h->size != 12 + req.size) {
		vub_log("warn", "GET_CONFIG: offset %u size %u out of range", req.offset, req.size);
		return -1;
	}
	uint8_t space[VUB_CONFIG_SPACE] = { 0 };
	struct virtio_blk_config cfg;
	vub_blk_config(dev->disk, dev->nqueues, &cfg);
	memcpy(space, &cfg, sizeof cfg);
	memcpy(req.region, space + req.offset, req.size);
	return send_reply(dev, h, &req, 12 + req.size);
}

int vub_handle_message(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, int *fds, unsigned nfds)
{
	int rc = 0;
	bool replied = false;
	uint64_t u64 = 0;
	struct vhost_vring_state state;
	struct vhost_vring_addr addr;
	struct vub_queue *q;

	switch (h->request) {
	case VHOST_USER_GET_FEATURES:
		if (!fd_count_is(h, nfds, 0))
			goto malformed;
		rc = reply_u64(dev, h, vub_offered_features(dev));
		replied = true;
		break;
	case VHOST_USER_SET_FEATURES:
		if (!payload_take(h, payload, nfds, &u64, sizeof u64))
			goto malformed;
		if (u64 & ~vub_offered_features(dev)) {
			vub_log("warn", "SET_FEATURES: 0x%llx asks for features not offered", (unsigned long long)u64);
			goto malformed;
		}
		dev->features = u64;
		dev->features_set = true;
		break;
	case VHOST_USER_GET_PROTOCOL_FEATURES:
		if (!fd_count_is(h, nfds, 0))
			goto malformed;
		rc = reply_u64(dev, h, vub_offered_protocol_features());
		replied = true;
		break;
	case VHOST_USER_SET_PROTOCOL_FEATURES:
		if (!payload_take(h, payload, nfds, &u64, sizeof u64))
			goto malformed;
		if (u64 & ~vub_offered_protocol_features())
			goto malformed;
		dev->protocol_features = u64;
		break;
	case VHOST_USER_SET_OWNER:
		if (!fd_count_is(h, nfds, 0))
			goto malformed;
		dev->owner = true;
		break;
	case VHOST_USER_RESET_OWNER:
		if (!fd_count_is(h, nfds, 0))
			goto malformed;
		vub_dev_reset(dev);
		break;
	case VHOST_USER_GET_QUEUE_NUM:
		if (!fd_count_is(h, nfds, 0))
			goto malformed;
		rc = reply_u64(dev, h, dev->nqueues);
		replied = true;
		break;
	case VHOST_USER_SET_MEM_TABLE: {
		int r = handle_set_mem_table(dev, h, payload, fds, nfds);
		nfds = 0; /* closed there, whatever the outcome */
		if (r < 0)
			goto malformed;
		break;
	}
	case VHOST_USER_SET_VRING_NUM:
		if (!payload_take(h, payload, nfds, &state, sizeof state))
			goto malformed;
		if (!(q = queue_at(dev, state.index, h)) || q->started || state.num == 0 || state.num > VUB_MAX_RING || (state.num & (state.num - 1))) {
			vub_log("warn", "SET_VRING_NUM: size %u for queue %u refused", state.num, state.index);
			goto malformed;
		}
		q->num = state.num;
		break;
	case VHOST_USER_SET_VRING_ADDR:
		if (!payload_take(h, payload, nfds, &addr, sizeof addr))
			goto malformed;
		if (!(q = queue_at(dev, addr.index, h)) || q->started)
			goto malformed;
		q->desc_uva = addr.desc_user_addr;
		q->avail_uva = addr.avail_user_addr;
		q->used_uva = addr.used_user_addr;
		q->addr_set = true;
		break;
	case VHOST_USER_SET_VRING_BASE:
		if (!payload_take(h, payload, nfds, &state, sizeof state))
			goto malformed;
		if (!(q = queue_at(dev, state.index, h)) || q->started || state.num > 0xffff)
			goto malformed;
		q->ring.last_avail = (uint16_t)state.num;
		break;
	case VHOST_USER_GET_VRING_BASE:
		if (!payload_take(h, payload, nfds, &state, sizeof state))
			goto malformed;
		if (!(q = queue_at(dev, state.index, h)))
			goto malformed;
		vub_queue_stop(q);
		q->enabled = false;
		replace_fd(&q->kick_fd, -1);
		state.num = q->ring.last_avail;
		rc = send_reply(dev, h, &state, sizeof state);
		replied = true;
		break;
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR: {
		if (!payload_is(h, 8))
			goto malformed;
		memcpy(&u64, payload, 8);
		bool nofd = (u64 >> 8) & 1;
		if ((u64 & ~0x1ffull) || !fd_count_is(h, nfds, nofd ? 0 : 1) || !(q = queue_at(dev, (uint32_t)(u64 & 0xff), h)))
			goto malformed;
		if (h->request == VHOST_USER_SET_VRING_KICK) {
			if (nofd) {
				vub_log("warn", "SET_VRING_KICK without a descriptor (polling) is not supported");
				goto malformed;
			}
			vub_queue_stop(q);
			replace_fd(&q->kick_fd, fds[0]);
			nfds = 0;
			if (vub_queue_start(dev, q) < 0)
				goto malformed;
		} else {
			bool was = q->started;
			if (was)
				vub_queue_stop(q);
			replace_fd(h->request == VHOST_USER_SET_VRING_CALL ? &q->call_fd : &q->err_fd, nofd ? -1 : fds[0]);
			nfds = 0;
			if (was && vub_queue_start(dev, q) < 0)
				goto malformed;
		}
		break;
	}
	case VHOST_USER_SET_VRING_ENABLE:
		if (!payload_take(h, payload, nfds, &state, sizeof state))
			goto malformed;
		if (!(q = queue_at(dev, state.index, h)) || state.num > 1)
			goto malformed;
		q->enabled = state.num == 1;
		if (q->enabled) {
			if (vub_queue_start(dev, q) < 0)
				goto malformed;
		} else {
			vub_queue_stop(q);
		}
		break;
	case VHOST_USER_GET_CONFIG:
		if (!fd_count_is(h, nfds, 0) || handle_get_config(dev, h, payload) < 0)
			goto malformed;
		replied = true;
		break;
	case VHOST_USER_GET_INFLIGHT_FD:
		if (!fd_count_is(h, nfds, 0) || vub_inflight_get_fd(dev, h, payload) < 0)
			goto malformed;
		replied = true;
		break;
	case VHOST_USER_SET_INFLIGHT_FD:
		if (!fd_count_is(h, nfds, 1) || vub_inflight_set_fd(dev, h, payload, fds[0]) < 0)
			goto malformed;
		break; /* the mapping stays; the descriptor is closed below */
	case VHOST_USER_SET_LOG_BASE: {
		/* the VMM's dirty log (vub_dirty.h): a u64 reply follows, as libvhost-user sends */
		struct vub_log_msg lm;
		if (!((dev->protocol_features >> VHOST_USER_PROTOCOL_F_LOG_SHMFD) & 1) || !payload_is(h, sizeof lm) || !fd_count_is(h, nfds, 1))
			goto malformed;
		memcpy(&lm, payload, sizeof lm);
		int r = vub_dirty_set(&dev->dirty, fds[0], &lm);
		nfds = 0; /* closed there, whatever the outcome */
		if (r < 0)
			goto malformed;
		rc = reply_u64(dev, h, 0);
		replied = true;
		break;
	}
	case VHOST_USER_SET_LOG_FD:
		/* an eventfd to kick when the log fills: slipway's log never needs a sync, so it is closed */
		if (!fd_count_is(h, nfds, 1))
			goto malformed;
		break;
	case VHOST_USER_SET_CONFIG:
		/* virtio-blk's writable config field (writeback) is not offered: accept and ignore */
		if (!fd_count_is(h, nfds, 0) || h->size < 12)
			goto malformed;
		break;
	default:
		vub_log("warn", "vhost-user message %u is not supported", h->request);
		close_fds(fds, nfds);
		if ((h->flags & VHOST_USER_NEED_REPLY_MASK) && (dev->protocol_features >> VHOST_USER_PROTOCOL_F_REPLY_ACK) & 1)
			return reply_u64(dev, h, 1) < 0 ? -1 : 0;
		return -1;
	}
	close_fds(fds, nfds);
	if (rc < 0)
		return -1;
	if (!replied && (h->flags & VHOST_USER_NEED_REPLY_MASK) && (dev->protocol_features >> VHOST_USER_PROTOCOL_F_REPLY_ACK) & 1)
		return reply_u64(dev, h, 0) < 0 ? -1 : 0;
	return 0;

malformed:
	close_fds(fds, nfds);
	if ((h->flags & VHOST_USER_NEED_REPLY_MASK) && (dev->protocol_features >> VHOST_USER_PROTOCOL_F_REPLY_ACK) & 1)
		reply_u64(dev, h, 1);
	return -1;
}
