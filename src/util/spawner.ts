/**
 * Detached children (slipway-blk, slipway-ramfs, a detached VMM) started without forking the
 * daemon: through slipway-spawn (vhost-user-blk/spawn.c), a small process started once, which
 * starts each child with posix_spawn and reports its exit. A fork of the daemon write-protects
 * every page of it, and each page the daemon writes afterwards takes a fault: with a few hundred
 * MB resident that was 100-200 ms of CPU per restore on this project's hosts (docs/vmm.md,
 * "Starting processes"). libuv forks for every `child_process.spawn` (libuv/libuv#1715; the fix
 * it recommends, madvise(MADV_DONTFORK), is out of a JavaScript program's reach).
 *
 * Where slipway-spawn is not built, or cannot be started, a child is started by
 * `child_process.spawn` as before (detached, unref'd): the same DetachedChild either way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { constants as osConstants } from 'node:os';
import { processRunning, whenProcessGone } from './process.js';

/** Where a child's stdout or stderr goes: a file (truncated, or appended to), or nowhere. */
export type OutputTarget = { path: string; append?: boolean } | 'ignore';

export interface DetachedSpawnOptions {
  /** the child's whole environment (default: this process's) */
  env?: NodeJS.ProcessEnv;
  stdout: OutputTarget;
  stderr: OutputTarget;
  /** the helper to start children with; false: child_process.spawn (default: slipway-spawn where built) */
  helper?: string | false;
}

/** How a child ended: its exit code, or the signal that ended it. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child in its own session, stdin on /dev/null, that may outlive this process. */
export interface DetachedChild {
  readonly pid: number;
  /** settles when the child has ended (and was reaped by its parent) */
  readonly exited: Promise<ChildExit>;
  /** how it ended, once it has */
  readonly exit: ChildExit | undefined;
  running(): boolean;
  /** send `sig` while it runs; whether it was sent */
  kill(sig?: NodeJS.Signals): boolean;
  /** which way it was started (for tests and logs) */
  readonly via: 'slipway-spawn' | 'node';
}

/** slipway-spawn as `make -C vhost-user-blk` builds it. */
export function spawnHelperBinary(): string {
  return fileURLToPath(new URL('../../vhost-user-blk/build/slipway-spawn', import.meta.url));
}

/**
 * Start `file` (looked up in PATH as child_process.spawn does) with `args`, detached.
 * Resolves once it runs. Errors: the Error child_process.spawn would give (`code` ENOENT,
 * EACCES, ...; message "spawn <file> <code>") when it cannot be started.
 */
export async function spawnDetached(file: string, args: readonly string[], opts: DetachedSpawnOptions): Promise<DetachedChild> {
  const helperPath = opts.helper === undefined ? spawnHelperBinary() : opts.helper;
  const helper = helperPath !== false && existsSync(helperPath) ? helperFor(helperPath) : undefined;
  if (helper && !helper.failed) return helper.spawn(file, args, opts);
  return spawnWithNode(file, args, opts);
}

function spawnWithNode(file: string, args: readonly string[], opts: DetachedSpawnOptions): Promise<DetachedChild> {
  const open = (t: OutputTarget): number | 'ignore' => (t === 'ignore' ? 'ignore' : openSync(t.path, t.append ? 'a' : 'w', 0o600));
  const out = open(opts.stdout);
  const err = open(opts.stderr);
  const child = spawn(file, args, { stdio: ['ignore', out, err], detached: true, env: opts.env ?? process.env });
  for (const fd of [out, err]) if (typeof fd === 'number') closeSync(fd);
  child.unref();
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('spawn', () => resolve(nodeChild(child)));
  });
}

function nodeChild(child: ChildProcess): DetachedChild {
  let exit: ChildExit | undefined;
  const exited = new Promise<ChildExit>((resolve) => child.once('exit', (code, signal) => resolve((exit = { code, signal }))));
  return {
    pid: child.pid ?? -1, exited, via: 'node',
    get exit() {
      return exit;
    },
    running: () => child.exitCode === null && child.signalCode === null,
    kill: (sig = 'SIGTERM') => child.kill(sig),
  };
}

/**
 * Start slipway-spawn now, where it is built (a daemon calls this at start, while it is small:
 * starting it is the one fork this module makes). Later spawns start it when it is not running.
 */
export function startSpawnHelper(path: string = spawnHelperBinary()): void {
  if (existsSync(path)) helperFor(path);
}

/** vhost-user-blk/spawn.c's bounds on a request: strings in argv (or the environment), and bytes. */
const MAX_STRINGS = 8192;
const MAX_REQUEST_BYTES = 1 << 20;

/**
 * `file` as execvp would find it in `env`'s PATH (the first executable regular file), or as given
 * when it names a path or is found nowhere (the helper then answers ENOENT, as spawn would).
 */
