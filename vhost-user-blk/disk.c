#include "disk.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "virtq.h"

#define MAP_MAGIC "SLWYMAP1"
#define MAP_HEADER 32
#define MAP_ENTRY 33
#define DIRTY_MAGIC "SLWYDRT1"
#define DIRTY_HEADER 32

/*
 * The 32-byte header the disk map and the overlay's dirty bitmap share (docs/vhost-user-blk.md;
 * src/disk/snapshot.ts reads the bitmap, test/fixtures/overlay-dirty.bin pins it): magic,
 * version 1, log2 of the chunk size, disk size in bytes, chunk count. Little-endian, as the host is.
 */
struct header {
	char magic[8];
	uint32_t version;
	uint32_t chunk_log2;
	uint64_t size;
	uint64_t nchunks;
};

static struct header header_get(const uint8_t *p)
{
	struct header h;
	memcpy(h.magic, p, 8);
	memcpy(&h.version, p + 8, 4);
	memcpy(&h.chunk_log2, p + 12, 4);
	memcpy(&h.size, p + 16, 8);
	memcpy(&h.nchunks, p + 24, 8);
	return h;
}

static void header_put(uint8_t *p, const char *magic, const struct vub_disk *d)
{
	uint32_t version = 1;
	memcpy(p, magic, 8);
	memcpy(p + 8, &version, 4);
	memcpy(p + 12, &d->chunk_log2, 4);
	memcpy(p + 16, &d->size, 8);
	memcpy(p + 24, &d->nchunks, 8);
}

static int fail(char *err, size_t errlen, const char *fmt, const char *a, int e)
{
	snprintf(err, errlen, fmt, a, e ? strerror(e) : "");
	return -1;
}

static uint64_t chunk_len(const struct vub_disk *d, uint64_t n)
{
	uint64_t start = n << d->chunk_log2;
	return d->size - start < d->chunk_size ? d->size - start : d->chunk_size;
}

/* The part of [off, off+len) that lies in one chunk, `done` bytes in. */
struct piece {
	uint64_t pos;  /* disk offset */
	uint64_t c;    /* chunk number */
	uint64_t in;   /* offset inside the chunk */
	uint64_t take; /* bytes in this chunk */
};

static struct piece piece_at(const struct vub_disk *d, uint64_t off, uint64_t len, uint64_t done)
{
	struct piece p;
	p.pos = off + done;
	p.c = p.pos >> d->chunk_log2;
	p.in = p.pos - (p.c << d->chunk_log2);
	p.take = chunk_len(d, p.c) - p.in;
	if (p.take > len - done)
		p.take = len - done;
	return p;
}

bool vub_disk_is_dirty(const struct vub_disk *d, uint64_t chunk)
{
	if (!d->has_overlay || chunk >= d->nchunks)
		return false;
	return (__atomic_load_n(&d->dirty[chunk / 8], __ATOMIC_ACQUIRE) >> (chunk % 8)) & 1;
}

static void set_dirty(struct vub_disk *d, uint64_t chunk)
{
	__atomic_fetch_or(&d->dirty[chunk / 8], (uint8_t)(1u << (chunk % 8)), __ATOMIC_RELEASE);
	d->dirty_changed = true;
}

static int load_map(struct vub_disk *d, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "disk map %s: %s", path, errno);
	struct stat sb;
	if (fstat(fd, &sb) < 0 || sb.st_size < MAP_HEADER) {
		close(fd);
		return fail(err, errlen, "disk map %s: too short%s", path, 0);
	}
	void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return fail(err, errlen, "disk map %s: mmap: %s", path, errno);
	const uint8_t *p = m;
	struct header h = header_get(p);
	d->map_mmap = m;
	d->map_len = (size_t)sb.st_size;
	if (memcmp(h.magic, MAP_MAGIC, 8) != 0 || h.version != 1)
		return fail(err, errlen, "disk map %s: bad magic or version%s", path, 0);
	if (h.chunk_log2 < 12 || h.chunk_log2 > 26 || h.size == 0 || h.size % 512 != 0 || h.size > (1ull << 50))
		return fail(err, errlen, "disk map %s: bad chunk size or disk size%s", path, 0);
	uint64_t want = (h.size + (1ull << h.chunk_log2) - 1) >> h.chunk_log2;
	if (h.nchunks != want || (uint64_t)sb.st_size != MAP_HEADER + h.nchunks * MAP_ENTRY)
		return fail(err, errlen, "disk map %s: chunk count or length does not match its header%s", path, 0);
	for (uint64_t i = 0; i < h.nchunks; i++)
		if (p[MAP_HEADER + i * MAP_ENTRY] > 1)
			return fail(err, errlen, "disk map %s: bad chunk flags%s", path, 0);
	d->size = h.size;
	d->chunk_log2 = h.chunk_log2;
	d->chunk_size = 1ull << h.chunk_log2;
	d->nchunks = h.nchunks;
	d->map = p + MAP_HEADER;
	return 0;
}

