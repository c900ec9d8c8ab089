/*
 * The vhost-user device: one switch on the message type calling one handler per message (vub.c),
 * queue threads that pop, execute and complete requests, and the miss client that asks the
 * slipway daemon for chunks that are not local.
 */
#ifndef SLIPWAY_VUB_H
#define SLIPWAY_VUB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "disk.h"
#include "log.h"
#include "virtq.h"
#include "vub_dirty.h"

struct vub_parked;
struct vub_inflight_queue;

struct vub_queue {
	struct vub_dev *dev;
	unsigned index;
	struct vub_ring ring;
	unsigned num;
	uint64_t desc_uva, avail_uva, used_uva;
	bool addr_set;
	bool enabled;
	bool started;
	int kick_fd;
	int call_fd;
	int err_fd;
	int stop_fd;
	int ep; /* the queue thread's epoll set */
	pthread_t thread;
	/* miss client (queue thread only) */
	int daemon_fd;
	uint8_t reply_buf[16];
	unsigned reply_have;
	struct vub_parked *parked;
	unsigned parked_count;
	/* when the daemon stopped answering (CLOCK_MONOTONIC ms; 0: it answers): parked requests wait
	 * for it to come back (a daemon restart), up to VUB_MISS_AWAY_MS */
	uint64_t away_since;
	/* in-flight tracking (vub_inflight.c): this queue's part of the VMM's shared region */
	struct vub_inflight_queue *inflight;
	bool tracking; /* inflight is in use on the running ring */
	uint64_t inflight_counter;
	uint16_t *resubmit; /* heads to run again after a restart, oldest first */
	unsigned resubmit_n, resubmit_next;
	/* statistics */
	uint64_t requests;
	uint64_t misses;
};

struct vub_stats {
	uint64_t requests;
	uint64_t misses;
	uint64_t bad_chains;
	uint64_t broken_rings;
};

struct vub_dev {
	int sock;
	struct vub_mem mem;
	uint64_t features;
	uint64_t protocol_features;
	bool features_set;
	bool owner;
	unsigned nqueues;
	struct vub_queue q[VUB_MAX_QUEUES];
	struct vub_disk *disk;
	const char *daemon_socket;
	struct vub_stats stats;
	/* the in-flight region SET_INFLIGHT_FD mapped: inflight_queues regions for rings of up to inflight_ring */
	void *inflight_map;
	size_t inflight_len;
	unsigned inflight_queues;
	unsigned inflight_ring;
	/* the VMM's dirty log while it migrates (vub_dirty.h) */
	struct vub_dirty_log dirty;
};

void vub_dev_init(struct vub_dev *dev, struct vub_disk *disk, unsigned nqueues, const char *daemon_socket);
/* The connection went away: stop queues, unmap memory, close descriptors; the disk and overlay stay. */
void vub_dev_reset(struct vub_dev *dev);

uint64_t vub_offered_features(const struct vub_dev *dev);
uint64_t vub_offered_protocol_features(void);

/*
 * Read one message (header, payload, file descriptors) from `sock`. 1 on success, 0 on EOF,
 * -1 on a malformed message (the connection should be closed). Received descriptors beyond
 * VUB_MAX_FDS, or on error, are closed here.
 */
int vub_read_message(int sock, struct vhost_user_header *hdr, uint8_t *payload, int *fds, unsigned *nfds);

/*
 * Handle one message. Takes ownership of `fds` (closes the ones it does not keep). 0 to go on,
 * -1 to close the connection.
 */
int vub_handle_message(struct vub_dev *dev, const struct vhost_user_header *hdr, const uint8_t *payload, int *fds, unsigned nfds);


#endif
