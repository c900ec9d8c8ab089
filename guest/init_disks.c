/* slipway-init's disks: the root disk and extra disks mounted, and the switch into the root disk. */
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define AGENT_IN_INITRAMFS "/slipway/agent"
#define ROOT_WAIT_MS 5000

static int wait_for_device(const char *dev, int timeout_ms)
{
	struct stat sb;
	for (int waited = 0;; waited += 10) {
		if (stat(dev, &sb) == 0)
			return 0;
		if (waited >= timeout_ms)
			return -1;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}


void mount_disk(const struct disk *d, const char *target, int is_root)
{
	if (wait_for_device(d->device, is_root ? ROOT_WAIT_MS : ROOT_WAIT_MS / 2) < 0)
		die("%s disk %s not found (is the disk attached?)", is_root ? "root" : "extra", d->device);
	if (mkdir_p(target, 0755) < 0)
		die("mkdir %s: %s", target, strerror(errno));
	const char *types[3] = { d->fstype[0] ? d->fstype : "ext4", d->fstype[0] ? NULL : "erofs", NULL };
	unsigned long flags = 0;
	char data[128] = "";
	/* "ro" and "rw" are flags, everything else goes to the filesystem */
	if (d->options[0]) {
		char opts[128];
		snprintf(opts, sizeof opts, "%s", d->options);
		char *save = NULL;
		for (char *o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
			if (strcmp(o, "ro") == 0)
				flags |= MS_RDONLY;
			else if (strcmp(o, "rw") == 0)
				flags &= ~(unsigned long)MS_RDONLY;
			else if (strcmp(o, "noatime") == 0)
				flags |= MS_NOATIME;
			else {
				size_t used = strlen(data);
				snprintf(data + used, sizeof data - used, "%s%s", used ? "," : "", o);
			}
		}
	}
	int last = 0;
	for (int i = 0; types[i]; i++) {
		if (mount(d->device, target, types[i], flags, data[0] ? data : NULL) == 0)
			return;
		last = errno;
		/* erofs is read-only: a second try of the default types mounts it so */
		if (last == EROFS || (last == EACCES && !(flags & MS_RDONLY))) {
			if (mount(d->device, target, types[i], flags | MS_RDONLY, data[0] ? data : NULL) == 0)
				return;
		}
	}
	die("cannot mount %s disk %s on %s: %s", is_root ? "root" : "extra", d->device, target, strerror(last));
}


static void move_into_root(const char *from, const char *to)
{
	if (mkdir_p(to, 0755) < 0 && errno != EEXIST)
		die("root disk lacks %s and it cannot be created: %s", to, strerror(errno));
	if (mount(from, to, NULL, MS_MOVE, NULL) < 0)
		die("move mount %s to %s: %s", from, to, strerror(errno));
}


static void copy_file(const char *from, const char *to, mode_t mode)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		die("open %s: %s", from, strerror(errno));
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (out < 0)
		die("create %s: %s", to, strerror(errno));
	char buf[65536];
	for (;;) {
		ssize_t n = read(in, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read %s: %s", from, strerror(errno));
		if (n == 0)
			break;
		for (ssize_t w = 0; w < n;) {
			ssize_t m = write(out, buf + w, (size_t)(n - w));
			if (m < 0)
				die("write %s: %s", to, strerror(errno));
			w += m;
		}
	}
	close(in);
	close(out);
}


void enter_root(const struct disk *disks, int ndisks)
{
	char target[PATH_MAX];
	for (int i = 0; i < ndisks; i++) {
		if (snprintf(target, sizeof target, "%s%s", NEWROOT, disks[i].mountpoint) >= (int)sizeof target)
			die("mount point %s too long", disks[i].mountpoint);
		mount_disk(&disks[i], target, 0);
	}
	/* the agent must outlive the initramfs view: it runs from /run, a tmpfs moved into the root */
	copy_file(AGENT_IN_INITRAMFS, AGENT_PATH, 0755);
	static const char *const moves[] = { "/dev", "/proc", "/sys", "/run", "/tmp" };
	for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++) {
		snprintf(target, sizeof target, "%s%s", NEWROOT, moves[i]);
		move_into_root(moves[i], target);
	}
	if (chdir(NEWROOT) < 0)
		die("chdir %s: %s", NEWROOT, strerror(errno));
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		die("move %s to /: %s", NEWROOT, strerror(errno));
	if (chroot(".") < 0 || chdir("/") < 0)
		die("chroot into the root disk: %s", strerror(errno));
}
