#!/usr/bin/env -S node --initial-old-space-size=64
// --initial-old-space-size (MB): where V8 first sets its old generation's limit. A process serving
// one disk (`slipway serve`, `run`, the daemon with one VM) holds about 17 MB of live objects while
// it streams a first boot's chunks, and with V8's own limit (about 26 MB) it started a full
// collection every 100-150 ms of it: 5 in a 0.7 s replay, about a fifth of the process's CPU. From
// 64 MB it ran one (docs/benchmarks.md). V8 takes its flags only when it starts, so
// `node bin/slipway.js` runs without it; the `slipway` executable and `./bin/slipway.js` with it.
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`slipway: ${err?.stack ?? err}\n`); process.exitCode = 70; },
);
