/**
 * The typed client of the slipway daemon's API (docs/api.md): over its Unix socket, or over TCP
 * with a bearer token. Errors come back as SlipwayError with the daemon's stable code, so a
 * scheduler can tell "no such VM" from "over the limit" from "the registry is down".
 */
import { StringDecoder } from 'node:string_decoder';
import { Agent, request, type Dispatcher } from 'undici';
import { SlipwayError, isErrorCode } from '../errors.js';
import type { CreateVmRequest, ExecRequest, MemorySnapshotResult, SnapshotResult, VmInfo } from '../api/schemas.js';

/** The API's types (defined with the daemon's request schemas, so the two cannot drift). */
export type { CreateVmRequest as CreateVm, ExecRequest as Exec, MemorySnapshotResult as MemorySnapshot, SnapshotResult as Snapshot, VmInfo as Vm };
type CreateVm = CreateVmRequest;
type Exec = ExecRequest;
type Snapshot = SnapshotResult;
type MemorySnapshot = MemorySnapshotResult;
type Vm = VmInfo;

export interface ExecOutcome {
  exitCode: number;
  signal: number;
  timedOut: boolean;
  stdout: Buffer;
  stderr: Buffer;
}

export type ClientOptions = { socketPath: string } | { url: string; token: string };

export class SlipwayClient {
  private readonly dispatcher: Dispatcher;
  private readonly origin: string;
  private readonly headers: Record<string, string>;

  constructor(opts: ClientOptions) {
    if ('socketPath' in opts) {
      // no idle timeouts: a boot under TCG or a quiet command may take longer than undici's 300 s
      this.dispatcher = new Agent({ connect: { socketPath: opts.socketPath }, headersTimeout: 0, bodyTimeout: 0 });
      this.origin = 'http://localhost';
      this.headers = {};
    } else {
      this.dispatcher = new Agent({ headersTimeout: 0, bodyTimeout: 0 });
      this.origin = opts.url.replace(/\/+$/, '');
      this.headers = { authorization: `Bearer ${opts.token}` };
    }
  }

  private async call<T>(method: Dispatcher.HttpMethod, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    const text = await res.body.text();
    if (res.statusCode >= 400) throw toError(res.statusCode, text, `${method} ${path}`);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async send(method: Dispatcher.HttpMethod, path: string, body?: unknown): Promise<Dispatcher.ResponseData> {
    try {
      return await request(`${this.origin}${path}`, {
        method, dispatcher: this.dispatcher,
        headers: { ...this.headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      throw new SlipwayError('DAEMON_UNREACHABLE', `the slipway daemon at ${this.origin === 'http://localhost' ? 'its socket' : this.origin} did not answer: ${(err as Error).message}`, { cause: err });
    }
  }

  health(): Promise<{ ok: boolean; version: string; vms: { running: number; booting: number; queued: number } }> {
    return this.call('GET', '/v1/health');
  }

  createVm(req: CreateVm): Promise<Vm> {
    return this.call('POST', '/v1/vms', req);
  }

  async listVms(): Promise<Vm[]> {
    return (await this.call<{ vms: Vm[] }>('GET', '/v1/vms')).vms;
  }

  getVm(id: string): Promise<Vm> {
    return this.call('GET', `/v1/vms/${encodeURIComponent(id)}`);
  }

  async deleteVm(id: string): Promise<void> {
    await this.call('DELETE', `/v1/vms/${encodeURIComponent(id)}`);
  }

  /** Snapshot a VM's disk to `ref`; with `{ memory: true }` its memory and device state too (a memory snapshot). */
  snapshot(id: string, ref: string): Promise<Snapshot>;
  snapshot(id: string, ref: string, opts: { memory: true }): Promise<MemorySnapshot>;
  snapshot(id: string, ref: string, opts: { memory?: boolean } = {}): Promise<Snapshot | MemorySnapshot> {
    return this.call('POST', `/v1/vms/${encodeURIComponent(id)}/snapshot`, { ref, ...(opts.memory ? { memory: true } : {}) });
  }

  prefetch(image: string): Promise<{ image: string; digest: string; chunks: number; fetchedChunks: number; ms: number }> {
    return this.call('POST', '/v1/images/prefetch', { image });
  }

  cache(): Promise<Record<string, unknown>> {
    return this.call('GET', '/v1/cache');
  }

  async metrics(): Promise<string> {
    const res = await this.send('GET', '/metrics');
    const text = await res.body.text();
    if (res.statusCode >= 400) throw toError(res.statusCode, text, 'GET /metrics');
    return text;
  }

  /**
   * Run a command in a VM; output is handed to the callbacks as it streams (and collected unless
   * `collect: false`), the promise resolves with the exit.
   */
  async exec(id: string, req: Exec, opts: { onStdout?: (b: Buffer) => void; onStderr?: (b: Buffer) => void; collect?: boolean } = {}): Promise<ExecOutcome> {
    const res = await this.send('POST', `/v1/vms/${encodeURIComponent(id)}/exec`, req);
    if (res.statusCode >= 400) throw toError(res.statusCode, await res.body.text(), `exec in ${id}`);
    const collect = opts.collect !== false;
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let pending = '';
    let exit: { exitCode: number; signal: number; timedOut: boolean } | undefined;
    const handle = (line: string): void => {
      if (!line) return;
      const msg = JSON.parse(line) as { stream?: 'stdout' | 'stderr'; text?: string; base64?: string; exit?: typeof exit; error?: { code: string; message: string } };
      if (msg.error) throw toError(500, JSON.stringify({ error: msg.error }), `exec in ${id}`);
      if (msg.exit) {
        exit = msg.exit;
        return;
      }
      const data = msg.text !== undefined ? Buffer.from(msg.text, 'utf8') : Buffer.from(msg.base64 ?? '', 'base64');
      if (msg.stream === 'stdout') {
        opts.onStdout?.(data);
        if (collect) out.push(data);
      } else {
        opts.onStderr?.(data);
        if (collect) err.push(data);
      }
    };
    // a multi-byte character may be split between two network chunks: decode as a stream
    const decoder = new StringDecoder('utf8');
    try {
      for await (const chunk of res.body) {
        pending += decoder.write(chunk as Buffer);
        let nl;
        while ((nl = pending.indexOf('\n')) >= 0) {
          handle(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      }
    } catch (err) {
      if (err instanceof SlipwayError) throw err;
      throw new SlipwayError('DAEMON_UNREACHABLE', `exec in ${id}: the stream broke before the exit status: ${(err as Error).message}`, { cause: err });
    }
    handle(pending + decoder.end());
    if (!exit) throw new SlipwayError('DAEMON_UNREACHABLE', `exec in ${id}: the stream ended without an exit status`);
    return { ...exit, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

function toError(status: number, text: string, what: string): SlipwayError {
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string; field?: string } };
    const code = body.error?.code;
    if (isErrorCode(code)) {
      return new SlipwayError(code, body.error?.message ?? what, { context: { status, ...(body.error?.field ? { field: body.error.field } : {}) } });
    }
  } catch {
    // not JSON
  }
  return new SlipwayError('IO_ERROR', `${what}: the daemon answered ${status}: ${text.slice(0, 500)}`, { context: { status } });
}
