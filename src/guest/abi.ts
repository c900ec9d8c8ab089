/**
 * The guest ABI: what the host side and slipway's guest (its kernel, guest/init.c, guest/agent.c)
 * must agree on, in one place. Every VMM driver and the host's agent connections take these from
 * here; each has a twin in the guest's C sources, and test/vmm-contract.test.ts reads those
 * sources to hold the two equal.
 *
 * A leaf module: it imports nothing, so that src/guest and src/vmm can both use it.
 */

/** The vsock port slipway-agent listens on (guest/agent.h AGENT_VSOCK_PORT; docs/agent-protocol.md). */
export const AGENT_VSOCK_PORT = 1024;

/**
 * The virtio-serial port the agent serves where there is no vsock: the VMM names the port this,
 * and the guest finds it as /dev/virtio-ports/<name> (guest/agent.h DEFAULT_SERIAL_PATH).
 */
export const AGENT_SERIAL_PORT_NAME = 'org.slipway.agent';

/** The fw_cfg item that carries the boot config (guest/init.c FW_CFG_PATH: .../by_name/<name>/raw). */
export const FW_CFG_NAME = 'opt/slipway/config';

/** The kernel command line parameter that carries the boot config, base64, where fw_cfg does not (guest/init.c). */
export const BOOT_CONFIG_CMDLINE_PARAM = 'slipway.config';

/** The serial port the guest kernel writes its console to: the VMM's first one. */
export const GUEST_SERIAL_CONSOLE = 'ttyS0';

/** `slipway.config=<base64 of the config>`, for the kernel command line. */
export function bootConfigCmdlineArg(bootConfig: string): string {
  return `${BOOT_CONFIG_CMDLINE_PARAM}=${Buffer.from(bootConfig).toString('base64')}`;
}

export interface GuestCmdlineOptions {
  /** the accelerator the guest runs under: KVM adds its clock hints */
  accel: 'kvm' | 'tcg';
  /** the caller's own kernel arguments, appended */
  extra?: string | undefined;
  /** the boot config, when it travels on the command line rather than in fw_cfg */
  bootConfig?: string | undefined;
}

/**
 * The guest kernel's command line: the seed's quiet line, with the KVM clock hints only under KVM,
 * then the caller's arguments, then the boot config when it goes this way. `loglevel=1`, not the
 * seed's 0: the console then shows only KERN_EMERG lines, which a normal boot has none of, but a
 * panic can raise the level to print itself (console_verbose() leaves a level of 0 at 0, so under
 * loglevel=0 a panic is silent and looks like a bare reset). `panic=-1` and `reboot=t`: a panic
 * resets at once, which a VMM run with no reboot turns into its end. The length is not checked
 * here (src/guest/boot-config.ts checkKernelCmdline does, in the drivers).
 */
export function guestKernelCmdline(opts: GuestCmdlineOptions): string {
  // no_timer_check everywhere: under TCG on a loaded host the kernel's IO-APIC timer check can see
  // too few ticks and panic ("IO-APIC + timer doesn't work!"), seen with ten guests on two cores
  const parts = [`console=${GUEST_SERIAL_CONSOLE}`, 'quiet', 'loglevel=1', 'panic=-1', 'reboot=t', 'no_timer_check'];
  if (opts.accel === 'kvm') parts.push('tsc=reliable', 'clocksource=kvm-clock');
  if (opts.extra) parts.push(opts.extra);
  if (opts.bootConfig !== undefined) parts.push(bootConfigCmdlineArg(opts.bootConfig));
  return parts.join(' ');
}
