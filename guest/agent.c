/*
 * slipway-agent: the guest side of the protocol in docs/agent-protocol.md.
 *
 * One single-threaded epoll loop serves every transport at once: AF_VSOCK port 1024, the
 * virtio-serial port org.slipway.agent (one connection, reopened whenever the host side goes away)
 * and, for tests on the host, a Unix socket. Each connection carries many requests at a time,
 * told apart by id; every EXEC'd process has non-blocking pipes in the same loop, and children are
 * reaped through a signalfd.
 *
 * Ordering: a process's output frames are queued in the order they are read, and EXIT is queued
 * only once both its stdout and stderr have reached EOF *and* it has been reaped, so EXIT is always
 * the last frame for its id.
 *
 * Flow control: each connection has one output queue. When it holds QUEUE_HIGH_BYTES or more, the
 * agent stops reading the pipes of that connection's processes (they block on a full pipe) and stops
 * reading requests from the host; both resume under QUEUE_LOW_BYTES. Bytes queued for processes'
 * stdin count the same way against reading more requests.
 *
 * Shutdown: the agent asks init (PID 1), which owns the sequence (sync, stop every process,
 * reboot(2)), with a signal:
 *     SIGUSR2  power off
 *     SIGTERM  reboot
 * (the same signals slipway-init documents; --no-shutdown-signal only logs, for tests on the host).
 * The agent itself exits cleanly on SIGTERM or SIGINT, which is how init stops it.
 *
 * Usage: slipway-agent [--listen-unix PATH] [--serial PATH] [--no-serial] [--no-vsock]
 *                      [--boot-times PATH] [--no-shutdown-signal]
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h> /* FIFREEZE, FITHAW */
#include <linux/vm_sockets.h>

extern char **environ;

#define PROTOCOL_VERSION 1
#define AGENT_VSOCK_PORT 1024
#define DEFAULT_SERIAL_PATH "/dev/virtio-ports/org.slipway.agent"
#define DEFAULT_BOOT_TIMES_PATH "/run/slipway/boot-times"

#define FRAME_HEADER_BYTES 12u
#define MAX_PAYLOAD (1048576u + 65536u)
#define MAX_STRING_BYTES 65536u
#define MAX_STRING_COUNT 4096u
#define MAX_READ_FILE_BYTES 1048576u
#define MAX_OUTPUT_FRAME_BYTES 65536u
#define MAX_BOOT_TIMES_BYTES 65536u

#define QUEUE_HIGH_BYTES (4u << 20)
#define QUEUE_LOW_BYTES (1u << 20)
/* the input buffer a connection keeps between frames; a bigger frame grows it for a while */
#define INPUT_BUFFER_BYTES 65536u
/* reads per event before going back to epoll, so one busy fd cannot starve the others */
#define READS_PER_EVENT 4
#define MAX_EVENTS 64
#define MAX_IOVECS 64

/* virtio-serial reports EPOLLHUP while the host side is not connected, so a closed port is retried
 * on a timer rather than by spinning on the event */
#define SERIAL_RETRY_MS 250
#define SERIAL_MISSING_RETRY_MS 1000
/* out of file descriptors: stop accepting for a moment instead of spinning on the listener */
#define ACCEPT_RETRY_MS 200

enum request_type {
	REQ_PING = 1,
	REQ_EXEC = 2,
	REQ_STDIN = 3,
	REQ_SIGNAL = 4,
	REQ_WRITE_FILE = 5,
	REQ_READ_FILE = 6,
	REQ_SYNC = 7,
	REQ_FSFREEZE = 8,
	REQ_SHUTDOWN = 9,
};

enum reply_type {
	REP_PONG = 0x81,
	REP_STARTED = 0x82,
	REP_STDOUT = 0x83,
	REP_STDERR = 0x84,
	REP_EXIT = 0x85,
	REP_OK = 0x86,
	REP_DATA = 0x87,
	REP_ERROR = 0xff,
};

#define EXEC_FLAG_STDIN 0x1u
#define WRITE_FILE_FLAG_CREATE 0x1u
#define FSFREEZE_FLAG_THAW 0x1u
#define SHUTDOWN_FLAG_REBOOT 0x1u

/* ---- data structures ---- */

/* What an epoll event points at: the kind says which handler, the owner which object. */
enum watch_kind {
	WATCH_LISTENER,
	WATCH_CONN,
	WATCH_SIGNALS,
	WATCH_SERIAL_TIMER,
	WATCH_ACCEPT_TIMER,
	WATCH_PROC_STDOUT,
	WATCH_PROC_STDERR,
	WATCH_PROC_STDIN,
};

struct watch {
	enum watch_kind kind;
	void *owner;
};

/* One queued buffer: a whole frame on a connection, or bytes for a process's stdin. */
struct chunk {
	struct chunk *next;
	size_t len;
	size_t sent;
	uint8_t bytes[];
};

struct byte_queue {
	struct chunk *head;
	struct chunk *tail;
	size_t bytes;
};

struct agent;

struct conn {
	struct watch watch;
	struct agent *agent;
	int fd;
	bool is_serial;
	bool closed;        /* torn down; freed after the current batch of events */
	bool input_paused;  /* not reading requests: too much queued (see flow control above) */
	bool output_paused; /* this connection's processes' pipes are off epoll */
	bool saw_frame;     /* for logging a serial session only when the host really spoke */
	uint32_t registered_events;
	uint8_t *in;
	size_t in_start; /* first unconsumed byte */
	size_t in_len;   /* end of the bytes read */
	size_t in_cap;
	struct byte_queue out;
	size_t stdin_queued; /* bytes waiting in the stdin queues of this connection's processes */
	int shutdown_signal; /* nonzero: signal init with it once `out` has drained */
	struct conn *prev, *next;
};

struct output_pipe {
	struct watch watch;
	int fd;
	bool registered;
	uint16_t reply_type; /* REP_STDOUT or REP_STDERR */
};

enum stdin_state {
	STDIN_NONE,         /* started without the stdin flag: stdin is /dev/null */
	STDIN_OPEN,
	STDIN_CLOSE_PENDING, /* the host closed it; close once the queue has been written */
	STDIN_CLOSED,        /* closed by the host */
	STDIN_BROKEN,        /* the process closed its end; further input is dropped */
};

struct proc {
	struct agent *agent;
	struct conn *conn; /* NULL once its connection is gone: output is read and dropped */
	uint32_t id;
	pid_t pid;
	bool reaped;
	bool dead;
	bool killed; /* SIGKILL sent by the host: once the leader is reaped, output is not waited for */
	int32_t exit_status; /* -1 when killed */
	int32_t exit_signal; /* 0 when it exited */
	struct output_pipe out;
	struct output_pipe err;
	struct watch stdin_watch;
	int stdin_fd;
	bool stdin_registered;
	enum stdin_state stdin_state;
	struct byte_queue stdin_queue;
	struct proc *prev, *next;
};

struct listener {
	struct watch watch;
	const char *what; /* for log lines */
	int fd;
	bool registered;
	const char *unix_path; /* unlinked on exit; NULL for vsock */
};

struct serial_port {
	const char *path;
	bool enabled;
	bool reported_missing; /* say "not there" once, not every second */
	struct conn *conn;
	int timer_fd;
	struct watch timer_watch;
};

