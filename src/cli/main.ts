import { SlipwayError } from '../errors.js';
import { cacheCommand, readCommand } from './cache-commands.js';
import { guestCommand, kernelCommand, rootfsCommand } from './guest-commands.js';
import { runCommand } from './run-command.js';
import { serveCommand } from './serve-command.js';
import { daemonCommand, vmCommand } from './daemon-commands.js';
import { doctorCommand } from './doctor-command.js';
import { copyCommand, inspectCommand, pullCommand, pushCommand, type CommandIO } from './disk-commands.js';

const USAGE = `slipway: OCI-backed disks for microVMs

usage: slipway <command> [options]

  push <image-file> <ref>   push a raw disk image as a chunked, compressed OCI artifact
  pull <ref> <out-file>     pull a disk into a sparse raw file
  inspect <ref>             describe a disk artifact (JSON)
  copy <src-ref> <dst-ref>  copy an artifact between registries and layouts
  read <ref> --offset N --length N
                            bytes of a disk to stdout, fetched lazily through the chunk cache
  cache stats               what the host chunk cache holds
  cache prefetch <ref>      fill the cache with a whole disk (low priority)
  cache gc [--max-size S]   evict least-recently-used chunks, reconcile the cache directory
  kernel build [--json]     build (or find cached) the guest kernel
  guest build [--json]      build the initramfs holding slipway's init and agent
  rootfs build --from busybox|debian|<image> -o <file>
                            make a root disk image
  doctor [--json]           what this host offers (KVM, QEMU features, vsock, hugepages, ...) and what slipway will use
  run <ref> | --disk <raw-file> [--hostname H] [--env K=V] [--cpus N] [--memory M] [--net none|user] -- <cmd...>
                            boot a VM from a disk, run a command in it, exit with its status
  serve <ref> --socket <path> [--rw] [--overlay <dir>]
                            serve a disk to a VMM over vhost-user-blk, fetching chunks on demand
  daemon [--socket PATH] [--listen HOST:PORT --token-file F] [--state-dir DIR]
                            the host daemon: an HTTP API for schedulers (docs/api.md)
  vm create <image> | ls | show <id> | exec <id> -- <cmd...> | snapshot <id> <ref> [--memory] | rm <id>
                            drive VMs through the daemon (--daemon <socket|url>, or SLIPWAY_DAEMON)

references: oci:<dir>[:tag|@digest] (an OCI image layout) or host[:port]/repo[:tag|@digest]
common options: --plain-http, --progress=auto|json|tty|none, --cache-dir DIR (or SLIPWAY_CACHE_DIR)
`;

type Command = (argv: string[], io: CommandIO) => Promise<number>;

const COMMANDS: Record<string, Command> = {
  push: pushCommand,
  pull: pullCommand,
  inspect: inspectCommand,
  copy: copyCommand,
  read: readCommand,
  cache: cacheCommand,
  kernel: kernelCommand,
  guest: guestCommand,
  rootfs: rootfsCommand,
  run: runCommand,
  serve: serveCommand,
  daemon: daemonCommand,
  vm: vmCommand,
  doctor: doctorCommand,
};

export async function main(argv: string[], io: CommandIO = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(USAGE);
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.stderr.write(`slipway: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return 2;
  }
  try {
    return await command(rest, io);
  } catch (err) {
    if (err instanceof SlipwayError) {
      io.stderr.write(`slipway ${name}: error ${err.code}: ${err.message}\n`);
      return err.code === 'USAGE' ? 2 : 1;
    }
    throw err;
  }
}
