import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkImageFile } from '../disk/push.js';
import { SlipwayError, isSlipwayError } from '../errors.js';
import { loadMemorySnapshot } from '../disk/memory-snapshot.js';
import { parseRef, refReference } from '../oci/ref.js';
import { ChunkCache } from '../cache/chunk-cache.js';
import { loadConfig } from '../config.js';
import { serveDisk, type ServedDisk } from '../serve/backend.js';
import { createLogger } from '../util/log.js';
import { runInVm } from '../vmm/run.js';
import { guestArtifacts } from '../guest/build.js';
import { driverFor, parseVmmName } from '../vmm/drivers.js';
import { renderWaterfall, type TimingRecord } from './waterfall.js';
import type { VmmDriver } from '../vmm/driver.js';
import type { DiskSpec } from '../vmm/driver.js';
import { parseCommand, parseCpus, parseEnv, parseNet, parseVmMemoryMiB, type CommandIO, type CommandSpec } from './args.js';
import { daemonClient, daemonConfigured } from './daemon-commands.js';
import type { CreateVm, SlipwayClient } from '../client/index.js';
import { withRepositoryTags, withRepositoryTagsOf } from './explain-unreadable.js';

const USAGE = 'slipway run <ref> | --disk <raw-file> [--hostname H] [--env K=V]... [--cpus N] [--memory 512M] [--net none|user|tap:<ifname>] [--vmm qemu|cloud-hypervisor] [--hugepages] [--timings[=json|waterfall]] [--keep] [--kernel-args ARGS] [--prefetch all|profile|none] [--cache-dir DIR] [--local | --daemon <socket|url>] -- <cmd...>';

/** `slipway run <ref>` through a daemon: create the VM, run the command, delete the VM. */
type TimingsMode = 'none' | 'waterfall' | 'json';

/** `--timings` is a waterfall on a terminal and JSON otherwise; `--timings=json|waterfall` chooses. */
function takeTimingsFlag(argv: string[], io: CommandIO): { argv: string[]; mode: TimingsMode } {
  let mode: TimingsMode = 'none';
  const rest = argv.filter((a) => {
    if (a === '--timings') mode = io.stderr.isTTY ? 'waterfall' : 'json';
    else if (a === '--timings=json') mode = 'json';
    else if (a === '--timings=waterfall') mode = 'waterfall';
    else if (a.startsWith('--timings=')) throw new SlipwayError('INVALID_ARGUMENT', `--timings takes json or waterfall (got ${a.slice(10)})`);
    else return true;
    return false;
  });
  return { argv: rest, mode };
}

function printTimings(record: TimingRecord, mode: TimingsMode, io: CommandIO): void {
  if (mode === 'json') io.stderr.write(`${JSON.stringify(record)}\n`);
  else if (mode === 'waterfall') io.stderr.write(renderWaterfall(record, Math.max(20, Math.min(60, (io.stderr.columns ?? 100) - 40))));
}

/**
 * `slipway run` through a daemon: create the VM, exec `argv` in it (its output streamed to `io`),
 * delete it; resolves with the command's exit status (128 + a signal). `plainHttpHosts`: the
 * registries this host speaks plain HTTP to, for listing a missing tag's repository from here.
 */
async function runThroughDaemon(client: SlipwayClient, req: CreateVm, argv: string[], cwd: string | undefined, timings: TimingsMode, io: CommandIO, plainHttpHosts: readonly string[]): Promise<number> {
  let vmId: string | undefined;
  const stop = (): void => {
    if (vmId) void client.deleteVm(vmId).catch(() => undefined);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const t0 = Date.now();
    const vm = await client.createVm(req).catch(async (err: unknown) => {
      // a missing tag: the tags there are, asked of the registry from here
      throw await withRepositoryTagsOf(err, req.image, () => ({ plainHttpHosts }));
    });
    vmId = vm.id;
    const r = await client.exec(vm.id, { argv, ...(cwd ? { cwd } : {}) }, { onStdout: (b) => io.stdout.write(b), onStderr: (b) => io.stderr.write(b), collect: false });
    if (timings === 'json') io.stderr.write(`${JSON.stringify({ daemon: true, vm: vm.id, accel: vm.accel, hostMs: { ...vm.timings, create_and_exec: Date.now() - t0 } })}\n`);
    else printTimings({ accel: vm.accel ?? '?', hostMs: { ...vm.timings, exec: Date.now() - t0 - Object.values(vm.timings).reduce((a, b) => a + b, 0) }, guestMs: vm.guestTimings ?? {} }, timings, io);
    return r.signal ? 128 + r.signal : r.exitCode;
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
    if (vmId) await client.deleteVm(vmId).catch(() => undefined);
    await client.close();
  }
}

