/*
 * libslipway-restore-wait.so: loaded into QEMU (LD_PRELOAD) when a lazy memory restore starts
 * QEMU before the two things it needs at start are there (docs/snapshots.md), so that QEMU's own
 * start (about 130 ms of it under TCG) overlaps slipway's making them ready:
 *  - SLIPWAY_WAIT_FILE: the RAM file slipway-ramfs is mounting. QEMU opens its memory backend's
 *    mem-path and, when it does not exist, creates a plain file there (backends/hostmem-file.c,
 *    file_ram_open): an open(2) of exactly this path waits until it exists, then opens it.
 *  - SLIPWAY_WAIT_SOCKET: slipway-blk's vhost-user socket. A connect(2) to exactly this Unix
 *    socket path is tried again while the answer is ENOENT or ECONNREFUSED (not yet listening),
 *    where QEMU's chardev would wait a whole reconnect interval (1 s) after a failure.
 * Each waits at most SLIPWAY_WAIT_MS (default 30000) milliseconds, then does what QEMU asked (and
 * QEMU fails as it would have). Every other open and connect goes straight to the system call.
 * No stdio and no allocation (an allocator may open files).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define POLL_NS 1000000L /* 1 ms between looks */

/* SLIPWAY_WAIT_MS, or 30 s when unset or not a number. */
static long wait_ms(void)
{
	const char *v = getenv("SLIPWAY_WAIT_MS");
	if (!v || !*v)
		return 30000;
	char *end;
	long ms = strtol(v, &end, 10);
	return *end == '\0' && ms >= 0 ? ms : 30000;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void pause_once(void)
{
	struct timespec ts = { 0, POLL_NS };
	nanosleep(&ts, NULL);
}

/* Whether `path` is the one named by the variable `name` (set and not empty). */
static int is_awaited(const char *name, const char *path)
{
	const char *want = getenv(name);
	return want && *want && path && strcmp(path, want) == 0;
}

/* Wait until `path` exists, or the time is up. errno is left as it was. */
static void wait_for_file(const char *path)
{
	int saved = errno;
	struct stat st;
	long deadline = now_ms() + wait_ms();
	while (stat(path, &st) < 0 && errno == ENOENT && now_ms() < deadline)
		pause_once();
	errno = saved;
}

static int open_at(const char *path, int flags, mode_t mode)
{
	if (is_awaited("SLIPWAY_WAIT_FILE", path))
		wait_for_file(path);
	return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

/* (the mode argument is there only with O_CREAT or O_TMPFILE, as open(2) says) */
#define MODE_ARG(flags, mode) \
	do { \
		if ((flags) & (O_CREAT | O_TMPFILE)) { \
			va_list ap; \
			va_start(ap, flags); \
			mode = (mode_t)va_arg(ap, int); \
			va_end(ap); \
		} \
	} while (0)

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	return open_at(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	return open_at(path, flags, mode);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	int r = (int)syscall(SYS_connect, fd, addr, len);
	if (r == 0 || (errno != ENOENT && errno != ECONNREFUSED) || !addr || addr->sa_family != AF_UNIX || len <= offsetof(struct sockaddr_un, sun_path))
		return r;
	/* the path as given, bounded by the address length (it need not be terminated) */
	const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
	size_t n = len - offsetof(struct sockaddr_un, sun_path);
	if (n > sizeof un->sun_path)
		n = sizeof un->sun_path;
	char path[sizeof un->sun_path + 1];
	memcpy(path, un->sun_path, n);
	path[n] = '\0';
	if (!is_awaited("SLIPWAY_WAIT_SOCKET", path))
		return r;
	long deadline = now_ms() + wait_ms();
	while (r < 0 && (errno == ENOENT || errno == ECONNREFUSED) && now_ms() < deadline) {
		pause_once();
		r = (int)syscall(SYS_connect, fd, addr, len);
	}
	return r;
}
