/**
 * How the CLI finds a daemon when none is named: the default socket (config.ts defaultSocketPath)
 * and whether one is configured (daemon-commands.ts daemonConfigured). The other test files run
 * with SLIPWAY_DAEMON_SOCKET pointing nowhere (test/helpers/isolated-env-setup.ts); this one sets
 * each variable itself.
 */
import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { daemonConfigured } from '../src/cli/daemon-commands.js';
import { defaultSocketPath, defaultStateDir } from '../src/config.js';
import { withEnv } from './helpers/run-cli.js';
import { tempDir } from './helpers/temp-dirs.js';

describe('finding the daemon', () => {
  it('the default socket: SLIPWAY_DAEMON_SOCKET, else in XDG_RUNTIME_DIR, else /run/slipway for root or the state directory', () => {
    expect(defaultSocketPath({ SLIPWAY_DAEMON_SOCKET: '/x/d.sock', XDG_RUNTIME_DIR: '/run/user/1000' })).toBe('/x/d.sock');
    expect(defaultSocketPath({ XDG_RUNTIME_DIR: '/run/user/1000' })).toBe('/run/user/1000/slipway/slipway.sock');
    const env = { SLIPWAY_STATE_DIR: '/srv/state' };
    expect(defaultSocketPath(env)).toBe(process.getuid?.() === 0 ? '/run/slipway/slipway.sock' : join(defaultStateDir(env), 'slipway.sock'));
  });

  it('a daemon counts as configured when SLIPWAY_DAEMON names one or the default socket exists', async () => {
    const dir = tempDir('slipway-discovery-');
    const socket = join(dir, 'slipway.sock');
    expect(await withEnv({ SLIPWAY_DAEMON: undefined, SLIPWAY_DAEMON_SOCKET: socket }, async () => daemonConfigured())).toBe(false);
    writeFileSync(socket, '');
    expect(await withEnv({ SLIPWAY_DAEMON: undefined, SLIPWAY_DAEMON_SOCKET: socket }, async () => daemonConfigured())).toBe(true);
    expect(await withEnv({ SLIPWAY_DAEMON: 'http://127.0.0.1:1', SLIPWAY_DAEMON_SOCKET: join(dir, 'none.sock') }, async () => daemonConfigured())).toBe(true);
  });
});
