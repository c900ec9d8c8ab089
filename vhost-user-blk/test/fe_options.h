/*
 * vub-frontend: the command line (options shared by the subcommands, and usage).
 *
 * Included once, by frontend.c: vub-frontend is one translation unit (one cc call), split into
 * headers only to keep each part short.
 */
#ifndef VUB_FE_OPTIONS_H
#define VUB_FE_OPTIONS_H

#include "fe_util.h"

/* ======================================================================================== */
/* options                                                                                  */
/* ======================================================================================== */

struct opts {
	unsigned queues;
	bool indirect;
	unsigned regions;
	uint64_t mem_bytes; /* 0: sized for the run, at least DEFAULT_MEM_BYTES */
	unsigned ring_size;
	int timeout_ms;
	int case_timeout_ms;
	uint64_t seed;
	bool seed_given;
	const char *mode;
	uint64_t bs;
	unsigned qd;
	bool qd_given;
	double seconds;
	bool unmap;
	bool adjacent;
	bool inflight;
	uint64_t seg_bytes;
	uint64_t chunk_bytes;
	uint64_t iterations;
};

static void usage(void)
{
	fputs("usage: vub-frontend COMMAND SOCK ARGS [OPTIONS]\n"
	      "  info SOCK\n"
	      "  read SOCK OFFSET LENGTH OUTFILE\n"
	      "  write SOCK OFFSET INFILE\n"
	      "  flush SOCK | getid SOCK\n"
	      "  discard SOCK OFFSET LENGTH | zeroes SOCK OFFSET LENGTH [--unmap]\n"
	      "  verify SOCK IMAGEFILE [--queues N] [--indirect] [--qd DEPTH]\n"
	      "  bench SOCK --mode randread|seqread --bs BYTES --qd DEPTH --seconds S [--queues N]\n"
	      "  malformed SOCK CASE   (CASE 'list' prints the cases)\n"
	      "  reconnect SOCK\n"
	      "  race SOCK [--chunk BYTES] [--iterations N]   (needs 2 queues; overlapping writes on two queues)\n"
	      "  replay SOCK TRACEFILE   (reads \"offset bytes\" lines in order at queue depth 1)\n"
	      "  restart SOCK IMAGEFILE SLOW_OFFSET   (a read parked across a backend restart; see fe_restart.h)\n"
	      "options for all: --regions 1|2 [--adjacent], --mem BYTES, --ring N (power of two), --indirect,\n"
	      "  --seg BYTES (data segments of at most BYTES, direct chains too), --inflight (INFLIGHT_SHMFD when offered),\n"
	      "  --timeout-ms MS (requests and replies, default 10000), --case-timeout-ms MS (malformed, default 1000),\n"
	      "  --seed N\n"
	      "sizes take k, m, g suffixes (binary). Output: one JSON object on stdout.\n",
	      stderr);
}

static void parse_opts(int argc, char **argv, int first, struct opts *o)
{
	memset(o, 0, sizeof *o);
	o->queues = 1;
	o->regions = 1;
	o->ring_size = DEFAULT_RING;
	o->timeout_ms = DEFAULT_TIMEOUT_MS;
	o->case_timeout_ms = DEFAULT_CASE_TIMEOUT_MS;
	o->seed = 0x5b1d5eed;
	o->qd = 1;
	o->seconds = 5;
	o->chunk_bytes = 512 * 1024;
	/* the options that take no value */
	const struct {
		const char *name;
		bool *set;
	} flags[] = { { "--indirect", &o->indirect }, { "--unmap", &o->unmap }, { "--adjacent", &o->adjacent }, { "--inflight", &o->inflight } };
	for (int i = first; i < argc; i++) {
		const char *name = argv[i];
		const char *value = NULL;
		char namebuf[64];
		const char *eq = strchr(name, '=');
		if (strncmp(name, "--", 2) != 0) {
			usage();
			die("unexpected argument '%s'", name);
		}
		if (eq) {
			size_t n = (size_t)(eq - name);
			if (n >= sizeof namebuf)
				die("unknown option '%s'", name);
			memcpy(namebuf, name, n);
			namebuf[n] = '\0';
			name = namebuf;
			value = eq + 1;
		}
		bool *flag = NULL;
		for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++)
			if (strcmp(name, flags[k].name) == 0)
				flag = flags[k].set;
		if (flag) {
			*flag = true;
			continue;
		}
		if (!value) {
			if (i + 1 >= argc)
				die("option %s needs a value", name);
			value = argv[++i];
		}
		if (strcmp(name, "--seg") == 0) {
			o->seg_bytes = arg_u64("--seg", value, SECTOR_BYTES, SLOT_DATA_BYTES);
			if (o->seg_bytes % SECTOR_BYTES)
				die("--seg must be a multiple of 512");
		} else if (strcmp(name, "--queues") == 0)
			o->queues = (unsigned)arg_u64("--queues", value, 1, MAX_QUEUES);
		else if (strcmp(name, "--regions") == 0)
			o->regions = (unsigned)arg_u64("--regions", value, 1, MAX_REGIONS);
		else if (strcmp(name, "--mem") == 0)
			o->mem_bytes = arg_u64("--mem", value, 4ull << 20, 64ull << 30);
		else if (strcmp(name, "--ring") == 0) {
			o->ring_size = (unsigned)arg_u64("--ring", value, 8, VIRTQUEUE_MAX_SIZE);
			if (o->ring_size & (o->ring_size - 1))
				die("--ring must be a power of two");
		} else if (strcmp(name, "--timeout-ms") == 0)
			o->timeout_ms = (int)arg_u64("--timeout-ms", value, 1, 3600000);
		else if (strcmp(name, "--case-timeout-ms") == 0)
			o->case_timeout_ms = (int)arg_u64("--case-timeout-ms", value, 1, 3600000);
		else if (strcmp(name, "--seed") == 0) {
			o->seed = arg_u64("--seed", value, 0, UINT64_MAX);
			o->seed_given = true;
		} else if (strcmp(name, "--mode") == 0) {
			if (strcmp(value, "randread") != 0 && strcmp(value, "seqread") != 0)
				die("--mode must be randread or seqread");
			o->mode = value;
		} else if (strcmp(name, "--bs") == 0)
			o->bs = arg_u64("--bs", value, SECTOR_BYTES, SLOT_DATA_BYTES);
		else if (strcmp(name, "--qd") == 0) {
			o->qd = (unsigned)arg_u64("--qd", value, 1, VIRTQUEUE_MAX_SIZE);
			o->qd_given = true;
		} else if (strcmp(name, "--chunk") == 0) {
			o->chunk_bytes = arg_u64("--chunk", value, 8192, SLOT_DATA_BYTES);
			if (o->chunk_bytes % 4096)
				die("--chunk must be a multiple of 4096");
		} else if (strcmp(name, "--iterations") == 0)
			o->iterations = arg_u64("--iterations", value, 1, 1u << 30);
		else if (strcmp(name, "--seconds") == 0) {
			char *end = NULL;
			errno = 0;
			o->seconds = strtod(value, &end);
			if (errno || end == value || *end || !(o->seconds > 0) || o->seconds > 86400)
				die("--seconds must be a positive number of seconds");
		} else {
			usage();
			die("unknown option '%s'", name);
		}
	}
}

/* argv[2], the backend's socket, once the command has its `need` arguments */
static const char *socket_arg(int argc, char **argv, int need)
{
	if (argc < need) {
		usage();
		die("%s needs %d arguments", argv[1], need - 2);
	}
	return argv[2];
}

#endif
