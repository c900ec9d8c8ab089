/**
 * A chaos proxy: an HTTP proxy in front of a real registry whose behaviour a test switches at run
 * time. Faults apply to GET and HEAD of blobs and manifests (`/v2/<name>/blobs/<digest>`,
 * `/v2/<name>/manifests/<reference>`); everything else (the `/v2/` ping, uploads) always passes
 * through unchanged. The Host header is forwarded as it came, so the registry's Locations point
 * back at the proxy.
 *
 * Faults, each switched on by a method and off again by `passThrough()`:
 * - `fail(count, status)`: answer `status` (503 by default) to the next `count` matching requests,
 *   or to all of them with `'all'`;
 * - `dropMidBody(count)`: forward, then send the headers (with the full Content-Length) and part of
 *   the body, and destroy the socket;
 * - `cutEvery(n)`: a cut body on every `n`-th matching GET (the 3rd, 6th, ...) for as long as it is
 *   on: a flaky link under a long read, not a burst. `framing` says how the client sees the cut:
 *   `'cut'` (default) is the cut above (full Content-Length, socket destroyed mid-body);
 *   `'close'` sends no Content-Length and `Connection: close`, then ends the socket after the part
 *   (a close-delimited body: HTTP cannot tell it was cut); `'short'` announces the part's length
 *   as Content-Length and completes the response normally (a response shorter than asked for);
 * - `ignoreRange()`: forward without the Range header, so the registry answers 200 with the whole
 *   blob (what Debian's docker-registry does in pull-through proxy mode);
 * - `corrupt()`: flip bytes of blob bodies (every `stride`-th byte, XOR 0xff), keeping their length;
 * - `delay(ms)`: hold every matching answer back for `ms`;
 * - `stall(count)`: accept the next `count` matching requests (or all) and never answer them (the
 *   connection stays open until `stop()` or `refuse()`): a registry that hangs;
 * - `refuse()` / `accept()`: stop listening (connections are refused: the registry is down) and
 *   listen again on the same port.
 *
 * Every request is recorded (method, path, Range header, status, the fault injected) so that tests
 * can count what reached the "registry".
 */
