/** Passing a request on, for the test proxies: to `host:port`, the answer streamed back as it comes. */
import { request, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';

export interface ForwardOptions {
  /** the path to ask for (default: the request's) */
  path?: string;
  /** the headers to send (default: the request's) */
  headers?: OutgoingHttpHeaders;
  /** rewrite the answer's headers before they go back */
  rewrite?: (headers: OutgoingHttpHeaders) => OutgoingHttpHeaders;
  /** told the upstream status when it answers */
  onStatus?: (status: number | undefined) => void;
}

/** Forward `req` to `target` (host:port) and stream the answer into `res`; an unreachable upstream is a 502. */
export function forward(target: string, req: IncomingMessage, res: ServerResponse, opts: ForwardOptions = {}): void {
  const [host, port] = target.split(':') as [string, string];
  const up = request({ host, port: Number(port), method: req.method, path: opts.path ?? req.url, headers: opts.headers ?? req.headers }, (answer) => {
    opts.onStatus?.(answer.statusCode);
    const headers: OutgoingHttpHeaders = { ...answer.headers };
    res.writeHead(answer.statusCode ?? 502, opts.rewrite ? opts.rewrite(headers) : headers);
    answer.pipe(res);
  });
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(up);
}
