/*
 * A connection to the host: its input buffer and the frames in it, its output queue, and flow
 * control between them and its processes' pipes (described at the top of agent.c). The byte queues
 * here also hold what waits for a process's stdin.
 */
#include "agent.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- byte queues ---- */

struct chunk *chunk_new(size_t len)
{
	struct chunk *c = malloc(sizeof *c + len);
	if (!c)
		return NULL;
	c->next = NULL;
	c->len = len;
	c->sent = 0;
	return c;
}

void queue_push(struct byte_queue *q, struct chunk *c)
{
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
	q->bytes += c->len;
}

void queue_consume(struct byte_queue *q, size_t n)
{
	q->bytes -= n;
	while (n > 0 && q->head) {
		struct chunk *c = q->head;
		size_t rest = c->len - c->sent;
		if (n < rest) {
			c->sent += n;
			return;
		}
		n -= rest;
		q->head = c->next;
		if (!q->head)
			q->tail = NULL;
		free(c);
	}
}

void queue_clear(struct byte_queue *q)
{
	while (q->head) {
		struct chunk *c = q->head;
		q->head = c->next;
		free(c);
	}
	q->tail = NULL;
	q->bytes = 0;
}

/* ---- output ---- */

static void conn_update_events(struct conn *c)
{
	if (c->closed)
		return;
	uint32_t want = (c->input_paused ? 0 : EPOLLIN) | (c->out.head ? EPOLLOUT : 0);
	if (want == c->registered_events)
		return;
	if (epoll_op(c->agent, EPOLL_CTL_MOD, c->fd, want, &c->watch, "connection"))
		c->registered_events = want;
}

/* Write as much of the output queue as the peer takes now. */
static void conn_flush(struct conn *c)
{
	while (!c->closed && c->out.head) {
		struct iovec iov[MAX_IOVECS];
		int n = 0;
		for (struct chunk *ch = c->out.head; ch && n < MAX_IOVECS; ch = ch->next, n++) {
			iov[n].iov_base = ch->bytes + ch->sent;
			iov[n].iov_len = ch->len - ch->sent;
		}
		ssize_t written = TEMP_FAILURE_RETRY(writev(c->fd, iov, n));
		if (written < 0) {
			if (errno == EAGAIN)
				break;
			/* the host going away mid-reply is an ordinary end, not worth a log line */
			if (errno != EPIPE && errno != ECONNRESET)
				log_errno("write to %s connection", c->is_serial ? "serial" : "socket");
			conn_close(c, NULL);
			return;
		}
		queue_consume(&c->out, (size_t)written);
	}
	if (c->closed)
		return;
	if (!c->out.head && c->shutdown_signal) {
		int sig = c->shutdown_signal;
		c->shutdown_signal = 0;
		request_shutdown(c->agent, sig);
	}
	conn_update_flow(c);
	conn_update_events(c);
}

/*
 * Queue one frame whose payload is `a` then `b` (either may be empty) and try to send it. Returns
 * false when the frame could not be queued (the connection is closed, or out of memory, in which
 * case the connection is closed too: a frame silently missing would leave the host waiting forever).
 */
static bool conn_send2(struct conn *c, uint16_t type, uint32_t id, const void *a, size_t a_len, const void *b, size_t b_len)
{
	if (c->closed)
		return false;
	size_t payload = a_len + b_len;
	struct chunk *ch = chunk_new(FRAME_HEADER_BYTES + payload);
	if (!ch) {
		log_msg("out of memory queueing a %zu-byte frame; closing the connection", payload);
		conn_close(c, NULL);
		return false;
	}
	frame_header_put(ch->bytes, type, id, (uint32_t)payload);
	if (a_len)
		memcpy(ch->bytes + FRAME_HEADER_BYTES, a, a_len);
	if (b_len)
		memcpy(ch->bytes + FRAME_HEADER_BYTES + a_len, b, b_len);
	bool was_waiting = c->out.head != NULL; /* then the peer is full: EPOLLOUT will flush */
	queue_push(&c->out, ch);
	if (was_waiting)
		conn_update_flow(c);
	else
		conn_flush(c);
	return true;
}

bool conn_send(struct conn *c, uint16_t type, uint32_t id, const void *payload, size_t len)
{
	return conn_send2(c, type, id, payload, len, NULL, 0);
}

void send_ok(struct conn *c, uint32_t id)
{
	conn_send(c, REP_OK, id, NULL, 0);
}

