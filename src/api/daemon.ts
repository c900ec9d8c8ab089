/**
 * `slipway daemon`: the long-running host process schedulers talk to. It owns the chunk cache
 * (decode threads started up front), the VM state database, the metrics, and the HTTP API on a
 * Unix socket (mode 0600: whoever may open it is trusted) and, when asked, on TCP, where every
 * request must carry the bearer token. Stopping it leaves VMs and their backends running; the
 * next daemon adopts them (vms.ts).
 */
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { processHasArgument, processRunning } from '../util/process.js';
import { createServer, type Server } from 'node:http';
import { dirname, join } from 'node:path';
import { getRequestListener } from '@hono/node-server';
import { ChunkCache } from '../cache/chunk-cache.js';
import type { SlipwayConfig } from '../config.js';
import { SlipwayError } from '../errors.js';
import { buildGuest, buildKernel, guestArtifacts } from '../guest/build.js';
import { ensureBackendBuilt } from '../serve/backend.js';
import { startSpawnHelper } from '../util/spawner.js';
import type { Logger } from '../util/log.js';
import { buildApp, requireBearerToken } from './app.js';
import { Counter, Gauge, Histogram, Registry } from './metrics.js';
import { StateStore } from './state.js';
import { DEFAULT_LIMITS, VmManager, type VmLimits } from './vms.js';
import { BackgroundWork } from '../util/background.js';

export interface DaemonOptions {
  config: SlipwayConfig;
  logger: Logger;
  /** the Unix socket (mode 0600) */
  socketPath: string;
  /** also listen on TCP (host:port); a token is then required */
  tcp?: { host: string; port: number };
  /** the bearer token for TCP */
  token?: string;
  /** the VM state database and VM work directories */
  stateDir: string;
  limits?: Partial<VmLimits>;
  version?: string;
}

export interface RunningDaemon {
  readonly socketPath: string;
  /** the TCP address actually bound (port 0 picks one) */
  readonly tcpAddress: { host: string; port: number } | undefined;
  readonly vms: VmManager;
  /** Stop listening; VMs keep running unless `stopVms`. */
  close(opts?: { stopVms?: boolean }): Promise<void>;
}

function listen(server: Server, where: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    if (typeof where === 'string') server.listen(where, () => resolve());
    else server.listen(where.port, where.host, () => resolve());
  });
}

