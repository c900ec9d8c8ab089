/**
 * A rate-limiting front for a real registry, as Docker Hub, GHCR or ECR throttle: the first
 * request of each kind (blob HEAD, blob GET, upload POST, upload PUT, upload PATCH, manifest HEAD,
 * GET and PUT, tag list) opens a window during which every request of that kind is answered
 * `429 Too Many Requests` with a `Retry-After` naming the window's end, either as delay-seconds or
 * as an HTTP-date (RFC 9110 10.2.3). Requests after the window are forwarded. Records, per kind,
 * when the window ended and when requests were forwarded, so a test can check nothing came early.
 */
import { createServer, type Server } from 'node:http';
import { forward } from './forward.js';
import { listenOnLoopback } from './listen.js';

export type RequestKind = 'blob-head' | 'blob-get' | 'upload-post' | 'upload-put' | 'upload-patch' | 'manifest-head' | 'manifest-get' | 'manifest-put' | 'tags' | 'other';

export function kindOf(method: string, path: string): RequestKind {
  const p = path.split('?')[0] ?? '';
  if (/\/tags\/list$/.test(p)) return 'tags';
  if (/\/blobs\/uploads\/$/.test(p) && method === 'POST') return 'upload-post';
  if (/\/blobs\/uploads\/[^/]+$/.test(p)) return method === 'PUT' ? 'upload-put' : method === 'PATCH' ? 'upload-patch' : 'other';
  if (/\/blobs\/[^/]+$/.test(p)) return method === 'HEAD' ? 'blob-head' : method === 'GET' ? 'blob-get' : 'other';
  if (/\/manifests\/[^/]+$/.test(p)) return method === 'HEAD' ? 'manifest-head' : method === 'GET' ? 'manifest-get' : method === 'PUT' ? 'manifest-put' : 'other';
  return 'other';
}

export interface ThrottleProxy {
  host: string;
  /** per kind: the end of its 429 window (ms since the epoch), the 429s sent, the forwarded requests' times */
  windows: Map<RequestKind, { until: number; throttled: number; forwardedAt: number[] }>;
  stop(): Promise<void>;
}

/**
 * `form(kind)` picks how Retry-After is written for a kind: `seconds` ("2") or `date` (an
 * HTTP-date `windowS(kind)` seconds on, rounded up to a whole second as HTTP-dates are).
 */
export async function startThrottleProxy(opts: { target: string; windowS: (kind: RequestKind) => number; form: (kind: RequestKind) => 'seconds' | 'date' }): Promise<ThrottleProxy> {
  const windows = new Map<RequestKind, { until: number; throttled: number; forwardedAt: number[] }>();
  const server: Server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const kind = kindOf(method, path);
    const now = Date.now();
    let w = windows.get(kind);
    if (!w && kind !== 'other') {
      const until = opts.form(kind) === 'date' ? Math.ceil((now + opts.windowS(kind) * 1000) / 1000) * 1000 : now + opts.windowS(kind) * 1000;
      w = { until, throttled: 0, forwardedAt: [] };
      windows.set(kind, w);
    }
    if (w && now < w.until) {
      w.throttled++;
      const retryAfter = opts.form(kind) === 'date' ? new Date(w.until).toUTCString() : String(Math.ceil((w.until - now) / 1000));
      req.resume();
      const body = JSON.stringify({ errors: [{ code: 'TOOMANYREQUESTS', message: 'injected: rate limited by test proxy' }] });
      res.writeHead(429, { 'retry-after': retryAfter, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }
    w?.forwardedAt.push(now);
    forward(opts.target, req, res);
  });
  const port = await listenOnLoopback(server);
  return {
    host: `127.0.0.1:${port}`,
    windows,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
