#!/usr/bin/env node
/**
 * FAKE Cloud Hypervisor: a test stand-in, NOT Cloud Hypervisor. Cloud Hypervisor cannot run on the
 * machines these tests run on (no binary, no usable KVM), so this Node script plays its part for
 * src/vmm/cloud-hypervisor.ts: started as `<fake> --api-socket path=<sock>`, it serves the REST
 * API that CH serves there (vmm.ping, vm.create, vm.boot, vm.info, vm.shutdown, vmm.shutdown) and,
 * once "booted", the host side of CH's hybrid vsock. No guest runs: "booting" starts a real
 * slipway-agent on the host (`--listen-unix`), and a hybrid-vsock `CONNECT 1024` is answered
 * `OK 1073741824` and proxied to it, so the driver and AgentClient talk to a real agent.
 *
 * Everything it accepts is checked the way CH would, as far as a test can: vm.create bodies are
 * validated against the OpenAPI description CH ships (vendor/cloud-hypervisor/
 * cloud-hypervisor.yaml, components.schemas.VmConfig), strictly (a property the schema does not
 * name is refused, where CH would silently ignore it: that catches misspelt fields), then
 * `payload.fw_cfg_config` against CH's serde struct, then a subset of CH's ValidationError checks
 * (all in ch-openapi.mjs, which the tests use too).
 *
 * Environment (set by the test's wrapper script):
 *   FAKE_CH_FEATURES       comma-separated vmm.ping features (default "kvm")
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
import { appendFileSync, existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { CH_OPENAPI_PATH, loadChApiSpec, validateVmConfigBody } from './ch-openapi.mjs';

export const FAKE_VERSION = 'v0.0.0-fake';
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
      process.stdout.write(`cloud-hypervisor ${FAKE_VERSION} (FAKE: test/helpers/fake-cloud-hypervisor.mjs)\n`);
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
  const doc = loadChApiSpec();

  let state = 'None'; // None | Created | Running | Shutdown
  let config;
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

  const boot = () => {
    const payload = config.payload ?? {};
    for (const [what, p] of [['kernel', payload.kernel], ['initramfs', payload.initramfs], ['firmware', payload.firmware]]) {
      if (p && !existsSync(p)) return `Error booting VM: ${what} ${p}: No such file or directory (os error 2)`;
    }
    for (const item of payload.fw_cfg_config?.items?.item_list ?? []) {
      if (item.file && !existsSync(item.file)) return `Error booting VM: fw_cfg item ${item.name}: ${item.file}: No such file or directory (os error 2)`;
    }
    for (const d of config.disks ?? []) {
      if (d.path && !existsSync(d.path)) return `Error booting VM: disk ${d.path}: No such file or directory (os error 2)`;
    }
    if (config.serial?.mode === 'File') writeFileSync(config.serial.file, 'fake-cloud-hypervisor: this is a FAKE serial console; no guest kernel runs\n');
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
          // CH closes the connection when the guest does not accept: no listener on the port
          if (!m || Number(m[1]) !== 1024 || !agent) {
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
    return undefined;
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
      };
      const method = routes[endpoint];
      if (!method) return answer(400, `fake-cloud-hypervisor: unknown endpoint ${endpoint}`);
      if (req.method !== method) return answer(405, `fake-cloud-hypervisor: ${endpoint} takes ${method}, not ${req.method}`);
      if (env.FAKE_CH_REJECT === endpoint) return answer(500, `Error from API: fake failure of ${endpoint} (FAKE_CH_REJECT)`);
      switch (endpoint) {
        case 'vmm.ping':
          return answer(200, { build_version: `${FAKE_VERSION} FAKE test/helpers/fake-cloud-hypervisor.mjs`, version: FAKE_VERSION, pid: process.pid, features });
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
