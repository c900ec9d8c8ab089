/**
 * `slipway daemon` (run the host daemon) and `slipway vm ...` (drive one through its API with
 * the typed client). Where the daemon is: --daemon <socket path | http(s)://host:port>, else
 * $SLIPWAY_DAEMON, else the default socket; over TCP the token comes from --token-file or
 * $SLIPWAY_API_TOKEN.
 */
import { existsSync } from 'node:fs';
import { readTokenFile } from '../api/location.js';
import { SlipwayClient } from '../client/index.js';
import { defaultSocketPath, defaultStateDir, envVar, loadConfig } from '../config.js';
import { SlipwayError } from '../errors.js';
import { createLogger } from '../util/log.js';
import { withRepositoryTagsOf } from './explain-unreadable.js';
import { parseCommand, parseCpus, parseEnv, parseListen, parseNonNegativeInt, parseVmMemoryMiB, type CommandIO, type CommandSpec } from './args.js';

const DAEMON_USAGE = 'slipway daemon [--socket PATH] [--listen HOST:PORT --token-file FILE] [--state-dir DIR] [--cache-dir DIR] [--max-boots N] [--max-vms N] [--stop-vms-on-exit]';
const VM_USAGE = `slipway vm create <image> [--cpus N] [--memory 512M] [--env K=V]... [--net none|user] [--vmm qemu|cloud-hypervisor]
       slipway vm ls | show <id> | rm <id>
       slipway vm exec <id> [--env K=V]... [--cwd DIR] [--timeout SECONDS] -- <cmd...>
       slipway vm snapshot <id> <ref> [--memory]
common: --daemon <socket|http://host:port> (or SLIPWAY_DAEMON), --token-file FILE (or SLIPWAY_API_TOKEN)`;

/** slipway daemon: serve the API until SIGINT/SIGTERM. */
export async function daemonCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values } = parseCommand('daemon', argv, {
    socket: { type: 'string' }, listen: { type: 'string' }, 'token-file': { type: 'string' }, 'state-dir': { type: 'string' }, 'cache-dir': { type: 'string' },
    'max-boots': { type: 'string' }, 'max-vms': { type: 'string' }, 'stop-vms-on-exit': { type: 'boolean' },
  }, { min: 0, max: 0, usage: DAEMON_USAGE });
  const logger = createLogger({ out: io.stderr, level: 'info', base: { component: 'daemon' } });
  const token = values['token-file'] ? readTokenFile(values['token-file']) : envVar('SLIPWAY_API_TOKEN');
  const limits = {
    ...(values['max-boots'] ? { maxConcurrentBoots: Math.max(1, parseNonNegativeInt(values['max-boots'], '--max-boots')) } : {}),
    ...(values['max-vms'] ? { maxVms: Math.max(1, parseNonNegativeInt(values['max-vms'], '--max-vms')) } : {}),
  };
  // the server side (hono, zod, SQLite state) is loaded only by the daemon itself
  const { startDaemon } = await import('../api/daemon.js');
  const daemon = await startDaemon({
    config: loadConfig(process.env, values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {}),
    logger,
    socketPath: values.socket ?? defaultSocketPath(),
    stateDir: values['state-dir'] ?? defaultStateDir(),
    ...(values.listen ? { tcp: parseListen(values.listen) } : {}),
    ...(token ? { token } : {}),
    limits,
  });
  // a daemon must outlive a bug in one request's handling: log it rather than die with every VM's
  // miss server (the VMs themselves would run on, but their misses would fail until a restart)
  process.on('unhandledRejection', (err) => logger.error('unhandled rejection', { error: (err as Error)?.stack ?? String(err) }));
  // one line on stdout when ready, for supervisors and tests: where it listens
  io.stdout.write(`${JSON.stringify({ ready: true, socket: daemon.socketPath, tcp: daemon.tcpAddress ?? null, pid: process.pid })}\n`);
  const why = await new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  logger.info('stopping', { signal: why });
  await daemon.close({ stopVms: values['stop-vms-on-exit'] === true });
  return 0;
}

/** The client for the daemon named by --daemon, $SLIPWAY_DAEMON or the default socket. */
export function daemonClient(daemon: string | undefined, tokenFile: string | undefined): SlipwayClient {
  const where = daemon ?? envVar('SLIPWAY_DAEMON') ?? defaultSocketPath();
  if (/^https?:\/\//.test(where)) {
    const token = tokenFile ? readTokenFile(tokenFile) : envVar('SLIPWAY_API_TOKEN');
    if (!token) throw new SlipwayError('USAGE', `the daemon at ${where} is over TCP: give --token-file or SLIPWAY_API_TOKEN`);
    return new SlipwayClient({ url: where, token });
  }
  return new SlipwayClient({ socketPath: where });
}

