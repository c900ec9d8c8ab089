/*
 * Queue threads: one per started queue. Each pops chains from its ring, runs them against the disk
 * (blk.c), parks the ones that wait for a chunk until the daemon answers (vub_miss.c), and
 * completes them. Every descriptor a thread uses has one owner: the kick, call and err eventfds
 * belong to the protocol (vub.c), which replaces them only with the thread stopped; the stop
 * eventfd and the epoll set are made by vub_queue_start and closed by vub_queue_stop after the
 * thread has ended; the miss connection is the thread's own.
 */
#include "vub_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "blk.h"
#include "miss_wire.h"

/* how long a stopping queue waits for requests parked on misses before it fails them */
#define STOP_DRAIN_MS 5000

static void notify(struct vub_queue *q, uint16_t old_used)
{
	if (q->ring.used_idx != old_used && q->call_fd >= 0 && vub_ring_need_notify(&q->ring, old_used)) {
		if (eventfd_write(q->call_fd, 1) < 0)
			vub_log("warn", "queue %u: call eventfd: %s", q->index, strerror(errno));
	}
}

static bool chunk_requested(const struct vub_queue *q, uint64_t chunk)
{
	for (const struct vub_parked *p = q->parked; p; p = p->next)
		if (p->chunk == chunk)
			return true;
	return false;
}

/* Complete a request: the used ring entry, in-flight tracking, and while the VMM migrates, the dirty log. */
static void complete(struct vub_queue *q, const struct vub_chain *c, uint32_t used_len)
{
	uint16_t slot = q->ring.used_idx;
	vub_inflight_complete(q, c->head, used_len);
	if ((__atomic_load_n(&q->dev->features, __ATOMIC_RELAXED) >> VUB_F_LOG_ALL) & 1)
		vub_dirty_mark_completion(&q->dev->dirty, &q->dev->mem, c, &q->ring, slot);
}

/* Run a request; park it when it needs a chunk; complete it otherwise. */
static void run_request(struct vub_queue *q, const struct vub_chain *c)
{
	uint32_t used_len = 0;
	uint64_t missing = 0;
	int rc = vub_blk_execute(q->dev->disk, c, &used_len, &missing);
	if (rc == VUB_MISS) {
		q->misses++;
		__atomic_fetch_add(&q->dev->stats.misses, 1, __ATOMIC_RELAXED);
		bool already = chunk_requested(q, missing);
		if (!already && vub_miss_fetch(q, missing) < 0) {
			vub_blk_fail(c, VIRTIO_BLK_S_IOERR, &used_len);
			complete(q, c, used_len);
			return;
		}
		struct vub_parked *p = malloc(sizeof *p);
		if (!p) {
			vub_blk_fail(c, VIRTIO_BLK_S_IOERR, &used_len);
			complete(q, c, used_len);
			return;
		}
		p->chunk = missing;
		p->chain = *c;
		p->next = q->parked;
		q->parked = p;
		q->parked_count++;
		return;
	}
	complete(q, c, used_len);
}

