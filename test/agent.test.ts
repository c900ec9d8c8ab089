/**
 * The guest agent on the host: the ASan+UBSan build of guest/agent.c serving a Unix socket (and,
 * in one test, a Unix socket standing in for the virtio-serial port), driven by AgentClient. No VM:
 * everything the agent does (exec, files, framing, flow control) works the same outside one.
 * The last test checks the agent survived everything and the sanitizers stayed quiet.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { MAX_PAYLOAD, MessageType, encodeFrame, encodeString, encodeStringList, u32, u64 } from '../src/guest/agent-protocol.js';
import { SlipwayError, type ErrorCode } from '../src/errors.js';
import { tempDir } from './helpers/temp-dirs.js';

const GUEST_DIR = fileURLToPath(new URL('../guest/', import.meta.url));
const AGENT_BIN = join(GUEST_DIR, 'build', 'asan', 'slipway-agent');

interface TestAgent {
  proc: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startAgent(args: string[]): TestAgent {
  const proc = spawn(AGENT_BIN, ['--no-vsock', '--no-shutdown-signal', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      ...process.env,
      SLIPWAY_AGENT_TEST: 'inherited',
      // leaks are checked at the clean exit on SIGTERM; reports go to stderr, which is checked
      ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=0',
      UBSAN_OPTIONS: 'print_stacktrace=1',
    },
  });
  let stderr = '';
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (d: string) => {
    stderr += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return { proc, stderr: () => stderr, exited };
}

async function stopAgent(agent: TestAgent): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (agent.proc.exitCode === null && agent.proc.signalCode === null) agent.proc.kill('SIGTERM');
  return agent.exited;
}

function expectSanitizersQuiet(stderr: string): void {
  expect(stderr).not.toMatch(/ERROR: (AddressSanitizer|LeakSanitizer)/);
  expect(stderr).not.toMatch(/runtime error/);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** The state letter from /proc/PID/stat, or undefined when there is no such process. */
function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

