/*
 * slipway-blk: serve one slipway disk to a VMM over vhost-user (docs/vhost-user-blk.md).
 * The main thread owns the vhost-user connection; queue threads serve the virtqueues. When the
 * VMM disconnects, the backend listens again: the overlay and the disk stay. It stops on SIGTERM,
 * SIGINT or SIGHUP, and with `--owner-pid`, when that process has exited (a pidfd): a backend
 * started for `slipway serve` or `slipway run` does not outlive them, even killed with SIGKILL;
 * the daemon's backends, which outlive a daemon restart, are started without it.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include "vub.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture (Linux 5.3) */
#endif

extern int vub_log_min;

struct options {
	const char *socket_path;
	const char *map_path;
	const char *chunk_dir;
	const char *daemon_socket;
	const char *overlay_dir;
	const char *serial;
	bool read_only;
	unsigned queues;
	/* 0: none */
	pid_t owner_pid;
};

static void usage(void)
{
	fprintf(stderr, "usage: slipway-blk --socket PATH --map FILE --chunk-dir DIR [--daemon-socket PATH] [--overlay DIR] [--read-only] [--queues N] [--serial ID] [--owner-pid PID] [--log-level debug|info|warn]\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' }, { "map", required_argument, NULL, 'm' },
		{ "chunk-dir", required_argument, NULL, 'c' }, { "daemon-socket", required_argument, NULL, 'd' },
		{ "overlay", required_argument, NULL, 'o' }, { "read-only", no_argument, NULL, 'r' },
		{ "queues", required_argument, NULL, 'q' }, { "serial", required_argument, NULL, 'i' },
		{ "owner-pid", required_argument, NULL, 'p' }, { "log-level", required_argument, NULL, 'l' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	memset(o, 0, sizeof *o);
	o->queues = 1;
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket_path = optarg; break;
		case 'm': o->map_path = optarg; break;
		case 'c': o->chunk_dir = optarg; break;
		case 'd': o->daemon_socket = optarg; break;
		case 'o': o->overlay_dir = optarg; break;
		case 'r': o->read_only = true; break;
		case 'i': o->serial = optarg; break;
		case 'q': {
			char *end = NULL;
			errno = 0;
			long v = strtol(optarg, &end, 10);
			if (errno || !end || *end || v < 1 || v > VUB_MAX_QUEUES) {
				fprintf(stderr, "slipway-blk: --queues must be 1 to %d\n", VUB_MAX_QUEUES);
				return -1;
			}
			o->queues = (unsigned)v;
			break;
		}
		case 'p': {
			char *end = NULL;
			errno = 0;
			long v = optarg[0] >= '0' && optarg[0] <= '9' ? strtol(optarg, &end, 10) : 0;
			if (errno || !end || *end || v < 2 || v > 0x7fffffff) {
				fprintf(stderr, "slipway-blk: --owner-pid must be a process id (2 or more)\n");
				return -1;
			}
			o->owner_pid = (pid_t)v;
			break;
		}
		case 'l':
			vub_log_min = strcmp(optarg, "debug") == 0 ? 0 : strcmp(optarg, "info") == 0 ? 1 : 2;
			break;
		default:
			usage();
			return -1;
		}
	}
	if (!o->socket_path || !o->map_path || !o->chunk_dir || optind != argc) {
		usage();
		return -1;
	}
	return 0;
}

