/* slipway-init's system helpers: the console, power off, mounts and files, kernel modules, and
 * the /dev/virtio-ports links udev would make. */
#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
	/* the console is stdout/stderr as the kernel gave them; kmsg keeps it in dmesg too */
	if (write(STDERR_FILENO, "slipway-init: ", 14) < 0 || write(STDERR_FILENO, buf, len) < 0 || write(STDERR_FILENO, "\n", 1) < 0) {
		/* no console: nothing else to say it on */
	}
	int kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (kmsg >= 0) {
		char line[600];
		int m = snprintf(line, sizeof line, "slipway-init: %s\n", buf);
		if (m > 0 && write(kmsg, line, (size_t)m < sizeof line ? (size_t)m : sizeof line - 1) < 0) {
			/* best effort */
		}
		close(kmsg);
	}
}


void die(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	say("fatal: %s; powering off", buf);
	power_off(0);
}


void power_off(int reboot_instead)
{
	sync();
	kill(-1, SIGTERM);
	/*
	 * Up to 1 s for processes to leave. Every user process is init's descendant (orphans are
	 * reparented to it), so ECHILD means none is left; kill(-1, 0) would count kernel threads.
	 */
	for (int i = 0; i < 100; i++) {
		pid_t r;
		while ((r = waitpid(-1, NULL, WNOHANG)) > 0) {
		}
		if (r < 0 && errno == ECHILD)
			break;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
	sync();
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0 && errno != EINVAL) {
		/* busy or already read-only: the sync above is what matters */
	}
	reboot(reboot_instead ? RB_AUTOBOOT : RB_POWER_OFF);
	/* reboot(2) only returns on failure; PID 1 must not exit */
	for (;;)
		pause();
}


uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}


int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
		return -1;
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			if (mkdir(tmp, mode) < 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}


void mount_or_die(const char *src, const char *target, const char *type, unsigned long flags, const char *data)
{
	if (mkdir_p(target, 0755) < 0 && errno != EEXIST)
		die("mkdir %s: %s", target, strerror(errno));
	if (mount(src, target, type, flags, data) < 0 && errno != EBUSY)
		die("mount %s on %s (%s): %s", src, target, type, strerror(errno));
}


ssize_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t off = 0;
	for (;;) {
		if (off == cap) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
		ssize_t n = read(fd, buf + off, cap - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		off += (size_t)n;
	}
	close(fd);
	return (ssize_t)off;
}


/*
 * Kernel modules shipped in the initramfs under /slipway/modules, loaded in name order (the
 * builder numbers them in dependency order). slipway's own kernel has everything built in and
 * ships none; a distribution kernel (Debian's cloud kernel) needs its virtio drivers this way.
 */
void load_modules(void)
{
	struct dirent **names = NULL;
	int n = scandir("/slipway/modules", &names, NULL, alphasort);
	if (n < 0)
		return;
	for (int i = 0; i < n; i++) {
		char path[PATH_MAX];
		if (names[i]->d_name[0] != '.' && snprintf(path, sizeof path, "/slipway/modules/%s", names[i]->d_name) < (int)sizeof path) {
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST))
				say("loading module %s: %s", names[i]->d_name, strerror(errno));
			if (fd >= 0)
				close(fd);
		}
		free(names[i]);
	}
	free(names);
}


/*
 * udev's job, done here because there is no udev: /dev/virtio-ports/<name> links to the
 * /dev/vportNpM node of each named virtio-serial port (the agent opens its port by name).
 */
void link_virtio_ports(void)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	if (!dir)
		return;
	if (mkdir_p("/dev/virtio-ports", 0755) < 0) {
		say("mkdir /dev/virtio-ports: %s", strerror(errno));
		closedir(dir);
		return;
	}
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.' || strlen(de->d_name) > 64)
			continue;
		char path[PATH_MAX];
		char name[128];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", de->d_name);
		ssize_t n = read_file(path, name, sizeof name - 1);
		if (n <= 0)
			continue;
		while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == '\0'))
			n--;
		name[n] = '\0';
		if (n == 0 || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			continue;
		char link[PATH_MAX];
		char target[PATH_MAX];
		snprintf(link, sizeof link, "/dev/virtio-ports/%s", name);
		snprintf(target, sizeof target, "../%s", de->d_name);
		if (symlink(target, link) < 0 && errno != EEXIST)
			say("symlink %s: %s", link, strerror(errno));
	}
	closedir(dir);
}
