/**
 * `slipway --help` is made from the commands themselves: every command is listed, and each form's
 * usage is the very usage that command prints when it is used wrongly.
 */
import { describe, expect, it } from 'vitest';
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

  it('is printed by --help (exit 0) and with no command (exit 2)', async () => {
    const io = captureIO();
    expect(await main(['--help'], io)).toBe(0);
    expect(io.out).toBe(help);
    expect(await main([], captureIO())).toBe(2);
  });
});
