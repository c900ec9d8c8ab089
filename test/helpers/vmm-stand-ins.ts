/**
 * Binaries for VMM drivers to start in tests: wrapper scripts around the stand-ins (each says it is
 * one: fake-qemu.mjs, fake-cloud-hypervisor.mjs) with their settings baked in, so that no test
 * changes process.env for them; and a real QEMU made to exit at start.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuBinary } from '../../src/vmm/qemu.js';
import { CH_OPENAPI_PATH } from './ch-openapi.mjs';

const HELPERS = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HELPERS, '..', '..');
export const FAKE_QEMU = join(HELPERS, 'fake-qemu.mjs');
export const FAKE_CLOUD_HYPERVISOR = join(HELPERS, 'fake-cloud-hypervisor.mjs');
/** the host build of the real agent (guest/Makefile), which the CH stand-in starts at vm.boot */
export const HOST_AGENT = join(ROOT, 'guest', 'build', 'slipway-agent');

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

function script(path: string, comment: string, env: Record<string, string>, exec: string): string {
  writeFileSync(path, `#!/bin/sh\n# ${comment}\n${Object.entries(env).map(([k, v]) => `export ${k}=${quote(v)}`).join('\n')}\nexec ${exec}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A `qemu-system-x86_64` that is the stand-in acting out `scenario` (see fake-qemu.mjs). */
export function fakeQemuBinary(dir: string, scenario: string): string {
  mkdirSync(dir, { recursive: true });
  return script(join(dir, `fake-qemu-${scenario}`), 'FAKE qemu for tests', { FAKE_QEMU_SCENARIO: scenario }, `${quote(process.execPath)} ${quote(FAKE_QEMU)} "$@"`);
}

/** The real QEMU, given a device it does not have: it exits at start, naming `NO_SUCH_DEVICE`. */
export const NO_SUCH_DEVICE = 'no-such-device-for-slipway-tests';
export function qemuThatExits(dir: string): string {
  mkdirSync(dir, { recursive: true });
  return script(join(dir, 'qemu-that-exits'), 'real QEMU, given a device it does not have: it exits at start', {}, `${quote(qemuBinary())} "$@" -device ${NO_SUCH_DEVICE}`);
}

export interface FakeCloudHypervisor {
  binary: string;
  /** one JSON line per API request and event (fake-cloud-hypervisor.mjs) */
  log: string;
}

/** A `cloud-hypervisor` that is the stand-in with these FAKE_CH_* settings; the host agent answers unless `FAKE_CH_AGENT: ''`. */
export function fakeCloudHypervisorBinary(dir: string, env: Record<string, string> = {}): FakeCloudHypervisor {
  mkdirSync(dir, { recursive: true });
  const log = join(dir, 'fake-ch.log');
  const all: Record<string, string> = { FAKE_CH_LOG: log, FAKE_CH_AGENT: HOST_AGENT, CH_OPENAPI_PATH, ...env };
  if (all.FAKE_CH_AGENT === '') delete all.FAKE_CH_AGENT;
  return { binary: script(join(dir, 'cloud-hypervisor'), 'FAKE cloud-hypervisor for tests', all, `${quote(process.execPath)} ${quote(FAKE_CLOUD_HYPERVISOR)} "$@"`), log };
}

export interface FakeChLogEntry {
  method?: string;
  endpoint?: string;
  status?: number;
  body?: unknown;
  /** the error body it answered (status 400 and up) */
  error?: string;
  event?: string;
  pid?: number;
  /** a snapshot or a restore: the RAM's nonce, the memory file's sha256 and size, the directory; a restore's memory_restore_mode */
  nonce?: string;
  sha256?: string;
  size?: number;
  dir?: string;
  mode?: string;
}

export function readFakeChLog(path: string): FakeChLogEntry[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as FakeChLogEntry);
}
