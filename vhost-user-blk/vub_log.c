/* The backends' log (log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

int vub_log_min = 1; /* 0 debug, 1 info, 2 warn */
const char *vub_log_component = "slipway-blk";

void vub_log(const char *level, const char *fmt, ...)
{
	int rank = level[0] == 'd' ? 0 : level[0] == 'i' ? 1 : 2;
	if (rank < vub_log_min)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	char escaped[1100];
	size_t o = 0;
	for (const char *p = msg; *p && o + 7 < sizeof escaped; p++) {
		if (*p == '"' || *p == '\\') {
			escaped[o++] = '\\';
			escaped[o++] = *p;
		} else if ((unsigned char)*p < 0x20) {
			o += (size_t)snprintf(escaped + o, sizeof escaped - o, "\\u%04x", (unsigned char)*p);
		} else {
			escaped[o++] = *p;
		}
	}
	escaped[o] = '\0';
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	fprintf(stderr, "{\"time\":%lld.%03ld,\"level\":\"%s\",\"component\":\"%s\",\"msg\":\"%s\"}\n", (long long)ts.tv_sec, ts.tv_nsec / 1000000, level, vub_log_component, escaped);
}
