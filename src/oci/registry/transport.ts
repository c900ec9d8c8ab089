import type { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from 'undici';
import { ERROR_CODES, RegistryError, SlipwayError, isSpecErrorCode, isTransient, isTransientStatus, netErrorCode, type ErrorCode, type RegistryErrorEntry } from '../../errors.js';
import { DEFAULT_RETRY, RetryLater, withRetries, type RetryPolicy } from '../../util/retry.js';
import { AuthState, basicAuthHeader, parseChallenge, tokenRequest } from './auth.js';
import { findCredentials, sameCredentials, type Credentials } from './credentials.js';
import { isLoopbackRegistry } from '../ref.js';
import { WarmSockets } from './warm-sockets.js';

/** How long opening one connection to a registry may take (ms). */
const CONNECT_TIMEOUT_MS = 10_000;

/** After re-reading credentials on a 401 found nothing new, they are not read again for this long. */
const CREDENTIAL_REREAD_QUIET_MS = 10_000;

export interface RegistryClientOptions {
  /** Speak plain HTTP even to a non-loopback host (`--plain-http`). */
  plainHttp?: boolean;
  /** Hosts (host[:port]) spoken to over plain HTTP (the `plainHttpRegistries` setting). */
  plainHttpHosts?: readonly string[];
  credentials?: Credentials;
  retry?: Partial<RetryPolicy>;
  /** Connections per registry host: bounds concurrent requests. */
  connections?: number;
  /** Overall time a single request (headers and body) may take. */
  requestTimeoutMs?: number;
  userAgent?: string;
}

export interface RegistryRequest {
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** A path under the registry origin (`/v2/...`) or an absolute URL (upload locations, redirects). */
  url: string;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Auth scopes the request needs (bearer tokens are asked for these). */
  scopes: string[];
  /** Statuses that are success for this request. */
  expect: number[];
  /** How a 404 is reported. */
  notFound?: ErrorCode;
  /** 'buffer' reads the body (retried as a whole on a dropped connection); 'stream' hands it over. */
  read: 'buffer' | 'stream' | 'none';
  /** Follow 3xx redirects (blob GETs to storage back-ends). */
  followRedirects?: boolean;
  /**
   * With `read: 'buffer'`: the size in bytes a complete body has, by status (a Range GET of
   * `length` bytes of an `n`-byte blob: `{ 206: length, 200: n }`). A shorter body is a short read
   * (see `shortRead`), retried like a dropped connection.
   */
  expectBytes?: Partial<Record<number, number>>;
  what: string;
  /**
   * Given up on by the caller: aborting it cuts the request on the wire (its connection is
   * closed, a streamed body throws) and starts no retry; `send` then throws the signal's reason.
   */
  signal?: AbortSignal;
}

export interface RegistryResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body?: Buffer;
  stream?: Readable;
  url: string;
}

/**
 * Why a buffered body is not the whole answer, or undefined when it is: a size other than its
 * Content-Length announced, or fewer bytes than its Content-Range announced or than `expected`
 * says a complete answer with its status has (bytes, by status). A cut connection whose body was
 * delimited by the close itself, a proxy that rewrote the length, or a range answer shorter than
 * asked for all look like this; none of them is the content being wrong, so the transport retries
 * them (as it does a dropped connection) and reports the last one as SIZE_INVALID, which callers
 * treat as transient. A body at least as long as expected is complete: what is wrong with it is
 * for verification to find, and counts against its source.
 */
export function shortRead(status: number, headers: Record<string, string | string[] | undefined>, bodyBytes: number, expected?: Partial<Record<number, number>>): string | undefined {
  const announced = Number(header(headers, 'content-length') ?? Number.NaN);
  if (Number.isSafeInteger(announced) && announced !== bodyBytes) return `got ${bodyBytes} bytes of the ${announced} its Content-Length announced`;
  const range = /^bytes (\d+)-(\d+)\//.exec(header(headers, 'content-range') ?? '');
  if (status === 206 && range) {
    const rangeBytes = Number(range[2]) - Number(range[1]) + 1;
    if (bodyBytes < rangeBytes) return `got ${bodyBytes} bytes of the ${rangeBytes} its Content-Range announced`;
  }
  const want = expected?.[status];
  if (want !== undefined && bodyBytes < want) return `got ${bodyBytes} bytes, a complete ${status} answer has ${want}`;
  return undefined;
}

