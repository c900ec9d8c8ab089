/**
 * The host side of the guest agent protocol (docs/agent-protocol.md): frames over any byte stream
 * (a vsock or Unix socket, or QEMU's virtio-serial chardev socket), requests multiplexed by id.
 * The wire format is agent-protocol.ts; one EXEC's state is agent-exec.ts.
 *
 * Errors: an `ERROR` frame becomes `SlipwayError('AGENT_ERROR')` with the guest's errno in its
 * context (an EXEC whose execve failed: COMMAND_NOT_FOUND or COMMAND_NOT_EXECUTABLE, see
 * execStartError); a frame that breaks the protocol, a connection that ends before its answer, or
 * an answer that does not come in time becomes `AGENT_PROTOCOL` (context `reason`: malformed,
 * closed, timeout).
 */
import { connect } from 'node:net';
import { constants as osConstants } from 'node:os';
import type { Duplex, Readable } from 'node:stream';
import { SlipwayError } from '../errors.js';
import {
  DATA_PIECE_BYTES, FrameDecoder, MAX_PAYLOAD, MAX_READ_FILE_BYTES, MessageType, agentError, encodeFrame, encodeString, encodeStringList,
  expectType, i32, parsePong, protocolError, typeName, u32, u64, type Frame, type Pong,
} from './agent-protocol.js';
import { ExecRequest, deferred, envList, pieces, signalNumber, type AgentProcess, type ExecOptions, type ExecResult, type PendingRequest, type SpawnOptions } from './agent-exec.js';

export type { AgentProcess, ExecOptions, ExecResult, SpawnOptions } from './agent-exec.js';
export type { Pong } from './agent-protocol.js';

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

  /**
   * Start a program; resolves once it is running. Rejects when it cannot start: COMMAND_NOT_FOUND
   * or COMMAND_NOT_EXECUTABLE when execve failed (execStartError), else AGENT_ERROR.
   */
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

  /**
   * Set the guest's host name (sethostname(2) in the agent: no process is started). Rejects with
   * AGENT_ERROR EINVAL for a name that is not 1-64 letters, digits, '-' or '.', and from an agent
   * older than this request ("unknown request type").
   */
  async setHostname(name: string, opts: RequestOptions = {}): Promise<void> {
    expectType(await this.request(MessageType.SET_HOSTNAME, 0, encodeString(name, 'host name'), opts), MessageType.OK, 'SET_HOSTNAME');
  }

  /**
   * Step the guest's clock (CLOCK_REALTIME, clock_settime(2) in the agent) to `ns` nanoseconds
   * since the Unix epoch, by default this host's time now: a VM restored from a memory snapshot
   * wakes with the clock it was paused with. Rejects with AGENT_ERROR EINVAL for a time before
   * 2000, EPERM where the agent may not set the clock, and from an agent older than this request
   * ("unknown request type").
   */
  async setTime(ns: bigint = BigInt(Date.now()) * 1_000_000n, opts: RequestOptions = {}): Promise<void> {
    expectType(await this.request(MessageType.SET_TIME, 0, u64(ns), opts), MessageType.OK, 'SET_TIME');
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
