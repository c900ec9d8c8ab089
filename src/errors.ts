/**
 * One error base class for all of slipway, and one table of its codes. Every error has a stable
 * `code` (documented in docs/errors.md and kept in step by test/errors.test.ts), a message that
 * names what was wrong, optional context fields and an optional `cause`. The table says, per code,
 * what it means, the HTTP status the daemon answers it with, whether another try can help
 * (`transient`), and whether it is one of the distribution spec's codes (`spec`: the only codes
 * taken from a registry's error body).
 */

export interface ErrorInfo {
  meaning: string;
  /** the daemon's HTTP status for it (src/api/app.ts) */
  httpStatus: number;
  /** the same request may succeed later: retries (transport, chunk fetches) and fall-backs key on this */
  transient?: true;
  /** a code of the OCI distribution spec, taken as such from a registry's `errors[]` */
  spec?: true;
}


export const ERROR_TABLE = {
  // input and usage
  USAGE: { meaning: 'bad command-line usage', httpStatus: 400 },
  INVALID_REFERENCE: { meaning: 'an image reference could not be parsed', httpStatus: 400 },
  INVALID_ARGUMENT: { meaning: 'an argument has an invalid value', httpStatus: 400 },
  FILE_NOT_FOUND: { meaning: 'a named file does not exist', httpStatus: 500 },
  INVALID_DISK_IMAGE: { meaning: 'a disk image file cannot be pushed as it is', httpStatus: 500 },
  // format
  NOT_A_SLIPWAY_DISK: { meaning: 'the manifest is not a slipway disk artifact', httpStatus: 422 },
  UNSUPPORTED_FORMAT_VERSION: { meaning: 'the disk artifact uses a format version this slipway does not read', httpStatus: 422 },
  CORRUPT_INDEX: { meaning: 'the chunk index blob is malformed', httpStatus: 500 },
  DIGEST_MISMATCH: { meaning: 'content did not match its digest', httpStatus: 502 },
  INVALID_DIGEST: { meaning: 'a digest string is malformed', httpStatus: 500 },
  // registries and stores (the distribution spec's error codes, plus transport failures); a registry's
  // refusal of the daemon's credentials is an upstream failure (502: the daemon's own 401 is its token's)
  BLOB_UNKNOWN: { meaning: 'blob unknown to registry', httpStatus: 404, spec: true },
  BLOB_UPLOAD_INVALID: { meaning: 'blob upload invalid', httpStatus: 500, spec: true },
  BLOB_UPLOAD_UNKNOWN: { meaning: 'blob upload unknown to registry', httpStatus: 500, spec: true },
  DIGEST_INVALID: { meaning: 'provided digest did not match uploaded content', httpStatus: 500, spec: true },
  MANIFEST_BLOB_UNKNOWN: { meaning: 'manifest references a manifest or blob unknown to registry', httpStatus: 500, spec: true },
  MANIFEST_INVALID: { meaning: 'manifest invalid', httpStatus: 500, spec: true },
  MANIFEST_UNKNOWN: { meaning: 'manifest unknown to registry', httpStatus: 404, spec: true },
  NAME_INVALID: { meaning: 'invalid repository name', httpStatus: 400, spec: true },
  NAME_UNKNOWN: { meaning: 'repository name not known to registry', httpStatus: 404, spec: true },
  // transient: the transport reports a short read (a cut connection, a rewritten length) with it
  SIZE_INVALID: { meaning: 'provided length did not match content length', httpStatus: 500, transient: true, spec: true },
  UNAUTHORIZED: { meaning: 'authentication required or credentials refused', httpStatus: 502, spec: true },
  DENIED: { meaning: 'requested access to the resource is denied', httpStatus: 502, spec: true },
  CREDENTIAL_HELPER_FAILED: { meaning: 'a docker credential helper is missing, failed or timed out', httpStatus: 500 },
  UNSUPPORTED: { meaning: 'the operation is unsupported', httpStatus: 500, spec: true },
  TOOMANYREQUESTS: { meaning: 'too many requests', httpStatus: 429, transient: true, spec: true },
  REGISTRY_UNREACHABLE: { meaning: 'the registry could not be reached', httpStatus: 502, transient: true },
  REGISTRY_ERROR: { meaning: 'the registry answered with an unexpected status', httpStatus: 502, transient: true },
  TAG_UNKNOWN: { meaning: 'the tag does not exist', httpStatus: 404 },
  LAYOUT_INVALID: { meaning: 'the directory is not a valid OCI image layout', httpStatus: 500 },
  // guests and builds
  BUILD_FAILED: { meaning: 'building the kernel, init, agent or a root disk failed', httpStatus: 500 },
  VM_BOOT_FAILED: { meaning: 'the virtual machine did not boot to its agent', httpStatus: 500 },
  VMM_ERROR: { meaning: 'the virtual machine monitor failed', httpStatus: 500 },
  VMM_EXITED: { meaning: 'the virtual machine monitor exited before the guest agent answered', httpStatus: 500 },
  VMM_INTERNAL_ERROR: { meaning: 'the virtual machine monitor could not run the guest (it stopped with an internal error, or made no progress under KVM)', httpStatus: 500 },
  GUEST_PANICKED: { meaning: 'the guest kernel panicked while booting', httpStatus: 500 },
  GUEST_POWERED_OFF: { meaning: 'the guest powered off before its agent answered', httpStatus: 500 },
  GUEST_RESET: { meaning: 'the guest reset (a triple fault or a reboot) before its agent answered', httpStatus: 500 },
  AGENT_ERROR: { meaning: 'the guest agent reported an error', httpStatus: 500 },
  AGENT_PROTOCOL: { meaning: 'the guest agent sent a malformed frame', httpStatus: 500 },
  COMMAND_NOT_FOUND: { meaning: 'the guest has no such program (a shell\'s exit status 127)', httpStatus: 400 },
  COMMAND_NOT_EXECUTABLE: { meaning: 'the guest cannot execute that program (a shell\'s exit status 126)', httpStatus: 400 },
  // the daemon and its VMs
  OVERLAY_INVALID: { meaning: 'a copy-on-write overlay file is malformed', httpStatus: 500 },
  VM_NOT_FOUND: { meaning: 'no VM has that id', httpStatus: 404 },
  CONFLICT: { meaning: 'the VM is not in a state that allows the operation', httpStatus: 409 },
  LIMIT_EXCEEDED: { meaning: 'a request is over a size or concurrency limit', httpStatus: 429 },
  DAEMON_UNREACHABLE: { meaning: 'the slipway daemon could not be reached', httpStatus: 500 },
  // local resources
  IO_ERROR: { meaning: 'a local file operation failed', httpStatus: 500 },
  ABORTED: { meaning: 'the operation was cancelled', httpStatus: 500 },
} as const satisfies Record<string, ErrorInfo>;

