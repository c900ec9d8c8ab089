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
 * The files, one job each, are listed in agent.h.
 *
 * Usage: slipway-agent [--listen-unix PATH] [--serial PATH] [--no-serial] [--no-vsock]
 *                      [--boot-times PATH] [--no-shutdown-signal]
 */
#include "agent.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* ---- requests answered here ---- */

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
		ssize_t n = TEMP_FAILURE_RETRY(read(fd, buf + len, sizeof buf - 1 - len));
		if (n < 0) {
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

void request_shutdown(struct agent *a, int sig)
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

/* a host name as sethostname(2) takes it and RFC 1123 allows: letters, digits, '-' and '.' */
static bool valid_hostname(const char *name)
{
	size_t len = strlen(name);
	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		char ch = name[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.'))
			return false;
	}
	return true;
}

/* SET_HOSTNAME: a restored clone takes its own name without a process started for it */
static void handle_set_hostname(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SET_HOSTNAME"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *name = read_string(&r, "host name");
	reader_expect_end(&r, "SET_HOSTNAME");
	if (!check_read(c, f, &r, "SET_HOSTNAME"))
		goto out;
	if (!valid_hostname(name)) {
		send_error(c, f->id, EINVAL, "SET_HOSTNAME: not a host name (1-64 letters, digits, '-' or '.')");
		goto out;
	}
	if (sethostname(name, strlen(name)) < 0) {
		send_errno(c, f->id, errno, "SET_HOSTNAME: sethostname");
		goto out;
	}
	send_ok(c, f->id);
out:
	free(name);
}

/* SET_TIME refuses times before 2000-01-01 (a zero or garbage is no clock to step to) */
#define EARLIEST_TIME_NS (946684800ull * 1000000000ull)

/* SET_TIME: a restored VM's clock is where it was when the snapshot was taken; the host steps it
 * to its own (u64 nanoseconds since the Unix epoch, CLOCK_REALTIME) */
static void handle_set_time(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SET_TIME"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	uint64_t ns = read_u64(&r, "time");
	reader_expect_end(&r, "SET_TIME");
	if (!check_read(c, f, &r, "SET_TIME"))
		return;
	if (ns < EARLIEST_TIME_NS || ns / 1000000000ull > (uint64_t)INT32_MAX * 4) {
		send_error(c, f->id, EINVAL, "SET_TIME: %llu ns since the epoch is not a time to set", (unsigned long long)ns);
		return;
	}
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };
	if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
		send_errno(c, f->id, errno, "SET_TIME: clock_settime");
		return;
	}
	send_ok(c, f->id);
}

typedef void (*request_handler)(struct conn *c, const struct frame *f);

/* each request type's handler, by type; a type without one is answered ERROR EINVAL */
static const request_handler request_handlers[] = {
	[REQ_PING] = handle_ping,
	[REQ_EXEC] = handle_exec,
	[REQ_STDIN] = handle_stdin,
	[REQ_SIGNAL] = handle_signal,
	[REQ_WRITE_FILE] = handle_write_file,
	[REQ_READ_FILE] = handle_read_file,
	[REQ_SYNC] = handle_sync,
	[REQ_FSFREEZE] = handle_fsfreeze,
	[REQ_SHUTDOWN] = handle_shutdown,
	[REQ_SET_HOSTNAME] = handle_set_hostname,
	[REQ_SET_TIME] = handle_set_time,
};

void dispatch_request(struct conn *c, const struct frame *f)
{
	size_t n = sizeof request_handlers / sizeof request_handlers[0];
	request_handler handle = f->type < n ? request_handlers[f->type] : NULL;
	if (!handle) {
		send_error(c, f->id, EINVAL, "unknown request type %u", (unsigned)f->type);
		return;
	}
	handle(c, f);
}

/* ---- the loop ---- */

static void on_signals(struct agent *a)
{
	for (;;) {
		struct signalfd_siginfo info;
		ssize_t n = TEMP_FAILURE_RETRY(read(a->signal_fd, &info, sizeof info));
		if (n < 0) {
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
		int n = TEMP_FAILURE_RETRY(epoll_wait(a->epoll_fd, events, MAX_EVENTS, -1));
		if (n < 0) {
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