struct agent {
	int epoll_fd;
	int signal_fd;
	struct watch signal_watch;
	struct listener vsock;
	struct listener unix_listener;
	int accept_timer_fd;
	struct watch accept_timer_watch;
	struct serial_port serial;
	struct conn *conns;
	struct conn *dead_conns;
	struct proc *procs;
	struct proc *dead_procs;
	const char *boot_times_path;
	bool shutdown_signal_enabled;
	bool stopping;
	uint8_t scratch[MAX_OUTPUT_FRAME_BYTES];
};

/* A request as read off the wire; payload points into the connection's input buffer. */
struct frame {
	uint32_t len;
	uint16_t type;
	uint16_t flags;
	uint32_t id;
	const uint8_t *payload;
};

/* ---- logging ---- */

static void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_msg(const char *fmt, ...)
{
	char line[600];
	int prefix = snprintf(line, sizeof line, "slipway-agent: ");
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line + prefix, sizeof line - (size_t)prefix - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	size_t len = strnlen(line, sizeof line - 1);
	line[len++] = '\n';
	if (write(STDERR_FILENO, line, len) < 0) {
		/* no console: nowhere else to say it */
	}
}

/* log_msg with ": strerror(errno)" appended; errno is read before anything can change it */
#define log_errno(...)                                                   \
	do {                                                             \
		int saved_errno_ = errno;                                \
		char what_[400];                                         \
		snprintf(what_, sizeof what_, __VA_ARGS__);              \
		log_msg("%s: %s", what_, strerror(saved_errno_));        \
	} while (0)

static void close_fd(int *fd, const char *what)
{
	if (*fd < 0)
		return;
	/* on Linux the descriptor is gone even when close fails, so there is nothing to retry */
	if (close(*fd) < 0 && errno != EINTR)
		log_errno("close %s", what);
	*fd = -1;
}

/* ---- little-endian encoding ---- */

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/*
 * A bounded cursor over a request payload. Every read checks what is left; the first failure
 * records why and makes every later read fail too, so a handler can read all its fields and check
 * once. Messages name the field, for the ERROR reply.
 */
struct reader {
	const uint8_t *p;
	size_t left;
	const char *error;
	char error_buf[160];
};

static void reader_fail(struct reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reader_fail(struct reader *r, const char *fmt, ...)
{
	if (r->error)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->error_buf, sizeof r->error_buf, fmt, ap);
	va_end(ap);
	r->error = r->error_buf;
}

static bool read_bytes(struct reader *r, size_t n, const uint8_t **out, const char *field)
{
	if (r->error)
		return false;
	if (n > r->left) {
		reader_fail(r, "%s: needs %zu bytes, %zu left in the payload", field, n, r->left);
		return false;
	}
	*out = r->p;
	r->p += n;
	r->left -= n;
	return true;
}

static uint32_t read_u32(struct reader *r, const char *field)
{
	const uint8_t *p;
	return read_bytes(r, 4, &p, field) ? get_u32(p) : 0;
}

static uint64_t read_u64(struct reader *r, const char *field)
{
	const uint8_t *p;
	return read_bytes(r, 8, &p, field) ? get_u64(p) : 0;
}

/* A string as a NUL-terminated copy (the caller frees it); strings must not contain NUL. */
static char *read_string(struct reader *r, const char *field)
{
	uint32_t len = read_u32(r, field);
	if (r->error)
		return NULL;
	if (len > MAX_STRING_BYTES) {
		reader_fail(r, "%s: string of %u bytes (at most %u)", field, len, MAX_STRING_BYTES);
		return NULL;
	}
	const uint8_t *bytes;
	if (!read_bytes(r, len, &bytes, field))
		return NULL;
	if (memchr(bytes, '\0', len)) {
		reader_fail(r, "%s: string contains a NUL byte", field);
		return NULL;
	}
	char *copy = malloc((size_t)len + 1);
	if (!copy) {
		reader_fail(r, "%s: out of memory", field);
		return NULL;
	}
	memcpy(copy, bytes, len);
	copy[len] = '\0';
	return copy;
}

static void free_string_list(char **list)
{
	if (!list)
		return;
	for (char **s = list; *s; s++)
		free(*s);
	free(list);
}

/* A string list as a NULL-terminated array of copies (free with free_string_list). */
static char **read_string_list(struct reader *r, const char *field, uint32_t *count_out)
{
	uint32_t count = read_u32(r, field);
	if (r->error)
		return NULL;
	if (count > MAX_STRING_COUNT) {
		reader_fail(r, "%s: %u strings (at most %u)", field, count, MAX_STRING_COUNT);
		return NULL;
	}
	/* each string takes at least its 4-byte length: refuse a count the payload cannot hold
	 * before allocating for it */
	if ((size_t)count * 4 > r->left) {
		reader_fail(r, "%s: %u strings cannot fit in the %zu bytes left", field, count, r->left);
		return NULL;
	}
	char **list = calloc((size_t)count + 1, sizeof *list);
	if (!list) {
		reader_fail(r, "%s: out of memory", field);
		return NULL;
	}
	for (uint32_t i = 0; i < count; i++) {
		char name[64];
		snprintf(name, sizeof name, "%s[%u]", field, i);
		list[i] = read_string(r, name);
		if (!list[i]) {
			free_string_list(list);
			return NULL;
		}
	}
	*count_out = count;
	return list;
}

static void reader_expect_end(struct reader *r, const char *what)
{
	if (!r->error && r->left != 0)
		reader_fail(r, "%s: %zu unexpected bytes after the last field", what, r->left);
}

/* ---- queues ---- */

static struct chunk *chunk_new(size_t len)
{
	struct chunk *c = malloc(sizeof *c + len);
	if (!c)
		return NULL;
	c->next = NULL;
	c->len = len;
	c->sent = 0;
	return c;
}

static void queue_push(struct byte_queue *q, struct chunk *c)
{
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
	q->bytes += c->len;
}

/* Drop `n` written bytes from the front of the queue. */
static void queue_consume(struct byte_queue *q, size_t n)
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

static void queue_clear(struct byte_queue *q)
{
	while (q->head) {
		struct chunk *c = q->head;
		q->head = c->next;
		free(c);
	}
	q->tail = NULL;
	q->bytes = 0;
}

/* ---- epoll ---- */

static bool epoll_op(struct agent *a, int op, int fd, uint32_t events, struct watch *w, const char *what)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(a->epoll_fd, op, fd, &ev) < 0) {
		log_errno("epoll_ctl(%s) %s", op == EPOLL_CTL_ADD ? "ADD" : op == EPOLL_CTL_MOD ? "MOD" : "DEL", what);
		return false;
	}
	return true;
}

static bool arm_timer(int timer_fd, int delay_ms, const char *what)
{
	struct itimerspec when = {
		.it_value = { .tv_sec = delay_ms / 1000, .tv_nsec = (long)(delay_ms % 1000) * 1000000L },
	};
	if (timerfd_settime(timer_fd, 0, &when, NULL) < 0) {
		log_errno("timerfd_settime %s", what);
		return false;
	}
	return true;
}

