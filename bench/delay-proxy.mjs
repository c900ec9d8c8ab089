/**
 * A delaying HTTP proxy in its own process: it stands for the network between a host and its
 * registry, so its CPU is not the daemon's. `node bench/delay-proxy.mjs <target host:port> <ms>`
 * adds <ms> to every request and prints the port it listens on (127.0.0.1) on its first line.
 */
import { createServer, request, Agent } from 'node:http';

const [target, delayText] = process.argv.slice(2);
const delayMs = Number(delayText ?? 0);
if (!target || !Number.isFinite(delayMs) || delayMs < 0) {
  process.stderr.write('usage: delay-proxy.mjs <host:port> <delay ms>\n');
  process.exit(2);
}
const [host, port] = target.split(':');
const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const server = createServer((req, res) => {
  const forward = () => {
    const up = request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers, agent }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  };
  if (delayMs > 0) setTimeout(forward, delayMs);
  else forward();
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