static int open_overlay(struct vub_disk *d, const char *dir, char *err, size_t errlen)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return fail(err, errlen, "overlay %s: %s", dir, errno);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/data", dir);
	d->ov_data_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->ov_data_fd < 0)
		return fail(err, errlen, "overlay data %s: %s", path, errno);
	struct stat sb;
	if (fstat(d->ov_data_fd, &sb) < 0 || ((uint64_t)sb.st_size != d->size && ftruncate(d->ov_data_fd, (off_t)d->size) < 0))
		return fail(err, errlen, "overlay data %s: %s", path, errno);
	snprintf(path, sizeof path, "%s/dirty", dir);
	d->ov_dirty_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->ov_dirty_fd < 0)
		return fail(err, errlen, "overlay bitmap %s: %s", path, errno);
	d->dirty_bytes = (size_t)((d->nchunks + 7) / 8);
	d->dirty = calloc(1, d->dirty_bytes ? d->dirty_bytes : 1);
	if (!d->dirty)
		return fail(err, errlen, "overlay bitmap %s: %s", path, ENOMEM);
	uint8_t header[DIRTY_HEADER] = { 0 };
	ssize_t got = pread(d->ov_dirty_fd, header, sizeof header, 0);
	if (got == DIRTY_HEADER) {
		struct header h = header_get(header);
		if (memcmp(h.magic, DIRTY_MAGIC, 8) != 0 || h.version != 1 || h.chunk_log2 != d->chunk_log2 || h.size != d->size || h.nchunks != d->nchunks)
			return fail(err, errlen, "overlay bitmap %s belongs to another disk%s", path, 0);
		if (pread(d->ov_dirty_fd, d->dirty, d->dirty_bytes, DIRTY_HEADER) != (ssize_t)d->dirty_bytes)
			return fail(err, errlen, "overlay bitmap %s is truncated%s", path, 0);
	} else {
		header_put(header, DIRTY_MAGIC, d);
		if (pwrite(d->ov_dirty_fd, header, sizeof header, 0) != DIRTY_HEADER || pwrite(d->ov_dirty_fd, d->dirty, d->dirty_bytes, DIRTY_HEADER) != (ssize_t)d->dirty_bytes ||
		    fdatasync(d->ov_dirty_fd) < 0)
			return fail(err, errlen, "overlay bitmap %s: %s", path, errno);
	}
	d->has_overlay = true;
	return 0;
}

