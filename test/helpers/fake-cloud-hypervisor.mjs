#!/usr/bin/env node
/**
 * FAKE Cloud Hypervisor: a test stand-in, NOT Cloud Hypervisor. Cloud Hypervisor cannot run on the
 * machines these tests run on (no binary, no usable KVM), so this Node script plays its part for
 * src/vmm/cloud-hypervisor.ts: started as `<fake> --api-socket path=<sock>`, it serves the REST
 * API that CH serves there (vmm.ping, vm.create, vm.boot, vm.info, vm.shutdown, vmm.shutdown,
 * vm.pause, vm.resume, vm.snapshot, vm.restore) and, once "booted", the host side of CH's hybrid
 * vsock. No guest runs: "booting" starts a real
 * slipway-agent on the host (`--listen-unix`), and a hybrid-vsock `CONNECT 1024` is answered
 * `OK 1073741824` and proxied to it, so the driver and AgentClient talk to a real agent.
 *
 * Everything it accepts is checked the way CH would, as far as a test can: every request body is
 * validated against the OpenAPI description CH ships (vendor/cloud-hypervisor/
 * cloud-hypervisor.yaml: VmConfig for vm.create, VmSnapshotConfig, RestoreConfig), strictly (a
 * property the schema does not name is refused, where CH would silently ignore it: that catches
 * misspelt fields); vm.create's `payload.fw_cfg_config` against CH's serde struct, then a subset
 * of CH's ValidationError checks (all in ch-openapi.mjs, which the tests use too).
 *
 * Memory snapshots, acted out: no guest RAM exists, so the stand-in pretends its guest has
 * `memory.size` bytes holding a few markers (text at fixed offsets, naming a nonce drawn at
 * vm.boot). vm.snapshot (only of a paused VM, into an existing directory, each file created new as
 * CH does) writes config.json (the VmConfig), state.json (FAKE state: the nonce, the markers and the
 * sha256 of the RAM file) and memory-ranges (a sparse file of the RAM size with the markers in
 * it). vm.restore (only into a CH with no VM) refuses, with an HTTP error as CH would, a missing
 * or unreadable file, a memory-ranges that is not what state.json says (size, markers, sha256), a
 * config.json that is no valid VmConfig or names files that are not there (kernel, initramfs,
 * fw_cfg items, disk paths, vhost-user sockets, the vsock socket's directory), and
 * `memory_restore_mode` from a version before v52 (a real older CH would ignore it; refused here
 * so that a driver sending it there is caught). It logs `{event: 'restored', mode, nonce, ...}`,
 * the mode being what it was asked for (Copy when left out), and the VM stays paused until
 * vm.resume, which starts the "guest" (the host agent) as vm.boot does.
 *
 * Environment (set by the test's wrapper script):
 *   FAKE_CH_FEATURES       comma-separated vmm.ping features (default "kvm")
 *   FAKE_CH_VERSION        the version it says it is (default v0.0.0-fake; "v52.0" has on-demand restore)
 *   FAKE_CH_AGENT          the slipway-agent binary to start at vm.boot (none: no guest answers)
 *   FAKE_CH_LOG            append one JSON line per request and event here
 *   FAKE_CH_REJECT         an endpoint (e.g. "vm.boot") to answer 500 with a fake error body
 *   FAKE_CH_API_DELAY_MS   wait this long before serving the API socket
 *   FAKE_CH_EXIT_AT_START  exit at once with this code, after a message on stderr
 *   FAKE_CH_GUEST          what the "guest" does once booted: `panic` (a panic line on the serial
 *                          console, and the VM stays Running, as CH reboots a panicking guest) or
 *                          `poweroff` (state Shutdown, then the process exits 0, as CH does)
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, existsSync, fstatSync, ftruncateSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { CH_OPENAPI_PATH, loadChApiSpec, validateRequestBody, validateVmConfigBody } from './ch-openapi.mjs';

export const FAKE_VERSION = 'v0.0.0-fake';
/** The first version with `memory_restore_mode` (Cloud Hypervisor v52.0's release notes). */
export const FAKE_ON_DEMAND_SINCE = 52;
/** What a FAKE snapshot's state.json says it is. */
export const FAKE_STATE_MARK = "FAKE Cloud Hypervisor stand-in (test/helpers/fake-cloud-hypervisor.mjs): not Cloud Hypervisor's state format";
/** What a real CH answers after `OK `: the host-side port it assigned. */
export const FAKE_HOST_PORT = 1073741824;