import { createServer, request as httpRequest, Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export type ChaosFault = 'status' | 'drop' | 'ignore-range' | 'corrupt' | 'stall';
/** How a cut body is framed: see `cutEvery`. */
export type CutFraming = 'cut' | 'close' | 'short';
/** Which requests a fault applies to. */
export type ChaosMatch = 'blobs' | 'manifests' | 'any';

export interface ChaosRequest {
  method: string;
  path: string;
  kind: 'blob' | 'manifest' | 'other';
  /** the Range header as the client sent it */
  range?: string;
  /** the status the client was sent (absent when the connection was dropped before headers) */
  status?: number;
  /** faults injected into this request */
  faults: ChaosFault[];
  at: number;
}

export interface ChaosProxy {
  host: string;
  port: number;
  requests: ChaosRequest[];
  /** TCP connections accepted since the proxy started */
  readonly connectionsAccepted: number;
  /** Resolves once `count` TCP connections have been accepted since the proxy started. */
  accepted(count: number): Promise<void>;
  /** Resolves once the connections of `count` stalled requests (see `stall`) have closed, by the client or by `refuse()`/`stop()`. */
  stallsClosed(count: number): Promise<void>;
  /** Turn every fault off (connections are accepted again only by `accept()`). */
  passThrough(): void;
  /** Answer the next `count` matching requests (or all) with `status` and a distribution error body. */
  fail(count: number | 'all', opts?: { status?: number; match?: ChaosMatch; retryAfter?: string }): void;
  /** Send the next `count` matching GETs' headers and `fraction` of their body, then destroy the socket. */
  dropMidBody(count: number | 'all', opts?: { match?: ChaosMatch; fraction?: number }): void;
  /** Cut every `n`-th matching GET to `fraction` of its body, framed as `framing` says (see above), until `passThrough()`. */
  cutEvery(n: number, opts?: { match?: ChaosMatch; fraction?: number; framing?: CutFraming }): void;
  /** Forward blob GETs without their Range header: the registry answers 200 with the whole blob. */
  ignoreRange(on?: boolean): void;
  /** Flip every `stride`-th byte (from the first) of blob GET bodies, keeping the length. */
  corrupt(on?: boolean, opts?: { stride?: number }): void;
  /** Hold matching answers back for `ms` (0 turns it off). */
  delay(ms: number, match?: ChaosMatch): void;
  /** Never answer the next `count` matching requests (or all): the connection just hangs. */
  stall(count: number | 'all', match?: ChaosMatch): void;
  /** Stop listening and cut every open connection: new connections are refused. */
  refuse(): Promise<void>;
  /** Listen again on the same port. */
  accept(): Promise<void>;
  /** Recorded requests, filtered. */
  count(filter?: { method?: string; kind?: ChaosRequest['kind']; fault?: ChaosFault; status?: number; ranged?: boolean }): number;
  /** Forget the recorded requests. */
  clearLog(): void;
  stop(): Promise<void>;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}(?:\?.*)?$/;
const MANIFEST_PATH = /^\/v2\/.+\/manifests\/[^/?]+(?:\?.*)?$/;

function kindOf(path: string): ChaosRequest['kind'] {
  if (BLOB_PATH.test(path)) return 'blob';
  if (MANIFEST_PATH.test(path)) return 'manifest';
  return 'other';
}

function matches(match: ChaosMatch, kind: ChaosRequest['kind']): boolean {
  if (kind === 'other') return false;
  return match === 'any' || (match === 'blobs' ? kind === 'blob' : kind === 'manifest');
}

/** A response head written straight to the socket (Node's ServerResponse always frames its body). */
function rawHead(status: number, message: string, headers: Record<string, string | string[] | undefined>): string {
  const lines = Object.entries(headers).flatMap(([k, v]) => (v === undefined ? [] : (Array.isArray(v) ? v : [v]).map((x) => `${k}: ${x}`)));
  return `HTTP/1.1 ${status} ${message}\r\n${lines.join('\r\n')}\r\n\r\n`;
}

interface Counted {
  left: number | 'all';
  match: ChaosMatch;
}

function take(c: Counted | undefined, kind: ChaosRequest['kind']): boolean {
  if (!c || !matches(c.match, kind)) return false;
  if (c.left === 'all') return true;
  if (c.left <= 0) return false;
  c.left--;
  return true;
}

/** A count that only grows, and promises that resolve once it has reached a number. */
class Tally {
  count = 0;
  readonly #waits: { count: number; resolve: () => void }[] = [];

  add(): void {
    this.count++;
    for (const w of this.#waits.filter((x) => x.count <= this.count)) {
      this.#waits.splice(this.#waits.indexOf(w), 1);
      w.resolve();
    }
  }

  reached(count: number): Promise<void> {
    if (this.count >= count) return Promise.resolve();
    return new Promise<void>((resolve) => this.#waits.push({ count, resolve }));
  }
}

export async function startChaosProxy(opts: { target: string }): Promise<ChaosProxy> {
  const [targetHost, targetPort] = opts.target.split(':') as [string, string];
  const agent = new Agent({ keepAlive: true, maxSockets: 32 });
  const requests: ChaosRequest[] = [];
  const sockets = new Set<Socket>();
  let failing: (Counted & { status: number; retryAfter?: string }) | undefined;
  let dropping: (Counted & { fraction: number }) | undefined;
  let cutting: { every: number; seen: number; match: ChaosMatch; fraction: number; framing: CutFraming } | undefined;
  let rangeIgnored = false;
  let corruption: { stride: number } | undefined;
  let delayed: { ms: number; match: ChaosMatch } | undefined;
  let stalling: Counted | undefined;
  let port = 0;

  const connectionsAccepted = new Tally();
  const stallsClosed = new Tally();

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = req.url ?? '/';
    const method = req.method ?? 'GET';
    const kind = method === 'GET' || method === 'HEAD' ? kindOf(path) : 'other';
    const rangeHeader = req.headers.range;
    const record: ChaosRequest = { method, path, kind, faults: [], at: Date.now(), ...(typeof rangeHeader === 'string' ? { range: rangeHeader } : {}) };
    requests.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
    });

    if (delayed && delayed.ms > 0 && matches(delayed.match, kind)) await new Promise((r) => setTimeout(r, delayed?.ms ?? 0));

    if (take(stalling, kind)) {
      record.faults.push('stall');
      req.socket.once('close', () => stallsClosed.add());
      req.resume();
      return; // no answer, ever: the socket stays open until the proxy refuses or stops
    }

    if (take(failing, kind)) {
      const f = failing as NonNullable<typeof failing>;
      record.faults.push('status');
      req.resume();
      const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `injected fault: ${f.status} from chaos proxy` }] });
      const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
      if (f.retryAfter !== undefined) headers['retry-after'] = f.retryAfter;
      res.writeHead(f.status, headers);
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }

    const headers = { ...req.headers };
    if (rangeIgnored && kind === 'blob' && method === 'GET' && headers.range !== undefined) {
      delete headers.range;
      delete headers['if-range'];
      record.faults.push('ignore-range');
    }
    const cutNow = method === 'GET' && cutting !== undefined && matches(cutting.match, kind) && ++cutting.seen % cutting.every === 0;
    const drop = cutNow || (method === 'GET' && take(dropping, kind));
    const fraction = (cutNow ? cutting?.fraction : dropping?.fraction) ?? 0.5;
    const framing: CutFraming = (cutNow ? cutting?.framing : undefined) ?? 'cut';
    const corruptBody = method === 'GET' && kind === 'blob' && corruption !== undefined;
    const mustBuffer = drop || corruptBody;

    const upstream = httpRequest({ host: targetHost, port: Number(targetPort), method, path, headers, agent }, (up) => {
      if (!mustBuffer) {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
        return;
      }
      const parts: Buffer[] = [];
      up.on('data', (d: Buffer) => parts.push(d));
      up.on('error', () => res.destroy());
      up.on('end', () => {
        const body = Buffer.concat(parts);
        const ok = (up.statusCode ?? 0) >= 200 && (up.statusCode ?? 0) < 300;
        if (corruptBody && ok && corruption) {
          for (let i = 0; i < body.byteLength; i += corruption.stride) body[i] = (body[i] as number) ^ 0xff;
          record.faults.push('corrupt');
        }
        const outHeaders = { ...up.headers, 'content-length': String(body.byteLength) };
        if (drop && ok && body.byteLength > 1) {
          const cut = Math.max(1, Math.min(body.byteLength - 1, Math.floor(body.byteLength * fraction)));
          record.faults.push('drop');
          record.status = up.statusCode;
          if (framing === 'short') {
            res.writeHead(up.statusCode ?? 502, { ...outHeaders, 'content-length': String(cut) });
            res.end(body.subarray(0, cut));
            return;
          }
          if (framing === 'close') {
            const { 'content-length': _length, ...rest } = outHeaders;
            // a close-delimited body: its end is the end of the connection
            req.socket.write(rawHead(up.statusCode ?? 502, up.statusMessage ?? '', { ...rest, connection: 'close' }));
            req.socket.end(body.subarray(0, cut));
            return;
          }
          res.writeHead(up.statusCode ?? 502, outHeaders);
          res.write(body.subarray(0, cut), () => {
            // give the bytes a moment to leave, then cut the connection mid-body
            setTimeout(() => req.socket.destroy(), 5);
          });
          return;
        }
        res.writeHead(up.statusCode ?? 502, outHeaders);
        res.end(body); // only GETs are buffered
      });
    });
    upstream.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('chaos proxy: upstream error');
      } else {
        res.destroy();
      }
    });
    req.pipe(upstream);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (s: Socket) => {
    connectionsAccepted.add();
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  const listen = (p: number): Promise<void> => new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  await listen(0);
  const addr = server.address();
  port = typeof addr === 'object' && addr ? addr.port : 0;

  const closeServer = async (): Promise<void> => {
    if (!server.listening) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sockets) s.destroy();
    server.closeAllConnections();
    await closed;
  };

  return {
    host: `127.0.0.1:${port}`,
    port,
    requests,
    get connectionsAccepted() {
      return connectionsAccepted.count;
    },
    accepted: (count) => connectionsAccepted.reached(count),
    stallsClosed: (count) => stallsClosed.reached(count),
    passThrough() {
      failing = undefined;
      dropping = undefined;
      cutting = undefined;
      rangeIgnored = false;
      corruption = undefined;
      delayed = undefined;
      stalling = undefined;
    },
    fail(count, o = {}) {
      failing = { left: count, match: o.match ?? 'any', status: o.status ?? 503, ...(o.retryAfter !== undefined ? { retryAfter: o.retryAfter } : {}) };
    },
    dropMidBody(count, o = {}) {
      dropping = { left: count, match: o.match ?? 'blobs', fraction: o.fraction ?? 0.5 };
    },
    cutEvery(n, o = {}) {
      if (!Number.isSafeInteger(n) || n < 1) throw new Error(`cutEvery: n must be a positive integer, got ${n}`);
      cutting = { every: n, seen: 0, match: o.match ?? 'blobs', fraction: o.fraction ?? 0.5, framing: o.framing ?? 'cut' };
    },
    ignoreRange(on = true) {
      rangeIgnored = on;
    },
    corrupt(on = true, o = {}) {
      corruption = on ? { stride: o.stride ?? 512 } : undefined;
    },
    delay(ms, match = 'blobs') {
      delayed = ms > 0 ? { ms, match } : undefined;
    },
    stall(count, match = 'blobs') {
      stalling = { left: count, match };
    },
    refuse: closeServer,
    async accept() {
      if (!server.listening) await listen(port);
    },
    count(filter = {}) {
      return requests.filter((r) => (filter.method === undefined || r.method === filter.method)
        && (filter.kind === undefined || r.kind === filter.kind)
        && (filter.fault === undefined || r.faults.includes(filter.fault))
        && (filter.status === undefined || r.status === filter.status)
        && (filter.ranged === undefined || (r.range !== undefined) === filter.ranged)).length;
    },
    clearLog() {
      requests.length = 0;
    },
    async stop() {
      await closeServer();
      agent.destroy();
    },
  };
}
