/*
 * vub-frontend: limits, exit codes and the small helpers every part uses (errors, clocks, a
 * deterministic random generator, number parsing, JSON strings).
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_UTIL_H
#define VUB_FE_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "../vhost_user.h"

#define EXIT_CHECK_FAILED 1
#define EXIT_ERROR 2

#define SECTOR_BYTES 512u
#define DEFAULT_MEM_BYTES (64ull << 20)
#define DEFAULT_RING 256u
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_CASE_TIMEOUT_MS 1000
/* Where the second region starts in guest-physical space: above 4 GiB, as on a PC, so a buffer that
 * runs past the end of the first region lands in a hole. */
#define REGION1_GPA (4ull << 30)
#define MAX_QUEUES 16u
#define MAX_REGIONS 2u
/* buffers in one chain we build; the largest is too-many-segments against a big seg_max */
#define MAX_CHAIN 1100u
/* data segments a normal request uses at most, whatever seg_max allows */
#define MAX_DATA_SEGS 256u
#define SLOT_DATA_BYTES (1u << 20)
#define STATUS_UNSET 0xffu

/* ======================================================================================== */
/* utilities                                                                                */
/* ======================================================================================== */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("vub-frontend: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(EXIT_ERROR);
}

/* Open a file to read, and its size in bytes; dies saying why when it cannot. */
static int open_input(const char *path, uint64_t *size_bytes)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		die("fstat %s: %s", path, strerror(errno));
	*size_bytes = (uint64_t)st.st_size;
	return fd;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		die("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		die("clock_gettime: %s", strerror(errno));
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* milliseconds left until deadline_ns, rounded up, 0 once it has passed */
static int ms_until(uint64_t deadline_ns)
{
	uint64_t now = now_ns();
	if (now >= deadline_ns)
		return 0;
	uint64_t ms = (deadline_ns - now + 999999) / 1000000;
	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A byte count or number: decimal or 0x hex, with an optional binary suffix k, m or g. */
static bool parse_u64(const char *s, uint64_t *out)
{
	if (!s || !*s || *s == '-' || *s == '+')
		return false;
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s)
		return false;
	unsigned shift = 0;
	if (*end == 'k' || *end == 'K')
		shift = 10;
	else if (*end == 'm' || *end == 'M')
		shift = 20;
	else if (*end == 'g' || *end == 'G')
		shift = 30;
	if (shift) {
		end++;
		if (v > (UINT64_MAX >> shift))
			return false;
		v <<= shift;
	}
	if (*end)
		return false;
	*out = v;
	return true;
}

static uint64_t arg_u64(const char *what, const char *s, uint64_t min, uint64_t max)
{
	uint64_t v;
	if (!parse_u64(s, &v) || v < min || v > max)
		die("%s must be a number from %" PRIu64 " to %" PRIu64 ", not '%s'", what, min, max, s ? s : "");
	return v;
}

/* Print s as a JSON string (quotes included); bytes outside printable ASCII become \u00XX. */
static void json_string(FILE *f, const char *s, size_t len)
{
	fputc('"', f);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

#endif
