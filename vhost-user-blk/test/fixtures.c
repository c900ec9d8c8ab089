/*
 * vub-fixtures: slipway-blk's side of the binary formats it shares with the daemon, against the
 * golden files in test/fixtures/ (their README says what each holds; the TypeScript side reads the
 * same files in test/wire-fixtures.test.ts):
 *   miss-*.bin         the miss protocol: FETCH as vub_miss.c encodes it, replies as it decodes them
 *   disk-map.bin       the disk map: opened by vub_disk_open, its holes read as zeros, its chunks
 *                      from the files their digests name, a chunk not local reported as a miss
 *   overlay-dirty.bin  the overlay's dirty bitmap: written by the backend after writes to chunks
 *                      0, 3 and 10 of that disk, and read back by it
 * Usage: vub-fixtures FIXTURES_DIR; exit status 0 when all match.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../disk.h"
#include "../miss_wire.h"

#define TEST_NAME "vub-fixtures"
#include "test-check.h"

#define CHUNK_BYTES 65536u
#define NCHUNKS 11u
#define DISK_BYTES (10u * CHUNK_BYTES + 4096u)
#define MISS_CHUNK 0x0000000100000203ull

static void die(const char *what, const char *path)
{
	fprintf(stderr, "vub-fixtures: %s %s: %s\n", what, path, strerror(errno));
	exit(2);
}

static size_t load(const char *path, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", path);
	ssize_t n = read(fd, buf, cap);
	if (n < 0)
		die("read", path);
	close(fd);
	return (size_t)n;
}

static void store(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd) < 0)
		die("write", path);
}

static void check_miss(const char *dir)
{
	char path[4096];
	uint8_t golden[64], msg[MISS_MSG_BYTES];
	snprintf(path, sizeof path, "%s/miss-fetch-request.bin", dir);
	size_t n = load(path, golden, sizeof golden);
	miss_encode_fetch(msg, MISS_CHUNK);
	CHECK(n == sizeof msg && memcmp(msg, golden, n) == 0, "miss-fetch-request.bin: FETCH differs from the golden bytes");

	static const struct {
		const char *name;
		int32_t status;
	} replies[] = { { "miss-reply-ok.bin", 0 }, { "miss-reply-enospc.bin", -ENOSPC } };
	for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, replies[i].name);
		n = load(path, golden, sizeof golden);
		int32_t status;
		uint64_t chunk;
		CHECK(n == MISS_MSG_BYTES && miss_decode_reply(golden, &status, &chunk), "%s: not a reply", replies[i].name);
		CHECK(status == replies[i].status && chunk == MISS_CHUNK, "%s: status %d chunk %llu", replies[i].name, status, (unsigned long long)chunk);
	}
}

static int read_at(struct vub_disk *d, uint64_t off, uint8_t *buf, size_t len, uint64_t *missing)
{
	struct iovec iov = { buf, len };
	return vub_disk_readv(d, off, &iov, 1, len, missing);
}

static void check_disk(const char *dir, const char *work)
{
	char map[4096], chunks[4096], overlay[4096], path[8192];
	snprintf(map, sizeof map, "%s/disk-map.bin", dir);
	snprintf(chunks, sizeof chunks, "%s/chunks", work);
	snprintf(overlay, sizeof overlay, "%s/overlay", work);
	/* chunks 1 and 10 name the digest 00 01 .. 1f, which is local; chunk 4 names a00 .. bf, which is not */
	static uint8_t content[CHUNK_BYTES];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (uint8_t)(i * 7 + 1);
	snprintf(path, sizeof path, "%s/00", chunks);
	if (mkdir(chunks, 0700) < 0 || mkdir(path, 0700) < 0)
		die("mkdir", path);
	char name[65];
	for (int i = 0; i < 32; i++)
		snprintf(name + 2 * i, 3, "%02x", i);
	snprintf(path, sizeof path, "%s/00/%s", chunks, name);
	store(path, content, sizeof content);

	struct vub_disk d;
	char err[512];
	if (vub_disk_open(&d, map, chunks, overlay, false, "fixture", err, sizeof err) < 0) {
		fail("disk-map.bin: %s", err);
		return;
	}
	CHECK(d.size == DISK_BYTES && d.chunk_size == CHUNK_BYTES && d.nchunks == NCHUNKS, "disk-map.bin: geometry");
	static uint8_t buf[CHUNK_BYTES];
	uint64_t missing = UINT64_MAX;
	memset(buf, 0xa5, sizeof buf);
	CHECK(read_at(&d, 0, buf, CHUNK_BYTES, &missing) == 0 && buf[0] == 0 && memcmp(buf, buf + 1, CHUNK_BYTES - 1) == 0, "disk-map.bin: chunk 0 is a hole, not zeros");
	CHECK(read_at(&d, 1 * CHUNK_BYTES, buf, CHUNK_BYTES, &missing) == 0 && memcmp(buf, content, CHUNK_BYTES) == 0, "disk-map.bin: chunk 1 is not its file");
	CHECK(read_at(&d, 10 * CHUNK_BYTES, buf, 4096, &missing) == 0 && memcmp(buf, content, 4096) == 0, "disk-map.bin: chunk 10 is not its file");
	CHECK(read_at(&d, 4 * CHUNK_BYTES, buf, 512, &missing) == VUB_MISS && missing == 4, "disk-map.bin: chunk 4 is not reported missing");

	/* writes to a hole (0), another hole (3, partly) and the last chunk (10, partly: copied up) */
	memset(buf, 0x5a, sizeof buf);
	struct iovec iov = { buf, CHUNK_BYTES };
	CHECK(vub_disk_writev(&d, 0, &iov, 1, CHUNK_BYTES, &missing) == 0, "write chunk 0");
	iov.iov_len = 4096;
	CHECK(vub_disk_writev(&d, 3 * CHUNK_BYTES + 8192, &iov, 1, 4096, &missing) == 0, "write chunk 3");
	iov.iov_len = 512;
	CHECK(vub_disk_writev(&d, 10 * CHUNK_BYTES + 512, &iov, 1, 512, &missing) == 0, "write chunk 10");
	CHECK(vub_disk_flush(&d) == 0, "flush");
	vub_disk_close(&d);

	uint8_t golden[256], written[256];
	snprintf(path, sizeof path, "%s/overlay-dirty.bin", dir);
	size_t n = load(path, golden, sizeof golden);
	snprintf(path, sizeof path, "%s/dirty", overlay);
	size_t m = load(path, written, sizeof written);
	CHECK(n == m && memcmp(golden, written, n) == 0, "overlay-dirty.bin: the backend wrote other bytes (%zu, golden %zu)", m, n);

	/* and the golden bitmap, given to a fresh overlay, is read back as chunks 0, 3 and 10 */
	snprintf(overlay, sizeof overlay, "%s/overlay2", work);
	if (mkdir(overlay, 0700) < 0)
		die("mkdir", overlay);
	snprintf(path, sizeof path, "%s/dirty", overlay);
	store(path, golden, n);
	if (vub_disk_open(&d, map, chunks, overlay, false, "fixture", err, sizeof err) < 0) {
		fail("overlay-dirty.bin: %s", err);
		return;
	}
	for (uint64_t c = 0; c < NCHUNKS; c++)
		CHECK(vub_disk_is_dirty(&d, c) == (c == 0 || c == 3 || c == 10), "overlay-dirty.bin: chunk %llu", (unsigned long long)c);
	vub_disk_close(&d);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: vub-fixtures FIXTURES_DIR\n");
		return 2;
	}
	char work[] = "/tmp/vub-fixtures-XXXXXX";
	if (!mkdtemp(work))
		die("mkdtemp", work);
	check_miss(argv[1]);
	check_disk(argv[1], work);
	char rm[256];
	snprintf(rm, sizeof rm, "rm -rf '%s'", work);
	if (system(rm) != 0)
		fprintf(stderr, "vub-fixtures: could not remove %s\n", work);
	return test_result("every slipway-blk fixture matches");
}