static void drain_timer(int timer_fd, const char *what)
{
	uint64_t expirations;
	if (read(timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN && errno != EINTR)
		log_errno("read %s timer", what);
}

/* ---- connections: output ---- */

static void conn_close(struct conn *c, const char *why);
static void conn_update_flow(struct conn *c);
static void proc_set_output_registered(struct proc *p, bool want);
static void request_shutdown(struct agent *a, int sig);

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
		ssize_t written = writev(c->fd, iov, n);
		if (written < 0) {
			if (errno == EINTR)
				continue;
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
	put_u32(ch->bytes, (uint32_t)payload);
	put_u16(ch->bytes + 4, type);
	put_u16(ch->bytes + 6, 0);
	put_u32(ch->bytes + 8, id);
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

static bool conn_send(struct conn *c, uint16_t type, uint32_t id, const void *payload, size_t len)
{
	return conn_send2(c, type, id, payload, len, NULL, 0);
}

static void send_ok(struct conn *c, uint32_t id)
{
	conn_send(c, REP_OK, id, NULL, 0);
}

static void send_error(struct conn *c, uint32_t id, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void send_error(struct conn *c, uint32_t id, int err, const char *fmt, ...)
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

/* Pause or resume reading requests and children's output according to the queue sizes. */
static void conn_update_flow(struct conn *c)
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

/* ---- processes ---- */

static struct proc *find_proc(struct agent *a, const struct conn *c, uint32_t id)
{
	for (struct proc *p = a->procs; p; p = p->next)
		if (p->conn == c && p->id == id)
			return p;
	return NULL;
}

static void pipe_set_registered(struct agent *a, struct output_pipe *pipe, bool want)
{
	if (pipe->fd < 0 || pipe->registered == want)
		return;
	/* a paused pipe leaves epoll entirely: EPOLLHUP is reported even with no events asked for,
	 * and a writer that has exited would make the loop spin */
	if (epoll_op(a, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, pipe->fd, EPOLLIN, &pipe->watch, "process output pipe"))
		pipe->registered = want;
}

static void proc_set_output_registered(struct proc *p, bool want)
{
	pipe_set_registered(p->agent, &p->out, want);
	pipe_set_registered(p->agent, &p->err, want);
}

static void proc_close_stdin(struct proc *p, enum stdin_state new_state)
{
	if (p->stdin_fd >= 0) {
		if (p->stdin_registered && epoll_op(p->agent, EPOLL_CTL_DEL, p->stdin_fd, 0, &p->stdin_watch, "process stdin pipe"))
			p->stdin_registered = false;
		close_fd(&p->stdin_fd, "process stdin pipe");
	}
	if (p->conn)
		p->conn->stdin_queued -= p->stdin_queue.bytes;
	queue_clear(&p->stdin_queue);
	p->stdin_state = new_state;
	if (p->conn)
		conn_update_flow(p->conn);
}

/* Send EXIT and retire the process once its output has ended and it has been reaped. */
static void proc_maybe_finish(struct proc *p)
{
	if (p->dead || !p->reaped || p->out.fd >= 0 || p->err.fd >= 0)
		return;
	if (p->stdin_state == STDIN_OPEN || p->stdin_state == STDIN_CLOSE_PENDING)
		proc_close_stdin(p, STDIN_BROKEN);
	if (p->conn) {
		uint8_t status[8];
		put_u32(status, (uint32_t)p->exit_status);
		put_u32(status + 4, (uint32_t)p->exit_signal);
		conn_send(p->conn, REP_EXIT, p->id, status, sizeof status);
	}
	struct agent *a = p->agent;
	if (p->prev)
		p->prev->next = p->next;
	else
		a->procs = p->next;
	if (p->next)
		p->next->prev = p->prev;
	/* freed after this batch of events: another event in it may still point here */
	p->dead = true;
	p->prev = NULL;
	p->next = a->dead_procs;
	a->dead_procs = p;
}

static void proc_close_output(struct proc *p, struct output_pipe *pipe)
{
	pipe_set_registered(p->agent, pipe, false);
	close_fd(&pipe->fd, "process output pipe");
	proc_maybe_finish(p);
}

static void proc_read_output(struct proc *p, struct output_pipe *pipe);

/* A killed command whose leader is reaped: take what its pipes hold now, then stop waiting for
 * the rest (a process that left its group may hold them open for ever) and finish. */
static void proc_abandon_output(struct proc *p)
{
	if (!p->killed || !p->reaped)
		return;
	struct output_pipe *pipes[] = { &p->out, &p->err };
	for (size_t i = 0; i < sizeof pipes / sizeof pipes[0] && !p->dead; i++) {
		if (pipes[i]->fd >= 0 && pipes[i]->registered)
			proc_read_output(p, pipes[i]);
		if (!p->dead && pipes[i]->fd >= 0)
			proc_close_output(p, pipes[i]);
	}
}

static void proc_read_output(struct proc *p, struct output_pipe *pipe)
{
	struct agent *a = p->agent;
	for (int round = 0; round < READS_PER_EVENT; round++) {
		/* sending may have paused this pipe (queue over the high mark) */
		if (p->dead || pipe->fd < 0 || !pipe->registered)
			return;
		ssize_t n = read(pipe->fd, a->scratch, sizeof a->scratch);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			log_errno("read output of process %d", (int)p->pid);
			n = 0; /* nothing more will come from it */
		}
		if (n == 0) {
			proc_close_output(p, pipe);
			return;
		}
		if (p->conn)
			conn_send(p->conn, pipe->reply_type, p->id, a->scratch, (size_t)n);
	}
}

static void proc_write_stdin(struct proc *p)
{
	struct byte_queue *q = &p->stdin_queue;
	while (q->head && p->stdin_fd >= 0) {
		struct chunk *ch = q->head;
		ssize_t n = write(p->stdin_fd, ch->bytes + ch->sent, ch->len - ch->sent);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			/* EPIPE: the process closed its stdin or exited; what it did not read is dropped,
			 * as it would be with a shell pipe */
			if (errno != EPIPE)
				log_errno("write stdin of process %d", (int)p->pid);
			proc_close_stdin(p, STDIN_BROKEN);
			return;
		}
		queue_consume(q, (size_t)n);
		if (p->conn)
			p->conn->stdin_queued -= (size_t)n;
	}
	if (!q->head && p->stdin_state == STDIN_CLOSE_PENDING) {
		proc_close_stdin(p, STDIN_CLOSED);
		return;
	}
	bool want = q->head != NULL;
	if (p->stdin_fd >= 0 && want != p->stdin_registered &&
	    epoll_op(p->agent, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, p->stdin_fd, EPOLLOUT, &p->stdin_watch, "process stdin pipe"))
		p->stdin_registered = want;
	if (p->conn)
		conn_update_flow(p->conn);
}

static void free_proc(struct proc *p)
{
	close_fd(&p->out.fd, "process stdout pipe");
	close_fd(&p->err.fd, "process stderr pipe");
	close_fd(&p->stdin_fd, "process stdin pipe");
	queue_clear(&p->stdin_queue);
	free(p);
}

/* ---- connections: lifetime and input ---- */

static struct conn *conn_new(struct agent *a, int fd, bool is_serial)
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
	c->next = a->conns;
	if (a->conns)
		a->conns->prev = c;
	a->conns = c;
	return c;
}

static void conn_close(struct conn *c, const char *why)
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
	if (c->prev)
		c->prev->next = c->next;
	else
		a->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = NULL;
	c->next = a->dead_conns;
	a->dead_conns = c;
	if (c->is_serial && a->serial.conn == c) {
		a->serial.conn = NULL;
		if (c->saw_frame)
			log_msg("serial session ended; reopening %s", a->serial.path);
		arm_timer(a->serial.timer_fd, SERIAL_RETRY_MS, "serial");
	}
}

static void dispatch_request(struct conn *c, const struct frame *f);

