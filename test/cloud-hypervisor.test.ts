/**
 * The Cloud Hypervisor driver (src/vmm/cloud-hypervisor.ts).
 *
 * 1. Every VmConfig the driver builds is validated against the OpenAPI description CH ships
 *    (vendor/cloud-hypervisor/cloud-hypervisor.yaml, vendored from upstream), read with `yaml` and
 *    enforced with Ajv (test/helpers/ch-openapi.mjs), shown to reject bad bodies; `payload.fw_cfg_config`, absent from the YAML, is checked against CH's serde struct.
 * 2. The driver end to end against a FAKE Cloud Hypervisor (test/helpers/fake-cloud-hypervisor.mjs,
 *    a Node script standing in for the binary, since CH cannot run here): REST API on the API
 *    socket, hybrid vsock proxied to a real slipway-agent running on the host.
 * 3. The real thing: slipway's kernel under a real cloud-hypervisor, only where a binary and a
 *    read-write /dev/kvm exist; skipped, with the reason printed, everywhere else.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { delimiter, join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { SlipwayError, isSlipwayError } from '../src/errors.js';
import { AgentClient, waitForAgent } from '../src/guest/agent-client.js';
import { FW_CFG_NAME, renderBootConfig } from '../src/guest/boot-config.js';
import {
  CloudHypervisorDriver,
  buildVmConfig,
  chKernelCmdline,
  cloudHypervisorArgs,
  fwCfgConfig,
  hybridVsockConnect,
  useFwCfg,
} from '../src/vmm/cloud-hypervisor.js';
import type { AdoptTarget, RunningVm, VmSpec } from '../src/vmm/driver.js';
import { bootVm } from '../src/vmm/boot.js';
import { inspectKvm, kvmDeviceUsable, loadedKvmModules } from '../src/vmm/accel.js';
import { processesWithArgument, processRunning } from '../src/util/process.js';
import { CH_OPENAPI_PATH, loadChApiSpec, parseYaml, validateFwCfgConfig, validateSchema, validateVmConfigBody } from './helpers/ch-openapi.mjs';
import { FAKE_HOST_PORT } from './helpers/fake-cloud-hypervisor.mjs';
import { tempDir } from './helpers/temp-dirs.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const FAKE_CH = join(ROOT, 'test', 'helpers', 'fake-cloud-hypervisor.mjs');
const AGENT_BIN = join(ROOT, 'guest', 'build', 'slipway-agent');

/** the parsed OpenAPI document and request bodies: plain JSON, looked into freely */
type Doc = any;
type Body = Record<string, any>;

const work = tempDir('slipway-ch-test-');

const BOOT_CONFIG = renderBootConfig({ hostname: 'ch-test', env: { GREETING: 'hello world' } });

function spec(overrides: Partial<VmSpec> = {}): VmSpec {
  return {
    id: 't1',
    workDir: '/run/slipway/vm-t1',
    cpus: 2,
    memoryMiB: 256,
    kernel: { bzImage: '/k/bzImage', vmlinux: '/k/vmlinux' },
    initramfs: '/k/initramfs.cpio',
    disks: [{ kind: 'file', path: '/d/root.img' }],
    bootConfig: BOOT_CONFIG,
    net: { mode: 'none' },
    ...overrides,
  };
}

function errorOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

// ---------------------------------------------------------------------------------------------

