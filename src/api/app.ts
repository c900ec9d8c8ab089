/**
 * The HTTP API (hono): validation, errors and streaming here; what the requests do lives in
 * VmManager (vms.ts) and the chunk cache. Every body is parsed by a strict zod schema; every
 * error is `{"error": {"code", "message", "field"?}}` with a stable code (docs/errors.md).
 */
import { Hono, type Context } from 'hono';
import { bearerAuth } from 'hono/bearer-auth';
import { bodyLimit } from 'hono/body-limit';
import type { ChunkCache } from '../cache/chunk-cache.js';
import { SlipwayError, httpStatusOf, isSlipwayError, type ErrorCode } from '../errors.js';
import type { Logger } from '../util/log.js';
import { logProgress } from '../util/progress.js';
import { PROMETHEUS_CONTENT_TYPE, type Registry } from './metrics.js';
import { openApiDocument } from './openapi.js';
import { CreateVmBody, ExecBody, MAX_BODY_BYTES, MAX_EXEC_BODY_BYTES, PrefetchBody, SnapshotBody, VmId, describeIssue, type z } from './schemas.js';
import type { VmManager } from './vms.js';
import { checkRequestRef } from './vm-records.js';

export function errorBody(code: ErrorCode, message: string, field?: string): { error: { code: ErrorCode; message: string; field?: string } } {
  return { error: { code, message, ...(field !== undefined ? { field } : {}) } };
}

function fail(c: Context, err: unknown): Response {
  if (isSlipwayError(err)) {
    const field = typeof err.context.field === 'string' ? err.context.field : undefined;
    return c.json(errorBody(err.code, err.message, field), httpStatusOf(err.code) as 400);
  }
  return c.json(errorBody('IO_ERROR', (err as Error)?.message ?? String(err)), 500);
}

/** Parse a JSON body with a schema; a problem is a 400 naming the field. */
async function parseBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw new SlipwayError('INVALID_ARGUMENT', 'the body is not JSON (send Content-Type: application/json and a JSON object)');
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const { field, message } = describeIssue(parsed.error);
    throw new SlipwayError('INVALID_ARGUMENT', message, { context: { field } });
  }
  return parsed.data;
}

function vmId(c: Context): string {
  const id = c.req.param('id') ?? '';
  if (!VmId.safeParse(id).success) throw new SlipwayError('INVALID_ARGUMENT', `id: ${JSON.stringify(id.slice(0, 64))} is not a VM id (12 hex digits)`, { context: { field: 'id' } });
  return id;
}

/** Exec output queued for a client that does not read it, before the command is killed. */
export const MAX_QUEUED_OUTPUT_BYTES = 16 << 20;

const limit = (maxSize: number) =>
  bodyLimit({ maxSize, onError: (c) => c.json(errorBody('LIMIT_EXCEEDED', `the body is over ${maxSize} bytes`), 413) });

/** One NDJSON line of exec output: text when it is UTF-8, base64 otherwise. */
function outputLine(stream: 'stdout' | 'stderr', data: Buffer): string {
  const text = data.toString('utf8');
  const exact = Buffer.from(text, 'utf8').equals(data);
  return `${JSON.stringify(exact ? { stream, text } : { stream, base64: data.toString('base64') })}\n`;
}

/** RFC 6750's b64token: what a bearer token may be made of (and what hono's bearer-auth accepts). */
const BEARER_TOKEN = /^[A-Za-z0-9._~+/-]+=*$/;

/**
 * `app` behind the daemon's TCP bearer token (hono's bearer-auth: constant-time comparison). A
 * request without it, with another scheme or with a wrong token is answered 401 with the API's
 * error body (UNAUTHORIZED) and a `WWW-Authenticate: Bearer realm="slipway"` challenge.
 */
export function requireBearerToken(app: Hono, token: string): Hono {
  if (!BEARER_TOKEN.test(token)) throw new SlipwayError('INVALID_ARGUMENT', 'the bearer token may hold only letters, digits and -._~+/ (and = at its end)');
  const refusal = { message: (c: Context) => c.json(errorBody('UNAUTHORIZED', 'this endpoint needs Authorization: Bearer <token>'), 401), wwwAuthenticateHeader: 'Bearer realm="slipway"' };
  const guarded = new Hono();
  guarded.use('*', bearerAuth({ token, realm: 'slipway', noAuthenticationHeader: refusal, invalidAuthenticationHeader: refusal, invalidToken: refusal }));
  guarded.all('*', (c) => app.fetch(c.req.raw));
  return guarded;
}

export interface AppDeps {
  vms: VmManager;
  cache: ChunkCache;
  metrics: Registry;
  logger: Logger;
  version: string;
}