/* Handle every complete frame buffered, unless input is paused. */
static void conn_process_input(struct conn *c)
{
	while (!c->closed && !c->input_paused) {
		size_t pending = c->in_len - c->in_start;
		if (pending < FRAME_HEADER_BYTES)
			return;
		const uint8_t *h = c->in + c->in_start;
		struct frame f = {
			.len = get_u32(h),
			.type = get_u16(h + 4),
			.flags = get_u16(h + 6),
			.id = get_u32(h + 8),
			.payload = h + FRAME_HEADER_BYTES,
		};
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
		ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
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

static void on_conn_event(struct conn *c, uint32_t events)
{
	if (c->closed)
		return;
	if (events & EPOLLOUT)
		conn_flush(c);
	if (!c->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		conn_read(c, events);
}

/* ---- request handlers ---- */

static bool check_flags(struct conn *c, const struct frame *f, uint16_t allowed, const char *name)
{
	if (f->flags & ~allowed) {
		send_error(c, f->id, EINVAL, "%s: unknown flags 0x%x", name, (unsigned)(f->flags & ~allowed));
		return false;
	}
	return true;
}

static bool check_empty(struct conn *c, const struct frame *f, const char *name)
{
	if (f->len != 0) {
		send_error(c, f->id, EINVAL, "%s: payload must be empty, has %u bytes", name, f->len);
		return false;
	}
	return true;
}

/* Append the valid `phase.<name> <ns>` lines of the boot-times file to `text`. */
static size_t append_boot_phases(struct agent *a, char *text, size_t cap)
{
	int fd = open(a->boot_times_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT) /* not written yet (or not under init): no phases to report */
			log_errno("open %s", a->boot_times_path);
		return 0;
	}
	char buf[MAX_BOOT_TIMES_BYTES + 1];
	size_t len = 0;
	while (len < sizeof buf - 1) {
		ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_errno("read %s", a->boot_times_path);
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close_fd(&fd, a->boot_times_path);
	buf[len] = '\0';

	size_t used = 0;
	char *line = buf;
	/* only whole lines: init may be rewriting the file while it is read */
	for (char *nl; (nl = memchr(line, '\n', (size_t)(buf + len - line))) != NULL; line = nl + 1) {
		*nl = '\0';
		if (strncmp(line, "phase.", 6) != 0)
			continue;
		char *space = strchr(line, ' ');
		if (!space || space == line + 6)
			continue;
		bool name_ok = true;
		for (char *s = line + 6; s < space; s++)
			if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
				name_ok = false;
		const char *digits = space + 1;
		if (!name_ok || *digits < '0' || *digits > '9')
			continue;
		char *end;
		errno = 0;
		unsigned long long ns = strtoull(digits, &end, 10);
		if (errno != 0 || *end != '\0')
			continue;
		int n = snprintf(text + used, cap - used, "%.*s %llu\n", (int)(space - line), line, ns);
		if (n < 0 || (size_t)n >= cap - used)
			break;
		used += (size_t)n;
	}
	return used;
}

static void handle_ping(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "PING") || !check_empty(c, f, "PING"))
		return;
	/* the phases are at most the file's size; lines are only ever shortened by reformatting */
	size_t cap = MAX_BOOT_TIMES_BYTES + 128;
	char *text = malloc(cap);
	if (!text) {
		send_error(c, f->id, ENOMEM, "PING: out of memory");
		return;
	}
	size_t used = (size_t)snprintf(text, cap, "version %d\n", PROTOCOL_VERSION);
	used += append_boot_phases(c->agent, text + used, cap - used - 64);
	struct timespec now;
	if (clock_gettime(CLOCK_BOOTTIME, &now) < 0) {
		log_errno("clock_gettime(CLOCK_BOOTTIME)");
		now.tv_sec = 0;
		now.tv_nsec = 0;
	}
	unsigned long long uptime_ns = (unsigned long long)now.tv_sec * 1000000000ull + (unsigned long long)now.tv_nsec;
	used += (size_t)snprintf(text + used, cap - used, "uptime %llu\n", uptime_ns);
	conn_send(c, REP_PONG, f->id, text, used);
	free(text);
}

/* What the child tells the parent through the close-on-exec status pipe when it cannot exec. */
struct exec_failure {
	int32_t step; /* enum exec_step */
	int32_t err;
};

enum exec_step {
	STEP_SETSID,
	STEP_DUP2,
	STEP_CHDIR,
	STEP_EXECVE,
};

static const char *const step_names[] = {
	[STEP_SETSID] = "setsid",
	[STEP_DUP2] = "dup2",
	[STEP_CHDIR] = "chdir",
	[STEP_EXECVE] = "execve",
};

struct child_setup {
	char **argv;
	char **envp;
	const char *cwd;
	int stdin_fd;
	int stdout_fd;
	int stderr_fd;
	int status_fd;
};

/* In the forked child: set up, exec, or report which step failed and why, and _exit. (The agent is
 * single-threaded, so the child may call anything; execvpe searching PATH allocates.) */
static void child_exec(const struct child_setup *s) __attribute__((noreturn));
static void child_exec(const struct child_setup *s)
{
	struct exec_failure failure = { .step = STEP_SETSID };
	/* the agent blocks the signals its signalfd reads and ignores SIGPIPE; a mask and ignored
	 * signals survive execve, so give the program the defaults it expects */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	if (setsid() < 0)
		goto fail;
	failure.step = STEP_DUP2;
	/* the agent keeps 0, 1 and 2 open, so these pipe ends are all above 2 and dup2 cannot clobber
	 * one of them; they are close-on-exec, the copies are not */
	if (dup2(s->stdin_fd, STDIN_FILENO) < 0 || dup2(s->stdout_fd, STDOUT_FILENO) < 0 || dup2(s->stderr_fd, STDERR_FILENO) < 0)
		goto fail;
	failure.step = STEP_CHDIR;
	if (chdir(s->cwd) < 0)
		goto fail;
	failure.step = STEP_EXECVE;
	execvpe(s->argv[0], s->argv, s->envp);
fail:
	failure.err = errno;
	if (write(s->status_fd, &failure, sizeof failure) < 0) {
		/* the parent then sees EOF and takes it for success; it will get the exit status 127 */
	}
	_exit(127);
}

static bool make_pipe(int fds[2], const char *what, struct conn *c, uint32_t id)
{
	if (pipe2(fds, O_CLOEXEC) < 0) {
		int err = errno;
		log_errno("pipe2 for %s", what);
		send_error(c, id, err, "EXEC: pipe2 for %s: %s", what, strerror(err));
		return false;
	}
	return true;
}

static bool set_nonblocking(int fd, const char *what)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		log_errno("fcntl(O_NONBLOCK) %s", what);
		return false;
	}
	return true;
}

