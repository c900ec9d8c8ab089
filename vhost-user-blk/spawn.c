/*
 * slipway-spawn: starts the daemon's long-lived children (slipway-blk, slipway-ramfs, a VMM) so
 * that the daemon itself never forks for them. A fork of a large process write-protects every
 * page of it, and each page the parent writes afterwards takes a fault: on a host whose page
 * faults are expensive (a nested or paravirtualised one) a daemon of 300 MB paid about 24 us per
 * page, hundreds of milliseconds of CPU per spawn, spread over what it did next. This process is
 * small, started once, and starts each child with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK),
 * no page tables copied).
 *
 * Protocol (src/util/spawner.ts is the other end), over stdin (requests) and stdout (answers):
 *   request: a 32-bit little-endian length, then that many bytes of NUL-terminated strings:
 *     id, cwd, stdout, stderr, argc, argv[0..argc), envc, env[0..envc)
 *     where stdout and stderr are "-" (/dev/null), "w:<path>" (created or truncated, mode 0600)
 *     or "a:<path>" (created or appended to); argv[0] is looked up in this process's PATH
 *     (posix_spawnp: the caller resolves it against the child's), a script needs its "#!" line.
 *   answers, one line each:
 *     "ok <id> <pid>"        the child runs (its own session: it outlives the daemon)
 *     "err <id> <errno>"     it could not be started (a malformed request is EINVAL, one over
 *                            MAX_REQUEST bytes E2BIG, skipped; an id that cannot be read is "?")
 *     "exit <pid> code <n>" or "exit <pid> signal <n>"   a child ended (reaped here)
 * A child starts in cwd with stdin on /dev/null, no signal blocked and every signal at its
 * default, except glibc's two internal ones (32 and 33), which glibc's posix_spawn leaves ignored.
 * SIGINT, SIGTERM and SIGHUP are ignored here (a terminal's Ctrl-C is for the daemon, which ends
 * this process by closing its stdin); end of stdin ends this process; its children keep running.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_REQUEST (1u << 20) /* argv and environment together */
#define MAX_STRINGS 8192

/* Write a whole line to stdout; a daemon that went away ends us. */
static void answer(const char *line)
{
	size_t len = strlen(line), off = 0;
	while (off < len) {
		ssize_t n = write(STDOUT_FILENO, line + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			exit(0);
		off += (size_t)n;
	}
}

/* Split `len` bytes of NUL-terminated strings into `out`; the count, or -1 if malformed. */
static int split(char *buf, size_t len, char **out, int max)
{
	int n = 0;
	size_t i = 0;
	if (len == 0 || buf[len - 1] != '\0')
		return -1;
	while (i < len) {
		if (n == max)
			return -1;
		out[n++] = buf + i;
		i += strlen(buf + i) + 1;
	}
	return n;
}

/* A count field: a decimal in [0, max], else -1. */
static int count(const char *s, int max)
{
	char *end;
	long v;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > max)
		return -1;
	return (int)v;
}

/* The file action putting `spec` ("-", "w:path", "a:path") on `fd`; 0, or an errno. */
static int output_to(posix_spawn_file_actions_t *fa, int fd, const char *spec)
{
	if (strcmp(spec, "-") == 0)
		return posix_spawn_file_actions_addopen(fa, fd, "/dev/null", O_WRONLY, 0);
	if ((spec[0] != 'w' && spec[0] != 'a') || spec[1] != ':' || spec[2] == '\0')
		return EINVAL;
	return posix_spawn_file_actions_addopen(fa, fd, spec + 2, O_WRONLY | O_CREAT | (spec[0] == 'a' ? O_APPEND : O_TRUNC), 0600);
}

