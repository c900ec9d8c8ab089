/**
 * A VMM started attached (`slipway run`'s) dies with the process that started it, however that
 * process goes: killed with SIGKILL it runs no clean-up, and the VMM gets SIGKILL from the kernel
 * (PR_SET_PDEATHSIG, through util-linux's setpriv). (That a detached one, the daemon's, outlives
 * its starter is test/daemon.test.ts's SIGKILL case.)
 */
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { processRunning } from '../src/util/process.js';
import { within } from './helpers/cache-checks.js';
import { tempDir } from './helpers/temp-dirs.js';

const VMM_PROCESS = join(process.cwd(), 'src', 'vmm', 'vmm-process.ts');

/** Start a stand-in VMM (`sleep`, named by its work directory) from a fresh Node process; its pid and that process. */
async function starter(): Promise<{ vmmPid: number; kill: () => Promise<void> }> {
  const workDir = tempDir('slipway-attached-');
  const script = `import { VmmProcess } from ${JSON.stringify(VMM_PROCESS)};
const p = await VmmProcess.spawn({ binary: 'sh', args: ['-c', 'exec sleep 1000', ${JSON.stringify(workDir)}], workDir: ${JSON.stringify(workDir)}, detached: false, outputFile: ${JSON.stringify(join(workDir, 'out'))}, output: 'stderr', installHint: 'coreutils' });
console.log(p.pid);
setInterval(() => undefined, 1 << 30);`;
  // (tsx keeps its cache in TMPDIR: this test's directory)
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, TMPDIR: workDir } });
  const line = await within(30_000, new Promise<string>((resolve) => createInterface({ input: child.stdout }).once('line', resolve)), 'the stand-in VMM\'s pid');
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { vmmPid: Number(line), kill: () => (child.kill('SIGKILL'), exited) };
}

/** Resolves when `pid` (no child of ours) has exited: `tail --pid` waits for it. */
function exitOf(pid: number): Promise<void> {
  const watch = spawn('tail', [`--pid=${pid}`, '-s', '0.05', '-f', '/dev/null'], { stdio: 'ignore' });
  return new Promise((resolve) => watch.once('exit', () => resolve()));
}

/** Whether this host's setpriv takes --pdeathsig (util-linux 2.33+), as src/util/which.ts asks. */
const PDEATHSIG = spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore' }).status === 0;

describe('a VMM and the process that started it', () => {
  it('attached: it dies when its starter is killed with SIGKILL', async (ctx) => {
    if (!PDEATHSIG) {
      ctx.skip('no setpriv taking --pdeathsig here (util-linux 2.33 or later): an attached VMM outlives a starter killed with SIGKILL');
      return;
    }
    const { vmmPid, kill } = await starter();
    try {
      expect(processRunning(vmmPid)).toBe(true);
      const gone = exitOf(vmmPid);
      await kill();
      await within(10_000, gone, 'the attached VMM\'s exit after its starter was killed');
      expect(processRunning(vmmPid)).toBe(false);
    } finally {
      if (processRunning(vmmPid)) process.kill(vmmPid, 'SIGKILL');
    }
  });
});
