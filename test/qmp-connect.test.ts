/**
 * QmpClient.connect against a socket path that exists before anything listens on it, as a VMM's
 * does between its bind and its listen (a boot watch that came in between once saw its connection
 * refused and never heard of the VM's internal error). A regular file at the path refuses a
 * connection the same way (ECONNREFUSED), and the first attempt is made before connect returns.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { QmpClient } from '../src/vmm/qmp.js';
import { isSlipwayError } from '../src/errors.js';
import { tempDir } from './helpers/images.js';

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server = undefined;
});

/** A QMP peer on `path`: the greeting, then `{"return": {}}` to every command. */
function serveQmp(path: string): Promise<void> {
  server = createServer((conn) => {
    conn.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\n');
    conn.on('data', () => conn.write('{"return": {}}\n'));
  });
  return new Promise((resolve) => server?.listen(path, resolve));
}

describe('QmpClient.connect', () => {
  it('a path that refuses at first is tried again, and connects once the VMM listens', async () => {
    const path = join(tempDir('slipway-qmp-'), 'qmp.sock');
    writeFileSync(path, '');
    const connecting = QmpClient.connect(path);
    rmSync(path);
    await serveQmp(path);
    const client = await connecting;
    expect(client.isClosed).toBe(false);
    client.close();
  });

  it('refused past refusedRetryMs is VMM_ERROR naming the path and the refusal', async () => {
    const path = join(tempDir('slipway-qmp-'), 'qmp.sock');
    writeFileSync(path, '');
    const err = await QmpClient.connect(path, { refusedRetryMs: 50 }).catch((e: unknown) => e);
    expect(isSlipwayError(err, 'VMM_ERROR'), String(err)).toBe(true);
    expect((err as Error).message).toContain(path);
    expect((err as Error).message).toContain('ECONNREFUSED');
  });

  it('a path with nothing at it is VMM_ERROR at once (ENOENT is not retried)', async () => {
    const path = join(tempDir('slipway-qmp-'), 'absent.sock');
    const t0 = Date.now();
    const err = await QmpClient.connect(path).catch((e: unknown) => e);
    expect(isSlipwayError(err, 'VMM_ERROR'), String(err)).toBe(true);
    expect((err as Error).message).toContain('ENOENT');
    expect(Date.now() - t0).toBeLessThan(1_000);
  });
});
