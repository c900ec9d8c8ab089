/**
 * `slipway doctor [--json]`: what this host offers and what slipway will use (src/doctor/checks.ts),
 * a table for people or one JSON object for scripts. Exits 0 whatever it finds: a "no" is
 * information with a consequence, not a failure.
 */
import { loadConfig } from '../config.js';
import { runDoctor, type Check } from '../doctor/checks.js';
import { parseCommand, type CommandIO, type CommandSpec } from './args.js';

const USAGE = 'slipway doctor [--json] [--cache-dir DIR]';

const MARK: Record<Check['status'], string> = { ok: 'yes', no: 'NO', info: '-' };

/** Render checks as an aligned table; a "no" gets its consequence and fix on indented lines below. */
export function renderChecks(checks: Check[], width = 100): string {
  const w1 = Math.max(...checks.map((c) => c.what.length), 5);
  const lines = [`${'check'.padEnd(w1)}  ok   found`, `${'-'.repeat(w1)}  ---  ${'-'.repeat(Math.max(5, width - w1 - 7))}`];
  for (const c of checks) {
    lines.push(`${c.what.padEnd(w1)}  ${MARK[c.status].padEnd(3)}  ${c.value}`);
    const pad = ' '.repeat(w1 + 7);
    if (c.consequence) lines.push(`${pad}so: ${c.consequence}`);
    if (c.fix && c.status !== 'ok') lines.push(`${pad}fix: ${c.fix}`);
  }
  return `${lines.join('\n')}\n`;
}

export async function doctorCommand(argv: string[], io: CommandIO): Promise<number> {
  const { values } = parseCommand('doctor', argv, { json: { type: 'boolean' }, 'cache-dir': { type: 'string' } }, { min: 0, max: 0, usage: USAGE });
  const config = loadConfig(process.env, values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {});
  const report = await runDoctor({ cacheDir: config.cacheDir });
  if (values.json) {
    io.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return 0;
  }
  io.stdout.write(renderChecks(report.checks));
  io.stdout.write(`\nslipway will use: qemu with ${report.accel.accel} (${report.accel.reason})\n`);
  return 0;
}

export const DOCTOR_COMMAND: CommandSpec = {
  name: 'doctor',
  help: [{ usage: USAGE, summary: 'what this host offers (KVM, QEMU features, vsock, hugepages, ...) and what slipway will use' }],
  run: doctorCommand,
};
