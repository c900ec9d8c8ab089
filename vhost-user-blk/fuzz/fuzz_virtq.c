/*
 * Fuzz the virtqueue walker and the virtio-blk request parser: the input is guest memory (rings,
 * descriptors, indirect tables, request headers) and the avail index; every request the ring
 * yields is executed against a small disk. Nothing the guest writes may crash the backend or make
 * it touch memory outside the guest's. The first byte: bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bits
 * 2-5 the ring's starting index, bit 6 no chunk-file cache (every I/O opens and closes its own
 * descriptor, and the cache is dropped between requests), bit 7 a read-only disk.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include "blk.h"
#include "fuzz_common.h"
#include "virtq.h"

#define MEM_BYTES (64 * 1024)
#define GPA_BASE 0x100000ull
#define RING_NUM 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	static uint8_t *mem;
	if (!mem)
		mem = malloc(MEM_BYTES);
	memset(mem, 0, MEM_BYTES);
	/* first bytes choose the options; the rest is copied over guest memory */
	uint8_t opts = data[0];
	memcpy(mem, data + 1, size - 1 < MEM_BYTES ? size - 1 : MEM_BYTES);
	struct vub_mem m = { .n = 1 };
	m.r[0] = (struct vub_region){ .gpa = GPA_BASE, .size = MEM_BYTES, .uva = GPA_BASE, .host = mem };
	struct vub_ring r = { 0 };
	/* the input's first bytes are the avail ring (at 0), then the descriptor table (at 0x40), then
	 * whatever the descriptors point at; the used ring lies past the input (VMM addresses equal
	 * guest addresses here) */
	if (vub_ring_map(&r, &m, RING_NUM, GPA_BASE + 0x40, GPA_BASE, GPA_BASE + 0x8000) < 0)
		return 0;
	r.indirect = opts & 1;
	r.event_idx = (opts >> 1) & 1;
	r.last_avail = (uint16_t)((opts >> 2) & 15);
	struct vub_disk *d = fuzz_disk((opts >> 7) & 1);
	bool no_cache = (opts >> 6) & 1;
	vub_disk_limit_cache(d, no_cache ? 0 : ULONG_MAX);
	static struct vub_chain c;
	for (int i = 0; i < 64; i++) {
		enum vub_pop p = vub_ring_pop(&r, &m, &c);
		if (p == VUB_POP_EMPTY || p == VUB_POP_BROKEN)
			break;
		uint32_t used_len = 0;
		uint64_t missing = 0;
		if (p == VUB_POP_OK && vub_blk_execute(d, &c, &used_len, &missing) == VUB_MISS && missing >= d->nchunks)
			__builtin_trap(); /* a miss must name a chunk of the disk */
		vub_ring_push(&r, c.head, used_len);
		vub_ring_need_notify(&r, (uint16_t)(r.used_idx - 1));
		if (no_cache)
			vub_disk_drop_cache(d);
	}
	return 0;
}
