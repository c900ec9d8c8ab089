/* slipway-agent's small system helpers: the log, descriptors, epoll and timers. */
#include "agent.h"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

void log_msg(const char *fmt, ...)
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

void close_fd(int *fd, const char *what)
{
	if (*fd < 0)
		return;
	/* on Linux the descriptor is gone even when close fails, so there is nothing to retry */
	if (close(*fd) < 0 && errno != EINTR)
		log_errno("close %s", what);
	*fd = -1;
}

bool set_nonblocking(int fd, const char *what)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		log_errno("fcntl(O_NONBLOCK) %s", what);
		return false;
	}
	return true;
}

bool epoll_op(struct agent *a, int op, int fd, uint32_t events, struct watch *w, const char *what)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(a->epoll_fd, op, fd, &ev) < 0) {
		log_errno("epoll_ctl(%s) %s", op == EPOLL_CTL_ADD ? "ADD" : op == EPOLL_CTL_MOD ? "MOD" : "DEL", what);
		return false;
	}
	return true;
}

bool arm_timer(int timer_fd, int delay_ms, const char *what)
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

void drain_timer(int timer_fd, const char *what)
{
	uint64_t expirations;
	if (read(timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN && errno != EINTR)
		log_errno("read %s timer", what);
}