describe('the OpenAPI description and the validator', () => {
  const doc: Doc = loadChApiSpec();

  const pyyaml = spawnSync('python3', ['-c', 'import yaml'], { stdio: 'ignore' }).status === 0;
  it.skipIf(!pyyaml)(`the YAML parser reads the spec exactly as PyYAML does${pyyaml ? '' : ' (skipped: python3 with PyYAML not installed)'}`, () => {
    const viaPython = JSON.parse(execFileSync('python3', ['-c', 'import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1])), default=str))', CH_OPENAPI_PATH], { encoding: 'utf8' }));
    expect(parseYaml(readFileSync(CH_OPENAPI_PATH, 'utf8'))).toEqual(viaPython);
  });

  it('the YAML parser handles the constructs it claims and refuses others', () => {
    const text = [
      'a: 1',
      'b: "q: #x"',
      "c: 'it''s'",
      'd: [x, "y", 3]',
      'e:',
      '  - k: v',
      '    l: true',
      '  - plain',
      'f: >',
      '  folded',
      '  text',
      'g: |',
      '  kept',
      '  lines',
      'h:',
      '  long plain',
      '  scalar  # comment',
      '"200": ok',
    ].join('\n');
    expect(parseYaml(text)).toEqual({ a: 1, b: 'q: #x', c: "it's", d: ['x', 'y', 3], e: [{ k: 'v', l: true }, 'plain'], f: 'folded text\n', g: 'kept\nlines\n', h: 'long plain scalar', '200': 'ok' });
    expect(() => parseYaml('a: &anchor 1')).toThrow(/unsupported/);
    expect(() => parseYaml('a: {x: 1}')).toThrow(/unsupported/);
    expect(() => parseYaml('a: 1\na: 2')).toThrow(/duplicate/);
  });

  it('describes the schemas the driver relies on', () => {
    const s = doc.components.schemas;
    expect(s.VmConfig.required).toEqual(['payload']);
    expect(s.DiskConfig.properties.vhost_socket.type).toBe('string');
    expect(s.DiskConfig.properties.socket).toBeUndefined(); // the field is vhost_socket, not socket
    expect(s.VsockConfig.required).toEqual(['cid', 'socket']);
    expect(s.ConsoleMode.enum).toContain('File');
    expect(s.PayloadConfig.properties.fw_cfg_config).toBeUndefined(); // hence the separate check
    expect(doc.paths['/vm.create'].put.requestBody.content['application/json'].schema.$ref).toBe('#/components/schemas/VmConfig');
  });

  it('the validator fails what it should (so a pass means something)', () => {
    const good = buildVmConfig(spec(), { fwCfg: false }) as Body;
    expect(validateVmConfigBody(doc, good)).toEqual([]);
    const cases: [string, (b: Body) => void, RegExp][] = [
      ['no payload', (b) => delete b.payload, /missing required property payload/],
      ['cpus without max_vcpus', (b) => delete b.cpus.max_vcpus, /\$\.cpus: missing required property max_vcpus/],
      ['boot_vcpus 0', (b) => (b.cpus.boot_vcpus = 0), /boot_vcpus: 0 is less than the minimum 1/],
      ['memory size as text', (b) => (b.memory.size = '256M'), /memory\.size: expected integer, got string/],
      ['fractional size', (b) => (b.memory.size = 1.5), /memory\.size: expected integer/],
      ['vsock cid 2', (b) => (b.vsock.cid = 2), /vsock\.cid: 2 is less than the minimum 3/],
      ['vsock without socket', (b) => delete b.vsock.socket, /vsock: missing required property socket/],
      ['serial mode in lower case', (b) => (b.serial.mode = 'file'), /serial\.mode: "file" is not one of/],
      ['rng without src', (b) => (b.rng = {}), /rng: missing required property src/],
      ['disk readonly as text', (b) => (b.disks[0].readonly = 'yes'), /disks\[0\]\.readonly: expected boolean/],
      ['pci_segment out of int16', (b) => (b.disks[0].pci_segment = 70000), /out of range for int16/],
      ['disks not an array', (b) => (b.disks = { path: '/x' }), /\$\.disks: expected array/],
      ['a misspelt field (strict)', (b) => (b.disks[0].socket = '/x.sock'), /disks\[0\]: property socket is not in the schema/],
      ['an unknown top-level field (strict)', (b) => (b.vsocks = []), /property vsocks is not in the schema/],
    ];
    for (const [what, mutate, expected] of cases) {
      const b = clone(good);
      mutate(b);
      const errors = validateVmConfigBody(doc, b);
      expect(errors.join('\n'), what).toMatch(expected);
    }
    // non-strict (OpenAPI's own rule): unknown fields pass the schema, but CH's checks still catch
    // a vhost-user disk whose socket went under the wrong name
    const misspelt = clone(good);
    misspelt.disks = [{ vhost_user: true, socket: '/s.sock' }];
    expect(validateSchema(doc, 'VmConfig', misspelt)).toEqual([]);
    expect(validateVmConfigBody(doc, misspelt, { strict: false }).join('\n')).toMatch(/VhostUserMissingSocket/);
    // CH's own checks: vhost-user without shared memory, File mode without a file
    const unshared = clone(good);
    unshared.memory.shared = false;
    unshared.disks = [{ vhost_user: true, vhost_socket: '/s.sock' }];
    expect(validateVmConfigBody(doc, unshared).join('\n')).toMatch(/VhostUserRequiresSharedMemory/);
    const noFile = clone(good);
    noFile.serial = { mode: 'File' };
    expect(validateVmConfigBody(doc, noFile).join('\n')).toMatch(/ConsoleFileMissing/);
    // a keyword the validator does not implement is an error, not a silent pass
    expect(() => validateSchema(doc, { type: 'string', pattern: '^a' }, 'b')).toThrow(/unsupported keyword pattern/);
  });
});