static void handle_exec(struct conn *c, const struct frame *f)
{
	struct agent *a = c->agent;
	if (!check_flags(c, f, EXEC_FLAG_STDIN, "EXEC"))
		return;
	if (find_proc(a, c, f->id)) {
		send_error(c, f->id, EEXIST, "EXEC: id %u is already running a process", f->id);
		return;
	}
	struct reader r = { .p = f->payload, .left = f->len };
	uint32_t argc = 0, envc = 0;
	char **argv = read_string_list(&r, "argv", &argc);
	char **envp = read_string_list(&r, "env", &envc);
	char *cwd = read_string(&r, "cwd");
	reader_expect_end(&r, "EXEC");
	int fds[4][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 }, { -1, -1 } };
	enum { IN, OUT, ERR, STATUS };
	int null_fd = -1;
	struct proc *p = NULL;

	if (r.error) {
		send_error(c, f->id, EINVAL, "EXEC: %s", r.error);
		goto out;
	}
	if (argc == 0) {
		send_error(c, f->id, EINVAL, "EXEC: argv is empty");
		goto out;
	}
	for (uint32_t i = 0; i < envc; i++) {
		const char *eq = strchr(envp[i], '=');
		if (!eq || eq == envp[i]) {
			send_error(c, f->id, EINVAL, "EXEC: env[%u] is not KEY=VALUE", i);
			goto out;
		}
	}
	p = calloc(1, sizeof *p);
	if (!p) {
		send_error(c, f->id, ENOMEM, "EXEC: out of memory");
		goto out;
	}
	bool with_stdin = f->flags & EXEC_FLAG_STDIN;
	if (with_stdin) {
		if (!make_pipe(fds[IN], "stdin", c, f->id))
			goto out;
	} else {
		null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (null_fd < 0) {
			int err = errno;
			log_errno("open /dev/null");
			send_error(c, f->id, err, "EXEC: open /dev/null: %s", strerror(err));
			goto out;
		}
	}
	if (!make_pipe(fds[OUT], "stdout", c, f->id) || !make_pipe(fds[ERR], "stderr", c, f->id) || !make_pipe(fds[STATUS], "exec status", c, f->id))
		goto out;

	struct child_setup setup = {
		.argv = argv,
		.envp = envc > 0 ? envp : environ,
		.cwd = cwd[0] ? cwd : "/",
		.stdin_fd = with_stdin ? fds[IN][0] : null_fd,
		.stdout_fd = fds[OUT][1],
		.stderr_fd = fds[ERR][1],
		.status_fd = fds[STATUS][1],
	};
	pid_t pid = fork();
	if (pid < 0) {
		int err = errno;
		log_errno("fork");
		send_error(c, f->id, err, "EXEC: fork: %s", strerror(err));
		goto out;
	}
	if (pid == 0)
		child_exec(&setup);

	/* the child's ends; then the status pipe reads EOF exactly when execve succeeds */
	close_fd(&fds[IN][0], "child stdin");
	close_fd(&null_fd, "/dev/null");
	close_fd(&fds[OUT][1], "child stdout");
	close_fd(&fds[ERR][1], "child stderr");
	close_fd(&fds[STATUS][1], "exec status");
	struct exec_failure failure;
	size_t got = 0;
	/* blocking, but only for as long as the child takes to reach execve */
	while (got < sizeof failure) {
		ssize_t n = read(fds[STATUS][0], (char *)&failure + got, sizeof failure - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			log_errno("read exec status of process %d", (int)pid);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got == sizeof failure) {
		/* reap it here, so the SIGCHLD handler never sees a pid it does not know */
		while (waitpid(pid, NULL, 0) < 0) {
			if (errno != EINTR) {
				log_errno("waitpid %d", (int)pid);
				break;
			}
		}
		const char *step = failure.step >= 0 && failure.step <= STEP_EXECVE ? step_names[failure.step] : "exec";
		const char *subject = failure.step == STEP_CHDIR ? setup.cwd : argv[0];
		send_error(c, f->id, failure.err, "EXEC: %s %s: %s", step, subject, strerror(failure.err));
		goto out;
	}

	p->agent = a;
	p->conn = c;
	p->id = f->id;
	p->pid = pid;
	p->out = (struct output_pipe){ .watch = { WATCH_PROC_STDOUT, p }, .fd = fds[OUT][0], .reply_type = REP_STDOUT };
	p->err = (struct output_pipe){ .watch = { WATCH_PROC_STDERR, p }, .fd = fds[ERR][0], .reply_type = REP_STDERR };
	p->stdin_watch = (struct watch){ WATCH_PROC_STDIN, p };
	p->stdin_fd = fds[IN][1];
	p->stdin_state = with_stdin ? STDIN_OPEN : STDIN_NONE;
	fds[OUT][0] = fds[ERR][0] = fds[IN][1] = -1;
	/* a failure here leaves the fd blocking; reads only happen after EPOLLIN, so at worst a read
	 * waits for data that is already announced */
	set_nonblocking(p->out.fd, "stdout pipe");
	set_nonblocking(p->err.fd, "stderr pipe");
	if (p->stdin_fd >= 0)
		set_nonblocking(p->stdin_fd, "stdin pipe");
	p->next = a->procs;
	if (a->procs)
		a->procs->prev = p;
	a->procs = p;
	uint8_t pid_le[4];
	put_u32(pid_le, (uint32_t)pid);
	conn_send(c, REP_STARTED, f->id, pid_le, sizeof pid_le);
	/* STARTED is queued before any output can be. While the connection's output is paused the
	 * pipes wait for conn_update_flow; once it is closed they are read and dropped */
	if (c->closed || !c->output_paused)
		proc_set_output_registered(p, true);
	p = NULL;

out:
	for (int i = 0; i < 4; i++) {
		close_fd(&fds[i][0], "exec pipe");
		close_fd(&fds[i][1], "exec pipe");
	}
	close_fd(&null_fd, "/dev/null");
	free(p);
	free_string_list(argv);
	free_string_list(envp);
	free(cwd);
}

static void handle_stdin(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "STDIN"))
		return;
	struct proc *p = find_proc(c->agent, c, f->id);
	if (!p) {
		send_error(c, f->id, ESRCH, "STDIN: no process with id %u", f->id);
		return;
	}
	switch (p->stdin_state) {
	case STDIN_NONE:
		send_error(c, f->id, EBADF, "STDIN: process %u was started without stdin", f->id);
		return;
	case STDIN_CLOSE_PENDING:
	case STDIN_CLOSED:
		send_error(c, f->id, EBADF, "STDIN: stdin of process %u is already closed", f->id);
		return;
	case STDIN_BROKEN:
		return; /* the process stopped reading; drop it, as a pipe would */
	case STDIN_OPEN:
		break;
	}
	if (f->len == 0) {
		p->stdin_state = STDIN_CLOSE_PENDING;
		proc_write_stdin(p);
		return;
	}
	struct chunk *ch = chunk_new(f->len);
	if (!ch) {
		send_error(c, f->id, ENOMEM, "STDIN: out of memory");
		return;
	}
	memcpy(ch->bytes, f->payload, f->len);
	queue_push(&p->stdin_queue, ch);
	c->stdin_queued += f->len;
	proc_write_stdin(p);
}

static void handle_signal(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SIGNAL"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	int32_t sig = (int32_t)read_u32(&r, "signal");
	reader_expect_end(&r, "SIGNAL");
	if (r.error) {
		send_error(c, f->id, EINVAL, "SIGNAL: %s", r.error);
		return;
	}
	struct proc *p = find_proc(c->agent, c, f->id);
	if (!p) {
		send_error(c, f->id, ESRCH, "SIGNAL: no process with id %u", f->id);
		return;
	}
	if (sig < 0 || sig >= NSIG) {
		send_error(c, f->id, EINVAL, "SIGNAL: %d is not a signal number", sig);
		return;
	}
	/* The command runs in its own session (setsid in child_exec), so its process group is its
	 * pid: signal the whole group (a shell's children too), also after the leader was reaped.
	 * Linux does not reuse a pid while it still names a live process group, so -pid reaches only
	 * this command's processes; once the group is empty, kill says ESRCH. */
	if (kill(-p->pid, sig) < 0) {
		int err = errno;
		if (err == ESRCH && p->reaped)
			send_error(c, f->id, ESRCH, "SIGNAL: process %u and its process group have exited", f->id);
		else
			send_error(c, f->id, err, "SIGNAL: kill -%d: %s", (int)p->pid, strerror(err));
		return;
	}
	send_ok(c, f->id);
	if (sig == SIGKILL) {
		p->killed = true;
		proc_abandon_output(p);
	}
}

