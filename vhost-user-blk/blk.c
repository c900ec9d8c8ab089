#include "blk.h"

#include <errno.h>
#include <string.h>

void vub_blk_fail(const struct vub_chain *c, uint8_t status, uint32_t *used_len)
{
	*used_len = 0;
	if (c->in_bytes < 1)
		return; /* no byte the device may write: the driver only gets its buffers back */
	vub_iov_copy_to(c->iov + c->n_out, c->n_in, c->in_bytes - 1, &status, 1);
	*used_len = 1;
}

static int finish(const struct vub_chain *c, uint8_t status, uint32_t data_written, uint32_t *used_len)
{
	vub_iov_copy_to(c->iov + c->n_out, c->n_in, c->in_bytes - 1, &status, 1);
	*used_len = data_written + 1;
	return 0;
}

static uint8_t status_of(int rc)
{
	return rc == 0 ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
}

/* sector * 512 and the length both inside the disk, without overflow */
static int disk_range(const struct vub_disk *d, uint64_t sector, uint64_t len, uint64_t *off)
{
	if (sector > (UINT64_MAX >> 9))
		return -1;
	*off = sector << 9;
	if (*off > d->size || len > d->size - *off)
		return -1;
	return 0;
}

static int zero_segments(struct vub_disk *d, const struct vub_chain *c, size_t bytes, uint64_t *missing)
{
	if (bytes == 0 || bytes % sizeof(struct virtio_blk_discard_write_zeroes) != 0 || bytes / sizeof(struct virtio_blk_discard_write_zeroes) > VUB_MAX_DISCARD_SEG)
		return -EINVAL;
	for (size_t at = 0; at < bytes; at += sizeof(struct virtio_blk_discard_write_zeroes)) {
		struct virtio_blk_discard_write_zeroes seg;
		vub_iov_copy_from(c->iov, c->n_out, sizeof(struct virtio_blk_outhdr) + at, &seg, sizeof seg);
		uint64_t off;
		if (seg.flags & ~1u || disk_range(d, seg.sector, (uint64_t)seg.num_sectors << 9, &off) < 0)
			return -EINVAL;
		int rc = vub_disk_zero(d, off, (uint64_t)seg.num_sectors << 9, missing);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/*
 * The data segments seg_max counts: buffers holding any byte besides the 16-byte header and the
 * status byte. A header or status in a descriptor of its own is none (the driver adds those two to
 * its seg_max segments); one that shares a descriptor with data counts once, as data.
 */
static unsigned data_segments(const struct vub_chain *c)
{
	unsigned segs = 0;
	size_t at = 0;
	for (unsigned i = 0; i < c->nbufs_out; i++) {
		at += c->buf_len[i];
		if (at > sizeof(struct virtio_blk_outhdr))
			segs++;
	}
	for (unsigned i = c->nbufs_out; i < c->nbufs; i++)
		if (i + 1 < c->nbufs || c->buf_len[i] > 1)
			segs++;
	return segs;
}

int vub_blk_execute(struct vub_disk *d, const struct vub_chain *c, uint32_t *used_len, uint64_t *missing)
{
	struct virtio_blk_outhdr hdr;
	if (c->in_bytes < 1) {
		*used_len = 0; /* nowhere to put a status: nothing can be answered */
		return 0;
	}
	if (c->out_bytes < sizeof hdr || data_segments(c) > VUB_SEG_MAX) {
		vub_blk_fail(c, VIRTIO_BLK_S_IOERR, used_len);
		return 0;
	}
	vub_iov_copy_from(c->iov, c->n_out, 0, &hdr, sizeof hdr);
	const struct iovec *in = c->iov + c->n_out;
	size_t in_data = c->in_bytes - 1;
	size_t out_data = c->out_bytes - sizeof hdr;
	uint64_t off;
	int rc;
	switch (hdr.type) {
	case VIRTIO_BLK_T_IN:
		if (in_data % 512 != 0 || out_data != 0 || disk_range(d, hdr.sector, in_data, &off) < 0)
			return finish(c, VIRTIO_BLK_S_IOERR, 0, used_len);
		rc = vub_disk_readv(d, off, in, c->n_in, in_data, missing);
		if (rc == VUB_MISS)
			return VUB_MISS;
		return finish(c, status_of(rc), rc == 0 ? (uint32_t)in_data : 0, used_len);
	case VIRTIO_BLK_T_OUT: {
		if (out_data % 512 != 0 || in_data != 0 || disk_range(d, hdr.sector, out_data, &off) < 0 || d->read_only)
			return finish(c, VIRTIO_BLK_S_IOERR, 0, used_len);
		struct iovec data[VUB_CHAIN_IOV_MAX];
		int k = vub_iov_slice(c->iov, c->n_out, sizeof hdr, out_data, data, VUB_CHAIN_IOV_MAX);
		if (k < 0)
			return finish(c, VIRTIO_BLK_S_IOERR, 0, used_len);
		rc = vub_disk_writev(d, off, data, (unsigned)k, out_data, missing);
		if (rc == VUB_MISS)
			return VUB_MISS;
		return finish(c, status_of(rc), 0, used_len);
	}
	case VIRTIO_BLK_T_FLUSH:
		return finish(c, status_of(vub_disk_flush(d)), 0, used_len);
	case VIRTIO_BLK_T_GET_ID: {
		char id[VIRTIO_BLK_ID_BYTES] = { 0 };
		memcpy(id, d->serial, strnlen(d->serial, sizeof id));
		size_t n = in_data < sizeof id ? in_data : sizeof id;
		vub_iov_copy_to(in, c->n_in, 0, id, n);
		return finish(c, VIRTIO_BLK_S_OK, (uint32_t)n, used_len);
	}
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		if (d->read_only || in_data != 0)
			return finish(c, VIRTIO_BLK_S_IOERR, 0, used_len);
		rc = zero_segments(d, c, out_data, missing);
		if (rc == VUB_MISS)
			return VUB_MISS;
		return finish(c, rc == -EINVAL ? VIRTIO_BLK_S_UNSUPP : status_of(rc), 0, used_len);
	default:
		return finish(c, VIRTIO_BLK_S_UNSUPP, 0, used_len);
	}
}

void vub_blk_config(const struct vub_disk *d, unsigned queues, struct virtio_blk_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->capacity = d->size >> 9;
	cfg->seg_max = VUB_SEG_MAX;
	cfg->blk_size = 512;
	cfg->num_queues = (uint16_t)queues;
	cfg->max_discard_sectors = (uint32_t)((d->chunk_size >> 9) * 64);
	cfg->max_discard_seg = VUB_MAX_DISCARD_SEG;
	cfg->discard_sector_alignment = 8;
	cfg->max_write_zeroes_sectors = (uint32_t)((d->chunk_size >> 9) * 64);
	cfg->max_write_zeroes_seg = VUB_MAX_DISCARD_SEG;
	cfg->write_zeroes_may_unmap = 1;
}
