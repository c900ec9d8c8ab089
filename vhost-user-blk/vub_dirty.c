/*
 * Dirty-page logging for migration: see vub_dirty.h. The log is the VMM's memory: its size and
 * offset are checked before mapping, and no bit is set past its end.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "vub.h"
#include "vub_dirty.h"

void vub_dirty_init(struct vub_dirty_log *l)
{
	memset(l, 0, sizeof *l);
	pthread_rwlock_init(&l->lock, NULL);
}

static void unmap_locked(struct vub_dirty_log *l)
{
	if (l->map)
		munmap(l->map, l->map_len);
	l->map = NULL;
	l->map_len = 0;
	l->bits = NULL;
	l->bytes = 0;
}

int vub_dirty_set(struct vub_dirty_log *l, int fd, const struct vub_log_msg *m)
{
	/* a log for up to 2^52 bytes of guest memory (2^40 bitmap bytes) is more than any guest */
	if (m->mmap_size == 0 || m->mmap_size > (1ull << 40) || m->mmap_offset > (1ull << 40) || m->mmap_offset % (uint64_t)sysconf(_SC_PAGESIZE) != 0) {
		vub_log("warn", "SET_LOG_BASE: size %llu at offset %llu refused", (unsigned long long)m->mmap_size, (unsigned long long)m->mmap_offset);
		close(fd);
		return -1;
	}
	size_t len = (size_t)(m->mmap_size + m->mmap_offset);
	void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int err = errno;
	close(fd);
	if (map == MAP_FAILED) {
		vub_log("warn", "SET_LOG_BASE: mmap of %zu bytes: %s", len, strerror(err));
		return -1;
	}
	pthread_rwlock_wrlock(&l->lock);
	unmap_locked(l);
	l->map = map;
	l->map_len = len;
	l->bits = (uint8_t *)map + m->mmap_offset;
	l->bytes = m->mmap_size;
	pthread_rwlock_unlock(&l->lock);
	return 0;
}

void vub_dirty_clear(struct vub_dirty_log *l)
{
	pthread_rwlock_wrlock(&l->lock);
	unmap_locked(l);
	pthread_rwlock_unlock(&l->lock);
}

/* Mark guest pages [gpa, gpa + len) (the read lock held). */
static void mark_gpa(struct vub_dirty_log *l, uint64_t gpa, uint64_t len)
{
	if (!l->bits || len == 0)
		return;
	for (uint64_t page = gpa / VUB_LOG_PAGE, last = (gpa + len - 1) / VUB_LOG_PAGE; page <= last; page++) {
		if (page / 8 >= l->bytes) {
			vub_log("warn", "dirty log: page %llu is past the %llu-byte log", (unsigned long long)page, (unsigned long long)l->bytes);
			return;
		}
		__atomic_fetch_or(&l->bits[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_RELAXED);
	}
}

static void mark_host_locked(struct vub_dirty_log *l, const struct vub_mem *mem, const void *host, size_t len)
{
	const uint8_t *p = host;
	for (unsigned i = 0; i < mem->n && len > 0; i++) {
		const struct vub_region *r = &mem->r[i];
		if (p < r->host || p >= r->host + r->size)
			continue;
		uint64_t off = (uint64_t)(p - r->host);
		uint64_t n = len < r->size - off ? len : r->size - off;
		mark_gpa(l, r->gpa + off, n);
		p += n;
		len -= n;
		i = (unsigned)-1; /* the rest may lie in another region */
	}
}

void vub_dirty_mark_host(struct vub_dirty_log *l, const struct vub_mem *mem, const void *host, size_t len)
{
	pthread_rwlock_rdlock(&l->lock);
	mark_host_locked(l, mem, host, len);
	pthread_rwlock_unlock(&l->lock);
}

void vub_dirty_mark_completion(struct vub_dirty_log *l, const struct vub_mem *mem, const struct vub_chain *c, const struct vub_ring *r, uint16_t slot)
{
	pthread_rwlock_rdlock(&l->lock);
	if (l->bits) {
		for (unsigned i = c->n_out; i < c->n_out + c->n_in; i++)
			mark_host_locked(l, mem, c->iov[i].iov_base, c->iov[i].iov_len);
		if (r->used && r->num) {
			mark_host_locked(l, mem, &r->used->ring[slot % r->num], sizeof r->used->ring[0]);
			mark_host_locked(l, mem, &r->used->idx, sizeof r->used->idx);
		}
	}
	pthread_rwlock_unlock(&l->lock);
}