describe('buildVmConfig', () => {
  const doc: Doc = loadChApiSpec();
  const variants: [string, VmSpec][] = [
    ['a file disk', spec()],
    ['a read-only file disk and a second disk', spec({ disks: [{ kind: 'file', path: '/d/root.img', readOnly: true }, { kind: 'file', path: '/d/data.img' }] })],
    ['a vhost-user disk', spec({ disks: [{ kind: 'vhost-user', socket: '/run/slipway/blk.sock' }] })],
    ['a read-only vhost-user disk, 8 cpus', spec({ cpus: 8, disks: [{ kind: 'vhost-user', socket: '/run/slipway/blk.sock', readOnly: true }] })],
    ['hugepages', spec({ hugepages: true, memoryMiB: 1024 })],
    ['a tap device', spec({ net: { mode: 'tap', ifname: 'tap-slipway0' } })],
    ['the console on', spec({ console: true })],
    ['the console off', spec({ console: false })],
    ['no disks, extra cmdline', spec({ disks: [], cmdline: 'slipway.verbose=1' })],
  ];

  for (const [what, s] of variants) {
    for (const fwCfg of [true, false]) {
      it(`with ${what}${fwCfg ? ', config via fw_cfg' : ', config on the command line'}: valid VmConfig`, () => {
        const body = buildVmConfig(s, { fwCfg }) as Body;
        expect(validateVmConfigBody(doc, body, { fwCfgFeature: fwCfg })).toEqual([]);
        // and by the letter of the YAML alone (non-strict, without the field it lacks)
        const { fw_cfg_config: _f, ...payload } = body.payload;
        expect(validateSchema(doc, 'VmConfig', { ...body, payload })).toEqual([]);
        if (fwCfg) expect(validateFwCfgConfig(body.payload.fw_cfg_config)).toEqual([]);
        else expect(body.payload.fw_cfg_config).toBeUndefined();

        expect(body.payload.kernel).toBe(s.kernel.vmlinux); // PVH entry, not the bzImage
        expect(body.payload.initramfs).toBe(s.initramfs);
        expect(body.cpus).toEqual({ boot_vcpus: s.cpus, max_vcpus: s.cpus });
        expect(body.memory.size).toBe(s.memoryMiB * 1024 * 1024);
        expect(body.memory.shared).toBe(true);
        expect(body.memory.hugepages).toBe(s.hugepages ? true : undefined);
        expect(body.vsock).toEqual({ cid: 3, socket: join(s.workDir, 'vsock.sock') });
        expect(body.rng).toEqual({ src: '/dev/urandom' });
        expect(body.console).toEqual({ mode: 'Off' });
        expect(body.serial).toEqual(s.console ? { mode: 'File', file: join(s.workDir, 'console.log') } : { mode: 'Off' });
        expect(body.disks ?? []).toHaveLength(s.disks.length);
        s.disks.forEach((d, i) => {
          const disk = body.disks[i];
          if (d.kind === 'file') expect(disk).toMatchObject({ path: d.path });
          else expect(disk).toMatchObject({ vhost_user: true, vhost_socket: d.socket, num_queues: Math.min(s.cpus, 4), queue_size: 128 });
          expect(disk.readonly).toBe(d.readOnly ? true : undefined);
        });
        expect(body.net).toEqual(s.net.mode === 'tap' ? [{ tap: s.net.ifname }] : undefined);
      });
    }
  }

  it('puts the boot config on the command line only without fw_cfg', () => {
    const s = spec({ cmdline: 'slipway.verbose=1' });
    const withFwCfg = buildVmConfig(s, { fwCfg: true }) as Body;
    const without = buildVmConfig(s, { fwCfg: false }) as Body;
    expect(withFwCfg.payload.cmdline).not.toContain('slipway.config=');
    expect(withFwCfg.payload.cmdline).toContain('slipway.verbose=1');
    const m = /(?:^| )slipway\.config=([A-Za-z0-9+/=]+)(?: |$)/.exec(without.payload.cmdline);
    expect(m).not.toBeNull();
    expect(Buffer.from(m?.[1] ?? '', 'base64').toString()).toBe(BOOT_CONFIG);
    expect(without.payload.cmdline).toBe(chKernelCmdline(s, { fwCfg: false }));
    expect(without.payload.cmdline).toMatch(/^console=ttyS0 quiet .*clocksource=kvm-clock/);
  });

  it('chooses fw_cfg from the ping features and the spec', () => {
    expect(useFwCfg(spec(), ['kvm', 'fw_cfg'])).toBe(true);
    expect(useFwCfg(spec(), ['kvm'])).toBe(false);
    expect(useFwCfg(spec({ bootConfigVia: 'cmdline' }), ['kvm', 'fw_cfg'])).toBe(false);
    expect(useFwCfg(spec({ bootConfigVia: 'fw_cfg' }), ['kvm'])).toBe(false);
  });

  it('writes fw_cfg_config in the shape of CH\'s serde struct', () => {
    const f = fwCfgConfig('/w/boot-config');
    expect(f).toEqual({ e820: false, kernel: false, cmdline: false, initramfs: false, acpi_tables: false, items: { item_list: [{ name: FW_CFG_NAME, file: '/w/boot-config' }] } });
    expect(validateFwCfgConfig(f)).toEqual([]);
    // the shapes that are not CH's fail
    expect(validateFwCfgConfig({ ...f, items: [{ name: FW_CFG_NAME, file: '/w/boot-config' }] }).join('\n')).toMatch(/items: expected an object \{ item_list/);
    const { e820: _e, ...noE820 } = f;
    expect(validateFwCfgConfig(noE820).join('\n')).toMatch(/missing e820/);
    expect(validateFwCfgConfig({ ...f, items: { item_list: [{ name: 'x', file: '/a', string: 'b' }] } }).join('\n')).toMatch(/exactly one of file or string/);
    expect(validateFwCfgConfig({ ...f, kernel: 'no' }).join('\n')).toMatch(/kernel: expected boolean/);
  });

  it('refuses user-mode networking, naming it', () => {
    const err = errorOf(() => buildVmConfig(spec({ net: { mode: 'user' } }), { fwCfg: false }));
    expect(err).toBeInstanceOf(SlipwayError);
    expect((err as SlipwayError).code).toBe('INVALID_ARGUMENT');
    expect((err as SlipwayError).message).toMatch(/'user'.*not supported by Cloud Hypervisor/);
  });

  it('starts CH with only its API socket', () => {
    expect(cloudHypervisorArgs(spec({ workDir: '/w' }))).toEqual(['--api-socket', 'path=/w/ch-api.sock']);
  });
});

// ---------------------------------------------------------------------------------------------

describe('hybridVsockConnect', () => {
  const servers: Server[] = [];
  afterAll(() => servers.forEach((s) => s.close()));

  function serve(name: string, onConn: (conn: import('node:net').Socket, firstLine: string) => void): string {
    const path = join(work, name);
    const server = createServer((conn) => {
      let buf = '';
      const onData = (d: Buffer): void => {
        buf += d.toString('latin1');
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        conn.removeListener('data', onData);
        onConn(conn, buf.slice(0, nl));
      };
      conn.on('data', onData);
      conn.on('error', () => undefined);
    });
    server.listen(path);
    servers.push(server);
    return path;
  }

  async function readN(stream: Duplex, n: number): Promise<string> {
    let got = '';
    return new Promise((resolve, reject) => {
      stream.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.length >= n) resolve(got);
      });
      stream.once('error', reject);
      setTimeout(() => reject(new Error(`only ${JSON.stringify(got)} arrived`)), 3000);
    });
  }

  it('sends CONNECT <port>, reads OK and hands over the stream with later bytes intact', async () => {
    let asked = '';
    const path = serve('hv-ok.sock', (conn, line) => {
      asked = line;
      conn.write('OK 77\nEXTRA'); // bytes past the line in the same chunk
      setTimeout(() => conn.write('MORE'), 50);
    });
    await new Promise((r) => setTimeout(r, 20));
    const stream = await hybridVsockConnect(path, 1024);
    expect(asked).toBe('CONNECT 1024');
    expect(await readN(stream, 9)).toBe('EXTRAMORE');
    stream.destroy();
  });

  it('rejects when the connection closes before OK (nothing listens in the guest yet)', async () => {
    const path = serve('hv-closed.sock', (conn) => conn.destroy());
    await new Promise((r) => setTimeout(r, 20));
    await expect(hybridVsockConnect(path, 1024)).rejects.toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/closed before OK/) });
  });

  it('rejects an answer that is not OK, and a missing socket', async () => {
    const path = serve('hv-bad.sock', (conn) => conn.write('NOPE\n'));
    await new Promise((r) => setTimeout(r, 20));
    await expect(hybridVsockConnect(path, 1024)).rejects.toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/unexpected answer.*NOPE/) });
    await expect(hybridVsockConnect(join(work, 'absent.sock'), 1024)).rejects.toMatchObject({ code: 'VMM_ERROR' });
  });

  it('gives up on a silent peer', async () => {
    const path = serve('hv-silent.sock', () => undefined);
    await new Promise((r) => setTimeout(r, 20));
    await expect(hybridVsockConnect(path, 1024, 300)).rejects.toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/no answer to CONNECT within 300 ms/) });
  });
});

