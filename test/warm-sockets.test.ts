/**
 * Connections opened ahead of requests (src/oci/registry/warm-sockets.ts) are handed to the HTTP
 * pool only while they are still good: one on which the server has already answered (a 408 for a
 * connection that sent nothing, which a front end sends before closing it) or that it has closed
 * is dropped, even when that answer came while this process's event loop was busy, and the
 * request goes out on a new connection. The server runs in a process of its own, so that it
 * answers while this one is busy.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { WarmSockets } from '../src/oci/registry/warm-sockets.js';
import { tempDir } from './helpers/images.js';

/** A server whose first connection gets a 408 at once (and is closed), noted in `marker` once sent; every later one is served 200 "ok". */
const SERVER = `
const net = require('node:net'), fs = require('node:fs');
const marker = process.argv[1];
let first = true;
net.createServer((s) => {
  s.on('error', () => {});
  if (first) {
    first = false;
    s.end('HTTP/1.1 408 Request Timeout\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n\\r\\n', () => fs.writeFileSync(marker, 'sent'));
    return;
  }
  let head = '';
  s.on('data', (b) => {
    head += b;
    if (head.includes('\\r\\n\\r\\n')) { head = ''; s.write('HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok'); }
  });
}).listen(0, '127.0.0.1', function () { process.stdout.write(this.address().port + '\\n'); });
process.stdin.on('end', () => process.exit(0)).resume();
`;

const stops: (() => void)[] = [];
afterAll(() => {
  for (const stop of stops) stop();
});

/** Wait for `path` to exist without letting this event loop run (as a GC or a long hash holds it), for at most `ms`. */
function blockUntilExists(path: string, ms: number): void {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  const end = Date.now() + ms;
  while (!existsSync(path) && Date.now() < end) Atomics.wait(cell, 0, 0, 5);
  if (!existsSync(path)) throw new Error(`${path} did not appear within ${ms} ms`);
}

describe('connections opened ahead', () => {
  it('one the server answered or closed while this process was busy is dropped; the request goes out on a new connection', async () => {
    const marker = join(tempDir('slipway-warm-'), 'sent');
    const child = spawn(process.execPath, ['-e', SERVER, marker], { stdio: ['pipe', 'pipe', 'inherit'] });
    stops.push(() => child.stdin?.end());
    const port = await new Promise<string>((resolve, reject) => {
      child.stdout?.once('data', (b: Buffer) => resolve(b.toString().trim()));
      child.once('exit', (code) => reject(new Error(`server exited (${code})`)));
    });
    const origin = `http://127.0.0.1:${port}`;
    const warm = new WarmSockets(origin, 5000);
    const agent = new Agent({ connections: 4, connect: warm.connect });
    try {
      expect(await warm.open(1)).toBe(1);
      // the 408 and the close reach this process while its event loop does not run; the request is
      // made before it runs again
      blockUntilExists(marker, 10_000);
      const res = await request(`${origin}/v2/`, { dispatcher: agent });
      expect({ status: res.statusCode, body: await res.body.text() }).toEqual({ status: 200, body: 'ok' });
      expect(warm.taken).toBe(0);
      expect(warm.idle).toBe(0);
    } finally {
      warm.close();
      await agent.close();
    }
  });
});
