/**
 * Finding executables, and starting a child that must not outlive its starter.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The executable `name` as execvp finds it: the first executable regular file of that name along
 * `pathEnv` (this process's PATH unless given), or `name` itself when it has a `/` and is one;
 * undefined when there is none.
 */
export function whichBinary(name: string, pathEnv: string | undefined = process.env.PATH): string | undefined {
  const runnable = (p: string): boolean => {
    try {
      if (!statSync(p).isFile()) return false;
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (name.includes('/')) return runnable(name) ? name : undefined;
  for (const dir of (pathEnv ?? '/usr/bin:/bin').split(':')) {
    const p = join(dir || '.', name);
    if (runnable(p)) return p;
  }
  return undefined;
}

let setprivPath: string | null | undefined;

/**
 * util-linux's setpriv when it takes `--pdeathsig` (2.33 and later; BusyBox's does not), found and
 * tried once per process, or undefined.
 */
function pdeathsigWrapper(): string | undefined {
  if (setprivPath === undefined) {
    const found = whichBinary('setpriv');
    setprivPath = found !== undefined && spawnSync(found, ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore' }).status === 0 ? found : null;
  }
  return setprivPath ?? undefined;
}

/**
 * The file and arguments that start `binary` with `args` as a child that gets SIGKILL when this
 * process dies, however it dies (PR_SET_PDEATHSIG, which must be set between fork and exec, where
 * Node has no hook: util-linux's `setpriv --pdeathsig KILL`, which execs in place, so the child's
 * pid is the binary's). Where setpriv cannot, `binary` and `args` as they are. Not kept across an
 * exec of a binary with file capabilities (the kernel clears it then).
 */
export function attachedCommand(binary: string, args: string[]): [string, string[]] {
  const setpriv = pdeathsigWrapper();
  return setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', binary, ...args]] : [binary, args];
}
