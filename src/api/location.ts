/**
 * Where the daemon is and how to reach it: its default socket and state directory, and its
 * bearer token file. Kept apart from daemon.ts so that the CLI's client side loads none of the
 * server (hono, zod, SQLite).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SlipwayError } from '../errors.js';

export function readTokenFile(path: string): string {
  let token: string;
  try {
    token = readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new SlipwayError('FILE_NOT_FOUND', `token file ${path}: ${(err as Error).message}`);
  }
  if (token.length < 16) throw new SlipwayError('INVALID_ARGUMENT', `token file ${path}: the token must be at least 16 characters`);
  return token;
}

/** Where the daemon listens by default: $SLIPWAY_DAEMON_SOCKET, else in $XDG_RUNTIME_DIR, else /run/slipway (root) or the state directory. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SLIPWAY_DAEMON_SOCKET) return env.SLIPWAY_DAEMON_SOCKET;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'slipway', 'slipway.sock');
  if (process.getuid?.() === 0) return '/run/slipway/slipway.sock';
  return join(defaultStateDir(env), 'slipway.sock');
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SLIPWAY_STATE_DIR) return env.SLIPWAY_STATE_DIR;
  if (process.getuid?.() === 0) return '/var/lib/slipway';
  return join(env.XDG_STATE_HOME ?? join(env.HOME ?? '/tmp', '.local', 'state'), 'slipway');
}
