/*
 * libslipway-nohugepage.so: loaded into QEMU (LD_PRELOAD) when its guest RAM is a file that
 * slipway-ramfs serves on demand (a lazy memory restore, docs/snapshots.md). QEMU advises
 * MADV_HUGEPAGE on every RAM block it maps (softmmu/physmem.c, ram_block_add), and on a file mapping
 * so advised the kernel reads two huge pages (4 MiB) around every page fault
 * (mm/filemap.c, do_sync_mmap_readahead), whatever the file's readahead is: a restored guest that
 * touches a page then loads 64 RAM chunks, and its working set becomes most of its RAM. This
 * library drops MADV_HUGEPAGE for the mapping of the one file named by SLIPWAY_NO_HUGEPAGE_FILE
 * (its path as /proc/self/maps shows it) and passes every other madvise(2) through unchanged.
 * Anything it cannot tell (no such variable, /proc unreadable, another mapping) is passed through.
 * No stdio and no allocation: an allocator may call madvise from inside malloc.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A hex number at *p, advanced past it. */
static unsigned long hex(const char **p, const char *end)
{
	unsigned long v = 0;
	for (; *p < end; (*p)++) {
		char c = **p;
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			break;
		v = v * 16 + (unsigned long)d;
	}
	return v;
}

/* Whether one /proc/self/maps line [line, end) maps `path` over [a, a + len). */
static int line_maps(const char *line, const char *end, unsigned long a, size_t len, const char *path)
{
	const char *p = line;
	unsigned long start = hex(&p, end);
	if (p >= end || *p != '-')
		return 0;
	p++;
	unsigned long stop = hex(&p, end);
	if (!(a >= start && a < stop && len <= stop - a))
		return 0;
	/* five fields (range, perms, offset, dev, inode), then spaces, then the path */
	for (int field = 0; field < 5; field++) {
		while (p < end && *p != ' ')
			p++;
		while (p < end && *p == ' ')
			p++;
	}
	size_t n = strlen(path);
	return (size_t)(end - p) == n && memcmp(p, path, n) == 0;
}

/* Whether [addr, addr + len) lies in one mapping of the file at `path` (per /proc/self/maps). */
static int maps_file(const void *addr, size_t len, const char *path)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char buf[8192];
	size_t have = 0;
	int found = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof buf - have);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		have += (size_t)r;
		char *line = buf;
		char *nl;
		while (!found && (nl = memchr(line, '\n', (size_t)(buf + have - line))) != NULL) {
			found = line_maps(line, nl, (unsigned long)addr, len, path);
			line = nl + 1;
		}
		if (found)
			break;
		have = (size_t)(buf + have - line);
		if (have == sizeof buf)
			have = 0; /* a line longer than the buffer: not a path we could match */
		memmove(buf, line, have);
	}
	close(fd);
	return found;
}

int madvise(void *addr, size_t len, int advice)
{
	if (advice == MADV_HUGEPAGE) {
		int saved = errno;
		const char *path = getenv("SLIPWAY_NO_HUGEPAGE_FILE");
		int skip = path && *path && maps_file(addr, len, path);
		errno = saved;
		if (skip)
			return 0;
	}
	return (int)syscall(SYS_madvise, addr, len, advice);
}
