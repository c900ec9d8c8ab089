import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Whether a process exists (EPERM means it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether a process runs: exists and is not a zombie waiting to be reaped. */
export function processRunning(pid: number): boolean {
  if (!processAlive(pid)) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is still the process started with `marker` among its arguments (a VM's work
 * directory): after a restart a recorded pid may have been reused by something else.
 */
export function processHasArgument(pid: number, marker: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').some((a) => a.includes(marker));
  } catch {
    return false;
  }
}

/**
 * Resolves when a process that is not our child has gone (polled); with `marker`, also when the
 * pid no longer has it among its arguments (it was reused by another process).
 */
export function whenProcessGone(pid: number, marker?: string, intervalMs = 200): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (!processRunning(pid) || (marker !== undefined && !processHasArgument(pid, marker))) {
        clearInterval(timer);
        resolve();
      }
    }, intervalMs);
    timer.unref();
  });
}

/** SIGTERM, then SIGKILL after `graceMs`, for a process that is not our child. */
export async function terminateProcess(pid: number, graceMs = 2000): Promise<void> {
  if (!processRunning(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (processRunning(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  if (processRunning(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return;
    }
    while (processRunning(pid)) await new Promise((r) => setTimeout(r, 25));
  }
}

/** Running processes (zombies aside) with `marker` in one of their arguments (a VM's work directory). */
export function processesWithArgument(marker: string): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  return entries.filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => pid !== process.pid && processHasArgument(pid, marker) && processRunning(pid));
}

/**
 * How a process ends: a child's exit code and signal, or, for a pid adopted from an earlier
 * process (not our child), nulls once it is gone or no longer has `marker` among its arguments.
 */
export function processExit(child: ChildProcess | number, marker: string): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (typeof child === 'number') return whenProcessGone(child, marker).then(() => ({ code: null, signal: null }));
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}
