/*
 * slipway-ramfs: a memory snapshot's RAM image as one file, `MOUNT/ram`, loaded on demand
 * (docs/snapshots.md, "Lazy memory"). QEMU maps it shared as the guest's RAM
 * (memory-backend-file,share=on) and hands the same file to slipway-blk; a page either of them
 * touches first is a FUSE READ here, answered from the image's chunk files in the cache's tier 1
 * (asking the daemon over the miss protocol for a chunk that is not local), so no page is seen
 * before its chunk has been loaded and verified. The kernel writes dirty guest pages back as FUSE
 * WRITEs into a copy-on-write overlay (the disk backend's own: disk.c), whose dirty bitmap is then
 * exactly the RAM the guest changed since the restore: the next snapshot's delta.
 *
 * The image is a slipway disk (the map, chunk files and overlay formats of docs/vhost-user-blk.md),
 * so the device logic is disk.c's; this file is the FUSE front only. With --trace, the number of
 * every chunk read for the first time is appended to a file (u64 little-endian): the working set a
 * restore touched, in order.
 */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "disk.h"
#include "log.h"
#include "miss_wire.h"

#define RAM_INO 2
#define RAM_NAME "ram"
#define MAX_IO (1u << 20)

static struct {
	struct vub_disk disk;
	const char *daemon_socket;
	int trace_fd;
	_Atomic uint8_t *seen; /* a byte per chunk: read once already (for the trace) */
} g = { .trace_fd = -1 };

/* One miss connection per FUSE worker thread: a FETCH waits for its own reply. */
static __thread int miss_fd = -1;

static int miss_connect(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (!g.daemon_socket || strlen(g.daemon_socket) >= sizeof addr.sun_path)
		return -ENOENT;
	strcpy(addr.sun_path, g.daemon_socket);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int full_rw(int fd, uint8_t *buf, size_t len, bool write_)
{
	for (size_t done = 0; done < len;) {
		ssize_t r = write_ ? send(fd, buf + done, len - done, MSG_NOSIGNAL) : recv(fd, buf + done, len - done, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -ECONNRESET : -errno;
		done += (size_t)r;
	}
	return 0;
}

/*
 * Ask the daemon to bring chunk c into tier 1: 0 when it says it did, a negative errno otherwise.
 * A daemon that cannot be reached is away (restarting): asked again every MISS_RETRY_MS for up
 * to MISS_AWAY_MS (miss_wire.h), as slipway-blk does, since failing would lose the guest page
 * (a fault is SIGBUS in the VMM; a failed write-back drops what the guest wrote).
 */
static int fetch_chunk(uint64_t c)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	bool said = false;
	for (;;) {
		if (miss_fd < 0)
			miss_fd = miss_connect();
		if (miss_fd >= 0) {
			uint8_t msg[MISS_MSG_BYTES];
			miss_encode_fetch(msg, c);
			int r = full_rw(miss_fd, msg, sizeof msg, true);
			if (r == 0)
				r = full_rw(miss_fd, msg, sizeof msg, false);
			if (r == 0) {
				int32_t status;
				uint64_t chunk;
				if (!miss_decode_reply(msg, &status, &chunk) || chunk != c) {
					vub_log("warn", "malformed miss reply for chunk %llu; closing the connection", (unsigned long long)c);
					close(miss_fd);
					miss_fd = -1;
					return -EIO;
				}
				if (said)
					vub_log("info", "the daemon answers again");
				return status;
			}
			close(miss_fd);
			miss_fd = -1;
		}
		if (!g.daemon_socket)
			return -EIO;
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long waited = (now.tv_sec - t0.tv_sec) * 1000LL + (now.tv_nsec - t0.tv_nsec) / 1000000;
		if (waited >= MISS_AWAY_MS)
			return -EIO;
		if (!said)
			vub_log("warn", "the daemon is away; chunk %llu waits for it (up to %d s)", (unsigned long long)c, MISS_AWAY_MS / 1000);
		said = true;
		struct timespec pause = { 0, MISS_RETRY_MS * 1000000L };
		nanosleep(&pause, NULL);
	}
}

static void trace_range(uint64_t off, uint64_t len)
{
	if (g.trace_fd < 0 || len == 0)
		return;
	for (uint64_t c = off >> g.disk.chunk_log2; c <= (off + len - 1) >> g.disk.chunk_log2 && c < g.disk.nchunks; c++) {
		if (atomic_exchange(&g.seen[c], 1))
			continue;
		uint8_t le[8];
		miss_put_le(le, c, 8);
		if (write(g.trace_fd, le, sizeof le) != (ssize_t)sizeof le)
			vub_log("warn", "trace write: %s", strerror(errno));
	}
}

/* Run a disk I/O, fetching each missing chunk through the daemon; a chunk still missing after the
 * daemon said OK fails the I/O (the daemon is not trusted beyond its chunk number). */
static int with_fetch(int (*io)(struct vub_disk *, uint64_t, const struct iovec *, unsigned, uint64_t, uint64_t *), uint64_t off, const struct iovec *iov, uint64_t len)
{
	uint64_t last = UINT64_MAX;
	for (;;) {
		uint64_t missing = 0;
		int r = io(&g.disk, off, iov, 1, len, &missing);
		if (r != VUB_MISS)
			return r;
		if (missing == last)
			return -EIO;
		last = missing;
		int f = fetch_chunk(missing);
		if (f < 0) {
			vub_log("warn", "chunk %llu could not be fetched: %s", (unsigned long long)missing, strerror(-f));
			return -EIO;
		}
	}
}

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0700;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = (off_t)g.disk.size;
		st->st_blocks = (blkcnt_t)(g.disk.size / 512);
	}
}

