/**
 * Who a process is, beyond its pid: pids are reused (a daemon restarted in a container is PID 1
 * again; a busy host wraps its pid space), so a record that names a process by pid alone may name
 * the wrong one. Linux gives every process a start time (field 22 of /proc/<pid>/stat, in clock
 * ticks since boot) that, with the pid, names it for as long as the machine is up.
 */
import { readFileSync } from 'node:fs';

/**
 * The start time of process `pid` as /proc/<pid>/stat gives it (clock ticks since boot, a decimal
 * string), or undefined when there is no such process or no /proc to ask.
 */
export function processStartTime(pid: number): string | undefined {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); the start time is field 22
  const start = fields[19];
  return start !== undefined && /^\d+$/.test(start) ? start : undefined;
}

/** Whether /proc can tell start times here (Linux with /proc mounted). */
export function canIdentifyProcesses(): boolean {
  return processStartTime(process.pid) !== undefined;
}