// ---------------------------------------------------------------------------------------------
// The fake VMM process
// ---------------------------------------------------------------------------------------------

function parseArgs(argv) {
  let apiSocket;
  for (let k = 0; k < argv.length; k++) {
    const a = argv[k];
    if (a === '--version' || a === '-V') {
      process.stdout.write(`cloud-hypervisor ${process.env.FAKE_CH_VERSION || FAKE_VERSION} (FAKE: test/helpers/fake-cloud-hypervisor.mjs)\n`);
      process.exit(0);
    }
    let value;
    if (a === '--api-socket') value = argv[++k];
    else if (a.startsWith('--api-socket=')) value = a.slice('--api-socket='.length);
    else {
      process.stderr.write(`fake-cloud-hypervisor: unsupported argument ${JSON.stringify(a)} (the fake knows only --api-socket)\n`);
      process.exit(1);
    }
    if (value === undefined) {
      process.stderr.write('fake-cloud-hypervisor: --api-socket needs a value\n');
      process.exit(1);
    }
    // CH's syntax: path=<path>[,fd=<fd>], or a bare path
    const fields = Object.fromEntries(value.split(',').map((p) => (p.includes('=') ? [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)] : ['path', p])));
    apiSocket = fields.path;
  }
  if (!apiSocket) {
    process.stderr.write('fake-cloud-hypervisor: --api-socket path=<path> is required (the fake has no other way in)\n');
    process.exit(1);
  }
  return { apiSocket };
}

