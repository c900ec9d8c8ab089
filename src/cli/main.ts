/**
 * The CLI's entry: one table of commands (each module's `CommandSpec`s), dispatch, error
 * reporting, and `--help` made from the table (each form's usage is the one its errors print).
 */
import { readFileSync } from 'node:fs';
import { SlipwayError, fromSystemError, type ErrorCode } from '../errors.js';
import type { CommandIO, CommandSpec } from './args.js';
import { CACHE_COMMANDS } from './cache-commands.js';
import { DAEMON_COMMANDS } from './daemon-commands.js';
import { DISK_COMMANDS } from './disk-commands.js';
import { DOCTOR_COMMAND } from './doctor-command.js';
import { GUEST_COMMANDS } from './guest-commands.js';
import { RUN_COMMAND } from './run-command.js';
import { serveCommand, USAGE as SERVE_USAGE } from './serve-command.js';

const SERVE_COMMAND: CommandSpec = {
  name: 'serve',
  help: [{ usage: SERVE_USAGE, summary: 'serve a disk to a VMM over vhost-user-blk, fetching chunks on demand' }],
  run: serveCommand,
};

/** Every command, in the order `--help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [
  ...DISK_COMMANDS, ...CACHE_COMMANDS, ...GUEST_COMMANDS, DOCTOR_COMMAND, RUN_COMMAND, SERVE_COMMAND, ...DAEMON_COMMANDS,
];

const COMMON_OPTIONS = 'common options: --plain-http, --progress=auto|json|tty|none, --cache-dir DIR (or SLIPWAY_CACHE_DIR)';
const REFERENCE_LINES = [
  'references: name[:tag|@digest] (the embedded store, $SLIPWAY_STORE), oci:<dir>[:tag|@digest] (an OCI image layout)',
  '  or host[:port]/repo[:tag|@digest] (a registry)',
];

/** `slipway --help`: every form of every command, its usage line(s) then what it does. */
export function usageText(commands: readonly CommandSpec[] = COMMANDS): string {
  const lines = ['slipway: OCI-backed disks for microVMs', '', 'usage: slipway <command> [options]', ''];
  for (const { help } of commands) {
    for (const { usage, summary } of help) {
      for (const line of usage.split('\n')) lines.push(`  ${line.trim().replace(/^slipway /, '')}`);
      lines.push(`      ${summary}`);
    }
  }
  lines.push(
    '',
    ...REFERENCE_LINES,
    COMMON_OPTIONS,
    'slipway help <command> (or <command> --help) prints one command\'s usage; slipway --version its version',
    '',
  );
  return lines.join('\n');
}

/**
 * The exit status a failed command ends with: 2 for a usage error; for a guest command that could
 * not start, what a shell exits with (127: no such program, 126: it cannot be executed), so that
 * `slipway run ... -- cmd` reads like running `cmd`; 1 for anything else.
 */
export function exitStatusOf(code: ErrorCode): number {
  switch (code) {
    case 'USAGE':
      return 2;
    case 'COMMAND_NOT_FOUND':
      return 127;
    case 'COMMAND_NOT_EXECUTABLE':
      return 126;
    default:
      return 1;
  }
}

/** One command's help: its forms' usage lines and summaries, then the reference forms. */
function commandHelp(command: CommandSpec): string {
  const lines: string[] = [];
  for (const { usage, summary } of command.help) {
    for (const line of usage.split('\n')) lines.push(line.trim().startsWith('slipway ') ? `usage: ${line.trim()}` : `  ${line.trim()}`);
    lines.push(`    ${summary}`);
  }
  lines.push('', ...REFERENCE_LINES, COMMON_OPTIONS, '');
  return lines.join('\n');
}

/** This slipway's version: package.json's (dist/cli and src/cli are both two levels below it). */
function slipwayVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

export async function main(argv: string[], io: CommandIO = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [name, ...rest] = argv;
  // `slipway help <command>`: that command's help
  if (name === 'help' && rest[0] !== undefined) {
    const helpFor = COMMANDS.find((c) => c.name === rest[0]);
    if (!helpFor) {
      io.stderr.write(`slipway: unknown command ${JSON.stringify(rest[0])}\n\n${usageText()}`);
      return 2;
    }
    io.stdout.write(commandHelp(helpFor));
    return 0;
  }
  if (name === '--version' || name === 'version') {
    io.stdout.write(`slipway ${slipwayVersion()}\n`);
    return 0;
  }
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(usageText());
    return name ? 0 : 2;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    io.stderr.write(`slipway: unknown command ${JSON.stringify(name)}\n\n${usageText()}`);
    return 2;
  }
  // `<command> ... --help` (before a `--`, after which the words are a guest command's)
  const own = rest.indexOf('--') < 0 ? rest : rest.slice(0, rest.indexOf('--'));
  if (own.includes('--help') || own.includes('-h')) {
    io.stdout.write(commandHelp(command));
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    const known = err instanceof SlipwayError ? err : fromSystemError(err);
    if (known) {
      io.stderr.write(`slipway ${name}: error ${known.code}: ${known.message}\n`);
      return exitStatusOf(known.code);
    }
    throw err;
  }
}
