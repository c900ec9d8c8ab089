/*
 * The miss protocol's two messages (docs/vhost-user-blk.md, "The miss protocol"), 16 bytes each,
 * little-endian: slipway-blk sends FETCH for a chunk that is not local, the daemon
 * (src/serve/miss-server.ts) answers with the chunk number and a status. Header-only, so the
 * backend (vub_miss.c) and its fixture test (test/fixtures.c, against test/fixtures/miss-*.bin)
 * use the very same code.
 */
#ifndef SLIPWAY_MISS_WIRE_H
#define SLIPWAY_MISS_WIRE_H

#include <stdbool.h>
#include <stdint.h>

#define MISS_MSG_BYTES 16
#define MISS_MAGIC_REQ 0x534C4651u /* 'SLFQ' */
#define MISS_MAGIC_REP 0x534C4652u /* 'SLFR' */
#define MISS_OP_FETCH 1u

/* How long a backend's misses wait for a daemon that is away (restarting) before they fail, and
 * how often it tries to reach the daemon again meanwhile (docs/vhost-user-blk.md). */
#define MISS_AWAY_MS 30000
#define MISS_RETRY_MS 100

static inline void miss_put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t miss_get_le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* FETCH: u32 magic, u32 op, u64 chunk */
static inline void miss_encode_fetch(uint8_t msg[MISS_MSG_BYTES], uint64_t chunk)
{
	miss_put_le(msg, MISS_MAGIC_REQ, 4);
	miss_put_le(msg + 4, MISS_OP_FETCH, 4);
	miss_put_le(msg + 8, chunk, 8);
}

/* A reply: u32 magic, i32 status (0, or a negative errno), u64 chunk. False when the magic is wrong;
 * the chunk number is the caller's to check against the disk. */
static inline bool miss_decode_reply(const uint8_t msg[MISS_MSG_BYTES], int32_t *status, uint64_t *chunk)
{
	*status = (int32_t)(uint32_t)miss_get_le(msg + 4, 4);
	*chunk = miss_get_le(msg + 8, 8);
	return miss_get_le(msg, 4) == MISS_MAGIC_REP;
}

#endif