export type ErrorCode = keyof typeof ERROR_TABLE;

/** Each code's meaning (the default message). */
export const ERROR_CODES = Object.fromEntries(Object.entries(ERROR_TABLE).map(([code, info]) => [code, info.meaning])) as { readonly [C in ErrorCode]: (typeof ERROR_TABLE)[C]['meaning'] };

/** Whether `name` is one of slipway's codes (an own key: `toString` is not). */
export function isErrorCode(name: unknown): name is ErrorCode {
  return typeof name === 'string' && Object.hasOwn(ERROR_TABLE, name);
}

/** Whether `name` is one of the distribution spec's error codes. */
export function isSpecErrorCode(name: unknown): name is ErrorCode {
  return isErrorCode(name) && (ERROR_TABLE[name] as ErrorInfo).spec === true;
}

export function httpStatusOf(code: ErrorCode): number {
  return ERROR_TABLE[code].httpStatus;
}

/** Node and undici codes of a connection that dropped, was refused or timed out: worth another try. */
const TRANSIENT_NET_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH',
  'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
]);

/** The system or undici code of a low-level error (or of its cause). */
export function netErrorCode(err: unknown): string | undefined {
  const e = err as { code?: string; cause?: { code?: string } } | undefined;
  return e?.code ?? e?.cause?.code;
}

/**
 * The one notion of "transient": the same request may succeed if made again. A SlipwayError is
 * transient when its code is (the table); any other error when it is a dropped, refused or timed
 * out connection.
 */
export function isTransient(err: unknown): boolean {
  if (err instanceof SlipwayError) return (ERROR_TABLE[err.code] as ErrorInfo).transient === true;
  const code = netErrorCode(err);
  return code !== undefined ? TRANSIENT_NET_CODES.has(code) : (err as Error | undefined)?.name === 'SocketError';
}

