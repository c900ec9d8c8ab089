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

/**
 * How long an opened connection that no request took is kept before it is closed (ms): well under
 * the idle limits servers and load balancers commonly put on a connection that has sent no request
 * (HAProxy's `timeout http-request` is often 10 s), so that none is handed over as it is closed.
 */
export const WARM_SOCKET_IDLE_MS = 5_000;

/** Run `fn` once the event loop has polled for I/O at least once more. */
function after2Turns(fn: () => void): void {
  setImmediate(() => setImmediate(fn));
}

export class WarmSockets {
  /** open sockets no request has taken, each with what stops watching it (insertion order: oldest first) */
  readonly #idle = new Map<Socket, () => void>();
  /** connections being opened (destroyed by `close`) */
  readonly #opening = new Set<Socket>();
  readonly #base: buildConnector.connector;
  readonly #origin: URL;
  /** the origin's host name as connections are made to it (an IPv6 address without its brackets) */
  readonly #hostname: string;
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

  /** Connections opened and not yet taken, or still opening. */
  get idle(): number {
    return this.#idle.size + this.#opening.size;
  }

  /**
   * The connector the pool opens connections with (undici's `connect` option): an idle socket to
   * the same origin when one is open, else a new connection. The youngest idle socket goes first,
   * and only after the event loop has polled once more while it is still watched: what the server sent
   * meanwhile (an early answer such as 408, a FIN, a reset) is read, and drops it, as undici checks
   * its own idle sockets before it reuses one.
   */
  readonly connect: buildConnector.connector = (opts, callback) => {
    const sameOrigin = opts.protocol === this.#origin.protocol && opts.hostname === this.#hostname && String(opts.port || '') === this.#origin.port;
    if (!sameOrigin) return this.#base(opts, callback);
    const attempt = (): void => {
      const youngest = [...this.#idle].at(-1);
      if (!youngest) return this.#base(opts, callback);
      const [socket, unwatch] = youngest;
      this.#idle.delete(socket);
      // two turns: called from an I/O callback, one setImmediate runs before the loop polls again
      after2Turns(() => {
        unwatch();
        if (socket.destroyed || socket.readableEnded || !socket.writable || socket.readableLength > 0) {
          socket.destroy();
          return attempt();
        }
        // the pool's from here on: its to time out, keep alive and close
        socket.ref();
        this.taken++;
        callback(null, socket);
      });
    };
    attempt();
  };

  /**
   * Open `count` more connections to the origin. Resolves with how many opened; never rejects (a
   * connection that fails to open is one the pool would have failed on as well, and will report).
   */
  async open(count: number): Promise<number> {
    if (this.#closed || !(count > 0)) return 0;
    const { protocol, host, port } = this.#origin;
    const hostname = this.#hostname;
    const one = (): Promise<number> => new Promise<number>((resolve) => {
      // undici's connector returns the socket it opens (its type says nothing)
      const opening = this.#base({ protocol, hostname, host, port }, (err, socket) => {
        if (opening) this.#opening.delete(opening);
        if (err || !socket) return resolve(0);
        if (this.#closed) {
          socket.destroy();
          return resolve(0);
        }
        this.#keep(socket);
        resolve(1);
      }) as unknown as Socket | undefined;
      if (opening && !opening.destroyed) this.#opening.add(opening);
    });
    const opened = await Promise.all(Array.from({ length: Math.min(count, 1024) }, one));
    return opened.reduce((a, b) => a + b, 0);
  }

  /** Close every connection not taken, and those still opening; later `open`s open nothing. */
  close(): void {
    this.#closed = true;
    for (const [socket, unwatch] of this.#idle) {
      unwatch();
      socket.destroy();
    }
    this.#idle.clear();
    for (const socket of this.#opening) socket.destroy();
    this.#opening.clear();
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
}
