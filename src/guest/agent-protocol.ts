/**
 * The guest agent's wire format (docs/agent-protocol.md), host side: frame header and types,
 * encoders of the payload fields, a frame decoder for a byte stream, and the errors a frame maps
 * to (an `ERROR` frame: AGENT_ERROR with the guest's errno; a broken frame, a closed stream or a
 * late answer: AGENT_PROTOCOL with context `reason` malformed, closed or timeout). The C side is
 * guest/agent.c.
 */
import { constants as osConstants } from 'node:os';
import { SlipwayError } from '../errors.js';

export const MAX_PAYLOAD = 1_048_576 + 65_536;
export const FRAME_HEADER_BYTES = 12;
export const MAX_STRING_BYTES = 65_536;
export const MAX_STRING_COUNT = 4096;
export const MAX_READ_FILE_BYTES = 1_048_576;
/** stdin and file data are sent in pieces of at most this, well inside MAX_PAYLOAD */
export const DATA_PIECE_BYTES = 1_048_576;

export const MessageType = {
  PING: 1,
  EXEC: 2,
  STDIN: 3,
  SIGNAL: 4,
  WRITE_FILE: 5,
  READ_FILE: 6,
  SYNC: 7,
  FSFREEZE: 8,
  SHUTDOWN: 9,
  SET_HOSTNAME: 10,
  SET_TIME: 11,
  PONG: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  OK: 0x86,
  DATA: 0x87,
  ERROR: 0xff,
} as const;

const TYPE_NAMES = new Map<number, string>(Object.entries(MessageType).map(([name, type]) => [type, name]));

export function typeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `type 0x${type.toString(16)}`;
}

export interface Frame {
  type: number;
  flags: number;
  id: number;
  payload: Buffer;
}

export type FailureReason = 'malformed' | 'closed' | 'timeout';

export function protocolError(reason: FailureReason, message: string, cause?: unknown): SlipwayError {
  return new SlipwayError('AGENT_PROTOCOL', message, { context: { reason }, ...(cause === undefined ? {} : { cause }) });
}

// ---- encoding ----

