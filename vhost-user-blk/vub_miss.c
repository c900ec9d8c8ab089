/*
 * The miss client: each queue thread's own connection to the slipway daemon, which gets missing
 * chunks into the chunk directory (the protocol in docs/vhost-user-blk.md). The connection is
 * registered in its queue thread's epoll set for as long as it is open, and only that thread
 * opens, reads and closes it (stop_queue closes it once the thread has ended).
 *
 * A daemon that cannot be reached, or closes the connection, is away (restarting, say): requests
 * waiting for chunks stay parked and the thread tries to reach it again every MISS_RETRY_MS,
 * asking again for every parked chunk once it answers; only after MISS_AWAY_MS do they fail.
 * A guest write that needs its chunk's old bytes would otherwise fail while a daemon restarts, and
 * the guest lose what it wrote back. A malformed reply is not absence: it fails them at once.
 */
#include "vub_queue.h"
#include "miss_wire.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Take the connection out of the epoll set, then close it: a number closed while still registered
 * could come back as a new connection that the set never reports. */
void vub_miss_close(struct vub_queue *q)
{
	if (q->daemon_fd < 0)
		return;
	if (q->ep >= 0 && epoll_ctl(q->ep, EPOLL_CTL_DEL, q->daemon_fd, NULL) < 0)
		vub_log("warn", "queue %u: epoll_ctl DEL of the miss connection: %s", q->index, strerror(errno));
	close(q->daemon_fd);
	q->daemon_fd = -1;
	q->reply_have = 0;
}

/* The daemon does not answer: true while parked requests may still wait for it. */
static bool wait_for_daemon(struct vub_queue *q)
{
	uint64_t now = vub_now_ms();
	if (q->away_since == 0) {
		q->away_since = now ? now : 1;
		vub_log("warn", "queue %u: the daemon is away; %u requests wait for it (up to %d s)", q->index, q->parked_count, MISS_AWAY_MS / 1000);
	}
	return now - q->away_since < MISS_AWAY_MS;
}

static int daemon_connect(struct vub_queue *q)
{
	if (q->daemon_fd >= 0)
		return 0;
	if (!q->dev->daemon_socket)
		return -1;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(q->dev->daemon_socket) >= sizeof addr.sun_path)
		return -1;
	strcpy(addr.sun_path, q->dev->daemon_socket);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 && vub_fd_room(q->dev))
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		vub_log("warn", "queue %u: socket for the miss connection: %s", q->index, strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		vub_log("warn", "queue %u: cannot reach the daemon at %s: %s", q->index, q->dev->daemon_socket, strerror(errno));
		close(fd);
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	if (epoll_ctl(q->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		vub_log("warn", "queue %u: epoll_ctl ADD of the miss connection: %s", q->index, strerror(errno));
		close(fd);
		return -1;
	}
	q->daemon_fd = fd;
	q->reply_have = 0;
	if (q->away_since) {
		vub_log("info", "queue %u: the daemon answers again", q->index);
		q->away_since = 0;
	}
	return 1;
}

static int send_fetch(struct vub_queue *q, uint64_t chunk)
{
	uint8_t msg[MISS_MSG_BYTES];
	miss_encode_fetch(msg, chunk);
	for (size_t sent = 0; sent < sizeof msg;) {
		ssize_t n = send(q->daemon_fd, msg + sent, sizeof msg - sent, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		sent += (size_t)n;
	}
	return 0;
}

int vub_miss_fetch(struct vub_queue *q, uint64_t chunk)
{
	if (!q->dev->daemon_socket)
		return -1;
	if (daemon_connect(q) >= 0 && send_fetch(q, chunk) == 0)
		return 0;
	vub_miss_close(q);
	/* parked by the caller, asked for again when the daemon is back */
	return wait_for_daemon(q) ? 0 : -1;
}

void vub_miss_retry(struct vub_queue *q)
{
	if (q->away_since == 0 || q->parked_count == 0)
		return;
	if (daemon_connect(q) > 0) {
		/* every parked chunk once: its replies resume all the requests parked on it */
		for (struct vub_parked *p = q->parked; p; p = p->next) {
			bool first = true;
			for (const struct vub_parked *e = q->parked; e != p; e = e->next)
				first = first && e->chunk != p->chunk;
			if (first && send_fetch(q, p->chunk) < 0) {
				vub_miss_close(q);
				break;
			}
		}
		if (q->daemon_fd >= 0)
			return;
	}
	if (wait_for_daemon(q))
		return;
	vub_log("warn", "queue %u: the daemon has been away for %d s; failing %u waiting requests", q->index, MISS_AWAY_MS / 1000, q->parked_count);
	vub_queue_resume(q, 0, -ECONNRESET);
}

void vub_miss_read(struct vub_queue *q)
{
	while (q->daemon_fd >= 0) {
		ssize_t n = recv(q->daemon_fd, q->reply_buf + q->reply_have, sizeof q->reply_buf - q->reply_have, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			vub_miss_close(q);
			/* its requests wait for it to come back (vub_miss_retry asks again) */
			if (!wait_for_daemon(q)) {
				vub_log("warn", "queue %u: the daemon closed the miss connection; failing %u waiting requests", q->index, q->parked_count);
				vub_queue_resume(q, 0, -ECONNRESET);
			}
			return;
		}
		q->reply_have += (unsigned)n;
		if (q->reply_have < sizeof q->reply_buf)
			continue;
		q->reply_have = 0;
		int32_t status;
		uint64_t chunk;
		if (!miss_decode_reply(q->reply_buf, &status, &chunk) || chunk >= q->dev->disk->nchunks) {
			vub_log("warn", "queue %u: malformed reply from the daemon; dropping the connection", q->index);
			vub_miss_close(q);
			vub_queue_resume(q, 0, -ECONNRESET);
			return;
		}
		vub_queue_resume(q, chunk, status == 0 ? 0 : -EIO);
	}
}
