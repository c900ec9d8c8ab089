/**
 * SET_HOSTNAME, the request a restored clone takes its own name with: the ASan+UBSan agent on the
 * host, in a UTS namespace of its own (`unshare --uts`, as root: the test command runs as root), so
 * the name it sets is the namespace's and the host's stays as it was. SET_TIME (a restored VM's
 * clock) only where it refuses: no namespace keeps CLOCK_REALTIME apart from the host's, so the
 * time it sets is checked in a real guest (memory-snapshot.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { MessageType, encodeString, u32, u64 } from '../src/guest/agent-protocol.js';
import { SlipwayError } from '../src/errors.js';
import { tempDir } from './helpers/temp-dirs.js';

const GUEST_DIR = fileURLToPath(new URL('../guest/', import.meta.url));
const AGENT_BIN = join(GUEST_DIR, 'build', 'asan', 'slipway-agent');
const work = tempDir('slipway-agent-uts-');
const sock = join(work, 'agent.sock');
let proc: ChildProcess;
let stderr = '';
let client: AgentClient;

beforeAll(async () => {
  execFileSync('make', ['-s', '-C', GUEST_DIR, 'asan'], { stdio: 'pipe' });
  proc = spawn('unshare', ['--uts', AGENT_BIN, '--no-vsock', '--no-shutdown-signal', '--no-serial', '--listen-unix', sock], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=0' },
  });
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  client = await waitForAgent(() => AgentClient.connectUnix(sock, { timeoutMs: 1000 }), 20_000);
});

afterAll(async () => {
  await client?.close().catch(() => undefined);
  proc?.kill('SIGTERM');
});

async function agentError(p: Promise<unknown>): Promise<SlipwayError> {
  const err = await p.then(() => new Error('expected AGENT_ERROR, got success'), (e: unknown) => e);
  expect(err).toBeInstanceOf(SlipwayError);
  expect((err as SlipwayError).code).toBe('AGENT_ERROR');
  return err as SlipwayError;
}

describe('SET_HOSTNAME', () => {
  it('sets the host name without starting a process; the host keeps its own', async () => {
    const before = hostname();
    await client.setHostname('vm-clone-7.example');
    const r = await client.exec(['cat', '/proc/sys/kernel/hostname']);
    expect(r.stdout.toString()).toBe('vm-clone-7.example\n');
    expect(hostname()).toBe(before);
  });

  it('refuses what is not a host name, and malformed requests, with EINVAL; the agent goes on', async () => {
    for (const bad of ['', 'a'.repeat(65), 'has space', 'semi;colon', 'slash/name']) {
      expect((await agentError(client.setHostname(bad))).context.errnoName, JSON.stringify(bad)).toBe('EINVAL');
    }
    expect((await agentError(client.request(MessageType.SET_HOSTNAME, 1, encodeString('ok')))).context.errnoName).toBe('EINVAL');
    expect((await agentError(client.request(MessageType.SET_HOSTNAME, 0, Buffer.concat([encodeString('ok'), Buffer.from('extra')])))).context.errnoName).toBe('EINVAL');
    expect((await agentError(client.request(MessageType.SET_HOSTNAME, 0, Buffer.alloc(2)))).context.errnoName).toBe('EINVAL');
    // a NUL inside (the client refuses to encode one; sent raw)
    expect((await agentError(client.request(MessageType.SET_HOSTNAME, 0, Buffer.concat([u32(5), Buffer.from('nul\0x')])))).context.errnoName).toBe('EINVAL');
    const r = await client.exec(['cat', '/proc/sys/kernel/hostname']);
    expect(r.stdout.toString()).toBe('vm-clone-7.example\n');
    expect(stderr).not.toMatch(/ERROR: (AddressSanitizer|LeakSanitizer)|runtime error/);
  });
});

describe('SET_TIME', () => {
  it('refuses a time before 2000, flags and malformed payloads with EINVAL, and leaves the clock alone; the agent goes on', async () => {
    const before = Date.now();
    for (const ns of [0n, 946_684_799_999_999_999n]) {
      const err = await agentError(client.setTime(ns));
      expect(err.context.errnoName, String(ns)).toBe('EINVAL');
      expect(err.message).toContain('is not a time to set');
    }
    expect((await agentError(client.request(MessageType.SET_TIME, 1, u64(BigInt(before) * 1_000_000n)))).context.errnoName).toBe('EINVAL');
    expect((await agentError(client.request(MessageType.SET_TIME, 0, Buffer.alloc(4)))).context.errnoName).toBe('EINVAL');
    expect((await agentError(client.request(MessageType.SET_TIME, 0, Buffer.concat([u64(BigInt(before) * 1_000_000n), Buffer.from('x')])))).context.errnoName).toBe('EINVAL');
    expect((await agentError(client.request(MessageType.SET_TIME, 0, Buffer.alloc(8, 0xff)))).context.errnoName).toBe('EINVAL');
    expect(Math.abs(Date.now() - before)).toBeLessThan(60_000);
    await client.ping();
    expect(stderr).not.toMatch(/ERROR: (AddressSanitizer|LeakSanitizer)|runtime error/);
  });
});
