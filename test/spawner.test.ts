/**
 * Detached children started through slipway-spawn (vhost-user-blk/spawn.c, its ASan+UBSan build
 * here) rather than by forking this process: output files, exit codes and signals, errors, their
 * own session, the helper's death, malformed requests; and the child_process fallback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnDetached, type DetachedChild } from '../src/util/spawner.js';
import { tempDir } from './helpers/temp-dirs.js';

const VUB = fileURLToPath(new URL('../vhost-user-blk/', import.meta.url));
const HELPER = join(VUB, 'build', 'asan', 'slipway-spawn');
const ASAN_ENV = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:halt_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
const work = tempDir('slipway-spawner-');

beforeAll(() => {
  execFileSync('make', ['-s', '-C', VUB, 'asan'], { stdio: 'inherit' });
});

afterAll(() => {
});

/** /proc/<pid>/stat's fields after the command name: [state, ppid, pgrp, session, ...] */
function statFields(pid: number): string[] {
  const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return s.slice(s.lastIndexOf(')') + 2).split(' ');
}

/** The helper this test process started (its child running HELPER). */
function helperPids(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    try {
      return statFields(pid)[1] === String(process.pid) && readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0')[0] === HELPER;
    } catch {
      return false;
    }
  });
}

const viaHelper = (args: string[], opts: { out?: string; err?: string; env?: NodeJS.ProcessEnv } = {}): Promise<DetachedChild> =>
  spawnDetached(args[0] as string, args.slice(1), { helper: HELPER, env: opts.env ?? ASAN_ENV, stdout: opts.out ? { path: opts.out } : 'ignore', stderr: opts.err ? { path: opts.err, append: true } : 'ignore' });

