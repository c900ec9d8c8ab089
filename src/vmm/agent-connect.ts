/**
 * How the host opens a byte stream to a VM's agent, for every driver: by the VM's `AgentEndpoint`
 * (what the daemon records, so that an adopted VM is reached the same way). The agent listens on
 * the guest ABI's port (src/guest/abi.ts); the streams carry the agent protocol (AgentClient).
 *
 * - virtio-serial (QEMU): the VMM serves the port on a Unix socket of the work directory;
 * - vsock (QEMU's vhost-vsock): Node has no AF_VSOCK, so slipway-vsock-connect (guest/vsock-connect.c)
 *   relays the guest's port to its stdio;
 * - hybrid vsock (Cloud Hypervisor): a Unix socket on which the host writes `CONNECT <port>\n` and
 *   CH answers `OK <host port>\n` once the guest accepted.
 *
 * While the guest is not listening yet, each of these fails or ends its stream, and the caller
 * connects again (waitForAgent).
 */
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { Duplex } from 'node:stream';
import { SlipwayError } from '../errors.js';
import { AGENT_VSOCK_PORT } from '../guest/abi.js';
import type { AgentEndpoint } from './driver.js';

/** A stream to the agent at `endpoint`; `vsockConnect` is the helper a vsock endpoint needs. */
export function connectAgentEndpoint(endpoint: AgentEndpoint, vsockConnect?: string): Promise<Duplex> {
  switch (endpoint.transport) {
    case 'virtio-serial':
      return connectUnix(endpoint.socket);
    case 'vsock':
      return connectVsock(vsockConnect, endpoint.cid, AGENT_VSOCK_PORT);
    case 'hybrid-vsock':
      return hybridVsockConnect(endpoint.socket, AGENT_VSOCK_PORT);
  }
}

/** A Unix socket the VMM serves (QEMU's virtio-serial chardev). */
function connectUnix(path: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    sock.once('connect', () => {
      sock.removeListener('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}

/**
 * A guest's vsock port through slipway-vsock-connect: while the guest is not listening yet the
 * helper's connect fails and it exits; the stream then ends, and the caller connects again.
 */
function connectVsock(helper: string | undefined, cid: number, port: number): Promise<Duplex> {
  if (!helper) return Promise.reject(new SlipwayError('VMM_ERROR', 'no slipway-vsock-connect helper given for the vsock agent transport'));
  return new Promise((resolve, reject) => {
    const child = spawn(helper, [String(cid), String(port)], { stdio: ['pipe', 'pipe', 'ignore'] });
    child.once('error', (e) => reject(new SlipwayError('VMM_ERROR', `cannot run ${helper}: ${e.message}`, { cause: e })));
    child.once('spawn', () => {
      const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
      // when the helper exits its stdout ends, and so does the stream
      stream.on('close', () => child.kill());
      resolve(stream);
    });
  });
}

/**
 * The host side of CH's hybrid vsock: connect to the device's Unix socket, ask for a guest port,
 * wait for `OK <n>`, and hand back the socket with any bytes that came after that line pushed back
 * in front of the stream. CH closes the connection when nothing in the guest listens on the port
 * (yet): that rejects, and the caller tries again.
 */
export function hybridVsockConnect(socketPath: string, port: number, timeoutMs = 5000): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    let buf = Buffer.alloc(0);
    let done = false;
    const fail = (message: string, cause?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      reject(new SlipwayError('VMM_ERROR', `hybrid vsock ${socketPath} port ${port}: ${message}`, { context: { socket: socketPath, port }, ...(cause === undefined ? {} : { cause }) }));
    };
    const timer = setTimeout(() => fail(`no answer to CONNECT within ${timeoutMs} ms`), timeoutMs);
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while (!done && (chunk = sock.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > 64) fail(`the answer to CONNECT is not a line: ${JSON.stringify(buf.subarray(0, 64).toString('latin1'))}`);
          continue;
        }
        const line = buf.subarray(0, nl).toString('latin1').replace(/\r$/, '');
        if (!/^OK \d+$/.test(line)) {
          fail(`unexpected answer to CONNECT: ${JSON.stringify(line)}`);
          return;
        }
        done = true;
        clearTimeout(timer);
        cleanup();
        // Removing the last 'readable' listener returns the stream to its initial mode, so the
        // caller's 'data' listener starts the flow, beginning with the bytes pushed back here.
        const rest = buf.subarray(nl + 1);
        if (rest.length > 0) sock.unshift(rest);
        resolve(sock);
        return;
      }
    };
    const onEnd = (): void => fail('the connection closed before OK (is the guest agent listening yet?)');
    const onError = (err: Error): void => fail(err.message, err);
    const cleanup = (): void => {
      sock.removeListener('readable', onReadable);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onEnd);
      sock.removeListener('error', onError);
    };
    sock.on('readable', onReadable);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onError);
    sock.once('connect', () => sock.write(`CONNECT ${port}\n`));
  });
}
