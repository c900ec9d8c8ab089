/* Shared set-up for the fuzz targets: a small disk (map file, chunk dir, overlay) in /tmp. */
#ifndef SLIPWAY_FUZZ_COMMON_H
#define SLIPWAY_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "disk.h"

/*
 * The disks' directories (in $TMPDIR, else /tmp), removed when the fuzzer ends its run with exit();
 * after a crash (libFuzzer's _Exit) they stay, with the input that crashed it.
 */
static char fuzz_dirs[2][256];

static void fuzz_remove_dirs(void)
{
	for (int i = 0; i < 2; i++) {
		if (fuzz_dirs[i][0] == '\0')
			continue;
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf %s", fuzz_dirs[i]);
		if (system(cmd) != 0)
			fprintf(stderr, "fuzz disk: could not remove %s\n", fuzz_dirs[i]);
	}
}

/* A 1 MiB disk of 64 KiB chunks: chunk 0 and 1 have data files, chunk 2 is missing, the rest are holes. */
static struct vub_disk *fuzz_disk(bool read_only)
{
	static struct vub_disk disks[2];
	static bool made[2];
	struct vub_disk *d = &disks[read_only];
	if (made[read_only])
		return d;
	const char *tmp = getenv("TMPDIR");
	char dir[200];
	snprintf(dir, sizeof dir, "%s/slipway-fuzz-XXXXXX", tmp && tmp[0] == '/' && strlen(tmp) < 160 && !strpbrk(tmp, " '\"$`\\;&|") ? tmp : "/tmp");
	if (!mkdtemp(dir))
		abort();
	if (fuzz_dirs[0][0] == '\0' && fuzz_dirs[1][0] == '\0')
		atexit(fuzz_remove_dirs);
	snprintf(fuzz_dirs[read_only], sizeof fuzz_dirs[read_only], "%s", dir);
	char path[512];
	snprintf(path, sizeof path, "%s/chunks/aa", dir);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "mkdir -p %s", path);
	if (system(cmd) != 0)
		abort();
	uint8_t map[32 + 16 * 33] = { 0 };
	memcpy(map, "SLWYMAP1", 8);
	uint32_t v = 1, log2 = 16;
	uint64_t size = 1 << 20, count = 16;
	memcpy(map + 8, &v, 4);
	memcpy(map + 12, &log2, 4);
	memcpy(map + 16, &size, 8);
	memcpy(map + 24, &count, 8);
	for (int c = 0; c < 3; c++) {
		map[32 + c * 33] = 1;
		memset(map + 32 + c * 33 + 1, 0xaa, 32);
		map[32 + c * 33 + 32] = (uint8_t)c; /* distinct digests */
	}
	for (int c = 0; c < 2; c++) {
		char name[64 + 1];
		for (int i = 0; i < 31; i++)
			memcpy(name + 2 * i, "aa", 2);
		snprintf(name + 62, 3, "%02x", c);
		snprintf(path, sizeof path, "%s/chunks/aa/%s", dir, name);
		FILE *f = fopen(path, "w");
		if (!f)
			abort();
		static uint8_t data[65536];
		memset(data, 'a' + c, sizeof data);
		fwrite(data, 1, sizeof data, f);
		fclose(f);
	}
	snprintf(path, sizeof path, "%s/disk.map", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		abort();
	fwrite(map, 1, sizeof map, f);
	fclose(f);
	char chunks[512], overlay[512], err[256];
	snprintf(chunks, sizeof chunks, "%s/chunks", dir);
	snprintf(overlay, sizeof overlay, "%s/overlay", dir);
	if (vub_disk_open(d, path, chunks, read_only ? NULL : overlay, read_only, "fuzz", err, sizeof err) < 0) {
		fprintf(stderr, "fuzz disk: %s\n", err);
		abort();
	}
	made[read_only] = true;
	return d;
}

#endif