function main() {
  const env = process.env;
  const log = (entry) => {
    if (env.FAKE_CH_LOG) appendFileSync(env.FAKE_CH_LOG, `${JSON.stringify({ t: Date.now(), pid: process.pid, ...entry })}\n`);
  };
  process.stderr.write('fake-cloud-hypervisor: a FAKE Cloud Hypervisor for tests (no VM runs)\n');
  if (env.FAKE_CH_EXIT_AT_START) {
    process.stderr.write('fake-cloud-hypervisor: exiting at start as FAKE_CH_EXIT_AT_START asks\n');
    process.exit(Number(env.FAKE_CH_EXIT_AT_START));
  }
  const { apiSocket } = parseArgs(process.argv.slice(2));
  const features = (env.FAKE_CH_FEATURES ?? 'kvm').split(',').map((f) => f.trim()).filter(Boolean);
  const version = env.FAKE_CH_VERSION || FAKE_VERSION;
  const major = Number(/^v?(\d+)\./.exec(version)?.[1] ?? 0);
  const doc = loadChApiSpec();

  let state = 'None'; // None | Created | Running | Paused | Shutdown
  let config;
  /** the RAM the guest pretends to have: markers naming this nonce (drawn at vm.boot, kept by a snapshot and a restore) */
  let ram;
  let agent;
  let vsockServer;
  const connections = new Set();

  const stopGuest = () => {
    for (const c of connections) c.destroy();
    connections.clear();
    if (vsockServer) {
      vsockServer.close();
      if (config?.vsock?.socket) rmSync(config.vsock.socket, { force: true });
      vsockServer = undefined;
    }
    if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill('SIGTERM');
    agent = undefined;
  };
  const exit = (code) => {
    stopGuest();
    rmSync(apiSocket, { force: true });
    log({ event: 'exit', code });
    process.exit(code);
  };
  process.on('SIGTERM', () => exit(0));
  process.on('SIGINT', () => exit(0));
  process.on('exit', () => {
    if (agent && agent.exitCode === null) agent.kill('SIGKILL');
  });

  /** The files a VmConfig names that must be there (a restore also opens its vhost-user sockets and binds its vsock socket); what is not, as CH would say it. */
  const missingFile = (c, what, opts = {}) => {
    const payload = c.payload ?? {};
    for (const [name, p] of [['kernel', payload.kernel], ['initramfs', payload.initramfs], ['firmware', payload.firmware]]) {
      if (p && !existsSync(p)) return `${what}: ${name} ${p}: No such file or directory (os error 2)`;
    }
    for (const item of payload.fw_cfg_config?.items?.item_list ?? []) {
      if (item.file && !existsSync(item.file)) return `${what}: fw_cfg item ${item.name}: ${item.file}: No such file or directory (os error 2)`;
    }
    for (const d of c.disks ?? []) {
      if (d.path && !existsSync(d.path)) return `${what}: disk ${d.path}: No such file or directory (os error 2)`;
      if (opts.sockets && d.vhost_socket && !existsSync(d.vhost_socket)) return `${what}: vhost-user disk ${d.vhost_socket}: Connection refused (os error 111)`;
    }
    if (opts.sockets && c.vsock?.socket && !existsSync(dirname(c.vsock.socket))) return `${what}: vsock socket ${c.vsock.socket}: No such file or directory (os error 2)`;
    return undefined;
  };

  const boot = () => {
    const missing = missingFile(config, 'Error booting VM');
    if (missing) return missing;
    ram = { nonce: randomBytes(8).toString('hex') };
    startGuest('this is a FAKE serial console; no guest kernel runs');
    return undefined;
  };

  /** The "guest": the console line, the host agent, the hybrid vsock (what runs while the VM is Running). */
  const startGuest = (consoleLine) => {
    if (config.serial?.mode === 'File') appendFileSync(config.serial.file, `fake-cloud-hypervisor: ${consoleLine}\n`);
    const vsockPath = config.vsock?.socket;
    const agentSocket = join(dirname(apiSocket), 'fake-ch-guest-agent.sock');
    // a guest that panics or powers off while booting never starts its agent
    if (env.FAKE_CH_AGENT && !env.FAKE_CH_GUEST) {
      rmSync(agentSocket, { force: true });
      agent = spawn(env.FAKE_CH_AGENT, ['--listen-unix', agentSocket, '--no-vsock', '--no-serial', '--no-shutdown-signal'], { stdio: ['ignore', 'ignore', 'inherit'] });
      log({ event: 'agent', pid: agent.pid, socket: agentSocket });
    }
    if (vsockPath) {
      rmSync(vsockPath, { force: true });
      vsockServer = createNetServer((conn) => {
        connections.add(conn);
        conn.on('close', () => connections.delete(conn));
        conn.on('error', () => conn.destroy());
        let buf = Buffer.alloc(0);
        const onData = (chunk) => {
          buf = Buffer.concat([buf, chunk]);
          const nl = buf.indexOf(0x0a);
          if (nl < 0) {
            if (buf.length > 64) conn.destroy();
            return;
          }
          conn.removeListener('data', onData);
          conn.pause();
          const line = buf.subarray(0, nl).toString('latin1');
          const rest = buf.subarray(nl + 1);
          const m = /^CONNECT (\d+)$/.exec(line);
          log({ event: 'vsock', line });
          // CH closes the connection when the guest does not accept: no listener on the port (nor a paused guest)
          if (!m || Number(m[1]) !== 1024 || !agent || state !== 'Running') {
            conn.destroy();
            return;
          }
          const up = connect(agentSocket);
          up.once('error', () => conn.destroy());
          up.once('connect', () => {
            connections.add(up);
            up.on('close', () => {
              connections.delete(up);
              conn.destroy();
            });
            conn.on('close', () => up.destroy());
            conn.write(`OK ${FAKE_HOST_PORT}\n`);
            if (rest.length > 0) up.write(rest);
            conn.pipe(up);
            up.pipe(conn);
            conn.resume();
          });
        };
        conn.on('data', onData);
      });
      vsockServer.listen(vsockPath);
    }
  };

  // ---- memory snapshots, acted out (see the header) ----

  const RAM_FILE = 'memory-ranges';
  const markersFor = (size, nonce) => [0, Math.floor(size / 2) + 12345, size - 4000].map((offset) => ({ offset, text: `FAKE-CH-RAM ${nonce} @${offset}` }));
  const sha256Of = (fd) => {
    const hash = createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    for (let pos = 0; ; ) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) return hash.digest('hex');
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  };
  /** A system error as Rust's std::io::Error prints it. */
  const osError = (err) => ({ ENOENT: 'No such file or directory (os error 2)', EEXIST: 'File exists (os error 17)', EACCES: 'Permission denied (os error 13)' })[err.code] ?? err.message;
  /** The directory of a `file://` URL (undefined when it is not one). */
  const urlDir = (url) => (typeof url === 'string' && url.startsWith('file://') && url.length > 'file://'.length ? url.slice('file://'.length) : undefined);

  const snapshot = (dir) => {
    const size = config.memory?.size ?? 512 << 20;
    const markers = markersFor(size, ram.nonce);
    const made = [];
    try {
      // CH opens each file with create_new: an existing one fails the snapshot
      const ramFd = openSync(join(dir, RAM_FILE), 'wx+', 0o600);
      made.push(join(dir, RAM_FILE));
      try {
        // sparse: the size of the guest's RAM, only the markers written (as CH v52 skips holes)
        ftruncateSync(ramFd, size);
        for (const m of markers) writeSync(ramFd, Buffer.from(m.text), 0, Buffer.byteLength(m.text), m.offset);
        const sha256 = sha256Of(ramFd);
        for (const [name, body] of [['state.json', { fake: FAKE_STATE_MARK, version, vcpus: config.cpus?.boot_vcpus ?? 1, memory_size: size, ram: { nonce: ram.nonce, markers, sha256 } }], ['config.json', config]]) {
          writeFileSync(join(dir, name), JSON.stringify(body), { flag: 'wx', mode: 0o600 });
          made.push(join(dir, name));
        }
        log({ event: 'snapshot', dir, nonce: ram.nonce, sha256, size });
      } finally {
        closeSync(ramFd);
      }
      return undefined;
    } catch (err) {
      if (err.code !== 'EEXIST') for (const f of made) rmSync(f, { force: true });
      return `Error from API: The VM could not be snapshotted: Failed to create snapshot file ${err.path ?? dir}: ${osError(err)}`;
    }
  };

  /** Read and check a snapshot directory as a restore does; the error as CH would answer it, or the restored VM. */
  const readSnapshot = (dir) => {
    const fail = (why) => ({ error: `Error from API: The VM could not be restored: ${why}` });
    // the two JSON files, or why not (in CH's words)
    const json = (name) => {
      const path = join(dir, name);
      let text;
      try {
        text = readFileSync(path, 'utf8');
        return { value: JSON.parse(text) };
      } catch (err) {
        return { why: text === undefined ? `Failed to read ${path}: ${osError(err)}` : `Failed to deserialize ${name}: ${err.message}` };
      }
    };
    const config = json('config.json');
    if (config.why) return fail(config.why);
    const state = json('state.json');
    if (state.why) return fail(state.why);
    const saved = config.value;
    const st = state.value;
    if (st?.fake !== FAKE_STATE_MARK || typeof st.ram?.nonce !== 'string' || !Array.isArray(st.ram.markers)) return fail('state.json is not a snapshot this FAKE wrote');
    const errors = validateVmConfigBody(doc, saved, { fwCfgFeature: features.includes('fw_cfg') });
    if (errors.length > 0) return fail(`config.json is not a valid VmConfig: ${errors.join('; ')}`);
    if (saved.memory?.size !== st.memory_size) return fail(`config.json says ${saved.memory?.size} bytes of RAM, state.json ${st.memory_size}`);
    let fd;
    try {
      fd = openSync(join(dir, RAM_FILE), 'r');
    } catch (err) {
      return fail(`Failed to open ${join(dir, RAM_FILE)}: ${osError(err)}`);
    }
    try {
      const size = fstatSync(fd).size;
      if (size !== st.memory_size) return fail(`${RAM_FILE} is ${size} bytes, the memory ranges ${st.memory_size}`);
      for (const m of st.ram.markers) {
        const got = Buffer.alloc(Buffer.byteLength(m.text));
        readSync(fd, got, 0, got.length, m.offset);
        if (got.toString() !== m.text) return fail(`${RAM_FILE} does not hold the guest's RAM: at ${m.offset} ${JSON.stringify(got.toString())}, not ${JSON.stringify(m.text)}`);
      }
      const sha256 = sha256Of(fd);
      if (sha256 !== st.ram.sha256) return fail(`${RAM_FILE} is corrupt: sha256 ${sha256}, state.json says ${st.ram.sha256}`);
      const missing = missingFile(saved, 'Failed to restore devices', { sockets: true });
      if (missing) return fail(missing);
      return { config: saved, ram: { nonce: st.ram.nonce }, sha256, size };
    } finally {
      closeSync(fd);
    }
  };

  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const endpoint = (req.url ?? '').replace(/^\/api\/v1\//, '');
      const answer = (status, body) => {
        log({ method: req.method, endpoint, status, ...(raw ? { body: safeJson(raw) } : {}), ...(status >= 400 ? { error: body } : {}) });
        const data = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
        res.writeHead(status, { 'Content-Length': Buffer.byteLength(data), ...(typeof body === 'object' ? { 'Content-Type': 'application/json' } : {}) });
        res.end(data);
        return status;
      };
      if (!(req.url ?? '').startsWith('/api/v1/')) return answer(404, `fake-cloud-hypervisor: unknown path ${req.url}`);
      // micro_http (CH's HTTP server) takes no chunked bodies: a request must carry its length
      if (req.headers['transfer-encoding']) return answer(400, `fake-cloud-hypervisor: Transfer-Encoding ${req.headers['transfer-encoding']} is not supported (send Content-Length)`);
      if (raw.length > 0 && req.headers['content-length'] === undefined) return answer(400, 'fake-cloud-hypervisor: a body without Content-Length');
      const routes = {
        'vmm.ping': 'GET', 'vm.info': 'GET', 'vm.create': 'PUT', 'vm.boot': 'PUT', 'vm.shutdown': 'PUT', 'vmm.shutdown': 'PUT', 'vm.delete': 'PUT',
        'vm.pause': 'PUT', 'vm.resume': 'PUT', 'vm.snapshot': 'PUT', 'vm.restore': 'PUT',
      };
      const method = routes[endpoint];
      if (!method) return answer(400, `fake-cloud-hypervisor: unknown endpoint ${endpoint}`);
      if (req.method !== method) return answer(405, `fake-cloud-hypervisor: ${endpoint} takes ${method}, not ${req.method}`);
      if (env.FAKE_CH_REJECT === endpoint) return answer(500, `Error from API: fake failure of ${endpoint} (FAKE_CH_REJECT)`);
      // every body but vm.create's (checked below, with CH's own rules) against the OpenAPI document
      let parsed;
      if (endpoint !== 'vm.create' && raw.length > 0) {
        try {
          parsed = JSON.parse(raw);
        } catch (err) {
          return answer(400, `Error from API: invalid JSON: ${err.message}`);
        }
      }
      if (endpoint !== 'vm.create') {
        const errors = validateRequestBody(doc, method, endpoint, parsed);
        if (errors.length > 0) return answer(400, `Error from API: ${errors.join('; ')}`);
      }
      switch (endpoint) {
        case 'vmm.ping':
          return answer(200, { build_version: `${version} FAKE test/helpers/fake-cloud-hypervisor.mjs`, version, pid: process.pid, features });
        case 'vm.info':
          if (state === 'None') return answer(404, 'VM is not created');
          return answer(200, { config, state });
        case 'vm.create': {
          if (state !== 'None') return answer(500, 'Error from API: The VM could not be created: VM is already created');
          let body;
          try {
            body = JSON.parse(raw);
          } catch (err) {
            return answer(400, `Error from API: invalid JSON: ${err.message}`);
          }
          const errors = validateVmConfigBody(doc, body, { fwCfgFeature: features.includes('fw_cfg') });
          if (errors.length > 0) return answer(400, `Error from API: The VM could not be created: ${errors.join('; ')}`);
          config = body;
          state = 'Created';
          return answer(204);
        }
        case 'vm.boot': {
          if (state === 'None') return answer(404, 'Error from API: The VM could not boot: VM is not created');
          if (state === 'Running') return answer(500, 'Error from API: The VM could not boot: VM is already running');
          const failure = boot();
          if (failure) return answer(500, failure);
          state = 'Running';
          if (env.FAKE_CH_GUEST === 'panic' && config.serial?.mode === 'File') {
            setTimeout(() => appendFileSync(config.serial.file, 'Kernel panic - not syncing: FAKE stand-in panic\n'), 50);
          } else if (env.FAKE_CH_GUEST === 'poweroff') {
            setTimeout(() => {
              stopGuest();
              state = 'Shutdown';
              log({ event: 'guest-poweroff' });
              setTimeout(() => exit(0), 300);
            }, 50);
          }
          return answer(204);
        }
        case 'vm.shutdown':
          if (state === 'None') return answer(404, 'Error from API: The VM could not shut down: VM is not created');
          if (state !== 'Running') return answer(405, 'Error from API: The VM could not shut down: VM is not running');
          stopGuest();
          state = 'Shutdown';
          return answer(204);
        case 'vm.pause':
          if (state === 'None') return answer(404, 'Error from API: The VM could not be paused: VM is not created');
          if (state !== 'Running') return answer(405, `Error from API: The VM could not be paused: InvalidStateTransition(${state}, Paused)`);
          state = 'Paused';
          return answer(204);
        case 'vm.resume':
          if (state === 'None') return answer(404, 'Error from API: The VM could not be resumed: VM is not created');
          if (state !== 'Paused') return answer(405, `Error from API: The VM could not be resumed: InvalidStateTransition(${state}, Running)`);
          state = 'Running';
          if (!agent && !vsockServer) startGuest('resumed from a FAKE snapshot; no guest kernel runs');
          return answer(204);
        case 'vm.snapshot': {
          if (state === 'None') return answer(404, 'Error from API: The VM could not be snapshotted: VM is not created');
          if (state !== 'Paused') return answer(500, 'Error from API: The VM could not be snapshotted: Trying to snapshot while VM is running');
          const dir = urlDir(parsed.destination_url);
          if (!dir) return answer(500, `Error from API: The VM could not be snapshotted: Invalid URL ${JSON.stringify(parsed.destination_url)}`);
          const failure = snapshot(dir);
          return failure ? answer(500, failure) : answer(204);
        }
        case 'vm.restore': {
          if (state !== 'None') return answer(500, 'Error from API: The VM could not be restored: VM is already created');
          const dir = urlDir(parsed.source_url);
          if (!dir) return answer(500, `Error from API: The VM could not be restored: Invalid URL ${JSON.stringify(parsed.source_url)}`);
          const mode = parsed.memory_restore_mode;
          for (const field of ['memory_restore_mode', 'resume']) {
            if (parsed[field] !== undefined && major < FAKE_ON_DEMAND_SINCE) return answer(400, `Error from API: this FAKE stands in for Cloud Hypervisor ${version}, which has no RestoreConfig.${field} (v${FAKE_ON_DEMAND_SINCE} on; an older CH would silently ignore it)`);
          }
          if (mode === 'OnDemand' && parsed.prefault === true) return answer(400, 'Error from API: The VM could not be restored: prefault is not supported with memory_restore_mode OnDemand');
          const restored = readSnapshot(dir);
          if (restored.error) return answer(500, restored.error);
          if (mode === 'OnDemand' && restored.size % 4096 !== 0) return answer(500, 'Error from API: The VM could not be restored: on-demand restore needs page-aligned memory ranges');
          config = restored.config;
          ram = restored.ram;
          state = 'Paused';
          log({ event: 'restored', mode: mode ?? 'Copy', nonce: ram.nonce, sha256: restored.sha256, size: restored.size, dir });
          if (parsed.resume === true) {
            state = 'Running';
            startGuest('resumed from a FAKE snapshot; no guest kernel runs');
          }
          return answer(204);
        }
        case 'vm.delete':
          stopGuest();
          state = 'None';
          config = undefined;
          return answer(204);
        case 'vmm.shutdown':
          answer(204);
          res.on('finish', () => setImmediate(() => exit(0)));
          return 204;
        default:
          return answer(500, 'unreachable');
      }
    });
  });
  const listen = () => {
    rmSync(apiSocket, { force: true });
    server.listen(apiSocket, () => log({ event: 'listening', apiSocket, features }));
  };
  const delay = Number(env.FAKE_CH_API_DELAY_MS ?? 0);
  if (delay > 0) setTimeout(listen, delay);
  else listen();
}

function safeJson(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    statSync(CH_OPENAPI_PATH);
  } catch {
    process.stderr.write(`fake-cloud-hypervisor: the OpenAPI file ${CH_OPENAPI_PATH} is missing (set CH_OPENAPI_PATH)\n`);
    process.exit(1);
  }
  main();
}