static bool check_path(struct conn *c, const struct frame *f, const char *path, const char *name)
{
	if (path[0] != '/') {
		send_error(c, f->id, EINVAL, "%s: path must be absolute", name);
		return false;
	}
	return true;
}

static void handle_write_file(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, WRITE_FILE_FLAG_CREATE, "WRITE_FILE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *path = read_string(&r, "path");
	uint32_t mode = read_u32(&r, "mode");
	uint64_t offset = read_u64(&r, "offset");
	const uint8_t *data = r.p;
	size_t data_len = r.left;
	int fd = -1;
	if (r.error) {
		send_error(c, f->id, EINVAL, "WRITE_FILE: %s", r.error);
		goto out;
	}
	if (!check_path(c, f, path, "WRITE_FILE"))
		goto out;
	if (mode & ~07777u) {
		send_error(c, f->id, EINVAL, "WRITE_FILE: mode 0%o has bits other than permissions", mode);
		goto out;
	}
	if (offset > (uint64_t)INT64_MAX - data_len) {
		send_error(c, f->id, EFBIG, "WRITE_FILE: offset %llu is too large", (unsigned long long)offset);
		goto out;
	}
	bool create = f->flags & WRITE_FILE_FLAG_CREATE;
	/* O_NONBLOCK: a FIFO or a device must answer ENXIO or EAGAIN, not hang the whole agent */
	fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (create ? O_CREAT | O_TRUNC : 0), (mode_t)mode);
	if (fd < 0) {
		int err = errno;
		send_error(c, f->id, err, "WRITE_FILE: open %s: %s", path, strerror(err));
		goto out;
	}
	/* the mode given is the mode wanted: neither the umask nor an existing file's mode wins */
	if (create && fchmod(fd, (mode_t)mode) < 0) {
		int err = errno;
		send_error(c, f->id, err, "WRITE_FILE: fchmod %s: %s", path, strerror(err));
		goto out;
	}
	size_t done = 0;
	while (done < data_len) {
		ssize_t n = pwrite(fd, data + done, data_len - done, (off_t)(offset + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? errno : EIO;
			send_error(c, f->id, err, "WRITE_FILE: write %s: %s", path, strerror(err));
			goto out;
		}
		done += (size_t)n;
	}
	if (close(fd) < 0) {
		/* a deferred write error (NFS, quota) shows up here, and the host must hear of it */
		int err = errno;
		fd = -1;
		send_error(c, f->id, err, "WRITE_FILE: close %s: %s", path, strerror(err));
		goto out;
	}
	fd = -1;
	send_ok(c, f->id);
out:
	close_fd(&fd, "WRITE_FILE target");
	free(path);
}

static void handle_read_file(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "READ_FILE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *path = read_string(&r, "path");
	uint64_t offset = read_u64(&r, "offset");
	uint32_t max_len = read_u32(&r, "max length");
	reader_expect_end(&r, "READ_FILE");
	int fd = -1;
	uint8_t *data = NULL;
	if (r.error) {
		send_error(c, f->id, EINVAL, "READ_FILE: %s", r.error);
		goto out;
	}
	if (max_len > MAX_READ_FILE_BYTES) {
		send_error(c, f->id, EINVAL, "READ_FILE: max length %u exceeds %u", max_len, MAX_READ_FILE_BYTES);
		goto out;
	}
	if (offset > (uint64_t)INT64_MAX - max_len) {
		send_error(c, f->id, EINVAL, "READ_FILE: offset %llu is too large", (unsigned long long)offset);
		goto out;
	}
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (pread on it then fails, ESPIPE) */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		int err = errno;
		send_error(c, f->id, err, "READ_FILE: open %s: %s", path, strerror(err));
		goto out;
	}
	data = malloc(max_len ? max_len : 1);
	if (!data) {
		send_error(c, f->id, ENOMEM, "READ_FILE: out of memory");
		goto out;
	}
	/* fill the buffer: a short DATA means end of file, and pread may return less before it */
	size_t got = 0;
	while (got < max_len) {
		ssize_t n = pread(fd, data + got, max_len - got, (off_t)(offset + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = errno;
			send_error(c, f->id, err, "READ_FILE: read %s: %s", path, strerror(err));
			goto out;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	conn_send(c, REP_DATA, f->id, data, got);
out:
	close_fd(&fd, "READ_FILE source");
	free(data);
	free(path);
}

static void handle_sync(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SYNC") || !check_empty(c, f, "SYNC"))
		return;
	sync(); /* cannot fail */
	send_ok(c, f->id);
}

static void handle_fsfreeze(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, FSFREEZE_FLAG_THAW, "FSFREEZE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *mountpoint = read_string(&r, "mount point");
	reader_expect_end(&r, "FSFREEZE");
	bool thaw = f->flags & FSFREEZE_FLAG_THAW;
	const char *op = thaw ? "FITHAW" : "FIFREEZE";
	int fd = -1;
	if (r.error) {
		send_error(c, f->id, EINVAL, "FSFREEZE: %s", r.error);
		goto out;
	}
	if (!check_path(c, f, mountpoint, "FSFREEZE"))
		goto out;
	fd = open(mountpoint, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
	if (fd < 0) {
		int err = errno;
		send_error(c, f->id, err, "FSFREEZE: open %s: %s", mountpoint, strerror(err));
		goto out;
	}
	if (ioctl(fd, thaw ? FITHAW : FIFREEZE, 0) < 0) {
		int err = errno;
		send_error(c, f->id, err, "FSFREEZE: %s %s: %s", op, mountpoint, strerror(err));
		goto out;
	}
	log_msg("%s %s", op, mountpoint);
	send_ok(c, f->id);
out:
	close_fd(&fd, "FSFREEZE mount point");
	free(mountpoint);
}

static void request_shutdown(struct agent *a, int sig)
{
	const char *what = sig == SIGTERM ? "reboot" : "power off";
	if (!a->shutdown_signal_enabled) {
		log_msg("%s requested; --no-shutdown-signal given, not signalling init", what);
		return;
	}
	log_msg("%s requested; signalling init", what);
	if (kill(1, sig) < 0)
		log_errno("kill(1, %s)", sig == SIGTERM ? "SIGTERM" : "SIGUSR2");
}

static void handle_shutdown(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, SHUTDOWN_FLAG_REBOOT, "SHUTDOWN") || !check_empty(c, f, "SHUTDOWN"))
		return;
	/* init starts stopping processes at once, this agent among them: the OK must reach the host
	 * first, so init is signalled when this connection's queue has drained (conn_flush) */
	c->shutdown_signal = (f->flags & SHUTDOWN_FLAG_REBOOT) ? SIGTERM : SIGUSR2;
	send_ok(c, f->id);
}

static void dispatch_request(struct conn *c, const struct frame *f)
{
	switch (f->type) {
	case REQ_PING:
		handle_ping(c, f);
		break;
	case REQ_EXEC:
		handle_exec(c, f);
		break;
	case REQ_STDIN:
		handle_stdin(c, f);
		break;
	case REQ_SIGNAL:
		handle_signal(c, f);
		break;
	case REQ_WRITE_FILE:
		handle_write_file(c, f);
		break;
	case REQ_READ_FILE:
		handle_read_file(c, f);
		break;
	case REQ_SYNC:
		handle_sync(c, f);
		break;
	case REQ_FSFREEZE:
		handle_fsfreeze(c, f);
		break;
	case REQ_SHUTDOWN:
		handle_shutdown(c, f);
		break;
	default:
		send_error(c, f->id, EINVAL, "unknown request type %u", (unsigned)f->type);
		break;
	}
}

/* ---- children ---- */

static void reap_children(struct agent *a)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid == 0)
			return;
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			if (errno != ECHILD)
				log_errno("waitpid");
			return;
		}
		struct proc *p = NULL;
		for (struct proc *q = a->procs; q; q = q->next)
			if (q->pid == pid && !q->reaped)
				p = q;
		if (!p)
			continue;
		p->reaped = true;
		if (WIFSIGNALED(status)) {
			p->exit_status = -1;
			p->exit_signal = WTERMSIG(status);
		} else {
			p->exit_status = WEXITSTATUS(status);
			p->exit_signal = 0;
		}
		proc_abandon_output(p);
		proc_maybe_finish(p);
	}
}

