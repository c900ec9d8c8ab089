/*
 * In-flight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): every request popped from a ring is
 * marked in a memory region the VMM keeps for the device, and unmarked when it completes. A backend
 * that restarts (killed, crashed) gets the region back with SET_INFLIGHT_FD and, when a queue
 * starts, runs again exactly the requests that were popped and never completed, in the order they
 * were popped, then goes on from the first entry no one popped. Without it, a VMM that reconnects
 * restarts the ring at its used index: requests that had completed out of order would complete a
 * second time, and one still waiting would never complete.
 *
 * The region is libvhost-user's split-ring format: per queue a 16-byte header (features, version,
 * desc_num, last_batch_head, used_idx) and one 16-byte state per descriptor (inflight, padding,
 * next, counter), each queue's part 64-byte aligned. The VMM can write it, so everything read from
 * it is checked: heads below the ring size, the count of in-flight heads at most the ring size,
 * and the file sealed against shrinking before it is mapped.
 */
#include "vub_queue.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define INFLIGHT_VERSION 1

struct vub_inflight_desc {
	uint8_t inflight;
	uint8_t padding[5];
	uint16_t next;
	uint64_t counter;
};

struct vub_inflight_queue {
	uint64_t features;
	uint16_t version;
	uint16_t desc_num;
	uint16_t last_batch_head;
	uint16_t used_idx;
	struct vub_inflight_desc desc[];
};

static uint64_t queue_region_bytes(unsigned ring)
{
	return (sizeof(struct vub_inflight_queue) + (uint64_t)ring * sizeof(struct vub_inflight_desc) + 63) & ~63ull;
}

static bool valid_shape(const struct vhost_user_inflight *in)
{
	return in->num_queues >= 1 && in->num_queues <= VUB_MAX_QUEUES && in->queue_size >= 1 && in->queue_size <= VUB_MAX_RING &&
	       (in->queue_size & (in->queue_size - 1)) == 0;
}

static int reply_with_fd(struct vub_dev *dev, const struct vhost_user_header *req, const void *payload, uint32_t size, int fd)
{
	struct vhost_user_header h = { .request = req->request, .flags = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, .size = size };
	struct iovec iov[2] = { { &h, sizeof h }, { (void *)payload, size } };
	char control[CMSG_SPACE(sizeof(int))];
	memset(control, 0, sizeof control);
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = control, .msg_controllen = sizeof control };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	ssize_t n;
	do {
		n = sendmsg(dev->sock, &msg, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n != (ssize_t)(sizeof h + size)) {
		vub_log("warn", "replying to GET_INFLIGHT_FD: %s", n < 0 ? strerror(errno) : "short write");
		return -1;
	}
	return 0;
}

int vub_inflight_get_fd(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload)
{
	struct vhost_user_inflight in;
	if (h->size != sizeof in)
		return -1;
	memcpy(&in, payload, sizeof in);
	if (!valid_shape(&in)) {
		vub_log("warn", "GET_INFLIGHT_FD: %u queues of %u entries refused", in.num_queues, in.queue_size);
		return -1;
	}
	uint64_t size = in.num_queues * queue_region_bytes(in.queue_size);
	int fd = memfd_create("slipway-blk-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 && vub_fd_room(dev))
		fd = memfd_create("slipway-blk-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0) {
		vub_log("warn", "GET_INFLIGHT_FD: memfd_create: %s", strerror(errno));
		return -1;
	}
	/* zeros (a new file), and sealed so that no one can shrink it under a mapping */
	if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		vub_log("warn", "GET_INFLIGHT_FD: sizing the region: %s", strerror(errno));
		close(fd);
		return -1;
	}
	in.mmap_size = size;
	in.mmap_offset = 0;
	int rc = reply_with_fd(dev, h, &in, sizeof in, fd);
	close(fd); /* the VMM keeps its copy and hands it back with SET_INFLIGHT_FD */
	return rc;
}

void vub_inflight_unmap(struct vub_dev *dev)
{
	for (unsigned i = 0; i < VUB_MAX_QUEUES; i++) {
		struct vub_queue *q = &dev->q[i];
		q->inflight = NULL;
		q->tracking = false;
		free(q->resubmit);
		q->resubmit = NULL;
		q->resubmit_n = q->resubmit_next = 0;
	}
	if (dev->inflight_map)
		munmap(dev->inflight_map, dev->inflight_len);
	dev->inflight_map = NULL;
	dev->inflight_len = 0;
	dev->inflight_queues = dev->inflight_ring = 0;
}

