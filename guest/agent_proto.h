/*
 * The agent protocol's wire format (docs/agent-protocol.md), guest side: the frame header, the
 * message types and flags, little-endian fields, and a bounded reader of request payloads. No I/O
 * and nothing of the agent's state, so a test program can link it alone (guest/test/wire.c, against
 * the golden frames in test/fixtures/agent/). The host side is src/guest/agent-protocol.ts.
 */
#ifndef SLIPWAY_AGENT_PROTO_H
#define SLIPWAY_AGENT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTOCOL_VERSION 1

#define FRAME_HEADER_BYTES 12u
#define MAX_PAYLOAD (1048576u + 65536u)
#define MAX_STRING_BYTES 65536u
#define MAX_STRING_COUNT 4096u
#define MAX_READ_FILE_BYTES 1048576u

enum request_type {
	REQ_PING = 1,
	REQ_EXEC = 2,
	REQ_STDIN = 3,
	REQ_SIGNAL = 4,
	REQ_WRITE_FILE = 5,
	REQ_READ_FILE = 6,
	REQ_SYNC = 7,
	REQ_FSFREEZE = 8,
	REQ_SHUTDOWN = 9,
	REQ_SET_HOSTNAME = 10,
	REQ_SET_TIME = 11,
};

enum reply_type {
	REP_PONG = 0x81,
	REP_STARTED = 0x82,
	REP_STDOUT = 0x83,
	REP_STDERR = 0x84,
	REP_EXIT = 0x85,
	REP_OK = 0x86,
	REP_DATA = 0x87,
	REP_ERROR = 0xff,
};

#define EXEC_FLAG_STDIN 0x1u
#define WRITE_FILE_FLAG_CREATE 0x1u
#define FSFREEZE_FLAG_THAW 0x1u
#define SHUTDOWN_FLAG_REBOOT 0x1u

/* A frame as read off the wire; payload points into the reader's buffer. */
struct frame {
	uint32_t len;
	uint16_t type;
	uint16_t flags;
	uint32_t id;
	const uint8_t *payload;
};

void put_u16(uint8_t *p, uint16_t v);
void put_u32(uint8_t *p, uint32_t v);
uint16_t get_u16(const uint8_t *p);
uint32_t get_u32(const uint8_t *p);
uint64_t get_u64(const uint8_t *p);

/* The header at `h` (FRAME_HEADER_BYTES), its payload taken to follow it. The length is not
 * checked here: the caller compares it with MAX_PAYLOAD before waiting for that many bytes. */
struct frame frame_header_get(const uint8_t *h);
/* Write a reply's header (flags 0) for a payload of `len` bytes. */
void frame_header_put(uint8_t *h, uint16_t type, uint32_t id, uint32_t len);

/*
 * A bounded cursor over a request payload. Every read checks what is left; the first failure
 * records why and makes every later read fail too, so a handler can read all its fields and check
 * once. Messages name the field, for the ERROR reply.
 */
struct reader {
	const uint8_t *p;
	size_t left;
	const char *error;
	char error_buf[160];
};

uint32_t read_u32(struct reader *r, const char *field);
uint64_t read_u64(struct reader *r, const char *field);
/* A string as a NUL-terminated copy (the caller frees it); strings must not contain NUL. */
char *read_string(struct reader *r, const char *field);
/* A string list as a NULL-terminated array of copies (free with free_string_list). */
char **read_string_list(struct reader *r, const char *field, uint32_t *count_out);
void free_string_list(char **list);
void reader_expect_end(struct reader *r, const char *what);

#endif
