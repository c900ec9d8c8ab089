#!/usr/bin/env node
/**
 * FAKE QEMU: a test stand-in, NOT QEMU. It plays the part of a QEMU whose guest fails in ways this
 * host cannot produce on demand (a pvpanic report, a guest reset), so that the QEMU driver's boot
 * watch can be tested: started with QEMU's arguments, it reads `-qmp unix:<path>,...` and
 * `-serial file:<path>`, serves QMP on that socket (greeting, qmp_capabilities, query-status,
 * quit) and acts out FAKE_QEMU_SCENARIO once a client has negotiated capabilities:
 *   internal-error        STOP event; query-status says internal-error; stays alive (as QEMU does)
 *   internal-error-early  already internal-error before any client connects; no event at all
 *   guest-panicked        console panic line, GUEST_PANICKED event, STOP; status guest-panicked
 *   guest-reset           SHUTDOWN {guest: true, reason: guest-reset}, then exits 0 (-no-reboot)
 *   guest-shutdown        SHUTDOWN {guest: true, reason: guest-shutdown}, then exits 0
 *   running               the guest "runs" until killed: HMP `info registers` shows its boot
 *                         processor in the kernel's decompressor for 600 ms, then in the kernel proper
 *   kvm-stuck             the guest "runs" but `info registers` shows it in the decompressor for
 *                         ever (its RIP moving), as kvm_pvm leaves an ordinary kernel on some hosts
 * Started as slipway's accelerator probe starts QEMU (a kernel, no -initrd), FAKE_QEMU_PROBE says
 * how the probe goes instead: `panic` (the kernel's root-mount panic on the console, exit 0, as a
 * working KVM gives) or `fail` (exit 1 at once).
 */
import { appendFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';

const args = process.argv.slice(2);
const value = (flag) => {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
};
const qmpArg = value('-qmp');
const serialArg = value('-serial');
const qmpPath = qmpArg?.startsWith('unix:') ? qmpArg.slice(5).split(',')[0] : undefined;
const consolePath = serialArg?.startsWith('file:') ? serialArg.slice(5) : undefined;
const scenario = process.env.FAKE_QEMU_SCENARIO ?? 'running';
process.stderr.write(`fake-qemu: a FAKE QEMU for tests (scenario ${scenario}; no guest runs)\n`);
if (!qmpPath) {
  process.stderr.write('fake-qemu: -qmp unix:<path>,server=on,wait=off is required\n');
  process.exit(1);
}
if (consolePath) writeFileSync(consolePath, 'fake-qemu: this is a FAKE serial console\n');
const say = (line) => consolePath && appendFileSync(consolePath, `${line}\n`);
const probe = !args.includes('-initrd') ? process.env.FAKE_QEMU_PROBE : undefined;
if (probe === 'fail') {
  process.stderr.write('fake-qemu: a FAKE probe that fails\n');
  process.exit(1);
}
if (probe === 'panic') {
  say('Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) (FAKE)');
  setTimeout(() => process.exit(0), 20);
}

let status = scenario === 'internal-error-early' ? 'internal-error' : 'running';
if (scenario === 'internal-error-early') process.stderr.write('KVM internal error. Suberror: 1 (FAKE)\n');
const timestamp = () => ({ seconds: Math.floor(Date.now() / 1000), microseconds: 0 });
const started = Date.now();
/** HMP `info registers` as QEMU 7.2 prints it for x86-64 (its first lines); early, RIP moves within the decompressor */
let early = 0x220aa0d;
const registers = () => {
  if (scenario === 'kvm-stuck' || Date.now() - started < 600) early = early === 0x220aa0d ? 0x220a6e1 : 0x220aa0d;
  return scenario === 'kvm-stuck' || Date.now() - started < 600
    ? `RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000\r\nRIP=${early.toString(16).padStart(16, '0')} RFL=00000087 [--S--PC] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n`
    : 'RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000\r\nRIP=ffffffff81c3a2be RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n';
};

const server = createServer((conn) => {
  const send = (obj) => conn.write(`${JSON.stringify(obj)}\n`);
  const event = (name, data) => send({ event: name, data, timestamp: timestamp() });
  send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'FAKE' }, capabilities: [] } });
  let buf = '';
  let acted = false;
  conn.on('data', (d) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch {
        send({ error: { class: 'GenericError', desc: 'JSON parse error' } });
        continue;
      }
      if (cmd.execute === 'qmp_capabilities') {
        send({ return: {} });
        if (!acted) {
          acted = true;
          setImmediate(() => act(event));
        }
      } else if (cmd.execute === 'query-status') send({ return: { status, running: status === 'running', singlestep: false } });
      else if (cmd.execute === 'human-monitor-command' && cmd.arguments?.['command-line'] === 'info registers') {
        say('fake-qemu: info registers');
        send({ return: registers() });
      }
      else if (cmd.execute === 'quit') {
        send({ return: {} });
        process.exit(0);
      } else send({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found (FAKE)` } });
    }
  });
  conn.on('error', () => conn.destroy());
});

function act(event) {
  switch (scenario) {
    case 'internal-error':
      // the harder order for the watch: the STOP over QMP first, the stderr line a little after
      // (QEMU writes the line first, but the two come over different descriptors)
      status = 'internal-error';
      event('STOP', {});
      setTimeout(() => process.stderr.write('KVM internal error. Suberror: 1 (FAKE)\n'), 50);
      break;
    case 'guest-panicked':
      say('Kernel panic - not syncing: FAKE stand-in panic');
      status = 'guest-panicked';
      event('GUEST_PANICKED', { action: 'pause', info: { type: 'hyper-v' } });
      event('STOP', {});
      break;
    case 'guest-reset':
    case 'guest-shutdown':
      event('SHUTDOWN', { guest: true, reason: scenario });
      setTimeout(() => process.exit(0), 10);
      break;
    default:
      break;
  }
}

rmSync(qmpPath, { force: true });
server.listen(qmpPath);
const stop = () => {
  rmSync(qmpPath, { force: true });
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
