/**
 * Debian's docker-registry (distribution 2.8) on 127.0.0.1 behind bearer-token auth: the
 * registry answers `401 WWW-Authenticate: Bearer realm=...,service=...,scope=...` and accepts
 * JWTs signed by a key whose certificate is its `rootcertbundle` (see token-server.ts).
 * Same approach as registry.ts (which has no token mode); its log is kept for debugging.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './registry.js';

const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface TokenAuthConfig {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
}

export interface TokenRegistry {
  host: string;
  port: number;
  storageDir: string;
  /** everything the registry wrote to stderr (its log) */
  log(): string;
  stop(): Promise<void>;
}

export async function startTokenRegistry(auth: TokenAuthConfig, opts: { logLevel?: 'debug' | 'info' | 'error' } = {}): Promise<TokenRegistry> {
  if (!existsSync(REGISTRY_BIN)) {
    throw new Error(`${REGISTRY_BIN} not found: install Debian's docker-registry package (the README's test command does)`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'slipway-token-registry-'));
  const storageDir = join(dir, 'storage');
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    `  level: ${opts.logLevel ?? 'info'}`,
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storageDir}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    'auth:',
    '  token:',
    `    realm: ${auth.realm}`,
    `    service: ${auth.service}`,
    `    issuer: ${auth.issuer}`,
    `    rootcertbundle: ${auth.rootCertBundle}`,
  ];
  const configPath = join(dir, 'config.yml');
  writeFileSync(configPath, `${lines.join('\n')}\n`);
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${stderr}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/v2/`);
      if (res.status === 401) break;
      if (res.status === 200) throw new Error('docker-registry answered /v2/ without asking for a token: auth is not configured');
    } catch (err) {
      if (err instanceof Error && err.message.includes('without asking')) throw err;
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not start on port ${port}: ${stderr}`);
    }
    await sleep(50);
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    storageDir,
    log: () => stderr,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