static void on_signals(struct agent *a)
{
	for (;;) {
		struct signalfd_siginfo info;
		ssize_t n = read(a->signal_fd, &info, sizeof info);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				log_errno("read signalfd");
			break;
		}
		if ((size_t)n < sizeof info)
			break;
		if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT)
			a->stopping = true;
	}
	/* SIGCHLD coalesces: one signal may stand for many exits, so reap them all */
	reap_children(a);
}

/* ---- listeners and the serial port ---- */

static void on_accept(struct agent *a, struct listener *l)
{
	for (int i = 0; i < 16; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			conn_new(a, fd, false);
			continue;
		}
		switch (errno) {
		case EINTR:
		case ECONNABORTED:
		case EPROTO:
			continue;
		case EAGAIN:
			return;
		case EMFILE:
		case ENFILE:
		case ENOBUFS:
		case ENOMEM:
			/* the listener would stay readable and the loop would spin: pause it a moment */
			log_errno("accept on %s; pausing it for %d ms", l->what, ACCEPT_RETRY_MS);
			if (epoll_op(a, EPOLL_CTL_DEL, l->fd, 0, &l->watch, l->what))
				l->registered = false;
			arm_timer(a->accept_timer_fd, ACCEPT_RETRY_MS, "accept");
			return;
		default:
			log_errno("accept on %s", l->what);
			return;
		}
	}
}

static void on_accept_timer(struct agent *a)
{
	drain_timer(a->accept_timer_fd, "accept");
	struct listener *all[] = { &a->vsock, &a->unix_listener };
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		struct listener *l = all[i];
		if (l->fd >= 0 && !l->registered && epoll_op(a, EPOLL_CTL_ADD, l->fd, EPOLLIN, &l->watch, l->what))
			l->registered = true;
	}
}

static void serial_open(struct agent *a)
{
	struct serial_port *s = &a->serial;
	struct stat st;
	if (stat(s->path, &st) < 0) {
		if (errno != ENOENT)
			log_errno("stat %s", s->path);
		else if (!s->reported_missing)
			log_msg("%s does not exist (yet); checking every %d ms", s->path, SERIAL_MISSING_RETRY_MS);
		s->reported_missing = true;
		arm_timer(s->timer_fd, SERIAL_MISSING_RETRY_MS, "serial");
		return;
	}
	int fd;
	if (S_ISSOCK(st.st_mode)) {
		/* a Unix socket stands in for the port in tests, as QEMU's chardev does on the host */
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		if (strlen(s->path) >= sizeof addr.sun_path) {
			log_msg("serial path %s is too long for a Unix socket", s->path);
			return;
		}
		strcpy(addr.sun_path, s->path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			log_errno("socket(AF_UNIX) for %s", s->path);
			arm_timer(s->timer_fd, SERIAL_RETRY_MS, "serial");
			return;
		}
		if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || !set_nonblocking(fd, s->path)) {
			if (errno != ECONNREFUSED && errno != ENOENT)
				log_errno("connect %s", s->path);
			close_fd(&fd, s->path);
			arm_timer(s->timer_fd, SERIAL_RETRY_MS, "serial");
			return;
		}
	} else {
		fd = open(s->path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0) {
			/* EBUSY: still held by a previous opener; ENXIO, ENODEV: device going away. These pass */
			if (errno != EBUSY && errno != ENXIO && errno != ENODEV)
				log_errno("open %s", s->path);
			arm_timer(s->timer_fd, SERIAL_RETRY_MS, "serial");
			return;
		}
	}
	s->reported_missing = false;
	s->conn = conn_new(a, fd, true);
	if (!s->conn)
		arm_timer(s->timer_fd, SERIAL_RETRY_MS, "serial");
}

static void on_serial_timer(struct agent *a)
{
	drain_timer(a->serial.timer_fd, "serial");
	if (!a->serial.conn)
		serial_open(a);
}

static bool listen_vsock(struct agent *a)
{
	struct listener *l = &a->vsock;
	l->fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		if (errno == EAFNOSUPPORT || errno == ENODEV)
			log_msg("no vsock in this kernel (%s); serving the other transports", strerror(errno));
		else
			log_errno("socket(AF_VSOCK)");
		return false;
	}
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = AGENT_VSOCK_PORT };
	if (bind(l->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		/* no vsock transport (no device) gives EADDRNOTAVAIL: carry on with the others */
		log_errno("bind vsock port %d", AGENT_VSOCK_PORT);
		close_fd(&l->fd, "vsock listener");
		return false;
	}
	if (listen(l->fd, 64) < 0) {
		log_errno("listen on vsock port %d", AGENT_VSOCK_PORT);
		close_fd(&l->fd, "vsock listener");
		return false;
	}
	return true;
}

static bool listen_unix(struct agent *a, const char *path)
{
	struct listener *l = &a->unix_listener;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof addr.sun_path) {
		log_msg("--listen-unix %s: path longer than %zu bytes", path, sizeof addr.sun_path - 1);
		return false;
	}
	strcpy(addr.sun_path, path);
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		log_errno("socket(AF_UNIX)");
		return false;
	}
	/* a socket left by an earlier run that died would make bind fail */
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && unlink(path) < 0)
		log_errno("unlink stale socket %s", path);
	if (bind(l->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		log_errno("bind %s", path);
		close_fd(&l->fd, "unix listener");
		return false;
	}
	l->unix_path = path;
	if (listen(l->fd, 64) < 0) {
		log_errno("listen on %s", path);
		close_fd(&l->fd, "unix listener");
		return false;
	}
	return true;
}

/* ---- main loop ---- */

static void free_dead(struct agent *a)
{
	while (a->dead_conns) {
		struct conn *c = a->dead_conns;
		a->dead_conns = c->next;
		queue_clear(&c->out);
		free(c->in);
		free(c);
	}
	while (a->dead_procs) {
		struct proc *p = a->dead_procs;
		a->dead_procs = p->next;
		free_proc(p);
	}
}

static void on_event(struct agent *a, struct watch *w, uint32_t events)
{
	switch (w->kind) {
	case WATCH_LISTENER:
		on_accept(a, w->owner);
		break;
	case WATCH_CONN:
		on_conn_event(w->owner, events);
		break;
	case WATCH_SIGNALS:
		on_signals(a);
		break;
	case WATCH_SERIAL_TIMER:
		on_serial_timer(a);
		break;
	case WATCH_ACCEPT_TIMER:
		on_accept_timer(a);
		break;
	case WATCH_PROC_STDOUT:
	case WATCH_PROC_STDERR: {
		struct proc *p = w->owner;
		if (!p->dead)
			proc_read_output(p, w->kind == WATCH_PROC_STDOUT ? &p->out : &p->err);
		break;
	}
	case WATCH_PROC_STDIN: {
		struct proc *p = w->owner;
		if (!p->dead)
			proc_write_stdin(p);
		break;
	}
	}
}