/** An HTTP status that a retry may turn into a success: 408, 429 and 5xx but 501 and 505. */
export function isTransientStatus(status: number): boolean {
  return status === 429 || status === 408 || (status >= 500 && status !== 501 && status !== 505);
}

export interface ErrorContext {
  [key: string]: string | number | boolean | undefined | null;
}

export class SlipwayError extends Error {
  override readonly name = 'SlipwayError';
  readonly code: ErrorCode;
  readonly context: ErrorContext;

  constructor(code: ErrorCode, message?: string, options: { context?: ErrorContext; cause?: unknown } = {}) {
    super(message ?? ERROR_CODES[code], options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.context = options.context ?? {};
  }

  toJSON(): { code: ErrorCode; message: string; context: ErrorContext } {
    return { code: this.code, message: this.message, context: this.context };
  }
}

/** One entry of a registry's `{"errors": [...]}` body, as the registry sent it. */
export interface RegistryErrorEntry {
  code: string;
  message?: string;
  detail?: unknown;
}

/**
 * An error that came from a registry response: method, URL and status are always known; `errors`
 * holds every entry of the response's `errors[]` (the code is taken from the first that is one of
 * the spec's codes).
 */
export class RegistryError extends SlipwayError {
  readonly method: string;
  readonly url: string;
  readonly status: number;
  readonly errors: readonly RegistryErrorEntry[];

  constructor(code: ErrorCode, message: string, info: { method: string; url: string; status: number; detail?: string; errors?: readonly RegistryErrorEntry[]; cause?: unknown }) {
    super(code, `${message} (${info.method} ${info.url} -> ${info.status}${info.detail ? `: ${info.detail}` : ''})`, {
      context: { method: info.method, url: info.url, status: info.status },
      cause: info.cause,
    });
    this.method = info.method;
    this.url = info.url;
    this.status = info.status;
    this.errors = info.errors ?? [];
  }
}

export function isSlipwayError(err: unknown, code?: ErrorCode): err is SlipwayError {
  return err instanceof SlipwayError && (code === undefined || err.code === code);
}

/** Whether a manifest lookup found nothing there: no such tag, manifest or repository (an absent layout). */
export function isManifestMissing(err: unknown): boolean {
  return isSlipwayError(err, 'TAG_UNKNOWN') || isSlipwayError(err, 'MANIFEST_UNKNOWN') || isSlipwayError(err, 'NAME_UNKNOWN');
}

/** Turn a Node.js system error on a path into a SlipwayError naming the path. */
export function fromFsError(err: unknown, path: string, what: string): SlipwayError {
  const sysCode = (err as NodeJS.ErrnoException | undefined)?.code;
  if (sysCode === 'ENOENT') return new SlipwayError('FILE_NOT_FOUND', `${what}: ${path} does not exist`, { context: { path }, cause: err });
  return new SlipwayError('IO_ERROR', `${what}: ${path}: ${(err as Error)?.message ?? String(err)}`, { context: { path, errno: sysCode }, cause: err });
}

/** System errors that say something of the host (its disks, its limits, its permissions), not of a bug. */
const HOST_ERRNOS = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'EMFILE', 'ENFILE', 'EBUSY', 'ENOTDIR', 'EISDIR', 'ELOOP', 'ENAMETOOLONG', 'EXDEV']);

/**
 * A Node.js system error that reached a boundary unnamed, when it says something of the host: a
 * full disk, a read-only file system, a permission refused (`HOST_ERRNOS`) is IO_ERROR with the
 * system's words, a missing file with its path FILE_NOT_FOUND. Undefined for anything else (EINVAL,
 * EBADF, a network error: a bug or a caller's own to name, whose stack is then worth showing).
 */
export function fromSystemError(err: unknown): SlipwayError | undefined {
  const e = err as NodeJS.ErrnoException | undefined;
  if (!(err instanceof Error) || typeof e?.code !== 'string' || typeof e.syscall !== 'string') return undefined;
  if (e.code === 'ENOENT' && e.path !== undefined) return fromFsError(err, e.path, e.syscall);
  if (!HOST_ERRNOS.has(e.code)) return undefined;
  return new SlipwayError('IO_ERROR', err.message, { context: { errno: e.code, syscall: e.syscall, ...(e.path ? { path: e.path } : {}) }, cause: err });
}
