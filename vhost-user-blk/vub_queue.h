/*
 * Inside the device: the queue threads (vub_queue.c) and the miss client they use (vub_miss.c).
 * vub.c, the protocol, starts and stops queues; nothing else does.
 */
#ifndef SLIPWAY_VUB_QUEUE_H
#define SLIPWAY_VUB_QUEUE_H

#include "vub.h"

/* A request waiting for a chunk the daemon was asked for (a queue's list, newest first). */
struct vub_parked {
	struct vub_parked *next;
	uint64_t chunk;
	struct vub_chain chain;
};

/* Start q when it has everything it needs (no-op otherwise); -1 when it cannot start. */
int vub_queue_start(struct vub_dev *dev, struct vub_queue *q);
/* Stop q's thread (requests waiting for chunks get STOP_DRAIN_MS) and close what the thread used. */
void vub_queue_stop(struct vub_queue *q);
/* Requests parked on `chunk` run again; status < 0 fails them (-ECONNRESET: every parked request). */
void vub_queue_resume(struct vub_queue *q, uint64_t chunk, int status);

/* Ask the daemon for `chunk`, connecting first when needed: 0 (sent, or the daemon is away and the
 * request may wait for it: it is sent again when the daemon is back), or -1 (the request fails:
 * the daemon has been away for MISS_AWAY_MS, or there is none). */
int vub_miss_fetch(struct vub_queue *q, uint64_t chunk);
/* While the daemon is away: connect again; once connected, ask again for every parked chunk; past
 * MISS_AWAY_MS, fail the parked requests. The queue thread calls it every MISS_RETRY_MS. */
void vub_miss_retry(struct vub_queue *q);
/* Read the replies that have arrived and resume their requests. */
void vub_miss_read(struct vub_queue *q);
/* Close the miss connection (out of the epoll set first). */
void vub_miss_close(struct vub_queue *q);

/* In-flight tracking (vub_inflight.c). The two messages: 0, or -1 for a refused one. */
int vub_inflight_get_fd(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload);
int vub_inflight_set_fd(struct vub_dev *dev, const struct vhost_user_header *h, const uint8_t *payload, int fd);
void vub_inflight_unmap(struct vub_dev *dev);
/* At queue start, ring mapped: what the last backend left in flight runs again (and the ring
 * resumes after what it popped); -1 when the region cannot serve this ring. */
int vub_inflight_resume(struct vub_dev *dev, struct vub_queue *q);
/* The next head to run again, oldest first; false when none is left. */
bool vub_inflight_next(struct vub_queue *q, uint16_t *head);
/* A head was popped from the avail ring. */
void vub_inflight_popped(struct vub_queue *q, uint16_t head);
/* Complete a request: the used ring and its in-flight state, in an order a crash cannot tear. */
void vub_inflight_complete(struct vub_queue *q, uint16_t head, uint32_t len);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t vub_now_ms(void);

/* After a call that makes a descriptor failed: true when it was EMFILE and the disk's cached chunk
 * files have been closed to make room (try once more). */
bool vub_fd_room(struct vub_dev *dev);

#endif
