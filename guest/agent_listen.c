/*
 * The agent's transports: the AF_VSOCK listener on port 1024, a Unix socket listener (tests on the
 * host), and the virtio-serial port, one connection reopened whenever the host side goes away (a
 * Unix socket may stand in for it). Each accepted or opened stream becomes a connection.
 */
#include "agent.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

void on_accept(struct agent *a, struct listener *l)
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

void on_accept_timer(struct agent *a)
{
	drain_timer(a->accept_timer_fd, "accept");
	struct listener *all[] = { &a->vsock, &a->unix_listener };
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		struct listener *l = all[i];
		if (l->fd >= 0 && !l->registered && epoll_op(a, EPOLL_CTL_ADD, l->fd, EPOLLIN, &l->watch, l->what))
			l->registered = true;
	}
}

void serial_open(struct agent *a)
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

void on_serial_timer(struct agent *a)
{
	drain_timer(a->serial.timer_fd, "serial");
	if (!a->serial.conn)
		serial_open(a);
}

bool listen_vsock(struct agent *a)
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

bool listen_unix(struct agent *a, const char *path)
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