static void ram_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = MAX_IO;
	/* readahead of one chunk: a fault loads the chunk it falls in, not its neighbours */
	conn->max_readahead = (unsigned)g.disk.chunk_size;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void ram_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parent != FUSE_ROOT_ID || strcmp(name, RAM_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct fuse_entry_param e = { .ino = RAM_INO, .attr_timeout = 86400, .entry_timeout = 86400 };
	fill_attr(RAM_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void ram_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != RAM_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct stat st;
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 86400);
}

/* The size is fixed: a truncate to the image's size (what QEMU may do) succeeds, any other fails. */
static void ram_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != RAM_INO || (to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)) ||
	    ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != g.disk.size)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	struct stat st;
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 86400);
}

static void ram_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != RAM_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	/* the page cache is the guest's RAM: never drop it because someone opened the file */
	fi->keep_cache = 1;
	fi->direct_io = 0;
	fuse_reply_open(req, fi);
}

static void ram_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != RAM_INO || off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if ((uint64_t)off >= g.disk.size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	uint64_t len = size;
	if (len > MAX_IO)
		len = MAX_IO;
	if ((uint64_t)off + len > g.disk.size)
		len = g.disk.size - (uint64_t)off;
	void *buf = malloc(len ? len : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct iovec iov = { buf, len };
	trace_range((uint64_t)off, len);
	int r = with_fetch(vub_disk_readv, (uint64_t)off, &iov, len);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, buf, len);
	free(buf);
}

static void ram_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != RAM_INO || off < 0 || (uint64_t)off > g.disk.size || size > g.disk.size - (uint64_t)off) {
		fuse_reply_err(req, ino != RAM_INO ? EINVAL : EFBIG);
		return;
	}
	struct iovec iov = { (void *)data, size };
	trace_range((uint64_t)off, size);
	int r = with_fetch(vub_disk_writev, (uint64_t)off, &iov, size);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
}

static void ram_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, -vub_disk_flush(&g.disk));
}