static void run_loop(struct agent *a)
{
	struct epoll_event events[MAX_EVENTS];
	while (!a->stopping) {
		int n = epoll_wait(a->epoll_fd, events, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_errno("epoll_wait");
			return;
		}
		for (int i = 0; i < n; i++)
			on_event(a, events[i].data.ptr, events[i].events);
		/* frames left buffered while a connection's input was paused, now that it may not be */
		for (struct conn *c = a->conns, *next; c; c = next) {
			next = c->next;
			conn_process_input(c);
		}
		free_dead(a);
	}
}

static void agent_cleanup(struct agent *a)
{
	while (a->conns)
		conn_close(a->conns, NULL);
	/* processes still running are left to init; only our bookkeeping goes */
	while (a->procs) {
		struct proc *p = a->procs;
		a->procs = p->next;
		free_proc(p);
	}
	free_dead(a);
	close_fd(&a->vsock.fd, "vsock listener");
	close_fd(&a->unix_listener.fd, "unix listener");
	if (a->unix_listener.unix_path && unlink(a->unix_listener.unix_path) < 0 && errno != ENOENT)
		log_errno("unlink %s", a->unix_listener.unix_path);
	close_fd(&a->serial.timer_fd, "serial timer");
	close_fd(&a->accept_timer_fd, "accept timer");
	close_fd(&a->signal_fd, "signalfd");
	close_fd(&a->epoll_fd, "epoll");
}

struct options {
	const char *listen_unix;
	const char *serial_path;
	const char *boot_times;
	bool serial;
	bool vsock;
	bool shutdown_signal;
};

static int usage(const char *problem)
{
	fprintf(stderr, "slipway-agent: %s\n"
			"usage: slipway-agent [--listen-unix PATH] [--serial PATH] [--no-serial] [--no-vsock]\n"
			"                     [--boot-times PATH] [--no-shutdown-signal]\n",
		problem);
	return 2;
}

static bool parse_options(int argc, char **argv, struct options *o, int *exit_code)
{
	*o = (struct options){
		.serial_path = DEFAULT_SERIAL_PATH,
		.boot_times = DEFAULT_BOOT_TIMES_PATH,
		.serial = true,
		.vsock = true,
		.shutdown_signal = true,
	};
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char **value = NULL;
		if (strcmp(arg, "--listen-unix") == 0)
			value = &o->listen_unix;
		else if (strcmp(arg, "--serial") == 0)
			value = &o->serial_path;
		else if (strcmp(arg, "--boot-times") == 0)
			value = &o->boot_times;
		else if (strcmp(arg, "--no-serial") == 0)
			o->serial = false;
		else if (strcmp(arg, "--no-vsock") == 0)
			o->vsock = false;
		else if (strcmp(arg, "--no-shutdown-signal") == 0)
			o->shutdown_signal = false;
		else {
			char problem[300];
			snprintf(problem, sizeof problem, "unknown argument %s", arg);
			*exit_code = usage(problem);
			return false;
		}
		if (value) {
			if (i + 1 >= argc || argv[i + 1][0] == '\0') {
				char problem[300];
				snprintf(problem, sizeof problem, "%s needs a value", arg);
				*exit_code = usage(problem);
				return false;
			}
			*value = argv[++i];
		}
	}
	return true;
}

/* Children get their stdio by dup2 onto 0, 1 and 2; if those were closed, a pipe could land there. */
static bool ensure_std_fds(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int null_fd = open("/dev/null", O_RDWR);
		if (null_fd < 0) {
			log_errno("open /dev/null");
			return false;
		}
		if (null_fd != fd) {
			/* lowest free descriptor is this one, so open returned it; anything else is odd */
			log_msg("open /dev/null returned %d, expected %d", null_fd, fd);
			return false;
		}
	}
	return true;
}

static int setup_agent(struct agent *a, const struct options *o)
{
	a->boot_times_path = o->boot_times;
	a->shutdown_signal_enabled = o->shutdown_signal;
	a->vsock = (struct listener){ .watch = { WATCH_LISTENER, &a->vsock }, .what = "vsock listener", .fd = -1 };
	a->unix_listener = (struct listener){ .watch = { WATCH_LISTENER, &a->unix_listener }, .what = "unix listener", .fd = -1 };
	a->serial = (struct serial_port){ .path = o->serial_path, .enabled = o->serial, .timer_fd = -1, .timer_watch = { WATCH_SERIAL_TIMER, a } };
	a->signal_watch = (struct watch){ WATCH_SIGNALS, a };
	a->accept_timer_watch = (struct watch){ WATCH_ACCEPT_TIMER, a };
	a->signal_fd = a->accept_timer_fd = -1;

	a->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (a->epoll_fd < 0) {
		log_errno("epoll_create1");
		return 1;
	}
	/* a host that disconnects mid-write must not kill the agent */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		log_errno("signal(SIGPIPE)");
		return 1;
	}
	sigset_t handled;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	if (sigprocmask(SIG_BLOCK, &handled, NULL) < 0) {
		log_errno("sigprocmask");
		return 1;
	}
	a->signal_fd = signalfd(-1, &handled, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a->signal_fd < 0) {
		log_errno("signalfd");
		return 1;
	}
	if (!epoll_op(a, EPOLL_CTL_ADD, a->signal_fd, EPOLLIN, &a->signal_watch, "signalfd"))
		return 1;
	a->accept_timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	a->serial.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (a->accept_timer_fd < 0 || a->serial.timer_fd < 0) {
		log_errno("timerfd_create");
		return 1;
	}
	if (!epoll_op(a, EPOLL_CTL_ADD, a->accept_timer_fd, EPOLLIN, &a->accept_timer_watch, "accept timer") ||
	    !epoll_op(a, EPOLL_CTL_ADD, a->serial.timer_fd, EPOLLIN, &a->serial.timer_watch, "serial timer"))
		return 1;

	bool serving = false;
	if (o->vsock && listen_vsock(a)) {
		if (!epoll_op(a, EPOLL_CTL_ADD, a->vsock.fd, EPOLLIN, &a->vsock.watch, a->vsock.what))
			return 1;
		a->vsock.registered = true;
		serving = true;
	}
	if (o->listen_unix) {
		/* asked for explicitly: failing to serve it is fatal */
		if (!listen_unix(a, o->listen_unix))
			return 1;
		if (!epoll_op(a, EPOLL_CTL_ADD, a->unix_listener.fd, EPOLLIN, &a->unix_listener.watch, a->unix_listener.what))
			return 1;
		a->unix_listener.registered = true;
		serving = true;
	}
	if (a->serial.enabled) {
		serial_open(a);
		serving = true;
	}
	if (!serving) {
		log_msg("no transport to serve (vsock unavailable, no serial port, no --listen-unix)");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct options opts;
	int exit_code = 0;
	if (!parse_options(argc, argv, &opts, &exit_code))
		return exit_code;
	if (!ensure_std_fds())
		return 1;
	/* relative READ_FILE paths and the agent's own cwd should not pin whatever it started in */
	if (chdir("/") < 0) {
		log_errno("chdir /");
		return 1;
	}
	/* the agent struct holds a 64 KiB scratch buffer: keep it off the stack */
	struct agent *a = calloc(1, sizeof *a);
	if (!a) {
		log_msg("out of memory");
		return 1;
	}
	exit_code = setup_agent(a, &opts);
	if (exit_code == 0)
		run_loop(a);
	agent_cleanup(a);
	free(a);
	return exit_code;
}
