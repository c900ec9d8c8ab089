/*
 * slipway-vsock-connect: the host end of the agent's vsock transport under QEMU's vhost-vsock.
 * Node has no AF_VSOCK, so the daemon runs this to reach a guest: it connects to CID:PORT and
 * relays bytes between that stream and its own stdin/stdout until either side closes.
 *
 * Usage: slipway-vsock-connect CID PORT
 * Exit: 0 when the guest closed the stream, 1 when the connection failed or broke (the reason on
 * stderr; a guest that has not booted yet answers ECONNRESET or ENODEV, and the caller retries),
 * 2 for bad arguments.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int parse_u32(const char *text, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* Write all of buf; false when the peer is gone. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = TEMP_FAILURE_RETRY(write(fd, buf, len));
		if (n < 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Say on stderr what failed, with strerror(errno); the exit status for a failed or broken connection. */
static int broken(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int broken(const char *fmt, ...)
{
	int err = errno;
	char what[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	fprintf(stderr, "slipway-vsock-connect: %s: %s\n", what, strerror(err));
	return 1;
}

int main(int argc, char **argv)
{
	uint32_t cid, port;
	if (argc != 3 || parse_u32(argv[1], &cid) || parse_u32(argv[2], &port)) {
		fprintf(stderr, "usage: slipway-vsock-connect CID PORT (both decimal)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int sock = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return broken("socket(AF_VSOCK)");
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		return broken("connect to %u:%u", cid, port);
	struct pollfd fds[2] = { { .fd = STDIN_FILENO, .events = POLLIN }, { .fd = sock, .events = POLLIN } };
	char buf[65536];
	for (;;) {
		if (TEMP_FAILURE_RETRY(poll(fds, 2, -1)) < 0)
			return broken("poll");
		if (fds[0].revents) {
			ssize_t n = TEMP_FAILURE_RETRY(read(STDIN_FILENO, buf, sizeof buf));
			if (n < 0)
				return broken("reading stdin");
			if (n == 0) {
				/* the host side is done sending: half-close, keep reading the guest's answers */
				shutdown(sock, SHUT_WR);
				fds[0].fd = -1;
			} else if (write_all(sock, buf, (size_t)n) < 0) {
				return broken("writing to the guest");
			}
		}
		if (fds[1].revents) {
			ssize_t n = TEMP_FAILURE_RETRY(read(sock, buf, sizeof buf));
			if (n < 0)
				return broken("reading from the guest");
			if (n == 0)
				return 0;
			if (write_all(STDOUT_FILENO, buf, (size_t)n) < 0)
				return 0; /* our reader went away: nothing left to relay to */
		}
	}
}