describe('spawnDetached through slipway-spawn', () => {
  it('runs the child with its output in files, and reports its exit code', async () => {
    const out = join(work, 'out.txt');
    const err = join(work, 'err.txt');
    writeFileSync(out, 'old contents that are truncated\n');
    writeFileSync(err, 'kept\n');
    const child = await viaHelper(['sh', '-c', 'echo "to stdout $FOO"; echo to stderr >&2; exit 3'], { out, err, env: { ...ASAN_ENV, FOO: 'bar' } });
    expect(child.via).toBe('slipway-spawn');
    expect(await child.exited).toEqual({ code: 3, signal: null });
    expect(child.exit).toEqual({ code: 3, signal: null });
    expect(child.running()).toBe(false);
    expect(readFileSync(out, 'utf8')).toBe('to stdout bar\n');
    expect(readFileSync(err, 'utf8')).toBe('kept\nto stderr\n');
  });

  it('starts the child in its own session, as the helper\'s child (this process does not fork it), stdin on /dev/null', async () => {
    const out = join(work, 'stdin.txt');
    const child = await viaHelper(['sh', '-c', 'cat; echo end; exec sleep 30'], { out });
    try {
      // cat ends at once: its stdin is /dev/null
      await expect.poll(() => readFileSync(out, 'utf8'), { timeout: 10_000 }).toBe('end\n');
      const [, ppid, , session] = statFields(child.pid);
      expect(session).toBe(String(child.pid));
      expect(ppid).not.toBe(String(process.pid));
      expect(helperPids()).toContain(Number(ppid));
      expect(child.running()).toBe(true);
    } finally {
      expect(child.kill('SIGTERM')).toBe(true);
    }
    expect(await child.exited).toEqual({ code: null, signal: 'SIGTERM' });
    expect(child.kill('SIGTERM')).toBe(false);
  });

  it('rejects a binary that cannot be run as child_process.spawn does (code ENOENT)', async () => {
    const err = await viaHelper([join(work, 'no-such-binary')]).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(err?.code).toBe('ENOENT');
    expect(err?.message).toBe(`spawn ${join(work, 'no-such-binary')} ENOENT`);
    // an output file that cannot be opened is refused the same way
    const dirErr = await viaHelper(['true'], { out: join(work, 'missing-dir', 'out') }).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(dirErr?.code).toBe('ENOENT');
  });

  it('keeps many spawns at once apart', async () => {
    const children = await Promise.all(Array.from({ length: 16 }, (_, i) => viaHelper(['sh', '-c', `exit ${i}`])));
    expect(new Set(children.map((c) => c.pid)).size).toBe(16);
    expect((await Promise.all(children.map((c) => c.exited))).map((e) => e.code)).toEqual(Array.from({ length: 16 }, (_, i) => i));
  });

  it('when the helper dies, a running child\'s end is still seen, and the next spawn starts another helper', async () => {
    const child = await viaHelper(['sleep', '30']);
    const [helper] = helperPids();
    expect(helper).toBeDefined();
    process.kill(helper as number, 'SIGKILL');
    // the child is init's now; it runs on
    await expect.poll(() => statFields(child.pid)[1] !== String(helper), { timeout: 5000 }).toBe(true);
    expect(child.running()).toBe(true);
    process.kill(child.pid, 'SIGTERM');
    expect(await child.exited).toEqual({ code: null, signal: null }); // seen by polling: no status
    const next = await viaHelper(['sh', '-c', 'exit 5']);
    expect(next.via).toBe('slipway-spawn');
    expect(await next.exited).toEqual({ code: 5, signal: null });
    expect(helperPids()).not.toContain(helper);
  });

  it('finds the program in the child\'s PATH and takes relative paths from this process\'s working directory, as spawn does', async () => {
    const bin = join(work, 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'slipway-test-tool'), '#!/bin/sh\necho "tool in $(pwd)"\nexit 42\n', { mode: 0o755 });
    const cwd = process.cwd();
    process.chdir(work);
    try {
      const child = await spawnDetached('slipway-test-tool', [], { helper: HELPER, env: { ...ASAN_ENV, PATH: `${bin}:${process.env.PATH ?? ''}` }, stdout: { path: 'relative-out.txt' }, stderr: 'ignore' });
      expect(child.via).toBe('slipway-spawn');
      expect(await child.exited).toEqual({ code: 42, signal: null });
    } finally {
      process.chdir(cwd);
    }
    expect(readFileSync(join(work, 'relative-out.txt'), 'utf8')).toBe(`tool in ${work}\n`);
  });

  it('a request past the helper\'s bounds goes to child_process.spawn rather than failing', async () => {
    const child = await spawnDetached('sh', ['-c', 'exit $(( $# % 200 ))', 'sh', ...Array.from({ length: 9000 }, () => 'x')], { helper: HELPER, stdout: 'ignore', stderr: 'ignore' });
    expect(child.via).toBe('node');
    expect(await child.exited).toEqual({ code: 9000 % 200, signal: null });
  });

  it('an answer the helper wrote just before it exited is read, not lost to its exit', async () => {
    // a stand-in helper that answers the first request with its own pid and exits at once
    const fake = join(work, 'fake-helper.sh');
    writeFileSync(fake, '#!/bin/sh\necho "ok 1 $$"\nexit 0\n', { mode: 0o755 });
    for (let i = 0; i < 5; i++) {
      const copy = join(work, `fake-helper-${i}.sh`);
      writeFileSync(copy, readFileSync(fake), { mode: 0o755 });
      const child = await spawnDetached('true', [], { helper: copy, stdout: 'ignore', stderr: 'ignore' });
      expect(child.via).toBe('slipway-spawn');
      expect(child.pid).toBeGreaterThan(0);
      // its exit is then seen by polling the pid, the helper being gone
      expect(await child.exited).toEqual({ code: null, signal: null });
    }
  });

  it('the build the daemon uses (not only the sanitizer build) answers with the child\'s own pid', async () => {
    execFileSync('make', ['-s', '-C', VUB], { stdio: 'inherit' });
    const helper = join(VUB, 'build', 'slipway-spawn');
    // the child says its own pid ($$ of the shell the helper started), read once it has exited:
    // /proc/<pid>/cmdline can still be empty just after the exec a vfork-style spawn returns from
    const out = join(work, 'own-pid.txt');
    const said = await spawnDetached('sh', ['-c', 'echo $$'], { helper, stdout: { path: out }, stderr: 'ignore' });
    expect(said.pid).toBeGreaterThan(0);
    expect(await said.exited).toEqual({ code: 0, signal: null });
    expect(readFileSync(out, 'utf8').trim()).toBe(String(said.pid));
    // and a signal sent through the answer reaches that child
    const child = await spawnDetached('sleep', ['30'], { helper, stdout: 'ignore', stderr: 'ignore' });
    expect(child.pid).toBeGreaterThan(0);
    child.kill('SIGKILL');
    expect(await child.exited).toEqual({ code: null, signal: 'SIGKILL' });
  });

  it('refuses an answer whose pid is not a positive integer (kill() must never signal a group or every process)', async () => {
    for (const [i, pid] of ['-1', '0', 'x'].entries()) {
      const fake = join(work, `bad-pid-helper-${i}.sh`);
      writeFileSync(fake, `#!/bin/sh\necho "ok 1 ${pid}"\nexec sleep 5\n`, { mode: 0o755 });
      const err = await spawnDetached('true', [], { helper: fake, stdout: 'ignore', stderr: 'ignore' }).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
      expect(err?.code).toBe('EPROTO');
    }
  });

  it('falls back to child_process.spawn where the helper is not built', async () => {
    const out = join(work, 'fallback.txt');
    const child = await spawnDetached('sh', ['-c', 'echo fallback; exit 4'], { helper: join(work, 'not-built'), stdout: { path: out }, stderr: 'ignore' });
    expect(child.via).toBe('node');
    expect(await child.exited).toEqual({ code: 4, signal: null });
    expect(readFileSync(out, 'utf8')).toBe('fallback\n');
  });
});