export function buildApp(deps: AppDeps): Hono {
  const { vms, cache } = deps;
  const app = new Hono();

  app.use('*', async (c, next) => {
    const t0 = performance.now();
    await next();
    deps.logger.info('request', { method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - t0) });
  });
  app.onError((err, c) => fail(c, err));
  app.notFound((c) => c.json(errorBody('UNSUPPORTED', `no route ${c.req.method} ${c.req.path}`), 404));

  app.get('/openapi.json', (c) => c.json(openApiDocument(deps.version)));
  app.get('/metrics', (c) => c.body(deps.metrics.render(), 200, { 'content-type': PROMETHEUS_CONTENT_TYPE }));
  app.get('/v1/health', (c) => c.json({ ok: true, version: deps.version, vms: vms.counts }));

  app.post('/v1/vms', limit(MAX_BODY_BYTES), async (c) => {
    const body = await parseBody(c, CreateVmBody);
    const info = await vms.create(body, c.req.raw.signal);
    return c.json(info, 201);
  });
  app.get('/v1/vms', (c) => c.json({ vms: vms.list() }));
  app.get('/v1/vms/:id', (c) => c.json(vms.get(vmId(c))));
  app.delete('/v1/vms/:id', async (c) => {
    await vms.delete(vmId(c));
    return c.body(null, 204);
  });

  app.post('/v1/vms/:id/exec', limit(MAX_EXEC_BODY_BYTES), async (c) => {
    const id = vmId(c);
    const body = await parseBody(c, ExecBody);
    vms.get(id); // 404 before the stream starts
    const abort = new AbortController();
    const signal = c.req.raw.signal;
    const encoder = new TextEncoder();
    let closed = false;
    const stream = new ReadableStream<Uint8Array>({
      start(ctrl) {
        const write = (line: string): void => {
          if (closed) return;
          try {
            ctrl.enqueue(encoder.encode(line));
          } catch {
            closed = true;
            abort.abort();
            return;
          }
          // a reader that does not keep up (or stopped reading) must not make the daemon hold a
          // guest's output without bound: past the cap the command is killed, with an error line
          if ((ctrl.desiredSize ?? 0) < -MAX_QUEUED_OUTPUT_BYTES) {
            abort.abort();
            const e = errorBody('LIMIT_EXCEEDED', `more than ${MAX_QUEUED_OUTPUT_BYTES} bytes of output waited for the client to read them; the command was killed`);
            try {
              ctrl.enqueue(encoder.encode(`${JSON.stringify(e)}\n`));
              ctrl.close();
            } catch {
              // the client is gone
            }
            closed = true;
          }
        };
        const end = (): void => {
          if (closed) return;
          closed = true;
          try {
            ctrl.close();
          } catch {
            // cancelled meanwhile
          }
        };
        signal?.addEventListener('abort', () => abort.abort(), { once: true });
        vms.exec(id, body, { stdout: (d) => write(outputLine('stdout', d)), stderr: (d) => write(outputLine('stderr', d)) }, abort.signal).then(
          (r) => {
            write(`${JSON.stringify({ exit: r })}\n`);
            end();
          },
          (err: unknown) => {
            const e = isSlipwayError(err) ? err : new SlipwayError('IO_ERROR', (err as Error)?.message ?? String(err));
            write(`${JSON.stringify(errorBody(e.code, e.message))}\n`);
            end();
          },
        ).catch((err: unknown) => deps.logger.warn('exec stream', { vm: id, error: (err as Error)?.message }));
      },
      cancel() {
        closed = true;
        abort.abort();
      },
    }, new ByteLengthQueuingStrategy({ highWaterMark: 1 << 20 }));
    return c.body(stream, 200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  });

  app.post('/v1/vms/:id/snapshot', limit(MAX_BODY_BYTES), async (c) => {
    const id = vmId(c);
    const body = await parseBody(c, SnapshotBody);
    return c.json(await vms.snapshot(id, body.ref, { memory: body.memory === true }), 201);
  });

  app.post('/v1/images/prefetch', limit(MAX_BODY_BYTES), async (c) => {
    const body = await parseBody(c, PrefetchBody);
    const ref = checkRequestRef(body.image, 'image');
    const t0 = performance.now();
    const disk = await cache.openDisk(ref, { useProfile: false });
    try {
      const r = await disk.prefetch({ priority: 'background', onProgress: logProgress((m, f) => deps.logger.info(m, f), { image: ref }) });
      return c.json({ image: ref, digest: disk.digest, chunks: r.chunks, fetchedChunks: r.fetchedChunks, ms: Math.round(performance.now() - t0) });
    } finally {
      await disk.close();
    }
  });

  app.get('/v1/cache', (c) => c.json(cache.stats()));

  return app;
}
