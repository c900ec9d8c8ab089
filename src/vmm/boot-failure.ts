/**
 * What a VM that died while booting died of (driver.ts's BootFailure), and the error people and
 * schedulers get for it: its own code (docs/errors.md), what happened, the console's last lines.
 */
import { SlipwayError } from '../errors.js';
import type { BootFailure, RunningVm, VmExit } from './driver.js';

const WHAT: Record<BootFailure['code'], string> = {
  VMM_INTERNAL_ERROR: 'the VMM could not run the guest',
  GUEST_PANICKED: 'the guest kernel panicked',
  GUEST_POWERED_OFF: 'the guest powered off before its agent answered',
  GUEST_RESET: 'the guest reset before its agent answered',
  VMM_EXITED: 'the VMM exited before the guest agent answered',
};

/** The kernel's panic line: printed even on a quiet console (panic() raises the log level). */
const PANIC_LINE = /Kernel panic - not syncing:[^\n]*/;

/**
 * What a VMM's end means, from what it said last: the guest's own shutdown reason where the VMM
 * gave one (QMP SHUTDOWN `reason`: guest-shutdown, guest-reset, guest-panic), a panic line on the
 * console, else the process's exit.
 */
export function classifyEnd(info: { console: string; shutdownReason?: string | undefined; exit?: VmExit | undefined }): BootFailure {
  const panic = PANIC_LINE.exec(info.console)?.[0];
  if (panic || info.shutdownReason === 'guest-panic') return { code: 'GUEST_PANICKED', detail: panic ?? 'the VMM reported a guest panic' };
  if (info.shutdownReason === 'guest-shutdown') return { code: 'GUEST_POWERED_OFF', detail: 'the guest powered off' };
  if (info.shutdownReason === 'guest-reset') return { code: 'GUEST_RESET', detail: 'the guest reset (triple fault or reboot) and the VMM, run with no reboot, ended' };
  const e = info.exit;
  return { code: 'VMM_EXITED', detail: e ? (e.signal ? `killed by ${e.signal}` : `exit code ${e.code}`) : 'the process is gone' };
}

/** The error for a failed boot: its code, what happened, then the console's and VMM's last words. */
export function bootFailureError(vm: RunningVm, failure: BootFailure): SlipwayError {
  const tail = vm.consoleTail(3000).trim();
  return new SlipwayError(failure.code, `${WHAT[failure.code]}: ${failure.detail}${tail ? `\nconsole and VMM output:\n${tail}` : ' (no console output)'}`, { context: { accel: vm.accel, accelSource: vm.accelVerdict?.source ?? null, accelFault: failure.accelFault === true } });
}
