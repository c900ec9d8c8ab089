/*
 * slipway-agent's state and the functions its files share. The files, one job each:
 *   agent.c         the program: options, setup, the event loop, dispatch, PING, SHUTDOWN, SET_HOSTNAME, SET_TIME
 *   agent_proto.c   the wire format (agent_proto.h), no I/O
 *   agent_sys.c     logging, descriptors, epoll and timers
 *   agent_conn.c    a connection: its input, its output queue, flow control, replies
 *   agent_listen.c  the transports: vsock and Unix listeners, the virtio-serial port
 *   agent_exec.c    processes: EXEC, STDIN, SIGNAL, their pipes and reaping
 *   agent_files.c   WRITE_FILE, READ_FILE, SYNC, FSFREEZE
 * The design (ordering, flow control, shutdown) is described at the top of agent.c.
 */
#ifndef SLIPWAY_AGENT_H
#define SLIPWAY_AGENT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "agent_proto.h"

#define AGENT_VSOCK_PORT 1024
#define DEFAULT_SERIAL_PATH "/dev/virtio-ports/org.slipway.agent"
#define DEFAULT_BOOT_TIMES_PATH "/run/slipway/boot-times"

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

/*
 * The agent's live connections and processes are doubly linked lists (a->conns, a->procs). One
 * taken out is pushed on a dead list (a->dead_conns, a->dead_procs, linked through next) and freed
 * after the current batch of events, since another event in that batch may still point at it.
 */
#define LIST_PUSH(head, node)                     \
	do {                                      \
		(node)->prev = NULL;              \
		(node)->next = (head);            \
		if (head)                         \
			(head)->prev = (node);    \
		(head) = (node);                  \
	} while (0)

#define LIST_RETIRE(head, dead, node)                          \
	do {                                                   \
		if ((node)->prev)                              \
			(node)->prev->next = (node)->next;     \
		else                                           \
			(head) = (node)->next;                 \
		if ((node)->next)                              \
			(node)->next->prev = (node)->prev;     \
		(node)->prev = NULL;                           \
		(node)->next = (dead);                         \
		(dead) = (node);                               \
	} while (0)

/* ---- agent_sys.c ---- */

void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* log_msg with ": strerror(errno)" appended; errno is read before anything can change it */
#define log_errno(...)                                                   \
	do {                                                             \
		int saved_errno_ = errno;                                \
		char what_[400];                                         \
		snprintf(what_, sizeof what_, __VA_ARGS__);              \
		log_msg("%s: %s", what_, strerror(saved_errno_));        \
	} while (0)

/* Close *fd unless it is -1, and set it to -1. */
void close_fd(int *fd, const char *what);
bool set_nonblocking(int fd, const char *what);
bool epoll_op(struct agent *a, int op, int fd, uint32_t events, struct watch *w, const char *what);
bool arm_timer(int timer_fd, int delay_ms, const char *what);
void drain_timer(int timer_fd, const char *what);

/* ---- agent_conn.c ---- */

struct chunk *chunk_new(size_t len);
void queue_push(struct byte_queue *q, struct chunk *c);
/* Drop `n` written bytes from the front of the queue. */
void queue_consume(struct byte_queue *q, size_t n);
void queue_clear(struct byte_queue *q);

/* A connection on `fd` (taken over: closed on failure), registered for input. */
struct conn *conn_new(struct agent *a, int fd, bool is_serial);
/* Close it now; it is freed after the current batch of events (free_dead). */
void conn_close(struct conn *c, const char *why);
void on_conn_event(struct conn *c, uint32_t events);
/* Handle every complete frame buffered, unless input is paused. */
void conn_process_input(struct conn *c);
/* Pause or resume reading requests and children's output according to the queue sizes. */
void conn_update_flow(struct conn *c);
/*
 * Queue one frame and try to send it. Returns false when the frame could not be queued (the
 * connection is closed, or out of memory, in which case the connection is closed too: a frame
 * silently missing would leave the host waiting forever).
 */
bool conn_send(struct conn *c, uint16_t type, uint32_t id, const void *payload, size_t len);
void send_ok(struct conn *c, uint32_t id);
void send_error(struct conn *c, uint32_t id, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* send_error for a failed call: the message gets ": strerror(err)" appended */
void send_errno(struct conn *c, uint32_t id, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Answer ERROR EINVAL and return false when the request has flags outside `allowed`, when its
 * payload is not empty, or when reading its fields failed (the reader's message). */
bool check_flags(struct conn *c, const struct frame *f, uint16_t allowed, const char *name);
bool check_empty(struct conn *c, const struct frame *f, const char *name);
bool check_read(struct conn *c, const struct frame *f, const struct reader *r, const char *name);

/* ---- agent_listen.c ---- */

bool listen_vsock(struct agent *a);
bool listen_unix(struct agent *a, const char *path);
void on_accept(struct agent *a, struct listener *l);
void on_accept_timer(struct agent *a);
void serial_open(struct agent *a);
void on_serial_timer(struct agent *a);

/* ---- agent_exec.c ---- */

void handle_exec(struct conn *c, const struct frame *f);
void handle_stdin(struct conn *c, const struct frame *f);
void handle_signal(struct conn *c, const struct frame *f);
void proc_set_output_registered(struct proc *p, bool want);
void proc_close_stdin(struct proc *p, enum stdin_state new_state);
void proc_read_output(struct proc *p, struct output_pipe *pipe);
void proc_write_stdin(struct proc *p);
/* Reap every child that has exited; a command's EXIT goes out once its output has ended too. */
void reap_children(struct agent *a);
void free_proc(struct proc *p);

/* ---- agent_files.c ---- */

void handle_write_file(struct conn *c, const struct frame *f);
void handle_read_file(struct conn *c, const struct frame *f);
void handle_sync(struct conn *c, const struct frame *f);
void handle_fsfreeze(struct conn *c, const struct frame *f);

/* ---- agent.c ---- */

void dispatch_request(struct conn *c, const struct frame *f);
/* Ask init to power off (SIGUSR2) or reboot (SIGTERM), unless --no-shutdown-signal. */
void request_shutdown(struct agent *a, int sig);

#endif
