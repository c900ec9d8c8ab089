/*
 * libslipway-restore-wait.so: loaded into QEMU (LD_PRELOAD) when a lazy memory restore starts
 * QEMU before the two things it needs at start are there (docs/snapshots.md), so that QEMU's own
 * start (about 130 ms of it under TCG) overlaps slipway's making them ready:
 *  - SLIPWAY_WAIT_FILE: the RAM file slipway-ramfs is mounting. QEMU opens its memory backend's
 *    mem-path and, when it does not exist, creates a plain file there (softmmu/physmem.c,
 *    file_ram_open): an open of exactly this path (open, open64, openat, openat64 and glibc's
 *    fortified __open_2 and friends, which QEMU's two-argument open becomes) waits until it
 *    exists, then opens it. Past the wait it fails with ETIMEDOUT, never creating the file: QEMU
 *    then exits saying it cannot open its RAM's backing store (a guest run on a blank file
 *    would be worse).
 *  - SLIPWAY_WAIT_SOCKET: slipway-blk's vhost-user socket. A connect(2) to exactly this Unix
 *    socket path is tried again while the answer is ENOENT or ECONNREFUSED (not yet listening),
 *    where QEMU's chardev would wait a whole reconnect interval (1 s) after a failure. Past the
 *    wait, the last answer is QEMU's.
 * Each waits at most SLIPWAY_WAIT_MS milliseconds (default 600000: the daemon stops a QEMU whose
 * RAM or disk could not be made ready, so the wait only bounds a QEMU whose daemon went away).
 * Every other open and connect goes straight to the system call. No stdio and no allocation (an
 * allocator may open files).
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

#define DEFAULT_WAIT_MS 600000L

/* SLIPWAY_WAIT_MS, or DEFAULT_WAIT_MS when unset or not a number. */
static long wait_ms(void)
{
	const char *v = getenv("SLIPWAY_WAIT_MS");
	if (!v || !*v)
		return DEFAULT_WAIT_MS;
	char *end;
	long ms = strtol(v, &end, 10);
	return *end == '\0' && ms >= 0 ? ms : DEFAULT_WAIT_MS;
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

/* Wait until `path` exists; whether it does (errno is left as it was). */
static int wait_for_file(const char *path)
{
	int saved = errno;
	struct stat st;
	long deadline = now_ms() + wait_ms();
	int there;
	while (!(there = stat(path, &st) == 0) && errno == ENOENT && now_ms() < deadline)
		pause_once();
	errno = saved;
	return there;
}

/* Every open below: `path` relative to `dirfd`; the awaited file (named absolutely) waited for. */
static int open_from(int dirfd, const char *path, int flags, mode_t mode)
{
	if (is_awaited("SLIPWAY_WAIT_FILE", path) && !wait_for_file(path)) {
		errno = ETIMEDOUT;
		return -1;
	}
	return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

/* (the mode argument is there only when open(2) says so: O_CREAT, or O_TMPFILE, which includes O_DIRECTORY) */
#define NEEDS_MODE(flags) (((flags) & O_CREAT) != 0 || ((flags) & O_TMPFILE) == O_TMPFILE)
#define MODE_ARG(flags, mode) \
	do { \
		if (NEEDS_MODE(flags)) { \
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
	return open_from(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	return open_from(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	return open_from(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	return open_from(dirfd, path, flags, mode);
}

/* glibc's _FORTIFY_SOURCE turns an open whose flags it cannot see at compile time into these */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

int __open_2(const char *path, int flags)
{
	return open_from(AT_FDCWD, path, flags, 0);
}

int __open64_2(const char *path, int flags)
{
	return open_from(AT_FDCWD, path, flags, 0);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	return open_from(dirfd, path, flags, 0);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	return open_from(dirfd, path, flags, 0);
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