void send_error(struct conn *c, uint32_t id, int err, const char *fmt, ...)
{
	char message[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(message, sizeof message, fmt, ap);
	va_end(ap);
	size_t len = n < 0 ? 0 : (size_t)n < sizeof message ? (size_t)n : sizeof message - 1;
	uint8_t errno_le[4];
	put_u32(errno_le, (uint32_t)err);
	conn_send2(c, REP_ERROR, id, errno_le, sizeof errno_le, message, len);
}

void send_errno(struct conn *c, uint32_t id, int err, const char *fmt, ...)
{
	/* as long as send_error's message: what does not fit is cut off the same way */
	char what[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	send_error(c, id, err, "%s: %s", what, strerror(err));
}

void conn_update_flow(struct conn *c)
{
	if (c->closed)
		return;
	struct agent *a = c->agent;
	if (!c->output_paused && c->out.bytes >= QUEUE_HIGH_BYTES) {
		c->output_paused = true;
		for (struct proc *p = a->procs; p; p = p->next)
			if (p->conn == c)
				proc_set_output_registered(p, false);
	} else if (c->output_paused && c->out.bytes < QUEUE_LOW_BYTES) {
		c->output_paused = false;
		for (struct proc *p = a->procs; p; p = p->next)
			if (p->conn == c)
				proc_set_output_registered(p, true);
	}
	bool over = c->out.bytes >= QUEUE_HIGH_BYTES || c->stdin_queued >= QUEUE_HIGH_BYTES;
	bool under = c->out.bytes < QUEUE_LOW_BYTES && c->stdin_queued < QUEUE_LOW_BYTES;
	/* frames already buffered are picked up by the main loop once input resumes */
	if (!c->input_paused && over)
		c->input_paused = true;
	else if (c->input_paused && under)
		c->input_paused = false;
	conn_update_events(c);
}

/* ---- lifetime and input ---- */

struct conn *conn_new(struct agent *a, int fd, bool is_serial)
{
	struct conn *c = calloc(1, sizeof *c);
	if (!c) {
		log_msg("out of memory for a new connection");
		close_fd(&fd, "connection");
		return NULL;
	}
	c->watch.kind = WATCH_CONN;
	c->watch.owner = c;
	c->agent = a;
	c->fd = fd;
	c->is_serial = is_serial;
	if (!epoll_op(a, EPOLL_CTL_ADD, fd, EPOLLIN, &c->watch, "connection")) {
		close_fd(&c->fd, "connection");
		free(c);
		return NULL;
	}
	c->registered_events = EPOLLIN;
	LIST_PUSH(a->conns, c);
	return c;
}

void conn_close(struct conn *c, const char *why)
{
	if (c->closed)
		return;
	struct agent *a = c->agent;
	if (why)
		log_msg("%s connection closed: %s", c->is_serial ? "serial" : "socket", why);
	c->closed = true;
	/* close the fd here, not when the conn is freed: a shutdown or EOF must be seen at once */
	close_fd(&c->fd, "connection");
	/* its processes keep running with their output dropped; their pipes must be read again
	 * (they may be paused) so they never block on a full pipe */
	for (struct proc *p = a->procs; p; p = p->next) {
		if (p->conn != c)
			continue;
		if (p->stdin_state == STDIN_OPEN || p->stdin_state == STDIN_CLOSE_PENDING)
			proc_close_stdin(p, STDIN_CLOSED);
		p->conn = NULL;
		proc_set_output_registered(p, true);
	}
	queue_clear(&c->out);
	if (c->shutdown_signal) {
		/* the host went away before reading OK; it asked all the same */
		request_shutdown(a, c->shutdown_signal);
		c->shutdown_signal = 0;
	}
	LIST_RETIRE(a->conns, a->dead_conns, c);
	if (c->is_serial && a->serial.conn == c) {
		a->serial.conn = NULL;
		if (c->saw_frame)
			log_msg("serial session ended; reopening %s", a->serial.path);
		arm_timer(a->serial.timer_fd, SERIAL_RETRY_MS, "serial");
	}
}


void conn_process_input(struct conn *c)
{
	while (!c->closed && !c->input_paused) {
		size_t pending = c->in_len - c->in_start;
		if (pending < FRAME_HEADER_BYTES)
			return;
		struct frame f = frame_header_get(c->in + c->in_start);
		if (f.len > MAX_PAYLOAD) {
			/* the stream cannot be resynchronised: the protocol says to end the connection */
			char why[96];
			snprintf(why, sizeof why, "frame of %u bytes exceeds the maximum %u", f.len, MAX_PAYLOAD);
			conn_close(c, why);
			return;
		}
		if (pending < FRAME_HEADER_BYTES + f.len)
			return;
		c->in_start += FRAME_HEADER_BYTES + f.len;
		if (c->is_serial && !c->saw_frame) {
			c->saw_frame = true;
			log_msg("serial session started on %s", c->agent->serial.path);
		}
		/* the payload stays valid during dispatch: nothing reads into `in` until we return */
		dispatch_request(c, &f);
	}
}

/* Make room in the input buffer to read into, with the whole current frame fitting after in_start. */
static bool conn_make_room(struct conn *c)
{
	size_t pending = c->in_len - c->in_start;
	if (pending == 0)
		c->in_start = c->in_len = 0;
	size_t need = FRAME_HEADER_BYTES;
	if (pending >= FRAME_HEADER_BYTES)
		need += get_u32(c->in + c->in_start); /* already checked against MAX_PAYLOAD */
	size_t cap = need < INPUT_BUFFER_BYTES ? INPUT_BUFFER_BYTES : need;
	/* give back the memory of a big frame once it has been handled */
	if (c->in_cap > INPUT_BUFFER_BYTES && cap == INPUT_BUFFER_BYTES && pending <= INPUT_BUFFER_BYTES) {
		uint8_t *smaller = malloc(INPUT_BUFFER_BYTES);
		if (smaller) {
			if (pending)
				memcpy(smaller, c->in + c->in_start, pending);
			free(c->in);
			c->in = smaller;
			c->in_cap = INPUT_BUFFER_BYTES;
			c->in_start = 0;
			c->in_len = pending;
		}
	}
	/* move the partial frame to the front when it would not fit where it is, or nothing would */
	if (c->in_start > 0 && (c->in_cap < cap || c->in_cap - c->in_start < need || c->in_len == c->in_cap)) {
		memmove(c->in, c->in + c->in_start, pending);
		c->in_start = 0;
		c->in_len = pending;
	}
	if (c->in_cap < cap) {
		uint8_t *bigger = realloc(c->in, cap);
		if (!bigger)
			return false;
		c->in = bigger;
		c->in_cap = cap;
	}
	return c->in_len < c->in_cap;
}

static void conn_read(struct conn *c, uint32_t events)
{
	for (int round = 0; round < READS_PER_EVENT && !c->closed && !c->input_paused; round++) {
		if (!conn_make_room(c)) {
			conn_close(c, "out of memory for the input buffer");
			return;
		}
		ssize_t n = TEMP_FAILURE_RETRY(read(c->fd, c->in + c->in_len, c->in_cap - c->in_len));
		if (n < 0) {
			if (errno == EAGAIN)
				break;
			char why[128];
			snprintf(why, sizeof why, "read: %s", strerror(errno));
			conn_close(c, errno == ECONNRESET ? NULL : why);
			return;
		}
		if (n == 0) {
			/* EOF; on virtio-serial also "host not connected". Quiet: this is the normal end */
			conn_close(c, NULL);
			return;
		}
		c->in_len += (size_t)n;
		conn_process_input(c);
	}
	/* hangup with nothing (more) to read: for virtio-serial the host side is gone */
	if (!c->closed && (events & (EPOLLHUP | EPOLLERR)) && (c->input_paused || !(events & EPOLLIN)))
		conn_close(c, NULL);
}

void on_conn_event(struct conn *c, uint32_t events)
{
	if (c->closed)
		return;
	if (events & EPOLLOUT)
		conn_flush(c);
	if (!c->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		conn_read(c, events);
}

/* ---- checks every request handler makes ---- */

bool check_flags(struct conn *c, const struct frame *f, uint16_t allowed, const char *name)
{
	if (f->flags & ~allowed) {
		send_error(c, f->id, EINVAL, "%s: unknown flags 0x%x", name, (unsigned)(f->flags & ~allowed));
		return false;
	}
	return true;
}

bool check_empty(struct conn *c, const struct frame *f, const char *name)
{
	if (f->len != 0) {
		send_error(c, f->id, EINVAL, "%s: payload must be empty, has %u bytes", name, f->len);
		return false;
	}
	return true;
}

bool check_read(struct conn *c, const struct frame *f, const struct reader *r, const char *name)
{
	if (r->error) {
		send_error(c, f->id, EINVAL, "%s: %s", name, r->error);
		return false;
	}
	return true;
}
