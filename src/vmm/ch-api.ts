/**
 * Cloud Hypervisor's REST API (HTTP/1.1 on the `--api-socket` Unix socket, base path /api/v1; its
 * OpenAPI description is vendor/cloud-hypervisor/cloud-hypervisor.yaml), as the driver
 * (cloud-hypervisor.ts) and its memory snapshots (ch-snapshot.ts) call it.
 */
import { request as httpRequest } from 'node:http';
import { SlipwayError } from '../errors.js';

export const CH_API_BASE = '/api/v1';

export interface ChResponse {
  status: number;
  body: string;
}

/**
 * One request to CH's API. CH's HTTP server (micro_http) wants a Content-Length and no chunked
 * encoding, so the body is always sent whole with its length (0 when there is none).
 */
export function chApiRequest(socketPath: string, method: 'GET' | 'PUT', endpoint: string, body?: unknown, timeoutMs = 10_000): Promise<ChResponse> {
  const data = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
  const path = `${CH_API_BASE}/${endpoint}`;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { Accept: 'application/json', 'Content-Length': data.length };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const req = httpRequest({ socketPath, path, method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(data);
  });
}

function vmmError(method: string, endpoint: string, detail: string, context: Record<string, string | number> = {}, cause?: unknown): SlipwayError {
  const request = `${method} ${CH_API_BASE}/${endpoint}`;
  return new SlipwayError('VMM_ERROR', `cloud-hypervisor ${request} ${detail}`, { context: { request, ...context }, ...(cause === undefined ? {} : { cause }) });
}

/** A request that must succeed with 2xx; anything else is a VMM_ERROR naming the request, status and CH's answer. */
export async function chApi(socketPath: string, method: 'GET' | 'PUT', endpoint: string, body?: unknown, timeoutMs?: number): Promise<string> {
  let res: ChResponse;
  try {
    res = await chApiRequest(socketPath, method, endpoint, body, timeoutMs);
  } catch (err) {
    throw vmmError(method, endpoint, `failed: ${(err as Error).message}`, {}, err);
  }
  if (res.status < 200 || res.status > 299) {
    const text = res.body.trim();
    throw vmmError(method, endpoint, `-> ${res.status}${text ? `: ${text}` : ' (no error body)'}`, { status: res.status });
  }
  return res.body;
}

export interface VmmPing {
  version: string;
  build_version?: string;
  pid?: number;
  features: string[];
}

export async function chPing(socketPath: string, timeoutMs?: number): Promise<VmmPing> {
  const text = await chApi(socketPath, 'GET', 'vmm.ping', undefined, timeoutMs);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw vmmError('GET', 'vmm.ping', `-> 200 but the answer is not JSON: ${text.slice(0, 200)}`);
  }
  const p = parsed as Partial<VmmPing> | null;
  if (!p || typeof p !== 'object' || typeof p.version !== 'string') throw vmmError('GET', 'vmm.ping', `-> 200 but the answer has no version: ${text.slice(0, 200)}`);
  const features = Array.isArray(p.features) ? p.features.filter((f): f is string => typeof f === 'string') : [];
  return { ...p, version: p.version, features };
}
