/*
 * The backends' log: one JSON object per line on stderr (the daemon keeps it with the VM's logs),
 * `{"time":..,"level":..,"component":..,"msg":..}`. slipway-blk and slipway-ramfs share it.
 */
#ifndef SLIPWAY_LOG_H
#define SLIPWAY_LOG_H

extern int vub_log_min;            /* 0 debug, 1 info (default), 2 warn */
extern const char *vub_log_component; /* "slipway-blk" unless the program says otherwise */

void vub_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
