/**
 * One error base class for all of slipway. Every error has a stable `code` (documented in
 * docs/errors.md and kept in step by test/errors.test.ts), a message that names what was wrong,
 * optional context fields and an optional `cause`.
 */

export const ERROR_CODES = {
  // input and usage
  USAGE: 'bad command-line usage',
  INVALID_REFERENCE: 'an image reference could not be parsed',
  INVALID_ARGUMENT: 'an argument has an invalid value',
  FILE_NOT_FOUND: 'a named file does not exist',
  INVALID_DISK_IMAGE: 'a disk image file cannot be pushed as it is',
  // format
  NOT_A_SLIPWAY_DISK: 'the manifest is not a slipway disk artifact',
  UNSUPPORTED_FORMAT_VERSION: 'the disk artifact uses a format version this slipway does not read',
  CORRUPT_INDEX: 'the chunk index blob is malformed',
  DIGEST_MISMATCH: 'content did not match its digest',
  INVALID_DIGEST: 'a digest string is malformed',
  // registries and stores (the distribution spec's error codes, plus transport failures)
  BLOB_UNKNOWN: 'blob unknown to registry',
  BLOB_UPLOAD_INVALID: 'blob upload invalid',
  BLOB_UPLOAD_UNKNOWN: 'blob upload unknown to registry',
  DIGEST_INVALID: 'provided digest did not match uploaded content',
  MANIFEST_BLOB_UNKNOWN: 'manifest references a manifest or blob unknown to registry',
  MANIFEST_INVALID: 'manifest invalid',
  MANIFEST_UNKNOWN: 'manifest unknown to registry',
  NAME_INVALID: 'invalid repository name',
  NAME_UNKNOWN: 'repository name not known to registry',
  SIZE_INVALID: 'provided length did not match content length',
  UNAUTHORIZED: 'authentication required or credentials refused',
  DENIED: 'requested access to the resource is denied',
  CREDENTIAL_HELPER_FAILED: 'a docker credential helper is missing, failed or timed out',
  UNSUPPORTED: 'the operation is unsupported',
  TOOMANYREQUESTS: 'too many requests',
  REGISTRY_UNREACHABLE: 'the registry could not be reached',
  REGISTRY_ERROR: 'the registry answered with an unexpected status',
  TAG_UNKNOWN: 'the tag does not exist',
  LAYOUT_INVALID: 'the directory is not a valid OCI image layout',
  // guests and builds
  BUILD_FAILED: 'building the kernel, init, agent or a root disk failed',
  VM_BOOT_FAILED: 'the virtual machine did not boot to its agent',
  VMM_ERROR: 'the virtual machine monitor failed',
  VMM_EXITED: 'the virtual machine monitor exited before the guest agent answered',
  VMM_INTERNAL_ERROR: 'the virtual machine monitor stopped the VM with an internal error (KVM could not run the guest)',
  GUEST_PANICKED: 'the guest kernel panicked while booting',
  GUEST_POWERED_OFF: 'the guest powered off before its agent answered',
  GUEST_RESET: 'the guest reset (a triple fault or a reboot) before its agent answered',
  AGENT_ERROR: 'the guest agent reported an error',
  AGENT_PROTOCOL: 'the guest agent sent a malformed frame',
  // the daemon and its VMs
  OVERLAY_INVALID: 'a copy-on-write overlay file is malformed',
  VM_NOT_FOUND: 'no VM has that id',
  CONFLICT: 'the VM is not in a state that allows the operation',
  LIMIT_EXCEEDED: 'a request is over a size or concurrency limit',
  DAEMON_UNREACHABLE: 'the slipway daemon could not be reached',
  // local resources
  IO_ERROR: 'a local file operation failed',
  ABORTED: 'the operation was cancelled',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

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

/** An error that came from a registry response: method, URL and status are always known. */
export class RegistryError extends SlipwayError {
  readonly method: string;
  readonly url: string;
  readonly status: number;

  constructor(code: ErrorCode, message: string, info: { method: string; url: string; status: number; detail?: string; cause?: unknown }) {
    super(code, `${message} (${info.method} ${info.url} -> ${info.status}${info.detail ? `: ${info.detail}` : ''})`, {
      context: { method: info.method, url: info.url, status: info.status },
      cause: info.cause,
    });
    this.method = info.method;
    this.url = info.url;
    this.status = info.status;
  }
}

export function isSlipwayError(err: unknown, code?: ErrorCode): err is SlipwayError {
  return err instanceof SlipwayError && (code === undefined || err.code === code);
}

/** Turn a Node.js system error on a path into a SlipwayError naming the path. */
export function fromFsError(err: unknown, path: string, what: string): SlipwayError {
  const sysCode = (err as NodeJS.ErrnoException | undefined)?.code;
  if (sysCode === 'ENOENT') return new SlipwayError('FILE_NOT_FOUND', `${what}: ${path} does not exist`, { context: { path }, cause: err });
  return new SlipwayError('IO_ERROR', `${what}: ${path}: ${(err as Error)?.message ?? String(err)}`, { context: { path, errno: sysCode }, cause: err });
}
