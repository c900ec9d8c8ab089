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
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Whether [addr, addr + len) lies in one mapping of the file at `path` (per /proc/self/maps). */
static int maps_file(const void *addr, size_t len, const char *path)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return 0;
	char line[4352];
	int found = 0;
	unsigned long a = (unsigned long)addr;
	while (!found && fgets(line, sizeof line, f)) {
		unsigned long start, end;
		int name_at = 0;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &start, &end, &name_at) < 2 || name_at <= 0)
			continue;
		char *name = line + name_at;
		name[strcspn(name, "\n")] = '\0';
		found = a >= start && a < end && len <= end - a && strcmp(name, path) == 0;
	}
	fclose(f);
	return found;
}

int madvise(void *addr, size_t len, int advice)
{
	if (advice == MADV_HUGEPAGE) {
		const char *path = getenv("SLIPWAY_NO_HUGEPAGE_FILE");
		if (path && *path && maps_file(addr, len, path))
			return 0;
	}
	return (int)syscall(SYS_madvise, addr, len, advice);
}
