/**
 * A QMP client: QEMU's JSON machine protocol over its monitor socket (qemu/qemu
 * docs/interop/qmp-spec.rst). One connection, commands answered in order, events handed to
 * listeners. The transport is a Unix stream socket carrying one JSON object per line.
 */
import { connect, type Socket } from 'node:net';
import { SlipwayError } from '../errors.js';

/** An asynchronous QMP event: `{"event": NAME, "data": {...}, "timestamp": {...}}`. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
}

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string };

/** The largest line QMP may send us before we call the peer broken (query answers are small). */
const MAX_LINE_BYTES = 1 << 20;

export class QmpClient {
  private buffer = '';
  private readonly pending: Pending[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private greeted: Promise<void>;
  private closedError: Error | undefined;
  /** Resolves once the socket has closed and every line it carried was handled. */
  readonly closed: Promise<void>;

  private constructor(private readonly socket: Socket) {
    let greet: () => void = () => undefined;
    let fail: (e: Error) => void = () => undefined;
    this.greeted = new Promise<void>((resolve, reject) => {
      greet = resolve;
      fail = reject;
    });
    this.greeted.catch(() => undefined);
    let first = true;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      if (this.buffer.length > MAX_LINE_BYTES && !this.buffer.includes('\n')) {
        socket.destroy(new Error('QMP line over 1 MiB'));
        return;
      }
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          socket.destroy(new Error(`QMP sent a line that is not JSON: ${line.slice(0, 200)}`));
          return;
        }
        if (first && 'QMP' in msg) {
          first = false;
          greet();
          continue;
        }
        this.handle(msg);
      }
    });
    this.closed = new Promise<void>((resolve) => {
      socket.once('close', () => {
        this.closedError ??= new SlipwayError('VMM_ERROR', 'the QMP connection closed');
        fail(this.closedError);
        for (const p of this.pending.splice(0)) p.reject(this.closedError);
        resolve();
      });
    });
    socket.on('error', (err) => {
      this.closedError = new SlipwayError('VMM_ERROR', `QMP: ${err.message}`, { cause: err });
    });
  }

  /**
   * Connect to a QMP socket, read the greeting and leave capabilities negotiation mode; `onEvent`
   * hears every event from the start. A refused connection is tried again every 10 ms for
   * `refusedRetryMs` (default 2000): a VMM binds its socket (the file appears) a moment before it
   * listens on it, and a caller that saw the file may come in between.
   * Errors: VMM_ERROR when the socket cannot be reached or closes first.
   */
  static async connect(path: string, opts: { onEvent?: (e: QmpEvent) => void; refusedRetryMs?: number } = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.refusedRetryMs ?? 2000);
    let socket: Socket;
    for (;;) {
      socket = connect(path);
      const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
        socket.once('connect', () => {
          socket.removeAllListeners('error');
          resolve(undefined);
        });
        socket.once('error', resolve);
      });
      if (!err) break;
      socket.destroy();
      if (err.code !== 'ECONNREFUSED' || Date.now() >= deadline) throw new SlipwayError('VMM_ERROR', `cannot reach QMP at ${path}: ${err.message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 10));
    }
    const client = new QmpClient(socket);
    // listening from the first byte: an event may come in the same read as the negotiation's answer
    if (opts.onEvent) client.onEvent(opts.onEvent);
    await client.greeted;
    await client.execute('qmp_capabilities');
    return client;
  }

  private handle(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      const event: QmpEvent = { event: msg.event, data: (msg.data && typeof msg.data === 'object' ? msg.data : {}) as Record<string, unknown> };
      for (const l of this.listeners) l(event);
      return;
    }
    const p = this.pending.shift();
    if (!p) return;
    if ('return' in msg) p.resolve(msg.return);
    else {
      const err = (msg.error ?? {}) as { class?: unknown; desc?: unknown };
      p.reject(new SlipwayError('VMM_ERROR', `QMP ${p.command}: ${String(err.class ?? 'error')}: ${String(err.desc ?? JSON.stringify(msg))}`));
    }
  }

  /** Run one command; resolves with its `return` value. Errors: VMM_ERROR with QEMU's class and text. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ resolve: resolve as (v: unknown) => void, reject, command });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Whether the connection has closed (a new one must be made). */
  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  /** Listen for events; returns a function that stops listening. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.socket.destroy();
  }
}
