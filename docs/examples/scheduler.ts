/**
 * An example scheduler (docs/api.md): boot ten VMs from one image at once, run a command in each,
 * snapshot one, delete them all. test/daemon.test.ts runs it against a real daemon.
 *
 *   SLIPWAY_DAEMON=/run/slipway/slipway.sock IMAGE=... SNAPSHOT_REF=... npx tsx docs/examples/scheduler.ts
 */
import { SlipwayClient, type Vm } from '../../src/client/index.js';
import { isSlipwayError } from '../../src/errors.js';

const IMAGE = process.env.IMAGE ?? 'registry.example.com/disks/debian:12';
const SNAPSHOT_REF = process.env.SNAPSHOT_REF ?? 'registry.example.com/disks/debian:12-worker-0';
const COUNT = 10;

// SLIPWAY_DAEMON is a socket path or http(s)://host:port, as for `slipway vm`.
const where = process.env.SLIPWAY_DAEMON ?? '/run/slipway/slipway.sock';
const client = /^https?:\/\//.test(where)
  ? new SlipwayClient({ url: where, token: process.env.SLIPWAY_API_TOKEN ?? '' })
  : new SlipwayClient({ socketPath: where });

function describe(err: unknown): string {
  return isSlipwayError(err) ? `${err.code}: ${err.message}` : String(err);
}

async function main(): Promise<void> {
  const health = await client.health();
  console.log(`daemon ${health.version}: ${health.vms.running} running, ${health.vms.booting} booting, ${health.vms.queued} queued`);

  // Ask for all ten at once. The daemon boots 4 at a time (--max-boots) and queues the rest;
  // each createVm resolves when that VM's agent answers.
  const boots = await Promise.allSettled(
    Array.from({ length: COUNT }, () => client.createVm({ image: IMAGE, cpus: 1, memoryMiB: 512 })),
  );
  const vms: Vm[] = [];
  for (const b of boots) {
    if (b.status === 'fulfilled') vms.push(b.value);
    else console.error(`boot failed: ${describe(b.reason)}`); // LIMIT_EXCEEDED, VM_BOOT_FAILED, TAG_UNKNOWN, ...
  }
  try {
    for (const vm of vms) console.log(`${vm.id} ${vm.digest} accel=${vm.accel} agent_ready=${vm.timings.agent_ready} ms`);

    // One command in each VM, concurrently; output is collected, the promise resolves with the exit.
    const runs = await Promise.allSettled(
      vms.map((vm, i) =>
        client.exec(vm.id, { argv: ['sh', '-c', 'echo "worker $WORKER on $(hostname)"; uname -r'], env: { WORKER: String(i) }, timeoutMs: 60_000 }),
      ),
    );
    runs.forEach((r, i) => {
      const id = vms[i]?.id;
      if (r.status === 'rejected') console.error(`${id}: exec failed: ${describe(r.reason)}`);
      else console.log(`${id}: exit ${r.value.exitCode}${r.value.timedOut ? ' (timed out)' : ''}: ${r.value.stdout.toString('utf8').trim()}`);
    });

    // Snapshot the first VM: a delta of IMAGE pushed to SNAPSHOT_REF; the VM keeps running.
    const first = vms[0];
    if (first) {
      await client.exec(first.id, { argv: ['sh', '-c', 'mkdir -p /srv && date > /srv/snapshotted-at'] });
      const snap = await client.snapshot(first.id, SNAPSHOT_REF);
      console.log(`snapshot ${snap.ref}@${snap.digest} (base ${snap.base}): ${snap.dirtyChunks} dirty chunks, ${snap.uploadedBytes} bytes uploaded, guest frozen ${snap.timings.stageMs} ms`);
    }
  } finally {
    // Delete every VM this script booted, whatever happened above.
    const deletes = await Promise.allSettled(vms.map((vm) => client.deleteVm(vm.id)));
    deletes.forEach((d, i) => {
      if (d.status === 'rejected') console.error(`${vms[i]?.id}: delete failed: ${describe(d.reason)}`);
    });
    const left = await client.listVms();
    console.log(`${left.length} VM(s) left on this host`);
    await client.close();
  }
}

main().catch((err: unknown) => {
  console.error(describe(err));
  process.exitCode = 1;
});
