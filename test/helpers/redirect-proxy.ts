/**
 * A registry front that behaves like a registry whose storage is S3 or GCS: GET and HEAD of blobs
 * (and, with `manifests`, of manifests) are answered `307 Temporary Redirect` to a "storage"
 * server on another origin, with a URL "signed" for GET. The storage server, like S3 with a
 * presigned GET URL, refuses a HEAD (403 SignatureDoesNotMatch) and a request that also carries an
 * Authorization header (400), and serves GET (Range too) with the real registry's bytes and a
 * generic content type, without Docker-Content-Digest. Everything else is forwarded unchanged.
 */
import { createServer, request, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import { forward } from './forward.js';
import { listenOnLoopback } from './listen.js';

export interface StorageRequest {
  method: string;
  path: string;
  status: number;
  authorization: boolean;
}

export interface RedirectProxy {
  host: string;
  /** requests the storage server saw */
  storage: StorageRequest[];
  /** requests the front redirected */
  redirected: { method: string; path: string }[];
  stop(): Promise<void>;
}

const BLOB = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/;
const MANIFEST = /^\/v2\/.+\/manifests\/[^/]+$/;

export async function startRedirectProxy(opts: { target: string; manifests?: boolean }): Promise<RedirectProxy> {
  const [targetHost, targetPort] = opts.target.split(':') as [string, string];
  const storage: StorageRequest[] = [];
  const redirected: { method: string; path: string }[] = [];
  let storageOrigin = '';

  const toTarget = (req: IncomingMessage, res: ServerResponse, path: string, headers: OutgoingHttpHeaders, rewrite?: (h: OutgoingHttpHeaders) => OutgoingHttpHeaders): void =>
    forward(opts.target, req, res, { path, headers, ...(rewrite ? { rewrite } : {}) });

  const storageServer: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://storage.invalid');
    const record: StorageRequest = { method: req.method ?? '', path: url.searchParams.get('path') ?? '', status: 0, authorization: req.headers.authorization !== undefined };
    storage.push(record);
    const refuse = (status: number, code: string): void => {
      record.status = status;
      req.resume();
      const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code></Error>`;
      res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (url.searchParams.get('X-Amz-Signed-For') !== req.method) return refuse(403, 'SignatureDoesNotMatch');
    if (record.authorization) return refuse(400, 'InvalidArgument');
    const headers: OutgoingHttpHeaders = { host: opts.target };
    if (req.headers.range) headers.range = req.headers.range;
    const accept = url.searchParams.get('accept');
    if (accept) headers.accept = accept;
    toTarget(req, res, record.path, headers, (h) => {
      record.status = res.statusCode;
      const out: OutgoingHttpHeaders = { 'content-type': 'application/octet-stream' };
      for (const k of ['content-length', 'content-range', 'accept-ranges']) if (h[k] !== undefined) out[k] = h[k];
      return out;
    });
  });

  const front: Server = createServer((req, res) => {
    const path = req.url ?? '/';
    const method = req.method ?? 'GET';
    if ((method === 'GET' || method === 'HEAD') && (BLOB.test(path) || (opts.manifests && MANIFEST.test(path)))) {
      // like distribution's redirect middleware: only content the registry has is redirected
      const probe = request({ host: targetHost, port: Number(targetPort), method: 'HEAD', path, headers: req.headers }, (answer) => {
        answer.resume();
        if (answer.statusCode !== 200) {
          toTarget(req, res, path, req.headers);
          return;
        }
        redirected.push({ method, path });
        const signed = new URL('/bucket/object', storageOrigin);
        signed.searchParams.set('path', path);
        if (req.headers.accept) signed.searchParams.set('accept', req.headers.accept);
        signed.searchParams.set('X-Amz-Signed-For', 'GET'); // a presigned URL is signed for one method
        req.resume();
        res.writeHead(307, { location: signed.toString(), 'content-length': 0 });
        res.end();
      });
      probe.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      probe.end();
      return;
    }
    toTarget(req, res, path, req.headers);
  });

  const storagePort = await listenOnLoopback(storageServer);
  storageOrigin = `http://127.0.0.1:${storagePort}`;
  const port = await listenOnLoopback(front);
  return {
    host: `127.0.0.1:${port}`,
    storage,
    redirected,
    async stop() {
      for (const s of [front, storageServer]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    },
  };
}
