/**
 * `slipway --help` is made from the commands themselves: every command is listed, and each form's
 * usage is the very usage that command prints when it is used wrongly.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers/images.js';
import { COMMANDS, main, usageText } from '../src/cli/main.js';
import { captureIO } from './helpers/cli.js';

describe('slipway --help', () => {
  const help = usageText();

  it.each(COMMANDS.map((c) => [c.name, c] as const))('lists %s with every form of its usage', (_name, command) => {
    for (const { usage, summary } of command.help) {
      for (const line of usage.split('\n')) expect(help).toContain(line.trim().replace(/^slipway /, ''));
      expect(help).toContain(summary);
    }
  });

  it.each(COMMANDS.filter((c) => !['cache', 'vm'].includes(c.name)).map((c) => [c.name] as const))('%s prints the usage --help lists when given an unknown option', async (name) => {
    const io = captureIO();
    const args = ['kernel', 'guest', 'rootfs'].includes(name) ? [name, 'build', '--no-such-option'] : [name, '--no-such-option'];
    expect(await main(args, io)).toBe(2);
    const usage = /usage: (.*)/.exec(io.err)?.[1];
    expect(usage).toBeDefined();
    expect(help).toContain((usage as string).replace(/^slipway /, ''));
  });

  it('names an unknown option and the option it most likely meant', async () => {
    for (const [argv, given, meant] of [
      [['push', 'disk.img', 'oci:/tmp/x:v1', '--chunksize', '64K'], '--chunksize', '--chunk-size'],
      [['serve', 'x:v1', '--socket', '/tmp/s', '--prefech', 'all'], '--prefech', '--prefetch'],
      [['push', 'disk.img', 'oci:/tmp/x:v1', '--plain'], '--plain', '--plain-http'],
    ] as const) {
      const io = captureIO();
      expect(await main([...argv], io)).toBe(2);
      expect(io.err).toContain(`unknown option ${given} (did you mean ${meant}?)`);
    }
    const far = captureIO();
    expect(await main(['push', 'disk.img', 'oci:/tmp/x:v1', '--frobnicate'], far)).toBe(2);
    expect(far.err).toContain('unknown option --frobnicate\nusage: ');
  });

  it('is printed by --help (exit 0) and with no command (exit 2)', async () => {
    const io = captureIO();
    expect(await main(['--help'], io)).toBe(0);
    expect(io.out).toBe(help);
    expect(await main([], captureIO())).toBe(2);
  });

  it.each(COMMANDS.map((c) => [c.name, c] as const))('%s --help and help %s print that command\'s usage on stdout, exit 0', async (name, command) => {
    for (const argv of [[name, '--help'], [name, '-h'], ['help', name]]) {
      const io = captureIO();
      expect(await main(argv, io), `${argv.join(' ')}: ${io.err}`).toBe(0);
      expect(io.err).toBe('');
      for (const { usage, summary } of command.help) {
        for (const line of usage.split('\n')) expect(io.out).toContain(line.trim());
        expect(io.out).toContain(summary);
      }
      // that command's, not everyone's
      for (const other of COMMANDS.filter((c) => c !== command)) {
        for (const { summary } of other.help) if (!command.help.some((h) => h.summary === summary)) expect(io.out).not.toContain(summary);
      }
    }
  });

  it('help of an unknown command says so (exit 2)', async () => {
    const io = captureIO();
    expect(await main(['help', 'no-such-command'], io)).toBe(2);
    expect(io.err).toMatch(/unknown command "no-such-command"/);
  });

  it('--version and version print slipway and package.json\'s version, exit 0', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', 'version']) {
      const io = captureIO();
      expect(await main([flag], io)).toBe(0);
      expect(io.out).toBe(`slipway ${version}\n`);
    }
  });

  it('a --help after -- belongs to the guest command, not to slipway', async () => {
    const io = captureIO();
    // reaches the run command, which fails on the missing disk file before anything starts
    expect(await main(['run', '--disk', '/nonexistent/slipway-help.img', '--', 'ls', '--help'], io)).toBe(1);
    expect(io.err).toMatch(/FILE_NOT_FOUND/);
  });
});

describe('vm commands', () => {
  it('name an empty argument (a VM id from a variable never set) instead of sending it', async () => {
    const io = captureIO();
    expect(await main(['vm', 'exec', '', '--daemon', '/nonexistent/slipway.sock', '--', 'true'], io)).toBe(2);
    expect(io.err).toContain('vm exec: argument 1 is empty');
  });
});

describe('the slipway executable', () => {
  it('runs by itself (its #! line) under the node flags that line names', () => {
    const first = readFileSync('bin/slipway.js', 'utf8').split('\n', 1)[0] ?? '';
    const flags = /^#!\/usr\/bin\/env -S node (.+)$/.exec(first)?.[1]?.split(' ') ?? [];
    expect(flags).toContain('--initial-old-space-size=64');
    // a preload that reports the flags node was started with, as the process sees them
    const probe = join(tempDir('slipway-execargv-'), 'probe.cjs');
    writeFileSync(probe, "process.stderr.write('execArgv ' + JSON.stringify(process.execArgv) + '\\n');\n");
    const run = spawnSync('bin/slipway.js', ['--version'], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: `--require=${probe}` } });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^slipway \d/);
    const seen = JSON.parse(/^execArgv (.*)$/m.exec(run.stderr)?.[1] ?? '[]') as string[];
    expect(seen).toEqual(flags);
  });
});