static void process_ring(struct vub_queue *q)
{
	uint16_t old_used = q->ring.used_idx;
	struct vub_chain *c = malloc(sizeof *c);
	if (!c)
		return;
	for (;;) {
		uint16_t again;
		enum vub_pop r;
		if (vub_inflight_next(q, &again)) {
			r = vub_ring_chain(&q->ring, &q->dev->mem, again, c);
		} else {
			r = vub_ring_pop(&q->ring, &q->dev->mem, c);
			if (r == VUB_POP_OK || r == VUB_POP_BAD_CHAIN)
				vub_inflight_popped(q, c->head);
		}
		if (r == VUB_POP_EMPTY) {
			vub_ring_set_avail_event(&q->ring);
			if (vub_ring_has_work(&q->ring))
				continue;
			break;
		}
		if (r == VUB_POP_BROKEN) {
			__atomic_fetch_add(&q->dev->stats.broken_rings, 1, __ATOMIC_RELAXED);
			vub_log("warn", "queue %u: the driver broke the ring (bad avail index or head); queue stopped", q->index);
			if (q->err_fd >= 0 && eventfd_write(q->err_fd, 1) < 0)
				vub_log("warn", "queue %u: err eventfd: %s", q->index, strerror(errno));
			break;
		}
		q->requests++;
		__atomic_fetch_add(&q->dev->stats.requests, 1, __ATOMIC_RELAXED);
		if (r == VUB_POP_BAD_CHAIN) {
			__atomic_fetch_add(&q->dev->stats.bad_chains, 1, __ATOMIC_RELAXED);
			uint32_t used_len = 0;
			/* the chain walk stopped at the bad descriptor; what it mapped may lack a status byte */
			vub_blk_fail(c, VIRTIO_BLK_S_IOERR, &used_len);
			complete(q, c, used_len);
			continue;
		}
		run_request(q, c);
	}
	free(c);
	notify(q, old_used);
}

void vub_queue_resume(struct vub_queue *q, uint64_t chunk, int status)
{
	uint16_t old_used = q->ring.used_idx;
	struct vub_parked **pp = &q->parked;
	struct vub_parked *ready = NULL;
	while (*pp) {
		struct vub_parked *p = *pp;
		if (p->chunk == chunk || status == -ECONNRESET) {
			*pp = p->next;
			p->next = ready;
			ready = p;
			q->parked_count--;
		} else {
			pp = &p->next;
		}
	}
	while (ready) {
		struct vub_parked *p = ready;
		ready = p->next;
		if (status == 0) {
			run_request(q, &p->chain); /* absent chunks are never cached as absent: the retry opens the new file */
		} else {
			uint32_t used_len = 0;
			vub_blk_fail(&p->chain, VIRTIO_BLK_S_IOERR, &used_len);
			complete(q, &p->chain, used_len);
		}
		free(p);
	}
	notify(q, old_used);
}

uint64_t vub_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The queue's thread: its epoll set (q->ep) watches the kick and stop eventfds and the miss connection. */
static void *queue_thread(void *arg)
{
	struct vub_queue *q = arg;
	bool stopping = false;
	uint64_t stop_deadline = 0;
	uint64_t next_retry = 0;
	process_ring(q); /* the driver may have queued requests before the kick fd arrived */
	for (;;) {
		if (stopping && (q->parked_count == 0 || vub_now_ms() >= stop_deadline)) {
			if (q->parked_count > 0) {
				vub_log("warn", "queue %u: stopping with %u requests still waiting for chunks; failing them", q->index, q->parked_count);
				vub_queue_resume(q, 0, -ECONNRESET);
			}
			break;
		}
		struct epoll_event events[4];
		int timeout = stopping ? 50 : -1;
		if (q->away_since && q->parked_count && (timeout < 0 || timeout > MISS_RETRY_MS))
			timeout = MISS_RETRY_MS;
		int n = epoll_wait(q->ep, events, 4, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* cannot happen with a valid set; stop serving rather than spin, and tell the VMM */
			vub_log("warn", "queue %u: epoll_wait: %s; queue stopped", q->index, strerror(errno));
			if (q->err_fd >= 0 && eventfd_write(q->err_fd, 1) < 0)
				vub_log("warn", "queue %u: err eventfd: %s", q->index, strerror(errno));
			vub_queue_resume(q, 0, -ECONNRESET);
			break;
		}
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			eventfd_t v;
			if (fd == q->stop_fd) {
				if (eventfd_read(q->stop_fd, &v) == 0 && !stopping) {
					stopping = true;
					stop_deadline = vub_now_ms() + STOP_DRAIN_MS;
				}
			} else if (fd == q->kick_fd) {
				if (eventfd_read(q->kick_fd, &v) == 0 && !stopping)
					process_ring(q);
			} else if (fd == q->daemon_fd) {
				vub_miss_read(q);
			}
		}
		/* the daemon away (restarting): try it again, at most every MISS_RETRY_MS */
		if (q->away_since && q->parked_count && vub_now_ms() >= next_retry) {
			vub_miss_retry(q);
			next_retry = vub_now_ms() + MISS_RETRY_MS;
		}
	}
	vub_miss_close(q);
	return NULL;
}