int vub_inflight_set_fd(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, int fd)
{
	struct vhost_user_inflight in;
	if (h->size != sizeof in)
		return -1;
	memcpy(&in, payload, sizeof in);
	if (!((dev->protocol_features >> VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) & 1)) {
		vub_log("warn", "SET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD");
		return -1;
	}
	for (unsigned i = 0; i < dev->nqueues; i++)
		if (dev->q[i].started) {
			vub_log("warn", "SET_INFLIGHT_FD while queue %u runs", i);
			return -1;
		}
	uint64_t need = valid_shape(&in) ? in.num_queues * queue_region_bytes(in.queue_size) : 0;
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	if (!need || in.mmap_size < need || (in.mmap_offset & 4095) || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    in.mmap_offset > (uint64_t)st.st_size || need > (uint64_t)st.st_size - in.mmap_offset || seals < 0 || !(seals & F_SEAL_SHRINK)) {
		vub_log("warn", "SET_INFLIGHT_FD: %u queues of %u entries in %llu bytes at %llu refused (a sealed file that holds them is needed)", in.num_queues,
			in.queue_size, (unsigned long long)in.mmap_size, (unsigned long long)in.mmap_offset);
		return -1;
	}
	void *map = mmap(NULL, (size_t)need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)in.mmap_offset);
	if (map == MAP_FAILED) {
		vub_log("warn", "SET_INFLIGHT_FD: mmap: %s", strerror(errno));
		return -1;
	}
	vub_inflight_unmap(dev);
	dev->inflight_map = map;
	dev->inflight_len = (size_t)need;
	dev->inflight_queues = in.num_queues;
	dev->inflight_ring = in.queue_size;
	for (unsigned i = 0; i < in.num_queues && i < VUB_MAX_QUEUES; i++)
		dev->q[i].inflight = (struct vub_inflight_queue *)(void *)((uint8_t *)map + i * queue_region_bytes(in.queue_size));
	return 0;
}

static int by_counter(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

int vub_inflight_resume(struct vub_dev *dev, struct vub_queue *q)
{
	free(q->resubmit);
	q->resubmit = NULL;
	q->resubmit_n = q->resubmit_next = 0;
	q->inflight_counter = 0;
	q->tracking = false;
	if (!((dev->protocol_features >> VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) & 1) || !q->inflight)
		return 0;
	struct vub_inflight_queue *f = q->inflight;
	unsigned num = q->ring.num;
	if (num > dev->inflight_ring) {
		vub_log("warn", "queue %u: a ring of %u does not fit the in-flight region (%u entries)", q->index, num, dev->inflight_ring);
		return -1;
	}
	if (__atomic_load_n(&f->version, __ATOMIC_ACQUIRE) != INFLIGHT_VERSION) {
		/* a new region (or one this backend cannot read): nothing in flight */
		memset(f->desc, 0, num * sizeof f->desc[0]);
		f->desc_num = (uint16_t)num;
		f->used_idx = q->ring.used_idx;
		__atomic_store_n(&f->version, INFLIGHT_VERSION, __ATOMIC_RELEASE);
		q->tracking = true;
		return 0;
	}
	uint16_t used = q->ring.used_idx;
	if (f->used_idx != used) {
		/* gone between writing the used ring and unmarking the request it completed */
		uint16_t last = f->last_batch_head;
		if (last < num)
			__atomic_store_n(&f->desc[last].inflight, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&f->used_idx, used, __ATOMIC_RELEASE);
	}
	uint64_t (*list)[2] = calloc(num, sizeof *list); /* counter, head */
	if (!list)
		return -1;
	unsigned n = 0;
	for (unsigned i = 0; i < num; i++) {
		struct vub_inflight_desc d;
		memcpy(&d, &f->desc[i], sizeof d); /* read once */
		if (d.inflight == 1) {
			list[n][0] = d.counter;
			list[n][1] = i;
			n++;
		} else if (d.inflight != 0) {
			__atomic_store_n(&f->desc[i].inflight, 0, __ATOMIC_RELAXED);
		}
	}
	q->ring.last_avail = (uint16_t)(used + n);
	if (n > 0) {
		qsort(list, n, sizeof *list, by_counter);
		q->resubmit = calloc(n, sizeof *q->resubmit);
		if (!q->resubmit) {
			free(list);
			return -1;
		}
		for (unsigned i = 0; i < n; i++)
			q->resubmit[i] = (uint16_t)list[i][1];
		q->resubmit_n = n;
		q->inflight_counter = list[n - 1][0] + 1;
		vub_log("info", "queue %u: %u requests were in flight when the last backend stopped; running them again (ring resumes at %u)", q->index, n,
			q->ring.last_avail);
	}
	free(list);
	q->tracking = true;
	return 0;
}

bool vub_inflight_next(struct vub_queue *q, uint16_t *head)
{
	if (q->resubmit_next >= q->resubmit_n)
		return false;
	*head = q->resubmit[q->resubmit_next++];
	if (q->resubmit_next == q->resubmit_n) {
		free(q->resubmit);
		q->resubmit = NULL;
		q->resubmit_n = q->resubmit_next = 0;
	}
	return true;
}

void vub_inflight_popped(struct vub_queue *q, uint16_t head)
{
	if (!q->tracking)
		return;
	q->inflight->desc[head].counter = q->inflight_counter++;
	__atomic_store_n(&q->inflight->desc[head].inflight, 1, __ATOMIC_RELEASE);
}

void vub_inflight_complete(struct vub_queue *q, uint16_t head, uint32_t len)
{
	struct vub_inflight_queue *f = q->tracking ? q->inflight : NULL;
	if (f)
		__atomic_store_n(&f->last_batch_head, head, __ATOMIC_RELEASE);
	vub_ring_push(&q->ring, head, len);
	if (f) {
		__atomic_store_n(&f->desc[head].inflight, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&f->used_idx, q->ring.used_idx, __ATOMIC_RELEASE);
	}
}