int vub_disk_open(struct vub_disk *d, const char *map_path, const char *chunk_dir, const char *overlay_dir, bool read_only, const char *serial, char *err, size_t errlen)
{
	memset(d, 0, sizeof *d);
	d->chunk_dir_fd = d->ov_data_fd = d->ov_dirty_fd = -1;
	pthread_mutex_init(&d->ov_lock, NULL);
	/* writers first: a close of the cached descriptors is not starved by a stream of reads */
	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&d->fd_lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	d->read_only = read_only;
	snprintf(d->serial, sizeof d->serial, "%s", serial ? serial : "slipway");
	if (load_map(d, map_path, err, errlen) < 0)
		return -1;
	d->chunk_dir_fd = open(chunk_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (d->chunk_dir_fd < 0)
		return fail(err, errlen, "chunk directory %s: %s", chunk_dir, errno);
	d->fds = malloc(sizeof(int) * (size_t)d->nchunks);
	if (!d->fds)
		return fail(err, errlen, "chunk table: %s%s", "", ENOMEM);
	for (uint64_t i = 0; i < d->nchunks; i++)
		d->fds[i] = -1;
	d->cache_cap = ULONG_MAX;
	if (overlay_dir && !read_only && open_overlay(d, overlay_dir, err, errlen) < 0)
		return -1;
	return 0;
}

void vub_disk_close(struct vub_disk *d)
{
	if (d->has_overlay)
		vub_disk_flush(d);
	if (d->fds) {
		for (uint64_t i = 0; i < d->nchunks; i++)
			if (d->fds[i] >= 0)
				close(d->fds[i]);
		free(d->fds);
	}
	if (d->chunk_dir_fd >= 0)
		close(d->chunk_dir_fd);
	if (d->ov_data_fd >= 0)
		close(d->ov_data_fd);
	if (d->ov_dirty_fd >= 0)
		close(d->ov_dirty_fd);
	free(d->dirty);
	if (d->map_mmap)
		munmap(d->map_mmap, d->map_len);
	pthread_mutex_destroy(&d->ov_lock);
	pthread_rwlock_destroy(&d->fd_lock);
	memset(d, 0, sizeof *d);
}

static void close_all_cached(struct vub_disk *d)
{
	for (uint64_t i = 0; i < d->nchunks; i++) {
		int fd = __atomic_exchange_n(&d->fds[i], -1, __ATOMIC_ACQ_REL);
		if (fd >= 0) {
			close(fd);
			__atomic_sub_fetch(&d->cached, 1, __ATOMIC_RELAXED);
		}
	}
}

void vub_disk_limit_cache(struct vub_disk *d, unsigned long cap)
{
	d->cache_cap = cap;
}

void vub_disk_drop_cache(struct vub_disk *d)
{
	pthread_rwlock_wrlock(&d->fd_lock);
	close_all_cached(d);
	pthread_rwlock_unlock(&d->fd_lock);
}

/*
 * The open chunk file of chunk n (caller holds fd_lock), -ENOENT when it is not local, or another
 * negative errno. *own says the caller got a descriptor of its own, not in the cache (the cache is
 * full), and closes it after its I/O.
 */
static int chunk_fd(struct vub_disk *d, uint64_t n, bool *own)
{
	*own = false;
	int fd = __atomic_load_n(&d->fds[n], __ATOMIC_ACQUIRE);
	if (fd >= 0)
		return fd;
	static const char hex[] = "0123456789abcdef";
	const uint8_t *digest = d->map + n * MAP_ENTRY + 1;
	char name[3 + 64 + 1];
	name[0] = hex[digest[0] >> 4];
	name[1] = hex[digest[0] & 15];
	name[2] = '/';
	for (int i = 0; i < 32; i++) {
		name[3 + 2 * i] = hex[digest[i] >> 4];
		name[3 + 2 * i + 1] = hex[digest[i] & 15];
	}
	name[67] = '\0';
	fd = openat(d->chunk_dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (__atomic_add_fetch(&d->cached, 1, __ATOMIC_RELAXED) > d->cache_cap) {
		__atomic_sub_fetch(&d->cached, 1, __ATOMIC_RELAXED);
		*own = true;
		return fd;
	}
	int expected = -1;
	if (!__atomic_compare_exchange_n(&d->fds[n], &expected, fd, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		__atomic_sub_fetch(&d->cached, 1, __ATOMIC_RELAXED);
		close(fd); /* another queue thread opened it first: this one was never shared */
		return expected;
	}
	return fd;
}

static int chunk_io(struct vub_disk *d, uint64_t n, int (*io)(int fd, void *arg), void *arg)
{
	bool own;
	int fd = chunk_fd(d, n, &own);
	if (fd < 0)
		return fd;
	int rc = io(fd, arg);
	if (own)
		close(fd);
	return rc;
}

/*
 * Run `io` on chunk n's file: -ENOENT when it is not local, else what `io` returns. A cached
 * descriptor is used under fd_lock's read side only, and closed only under its write side, so no
 * queue thread closes a descriptor another one is reading. Out of descriptors (EMFILE), the cached
 * ones are closed and this one I/O runs under the write side, so that no other thread takes the
 * numbers just freed first. Lock order: ov_lock, then fd_lock.
 */
static int with_chunk_fd(struct vub_disk *d, uint64_t n, int (*io)(int fd, void *arg), void *arg)
{
	pthread_rwlock_rdlock(&d->fd_lock);
	int rc = chunk_io(d, n, io, arg);
	pthread_rwlock_unlock(&d->fd_lock);
	if (rc != -EMFILE)
		return rc;
	pthread_rwlock_wrlock(&d->fd_lock);
	close_all_cached(d);
	rc = chunk_io(d, n, io, arg);
	pthread_rwlock_unlock(&d->fd_lock);
	return rc;
}

/* preadv/pwritev until every byte is done; a short read past a file's end fills zeros. */
static int full_io(int fd, const struct iovec *iov, unsigned n, uint64_t off, uint64_t len, bool write, bool zero_past_eof)
{
	struct iovec local[VUB_CHAIN_IOV_MAX];
	uint64_t done = 0;
	while (done < len) {
		int k = vub_iov_slice(iov, n, (size_t)done, (size_t)(len - done), local, VUB_CHAIN_IOV_MAX);
		if (k < 0)
			return -EINVAL;
		int batch = k < IOV_MAX ? k : IOV_MAX; /* the rest in the next round */
		ssize_t r = write ? pwritev(fd, local, batch, (off_t)(off + done)) : preadv(fd, local, batch, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) {
			if (write || !zero_past_eof)
				return -EIO;
			for (int i = 0; i < k; i++)
				memset(local[i].iov_base, 0, local[i].iov_len);
			return 0;
		}
		done += (uint64_t)r;
	}
	return 0;
}

static void zero_iov(const struct iovec *iov, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		memset(iov[i].iov_base, 0, iov[i].iov_len);
}

static int check_range(const struct vub_disk *d, uint64_t off, uint64_t len)
{
	if (off > d->size || len > d->size - off)
		return -ERANGE;
	return 0;
}

struct chunk_read {
	const struct iovec *iov;
	unsigned n;
	uint64_t in;
	uint64_t len;
};

static int read_chunk(int fd, void *arg)
{
	const struct chunk_read *cr = arg;
	return full_io(fd, cr->iov, cr->n, cr->in, cr->len, false, false);
}

/*
 * Run `fn` on each piece of [off, off+len) that lies in one chunk, in order, with the part of `iov`
 * that piece covers (none when iov is NULL). Stops at the first nonzero return (an error, or
 * VUB_MISS with *missing set) and returns it.
 */
typedef int (*piece_fn)(struct vub_disk *d, const struct piece *pc, const struct iovec *iov, unsigned n, uint64_t *missing);

static int for_each_piece(struct vub_disk *d, uint64_t off, uint64_t len, const struct iovec *iov, unsigned n, piece_fn fn, uint64_t *missing)
{
	int rc = check_range(d, off, len);
	if (rc < 0)
		return rc;
	struct iovec slice[VUB_CHAIN_IOV_MAX];
	for (uint64_t done = 0; done < len;) {
		struct piece pc = piece_at(d, off, len, done);
		int k = 0;
		if (iov && (k = vub_iov_slice(iov, n, (size_t)done, (size_t)pc.take, slice, VUB_CHAIN_IOV_MAX)) < 0)
			return -EINVAL;
		rc = fn(d, &pc, iov ? slice : NULL, (unsigned)k, missing);
		if (rc != 0)
			return rc;
		done += pc.take;
	}
	return 0;
}

static int read_piece(struct vub_disk *d, const struct piece *pc, const struct iovec *piece, unsigned k, uint64_t *missing)
{
	if (vub_disk_is_dirty(d, pc->c))
		return full_io(d->ov_data_fd, piece, k, pc->pos, pc->take, false, true);
	if (d->map[pc->c * MAP_ENTRY] == 0) {
		zero_iov(piece, k);
		return 0;
	}
	struct chunk_read cr = { piece, k, pc->in, pc->take };
	int rc = with_chunk_fd(d, pc->c, read_chunk, &cr);
	if (rc == -ENOENT) {
		*missing = pc->c;
		return VUB_MISS;
	}
	return rc;
}

int vub_disk_readv(struct vub_disk *d, uint64_t off, const struct iovec *iov, unsigned n, uint64_t len, uint64_t *missing)
{
	return for_each_piece(d, off, len, iov, n, read_piece, missing);
}

struct chunk_copy {
	struct vub_disk *d;
	uint64_t start;
	uint64_t len;
};

static int copy_chunk(int fd, void *arg)
{
	const struct chunk_copy *cc = arg;
	uint64_t done = 0;
	while (done < cc->len) {
		loff_t in = (loff_t)done;
		loff_t out = (loff_t)(cc->start + done);
		ssize_t r = copy_file_range(fd, &in, cc->d->ov_data_fd, &out, (size_t)(cc->len - done), 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			/* no copy_file_range across these filesystems: copy through a buffer */
			uint8_t buf[65536];
			ssize_t got = pread(fd, buf, sizeof buf < cc->len - done ? sizeof buf : (size_t)(cc->len - done), (off_t)done);
			if (got <= 0 || pwrite(cc->d->ov_data_fd, buf, (size_t)got, (off_t)(cc->start + done)) != got)
				return got < 0 ? -errno : -EIO;
			r = got;
		}
		done += (uint64_t)r;
	}
	return 0;
}

/* Make chunk c dirty with its current bytes in the overlay (caller holds ov_lock). */
static int copy_up(struct vub_disk *d, uint64_t c, uint64_t *missing)
{
	uint64_t start = c << d->chunk_log2;
	uint64_t len = chunk_len(d, c);
	if (d->map[c * MAP_ENTRY] == 0) {
		/* a hole: clear whatever an interrupted earlier copy-up left there */
		if (fallocate(d->ov_data_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)start, (off_t)len) < 0 && errno != EOPNOTSUPP)
			return -errno;
		return 0;
	}
	struct chunk_copy cc = { d, start, len };
	int rc = with_chunk_fd(d, c, copy_chunk, &cc);
	if (rc == -ENOENT) {
		*missing = c;
		return VUB_MISS;
	}
	return rc;
}

/*
 * Run `io` on chunk c of the overlay. A dirty chunk is written directly. A clean one is made
 * dirty under ov_lock: copy-up (unless the piece covers the whole chunk), the write itself, then
 * the dirty bit, all before another queue may touch that chunk's copy-up. (Writing a whole clean
 * chunk outside the lock let a concurrent partial write copy the old chunk over it.)
 */
struct piece_io {
	int (*fn)(struct vub_disk *d, const struct piece_io *p);
	const struct iovec *iov;
	unsigned n;
	uint64_t pos;
	uint64_t len;
};

static int overlay_piece(struct vub_disk *d, uint64_t c, uint64_t in, const struct piece_io *io, uint64_t *missing)
{
	if (vub_disk_is_dirty(d, c))
		return io->fn(d, io);
	pthread_mutex_lock(&d->ov_lock);
	int rc = 0;
	if (vub_disk_is_dirty(d, c)) {
		rc = io->fn(d, io);
	} else {
		bool whole = in == 0 && io->len == chunk_len(d, c);
		if (!whole)
			rc = copy_up(d, c, missing);
		if (rc == 0)
			rc = io->fn(d, io);
		if (rc == 0)
			set_dirty(d, c);
	}
	pthread_mutex_unlock(&d->ov_lock);
	return rc;
}

static int write_piece(struct vub_disk *d, const struct piece_io *p)
{
	return full_io(d->ov_data_fd, p->iov, p->n, p->pos, p->len, true, false);
}

static int zero_piece(struct vub_disk *d, const struct piece_io *p)
{
	if (fallocate(d->ov_data_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)p->pos, (off_t)p->len) == 0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	static const uint8_t zeros[65536];
	for (uint64_t z = 0; z < p->len;) {
		size_t w = p->len - z < sizeof zeros ? (size_t)(p->len - z) : sizeof zeros;
		if (pwrite(d->ov_data_fd, zeros, w, (off_t)(p->pos + z)) != (ssize_t)w)
			return -EIO;
		z += w;
	}
	return 0;
}

static int write_overlay_piece(struct vub_disk *d, const struct piece *pc, const struct iovec *piece, unsigned k, uint64_t *missing)
{
	struct piece_io io = { write_piece, piece, k, pc->pos, pc->take };
	return overlay_piece(d, pc->c, pc->in, &io, missing);
}

static int zero_overlay_piece(struct vub_disk *d, const struct piece *pc, const struct iovec *piece, unsigned k, uint64_t *missing)
{
	(void)piece;
	(void)k;
	struct piece_io io = { zero_piece, NULL, 0, pc->pos, pc->take };
	return overlay_piece(d, pc->c, pc->in, &io, missing);
}

int vub_disk_writev(struct vub_disk *d, uint64_t off, const struct iovec *iov, unsigned n, uint64_t len, uint64_t *missing)
{
	if (d->read_only || !d->has_overlay)
		return -EROFS;
	return for_each_piece(d, off, len, iov, n, write_overlay_piece, missing);
}

int vub_disk_zero(struct vub_disk *d, uint64_t off, uint64_t len, uint64_t *missing)
{
	if (d->read_only || !d->has_overlay)
		return -EROFS;
	return for_each_piece(d, off, len, NULL, 0, zero_overlay_piece, missing);
}

int vub_disk_flush(struct vub_disk *d)
{
	if (!d->has_overlay)
		return 0;
	if (fdatasync(d->ov_data_fd) < 0)
		return -errno;
	pthread_mutex_lock(&d->ov_lock);
	int rc = 0;
	if (d->dirty_changed) {
		d->dirty_changed = false;
		if (pwrite(d->ov_dirty_fd, d->dirty, d->dirty_bytes, DIRTY_HEADER) != (ssize_t)d->dirty_bytes || fdatasync(d->ov_dirty_fd) < 0) {
			rc = -EIO;
			d->dirty_changed = true;
		}
	}
	pthread_mutex_unlock(&d->ov_lock);
	return rc;
}