bool vub_fd_room(struct vub_dev *dev)
{
	if (errno != EMFILE)
		return false;
	vub_log("warn", "out of file descriptors: closing the cached chunk files");
	vub_disk_drop_cache(dev->disk);
	return true;
}

static int watch(struct vub_queue *q, int fd, const char *what)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	if (epoll_ctl(q->ep, EPOLL_CTL_ADD, fd, &ev) == 0)
		return 0;
	vub_log("warn", "queue %u: epoll_ctl ADD of the %s: %s", q->index, what, strerror(errno));
	return -1;
}

/* The stop eventfd and the epoll set, made here so that a failure refuses the message that starts the queue. */
static int make_thread_fds(struct vub_dev *dev, struct vub_queue *q)
{
	q->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (q->stop_fd < 0 && vub_fd_room(dev))
		q->stop_fd = eventfd(0, EFD_CLOEXEC);
	q->ep = epoll_create1(EPOLL_CLOEXEC);
	if (q->ep < 0 && vub_fd_room(dev))
		q->ep = epoll_create1(EPOLL_CLOEXEC);
	if (q->stop_fd < 0 || q->ep < 0) {
		vub_log("warn", "queue %u: stop eventfd or epoll set: %s", q->index, strerror(errno));
		return -1;
	}
	return watch(q, q->kick_fd, "kick eventfd") < 0 || watch(q, q->stop_fd, "stop eventfd") < 0 ? -1 : 0;
}

static void close_thread_fds(struct vub_queue *q)
{
	if (q->ep >= 0)
		close(q->ep);
	if (q->stop_fd >= 0)
		close(q->stop_fd);
	q->ep = q->stop_fd = -1;
}

int vub_queue_start(struct vub_dev *dev, struct vub_queue *q)
{
	if (q->started || q->kick_fd < 0 || !q->addr_set || q->num == 0 || dev->mem.n == 0)
		return 0;
	bool needs_enable = (dev->features >> VHOST_USER_F_PROTOCOL_FEATURES) & 1;
	if (needs_enable && !q->enabled)
		return 0;
	uint16_t base = q->ring.last_avail;
	if (vub_ring_map(&q->ring, &dev->mem, q->num, q->desc_uva, q->avail_uva, q->used_uva) < 0) {
		vub_log("warn", "queue %u: ring addresses are not in guest memory", q->index);
		return -1;
	}
	q->ring.last_avail = base;
	q->ring.used_idx = __atomic_load_n(&q->ring.used->idx, __ATOMIC_ACQUIRE);
	q->ring.event_idx = (dev->features >> VIRTIO_RING_F_EVENT_IDX) & 1;
	q->ring.indirect = (dev->features >> VIRTIO_RING_F_INDIRECT_DESC) & 1;
	if (vub_inflight_resume(dev, q) < 0)
		return -1;
	if (make_thread_fds(dev, q) < 0) {
		close_thread_fds(q);
		return -1;
	}
	int rc = pthread_create(&q->thread, NULL, queue_thread, q);
	if (rc != 0) {
		vub_log("warn", "queue %u: pthread_create: %s", q->index, strerror(rc));
		close_thread_fds(q);
		return -1;
	}
	q->started = true;
	vub_log("debug", "queue %u started (size %u, base %u)", q->index, q->num, base);
	return 0;
}

void vub_queue_stop(struct vub_queue *q)
{
	if (!q->started)
		return;
	if (eventfd_write(q->stop_fd, 1) < 0)
		vub_log("warn", "queue %u: stop eventfd: %s", q->index, strerror(errno));
	pthread_join(q->thread, NULL);
	close_thread_fds(q);
	q->started = false;
}