describe('slipway-spawn refuses malformed requests', () => {
  /** Send raw frames to a fresh helper; its answers, its exit code and its stderr once stdin closes. */
  async function talk(frames: Buffer[]): Promise<{ answers: string[]; code: number | null; stderr: string }> {
    const proc = spawn(HELPER, [], { stdio: ['pipe', 'pipe', 'pipe'], env: ASAN_ENV });
    let out = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    for (const f of frames) proc.stdin.write(f);
    proc.stdin.end();
    const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
    return { answers: out.split('\n').filter(Boolean), code, stderr };
  }
  const frame = (strings: string[], raw?: Buffer): Buffer => {
    const body = raw ?? Buffer.from(`${strings.join('\0')}\0`);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(body.length);
    return Buffer.concat([len, body]);
  };

  it('answers EINVAL to bad counts, bad outputs and unterminated strings, and goes on serving', async () => {
    const r = await talk([
      frame(['1', '/', '-', '-', '5', 'true']), // argc past the end
      frame(['2', '/', '-', '-', '0', '0']), // no argv[0]
      frame(['3', '/', '-', '-', '1', 'true', '1']), // envc past the end
      frame(['4', '/', '-', '-', '1', 'true', '0', 'EXTRA']), // strings after the environment
      frame(['5', '/', 'x:/tmp/out', '-', '1', 'true', '0']), // not "-", "w:" or "a:"
      frame(['6', '/', '-', '-', '-1', 'true', '0']),
      frame([], Buffer.from('7\x00/\x00-\x00-\x001\x00true\x000')), // the last string not NUL-terminated
      frame([], Buffer.alloc(0)),
      frame(['not-a-number', '/', '-', '-', '9', 'true']),
      frame(['10', 'relative', '-', '-', '1', 'true', '0']), // a working directory that is not absolute
      frame(['11', '/', '-', '-', String(8193), ...Array.from({ length: 8193 }, () => 'x'), '0']), // more strings than its bound
      frame(['8', '/', '-', '-', '1', 'true', '0']), // a good one after all that
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    const einval = 22;
    expect(r.answers.filter((a) => a.startsWith('err '))).toEqual([
      `err 1 ${einval}`, `err 2 ${einval}`, `err 3 ${einval}`, `err 4 ${einval}`, `err 5 ${einval}`, `err 6 ${einval}`, `err 7 ${einval}`, `err ? ${einval}`, `err ? ${einval}`, `err 10 ${einval}`, `err 11 ${einval}`,
    ]);
    expect(r.answers.some((a) => /^ok 8 \d+$/.test(a))).toBe(true);
  });

  it('refuses a frame longer than its bound with E2BIG, reads past it, and goes on serving', async () => {
    const huge = Buffer.alloc(4 + 64);
    huge.writeUInt32LE((1 << 20) + 1);
    huge.write('12\0', 4);
    const rest = Buffer.alloc((1 << 20) + 1 - 64, 0x61);
    const r = await talk([huge, rest, frame(['13', '/', '-', '-', '1', 'true', '0'])]);
    expect(r.code).toBe(0);
    expect(r.answers[0]).toBe('err 12 7');
    expect(r.answers.some((a) => /^ok 13 \d+$/.test(a))).toBe(true);
  });

  it('ignores SIGINT, SIGTERM and SIGHUP (a terminal\'s Ctrl-C is for the daemon) and ends with its stdin', async () => {
    const proc = spawn(HELPER, [], { stdio: ['pipe', 'pipe', 'inherit'], env: ASAN_ENV });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise((r) => proc.once('exit', (code, signal) => r(signal ?? code)));
    // once it has answered a request its handlers are in place
    proc.stdin.write(frame(['1', '/', '-', '-', '1', 'true', '0']));
    await expect.poll(() => out, { timeout: 10_000 }).toMatch(/^ok 1 \d+/);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) proc.kill(sig);
    proc.stdin.write(frame(['2', '/', '-', '-', '1', 'true', '0']));
    await expect.poll(() => out, { timeout: 10_000 }).toMatch(/\nok 2 \d+/);
    proc.stdin.end();
    expect(await exited).toBe(0);
  });
});
