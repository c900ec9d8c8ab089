/**
 * A VMM's process, the same for every driver (QEMU, Cloud Hypervisor):
 *
 * - spawned with the VM's work directory among its arguments (that is how it is recognised later),
 *   attached (its output kept in memory) or detached (its own session, its output in a file of the
 *   work directory, so that it outlives the process that started it);
 * - or adopted by pid after a daemon restart, when that pid still runs with the work directory
 *   among its arguments;
 * - its exit, and a wait for the socket it creates at start (or for it to exit or time out);
 * - signals sent only to a pid that is still this VM's VMM: a child not yet reaped (its pid cannot
 *   be reused before), or an adopted pid that still runs, still names the work directory, and has
 *   the start time it had when adopted (src/util/process-identity.ts: a reused pid has another).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { SlipwayError } from '../errors.js';
import { fileTail } from '../util/file-tail.js';
import { processExit, processHasArgument, processRunning } from '../util/process.js';
import { processStartTime } from '../util/process-identity.js';
import { spawnDetached, type DetachedChild } from '../util/spawner.js';
import { attachedCommand, whichBinary } from '../util/which.js';
import type { VmExit } from './driver.js';

/** How much of a VMM's output is kept (and read back from its file). */
const OUTPUT_BYTES = 4000;
/** How often an adopted pid (not our child: no exit event) is looked at. */
const ADOPTED_POLL_MS = 200;

export interface VmmSpawnOptions {
  binary: string;
  /** must name `workDir` somewhere: an adopted pid is recognised by it */
  args: string[];
  workDir: string;
  /** its own session, output in `outputFile`, unref'd: it outlives this process */
  detached: boolean;
  /** where a detached VMM's output goes (and is read back from) */
  outputFile: string;
  /** the streams kept: QEMU's stderr, or Cloud Hypervisor's stdout and stderr together */
  output: 'stderr' | 'stdout+stderr';
  /** the words after "cannot start <binary>: <why>" when it cannot be run at all (how to install it) */
  installHint: string;
  /** variables added to this process's environment for it */
  env?: Record<string, string>;
}

/** How a wait for a VMM's socket ended. */
export type SocketWait<T> = { ready: T } | { exited: VmExit } | { timedOut: true };

export class VmmProcess {
  readonly exited: Promise<VmExit>;
  private exitInfo: VmExit | undefined;

  private constructor(
    /** the child we started (attached, or detached through the spawner), or the pid of one adopted */
    private readonly handle: ChildProcess | DetachedChild | number,
    readonly workDir: string,
    /** /proc's start time of the pid, when it was started or adopted (undefined without /proc) */
    private readonly startTime: string | undefined,
    private readonly outputOf: () => string,
  ) {
    const exit = typeof handle === 'number' ? this.adoptedExit(handle) : 'via' in handle ? handle.exited : processExit(handle, workDir);
    this.exited = exit.then((e) => (this.exitInfo = e));
  }