async function expectAgentError(p: Promise<unknown>, errnoName: string, message?: RegExp, code: ErrorCode = 'AGENT_ERROR'): Promise<SlipwayError> {
  const err = await p.then(
    () => {
      throw new Error(`expected ${code} ${errnoName}, got success`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SlipwayError);
  const se = err as SlipwayError;
  expect(se.code, se.message).toBe(code);
  expect(se.context.errnoName, se.message).toBe(errnoName);
  if (message) expect(se.message).toMatch(message);
  return se;
}

const work = tempDir('slipway-agent-');
const bootTimes = join(work, 'boot-times');
const agentSock = join(work, 'agent.sock');
let agent: TestAgent;
let client: AgentClient;
const extraClients: AgentClient[] = [];

async function newClient(): Promise<AgentClient> {
  const c = await AgentClient.connectUnix(agentSock, { timeoutMs: 5000 });
  extraClients.push(c);
  return c;
}

beforeAll(async () => {
  execFileSync('make', ['-s', '-C', GUEST_DIR, 'asan'], { stdio: 'pipe' });
  // an unfinished last line (init rewriting the file) and junk lines are not reported
  writeFileSync(bootTimes, 'phase.init_start 1200\nphase.mounts 3400500\nnot a phase\nphase.bad 12x\nphase. 5\nphase.partial 99');
  agent = startAgent(['--no-serial', '--listen-unix', agentSock, '--boot-times', bootTimes]);
  client = await waitForAgent(() => AgentClient.connectUnix(agentSock, { timeoutMs: 1000 }), 20_000);
});

afterAll(async () => {
  for (const c of [client, ...extraClients]) await c?.close().catch(() => {});
  if (agent) await stopAgent(agent);
});

describe('slipway-agent over a Unix socket', () => {
  it('answers PING with the version, the boot phases init recorded and the uptime', async () => {
    const pong = await client.ping();
    expect(pong.version).toBe(1);
    expect(pong.phases).toEqual({ init_start: 1200, mounts: 3400500 });
    expect(pong.uptimeNs).toBeGreaterThan(0);
  });

  it('runs a program: stdout, stderr and the exit status', async () => {
    const r = await client.exec(['sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r).toEqual({ exitCode: 3, signal: 0, stdout: Buffer.from('out\n'), stderr: Buffer.from('err\n') });
  });

  it('streams output to callbacks as it comes', async () => {
    const seen: string[] = [];
    let doneYet = false;
    const r = await client.exec(['sh', '-c', 'echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three'], {
      onStdout: (b) => seen.push(`out:${b.toString()}${doneYet ? ' (late)' : ''}`),
      onStderr: (b) => seen.push(`err:${b.toString()}${doneYet ? ' (late)' : ''}`),
    });
    doneYet = true;
    // how reads split and interleave the bytes depends on timing; what each stream carries does not
    expect(seen[0]).toMatch(/^out:one\n/);
    expect(seen.filter((s) => s.startsWith('out:')).join('').replace(/out:/g, '')).toBe('one\nthree\n');
    expect(seen.filter((s) => s.startsWith('err:'))).toEqual(['err:two\n']);
    expect(r).toMatchObject({ exitCode: 0, stdout: Buffer.from('one\nthree\n'), stderr: Buffer.from('two\n') });
  });

  it('sends EXIT only after all output, even from a child that outlives the process', async () => {
    const r = await client.exec(['sh', '-c', '(sleep 0.3; echo late) & echo early']);
    expect(r.stdout.toString()).toBe('early\nlate\n');
    expect(r.exitCode).toBe(0);
  });

  it('pipes stdin from a buffer, a string and a stream', async () => {
    expect((await client.exec(['cat'], { stdin: Buffer.from('from a buffer\n') })).stdout.toString()).toBe('from a buffer\n');
    expect((await client.exec(['cat'], { stdin: 'from a string' })).stdout.toString()).toBe('from a string');
    const stream = Readable.from([Buffer.from('from '), Buffer.from('a '), Buffer.from('stream')]);
    expect((await client.exec(['cat'], { stdin: stream })).stdout.toString()).toBe('from a stream');
    // without stdin the program reads /dev/null
    expect((await client.exec(['cat'])).stdout.length).toBe(0);
  });

  it('pipes 5 MiB of stdin through cat intact, and takes stdin written piece by piece', async () => {
    const input = randomBytes(5 << 20);
    const r = await client.exec(['cat'], { stdin: input });
    expect(r.stdout.length).toBe(input.length);
    expect(sha256(r.stdout)).toBe(sha256(input));

    const proc = await client.spawn(['sh', '-c', 'read a; read b; echo "$b $a"'], { stdin: 'pipe' });
    await proc.writeStdin('first\n');
    await proc.writeStdin('second\n');
    await proc.closeStdin();
    await expect(proc.writeStdin('more')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect((await proc.done).stdout.toString()).toBe('second first\n');
  });

  it('holds back stdin for a process that is slow to read it, and loses none', async () => {
    const input = randomBytes(12 << 20);
    const r = await client.exec(['sh', '-c', 'sleep 0.5; exec cat'], { stdin: input });
    expect(sha256(r.stdout)).toBe(sha256(input));
  });

  it('a process that stops reading stdin does not break the connection', async () => {
    const r = await client.exec(['sh', '-c', 'head -c 10 >/dev/null; echo done'], { stdin: randomBytes(3 << 20) });
    expect(r.stdout.toString()).toBe('done\n');
    // an endless source is no longer read once the process has exited
    const endless = new Readable({ read() { this.push(Buffer.alloc(65536, 1)); } });
    expect((await client.exec(['head', '-c', '5'], { stdin: endless })).stdout).toEqual(Buffer.alloc(5, 1));
    await client.ping();
  });

  it('a stdin source that fails closes stdin, and the exec rejects with its error', async () => {
    let sent = false;
    const failing = new Readable({
      read() {
        if (!sent) {
          sent = true;
          this.push('partial input');
        } else this.destroy(new Error('source broke'));
      },
    });
    await expect(client.exec(['cat'], { stdin: failing })).rejects.toThrow('source broke');
    await client.ping();
  });

  it('sets the environment and the working directory', async () => {
    const dir = join(work, 'cwd test');
    mkdirSync(dir);
    const r = await client.exec(['sh', '-c', 'echo "$FOO"; echo "${SLIPWAY_AGENT_TEST:-unset}"; pwd'], { env: { FOO: 'bar baz', PATH: '/usr/bin:/bin' }, cwd: dir });
    expect(r.stdout.toString()).toBe(`bar baz\nunset\n${dir}\n`);
    // no env: the agent's own; no cwd: /
    const d = await client.exec(['sh', '-c', 'echo "$SLIPWAY_AGENT_TEST"; pwd']);
    expect(d.stdout.toString()).toBe('inherited\n/\n');
  });

  it('reports a program that cannot start with the errno: COMMAND_NOT_FOUND, COMMAND_NOT_EXECUTABLE (as a shell tells them apart), AGENT_ERROR for other steps', async () => {
    await expectAgentError(client.exec(['/nonexistent/program']), 'ENOENT', /^command not found in the guest \(no such program, or its #! interpreter or ELF loader is missing\): .*execve \/nonexistent\/program/, 'COMMAND_NOT_FOUND');
    await expectAgentError(client.exec(['no-such-program-on-path']), 'ENOENT', /execve no-such-program-on-path/, 'COMMAND_NOT_FOUND');
    await expectAgentError(client.exec(['true'], { cwd: '/nonexistent/dir' }), 'ENOENT', /chdir \/nonexistent\/dir/);
    await expectAgentError(client.exec([GUEST_DIR]), 'EACCES', /^the guest cannot execute the command: /, 'COMMAND_NOT_EXECUTABLE');
    const script = join(work, 'not-executable.sh');
    writeFileSync(script, '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    await expectAgentError(client.exec([script]), 'EACCES', undefined, 'COMMAND_NOT_EXECUTABLE');
    await client.ping();
  });

  it('delivers signals: sleep 100 killed by SIGTERM', async () => {
    const proc = await client.spawn(['sleep', '100']);
    expect(proc.pid).toBeGreaterThan(0);
    expect(procState(proc.pid)).toBeDefined();
    await proc.kill('SIGTERM');
    const r = await proc.done;
    expect(r).toMatchObject({ exitCode: -1, signal: 15 });
    await expectAgentError(proc.kill('SIGKILL'), 'ESRCH');
    // a bad signal number is the agent's EINVAL, and the process runs on
    const other = await client.spawn(['sleep', '100']);
    await expectAgentError(other.kill(1000), 'EINVAL');
    await other.kill(9);
    expect(await other.done).toMatchObject({ exitCode: -1, signal: 9 });
  });

  it('a kill reaches the whole command: a shell\'s child dies with it, and EXIT does not wait for the rest of the output', async () => {
    const t0 = Date.now();
    const shell = await client.spawn(['sh', '-c', 'sleep 30; echo done'], { collectOutput: true });
    await sleep(300);
    await shell.kill('SIGKILL');
    const r = await shell.done;
    expect(r).toMatchObject({ exitCode: -1, signal: 9 });
    expect(r.stdout.toString()).not.toContain('done');
    // SIGTERM to the group: the shell and its sleep both end
    const termed = await client.spawn(['sh', '-c', 'sleep 30; echo done']);
    await sleep(300);
    await termed.kill('SIGTERM');
    expect(await termed.done).toMatchObject({ exitCode: -1, signal: 15 });
    // the leader has exited while its child holds stdout: a kill still reaches the child
    const seen: string[] = [];
    const orphaned = await client.spawn(['sh', '-c', 'sleep 30 & echo started'], { onStdout: (b) => seen.push(b.toString()) });
    while (!seen.join('').includes('started')) await sleep(20);
    await sleep(200); // the shell has exited by now; its sleep holds the pipe
    await orphaned.kill('SIGKILL');
    expect((await orphaned.done).exitCode).toBe(0);
    // a process that left the group (its own session) and holds stdout: after a SIGKILL, EXIT comes anyway
    const pidFile = join(work, 'escaped.pid');
    const escaped = await client.spawn(['sh', '-c', `setsid sh -c 'echo $$ > ${pidFile}; exec sleep 30' & sleep 30`]);
    while (!existsSync(pidFile) || readFileSync(pidFile, 'utf8').trim() === '') await sleep(20);
    await escaped.kill('SIGKILL');
    expect(await escaped.done).toMatchObject({ exitCode: -1, signal: 9 });
    expect(Date.now() - t0).toBeLessThan(20_000);
    // the escaped sleep (its own session) is still running, and ours to clean up
    const escapedPid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(procState(escapedPid)).toBeDefined();
    process.kill(escapedPid, 'SIGKILL');
  });

  it('returns 10 MiB of output intact and before EXIT', async () => {
    const data = randomBytes(10 << 20);
    const file = join(work, 'ten-mib');
    writeFileSync(file, data);
    const r = await client.exec(['cat', file]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(data.length);
    expect(sha256(r.stdout)).toBe(sha256(data));
  });

  it('stops reading a process whose output the host does not take (backpressure)', async () => {
    const raw = connect(agentSock);
    await once(raw, 'connect');
    const c = new AgentClient(raw);
    extraClients.push(c);
    const total = 48 << 20;
    let received = 0;
    const proc = await c.spawn(['head', '-c', String(total), '/dev/zero'], { collectOutput: false, onStdout: (b) => (received += b.length) });
    raw.pause();
    await sleep(1000);
    // the agent holds at most a few MiB for the host, so head is blocked on its full pipe
    const state = procState(proc.pid);
    expect(state).toBeDefined();
    expect(state).not.toBe('Z');
    expect(received).toBeLessThan(total);
    // other connections are served meanwhile
    await client.ping();
    raw.resume();
    const r = await proc.done;
    expect(r.exitCode).toBe(0);
    expect(received).toBe(total);
  });

  it('runs several processes at once on one connection and on several', async () => {
    const job = (c: AgentClient, n: number) =>
      c.exec(['sh', '-c', 'for i in 1 2 3; do echo "$N-$i"; sleep 0.02; done; echo "e$N" >&2; exit $N'], { env: { N: String(n), PATH: '/usr/bin:/bin' } });
    const one = await Promise.all(Array.from({ length: 8 }, (_, n) => job(client, n)));
    one.forEach((r, n) => {
      expect(r.stdout.toString()).toBe(`${n}-1\n${n}-2\n${n}-3\n`);
      expect(r.stderr.toString()).toBe(`e${n}\n`);
      expect(r.exitCode).toBe(n);
    });
    const clients = await Promise.all([newClient(), newClient(), newClient()]);
    const results = await Promise.all(clients.flatMap((c, k) => [job(c, 10 + k), job(c, 20 + k), c.ping().then(() => job(c, 30 + k))]));
    expect(results.map((r) => r.exitCode)).toEqual([10, 20, 30, 11, 21, 31, 12, 22, 32]);
    for (const r of results) expect(r.stdout.toString().split('\n')).toHaveLength(4);
  });

  it('keeps running processes whose connection closed, and keeps serving', async () => {
    const marker = join(work, 'orphan-ran');
    const c = await newClient();
    await c.spawn(['sh', '-c', `sleep 0.3; echo lots of output; echo done > '${marker}'`]);
    await c.close();
    for (let waited = 0; !existsSync(marker) && waited < 10_000; waited += 50) await sleep(50);
    expect(readFileSync(marker, 'utf8')).toBe('done\n');
    await client.ping();
  });

  it('writes and reads files, small and 3 MiB, with the mode asked for', async () => {
    const small = join(work, 'small.txt');
    await client.writeFile(small, 'hello agent\n', 0o600);
    expect(readFileSync(small, 'utf8')).toBe('hello agent\n');
    expect(statSync(small).mode & 0o7777).toBe(0o600);
    expect((await client.readFile(small)).toString()).toBe('hello agent\n');
    // replacing truncates
    await client.writeFile(small, 'hi', 0o644);
    expect(readFileSync(small, 'utf8')).toBe('hi');
    expect(statSync(small).mode & 0o7777).toBe(0o644);

    const big = randomBytes(3 << 20);
    const bigPath = join(work, 'big.bin');
    await client.writeFile(bigPath, big);
    expect(sha256(readFileSync(bigPath))).toBe(sha256(big));
    expect(sha256(await client.readFile(bigPath))).toBe(sha256(big));

    // exactly 1 MiB: a full DATA, then an empty one for the end of the file
    const mib = join(work, 'one-mib.bin');
    writeFileSync(mib, big.subarray(0, 1 << 20));
    expect((await client.readFile(mib)).equals(big.subarray(0, 1 << 20))).toBe(true);
    await client.writeFile(join(work, 'empty'), Buffer.alloc(0));
    expect(statSync(join(work, 'empty')).size).toBe(0);
    expect((await client.readFile(join(work, 'empty'))).length).toBe(0);

    await expectAgentError(client.readFile(join(work, 'missing')), 'ENOENT');
    await expectAgentError(client.writeFile(join(work, 'no-dir', 'f'), 'x'), 'ENOENT');
    await expectAgentError(client.writeFile('relative/path', 'x'), 'EINVAL', /absolute/);
  });

  it('writes at an offset without truncating when the create flag is clear', async () => {
    const path = join(work, 'offset.txt');
    writeFileSync(path, 'abcdefgh');
    const reply = await client.request(MessageType.WRITE_FILE, 0, Buffer.concat([encodeString(path), u32(0o644), u64(2), Buffer.from('XY')]));
    expect(reply.type).toBe(MessageType.OK);
    expect(readFileSync(path, 'utf8')).toBe('abXYefgh');
    const data = await client.request(MessageType.READ_FILE, 0, Buffer.concat([encodeString(path), u64(6), u32(100)]));
    expect(data.payload.toString()).toBe('gh');
  });

  it('syncs, refuses to freeze what is not there, and accepts SHUTDOWN', async () => {
    await client.sync();
    await expectAgentError(client.fsfreeze(join(work, 'not-a-mount')), 'ENOENT');
    await expectAgentError(client.fsfreeze('relative'), 'EINVAL');
    await client.shutdown();
    await client.shutdown(true);
    await sleep(50);
    expect(agent.stderr()).toContain('power off requested; --no-shutdown-signal given');
    expect(agent.stderr()).toContain('reboot requested; --no-shutdown-signal given');
    await client.ping();
  });
});

describe('malformed requests', () => {
  const execPayload = (argv: Buffer, env = u32(0), cwd = u32(0)) => Buffer.concat([argv, env, cwd]);

  it('an unknown type gets ERROR and the connection goes on', async () => {
    await expectAgentError(client.request(0x55, 0, Buffer.from('whatever')), 'EINVAL', /unknown request type 85/);
    await expectAgentError(client.request(MessageType.PONG, 0, Buffer.alloc(0)), 'EINVAL');
    await client.ping();
  });

  it('a string length running past the payload gets ERROR', async () => {
    const argv = Buffer.concat([u32(1), u32(1000), Buffer.from('abc')]);
    await expectAgentError(client.request(MessageType.EXEC, 0, argv), 'EINVAL', /argv\[0\]/);
    await expectAgentError(client.request(MessageType.READ_FILE, 0, Buffer.concat([u32(70_000), Buffer.alloc(20)])), 'EINVAL', /at most 65536/);
    await expectAgentError(client.request(MessageType.EXEC, 0, execPayload(encodeStringList(['sh']), u32(2))), 'EINVAL');
    await client.ping();
  });

  it('a string list of more than 4096 strings gets ERROR', async () => {
    const many = Buffer.concat([u32(5000), ...Array.from({ length: 5000 }, () => encodeString('x'))]);
    await expectAgentError(client.request(MessageType.EXEC, 0, execPayload(many)), 'EINVAL', /at most 4096/);
    await expectAgentError(client.request(MessageType.EXEC, 0, execPayload(encodeStringList(['true']), u32(0xffffffff))), 'EINVAL');
    await client.ping();
  });

  it('other malformed fields get ERROR', async () => {
    await expectAgentError(client.request(MessageType.EXEC, 0, execPayload(u32(0))), 'EINVAL', /argv is empty/);
    await expectAgentError(client.request(MessageType.EXEC, 0x2, execPayload(encodeStringList(['true']))), 'EINVAL', /unknown flags/);
    await expectAgentError(client.request(MessageType.EXEC, 0, Buffer.concat([encodeStringList(['true']), encodeStringList(['NOEQUALS']), u32(0)])), 'EINVAL', /KEY=VALUE/);
    await expectAgentError(client.request(MessageType.EXEC, 0, Buffer.concat([encodeStringList(['true']), u32(0), u32(0), Buffer.from('extra')])), 'EINVAL', /unexpected bytes/);
    await expectAgentError(client.request(MessageType.EXEC, 0, Buffer.concat([u32(1), u32(3), Buffer.from('a\0b'), u32(0), u32(0)])), 'EINVAL', /NUL/);
    await expectAgentError(client.request(MessageType.PING, 0, Buffer.from('x')), 'EINVAL', /must be empty/);
    await expectAgentError(client.request(MessageType.SIGNAL, 0, Buffer.alloc(2)), 'EINVAL');
    await expectAgentError(client.request(MessageType.SIGNAL, 0, u32(15)), 'ESRCH');
    await expectAgentError(client.request(MessageType.STDIN, 0, Buffer.from('data')), 'ESRCH');
    await expectAgentError(client.request(MessageType.READ_FILE, 0, Buffer.concat([encodeString('/etc/hostname'), u64(0), u32((1 << 20) + 1)])), 'EINVAL');
    await expectAgentError(client.request(MessageType.READ_FILE, 0, Buffer.concat([encodeString('/etc/hostname'), u64(2n ** 63n - 5n), u32(10)])), 'EINVAL');
    await expectAgentError(client.request(MessageType.WRITE_FILE, 0, Buffer.concat([encodeString(join(work, 'm')), u32(0o170000), u64(0)])), 'EINVAL', /mode/);
    await client.ping();
  });

  it('garbage frames of every harmless type never break the agent', async () => {
    // EXEC, WRITE_FILE and FSFREEZE are left out: random ones could run, write or freeze things
    const types = [0, MessageType.PING, MessageType.STDIN, MessageType.SIGNAL, MessageType.READ_FILE, MessageType.SYNC, MessageType.SHUTDOWN, 0x81, 0xff, 0x1234];
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const c = await newClient();
    const replies = await Promise.allSettled(
      Array.from({ length: 300 }, () => {
        const type = types[rand(types.length)] ?? 0;
        const payload = rand(4) === 0 ? Buffer.alloc(0) : randomBytes(rand(64));
        return c.request(type, rand(3) === 0 ? rand(0x10000) : 0, payload, { timeoutMs: 10_000 });
      }),
    );
    // one answer each: nothing timed out, nothing was a protocol failure
    for (const r of replies) {
      if (r.status === 'rejected') expect((r.reason as SlipwayError).code).toBe('AGENT_ERROR');
    }
    await c.ping();
  });

  it('a frame longer than MAX_PAYLOAD closes that connection, and the agent serves new ones', async () => {
    const raw = connect(agentSock);
    await once(raw, 'connect');
    const closed = once(raw, 'close');
    const header = encodeFrame(MessageType.PING, 0, 1);
    header.writeUInt32LE(MAX_PAYLOAD + 1, 0);
    raw.write(header);
    await closed;
    // a frame cut off by the host going away
    const cut = connect(agentSock);
    await once(cut, 'connect');
    cut.end(encodeFrame(MessageType.EXEC, 0, 7, Buffer.alloc(100)).subarray(0, 50));
    await once(cut, 'close');
    const fresh = await newClient();
    expect((await fresh.ping()).version).toBe(1);
    await client.ping();
  });

  it('a client rejects a frame from the agent longer than MAX_PAYLOAD as AGENT_PROTOCOL', async () => {
    const server: Server = createServer((s: Socket) => {
      s.on('data', () => {
        const h = Buffer.alloc(12);
        h.writeUInt32LE(MAX_PAYLOAD + 1, 0);
        s.write(h);
      });
    });
    const path = join(work, 'evil.sock');
    server.listen(path);
    await once(server, 'listening');
    const c = await AgentClient.connectUnix(path);
    await expect(c.ping()).rejects.toMatchObject({ code: 'AGENT_PROTOCOL', context: { reason: 'malformed' } });
    await c.close();
    server.close();
  });
});

describe('connecting', () => {
  it('waitForAgent retries until the agent appears, and through a link that drops early pings', async () => {
    const late = join(work, 'late.sock');
    const proxy = join(work, 'proxy.sock');
    // like QEMU's chardev: the host's connection is accepted at once, but nothing reads it until
    // the guest opens its port (here: for 600 ms bytes are dropped, then relayed to the agent)
    const opened = Date.now();
    const server = createServer((host: Socket) => {
      const dropEarly = (): void => {};
      host.on('data', dropEarly);
      setTimeout(() => {
        host.off('data', dropEarly);
        const guest = connect(late);
        guest.on('error', () => host.destroy());
        host.on('close', () => guest.destroy());
        guest.on('close', () => host.destroy());
        host.pipe(guest).pipe(host);
      }, Math.max(0, 600 - (Date.now() - opened)));
    });
    server.listen(proxy);
    await once(server, 'listening');
    const waiting = waitForAgent(() => AgentClient.connectUnix(proxy, { timeoutMs: 500 }), 15_000, { pingTimeoutMs: 150, retryDelayMs: 50 });
    await sleep(200);
    const second = startAgent(['--no-serial', '--listen-unix', late, '--boot-times', join(work, 'none')]);
    try {
      const c = await waiting;
      expect((await c.ping()).phases).toEqual({});
      await c.close();
      const direct = await waitForAgent(() => AgentClient.connectUnix(late), 5000);
      await direct.close();
    } finally {
      server.close();
      const exit = await stopAgent(second);
      expect(exit.code).toBe(0);
      expectSanitizersQuiet(second.stderr());
    }
    await expect(waitForAgent(() => AgentClient.connectUnix(join(work, 'nobody.sock')), 300)).rejects.toMatchObject({ code: 'AGENT_PROTOCOL' });
  });

  it('serves a serial-style port, and reopens it when the host side goes away', async () => {
    const port = join(work, 'serial.sock');
    const arrivals: Socket[] = [];
    let notify: (() => void) | undefined;
    const server = createServer((s: Socket) => {
      arrivals.push(s);
      notify?.();
    });
    server.listen(port);
    await once(server, 'listening');
    const nextConnection = async (): Promise<Socket> => {
      while (arrivals.length === 0) await new Promise<void>((r) => (notify = r));
      return arrivals.shift() as Socket;
    };
    const serialAgent = startAgent(['--serial', port, '--boot-times', bootTimes]);
    try {
      const first = new AgentClient(await nextConnection());
      expect((await first.ping({ timeoutMs: 5000 })).phases).toHaveProperty('init_start', 1200);
      const r = await first.exec(['sh', '-c', 'echo over serial']);
      expect(r.stdout.toString()).toBe('over serial\n');
      await first.close();
      // the agent sees EOF, drops the session and opens the port again
      const second = new AgentClient(await nextConnection());
      expect((await second.ping({ timeoutMs: 5000 })).version).toBe(1);
      await second.close();
    } finally {
      server.close();
      for (const s of arrivals) s.destroy();
      const exit = await stopAgent(serialAgent);
      expect(exit.code).toBe(0);
      expectSanitizersQuiet(serialAgent.stderr());
    }
  });
});

describe('at the end', () => {
  it('the agent is still running, exits cleanly on SIGTERM, and the sanitizers reported nothing', async () => {
    expect(agent.proc.exitCode).toBeNull();
    expect(agent.proc.signalCode).toBeNull();
    await client.ping();
    for (const c of extraClients) await c.close().catch(() => {});
    const exit = await stopAgent(agent);
    expect(exit).toEqual({ code: 0, signal: null });
    expectSanitizersQuiet(agent.stderr());
    expect(existsSync(agentSock)).toBe(false);
  });
});
