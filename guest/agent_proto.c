/* The agent protocol's wire format: little-endian fields, frame headers, the payload reader. */
#include "agent_proto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

struct frame frame_header_get(const uint8_t *h)
{
	return (struct frame){
		.len = get_u32(h),
		.type = get_u16(h + 4),
		.flags = get_u16(h + 6),
		.id = get_u32(h + 8),
		.payload = h + FRAME_HEADER_BYTES,
	};
}

void frame_header_put(uint8_t *h, uint16_t type, uint32_t id, uint32_t len)
{
	put_u32(h, len);
	put_u16(h + 4, type);
	put_u16(h + 6, 0);
	put_u32(h + 8, id);
}

static void reader_fail(struct reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reader_fail(struct reader *r, const char *fmt, ...)
{
	if (r->error)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->error_buf, sizeof r->error_buf, fmt, ap);
	va_end(ap);
	r->error = r->error_buf;
}

static bool read_bytes(struct reader *r, size_t n, const uint8_t **out, const char *field)
{
	if (r->error)
		return false;
	if (n > r->left) {
		reader_fail(r, "%s: needs %zu bytes, %zu left in the payload", field, n, r->left);
		return false;
	}
	*out = r->p;
	r->p += n;
	r->left -= n;
	return true;
}

uint32_t read_u32(struct reader *r, const char *field)
{
	const uint8_t *p;
	return read_bytes(r, 4, &p, field) ? get_u32(p) : 0;
}

uint64_t read_u64(struct reader *r, const char *field)
{
	const uint8_t *p;
	return read_bytes(r, 8, &p, field) ? get_u64(p) : 0;
}

char *read_string(struct reader *r, const char *field)
{
	/* a length over the limit fails the reader, and read_bytes fails after it (as after any
	 * earlier failure, which keeps its message) */
	uint32_t len = read_u32(r, field);
	if (len > MAX_STRING_BYTES)
		reader_fail(r, "%s: string of %u bytes (at most %u)", field, len, MAX_STRING_BYTES);
	const uint8_t *bytes;
	if (!read_bytes(r, len, &bytes, field))
		return NULL;
	if (memchr(bytes, '\0', len)) {
		reader_fail(r, "%s: string contains a NUL byte", field);
		return NULL;
	}
	char *copy = malloc((size_t)len + 1);
	if (!copy) {
		reader_fail(r, "%s: out of memory", field);
		return NULL;
	}
	memcpy(copy, bytes, len);
	copy[len] = '\0';
	return copy;
}

void free_string_list(char **list)
{
	if (!list)
		return;
	for (char **s = list; *s; s++)
		free(*s);
	free(list);
}

char **read_string_list(struct reader *r, const char *field, uint32_t *count_out)
{
	/* the first failure, here or earlier, is the one kept: one check once both are made */
	uint32_t count = read_u32(r, field);
	if (count > MAX_STRING_COUNT)
		reader_fail(r, "%s: %u strings (at most %u)", field, count, MAX_STRING_COUNT);
	/* each string takes at least its 4-byte length: refuse a count the payload cannot hold
	 * before allocating for it */
	if ((size_t)count * 4 > r->left)
		reader_fail(r, "%s: %u strings cannot fit in the %zu bytes left", field, count, r->left);
	if (r->error)
		return NULL;
	char **list = calloc((size_t)count + 1, sizeof *list);
	if (!list) {
		reader_fail(r, "%s: out of memory", field);
		return NULL;
	}
	for (uint32_t i = 0; i < count; i++) {
		char name[64];
		snprintf(name, sizeof name, "%s[%u]", field, i);
		list[i] = read_string(r, name);
		if (!list[i]) {
			free_string_list(list);
			return NULL;
		}
	}
	*count_out = count;
	return list;
}

void reader_expect_end(struct reader *r, const char *what)
{
	if (!r->error && r->left != 0)
		reader_fail(r, "%s: %zu unexpected bytes after the last field", what, r->left);
}
