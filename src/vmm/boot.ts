/**
 * Booting a VM to its agent, for `slipway run` and the daemon alike: start it with a driver,
 * wait for the agent while the driver watches the VM, and turn a VM that dies on the way into an
 * error with its own code (docs/errors.md) as soon as it dies, not at the agent's deadline. When
 * KVM was chosen automatically and the guest dies of a KVM internal error, the VM is booted once
 * more under TCG and the host's verdict is changed (src/vmm/accel.ts).
 */
import { SlipwayError, isSlipwayError } from '../errors.js';
import { AgentClient, waitForAgent } from '../guest/agent-client.js';
import { bootFailureError } from './boot-failure.js';
import type { RunningVm, VmmDriver, VmSpec } from './driver.js';

export interface BootOptions {
  /** how long the agent has to answer (TCG is slow) */
  agentDeadlineMs: number;
  /** called with every VM started (a second one after a fallback), before its agent answers */
  onStarted?: (vm: RunningVm) => void;
  /** work on a started VM before its agent is waited for (a restore loads its device state); its failure fails the boot */
  afterStart?: (vm: RunningVm) => Promise<void>;
  /** one line for people or the log: "accel: kvm failed ...; booting again under tcg" */
  notice?: (message: string) => void;
  signal?: AbortSignal;
}

/** Wait for the agent of a started VM, or for the driver to see it fail; the VM is killed on failure. */
async function agentOrFailure(vm: RunningVm, opts: BootOptions): Promise<AgentClient> {
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const booted = waitForAgent(async () => new AgentClient(await vm.connectAgent()), opts.agentDeadlineMs, { signal: stop.signal });
  try {
    const outcome = await Promise.race([booted.then((client) => ({ client })), vm.failure.then((failure) => ({ failure }))]);
    if ('client' in outcome) {
      vm.bootDone?.();
      return outcome.client;
    }
    stop.abort();
    booted.then((c) => c.close(), () => undefined);
    if (opts.signal?.aborted) throw new SlipwayError('ABORTED', 'the boot was interrupted');
    throw bootFailureError(vm, outcome.failure);
  } catch (err) {
    await vm.kill(500).catch(() => undefined);
    if (isSlipwayError(err, 'AGENT_PROTOCOL') && err.context.reason === 'timeout') {
      throw new SlipwayError('VM_BOOT_FAILED', `the guest agent did not answer within ${opts.agentDeadlineMs} ms; console:\n${vm.consoleTail(3000).trim()}`, { cause: err });
    }
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** Run `opts.afterStart` on a started VM; if it fails, the VM is killed (the boot watch's verdict wins when it has one). */
async function afterStart(vm: RunningVm, opts: BootOptions): Promise<void> {
  if (!opts.afterStart) return;
  try {
    await opts.afterStart(vm);
  } catch (err) {
    const failed = await Promise.race([vm.failure, new Promise<undefined>((r) => setTimeout(() => r(undefined), 500).unref())]);
    await vm.kill(500).catch(() => undefined);
    throw failed ? bootFailureError(vm, failed) : err;
  }
}

/**
 * Whether a failed boot is KVM's fault under an automatic choice: the guest stopped with an
 * internal error, or QEMU could not use KVM at all. Then TCG is worth one more try.
 */
function kvmFailedAutomatically(err: unknown): boolean {
  if (!isSlipwayError(err)) return false;
  const c = err.context;
  return c.accelFault === true && c.accel === 'kvm' && c.accelSource !== 'forced' && c.accelSource !== null && c.accelSource !== undefined;
}

/**
 * Start a VM and wait for its agent. Resolves with the VM and a connected agent client. Errors
 * (the VM killed first): VMM_INTERNAL_ERROR, GUEST_PANICKED, GUEST_POWERED_OFF, GUEST_RESET,
 * VMM_EXITED as the driver saw them, within moments of the failure; VM_BOOT_FAILED when the
 * agent is silent until `agentDeadlineMs`; ABORTED on `signal`; the driver's start errors.
 * Under an automatically chosen KVM that fails the guest (see kvmFailedAutomatically), the VM is
 * booted once more under TCG and the driver records TCG for this host (unless it finds KVM sound
 * after all: QemuDriver.accelFailed).
 */
export async function bootVm(driver: VmmDriver, spec: VmSpec, opts: BootOptions): Promise<{ vm: RunningVm; client: AgentClient }> {
  let vm: RunningVm | undefined;
  try {
    vm = await driver.start(spec);
    opts.onStarted?.(vm);
    await afterStart(vm, opts);
    return { vm, client: await agentOrFailure(vm, opts) };
  } catch (err) {
    if (!kvmFailedAutomatically(err) || !driver.accelFailed) throw err;
    const detail = (err as Error).message.split('\n')[0] ?? '';
    const recorded = await driver.accelFailed(spec, detail);
    opts.notice?.(`accel: kvm${vm?.accelVerdict ? ` (${vm.accelVerdict.reason})` : ''} failed: ${detail}; booting again under tcg, ${recorded ? 'and tcg from now on for this host' : 'once (a probe boot under kvm passed: the host keeps kvm)'}`);
    const again = await driver.start({ ...spec, accel: 'tcg' });
    opts.onStarted?.(again);
    await afterStart(again, opts);
    return { vm: again, client: await agentOrFailure(again, opts) };
  }
}