// ---------------------------------------------------------------------------------------------

interface LogEntry {
  method?: string;
  endpoint?: string;
  status?: number;
  body?: Body;
  error?: string;
  event?: string;
  pid?: number;
  code?: number;
}

/**
 * Whether the process runs. A zombie does not: a detached VMM's parent is slipway-spawn, which
 * reaps it a moment after it exits, and until then `kill(pid, 0)` still finds it.
 */
function pidAlive(pid: number): boolean {
  return processRunning(pid);
}

describe('the driver against a FAKE Cloud Hypervisor (test/helpers/fake-cloud-hypervisor.mjs)', () => {
  const fakeDir = join(work, 'fake');
  const kernelDir = join(fakeDir, 'kernel');
  const logs: string[] = [];
  let n = 0;

  beforeAll(() => {
    // the real agent, static build (guest/Makefile); the fake starts it at vm.boot
    execFileSync('make', ['-s', '-C', join(ROOT, 'guest')], { stdio: 'inherit' });
    mkdirSync(kernelDir, { recursive: true });
    for (const f of ['vmlinux', 'bzImage', 'initramfs.cpio', 'root.img']) writeFileSync(join(kernelDir, f), `not a real ${f}\n`);
  });

  afterAll(() => {
    // an agent the fake started must not outlive the test, whatever happened to the fake
    for (const log of logs) {
      if (!existsSync(log)) continue;
      for (const e of readLog(log)) if (e.event === 'agent' && e.pid && pidAlive(e.pid)) process.kill(e.pid, 'SIGKILL');
    }
  });

  function readLog(path: string): LogEntry[] {
    if (!existsSync(path)) return [];
    return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogEntry);
  }

  /** A wrapper script standing in for the `cloud-hypervisor` binary, with the fake's settings. */
  function fakeBinary(env: Record<string, string>): { binary: string; log: string; workDir: string } {
    const dir = join(fakeDir, `run${++n}`);
    mkdirSync(dir, { recursive: true });
    const log = join(dir, 'fake-ch.log');
    logs.push(log);
    const all: Record<string, string> = { FAKE_CH_LOG: log, FAKE_CH_AGENT: AGENT_BIN, CH_OPENAPI_PATH, ...env };
    const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
    const binary = join(dir, 'cloud-hypervisor');
    writeFileSync(binary, `#!/bin/sh\n# FAKE cloud-hypervisor for tests\n${Object.entries(all).map(([k, v]) => `export ${k}=${quote(v)}`).join('\n')}\nexec ${quote(process.execPath)} ${quote(FAKE_CH)} "$@"\n`);
    chmodSync(binary, 0o755);
    const workDir = join(dir, 'vm');
    mkdirSync(workDir);
    return { binary, log, workDir };
  }

  function fakeSpec(workDir: string, overrides: Partial<VmSpec> = {}): VmSpec {
    return spec({
      workDir,
      kernel: { vmlinux: join(kernelDir, 'vmlinux'), bzImage: join(kernelDir, 'bzImage') },
      initramfs: join(kernelDir, 'initramfs.cpio'),
      disks: [{ kind: 'file', path: join(kernelDir, 'root.img') }],
      ...overrides,
    });
  }

  async function agentOf(vm: RunningVm): Promise<AgentClient> {
    return waitForAgent(async () => new AgentClient(await vm.connectAgent()), 15_000);
  }

  for (const [guest, code, words] of [['panic', 'GUEST_PANICKED', 'Kernel panic - not syncing: FAKE stand-in panic'], ['poweroff', 'GUEST_POWERED_OFF', 'the guest powered off']] as const) {
    it(`a guest that ${guest === 'panic' ? 'panics' : 'powers off'} while booting is ${code} within 2 s, and nothing is left running`, async () => {
      const { binary, workDir } = fakeBinary({ FAKE_CH_FEATURES: 'kvm', FAKE_CH_GUEST: guest });
      let started = 0;
      const err = await bootVm(new CloudHypervisorDriver({ binary }), fakeSpec(workDir, { console: true }), { agentDeadlineMs: 120_000, onStarted: () => (started = Date.now()) }).catch((e: unknown) => e);
      expect(isSlipwayError(err, code), `${String((err as { code?: string }).code)}: ${(err as Error).message}`).toBe(true);
      expect((err as Error).message).toContain(words);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(processesWithArgument(workDir)).toEqual([]);
    });
  }

  it('detached, it outlives its starter: another driver adopts it by pid, reaches its agent and stops it', async () => {
    const { binary, workDir } = fakeBinary({ FAKE_CH_FEATURES: 'kvm' });
    const s = fakeSpec(workDir, { detached: true });
    const started = await new CloudHypervisorDriver({ binary }).start(s);
    // its output goes to a file in the work directory, not to pipes of the process that started it
    expect(existsSync(join(workDir, 'cloud-hypervisor.log'))).toBe(true);
    const later = new CloudHypervisorDriver({ binary });
    const target = (pid: number): AdoptTarget => ({ pid, workDir, accel: 'kvm', agent: started.agentEndpoint });
    // a pid that is not this VM's (this test process) is refused
    expect(later.adopt(target(process.pid))).toBeUndefined();
    const adopted = later.adopt(target(started.pid));
    expect(adopted?.pid).toBe(started.pid);
    expect(adopted?.agentEndpoint).toEqual({ transport: 'hybrid-vsock', socket: join(workDir, 'vsock.sock') });
    const agent = await agentOf(adopted as RunningVm);
    expect((await agent.exec(['echo', 'adopted'])).stdout.toString()).toBe('adopted\n');
    await agent.close();
    await (adopted as RunningVm).kill(2000);
    await adopted?.exited;
    expect(pidAlive(started.pid)).toBe(false);
    expect(later.adopt(target(started.pid))).toBeUndefined();
  });

  it('boots (ping, create, boot), reaches the agent over hybrid vsock, runs echo hi, and stops', async () => {
    const { binary, log, workDir } = fakeBinary({ FAKE_CH_FEATURES: 'kvm,fw_cfg' });
    const s = fakeSpec(workDir, { console: true });
    const vm = await new CloudHypervisorDriver({ binary }).start(s);
    expect(vm.accel).toBe('kvm');
    expect(vm.pid).toBeGreaterThan(0);
    const client = await agentOf(vm);
    try {
      const pong = await client.ping();
      expect(pong.version).toBe(1);
      const r = await client.exec(['echo', 'hi']);
      expect(r.exitCode).toBe(0);
      expect(r.stdout.toString()).toBe('hi\n');
      // a second, independent connection works too (each vsock connection is its own)
      const stream2 = await vm.connectAgent();
      const second = new AgentClient(stream2);
      expect((await second.exec(['sh', '-c', 'echo "$0"', 'two'])).stdout.toString()).toBe('two\n');
      await second.close();
      expect(vm.consoleTail()).toContain('FAKE serial console');
    } finally {
      await client.close();
    }
    const exit = await vm.kill();
    expect(exit).toEqual({ code: 0, signal: null }); // left through vmm.shutdown, not a signal

    const entries = readLog(log);
    const requests = entries.filter((e) => e.method).map((e) => `${e.method} ${e.endpoint} ${e.status}`);
    expect(requests).toEqual(['GET vmm.ping 200', 'PUT vm.create 204', 'PUT vm.boot 204', 'PUT vm.shutdown 204', 'PUT vmm.shutdown 204']);
    const vsockLines = entries.filter((e) => e.event === 'vsock');
    expect(vsockLines.length).toBeGreaterThanOrEqual(2);
    // the config went through fw_cfg: the item names the file holding the boot config
    const create = entries.find((e) => e.endpoint === 'vm.create')?.body as Body;
    expect(create.payload.cmdline).not.toContain('slipway.config=');
    const item = create.payload.fw_cfg_config.items.item_list[0];
    expect(item.name).toBe('opt/slipway/config');
    expect(readFileSync(item.file, 'utf8')).toBe(BOOT_CONFIG);
    expect(JSON.parse(readFileSync(join(workDir, 'ch-vm-config.json'), 'utf8'))).toEqual(create);
    const agentPid = entries.find((e) => e.event === 'agent')?.pid ?? 0;
    expect(agentPid).toBeGreaterThan(0);
    // the fake stops its agent when it exits; allow a loaded machine a few seconds for that
    for (let waited = 0; pidAlive(agentPid) && waited < 5000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(pidAlive(agentPid)).toBe(false);
    expect(FAKE_HOST_PORT).toBe(1073741824);
  });

  it('puts the config on the kernel command line when CH has no fw_cfg, or when asked', async () => {
    for (const [features, via] of [['kvm', undefined], ['kvm,fw_cfg', 'cmdline']] as const) {
      const { binary, log, workDir } = fakeBinary({ FAKE_CH_FEATURES: features });
      const vm = await new CloudHypervisorDriver({ binary }).start(fakeSpec(workDir, via ? { bootConfigVia: via } : {}));
      const client = await agentOf(vm);
      expect((await client.exec(['echo', 'hi'])).stdout.toString()).toBe('hi\n');
      await client.close();
      await vm.kill();
      const create = readLog(log).find((e) => e.endpoint === 'vm.create')?.body as Body;
      expect(create.payload.fw_cfg_config).toBeUndefined();
      const b64 = /slipway\.config=(\S+)/.exec(create.payload.cmdline)?.[1] ?? '';
      expect(Buffer.from(b64, 'base64').toString()).toBe(BOOT_CONFIG);
    }
  });

  it('sends a vhost-user disk, hugepages and a tap device the fake accepts', async () => {
    const { binary, log, workDir } = fakeBinary({ FAKE_CH_FEATURES: 'kvm,fw_cfg' });
    const s = fakeSpec(workDir, { hugepages: true, net: { mode: 'tap', ifname: 'tap0' }, disks: [{ kind: 'vhost-user', socket: join(workDir, 'blk.sock'), readOnly: true }] });
    const vm = await new CloudHypervisorDriver({ binary }).start(s);
    await vm.kill();
    const create = readLog(log).find((e) => e.endpoint === 'vm.create');
    expect(create?.status).toBe(204);
    expect(create?.body?.disks).toEqual([{ vhost_user: true, vhost_socket: join(workDir, 'blk.sock'), num_queues: 2, queue_size: 128, readonly: true }]);
  });

  it('waits for an API socket that comes late', async () => {
    const { binary, workDir } = fakeBinary({ FAKE_CH_API_DELAY_MS: '400' });
    const vm = await new CloudHypervisorDriver({ binary }).start(fakeSpec(workDir));
    expect(vm.consoleTail()).not.toContain('FAKE serial console'); // console off: no file
    await vm.kill();
  });

  it('maps a failed request to VMM_ERROR naming the request, the status and CH\'s answer, and stops CH', async () => {
    const { binary, log, workDir } = fakeBinary({ FAKE_CH_REJECT: 'vm.boot' });
    const err = await new CloudHypervisorDriver({ binary }).start(fakeSpec(workDir)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SlipwayError);
    expect(err).toMatchObject({ code: 'VMM_ERROR', context: { request: 'PUT /api/v1/vm.boot', status: 500 } });
    expect((err as Error).message).toMatch(/PUT \/api\/v1\/vm\.boot -> 500: Error from API: fake failure of vm\.boot/);
    const entries = readLog(log);
    expect(entries.some((e) => e.event === 'exit')).toBe(true); // shut down, not left running
  });

  it('reports a CH that refuses the body (a file missing at boot)', async () => {
    const { binary, workDir } = fakeBinary({});
    const err = await new CloudHypervisorDriver({ binary }).start(fakeSpec(workDir, { initramfs: join(workDir, 'missing.cpio') })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMM_ERROR' });
    expect((err as Error).message).toMatch(/PUT \/api\/v1\/vm\.boot -> 500: .*missing\.cpio/);
  });

  it('reports a CH that exits at start as VMM_EXITED, with its output', async () => {
    const { binary, workDir } = fakeBinary({ FAKE_CH_EXIT_AT_START: '3' });
    const err = await bootVm(new CloudHypervisorDriver({ binary }), fakeSpec(workDir), { agentDeadlineMs: 120_000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VMM_EXITED' });
    expect((err as Error).message).toMatch(/exited at start \(exit code 3\).*FAKE_CH_EXIT_AT_START/s);
  });

  it('reports a missing binary, and refuses user networking before starting anything', async () => {
    const workDir = join(fakeDir, 'nobin');
    mkdirSync(workDir, { recursive: true });
    const missing = join(fakeDir, 'no-such-cloud-hypervisor');
    await expect(new CloudHypervisorDriver({ binary: missing }).start(fakeSpec(workDir))).rejects.toMatchObject({ code: 'VMM_ERROR', message: expect.stringMatching(/cannot start .*no-such-cloud-hypervisor/) });
    await expect(new CloudHypervisorDriver({ binary: missing }).start(fakeSpec(workDir, { net: { mode: 'user' } }))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('kill() falls back to signals when the API does not answer', async () => {
    const { binary, workDir } = fakeBinary({});
    const vm = await new CloudHypervisorDriver({ binary }).start(fakeSpec(workDir));
    rmSync(join(workDir, 'ch-api.sock')); // the API is gone: only signals are left
    const exit = await vm.kill(500);
    expect(exit.code === 0 || exit.signal !== null).toBe(true); // the fake exits 0 on SIGTERM
    expect(await vm.kill()).toEqual(exit);
  });
});

// ---------------------------------------------------------------------------------------------

function findCloudHypervisor(): string | undefined {
  const candidates = process.env.SLIPWAY_CLOUD_HYPERVISOR
    ? [process.env.SLIPWAY_CLOUD_HYPERVISOR]
    : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, 'cloud-hypervisor'));
  for (const c of candidates) {
    if (!existsSync(c)) continue;
    const r = spawnSync(c, ['--version'], { encoding: 'utf8', timeout: 10_000 });
    if (r.status === 0 && /cloud-hypervisor/i.test(`${r.stdout}${r.stderr}`) && !/fake/i.test(r.stdout)) return c;
  }
  return undefined;
}

/** Why KVM cannot run an ordinary guest here (no usable /dev/kvm, or kvm_pvm), or '' */
function kvmUnfit(): string {
  return inspectKvm(loadedKvmModules(), kvmDeviceUsable()) ?? '';
}

const realCh = findCloudHypervisor();
const realSkip = !realCh
  ? 'no cloud-hypervisor binary (on PATH or in SLIPWAY_CLOUD_HYPERVISOR)'
  : kvmUnfit() !== ''
    ? `KVM cannot run guests here: ${kvmUnfit()}`
    : '';
if (realSkip) process.stderr.write(`[cloud-hypervisor.test] real Cloud Hypervisor test skipped: ${realSkip}\n`);

describe('the real Cloud Hypervisor', () => {
  it.skipIf(realSkip !== '')(`boots slipway's kernel, initramfs and a busybox root and runs cat /etc/os-release${realSkip ? ` (skipped: ${realSkip})` : ''}`, async () => {
    const { buildGuest, buildKernel } = await import('../src/guest/build.js');
    const { buildRootfs } = await import('../src/guest/rootfs.js');
    const kernel = await buildKernel({ onLine: (l) => process.stderr.write(`${l}\n`) });
    const guest = await buildGuest();
    const dir = tempDir('slipway-ch-real-');
    const workDir = join(dir, 'vm');
    mkdirSync(workDir);
    const { output: root } = await buildRootfs({ from: 'busybox', output: join(dir, 'busybox.img') });
    const driver = new CloudHypervisorDriver({ ...(realCh ? { binary: realCh } : {}) });
    let vm: RunningVm | undefined;
    let client: AgentClient | undefined;
    try {
      vm = await driver.start({
        id: 'real', workDir, cpus: 1, memoryMiB: 512, kernel, initramfs: guest.initramfs,
        disks: [{ kind: 'file', path: root }], bootConfig: renderBootConfig({ hostname: 'ch-real' }), net: { mode: 'none' }, console: true,
      });
      const running = vm;
      client = await waitForAgent(async () => new AgentClient(await running.connectAgent()), 60_000).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}\nconsole:\n${running.consoleTail(3000)}`);
      });
      const r = await client.exec(['cat', '/etc/os-release']);
      expect(r.exitCode, r.stderr.toString()).toBe(0);
      expect(r.stdout.toString()).toMatch(/^NAME=/m);
      expect((await client.exec(['hostname'])).stdout.toString().trim()).toBe('ch-real');
    } finally {
      await client?.shutdown(false).catch(() => undefined);
      await client?.close().catch(() => undefined);
      await vm?.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 1_800_000);
});
