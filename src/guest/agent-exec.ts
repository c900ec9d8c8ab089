/**
 * One EXEC on an agent connection (docs/agent-protocol.md): its frames in (STARTED, STDOUT,
 * STDERR, EXIT, and the OK/ERROR answers to its SIGNALs) and the promises its caller waits on.
 */
import { constants as osConstants } from 'node:os';
import type { Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';
import { MessageType, agentError, execStartError, expectLength, expectType, protocolError, typeName, type Frame } from './agent-protocol.js';

export interface ExecResult {
  /** the exit status, -1 when killed by a signal */
  exitCode: number;
  /** the signal that killed it, 0 when it exited */
  signal: number;
  /** all output, unless `collectOutput: false` */
  stdout: Buffer;
  stderr: Buffer;
}

export interface SpawnOptions {
  /** the environment (replaces the agent's own when non-empty) */
  env?: Record<string, string> | readonly string[];
  /** working directory; the guest's / when absent */
  cwd?: string;
  /**
   * 'pipe': write it with `writeStdin` and `closeStdin`; data or a stream: sent, then closed;
   * absent: /dev/null
   */
  stdin?: 'pipe' | Buffer | string | Readable;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** keep all output for the result (default true) */
  collectOutput?: boolean;
}

export type ExecOptions = Omit<SpawnOptions, 'stdin'> & { stdin?: Buffer | string | Readable };

export interface AgentProcess {
  readonly id: number;
  readonly pid: number;
  /** Send a signal (number or name); resolves when the agent has sent it. */
  kill(signal?: number | NodeJS.Signals): Promise<void>;
  /** Send bytes to its stdin (started with `stdin: 'pipe'`); resolves when handed to the socket. */
  writeStdin(data: Buffer | string): Promise<void>;
  /** End its stdin. */
  closeStdin(): Promise<void>;
  /** Resolves with the exit after all output; rejects if the connection fails first. */
  readonly done: Promise<ExecResult>;
}

export function signalNumber(signal: number | NodeJS.Signals): number {
  if (typeof signal === 'number') return signal;
  const n = (osConstants.signals as Record<string, number | undefined>)[signal];
  if (n === undefined) throw new SlipwayError('INVALID_ARGUMENT', `unknown signal ${signal}`);
  return n;
}

export function envList(env: SpawnOptions['env']): string[] {
  if (env === undefined) return [];
  if (Array.isArray(env)) return [...(env as readonly string[])];
  return Object.entries(env as Record<string, string>).map(([k, v]) => `${k}=${v}`);
}

export function pieces(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < data.length; off += size) out.push(data.subarray(off, off + size));
  return out;
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Receives the frames for one id until it says it is done. */
export interface PendingRequest {
  onFrame(frame: Frame): void;
  onFail(err: SlipwayError): void;
}

/** The state of one EXEC: STARTED, then output, then EXIT; OK/ERROR for its SIGNALs share the id. */
export class ExecRequest implements PendingRequest {
  readonly started = deferred<number>();
  readonly done = deferred<ExecResult>();
  readonly #stdout: Buffer[] = [];
  readonly #stderr: Buffer[] = [];
  /** SIGNAL requests awaiting OK/ERROR, oldest first: the agent answers in order */
  readonly pendingKills: Deferred<void>[] = [];
  pid: number | undefined;
  finished = false;

  constructor(
    readonly id: number,
    readonly opts: SpawnOptions,
    readonly release: () => void,
  ) {
    // the caller may only ever look at one of the two
    this.started.promise.catch(() => {});
    this.done.promise.catch(() => {});
  }

  onFrame(frame: Frame): void {
    try {
      this.#handle(frame);
    } catch (err) {
      this.onFail(err instanceof SlipwayError ? err : protocolError('malformed', String(err), err));
    }
  }

  #handle(frame: Frame): void {
    if (this.pid === undefined) {
      if (frame.type === MessageType.ERROR) {
        const err = execStartError(frame);
        this.#finish();
        this.started.reject(err);
        this.done.reject(err);
        return;
      }
      expectType(frame, MessageType.STARTED, 'EXEC');
      expectLength(frame, 4, 'EXEC');
      this.pid = frame.payload.readUInt32LE(0);
      this.started.resolve(this.pid);
      return;
    }
    switch (frame.type) {
      case MessageType.STDOUT:
        this.opts.onStdout?.(frame.payload);
        if (this.opts.collectOutput !== false) this.#stdout.push(frame.payload);
        return;
      case MessageType.STDERR:
        this.opts.onStderr?.(frame.payload);
        if (this.opts.collectOutput !== false) this.#stderr.push(frame.payload);
        return;
      case MessageType.EXIT: {
        expectLength(frame, 8, 'EXEC');
        this.#finish();
        this.done.resolve({
          exitCode: frame.payload.readInt32LE(0),
          signal: frame.payload.readInt32LE(4),
          stdout: Buffer.concat(this.#stdout),
          stderr: Buffer.concat(this.#stderr),
        });
        return;
      }
      case MessageType.OK:
        this.pendingKills.shift()?.resolve();
        return;
      case MessageType.ERROR: {
        // SIGNAL is the only request on this id that answers; STDIN errors only arise from misuse
        // that AgentProcess prevents, or after EXIT, when nobody listens
        this.pendingKills.shift()?.reject(agentError(frame, 'SIGNAL'));
        return;
      }
      default:
        throw protocolError('malformed', `the guest agent sent ${typeName(frame.type)} for a running process`);
    }
  }

  onFail(err: SlipwayError): void {
    this.#finish();
    this.started.reject(err);
    this.done.reject(err);
  }

  #finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.release();
    // the agent answers a SIGNAL that arrives after EXIT with an ERROR nobody will hear
    for (const kill of this.pendingKills.splice(0)) {
      kill.reject(new SlipwayError('AGENT_ERROR', `guest agent: process ${this.pid ?? '?'} exited before the signal was sent`, { context: { request: 'SIGNAL', errno: osConstants.errno.ESRCH, errnoName: 'ESRCH' } }));
    }
  }
}

// ---- the client ----
