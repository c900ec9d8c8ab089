/**
 * A real `slipway daemon` process for tests: started from bin/slipway.js (the build in dist/)
 * with its own socket, state directory and cache directory, optionally on TCP with a token. It
 * prints one JSON line on stdout when it listens; its JSON logs go to a file kept for failures.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { SlipwayClient } from '../../src/client/index.js';
import { processesWithArgument } from '../../src/util/process.js';
import { PROJECT_ROOT } from '../../src/guest/build.js';
import { ramFileOf, ramOverlayOf, removeStagedRamCopies } from '../../src/api/memory-snapshots.js';

export interface TestDaemon {
  proc: ChildProcess;
  socket: string;
  stateDir: string;
  cacheDir: string;
  tcp: { host: string; port: number } | undefined;
  token: string | undefined;
  /** a client over the Unix socket */
  client: SlipwayClient;
  log(): string;
  /** SIGKILL: no clean-up at all (VMs and backends stay, as after a crash) */
  kill(): Promise<void>;
  /** SIGTERM: a clean stop (VMs stay running unless the daemon was told otherwise) */
  stop(): Promise<void>;
  /** For afterAll: delete every VM, stop, and kill whatever a failed test left running detached. */
  dispose(): Promise<void>;
}

export interface DaemonStartOptions {
  dir: string;
  /** reuse these (a restart) */
  stateDir?: string;
  cacheDir?: string;
  tcp?: boolean;
  env?: Record<string, string>;
  args?: string[];
}

export async function startTestDaemon(opts: DaemonStartOptions): Promise<TestDaemon> {
  const socket = join(opts.dir, 'd.sock');
  const stateDir = opts.stateDir ?? join(opts.dir, 'state');
  const cacheDir = opts.cacheDir ?? join(opts.dir, 'cache');
  const logPath = join(opts.dir, `daemon-${Date.now()}.log`);
  const args = [join(PROJECT_ROOT, 'bin', 'slipway.js'), 'daemon', '--socket', socket, '--state-dir', stateDir, '--cache-dir', cacheDir, ...(opts.args ?? [])];
  let token: string | undefined;
  if (opts.tcp) {
    token = `test-token-${Math.random().toString(36).slice(2)}-${Date.now()}`;
    const tokenFile = join(opts.dir, 'token');
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    args.push('--listen', '127.0.0.1:0', '--token-file', tokenFile);
  }
  const logFd = openSync(logPath, 'a');
  const proc = spawn('node', args, { stdio: ['ignore', 'pipe', logFd], env: { ...process.env, ...opts.env } });
  closeSync(logFd);
  const log = (): string => {
    try {
      return readFileSync(logPath, 'utf8');
    } catch {
      return '';
    }
  };
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const ready = await new Promise<{ tcp: { host: string; port: number } | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon not ready in 600 s:\n${log().slice(-4000)}`)), 600_000);
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).once('line', (line) => {
      clearTimeout(timer);
      resolve(JSON.parse(line) as { tcp: { host: string; port: number } | null });
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${code}) before it was ready:\n${log().slice(-4000)}`));
    });
  });
  const client = new SlipwayClient({ socketPath: socket });
  const daemon: TestDaemon = {
    proc, socket, stateDir, cacheDir, tcp: ready.tcp ?? undefined, token, client, log,
    async kill() {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
      await client.close().catch(() => undefined);
    },
    async stop() {
      await client.close().catch(() => undefined);
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
    },
    async dispose() {
      if (proc.exitCode === null) {
        for (const vm of await client.listVms().catch(() => [])) await client.deleteVm(vm.id).catch(() => undefined);
      }
      await daemon.stop().catch(() => undefined);
      // VMMs and backends run detached: a failed test may leave some with no daemon to own them,
      // and a lazily restored VM's RAM mount and overlay (docs/snapshots.md)
      for (const pid of processesWithArgument(stateDir)) process.kill(pid, 'SIGKILL');
      for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
        const mount = line.split(' ')[1];
        if (mount?.startsWith(`${stateDir}/`)) spawnSync('umount', ['-l', mount]);
      }
      // and what its VMs kept on tmpfs (their RAM, RAM overlays, RAM copies a snapshot staged),
      // which would hold memory until the host reboots
      const ids = existsSync(join(stateDir, 'vms')) ? readdirSync(join(stateDir, 'vms')) : [];
      for (const id of ids) for (const path of [ramFileOf(id), ramOverlayOf(id)]) rmSync(path, { recursive: true, force: true });
      await removeStagedRamCopies(ids);
    },
  };
  return daemon;
}

/** Processes whose command line mentions `marker` (a VM's work directory): its VMM and backend. */
export const processesWith = processesWithArgument;
