import { SlipwayError } from '../errors.js';
import { buildGuest, buildKernel } from '../guest/build.js';
import { buildRootfs } from '../guest/rootfs.js';
import { withTargets } from '../oci/open.js';
import { parseCommand, parseSize, type CommandIO, type CommandSpec } from './args.js';

const USAGE = {
  kernel: 'slipway kernel build [--json]',
  guest: 'slipway guest build [--json]',
  rootfs: 'slipway rootfs build --from busybox|debian|<container image ref> -o <file> [--size 1G] [--suite S] [--mirror URL] [--plain-http]',
} as const;

/** slipway kernel build [--json] */
export async function kernelCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'build') throw new SlipwayError('USAGE', `usage: ${USAGE.kernel}`);
  const { values } = parseCommand('kernel build', rest, { json: { type: 'boolean' } }, { min: 0, max: 0, usage: USAGE.kernel });
  const started = Date.now();
  const k = await buildKernel({ onLine: (l) => io.stderr.write(`${l}\n`) });
  if (values.json) io.stdout.write(`${JSON.stringify(k)}\n`);
  else io.stdout.write(`vmlinux ${k.vmlinux}\nbzImage ${k.bzImage}\nconfig  ${k.config}\n(${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
  return 0;
}

/** slipway guest build [--json] */
export async function guestCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'build') throw new SlipwayError('USAGE', `usage: ${USAGE.guest}`);
  const { values } = parseCommand('guest build', rest, { json: { type: 'boolean' } }, { min: 0, max: 0, usage: USAGE.guest });
  const g = await buildGuest({ onLine: (l) => io.stderr.write(`${l}\n`) });
  if (values.json) io.stdout.write(`${JSON.stringify({ initramfs: g.initramfs })}\n`);
  else io.stdout.write(`initramfs ${g.initramfs}\n`);
  return 0;
}

/** slipway rootfs build --from busybox|debian|<image ref> -o <file> [--size S] */
export async function rootfsCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  const usage = USAGE.rootfs;
  if (sub !== 'build') throw new SlipwayError('USAGE', `usage: ${usage}`);
  const { values } = parseCommand('rootfs build', rest, {
    from: { type: 'string' }, output: { type: 'string', short: 'o' }, size: { type: 'string' }, 'plain-http': { type: 'boolean' }, suite: { type: 'string' }, mirror: { type: 'string' },
  }, { min: 0, max: 0, usage });
  if (!values.from || !values.output) throw new SlipwayError('USAGE', `rootfs build: --from and -o are required\nusage: ${usage}`);
  const result = await withTargets({ plainHttp: values['plain-http'] === true }, (targets) => buildRootfs({
    from: values.from as string, output: values.output as string, targets, onLine: (l) => io.stderr.write(`${l}\n`),
    ...(values.size ? { sizeBytes: parseSize(values.size, '--size') } : {}),
    ...(values.suite ? { suite: values.suite } : {}),
    ...(values.mirror ? { mirror: values.mirror } : {}),
  }));
  io.stdout.write(`${JSON.stringify(result)}\n`);
  return 0;
}

export const GUEST_COMMANDS: CommandSpec[] = [
  { name: 'kernel', help: [{ usage: USAGE.kernel, summary: 'build (or find cached) the guest kernel' }], run: kernelCommand },
  { name: 'guest', help: [{ usage: USAGE.guest, summary: 'build the initramfs holding slipway\'s init and agent' }], run: guestCommand },
  { name: 'rootfs', help: [{ usage: USAGE.rootfs, summary: 'make a root disk image' }], run: rootfsCommand },
];