/** slipway run: boot a VM, run one command through the agent, print its output, exit with its status. */
export async function runCommand(argv: string[], io: CommandIO): Promise<number> {
  const dd = argv.indexOf('--');
  if (dd < 0 || dd === argv.length - 1) throw new SlipwayError('USAGE', `run: give the command after --\nusage: ${USAGE}`);
  const command = argv.slice(dd + 1);
  const timings = takeTimingsFlag(argv.slice(0, dd), io);
  const { values, positionals } = parseCommand('run', timings.argv, {
    disk: { type: 'string' }, hostname: { type: 'string' }, env: { type: 'string', multiple: true }, cpus: { type: 'string' },
    memory: { type: 'string' }, net: { type: 'string' }, keep: { type: 'boolean' }, cwd: { type: 'string' },
    'cache-dir': { type: 'string' }, queues: { type: 'string' }, vmm: { type: 'string' }, hugepages: { type: 'boolean' }, local: { type: 'boolean' }, daemon: { type: 'string' },
    'kernel-args': { type: 'string' }, prefetch: { type: 'string' },
  }, { min: 0, max: 1, usage: USAGE });
  const prefetch = values.prefetch;
  if (prefetch !== undefined && prefetch !== 'all' && prefetch !== 'profile' && prefetch !== 'none') throw new SlipwayError('INVALID_ARGUMENT', `--prefetch must be all, profile or none (got ${prefetch})`);
  const vmm = parseVmmName(values.vmm ?? 'qemu');
  if (!vmm) throw new SlipwayError('INVALID_ARGUMENT', `--vmm must be qemu or cloud-hypervisor (got ${values.vmm})`);
  const config = loadConfig(process.env, values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {});
  // the accelerator's verdict is said once, when it is decided (later runs read it from the cache)
  const driver: VmmDriver = driverFor(vmm, { cacheDir: config.cacheDir, onAccelDecided: (v) => io.stderr.write(`slipway run: accel: ${v.accel} (${v.reason})\n`) });
  const ref = positionals[0];
  if (!ref === !values.disk) throw new SlipwayError('USAGE', `run: name either an image reference or --disk <raw-file>\nusage: ${USAGE}`);
  // a raw disk is checked before anything starts (a missing file is FILE_NOT_FOUND, not a VMM that exits)
  if (values.disk !== undefined) await checkImageFile(values.disk);
  const cpus = values.cpus ? parseCpus(values.cpus) : 1;
  const memoryMiB = values.memory ? parseVmMemoryMiB(values.memory) : 512;
  const env = parseEnv(values.env);
  const net = parseNet(values.net);
  // with a daemon running (or named), an image runs there: its cache is warm and shared
  const daemonCan = ref && !values.local && !values.keep && !values.hugepages && !values.hostname && !values['cache-dir'] && !values['kernel-args'] && net.mode !== 'tap';
  if (daemonCan && (values.daemon !== undefined || daemonConfigured())) {
    // cpus and memory only when given: the daemon's defaults are the same, and a memory snapshot brings its own
    return runThroughDaemon(daemonClient(values.daemon, undefined), {
      image: ref, vmm, net: net.mode === 'user' ? 'user' : 'none', ...(values.cpus ? { cpus } : {}), ...(values.memory ? { memoryMiB } : {}), ...(env ? { env } : {}), ...(prefetch ? { prefetch } : {}),
    }, command, values.cwd, timings.mode, io, config.plainHttpRegistries);
  }
  const controller = new AbortController();
  const onSigint = (): void => controller.abort();
  process.once('SIGINT', onSigint);
  process.once('SIGTERM', onSigint);
  const hostPhases: Record<string, number> = {};
  let cache: ChunkCache | undefined;
  let served: ServedDisk | undefined;
  let serveDir: string | undefined;
  let profileSaved: Promise<unknown> | undefined;
  try {
    let disks: DiskSpec[];
    // find (or build) the kernel and initramfs while the disk is being opened
    const artifacts = guestArtifacts();
    artifacts.catch(() => undefined);
    if (ref) {
      const t0 = Date.now();
      cache = await ChunkCache.open({ config, logger: createLogger({ out: io.stderr }) });
      serveDir = await mkdtemp(join(tmpdir(), 'slipway-run-'));
      // the first boot of a disk records the chunks it reads and stores that boot profile next to
      // the disk, so later cold boots (on any host) fetch them ahead of demand
      const openedCache = cache;
      served = await serveDisk({ cache, ref, socket: join(serveDir, 'blk.sock'), workDir: serveDir, readWrite: true, queues: Math.min(cpus, 4), openOptions: { recordProfileIfMissing: true }, ...(prefetch ? { prefetch } : {}) }).catch(async (err: unknown) => {
        // a memory snapshot is no disk: it resumes through the daemon, which keeps its VMs
        if (isSlipwayError(err, 'NOT_A_SLIPWAY_DISK') && await loadMemorySnapshot(await openedCache.targets.open(parseRef(ref)), refReference(parseRef(ref))).then(() => true, () => false)) {
          throw new SlipwayError('INVALID_ARGUMENT', `${ref} is a memory snapshot: it resumes through the daemon (start \`slipway daemon\`, then \`slipway run ${ref} -- ...\` or \`slipway vm create ${ref}\`)`);
        }
        const target = await openedCache.targets.open(parseRef(ref)).catch(() => undefined);
        throw target ? await withRepositoryTags(err, target) : err;
      });
      hostPhases.resolve_and_backend = Date.now() - t0;
      disks = [{ kind: 'vhost-user', socket: served.socket }];
    } else {
      disks = [{ kind: 'file', path: values.disk as string }];
    }
    const result = await runInVm({
      disks,
      driver,
      argv: command,
      cpus,
      memoryMiB,
      hugepages: values.hugepages === true,
      net,
      signal: controller.signal,
      keep: values.keep === true,
      notice: (message) => io.stderr.write(`slipway run: ${message}\n`),
      stdout: (d) => io.stdout.write(d),
      stderr: (d) => io.stderr.write(d),
      ...(env ? { env } : {}),
      ...(values.hostname ? { hostname: values.hostname } : {}),
      ...(values.cwd ? { cwd: values.cwd } : {}),
      ...(values['kernel-args'] ? { kernelArgs: values['kernel-args'] } : {}),
      onAgentReady: () => {
        const disk = served?.disk;
        if (disk?.recordingProfile) {
          profileSaved = disk.saveProfile().catch((err: unknown) => {
            io.stderr.write(`slipway run: warning: could not store the boot profile: ${(err as Error).message}\n`);
            return undefined;
          });
        }
      },
    });
    if (result.kept) {
      // --keep: the VM runs on, served from here, until it powers off or we are told to stop
      const k = result.kept;
      const agent = k.agentEndpoint.transport === 'vsock' ? `vsock cid ${k.agentEndpoint.cid}` : `socket ${k.agentEndpoint.socket}`;
      io.stderr.write(`slipway run: VM kept running: pid ${k.pid}, work directory ${k.workDir}, agent ${agent}; Ctrl-C or SIGTERM stops it\n`);
      const stopped = await Promise.race([k.exited.then(() => 'exited' as const), new Promise<'signal'>((r) => controller.signal.addEventListener('abort', () => r('signal'), { once: true }))]);
      await k.stop();
      io.stderr.write(`slipway run: kept VM ${stopped === 'exited' ? 'powered off' : 'stopped'}; its directories were removed\n`);
      if (stopped === 'signal') return 130;
    }
    if (timings.mode !== 'none') {
      const tiers = served ? { disk: { ...served.disk.stats }, remote: { ...cache?.stats().remote }, misses: { ...served.miss.stats } } : undefined;
      printTimings({ accel: result.accel, hostMs: { ...hostPhases, ...result.phasesMs }, guestMs: result.guestPhasesMs, ...(tiers ? { chunks: tiers } : {}) }, timings.mode, io);
    }
    return result.signal ? 128 + result.signal : result.exitCode;
  } catch (err) {
    if (controller.signal.aborted) {
      io.stderr.write('slipway run: interrupted; the VM was stopped and removed\n');
      return 130;
    }
    throw err;
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigint);
    await profileSaved;
    await served?.close();
    await cache?.close();
    if (serveDir) await rm(serveDir, { recursive: true, force: true });
  }
}

export const RUN_COMMAND: CommandSpec = {
  name: 'run',
  help: [{ usage: USAGE, summary: 'boot a VM from a disk, run a command in it, exit with its status (through the daemon when one runs); a --disk file is written to in place' }],
  run: runCommand,
};