/** Whether a daemon seems to run where the CLI would look (the socket exists, or SLIPWAY_DAEMON is set). */
export function daemonConfigured(): boolean {
  return envVar('SLIPWAY_DAEMON') !== undefined || existsSync(defaultSocketPath());
}

const json = (io: CommandIO, v: unknown): void => void io.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** slipway vm <create|ls|show|exec|snapshot|rm>. */
export async function vmCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  const dd = rest.indexOf('--');
  let head = dd >= 0 ? rest.slice(0, dd) : rest;
  // `vm snapshot ID REF --memory` is a flag (for create, --memory SIZE is the VM's RAM)
  const withMemory = sub === 'snapshot' && head.includes('--memory');
  if (withMemory) head = head.filter((a) => a !== '--memory');
  const { values, positionals } = parseCommand(`vm ${sub ?? ''}`.trim(), head, {
    daemon: { type: 'string' }, 'token-file': { type: 'string' }, cpus: { type: 'string' }, memory: { type: 'string' }, env: { type: 'string', multiple: true },
    net: { type: 'string' }, vmm: { type: 'string' }, cwd: { type: 'string' }, timeout: { type: 'string' },
  }, { min: 0, max: 2, usage: VM_USAGE });
  const client = daemonClient(values.daemon, values['token-file']);
  const need = (n: number): string[] => {
    if (positionals.length !== n) throw new SlipwayError('USAGE', `vm ${sub}: expected ${n} argument(s)\nusage: ${VM_USAGE}`);
    const empty = positionals.findIndex((p) => p.trim() === '');
    if (empty >= 0) throw new SlipwayError('USAGE', `vm ${sub}: argument ${empty + 1} is empty (a shell variable that was never set?)\nusage: ${VM_USAGE}`);
    return positionals;
  };
  try {
    switch (sub) {
      case 'create': {
        const [image] = need(1);
        const env = parseEnv(values.env);
        const vm = await client.createVm({
          image: image as string,
          ...(values.cpus ? { cpus: parseCpus(values.cpus) } : {}),
          ...(values.memory ? { memoryMiB: parseVmMemoryMiB(values.memory) } : {}),
          ...(env ? { env } : {}),
          ...(values.net ? { net: values.net as 'none' | 'user' } : {}),
          ...(values.vmm ? { vmm: values.vmm as 'qemu' | 'cloud-hypervisor' } : {}),
        }).catch(async (err: unknown) => {
          // a missing tag: the tags there are, asked of the registry from here
          throw await withRepositoryTagsOf(err, image as string, () => ({ plainHttpHosts: loadConfig(process.env).plainHttpRegistries }));
        });
        json(io, vm);
        return 0;
      }
      case 'ls':
        need(0);
        json(io, await client.listVms());
        return 0;
      case 'show':
        json(io, await client.getVm(need(1)[0] as string));
        return 0;
      case 'rm':
        await client.deleteVm(need(1)[0] as string);
        return 0;
      case 'snapshot': {
        const [id, ref] = need(2);
        json(io, withMemory ? await client.snapshot(id as string, ref as string, { memory: true }) : await client.snapshot(id as string, ref as string));
        return 0;
      }
      case 'exec': {
        const [id] = need(1);
        if (dd < 0 || dd === rest.length - 1) throw new SlipwayError('USAGE', `vm exec: give the command after --\nusage: ${VM_USAGE}`);
        const env = parseEnv(values.env);
        const r = await client.exec(id as string, {
          argv: rest.slice(dd + 1),
          ...(env ? { env } : {}),
          ...(values.cwd ? { cwd: values.cwd } : {}),
          ...(values.timeout ? { timeoutMs: parseNonNegativeInt(values.timeout, '--timeout') * 1000 } : {}),
        }, { onStdout: (b) => io.stdout.write(b), onStderr: (b) => io.stderr.write(b), collect: false });
        // (its first process may have exited 0 while a background job kept its output open)
        if (r.timedOut) {
          io.stderr.write(`slipway vm exec: the command ran past --timeout ${values.timeout} s and was killed (SIGKILL)\n`);
          return 128 + 9;
        }
        return r.signal ? 128 + r.signal : r.exitCode;
      }
      default:
        throw new SlipwayError('USAGE', `vm: ${sub ? `unknown subcommand ${JSON.stringify(sub)}` : 'give a subcommand'}\nusage: ${VM_USAGE}`);
    }
  } finally {
    await client.close();
  }
}

export const DAEMON_COMMANDS: CommandSpec[] = [
  { name: 'daemon', help: [{ usage: DAEMON_USAGE, summary: 'the host daemon: an HTTP API for schedulers (docs/api.md)' }], run: daemonCommand },
  { name: 'vm', help: [{ usage: VM_USAGE, summary: 'drive VMs through the daemon' }], run: vmCommand },
];