/** One value of a response header (the first, when it repeats). */
export function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * HTTP to one registry host: connection pool, auth (anonymous, basic, bearer token with scopes),
 * retries with exponential backoff and jitter on 5xx, 429 and dropped connections, and mapping of
 * error responses to the distribution spec's error codes. The OCI operations live in
 * repository.ts; nothing here knows about manifests or blobs.
 */
export class RegistryClient {
  readonly origin: string;
  private readonly dispatcher: Agent;
  /** connections opened ahead of requests (`preconnect`), which the pool takes as it grows */
  private readonly warm: WarmSockets;
  private readonly connections: number;
  private readonly auth = new AuthState();
  private credentials: Credentials | undefined;
  /** credentials given by the caller: never re-read */
  private readonly fixedCredentials: boolean;
  private credentialsRead: Promise<void> | undefined;
  private quietUntilMs = 0;
  private readonly retry: RetryPolicy;
  private readonly userAgent: string;

  constructor(readonly registry: string, options: RegistryClientOptions = {}) {
    const scheme = options.plainHttp || options.plainHttpHosts?.includes(registry) || isLoopbackRegistry(registry) ? 'http' : 'https';
    const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
    this.origin = `${scheme}://${host}`;
    this.credentials = options.credentials;
    this.fixedCredentials = options.credentials !== undefined;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.userAgent = options.userAgent ?? 'slipway/0.1';
    const timeout = options.requestTimeoutMs ?? 120_000;
    this.connections = options.connections ?? 8;
    this.warm = new WarmSockets(this.origin, CONNECT_TIMEOUT_MS);
    this.dispatcher = new Agent({
      connections: this.connections,
      keepAliveTimeout: 10_000,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      connect: this.warm.connect,
    });
  }

  async close(): Promise<void> {
    this.warm.close();
    await this.dispatcher.close();
  }

  /**
   * Have `count` connections to the registry open (at most the pool's bound), opening the missing
   * ones now without sending anything on them; the pool takes them as its requests need more
   * connections (warm-sockets.ts). For a burst of requests about to come (a cold disk's first
   * reads): none of them then waits for a handshake. Resolves with how many were opened; never rejects.
   */
  async preconnect(count: number): Promise<number> {
    // (the pool's stats are keyed by the origin as URL writes it: lower case, no default port)
    const connected = this.dispatcher.stats[new URL(this.origin).origin]?.connected ?? 0;
    return this.warm.open(Math.min(count, this.connections) - Number(connected) - this.warm.idle);
  }

  resolveUrl(url: string): string {
    return new URL(url, this.origin).toString();
  }

  /**
   * Send one request with retries and auth. Credentials are looked up (findCredentials) before
   * the first request; when the registry or its token service still refuses them (UNAUTHORIZED),
   * they are looked up again, and when they changed (rotated by a helper or a new `docker login`)
   * the request is made once more with them before the refusal is reported.
   */
  async send(req: RegistryRequest): Promise<RegistryResponse> {
    await this.readCredentials();
    try {
      return await this.sendOnce(req);
    } catch (err) {
      if (!(err instanceof RegistryError && err.code === 'UNAUTHORIZED') || !(await this.rereadCredentials())) throw err;
      return await this.sendOnce(req);
    }
  }

  private readCredentials(): Promise<void> {
    this.credentialsRead ??= this.fixedCredentials ? Promise.resolve() : findCredentials(this.registry).then((c) => {
      this.credentials = c;
    }, (err: unknown) => {
      this.credentialsRead = undefined; // a helper that failed is asked again by the next request
      throw err;
    });
    return this.credentialsRead;
  }