static void ram_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void ram_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	char buf[512];
	size_t used = 0;
	const char *names[] = { ".", "..", RAM_NAME };
	const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, RAM_INO };
	for (off_t i = off; i < 3; i++) {
		struct stat st;
		fill_attr(inos[i], &st);
		size_t want = fuse_add_direntry(req, buf + used, sizeof buf - used, names[i], &st, i + 1);
		if (used + want > size || used + want > sizeof buf)
			break;
		used += want;
	}
	fuse_reply_buf(req, buf, used);
}

static void ram_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	(void)ino;
	(void)mode;
	(void)off;
	(void)len;
	(void)fi;
	fuse_reply_err(req, EOPNOTSUPP);
}

static const struct fuse_lowlevel_ops ops = {
	.init = ram_init, .lookup = ram_lookup, .getattr = ram_getattr, .setattr = ram_setattr, .open = ram_open,
	.read = ram_read, .write = ram_write, .flush = ram_flush, .fsync = ram_fsync, .readdir = ram_readdir,
	.fallocate = ram_fallocate,
};

static void usage(void)
{
	fprintf(stderr, "usage: slipway-ramfs --mount DIR --map FILE --chunk-dir DIR --overlay DIR [--daemon-socket PATH] [--trace FILE] [--log-level debug|info|warn]\n");
}

int main(int argc, char **argv)
{
	vub_log_component = "slipway-ramfs";
	static const struct option longopts[] = {
		{ "mount", required_argument, NULL, 'M' }, { "map", required_argument, NULL, 'm' },
		{ "chunk-dir", required_argument, NULL, 'c' }, { "overlay", required_argument, NULL, 'o' },
		{ "daemon-socket", required_argument, NULL, 'd' }, { "trace", required_argument, NULL, 't' },
		{ "log-level", required_argument, NULL, 'l' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *mount = NULL, *map = NULL, *chunk_dir = NULL, *overlay = NULL, *trace = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'M': mount = optarg; break;
		case 'm': map = optarg; break;
		case 'c': chunk_dir = optarg; break;
		case 'o': overlay = optarg; break;
		case 'd': g.daemon_socket = optarg; break;
		case 't': trace = optarg; break;
		case 'l': vub_log_min = strcmp(optarg, "debug") == 0 ? 0 : strcmp(optarg, "info") == 0 ? 1 : 2; break;
		default: usage(); return 2;
		}
	}
	if (!mount || !map || !chunk_dir || !overlay || optind != argc) {
		usage();
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	char err[512];
	if (vub_disk_open(&g.disk, map, chunk_dir, overlay, false, "ram", err, sizeof err) < 0) {
		fprintf(stderr, "slipway-ramfs: %s\n", err);
		return 1;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		vub_disk_limit_cache(&g.disk, rl.rlim_cur > 256 ? (unsigned long)(rl.rlim_cur - 256) : 0);
	if (trace) {
		g.trace_fd = open(trace, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
		g.seen = calloc(g.disk.nchunks ? g.disk.nchunks : 1, 1);
		if (g.trace_fd < 0 || !g.seen) {
			fprintf(stderr, "slipway-ramfs: --trace %s: %s\n", trace, strerror(errno));
			return 1;
		}
	}
	char *fargv[] = { argv[0], "-o", "fsname=slipway-ram,subtype=slipway-ram", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
	if (!se || fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, mount) != 0) {
		fprintf(stderr, "slipway-ramfs: cannot mount FUSE at %s (is /dev/fuse there, and may this user mount?)\n", mount);
		return 1;
	}
	vub_log("info", "serving a %llu-byte RAM image in %llu chunks at %s/" RAM_NAME, (unsigned long long)g.disk.size, (unsigned long long)g.disk.nchunks, mount);
	printf("ready\n");
	fflush(stdout);
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, 8);
	int rc = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	int frc = vub_disk_flush(&g.disk);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	vub_disk_close(&g.disk);
	if (g.trace_fd >= 0)
		close(g.trace_fd);
	return rc == 0 && frc == 0 ? 0 : 1;
}
