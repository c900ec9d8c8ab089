/**
 * The daemon's bearer token file (its default socket and state directory are config.ts's). Kept
 * apart from daemon.ts so that the CLI's client side loads none of the server (hono, SQLite).
 */
import { readFileSync } from 'node:fs';
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
