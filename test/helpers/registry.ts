/**
 * A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 on a
 * free port, with its own storage directory, optionally behind htpasswd basic auth or in
 * pull-through proxy mode. Fails loudly when the binary is missing.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { writeFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { listenOnLoopback } from './listen.js';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { tempDir } from './temp-dirs.js';

const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface TokenAuthConfig {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
}

export interface RegistryOptions {
  htpasswd?: { username: string; password: string };
  /** bearer-token auth (distribution's `auth: token:`), see token-server.ts */
  token?: TokenAuthConfig;
  proxyRemoteUrl?: string;
  logLevel?: 'debug' | 'info' | 'error';
}

export interface TestRegistry {
  host: string;
  port: number;
  storageDir: string;
  /** everything the registry wrote to stderr (its log) */
  log(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  const port = await listenOnLoopback(srv);
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<TestRegistry> {
  if (!existsSync(REGISTRY_BIN)) {
    throw new Error(`${REGISTRY_BIN} not found: install Debian's docker-registry package (the README's test command does)`);
  }
  const dir = tempDir('slipway-registry-');
  const storageDir = join(dir, 'storage');
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    `  level: ${opts.logLevel ?? 'error'}`,
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storageDir}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (opts.htpasswd) {
    const file = join(dir, 'htpasswd');
    execFileSync('htpasswd', ['-Bbc', file, opts.htpasswd.username, opts.htpasswd.password], { stdio: 'ignore' });
    lines.push('auth:', '  htpasswd:', '    realm: slipway-test', `    path: ${file}`);
  }
  if (opts.token) {
    lines.push('auth:', '  token:', `    realm: ${opts.token.realm}`, `    service: ${opts.token.service}`, `    issuer: ${opts.token.issuer}`, `    rootcertbundle: ${opts.token.rootCertBundle}`);
  }
  if (opts.proxyRemoteUrl) lines.push('proxy:', `  remoteurl: ${opts.proxyRemoteUrl}`);
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
      if (res.status === 200 && opts.token) throw new Error('docker-registry answered /v2/ without asking for a token: auth is not configured');
      if (res.status === 200 || res.status === 401) break;
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
