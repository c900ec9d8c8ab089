/**
 * The host side of the guest agent protocol (docs/agent-protocol.md): frames over any byte stream
 * (a vsock or Unix socket, or QEMU's virtio-serial chardev socket), requests multiplexed by id.
 *
 * Errors: an `ERROR` frame becomes `SlipwayError('AGENT_ERROR')` with the guest's errno in its
 * context; a frame that breaks the protocol, a connection that ends before its answer, or an answer
 * that does not come in time becomes `AGENT_PROTOCOL` (context `reason`: malformed, closed, timeout).
 */
import { connect } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Duplex, Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';

export const MAX_PAYLOAD = 1_048_576 + 65_536;
export const FRAME_HEADER_BYTES = 12;
export const MAX_STRING_BYTES = 65_536;
export const MAX_STRING_COUNT = 4096;
export const MAX_READ_FILE_BYTES = 1_048_576;
/** stdin and file data are sent in pieces of at most this, well inside MAX_PAYLOAD */
const DATA_PIECE_BYTES = 1_048_576;

export const MessageType = {
  PING: 1,
  EXEC: 2,
  STDIN: 3,
  SIGNAL: 4,
  WRITE_FILE: 5,
  READ_FILE: 6,
  SYNC: 7,
  FSFREEZE: 8,
  SHUTDOWN: 9,
  PONG: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  OK: 0x86,
  DATA: 0x87,
  ERROR: 0xff,
} as const;

const TYPE_NAMES = new Map<number, string>(Object.entries(MessageType).map(([name, type]) => [type, name]));

function typeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `type 0x${type.toString(16)}`;
}

export interface Frame {
  type: number;
  flags: number;
  id: number;
  payload: Buffer;
}

export type FailureReason = 'malformed' | 'closed' | 'timeout';

function protocolError(reason: FailureReason, message: string, cause?: unknown): SlipwayError {
  return new SlipwayError('AGENT_PROTOCOL', message, { context: { reason }, ...(cause === undefined ? {} : { cause }) });
}

// ---- encoding ----

