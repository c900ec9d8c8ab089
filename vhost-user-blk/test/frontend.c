/*
 * vub-frontend: a vhost-user-blk frontend (the VMM's side of QEMU docs/interop/vhost-user.rst) for
 * testing and benchmarking vhost-user-blk backends (slipway-blk, qemu-storage-daemon, any other).
 *
 * It owns the "guest memory" (a memfd, split into two regions with a hole between them on request),
 * negotiates the way QEMU does, lays split virtqueues out in that memory (ring addresses are given
 * as this process's own addresses, buffer addresses as guest-physical ones), and drives virtio-blk
 * requests through them, kicking and waiting on eventfds. Every subcommand prints one JSON object.
 *
 * Exit status: 0 success, 1 the backend answered but the check failed (a non-OK status, wrong data,
 * a dead backend), 2 usage, setup or protocol errors (the message on stderr says which).
 * Everything this program decides for itself (memory layout, offsets, data) is deterministic unless
 * --seed says otherwise, so a failing run repeats.
 *
 * Parts: ../vhost_user.h (wire formats, shared with the backend), fe_util.h (limits, helpers),
 * fe_options.h (command line), fe_vhost_user.h (messages, handshake), fe_virtq.h (guest memory, the
 * driver's split virtqueue), fe_device.h (a negotiated device and virtio-blk requests),
 * fe_ring_cases.h (hand-written chains), fe_malformed.h (the malformed cases), fe_restart.h (a
 * backend restart with a request in flight), fe_cmd_io.h (info, read, write, flush, getid,
 * discard, zeroes), fe_cmd_load.h (verify, bench), fe_cmd_checks.h (reconnect, race, replay);
 * this file dispatches the subcommands.
 */
#include <errno.h>
#include <signal.h>
#include "fe_cmd_checks.h"
#include "fe_cmd_io.h"
#include "fe_cmd_load.h"
#include "fe_malformed.h"
#include "fe_restart.h"

/* the subcommands, by name */
static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
} commands[] = {
	{ "info", cmd_info },
	{ "read", cmd_read },
	{ "write", cmd_write },
	{ "flush", cmd_flush },
	{ "getid", cmd_getid },
	{ "discard", cmd_discard },
	{ "zeroes", cmd_zeroes },
	{ "verify", cmd_verify },
	{ "bench", cmd_bench },
	{ "malformed", cmd_malformed },
	{ "reconnect", cmd_reconnect },
	{ "race", cmd_race },
	{ "replay", cmd_replay },
	{ "restart", cmd_restart },
};

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage();
		return argc < 2 ? EXIT_ERROR : 0;
	}
	/* a backend that goes away must show up as EPIPE, not kill us */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die("signal(SIGPIPE): %s", strerror(errno));
	const char *cmd = argv[1];
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(cmd, commands[i].name) == 0)
			return commands[i].run(argc, argv);
	usage();
	die("unknown command '%s'", cmd);
}
