/* File requests: WRITE_FILE, READ_FILE, SYNC and FSFREEZE (freeze or thaw a mounted file system). */
#include "agent.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h> /* FIFREEZE, FITHAW */

static bool check_path(struct conn *c, const struct frame *f, const char *path, const char *name)
{
	if (path[0] != '/') {
		send_error(c, f->id, EINVAL, "%s: path must be absolute", name);
		return false;
	}
	return true;
}

void handle_write_file(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, WRITE_FILE_FLAG_CREATE, "WRITE_FILE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *path = read_string(&r, "path");
	uint32_t mode = read_u32(&r, "mode");
	uint64_t offset = read_u64(&r, "offset");
	const uint8_t *data = r.p;
	size_t data_len = r.left;
	int fd = -1;
	if (!check_read(c, f, &r, "WRITE_FILE") || !check_path(c, f, path, "WRITE_FILE"))
		goto out;
	if (mode & ~07777u) {
		send_error(c, f->id, EINVAL, "WRITE_FILE: mode 0%o has bits other than permissions", mode);
		goto out;
	}
	if (offset > (uint64_t)INT64_MAX - data_len) {
		send_error(c, f->id, EFBIG, "WRITE_FILE: offset %llu is too large", (unsigned long long)offset);
		goto out;
	}
	bool create = f->flags & WRITE_FILE_FLAG_CREATE;
	/* O_NONBLOCK: a FIFO or a device must answer ENXIO or EAGAIN, not hang the whole agent */
	fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (create ? O_CREAT | O_TRUNC : 0), (mode_t)mode);
	if (fd < 0) {
		send_errno(c, f->id, errno, "WRITE_FILE: open %s", path);
		goto out;
	}
	/* the mode given is the mode wanted: neither the umask nor an existing file's mode wins */
	if (create && fchmod(fd, (mode_t)mode) < 0) {
		send_errno(c, f->id, errno, "WRITE_FILE: fchmod %s", path);
		goto out;
	}
	size_t done = 0;
	while (done < data_len) {
		ssize_t n = TEMP_FAILURE_RETRY(pwrite(fd, data + done, data_len - done, (off_t)(offset + done)));
		if (n <= 0) {
			send_errno(c, f->id, n < 0 ? errno : EIO, "WRITE_FILE: write %s", path);
			goto out;
		}
		done += (size_t)n;
	}
	if (close(fd) < 0) {
		/* a deferred write error (NFS, quota) shows up here, and the host must hear of it */
		fd = -1;
		send_errno(c, f->id, errno, "WRITE_FILE: close %s", path);
		goto out;
	}
	fd = -1;
	send_ok(c, f->id);
out:
	close_fd(&fd, "WRITE_FILE target");
	free(path);
}

void handle_read_file(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "READ_FILE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *path = read_string(&r, "path");
	uint64_t offset = read_u64(&r, "offset");
	uint32_t max_len = read_u32(&r, "max length");
	reader_expect_end(&r, "READ_FILE");
	int fd = -1;
	uint8_t *data = NULL;
	if (!check_read(c, f, &r, "READ_FILE"))
		goto out;
	if (max_len > MAX_READ_FILE_BYTES) {
		send_error(c, f->id, EINVAL, "READ_FILE: max length %u exceeds %u", max_len, MAX_READ_FILE_BYTES);
		goto out;
	}
	if (offset > (uint64_t)INT64_MAX - max_len) {
		send_error(c, f->id, EINVAL, "READ_FILE: offset %llu is too large", (unsigned long long)offset);
		goto out;
	}
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (pread on it then fails, ESPIPE) */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		send_errno(c, f->id, errno, "READ_FILE: open %s", path);
		goto out;
	}
	data = malloc(max_len ? max_len : 1);
	if (!data) {
		send_error(c, f->id, ENOMEM, "READ_FILE: out of memory");
		goto out;
	}
	/* fill the buffer: a short DATA means end of file, and pread may return less before it */
	size_t got = 0;
	while (got < max_len) {
		ssize_t n = TEMP_FAILURE_RETRY(pread(fd, data + got, max_len - got, (off_t)(offset + got)));
		if (n < 0) {
			send_errno(c, f->id, errno, "READ_FILE: read %s", path);
			goto out;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	conn_send(c, REP_DATA, f->id, data, got);
out:
	close_fd(&fd, "READ_FILE source");
	free(data);
	free(path);
}

void handle_sync(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, 0, "SYNC") || !check_empty(c, f, "SYNC"))
		return;
	sync(); /* cannot fail */
	send_ok(c, f->id);
}

void handle_fsfreeze(struct conn *c, const struct frame *f)
{
	if (!check_flags(c, f, FSFREEZE_FLAG_THAW, "FSFREEZE"))
		return;
	struct reader r = { .p = f->payload, .left = f->len };
	char *mountpoint = read_string(&r, "mount point");
	reader_expect_end(&r, "FSFREEZE");
	bool thaw = f->flags & FSFREEZE_FLAG_THAW;
	const char *op = thaw ? "FITHAW" : "FIFREEZE";
	int fd = -1;
	if (!check_read(c, f, &r, "FSFREEZE") || !check_path(c, f, mountpoint, "FSFREEZE"))
		goto out;
	fd = open(mountpoint, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
	if (fd < 0) {
		send_errno(c, f->id, errno, "FSFREEZE: open %s", mountpoint);
		goto out;
	}
	if (ioctl(fd, thaw ? FITHAW : FIFREEZE, 0) < 0) {
		send_errno(c, f->id, errno, "FSFREEZE: %s %s", op, mountpoint);
		goto out;
	}
	log_msg("%s %s", op, mountpoint);
	send_ok(c, f->id);
out:
	close_fd(&fd, "FSFREEZE mount point");
	free(mountpoint);
}
