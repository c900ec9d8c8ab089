/**
 * A gate in front of a real registry: every ranged blob GET (a chunk fetch) is held (received,
 * not forwarded) until the test opens the gate, except those a predicate lets through. Everything
 * else (pings, manifests, whole blobs such as a disk's config and index, uploads) passes at once. Each blob GET is recorded when it arrives, with its Range, so a test can
 * tell which requests a client has on the wire at a given moment, without timing anything.
 */
import { createServer, request, Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { listenOnLoopback } from './listen.js';

export interface GatedRequest {
  path: string;
  /** the Range header as sent, e.g. `bytes=0-1023` */
  range: string | undefined;
  /** whether it was held at the gate when it arrived */
  held: boolean;
}

export interface GateProxy {
  host: string;
  /** ranged blob GETs in arrival order */
  requests: GatedRequest[];
  /** Resolves when a blob GET matching `match` has arrived (at once if one already has). */
  arrived(match: (r: GatedRequest) => boolean): Promise<GatedRequest>;
  /** Forward every held request and hold no more. */
  open(): void;
  stop(): Promise<void>;
}

/** `passes` decides which blob GETs go through while the gate is closed (default: none). */
export async function startGateProxy(target: string, passes: (r: GatedRequest) => boolean = () => false): Promise<GateProxy> {
  const [host, port] = target.split(':');
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const held: (() => void)[] = [];
  const requests: GatedRequest[] = [];
  const watchers: { match: (r: GatedRequest) => boolean; resolve: (r: GatedRequest) => void }[] = [];
  let open = false;
  const forward = (req: IncomingMessage, res: ServerResponse): void => {
    const up = request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers, agent }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  };
  const server: Server = createServer((req, res) => {
    const isBlobGet = req.method === 'GET' && req.headers.range !== undefined && /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/.test(req.url ?? '');
    if (!isBlobGet) return forward(req, res);
    const r: GatedRequest = { path: req.url ?? '', range: req.headers.range, held: false };
    r.held = !open && !passes(r);
    requests.push(r);
    for (const w of [...watchers]) {
      if (w.match(r)) {
        watchers.splice(watchers.indexOf(w), 1);
        w.resolve(r);
      }
    }
    if (r.held) held.push(() => forward(req, res));
    else forward(req, res);
  });
  const listenPort = await listenOnLoopback(server);
  return {
    host: `127.0.0.1:${listenPort}`,
    requests,
    arrived(match) {
      const seen = requests.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => watchers.push({ match, resolve }));
    },
    open() {
      open = true;
      for (const go of held.splice(0)) go();
    },
    async stop() {
      open = true;
      for (const go of held.splice(0)) go();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}
