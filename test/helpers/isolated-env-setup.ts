/**
 * Vitest setup file: a slipway daemon the person running the tests has on this host (on the
 * default socket, or named by $SLIPWAY_DAEMON) is not the tests' business. `slipway run` and the
 * `vm` commands go to a daemon whenever one is configured, so every test file starts with
 * SLIPWAY_DAEMON unset and SLIPWAY_DAEMON_SOCKET pointing where no daemon listens; tests that want
 * a daemon start their own and name it.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

delete process.env.SLIPWAY_DAEMON;
process.env.SLIPWAY_DAEMON_SOCKET = join(tmpdir(), `no-slipway-daemon-${process.pid}`, 'slipway.sock');