function lookUp(file: string, env: NodeJS.ProcessEnv): string {
  if (file.includes('/')) return resolve(file);
  for (const dir of (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    const candidate = resolve(dir || '.', file);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return file;
}

/** One slipway-spawn per helper path for this process (started on first use, again after it died). */
const helpers = new Map<string, Helper>();

function helperFor(path: string): Helper {
  let h = helpers.get(path);
  if (!h || h.gone) {
    h = new Helper(path);
    helpers.set(path, h);
  }
  return h;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(Object.entries(osConstants.signals).map(([name, n]) => [n, name as NodeJS.Signals]));
const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

/** The other end of vhost-user-blk/spawn.c's protocol (see there). */
class Helper {
  /** it could not be started: children go through child_process.spawn */
  failed = false;
  /** it has exited: the next spawn starts another */
  gone = false;
  private readonly proc: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (child: DetachedChild) => void; reject: (err: Error) => void; file: string }>();
  private readonly children = new Map<number, (e: ChildExit | 'unknown') => void>();
  private partial = '';
  private readonly started: Promise<void>;

  constructor(path: string) {
    // the one fork this module makes, of a daemon that is usually still small
    // its own process group: a terminal's Ctrl-C is for the daemon (which closes its stdin)
    this.proc = spawn(path, [], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
    this.started = new Promise((resolve) => {
      this.proc.once('spawn', () => resolve());
      this.proc.once('error', () => {
        this.failed = true;
        resolve();
      });
    });
    this.proc.stdout?.setEncoding('latin1').on('data', (d: string) => this.onData(d));
    this.proc.stdin?.on('error', () => undefined); // its exit is handled below
    // 'close', not 'exit': the answers it wrote before it exited are read first
    this.proc.once('close', () => this.onGone());
    this.hold(false);
  }

  /**
   * Keep this process alive while an answer is awaited; otherwise the helper does not, as the
   * detached children it starts do not.
   */
  private hold(on: boolean): void {
    for (const h of [this.proc, this.proc.stdin, this.proc.stdout] as ({ ref?: () => void; unref?: () => void } | null)[]) {
      if (on) h?.ref?.();
      else h?.unref?.();
    }
  }

  async spawn(file: string, args: readonly string[], opts: DetachedSpawnOptions): Promise<DetachedChild> {
    await this.started;
    if (this.failed || this.gone) return spawnWithNode(file, args, opts);
    const env = Object.entries(opts.env ?? process.env).filter((e): e is [string, string] => e[1] !== undefined).map(([k, v]) => `${k}=${v}`);
    // what child_process.spawn would do: the program looked up in the child's PATH, paths taken
    // from this process's working directory, which is the child's too
    const target = (t: OutputTarget): string => (t === 'ignore' ? '-' : `${t.append ? 'a' : 'w'}:${resolve(t.path)}`);
    const id = String(this.nextId++);
    const strings = [id, process.cwd(), target(opts.stdout), target(opts.stderr), String(args.length + 1), lookUp(file, opts.env ?? process.env), ...args, String(env.length), ...env];
    if (strings.some((s) => s.includes('\0'))) throw Object.assign(new Error(`spawn ${file} EINVAL: an argument or variable holds a NUL byte`), { code: 'EINVAL' });
    const body = Buffer.from(`${strings.join('\0')}\0`);
    // past the helper's bounds, child_process.spawn answers as the system does (E2BIG or a start)
    if (args.length + 1 > MAX_STRINGS || env.length > MAX_STRINGS || body.length > MAX_REQUEST_BYTES) return spawnWithNode(file, args, opts);
    const frame = Buffer.alloc(4 + body.length);
    frame.writeUInt32LE(body.length, 0);
    body.copy(frame, 4);
    return new Promise<DetachedChild>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, file });
      this.hold(true);
      this.proc.stdin?.write(frame);
    });
  }

  /** A child the helper says it started: its exit is listened for at once (it may be in the same read). */
  private child(pid: number): DetachedChild {
    let exit: ChildExit | undefined;
    const exited = new Promise<ChildExit>((resolve) => {
      this.children.set(pid, (e) => {
        // the helper went away: the child is init's now, and its end is seen by polling
        if (e === 'unknown') void whenProcessGone(pid).then(() => resolve((exit = { code: null, signal: null })));
        else resolve((exit = e));
      });
    });
    return {
      pid, exited, via: 'slipway-spawn',
      get exit() {
        return exit;
      },
      running: () => exit === undefined && processRunning(pid),
      kill: (sig = 'SIGTERM') => {
        if (exit !== undefined || pid <= 0) return false;
        try {
          process.kill(pid, sig);
          return true;
        } catch {
          return false;
        }
      },
    };
  }

  private onData(d: string): void {
    const lines = (this.partial + d).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      const [kind, a, b, c] = line.split(' ');
      if (kind === 'ok' && a !== undefined) {
        const p = this.take(a);
        const pid = Number(b);
        // a pid that is not a positive integer would make kill() signal a process group, or every process
        if (p && Number.isSafeInteger(pid) && pid > 0) p.resolve(this.child(pid));
        else p?.reject(Object.assign(new Error(`spawn ${p.file} EPROTO: slipway-spawn answered ${JSON.stringify(line)}`), { code: 'EPROTO' }));
      } else if (kind === 'err' && a !== undefined) {
        const p = this.take(a);
        const code = ERRNO_NAMES.get(Number(b)) ?? `errno ${b}`;
        p?.reject(Object.assign(new Error(`spawn ${p.file} ${code}`), { code, errno: -Number(b), syscall: `spawn ${p.file}` }));
      } else if (kind === 'exit') {
        const pid = Number(a);
        const done = this.children.get(pid);
        this.children.delete(pid);
        done?.(b === 'signal' ? { code: null, signal: SIGNAL_NAMES.get(Number(c)) ?? null } : { code: Number(c), signal: null });
      }
    }
  }

  /** The request `id` waits for, no longer pending. */
  private take(id: string): { resolve: (child: DetachedChild) => void; reject: (err: Error) => void; file: string } | undefined {
    const p = this.pending.get(id);
    this.pending.delete(id);
    if (this.pending.size === 0) this.hold(false);
    return p;
  }

  private onGone(): void {
    this.gone = true;
    for (const p of this.pending.values()) p.reject(Object.assign(new Error(`spawn ${p.file} EPIPE: slipway-spawn exited`), { code: 'EPIPE' }));
    this.pending.clear();
    for (const done of this.children.values()) done('unknown');
    this.children.clear();
  }
}