export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  const { logger } = opts;
  if (opts.tcp && !opts.token) throw new SlipwayError('INVALID_ARGUMENT', 'listening on TCP needs a bearer token (--token-file or SLIPWAY_API_TOKEN)');
  if (opts.token !== undefined && opts.token.length < 16) throw new SlipwayError('INVALID_ARGUMENT', 'the bearer token must be at least 16 characters');
  const limits: VmLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const version = opts.version ?? '0.1.0';

  // what every boot needs, built (or found cached) before the first request
  await buildKernel({ onLine: (l) => logger.info('kernel build', { line: l }) });
  await buildGuest({ onLine: (l) => logger.info('guest build', { line: l }) });
  await guestArtifacts();
  await ensureBackendBuilt((l) => logger.info('backend build', { line: l }));
  startSpawnHelper();

  // one daemon per state directory: a second would adopt (and fight over) the first one's VMs
  const pidFile = join(opts.stateDir, 'daemon.pid');
  mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  const holder = Number.parseInt((() => {
    try {
      return readFileSync(pidFile, 'utf8');
    } catch {
      return '';
    }
  })(), 10);
  if (Number.isInteger(holder) && holder !== process.pid && processRunning(holder) && processHasArgument(holder, 'slipway') && processHasArgument(holder, 'daemon')) {
    throw new SlipwayError('CONFLICT', `another slipway daemon (pid ${holder}) uses the state directory ${opts.stateDir}`);
  }
  writeFileSync(pidFile, String(process.pid), { mode: 0o600 });

  const cache = await ChunkCache.open({ config: opts.config, logger });
  await cache.warmUp();
  const state = new StateStore(opts.stateDir);

  const registry = new Registry();
  const metrics = {
    boots: registry.register(new Counter('slipway_vm_boots_total', 'VM boots by result')),
    bootPhases: registry.register(new Histogram('slipway_vm_boot_phase_seconds', 'time spent in each boot phase', [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])),
    snapshots: registry.register(new Counter('slipway_snapshots_total', 'disk snapshots by result')),
    snapshotBytes: registry.register(new Counter('slipway_snapshot_uploaded_bytes_total', 'bytes uploaded by snapshots')),
    backendErrors: registry.register(new Counter('slipway_backend_errors_total', 'disk backends that exited under a running VM')),
  };
  // what a snapshot does after its answer: waited for before the cache closes
  const background = new BackgroundWork();
  const vms = new VmManager({ cache, state, logger, metrics, limits, stateDir: opts.stateDir, cacheDir: opts.config.cacheDir, background });
  registry.register(new Gauge('slipway_vms', 'VMs by state', () => {
    const c = vms.counts;
    return [{ labels: { state: 'running' }, value: c.running }, { labels: { state: 'booting' }, value: c.booting }, { labels: { state: 'queued' }, value: c.queued }];
  }));
  registry.register(new Gauge('slipway_cache_hits_total', 'chunk reads answered by each cache tier (remote: chunks fetched)', () => {
    const s = cache.stats();
    return [{ labels: { tier: 'memory' }, value: s.memory.hits }, { labels: { tier: 'disk' }, value: s.disk.hits }, { labels: { tier: 'remote' }, value: s.remote.chunks }];
  }, 'counter'));
  registry.register(new Gauge('slipway_backend_miss_failures_total', 'chunk fetches for a backend that failed (the guest saw an I/O error)', () => [{ value: vms.missFailures() }], 'counter'));
  registry.register(new Gauge('slipway_remote_fetched_bytes_total', 'bytes fetched from registries and mirrors', () => [{ value: cache.stats().remote.bytes }], 'counter'));
  registry.register(new Gauge('slipway_remote_requests_total', 'requests made to registries and mirrors', () => [{ value: cache.stats().remote.requests }], 'counter'));
  registry.register(new Gauge('slipway_cache_disk_bytes', 'bytes of chunk files in tier 1', () => [{ value: cache.stats().disk.bytes }]));
  registry.register(new Gauge('slipway_cache_metadata_bytes', 'bytes of manifests, configs, indexes and device state in the metadata cache', () => [{ value: cache.stats().metadata.bytes }]));
  registry.register(new Gauge('slipway_cache_corruptions_total', 'tier-1 chunk files found corrupt and dropped', () => [{ value: cache.stats().disk.corruptions }], 'counter'));

  const adoption = await vms.adoptAll();
  logger.info('daemon state loaded', { adopted: adoption.adopted, removed: adoption.removed });

  const app = buildApp({ vms, cache, metrics: registry, logger, version });
  const unixServer = createServer(getRequestListener(app.fetch));
  let tcpServer: Server | undefined;
  let tcpAddress: { host: string; port: number } | undefined;
  try {
    mkdirSync(dirname(opts.socketPath), { recursive: true, mode: 0o700 });
    rmSync(opts.socketPath, { force: true });
    // the socket is created 0600 (umask), never world-connectable even for a moment
    const oldMask = process.umask(0o177);
    try {
      await listen(unixServer, opts.socketPath);
    } finally {
      process.umask(oldMask);
    }
    chmodSync(opts.socketPath, 0o600);

    if (opts.tcp) {
      const token = opts.token as string;
      tcpServer = createServer(getRequestListener(requireBearerToken(app, token).fetch));
      await listen(tcpServer, opts.tcp);
      const addr = tcpServer.address();
      tcpAddress = addr && typeof addr === 'object' ? { host: addr.address, port: addr.port } : opts.tcp;
    }
  } catch (err) {
    // could not listen (a socket path too long, a TCP port taken): leave nothing behind, VMs running
    unixServer.close();
    tcpServer?.close();
    await vms.detachAll();
    await cache.close();
    state.close();
    rmSync(pidFile, { force: true });
    throw err;
  }
  logger.info('daemon listening', { socket: opts.socketPath, tcp: tcpAddress, stateDir: opts.stateDir, cacheDir: opts.config.cacheDir });

  let closing: Promise<void> | undefined;
  return {
    socketPath: opts.socketPath,
    tcpAddress,
    vms,
    close(closeOpts = {}) {
      closing ??= (async () => {
        const stop = (s: Server | undefined) => new Promise<void>((resolve) => {
          if (!s) return resolve();
          s.close(() => resolve());
          s.closeAllConnections();
        });
        await Promise.all([stop(unixServer), stop(tcpServer)]);
        let left = 0;
        if (closeOpts.stopVms) await vms.deleteAll();
        else left = await vms.detachAll();
        await background.settled();
        await cache.close();
        state.close();
        rmSync(opts.socketPath, { force: true });
        rmSync(pidFile, { force: true });
        logger.info('daemon stopped', { vmsLeftRunning: left });
      })();
      return closing;
    },
  };
}
