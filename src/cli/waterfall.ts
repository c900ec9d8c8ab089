/**
 * A boot's timings for people: every phase on the host and in the guest on one time axis, each
 * with its start and duration and a bar, then the chunks by tier and the bytes fetched. Scripts
 * get the same record as JSON (`--timings=json`, or `--timings` without a terminal).
 */

/** What `slipway run --timings` records (the JSON form is this object). */
export interface TimingRecord {
  accel: string;
  /** host phases in the order they ran: milliseconds each, back to back from the run's start */
  hostMs: Record<string, number>;
  /** guest marks from slipway-init: milliseconds since the guest kernel started, in order */
  guestMs: Record<string, number>;
  chunks?: {
    disk?: Record<string, number>;
    remote?: Record<string, number>;
    misses?: Record<string, number>;
  };
}

interface Row {
  where: 'host' | 'guest';
  name: string;
  startMs: number;
  ms: number;
}

/**
 * The rows: host phases back to back from 0; guest phases between init's marks, the first from
 * the kernel's start. The guest clock starts when the kernel does, which is placed at the end of
 * the host's `vmm_started` phase (the VMM is running; its firmware takes a few ms more, not shown).
 */
export function waterfallRows(t: TimingRecord): Row[] {
  const rows: Row[] = [];
  let at = 0;
  let guestZero: number | undefined;
  for (const [name, ms] of Object.entries(t.hostMs)) {
    rows.push({ where: 'host', name, startMs: at, ms });
    at += ms;
    if (name === 'vmm_started') guestZero = at;
  }
  const zero = guestZero ?? 0;
  let prev = 0;
  const guest: Row[] = [];
  for (const [name, mark] of Object.entries(t.guestMs)) {
    guest.push({ where: 'guest', name: name === 'init_start' ? 'kernel' : name, startMs: zero + prev, ms: Math.max(0, mark - prev) });
    prev = mark;
  }
  // host rows first, the guest's inserted after the phase it runs in (agent_ready)
  const ready = rows.findIndex((r) => r.name === 'agent_ready');
  rows.splice(ready >= 0 ? ready : rows.length, 0, ...guest);
  return rows;
}

function fmtMs(ms: number): string {
  return ms >= 10 ? String(Math.round(ms)) : ms.toFixed(1);
}

function fmtBytes(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/**
 * The waterfall as text, `width` columns for the bars. One line per phase:
 * `host  agent_ready      363   1612  |      ====          |`.
 */
export function renderWaterfall(t: TimingRecord, width = 40): string {
  const rows = waterfallRows(t);
  const total = Math.max(1, ...rows.map((r) => r.startMs + r.ms));
  const nameW = Math.max(5, ...rows.map((r) => r.name.length + (r.where === 'guest' ? 2 : 0)));
  const lines = [`${'phase'.padEnd(6 + nameW)}  ${'start'.padStart(6)}  ${'ms'.padStart(6)}  0${' '.repeat(width - 2 - fmtMs(total).length)}${fmtMs(total)} ms`];
  for (const r of rows) {
    const from = Math.min(width - 1, Math.floor((r.startMs / total) * width));
    const len = Math.max(1, Math.round((r.ms / total) * width));
    const bar = `${' '.repeat(from)}${(r.where === 'host' ? '=' : '#').repeat(Math.min(len, width - from))}`.padEnd(width);
    const label = r.where === 'guest' ? `  ${r.name}` : r.name;
    lines.push(`${r.where.padEnd(6)}${label.padEnd(nameW)}  ${fmtMs(r.startMs).padStart(6)}  ${fmtMs(r.ms).padStart(6)}  |${bar}|`);
  }
  lines.push(`accel ${t.accel}; host phases =, guest phases # (the guest's clock starts with its kernel)`);
  const c = t.chunks;
  if (c?.disk) {
    const d = c.disk;
    const tiers = [['memory', d.tier0Chunks], ['host disk', d.tier1Chunks], ['fetched', d.tier2Chunks], ['guessed', d.guessChunks], ['zero', d.zeroChunks]]
      .filter(([, n]) => typeof n === 'number')
      .map(([name, n]) => `${name} ${n}`);
    lines.push(`chunks: ${tiers.join(', ')}${d.profileChunks ? ` (${d.profileChunks} from the boot profile)` : ''}`);
  }
  if (c?.remote) lines.push(`fetched: ${fmtBytes(c.remote.bytes ?? 0)} in ${c.remote.requests ?? 0} requests${c.remote.retries ? `, ${c.remote.retries} retried` : ''}`);
  return `${lines.join('\n')}\n`;
}