/* Start one child from a request's strings; the errno, or 0 with *pid set. */
static int start(char **s, int n, pid_t *pid)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	int argc, envc, err;
	char **argv, **envp;

	if (n < 6 || (argc = count(s[4], MAX_STRINGS)) < 1 || n < 6 + argc)
		return EINVAL;
	if ((envc = count(s[5 + argc], MAX_STRINGS)) < 0 || n != 6 + argc + envc)
		return EINVAL;
	/* argv and envp end with NULL: each is copied into an array one longer */
	argv = calloc((size_t)argc + 1, sizeof(char *));
	envp = calloc((size_t)envc + 1, sizeof(char *));
	if (!argv || !envp) {
		free(argv);
		free(envp);
		return ENOMEM;
	}
	memcpy(argv, s + 5, (size_t)argc * sizeof(char *));
	memcpy(envp, s + 6 + argc, (size_t)envc * sizeof(char *));
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	err = s[1][0] == '/' ? posix_spawn_file_actions_addchdir_np(&fa, s[1]) : EINVAL;
	if (!err)
		err = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	if (!err)
		err = output_to(&fa, STDOUT_FILENO, s[2]);
	if (!err)
		err = output_to(&fa, STDERR_FILENO, s[3]);
	if (!err)
		err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	if (!err)
		err = posix_spawnattr_setsigmask(&attr, &none);
	if (!err)
		err = posix_spawnattr_setsigdefault(&attr, &all);
	if (!err)
		err = posix_spawnp(pid, argv[0], &fa, &attr, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	free(argv);
	free(envp);
	return err;
}

/* The request id at the start of `buf` (`len` bytes): the daemon's counter, else "?". */
static const char *request_id(const char *buf, size_t len)
{
	size_t n = strnlen(buf, len < 21 ? len : 21);
	if (n == 0 || n > 20 || n == len || strspn(buf, "0123456789") != n)
		return "?";
	return buf;
}

/* Answer `err` (or ok with `pid`) for the request whose id is `id`. */
static void answer_request(const char *id, int err, pid_t pid)
{
	char line[128];
	if (err)
		snprintf(line, sizeof(line), "err %.20s %d\n", id, err);
	else
		snprintf(line, sizeof(line), "ok %.20s %d\n", id, (int)pid);
	answer(line);
}

/* Handle one request of `len` bytes. */
static void request(char *buf, size_t len)
{
	static char *strings[MAX_STRINGS * 2 + 8];
	const char *id = request_id(buf, len);
	pid_t pid = -1;
	int n = split(buf, len, strings, (int)(sizeof(strings) / sizeof(strings[0])));
	/* (its own statement: an argument list's order of evaluation is unspecified, and pid is set by start) */
	int err = n < 0 ? EINVAL : start(strings, n, &pid);
	answer_request(id, err, pid);
}

/* Reap every child that has ended and say so. */
static void reap(void)
{
	char line[96];
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (WIFEXITED(status))
			snprintf(line, sizeof(line), "exit %d code %d\n", (int)pid, WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			snprintf(line, sizeof(line), "exit %d signal %d\n", (int)pid, WTERMSIG(status));
		else
			continue;
		answer(line);
	}
}

int main(void)
{
	static char buf[4 + MAX_REQUEST];
	size_t have = 0;
	uint64_t skip = 0; /* bytes of an oversized request still to be read past */
	sigset_t chld;
	int sfd;

	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0 || (sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		perror("slipway-spawn: signalfd");
		return 1;
	}
	for (;;) {
		struct pollfd p[2] = { { .fd = STDIN_FILENO, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("slipway-spawn: poll");
			return 1;
		}
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				;
			reap();
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(STDIN_FILENO, buf + have, sizeof(buf) - have);
			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0)
				return 0; /* the daemon went away */
			have += (size_t)n;
			for (;;) {
				uint32_t len;
				if (skip > 0) {
					size_t k = skip < have ? (size_t)skip : have;
					skip -= k;
					have -= k;
					memmove(buf, buf + k, have);
					if (skip > 0)
						break;
				}
				if (have < 4)
					break;
				len = (uint32_t)(unsigned char)buf[0] | (uint32_t)(unsigned char)buf[1] << 8 | (uint32_t)(unsigned char)buf[2] << 16 | (uint32_t)(unsigned char)buf[3] << 24;
				if (len > MAX_REQUEST) {
					/* refused, and read past: its id is answered when it came with the length */
					answer_request(request_id(buf + 4, have - 4), E2BIG, -1);
					skip = 4 + (uint64_t)len;
					continue;
				}
				if (have < 4 + (size_t)len)
					break;
				request(buf + 4, len);
				have -= 4 + (size_t)len;
				memmove(buf, buf + 4 + len, have);
			}
		}
	}
}
