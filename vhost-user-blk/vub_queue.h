/*
 * Inside the device: the queue threads (vub_queue.c) and the miss client they use (vub_miss.c).
 * vub.c, the protocol, starts and stops queues; nothing else does.
 */
#ifndef SLIPWAY_VUB_QUEUE_H
#define SLIPWAY_VUB_QUEUE_H

#include "vub.h"

/* Start q when it has everything it needs (no-op otherwise); -1 when it cannot start. */
int vub_queue_start(struct vub_dev *dev, struct vub_queue *q);
/* Stop q's thread (requests waiting for chunks get STOP_DRAIN_MS) and close what the thread used. */
void vub_queue_stop(struct vub_queue *q);
/* Requests parked on `chunk` run again; status < 0 fails them (-ECONNRESET: every parked request). */
void vub_queue_resume(struct vub_queue *q, uint64_t chunk, int status);

/* Ask the daemon for `chunk`, connecting first when needed: 0, or -1 (the request fails). */
int vub_miss_fetch(struct vub_queue *q, uint64_t chunk);
/* Read the replies that have arrived and resume their requests. */
void vub_miss_read(struct vub_queue *q);
/* Close the miss connection (out of the epoll set first). */
void vub_miss_close(struct vub_queue *q);

/* After a call that makes a descriptor failed: true when it was EMFILE and the disk's cached chunk
 * files have been closed to make room (try once more). */
bool vub_fd_room(struct vub_dev *dev);

#endif
