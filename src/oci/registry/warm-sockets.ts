/**
 * Connections to a registry opened ahead of the requests that will use them. A disk that has never
 * been read on this host sends its first misses in a burst, each on a connection of its own; a
 * connection opened then costs each of them a TCP handshake (and a TLS one) before its request can
 * go out. `WarmSockets` opens those connections while the guest is still starting, sends nothing
 * on them, and hands them to the HTTP pool (undici) as it grows: it is the pool's connector, and
 * falls back to the ordinary one when it holds no open socket for the origin asked for.
 */
import type { Socket } from 'node:net';
import { buildConnector } from 'undici';

/** How long an opened connection that no request took is kept before it is closed (ms). */
export const WARM_SOCKET_IDLE_MS = 10_000;

export class WarmSockets {
  /** open sockets no request has taken, each with what stops watching it (insertion order: oldest first) */
  readonly #idle = new Map<Socket, () => void>();
  readonly #base: buildConnector.connector;
  readonly #origin: URL;
  /** the origin's host name as connections are made to it (an IPv6 address without its brackets) */
  readonly #hostname: string;
  #opening = 0;
  #closed = false;
  /** sockets handed to the pool since this was made (for tests and timings) */
  taken = 0;

  /**
   * `origin`: the registry's origin (`https://host[:port]`); `connectTimeoutMs`: how long one
   * connection may take to open, as for any other connection of the pool.
   */
  constructor(origin: string, connectTimeoutMs: number) {
    this.#origin = new URL(origin);
    const h = this.#origin.hostname;
    this.#hostname = h.startsWith('[') ? h.slice(1, -1) : h;
    this.#base = buildConnector({ timeout: connectTimeoutMs });
  }

  /** Connections opened and not yet taken (or still opening). */
  get idle(): number {
    return this.#idle.size + this.#opening;
  }

  /**
   * The connector the pool opens connections with (undici's `connect` option): an idle socket to
   * the same origin when one is open, else a new connection.
   */
  readonly connect: buildConnector.connector = (opts, callback) => {
    const sameOrigin = opts.protocol === this.#origin.protocol && opts.hostname === this.#hostname && String(opts.port || '') === this.#origin.port;
    const socket = sameOrigin ? this.#takeOpen() : undefined;
    if (!socket) return this.#base(opts, callback);
    this.taken++;
    queueMicrotask(() => callback(null, socket));
  };

  /**
   * Open `count` more connections to the origin. Resolves with how many opened; never rejects (a
   * connection that fails to open is one the pool would have failed on as well, and will report).
   */
  async open(count: number): Promise<number> {
    if (this.#closed || count <= 0) return 0;
    const { protocol, host, port } = this.#origin;
    const hostname = this.#hostname;
    const one = (): Promise<number> => new Promise<number>((resolve) => {
      this.#opening++;
      this.#base({ protocol, hostname, host, port }, (err, socket) => {
        this.#opening--;
        if (err || !socket) return resolve(0);
        if (this.#closed) {
          socket.destroy();
          return resolve(0);
        }
        this.#keep(socket);
        resolve(1);
      });
    });
    const opened = await Promise.all(Array.from({ length: count }, one));
    return opened.reduce((a, b) => a + b, 0);
  }

  /** Close every connection not taken; later `open`s open nothing. */
  close(): void {
    this.#closed = true;
    for (const [socket, unwatch] of this.#idle) {
      unwatch();
      socket.destroy();
    }
    this.#idle.clear();
  }

  /** Keep an open socket until a request takes it, the server closes it or it has idled too long. */
  #keep(socket: Socket): void {
    const drop = (): void => {
      unwatch();
      this.#idle.delete(socket);
      socket.destroy();
    };
    const unwatch = (): void => {
      clearTimeout(timer);
      socket.off('data', drop).off('error', drop).off('end', drop).off('close', drop);
      socket.pause();
    };
    const timer = setTimeout(drop, WARM_SOCKET_IDLE_MS);
    timer.unref();
    // an idle connection must not keep the process alive, nor its errors go unheard; it is read,
    // so that a server closing it is seen at once (and one sending before it is asked is dropped)
    socket.unref();
    socket.on('data', drop).on('error', drop).on('end', drop).on('close', drop);
    this.#idle.set(socket, unwatch);
  }

  #takeOpen(): Socket | undefined {
    for (const [socket, unwatch] of this.#idle) {
      // the pool's from here on: its to time out, keep alive and close
      this.#idle.delete(socket);
      unwatch();
      if (socket.destroyed || socket.readableEnded || !socket.writable) {
        socket.destroy();
        continue;
      }
      socket.ref();
      return socket;
    }
    return undefined;
  }
}
