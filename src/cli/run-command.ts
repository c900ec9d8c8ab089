import { SlipwayError } from '../errors.js';
import { runInVm } from '../vmm/run.js';
import type { NetSpec } from '../vmm/driver.js';
import { parseCommand, parseNonNegativeInt, parseSize } from './args.js';
import type { CommandIO } from './disk-commands.js';

const USAGE = 'slipway run --disk <raw-file> [--hostname H] [--env K=V]... [--cpus N] [--memory 512M] [--net none|user|tap:<ifname>] [--timings] [--keep] -- <cmd...>';

export function parseNet(text: string | undefined): NetSpec {
  if (text === undefined || text === 'none') return { mode: 'none' };
  if (text === 'user') return { mode: 'user' };
  if (text.startsWith('tap:') && /^tap:[A-Za-z0-9._-]{1,15}$/.test(text)) return { mode: 'tap', ifname: text.slice(4) };
  throw new SlipwayError('INVALID_ARGUMENT', `--net must be none, user or tap:<ifname> (got ${text})`);
}

export function parseEnv(list: string[] | undefined): Record<string, string> | undefined {
  if (!list || list.length === 0) return undefined;
  const env: Record<string, string> = {};
  for (const kv of list) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new SlipwayError('INVALID_ARGUMENT', `--env ${JSON.stringify(kv)} is not K=V`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return env;
}

/** slipway run: boot a VM, run one command through the agent, print its output, exit with its status. */
export async function runCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values, positionals } = parseCommand('run', argv, {
    disk: { type: 'string' }, hostname: { type: 'string' }, env: { type: 'string', multiple: true }, cpus: { type: 'string' },
    memory: { type: 'string' }, net: { type: 'string' }, timings: { type: 'boolean' }, keep: { type: 'boolean' }, cwd: { type: 'string' },
  }, { min: 1, max: 10_000, usage: USAGE });
  if (!values.disk) throw new SlipwayError('USAGE', `run: --disk is required until OCI references are supported here\nusage: ${USAGE}`);
  const cpus = values.cpus ? parseNonNegativeInt(values.cpus, '--cpus') : 1;
  if (cpus < 1 || cpus > 64) throw new SlipwayError('INVALID_ARGUMENT', `--cpus must be 1 to 64 (got ${cpus})`);
  const memoryMiB = values.memory ? Math.floor(parseSize(/^\d+$/.test(values.memory) ? `${values.memory}M` : values.memory, '--memory') / (1 << 20)) : 512;
  if (memoryMiB < 64) throw new SlipwayError('INVALID_ARGUMENT', `--memory must be at least 64M (got ${values.memory})`);
  const controller = new AbortController();
  const onSigint = (): void => controller.abort();
  process.once('SIGINT', onSigint);
  process.once('SIGTERM', onSigint);
  try {
    const env = parseEnv(values.env);
    const result = await runInVm({
      disks: [{ kind: 'file', path: values.disk }],
      argv: positionals,
      cpus,
      memoryMiB,
      net: parseNet(values.net),
      signal: controller.signal,
      keep: values.keep === true,
      stdout: (d) => io.stdout.write(d),
      stderr: (d) => io.stderr.write(d),
      ...(env ? { env } : {}),
      ...(values.hostname ? { hostname: values.hostname } : {}),
      ...(values.cwd ? { cwd: values.cwd } : {}),
      onKept: (k) => io.stderr.write(`slipway: VM kept running: pid ${k.pid}, work directory ${k.workDir}\n`),
    });
    if (values.timings) {
      io.stderr.write(`${JSON.stringify({ accel: result.accel, hostMs: result.phasesMs, guestMs: result.guestPhasesMs })}\n`);
    }
    return result.signal ? 128 + result.signal : result.exitCode;
  } catch (err) {
    if (controller.signal.aborted) {
      io.stderr.write('slipway run: interrupted; the VM was stopped and removed\n');
      return 130;
    }
    throw err;
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigint);
  }
}