  /** Look the credentials up again; true when they changed (auth state is then started afresh). */
  private async rereadCredentials(): Promise<boolean> {
    if (this.fixedCredentials || Date.now() < this.quietUntilMs) return false;
    const fresh = await findCredentials(this.registry);
    if (sameCredentials(fresh, this.credentials)) {
      this.quietUntilMs = Date.now() + CREDENTIAL_REREAD_QUIET_MS;
      return false;
    }
    this.credentials = fresh;
    this.credentialsRead = Promise.resolve();
    this.auth.reset();
    return true;
  }

  /** One request, its retries (util/retry.ts) around `attempt`. */
  private sendOnce(req: RegistryRequest): Promise<RegistryResponse> {
    const state: RequestState = { url: this.resolveUrl(req.url), authRetried: false, redirects: 0 };
    return withRetries(this.retry, (attempt) => this.attempt(req, state, attempt), req.signal);
  }

  /**
   * One attempt: answering an auth challenge and following redirects are part of it (they do not
   * count as attempts). Throws RetryLater on a dropped connection, a short read or a transient status.
   */
  private async attempt(req: RegistryRequest, state: RequestState, attempt: number): Promise<RegistryResponse> {
    for (;;) {
      const url = state.url;
      const sameOrigin = new URL(url).origin === this.origin;
      const headers: Record<string, string> = { 'user-agent': this.userAgent, ...req.headers };
      if (sameOrigin) {
        const authorization = await this.authorization(req.scopes, req.signal);
        if (authorization) headers.authorization = authorization;
      }
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, { method: req.method, headers, body: req.body, dispatcher: this.dispatcher, ...(req.signal ? { signal: req.signal } : {}) });
      } catch (err) {
        throw this.unreachable(req, url, err, attempt);
      }
      const status = res.statusCode;
      const resHeaders = res.headers;
      if (status === 401 && sameOrigin && !state.authRetried) {
        const challenge = parseChallenge(header(resHeaders, 'www-authenticate'));
        await res.body.dump();
        if (challenge) {
          state.authRetried = true;
          await this.answerChallenge(challenge, req, url);
          continue;
        }
      }
      if (req.followRedirects && [301, 302, 303, 307, 308].includes(status)) {
        const location = header(resHeaders, 'location');
        await res.body.dump();
        if (!location || ++state.redirects > 5) throw new RegistryError('REGISTRY_ERROR', `${req.what}: bad redirect`, { method: req.method, url, status });
        state.url = new URL(location, url).toString();
        continue;
      }
      if (req.expect.includes(status)) {
        if (req.read === 'stream') return { status, headers: resHeaders, stream: res.body, url };
        if (req.read === 'none' || req.method === 'HEAD') {
          await res.body.dump();
          return { status, headers: resHeaders, url };
        }
        let body: Buffer;
        try {
          body = Buffer.from(await res.body.arrayBuffer());
        } catch (err) {
          throw this.unreachable(req, url, err, attempt);
        }
        const short = shortRead(status, resHeaders, body.byteLength, req.expectBytes);
        if (short === undefined) return { status, headers: resHeaders, body, url };
        throw new RetryLater((n) => new RegistryError('SIZE_INVALID', `${req.what}: short read: ${short} (${n} attempt${n === 1 ? '' : 's'})`, { method: req.method, url, status }));
      }
      const text = req.method === 'HEAD' ? '' : await res.body.text().catch(() => '');
      if (req.method === 'HEAD') await res.body.dump().catch(() => undefined);
      if (isTransientStatus(status)) throw new RetryLater(() => this.statusError(req, url, status, text), header(resHeaders, 'retry-after'));
      throw this.statusError(req, url, status, text);
    }
  }

  /** A request that failed below HTTP: RetryLater when the connection dropped or was refused, REGISTRY_UNREACHABLE otherwise. */
  private unreachable(req: RegistryRequest, url: string, err: unknown, attempt: number): unknown {
    if (!(err instanceof SlipwayError) && isTransient(err)) return new RetryLater((n) => this.networkError(req, url, err, n));
    return this.networkError(req, url, err, attempt);
  }

  private networkError(req: RegistryRequest, url: string, err: unknown, attempts: number): SlipwayError {
    if (err instanceof SlipwayError) return err;
    const code = netErrorCode(err) ?? (err as Error)?.name;
    return new SlipwayError('REGISTRY_UNREACHABLE', `${req.what}: registry ${this.registry} could not be reached (${req.method} ${url}: ${code ?? (err as Error)?.message}; ${attempts} attempt${attempts === 1 ? '' : 's'})`, {
      context: { registry: this.registry, url, method: req.method },
      cause: err,
    });
  }

  private statusError(req: RegistryRequest, url: string, status: number, text: string): RegistryError {
    const errors = registryErrors(text);
    const specCode = errors?.find((e) => isSpecErrorCode(e.code))?.code;
    const detail = errors ? describeRegistryErrors(errors) : text.slice(0, 200) || undefined;
    let code: ErrorCode;
    if (isSpecErrorCode(specCode)) code = specCode;
    else if (status === 401) code = 'UNAUTHORIZED';
    else if (status === 403) code = 'DENIED';
    else if (status === 404) code = req.notFound ?? 'NAME_UNKNOWN';
    else if (status === 429) code = 'TOOMANYREQUESTS';
    else code = 'REGISTRY_ERROR';
    if (status === 404 && req.notFound && code !== req.notFound && (code === 'NAME_UNKNOWN' || code === 'REGISTRY_ERROR')) code = req.notFound;
    const what = code === 'UNAUTHORIZED' && this.credentials ? `${req.what}: credentials for ${this.registry} were refused` : code === 'UNAUTHORIZED' ? `${req.what}: ${this.registry} requires credentials (none found)` : `${req.what}: ${ERROR_CODES[code]}`;
    return new RegistryError(code, what, { method: req.method, url, status, ...(detail ? { detail } : {}), ...(errors ? { errors } : {}) });
  }

  private scopeKey(scopes: string[]): string {
    return [...scopes].sort().join(' ');
  }

  /** The Authorization header for `scopes` (a bearer token fetched when none is cached; `signal`: see RegistryRequest.signal). */
  private async authorization(scopes: string[], signal?: AbortSignal): Promise<string | undefined> {
    if (this.auth.scheme === 'basic' && this.credentials) return basicAuthHeader(this.credentials);
    if (this.auth.scheme === 'bearer') {
      const key = this.scopeKey(scopes);
      let token = this.auth.cachedToken(key);
      if (!token) token = await this.fetchToken(scopes, this.origin, scopes, signal);
      return `Bearer ${token}`;
    }
    return undefined;
  }

  private async answerChallenge(challenge: { scheme: 'basic' | 'bearer'; params: Record<string, string> }, req: RegistryRequest, url: string): Promise<void> {
    const scopes = req.scopes;
    if (challenge.scheme === 'basic') {
      if (!this.credentials) {
        throw new RegistryError('UNAUTHORIZED', `${req.what}: registry ${this.registry} requires credentials (none found: set SLIPWAY_REGISTRY_USERNAME/PASSWORD or docker login)`, { method: req.method, url, status: 401 });
      }
      this.auth.scheme = 'basic';
      return;
    }
    this.auth.scheme = 'bearer';
    this.auth.bearerParams = challenge.params;
    const wanted = new Set(scopes);
    if (challenge.params.scope) for (const s of challenge.params.scope.split(' ')) wanted.add(s);
    this.auth.forgetToken(this.scopeKey(scopes));
    await this.fetchToken([...wanted], url, scopes, req.signal);
  }

  /**
   * Distribution token spec: GET realm?service=&scope= (basic-authenticated when we have
   * credentials), or the OAuth2 refresh-token grant (auth.ts `tokenRequest`). `signal`: the request
   * the token is for was given up on (RegistryRequest.signal): the token request is cut too and
   * not retried, so that a token service that hangs holds nothing past the caller's deadline.
   */
  private async fetchToken(scopes: string[], forUrl: string, cacheUnder: string[] = scopes, signal?: AbortSignal): Promise<string> {
    const realm = this.auth.bearerParams.realm;
    if (!realm) throw new RegistryError('UNAUTHORIZED', `registry ${this.registry} sent a bearer challenge without a realm`, { method: 'GET', url: forUrl, status: 401 });
    const { method, url: tokenUrl, headers, body } = tokenRequest(this.auth.bearerParams, scopes, this.credentials, this.userAgent);
    const { status, text } = await withRetries(this.retry, async () => {
      let res: Dispatcher.ResponseData;
      let answerText: string;
      try {
        res = await request(tokenUrl, { method, headers, body, dispatcher: this.dispatcher, ...(signal ? { signal } : {}) });
        answerText = await res.body.text();
      } catch (err) {
        const unreachable = new SlipwayError('REGISTRY_UNREACHABLE', `token service ${tokenUrl.origin} for ${this.registry} could not be reached: ${netErrorCode(err) ?? (err as Error).message}`, { cause: err });
        throw !(err instanceof SlipwayError) && isTransient(err) ? new RetryLater(() => unreachable) : unreachable;
      }
      const answer = { status: res.statusCode, text: answerText };
      if (isTransientStatus(answer.status)) throw new RetryLater(() => this.tokenRefusal(method, tokenUrl, answer.status, answer.text), header(res.headers, 'retry-after'));
      return answer;
    }, signal);
    if (status !== 200) throw this.tokenRefusal(method, tokenUrl, status, text);
    let token: string | undefined;
    let expiresIn: number | undefined;
    try {
      const parsed = JSON.parse(text) as { token?: string; access_token?: string; expires_in?: number };
      token = parsed.token ?? parsed.access_token;
      expiresIn = parsed.expires_in;
    } catch {
      token = undefined;
    }
    if (!token) throw new RegistryError('UNAUTHORIZED', `token service for ${this.registry} answered without a token`, { method, url: tokenUrl.toString(), status: 200 });
    this.auth.storeToken(this.scopeKey(cacheUnder), token, expiresIn);
    return token;
  }

  /** The error for a token service's answer other than 200. */
  private tokenRefusal(method: string, tokenUrl: URL, status: number, text: string): RegistryError {
    if (status === 401 || status === 403) {
      return new RegistryError('UNAUTHORIZED', this.credentials ? `credentials for ${this.registry} were refused by its token service` : `token service for ${this.registry} refused anonymous access`, {
        method, url: tokenUrl.toString(), status, detail: text.slice(0, 200),
      });
    }
    return new RegistryError(isTransientStatus(status) ? 'REGISTRY_ERROR' : 'UNAUTHORIZED', `token service for ${this.registry} answered ${status}`, {
      method, url: tokenUrl.toString(), status, detail: text.slice(0, 200),
    });
  }
}

/** Where one request stands across its attempts: redirects followed and whether a challenge was answered. */
interface RequestState {
  url: string;
  authRetried: boolean;
  redirects: number;
}

/** The entries of a distribution-spec error body (`{"errors": [{code, message, detail}]}`), or undefined when it is not one. */
function registryErrors(text: string): RegistryErrorEntry[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  const list = (parsed as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(list)) return undefined;
  return list.filter((e): e is RegistryErrorEntry => typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string');
}

/** The first entry's message, and the others' codes and messages after it. */
function describeRegistryErrors(errors: RegistryErrorEntry[]): string | undefined {
  const [first, ...rest] = errors;
  const parts = [first?.message, ...rest.map((e) => `${e.code}${e.message ? `: ${e.message}` : ''}`)].filter((p): p is string => typeof p === 'string' && p !== '');
  return parts.length > 0 ? parts.join('; ') : undefined;
}