export function encodeFrame(type: number, flags: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new SlipwayError('INVALID_ARGUMENT', `a ${typeName(type)} payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt16LE(type, 4);
  header.writeUInt16LE(flags, 6);
  header.writeUInt32LE(id, 8);
  return Buffer.concat([header, payload]);
}

export function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value, 0);
  return b;
}

export function i32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  return b;
}

export function u64(value: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(value), 0);
  return b;
}

export function encodeString(value: string | Buffer, what = 'string'): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (bytes.length > MAX_STRING_BYTES) throw new SlipwayError('INVALID_ARGUMENT', `${what} is ${bytes.length} bytes (at most ${MAX_STRING_BYTES})`);
  if (bytes.includes(0)) throw new SlipwayError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  return Buffer.concat([u32(bytes.length), bytes]);
}

export function encodeStringList(values: readonly (string | Buffer)[], what = 'string list'): Buffer {
  if (values.length > MAX_STRING_COUNT) throw new SlipwayError('INVALID_ARGUMENT', `${what} has ${values.length} strings (at most ${MAX_STRING_COUNT})`);
  return Buffer.concat([u32(values.length), ...values.map((v, i) => encodeString(v, `${what}[${i}]`))]);
}

/**
 * Splits a byte stream into frames. Buffers chunks and joins them only when a header or a whole
 * payload is available, so a 1 MiB frame arriving in small pieces is copied once.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #header: { length: number; type: number; flags: number; id: number } | undefined;

  /** Frames completed by `chunk`; throws AGENT_PROTOCOL on a frame longer than MAX_PAYLOAD. */
  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (!this.#header) {
        if (this.#buffered < FRAME_HEADER_BYTES) break;
        const h = this.#take(FRAME_HEADER_BYTES);
        const length = h.readUInt32LE(0);
        if (length > MAX_PAYLOAD) throw protocolError('malformed', `the guest agent sent a frame of ${length} bytes (at most ${MAX_PAYLOAD})`);
        this.#header = { length, type: h.readUInt16LE(4), flags: h.readUInt16LE(6), id: h.readUInt32LE(8) };
      }
      if (this.#buffered < this.#header.length) break;
      const { length, type, flags, id } = this.#header;
      this.#header = undefined;
      frames.push({ type, flags, id, payload: this.#take(length) });
    }
    return frames;
  }

  #take(n: number): Buffer {
    this.#buffered -= n;
    const first = this.#chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.#chunks[0];
      if (!c) throw new Error('FrameDecoder: buffered byte count out of step');
      const part = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, part);
      filled += part;
      if (part === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(part);
    }
    return out;
  }
}

// ---- replies ----

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/** The SlipwayError for an ERROR frame: the guest's message, its errno and its symbolic name. */
export function agentError(frame: Frame, request: string): SlipwayError {
  if (frame.payload.length < 4) return protocolError('malformed', `the guest agent sent an ERROR of ${frame.payload.length} bytes for ${request}`);
  const errno = frame.payload.readInt32LE(0);
  const message = frame.payload.subarray(4).toString('utf8');
  const errnoName = ERRNO_NAMES.get(errno);
  return new SlipwayError('AGENT_ERROR', `guest agent: ${message}${errnoName ? ` (${errnoName})` : ''}`, {
    context: { request, errno, errnoName: errnoName ?? null },
  });
}

/** execve errnos a shell reports as "not found" (exit status 127) and "cannot execute" (126). */
const EXEC_NOT_FOUND = new Set(['ENOENT', 'ENOTDIR']);
const EXEC_NOT_EXECUTABLE = new Set(['EACCES', 'EPERM', 'ENOEXEC', 'EISDIR', 'ETXTBSY', 'ELIBBAD']);

/**
 * The error for an `ERROR` answering an `EXEC` (docs/agent-protocol.md): when the agent's step
 * was execve (guest/agent_exec.c names it: `EXEC: execve <program>`), COMMAND_NOT_FOUND for
 * ENOENT or ENOTDIR and COMMAND_NOT_EXECUTABLE for EACCES, EPERM, ENOEXEC, EISDIR, ETXTBSY or
 * ELIBBAD, as a shell tells them apart (exit status 127 and 126, which `slipway run` and `exec`
 * exit with); any other failure (setsid, dup2, chdir, fork, a pipe) stays AGENT_ERROR. The
 * context is agentError's either way.
 */
export function execStartError(frame: Frame): SlipwayError {
  const err = agentError(frame, 'EXEC');
  const errnoName = err.context.errnoName;
  if (typeof errnoName !== 'string' || !frame.payload.subarray(4).toString('utf8').startsWith('EXEC: execve ')) return err;
  if (EXEC_NOT_FOUND.has(errnoName)) return new SlipwayError('COMMAND_NOT_FOUND', `command not found in the guest (no such program, or its #! interpreter or ELF loader is missing): ${err.message}`, { context: err.context });
  if (EXEC_NOT_EXECUTABLE.has(errnoName)) return new SlipwayError('COMMAND_NOT_EXECUTABLE', `the guest cannot execute the command: ${err.message}`, { context: err.context });
  return err;
}

export function expectType(frame: Frame, type: number, request: string): void {
  if (frame.type !== type) throw protocolError('malformed', `the guest agent answered ${request} with ${typeName(frame.type)}, expected ${typeName(type)}`);
}

export function expectLength(frame: Frame, length: number, request: string): void {
  if (frame.payload.length !== length) throw protocolError('malformed', `the guest agent sent a ${typeName(frame.type)} of ${frame.payload.length} bytes for ${request} (expected ${length})`);
}

export interface Pong {
  version: number;
  /** boot phases recorded by init: nanoseconds since boot (CLOCK_BOOTTIME) */
  phases: Record<string, number>;
  uptimeNs: number;
}

export function parsePong(payload: Buffer): Pong {
  const pong: Pong = { version: 0, phases: {}, uptimeNs: 0 };
  for (const line of payload.toString('utf8').split('\n')) {
    if (line === '') continue;
    const m = /^(\S+) (\d+)$/.exec(line);
    if (!m) throw protocolError('malformed', `the guest agent sent a PONG line that is not "key value": ${JSON.stringify(line)}`);
    const [, key = '', value = ''] = m;
    if (key === 'version') pong.version = Number(value);
    else if (key === 'uptime') pong.uptimeNs = Number(value);
    else if (key.startsWith('phase.')) pong.phases[key.slice('phase.'.length)] = Number(value);
    // other keys are for newer hosts
  }
  if (pong.version === 0) throw protocolError('malformed', 'the guest agent sent a PONG without a version');
  return pong;
}

// ---- processes ----