  /**
   * Start a VMM. Resolves once it runs. Errors: VMM_ERROR naming the binary when it cannot be
   * run (missing, not executable), with `installHint`.
   */
  static async spawn(opts: VmmSpawnOptions): Promise<VmmProcess> {
    const cannot = (err: Error): SlipwayError => new SlipwayError('VMM_ERROR', `cannot start ${opts.binary}: ${err.message} (${opts.installHint})`, { context: { binary: opts.binary }, cause: err });
    const env = opts.env ? { ...process.env, ...opts.env } : process.env;
    if (opts.detached) {
      // its own session, its output in the file (Cloud Hypervisor's stdout too), started without forking this process
      const file = { path: opts.outputFile, append: true };
      const child = await spawnDetached(opts.binary, opts.args, { env, stdout: opts.output === 'stderr' ? 'ignore' : file, stderr: file }).catch((err: Error) => {
        throw cannot(err);
      });
      return new VmmProcess(child, opts.workDir, processStartTime(child.pid), () => fileTail(opts.outputFile, OUTPUT_BYTES));
    }
    // attached: it dies with this process, however this process goes (SIGKILL, the OOM killer),
    // through util-linux's setpriv --pdeathsig where the host has it (PR_SET_PDEATHSIG, set
    // between fork and exec, where Node cannot); a binary that cannot be found is refused here
    const binary = whichBinary(opts.binary, env.PATH);
    if (binary === undefined) throw cannot(Object.assign(new Error(`no executable ${opts.binary} (spawn ENOENT)`), { code: 'ENOENT' }));
    const [file, argv] = attachedCommand(binary, opts.args);
    const child = spawn(file, argv, { stdio: ['ignore', opts.output === 'stderr' ? 'ignore' : 'pipe', 'pipe'], env });
    let piped = '';
    const keep = (d: Buffer): void => {
      piped = (piped + d.toString()).slice(-OUTPUT_BYTES);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (err) => reject(cannot(err)));
    });
    return new VmmProcess(child, opts.workDir, child.pid === undefined ? undefined : processStartTime(child.pid), () => piped);
  }

  /**
   * A VMM started detached by an earlier process: undefined unless `pid` runs with `workDir`
   * among its arguments (else it is gone, or the pid is someone else's now). Its output is read
   * from `outputFile`.
   */
  static adopt(pid: number, workDir: string, outputFile: string): VmmProcess | undefined {
    if (!Number.isSafeInteger(pid) || pid <= 0 || !processRunning(pid) || !processHasArgument(pid, workDir)) return undefined;
    return new VmmProcess(pid, workDir, processStartTime(pid), () => fileTail(outputFile, OUTPUT_BYTES));
  }

  get pid(): number {
    return typeof this.handle === 'number' ? this.handle : (this.handle.pid ?? -1);
  }

  /** Adopted by pid (no exit status, no pipes) rather than started by this process. */
  get adopted(): boolean {
    return typeof this.handle === 'number';
  }

  /** How it ended, once it has (and this process has seen it). */
  get exit(): VmExit | undefined {
    return this.exitInfo;
  }

  /** The last of its output (stderr, or everything for Cloud Hypervisor). */
  output(): string {
    return this.outputOf();
  }

  /** Whether the pid is still this VMM's: see the module's comment. */
  isOurs(): boolean {
    if (this.exitInfo) return false;
    if (typeof this.handle !== 'number') return 'via' in this.handle ? this.handle.exit === undefined : this.handle.exitCode === null && this.handle.signalCode === null;
    const pid = this.handle;
    if (!processRunning(pid) || !processHasArgument(pid, this.workDir)) return false;
    return this.startTime === undefined || processStartTime(pid) === this.startTime;
  }

  /** Send `sig` when the pid is still this VMM's (see isOurs); whether it was sent. */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.isOurs()) return false;
    if (typeof this.handle !== 'number') return this.handle.kill(sig);
    try {
      process.kill(this.handle, sig);
      return true;
    } catch {
      return false; // gone already
    }
  }

  /** Its exit, or undefined after `ms`. */
  exitWithin(ms: number): Promise<VmExit | undefined> {
    return Promise.race([this.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), ms).unref())]);
  }

  /** SIGTERM, then SIGKILL when it is still there after `graceMs`; resolves with its exit. */
  async terminate(graceMs: number): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    this.signal('SIGTERM');
    const exit = await this.exitWithin(graceMs);
    if (exit) return exit;
    this.signal('SIGKILL');
    return this.exited;
  }

  /**
   * Wait for the socket a VMM creates while it starts, then for `probe` to accept it (a ping;
   * undefined: not yet; a throw ends the wait with that error), looking every 20 ms; or for the
   * VMM to exit, or for `timeoutMs` to pass. Nothing is killed here: the caller decides.
   */
  async waitForSocket<T = true>(path: string, timeoutMs: number, probe?: (path: string) => Promise<T | undefined>): Promise<SocketWait<T>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (existsSync(path)) {
        const ready = probe ? await probe(path) : (true as T);
        if (ready !== undefined) return { ready };
      }
      if (this.exitInfo) return { exited: this.exitInfo };
      if (Date.now() > deadline) return { timedOut: true };
      await this.exitWithin(20);
    }
  }

  /** An adopted pid ends (for us) when it is gone, or is no longer this VMM's (reused). */
  private adoptedExit(pid: number): Promise<VmExit> {
    return new Promise((resolve) => {
      const timer = setInterval(() => {
        if (processRunning(pid) && processHasArgument(pid, this.workDir) && (this.startTime === undefined || processStartTime(pid) === this.startTime)) return;
        clearInterval(timer);
        resolve({ code: null, signal: null });
      }, ADOPTED_POLL_MS);
      timer.unref();
    });
  }
}
