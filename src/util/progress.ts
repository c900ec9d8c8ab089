export interface ProgressEvent {
  op: 'push' | 'pull' | 'copy' | 'prefetch' | 'kernel';
  phase: string;
  doneBytes: number;
  totalBytes: number;
  [extra: string]: string | number | undefined;
}

export type ProgressFn = (event: ProgressEvent) => void;

export type ProgressMode = 'auto' | 'json' | 'tty' | 'none';

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/**
 * Progress for long work: a bar on a TTY, JSON lines with `--progress=json`, nothing otherwise
 * (`auto` picks the bar only when stderr is a terminal). Bars redraw at most ten times a second.
 */
export function createProgress(mode: ProgressMode, out: NodeJS.WriteStream = process.stderr): { onProgress: ProgressFn | undefined; finish: () => void } {
  const effective = mode === 'auto' ? (out.isTTY ? 'tty' : 'none') : mode;
  if (effective === 'none') return { onProgress: undefined, finish: () => undefined };
  if (effective === 'json') {
    return {
      onProgress: (e) => out.write(`${JSON.stringify({ ...e, time: new Date().toISOString() })}\n`),
      finish: () => undefined,
    };
  }
  let last = 0;
  const started = Date.now();
  let drawn = false;
  return {
    onProgress: (e) => {
      const now = Date.now();
      if (now - last < 100 && e.phase !== 'done') return;
      last = now;
      const share = e.totalBytes > 0 ? Math.min(1, e.doneBytes / e.totalBytes) : 0;
      const width = 30;
      const filled = Math.round(share * width);
      const rate = e.doneBytes / Math.max(0.001, (now - started) / 1000);
      const extra = typeof e.uploadedBytes === 'number' ? ` sent ${human(e.uploadedBytes)}` : typeof e.fetchedBytes === 'number' ? ` fetched ${human(e.fetchedBytes)}` : '';
      out.write(`\r${e.op} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(share * 100).toFixed(0).padStart(3)}% ${human(e.doneBytes)}/${human(e.totalBytes)} ${human(rate)}/s${extra}\x1b[K`);
      drawn = true;
    },
    finish: () => {
      if (drawn) out.write('\n');
    },
  };
}

/**
 * Progress as structured log lines (the daemon's way): start and done always, and in between at
 * most one line per `everyMs`.
 */
export function logProgress(log: (msg: string, fields: Record<string, unknown>) => void, fields: Record<string, unknown> = {}, everyMs = 2000): ProgressFn {
  let last = 0;
  return (e) => {
    const now = Date.now();
    if (e.phase !== 'start' && e.phase !== 'done' && now - last < everyMs) return;
    last = now;
    log('progress', { ...fields, ...e, percent: e.totalBytes > 0 ? Math.round((100 * e.doneBytes) / e.totalBytes) : 100 });
  };
}