export function encodeFrame(type: number, flags: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new SlipwayError('INVALID_ARGUMENT', `a ${typeName(type)} payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt16LE(type, 4);
  header.writeUInt16LE(flags, 6);
  header.writeUInt32LE(id, 8);
  return Buffer.concat([header, payload]);
}

export function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value, 0);
  return b;
}

export function i32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  return b;
}

export function u64(value: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(value), 0);
  return b;
}

export function encodeString(value: string | Buffer, what = 'string'): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (bytes.length > MAX_STRING_BYTES) throw new SlipwayError('INVALID_ARGUMENT', `${what} is ${bytes.length} bytes (at most ${MAX_STRING_BYTES})`);
  if (bytes.includes(0)) throw new SlipwayError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  return Buffer.concat([u32(bytes.length), bytes]);
}

export function encodeStringList(values: readonly (string | Buffer)[], what = 'string list'): Buffer {
  if (values.length > MAX_STRING_COUNT) throw new SlipwayError('INVALID_ARGUMENT', `${what} has ${values.length} strings (at most ${MAX_STRING_COUNT})`);
  return Buffer.concat([u32(values.length), ...values.map((v, i) => encodeString(v, `${what}[${i}]`))]);
}

/**
 * Splits a byte stream into frames. Buffers chunks and joins them only when a header or a whole
 * payload is available, so a 1 MiB frame arriving in small pieces is copied once.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #header: { length: number; type: number; flags: number; id: number } | undefined;

  /** Frames completed by `chunk`; throws AGENT_PROTOCOL on a frame longer than MAX_PAYLOAD. */
  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (!this.#header) {
        if (this.#buffered < FRAME_HEADER_BYTES) break;
        const h = this.#take(FRAME_HEADER_BYTES);
        const length = h.readUInt32LE(0);
        if (length > MAX_PAYLOAD) throw protocolError('malformed', `the guest agent sent a frame of ${length} bytes (at most ${MAX_PAYLOAD})`);
        this.#header = { length, type: h.readUInt16LE(4), flags: h.readUInt16LE(6), id: h.readUInt32LE(8) };
      }
      if (this.#buffered < this.#header.length) break;
      const { length, type, flags, id } = this.#header;
      this.#header = undefined;
      frames.push({ type, flags, id, payload: this.#take(length) });
    }
    return frames;
  }

  #take(n: number): Buffer {
    this.#buffered -= n;
    const first = this.#chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.#chunks[0];
      if (!c) throw new Error('FrameDecoder: buffered byte count out of step');
      const part = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, part);
      filled += part;
      if (part === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(part);
    }
    return out;
  }
}

// ---- replies ----

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/** The SlipwayError for an ERROR frame: the guest's message, its errno and its symbolic name. */
export function agentError(frame: Frame, request: string): SlipwayError {
  if (frame.payload.length < 4) return protocolError('malformed', `the guest agent sent an ERROR of ${frame.payload.length} bytes for ${request}`);
  const errno = frame.payload.readInt32LE(0);
  const message = frame.payload.subarray(4).toString('utf8');
  const errnoName = ERRNO_NAMES.get(errno);
  return new SlipwayError('AGENT_ERROR', `guest agent: ${message}${errnoName ? ` (${errnoName})` : ''}`, {
    context: { request, errno, errnoName: errnoName ?? null },
  });
}

function expectType(frame: Frame, type: number, request: string): void {
  if (frame.type !== type) throw protocolError('malformed', `the guest agent answered ${request} with ${typeName(frame.type)}, expected ${typeName(type)}`);
}

function expectLength(frame: Frame, length: number, request: string): void {
  if (frame.payload.length !== length) throw protocolError('malformed', `the guest agent sent a ${typeName(frame.type)} of ${frame.payload.length} bytes for ${request} (expected ${length})`);
}

export interface Pong {
  version: number;
  /** boot phases recorded by init: nanoseconds since boot (CLOCK_BOOTTIME) */
  phases: Record<string, number>;
  uptimeNs: number;
}

export function parsePong(payload: Buffer): Pong {
  const pong: Pong = { version: 0, phases: {}, uptimeNs: 0 };
  for (const line of payload.toString('utf8').split('\n')) {
    if (line === '') continue;
    const m = /^(\S+) (\d+)$/.exec(line);
    if (!m) throw protocolError('malformed', `the guest agent sent a PONG line that is not "key value": ${JSON.stringify(line)}`);
    const [, key = '', value = ''] = m;
    if (key === 'version') pong.version = Number(value);
    else if (key === 'uptime') pong.uptimeNs = Number(value);
    else if (key.startsWith('phase.')) pong.phases[key.slice('phase.'.length)] = Number(value);
    // other keys are for newer hosts
  }
  if (pong.version === 0) throw protocolError('malformed', 'the guest agent sent a PONG without a version');
  return pong;
}

// ---- processes ----

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

function signalNumber(signal: number | NodeJS.Signals): number {
  if (typeof signal === 'number') return signal;
  const n = (osConstants.signals as Record<string, number | undefined>)[signal];
  if (n === undefined) throw new SlipwayError('INVALID_ARGUMENT', `unknown signal ${signal}`);
  return n;
}

function envList(env: SpawnOptions['env']): string[] {
  if (env === undefined) return [];
  if (Array.isArray(env)) return [...(env as readonly string[])];
  return Object.entries(env as Record<string, string>).map(([k, v]) => `${k}=${v}`);
}

function pieces(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < data.length; off += size) out.push(data.subarray(off, off + size));
  return out;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Receives the frames for one id until it says it is done. */
interface PendingRequest {
  onFrame(frame: Frame): void;
  onFail(err: SlipwayError): void;
}

/** The state of one EXEC: STARTED, then output, then EXIT; OK/ERROR for its SIGNALs share the id. */
class ExecRequest implements PendingRequest {
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
        const err = agentError(frame, 'EXEC');
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

export interface ConnectOptions {
  /** give up connecting after this long (default 5000) */
  timeoutMs?: number;
}

export interface RequestOptions {
  /** reject with AGENT_PROTOCOL (reason 'timeout') when no answer comes in this long */
  timeoutMs?: number;
}

export class AgentClient {
  readonly #stream: Duplex;
  readonly #decoder = new FrameDecoder();
  readonly #pending = new Map<number, PendingRequest>();
  #nextId = 1;
  #failure: SlipwayError | undefined;
  readonly #closed: Promise<void>;

  constructor(stream: Duplex) {
    this.#stream = stream;
    this.#closed = new Promise((resolve) => stream.once('close', () => resolve()));
    stream.on('data', (chunk: Buffer | string) => this.#onData(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    stream.on('error', (err: Error) => this.#fail(protocolError('closed', `connection to the guest agent failed: ${err.message}`, err)));
    stream.on('end', () => this.#fail(protocolError('closed', 'the guest agent closed the connection')));
    stream.on('close', () => this.#fail(protocolError('closed', 'the connection to the guest agent closed')));
  }

  /** Connect to an agent served on a Unix socket (QEMU's chardev, a hybrid vsock, a test agent). */
  static connectUnix(path: string, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const sock = connect(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(protocolError('timeout', `connecting to the guest agent at ${path} took more than ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new AgentClient(sock));
      });
      sock.once('error', (err) => {
        clearTimeout(timer);
        reject(protocolError('closed', `cannot connect to the guest agent at ${path}: ${err.message}`, err));
      });
    });
  }

  /** Why the connection is unusable, once it is. */
  get failure(): SlipwayError | undefined {
    return this.#failure;
  }

  async ping(opts: RequestOptions = {}): Promise<Pong> {
    const reply = await this.request(MessageType.PING, 0, Buffer.alloc(0), opts);
    expectType(reply, MessageType.PONG, 'PING');
    return parsePong(reply.payload);
  }

  /** Run a program to completion and collect its output. */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const proc = await this.spawn(argv, opts);
    return proc.done;
  }

  /** Start a program; resolves once it is running (rejects with AGENT_ERROR if it cannot start). */
  async spawn(argv: readonly string[], opts: SpawnOptions = {}): Promise<AgentProcess> {
    if (argv.length === 0) throw new SlipwayError('INVALID_ARGUMENT', 'exec needs a program to run');
    const payload = Buffer.concat([encodeStringList(argv, 'argv'), encodeStringList(envList(opts.env), 'env'), encodeString(opts.cwd ?? '', 'cwd')]);
    const withStdin = opts.stdin !== undefined;
    const id = this.#allocateId();
    const req = new ExecRequest(id, opts, () => this.#pending.delete(id));
    this.#pending.set(id, req);
    await this.#send(encodeFrame(MessageType.EXEC, withStdin ? 1 : 0, id, payload)).catch((err: unknown) => req.onFail(err as SlipwayError));
    const pid = await req.started.promise;
    const stdin = opts.stdin;
    if (stdin === undefined || stdin === 'pipe') return this.#processHandle(req, pid, withStdin, req.done.promise);
    // A process may exit without reading all its input: that is no error (writes after EXIT are
    // skipped). A source that fails is: stdin is closed so the process ends, and `done` rejects.
    let feedError: unknown;
    const done = req.done.promise.then((result) => {
      if (feedError !== undefined) throw feedError;
      return result;
    });
    done.catch(() => {}); // the caller's own handlers still see the rejection
    const proc = this.#processHandle(req, pid, withStdin, done);
    void this.#feedStdin(req, proc, stdin).catch(async (err: unknown) => {
      feedError = err;
      await proc.closeStdin().catch(() => {});
    });
    return proc;
  }

  async #feedStdin(req: ExecRequest, proc: AgentProcess, stdin: Buffer | string | Readable): Promise<void> {
    if (typeof stdin === 'string' || Buffer.isBuffer(stdin)) {
      await proc.writeStdin(stdin);
    } else {
      for await (const chunk of stdin as AsyncIterable<Buffer | string>) {
        // stop taking from an endless source once nobody reads it
        if (req.finished) return;
        await proc.writeStdin(chunk);
      }
    }
    if (!req.finished) await proc.closeStdin();
  }

  #processHandle(req: ExecRequest, pid: number, withStdin: boolean, done: Promise<ExecResult>): AgentProcess {
    let stdinClosed = !withStdin;
    const client = this;
    const checkStdin = (what: string): void => {
      if (!withStdin) throw new SlipwayError('INVALID_ARGUMENT', `${what}: process ${pid} was started without stdin`);
      if (stdinClosed) throw new SlipwayError('INVALID_ARGUMENT', `${what}: stdin of process ${pid} is already closed`);
    };
    return {
      id: req.id,
      pid,
      done,
      async kill(signal: number | NodeJS.Signals = 'SIGTERM'): Promise<void> {
        const sig = signalNumber(signal);
        if (req.finished) throw new SlipwayError('AGENT_ERROR', `guest agent: process ${pid} has exited`, { context: { request: 'SIGNAL', errno: osConstants.errno.ESRCH, errnoName: 'ESRCH' } });
        const answer = deferred<void>();
        req.pendingKills.push(answer);
        await client.#send(encodeFrame(MessageType.SIGNAL, 0, req.id, i32(sig)));
        return answer.promise;
      },
      async writeStdin(data: Buffer | string): Promise<void> {
        checkStdin('writeStdin');
        const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
        // an empty STDIN frame would close stdin
        for (const piece of pieces(bytes, DATA_PIECE_BYTES)) {
          if (req.finished) return; // it has exited: its input goes nowhere, as with a pipe
          await client.#send(encodeFrame(MessageType.STDIN, 0, req.id, piece));
        }
      },
      async closeStdin(): Promise<void> {
        checkStdin('closeStdin');
        stdinClosed = true;
        if (req.finished) return;
        await client.#send(encodeFrame(MessageType.STDIN, 0, req.id));
      },
    };
  }

  /** Write `data` to an absolute path in the guest, replacing the file (created with `mode`). */
  async writeFile(path: string, data: Buffer | string | Uint8Array, mode = 0o644): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const pathField = encodeString(path, 'path');
    const pieceBytes = Math.min(DATA_PIECE_BYTES, MAX_PAYLOAD - pathField.length - 12);
    let offset = 0;
    // at least one frame, so an empty file is still created; the first creates and truncates
    do {
      const piece = bytes.subarray(offset, offset + pieceBytes);
      const flags = offset === 0 ? 1 : 0;
      const reply = await this.request(MessageType.WRITE_FILE, flags, Buffer.concat([pathField, u32(mode), u64(offset), piece]));
      expectType(reply, MessageType.OK, 'WRITE_FILE');
      offset += piece.length;
    } while (offset < bytes.length);
  }

  /** Read a whole file from the guest, 1 MiB per request. */
  async readFile(path: string): Promise<Buffer> {
    const pathField = encodeString(path, 'path');
    const parts: Buffer[] = [];
    let offset = 0;
    for (;;) {
      const reply = await this.request(MessageType.READ_FILE, 0, Buffer.concat([pathField, u64(offset), u32(MAX_READ_FILE_BYTES)]));
      expectType(reply, MessageType.DATA, 'READ_FILE');
      if (reply.payload.length > MAX_READ_FILE_BYTES) throw protocolError('malformed', `the guest agent sent ${reply.payload.length} bytes of DATA for at most ${MAX_READ_FILE_BYTES}`);
      parts.push(reply.payload);
      offset += reply.payload.length;
      if (reply.payload.length < MAX_READ_FILE_BYTES) return Buffer.concat(parts);
    }
  }

  async sync(opts: RequestOptions = {}): Promise<void> {
    expectType(await this.request(MessageType.SYNC, 0, Buffer.alloc(0), opts), MessageType.OK, 'SYNC');
  }

  /** Freeze (or thaw) the filesystem mounted at `mountpoint` in the guest. */
  async fsfreeze(mountpoint: string, thaw = false, opts: RequestOptions = {}): Promise<void> {
    expectType(await this.request(MessageType.FSFREEZE, thaw ? 1 : 0, encodeString(mountpoint, 'mount point'), opts), MessageType.OK, 'FSFREEZE');
  }

  /** Ask the guest to power off (or reboot); resolves when the agent has accepted. */
  async shutdown(reboot = false, opts: RequestOptions = {}): Promise<void> {
    expectType(await this.request(MessageType.SHUTDOWN, reboot ? 1 : 0, Buffer.alloc(0), opts), MessageType.OK, 'SHUTDOWN');
  }

  /**
   * Send one request and resolve with its single reply (an ERROR rejects with AGENT_ERROR).
   * The building block of the calls above, and a way to send arbitrary frames in tests.
   */
  request(type: number, flags: number, payload: Buffer, opts: RequestOptions = {}): Promise<Frame> {
    const id = this.#allocateId();
    const answer = deferred<Frame>();
    let timer: NodeJS.Timeout | undefined;
    const release = (): void => {
      if (timer) clearTimeout(timer);
      this.#pending.delete(id);
    };
    this.#pending.set(id, {
      onFrame: (frame) => {
        release();
        if (frame.type === MessageType.ERROR) answer.reject(agentError(frame, typeName(type)));
        else answer.resolve(frame);
      },
      onFail: (err) => {
        release();
        answer.reject(err);
      },
    });
    if (opts.timeoutMs !== undefined) {
      const timeoutMs = opts.timeoutMs;
      timer = setTimeout(() => {
        // a late answer finds no one waiting and is dropped
        release();
        answer.reject(protocolError('timeout', `the guest agent did not answer ${typeName(type)} within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    this.#send(encodeFrame(type, flags, id, payload)).catch((err: unknown) => {
      release();
      answer.reject(err);
    });
    return answer.promise;
  }

  /** Close the connection; requests still waiting reject with ABORTED. */
  async close(): Promise<void> {
    this.#fail(new SlipwayError('ABORTED', 'the agent connection was closed'));
    this.#stream.destroy();
    await this.#closed;
  }

  #allocateId(): number {
    // ids are per connection; skip any still in use after the 32-bit counter wraps
    do {
      this.#nextId = (this.#nextId + 1) >>> 0;
    } while (this.#pending.has(this.#nextId));
    return this.#nextId;
  }

  #send(frame: Buffer): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#stream.write(frame, (err) => {
        if (err) reject(this.#failure ?? protocolError('closed', `writing to the guest agent failed: ${err.message}`, err));
        else resolve();
      });
    });
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.#fail(err instanceof SlipwayError ? err : protocolError('malformed', String(err), err));
      this.#stream.destroy();
      return;
    }
    for (const frame of frames) {
      // frames for ids nobody waits for (a late PONG after a timeout, an ERROR for STDIN sent
      // after EXIT) are dropped
      this.#pending.get(frame.id)?.onFrame(frame);
    }
  }

  #fail(err: SlipwayError): void {
    if (this.#failure) return;
    this.#failure = err;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.onFail(err);
  }
}

export interface WaitOptions {
  /** how long one PING may go unanswered before it is sent again (default 500) */
  pingTimeoutMs?: number;
  /** pause between failed connection attempts (default 100) */
  retryDelayMs?: number;
  /** stop trying (the VM is known to be dead): rejects with ABORTED */
  signal?: AbortSignal;
}

/**
 * Connect and ping until the agent answers, for up to `deadlineMs` from now. The host connects
 * before the guest has booted: the connection may be refused, or (virtio-serial, where QEMU serves
 * the socket) accepted while nothing in the guest reads it yet, so pings are repeated on one
 * connection and the connection is remade when it fails. Resolves with the answering client.
 */
export async function waitForAgent(connectFn: () => Promise<Duplex | AgentClient>, deadlineMs: number, opts: WaitOptions = {}): Promise<AgentClient> {
  const pingTimeoutMs = opts.pingTimeoutMs ?? 500;
  const retryDelayMs = opts.retryDelayMs ?? 100;
  const deadline = Date.now() + deadlineMs;
  let lastError: unknown;
  const aborted = (): boolean => opts.signal?.aborted === true;
  while (Date.now() < deadline && !aborted()) {
    let client: AgentClient | undefined;
    try {
      const conn = await connectFn();
      client = conn instanceof AgentClient ? conn : new AgentClient(conn);
    } catch (err) {
      lastError = err;
      await new Promise((r) => setTimeout(r, Math.max(0, Math.min(retryDelayMs, deadline - Date.now()))));
      continue;
    }
    while (Date.now() < deadline && !client.failure && !aborted()) {
      try {
        await client.ping({ timeoutMs: Math.max(1, Math.min(pingTimeoutMs, deadline - Date.now())) });
        return client;
      } catch (err) {
        lastError = err;
        if (!(err instanceof SlipwayError && err.code === 'AGENT_PROTOCOL' && err.context.reason === 'timeout')) break;
      }
    }
    await client.close().catch(() => {});
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(retryDelayMs, deadline - Date.now()))));
  }
  if (aborted()) throw new SlipwayError('ABORTED', 'stopped waiting for the guest agent');
  throw protocolError('timeout', `the guest agent did not answer within ${deadlineMs} ms${lastError instanceof Error ? ` (last: ${lastError.message})` : ''}`, lastError);
}
