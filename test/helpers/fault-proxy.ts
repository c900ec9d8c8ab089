/**
 * A fault-injecting HTTP proxy in front of a real registry. Everything is forwarded unchanged
 * (the Host header too, so the registry's upload Locations point back at the proxy), except
 * blob-upload PUTs (`PUT /v2/<name>/blobs/uploads/<id>?digest=...`, the request that commits a
 * blob) after the first `passBlobPuts`: those are answered 500 or have their connection dropped.
 * With `only: 'one-blob'` just the first blob to be faulted keeps failing (every retry of it) and
 * the uploads of all other blobs go through, so a client that went on regardless would get as far
 * as pushing its manifest.
 */
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { forward } from './forward.js';
import { listenOnLoopback } from './listen.js';

/** '500': answered 500; 'drop': connection cut before the registry sees it; 'lose-answer': the registry commits it, then the connection is cut before its answer */
export type FaultMode = '500' | 'drop' | 'lose-answer';

export interface FaultProxyOptions {
  /** host:port of the registry to forward to */
  target: string;
  mode: FaultMode;
  /** blob-upload PUTs let through before the faults start */
  passBlobPuts: number;
  /** fault every blob-upload PUT after the first `passBlobPuts` (default), or only those of one blob */
  only?: 'all' | 'one-blob';
  /** answer 500 to every manifest PUT as well (blob uploads are then faulted as the rest says) */
  failManifestPuts?: boolean;
  /** fault at most this many blob-upload PUTs in all (default: no limit) */
  maxFaults?: number;
  /**
   * Refuse cross-repository mounts (`POST .../blobs/uploads/?mount=&from=`): answer 401 or 403, or
   * ('202') forward them without mount and from, so the registry opens an ordinary upload session.
   */
  refuseMounts?: '401' | '403' | '202';
}

export interface ProxiedRequest {
  method: string;
  path: string;
  /** 'forwarded' or the fault injected */
  outcome: 'forwarded' | FaultMode | 'mount-refused';
  status?: number;
  /** the blob a blob-upload PUT commits (its ?digest=) */
  digest?: string;
}

export interface FaultProxy {
  host: string;
  port: number;
  requests: ProxiedRequest[];
  /** the digest of the first blob whose upload was faulted */
  doomedDigest(): string | undefined;
  /** manifest PUTs that were answered with a fault */
  faultedManifestPuts(): number;
  /** blob-upload PUTs that were answered with a fault */
  faultedBlobPuts(): number;
  /** blob-upload PUTs that reached the registry */
  passedBlobPuts(): number;
  stop(): Promise<void>;
}

const BLOB_UPLOAD_PUT = /^\/v2\/.+\/blobs\/uploads\/[^/?]+/;
const MANIFEST_PUT = /^\/v2\/.+\/manifests\/[^/]+$/;

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const [targetHost, targetPort] = opts.target.split(':') as [string, string];
  const requests: ProxiedRequest[] = [];
  let blobPuts = 0;
  let doomedDigest: string | undefined;
  let faults = 0;

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    let path = req.url ?? '/';
    const method = req.method ?? 'GET';
    if (opts.refuseMounts && method === 'POST' && /\/blobs\/uploads\/\?.*mount=/.test(path)) {
      if (opts.refuseMounts === '202') {
        requests.push({ method, path, outcome: 'mount-refused', status: 202 });
        path = path.slice(0, path.indexOf('?'));
      } else {
        const status = Number(opts.refuseMounts);
        requests.push({ method, path, outcome: 'mount-refused', status });
        req.resume();
        const body = JSON.stringify({ errors: [{ code: status === 401 ? 'UNAUTHORIZED' : 'DENIED', message: 'injected fault: cross-repository mount refused by test proxy' }] });
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
        return;
      }
    }
    if (opts.failManifestPuts && method === 'PUT' && MANIFEST_PUT.test(path)) {
      requests.push({ method, path, outcome: '500', status: 500 });
      req.resume();
      const body = JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'injected fault: manifest PUT refused by test proxy' }] });
      res.writeHead(500, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
      res.end(body);
      return;
    }
    const isBlobPut = method === 'PUT' && BLOB_UPLOAD_PUT.test(path);
    const digest = isBlobPut ? (new URL(path, 'http://proxy.invalid').searchParams.get('digest') ?? '') : undefined;
    if (isBlobPut && digest !== undefined) {
      blobPuts++;
      if (blobPuts > opts.passBlobPuts && doomedDigest === undefined) doomedDigest = digest;
      const fault = (opts.only === 'one-blob' ? digest === doomedDigest : blobPuts > opts.passBlobPuts) && faults < (opts.maxFaults ?? Number.POSITIVE_INFINITY);
      if (fault && opts.mode === 'lose-answer') {
        faults++;
        const record: ProxiedRequest = { method, path, digest, outcome: 'lose-answer' };
        requests.push(record);
        const upstream = request({ host: targetHost, port: Number(targetPort), method, path, headers: req.headers }, (up) => {
          record.status = up.statusCode;
          up.resume();
          up.on('end', () => req.socket.destroy());
        });
        upstream.on('error', () => req.socket.destroy());
        req.pipe(upstream);
        return;
      }
      if (fault) {
        faults++;
        requests.push({ method, path, digest, outcome: opts.mode, ...(opts.mode === '500' ? { status: 500 } : {}) });
        if (opts.mode === 'drop') {
          req.socket.destroy();
          return;
        }
        req.resume();
        const body = JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'injected fault: blob upload refused by test proxy' }] });
        res.writeHead(500, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
        res.end(body);
        return;
      }
    }
    const record: ProxiedRequest = { method, path, outcome: 'forwarded', ...(digest !== undefined ? { digest } : {}) };
    requests.push(record);
    forward(opts.target, req, res, { path, onStatus: (status) => (record.status = status) });
  };

  const server: Server = createServer(handle);
  const port = await listenOnLoopback(server);
  return {
    host: `127.0.0.1:${port}`,
    port,
    requests,
    doomedDigest: () => doomedDigest,
    faultedBlobPuts: () => requests.filter((r) => r.outcome !== 'forwarded' && r.method === 'PUT' && r.digest !== undefined).length,
    faultedManifestPuts: () => requests.filter((r) => r.outcome !== 'forwarded' && r.method === 'PUT' && MANIFEST_PUT.test(r.path)).length,
    passedBlobPuts: () => requests.filter((r) => r.outcome === 'forwarded' && r.digest !== undefined && r.status === 201).length,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