static int listen_on(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof addr.sun_path) {
		fprintf(stderr, "slipway-blk: socket path %s is too long\n", path);
		return -1;
	}
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("slipway-blk: socket");
		return -1;
	}
	unlink(path); /* a stale socket from an earlier run */
	if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || chmod(path, 0600) < 0 || listen(fd, 1) < 0) {
		fprintf(stderr, "slipway-blk: listening on %s: %s\n", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Serve one VMM connection until it closes, breaks the protocol, or a signal or the owner's exit
 * (`ownerfd`, a pidfd, or -1: poll ignores it) asks us to stop.
 */
static bool serve_connection(struct vub_dev *dev, int conn, int sigfd, int ownerfd)
{
	static uint8_t payload[VUB_PAYLOAD_MAX];
	dev->sock = conn;
	for (;;) {
		struct pollfd p[3] = { { .fd = conn, .events = POLLIN }, { .fd = sigfd, .events = POLLIN }, { .fd = ownerfd, .events = POLLIN } };
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			vub_log("warn", "poll: %s", strerror(errno));
			return false;
		}
		if ((p[1].revents | p[2].revents) & POLLIN)
			return true;
		struct vhost_user_header hdr;
		int fds[VUB_MAX_FDS];
		unsigned nfds = 0;
		int r = vub_read_message(conn, &hdr, payload, fds, &nfds);
		if (r == 0) {
			vub_log("info", "the VMM disconnected");
			return false;
		}
		if (r < 0 || vub_handle_message(dev, &hdr, payload, fds, nfds) < 0) {
			vub_log("warn", "closing the connection after a malformed or refused message");
			return false;
		}
	}
}

int main(int argc, char **argv)
{
	struct options o;
	if (parse_args(argc, argv, &o) < 0)
		return 2;
	/*
	 * The owner's pidfd, opened first (the owner started us and waits for "ready", so its pid is
	 * its own), turns readable when it exits; an owner already gone is refused at once. A kernel
	 * without pidfd_open (before 5.3) or a seccomp policy refusing it: served without the watch.
	 */
	int ownerfd = -1;
	if (o.owner_pid > 0) {
		ownerfd = (int)syscall(SYS_pidfd_open, o.owner_pid, 0);
		if (ownerfd < 0 && errno != ENOSYS && errno != EPERM) {
			fprintf(stderr, "slipway-blk: --owner-pid %d: %s\n", (int)o.owner_pid, strerror(errno));
			return 1;
		}
		if (ownerfd < 0)
			vub_log("warn", "cannot watch the owner (pid %d): pidfd_open: %s; this backend does not stop when it exits", (int)o.owner_pid, strerror(errno));
	}
	/* one descriptor per open chunk file: ask for as many as the hard limit allows */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	static struct vub_disk disk;
	char err[512];
	if (vub_disk_open(&disk, o.map_path, o.chunk_dir, o.overlay_dir, o.read_only, o.serial, err, sizeof err) < 0) {
		fprintf(stderr, "slipway-blk: %s\n", err);
		return 1;
	}
	/* cached chunk files leave room for what the device itself needs: stdio, the listening socket,
	 * the signalfd, the VMM's connection, the disk's own files, a message's descriptors, and per
	 * queue its kick, call, err and stop eventfds, epoll set and miss connection */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		rlim_t reserve = 32 + 2 * VUB_MAX_FDS + 8 * (rlim_t)o.queues;
		vub_disk_limit_cache(&disk, rl.rlim_cur > reserve ? (unsigned long)(rl.rlim_cur - reserve) : 0);
	}
	if (!o.read_only && !o.overlay_dir)
		vub_log("warn", "no --overlay and not --read-only: guest writes will fail");
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	int sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	int lfd = listen_on(o.socket_path);
	if (sigfd < 0 || lfd < 0)
		return 1;
	static struct vub_dev dev;
	vub_dev_init(&dev, &disk, o.queues, o.daemon_socket);
	vub_log("info", "serving %llu bytes in %llu chunks on %s (%s, %u queues)", (unsigned long long)disk.size, (unsigned long long)disk.nchunks, o.socket_path,
		o.read_only ? "read-only" : o.overlay_dir ? "copy-on-write overlay" : "no overlay", o.queues);
	printf("ready\n");
	fflush(stdout);
	bool stop = false;
	while (!stop) {
		struct pollfd p[3] = { { .fd = lfd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN }, { .fd = ownerfd, .events = POLLIN } };
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if ((p[1].revents | p[2].revents) & POLLIN)
			break;
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0 && errno == EMFILE) {
			vub_disk_drop_cache(&disk);
			conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		}
		if (conn < 0) {
			if (errno != EINTR && errno != ECONNABORTED)
				vub_log("warn", "accept: %s", strerror(errno));
			continue;
		}
		vub_log("info", "VMM connected");
		stop = serve_connection(&dev, conn, sigfd, ownerfd);
		vub_dev_reset(&dev);
		close(conn);
	}
	if (ownerfd >= 0 && poll(&(struct pollfd){ .fd = ownerfd, .events = POLLIN }, 1, 0) == 1)
		vub_log("info", "its owner (pid %d) has exited", (int)o.owner_pid);
	vub_log("info", "stopping: %llu requests, %llu misses, %llu bad chains, %llu broken rings", (unsigned long long)dev.stats.requests,
		(unsigned long long)dev.stats.misses, (unsigned long long)dev.stats.bad_chains, (unsigned long long)dev.stats.broken_rings);
	vub_disk_close(&disk);
	close(lfd);
	unlink(o.socket_path);
	return 0;
}
