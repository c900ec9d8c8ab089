/**
 * `--timings` for people: the waterfall's rendering of a fixed timing record (a snapshot of the
 * exact text), and plain JSON where the output is not a terminal (test/run.test.ts parses it).
 */
import { describe, expect, it } from 'vitest';
import { renderWaterfall, waterfallRows, type TimingRecord } from '../src/cli/waterfall.js';

const RECORD: TimingRecord = {
  accel: 'tcg',
  hostMs: { resolve_and_backend: 200, artifacts: 0, vmm_started: 150, agent_ready: 1600, exec: 80, teardown: 70 },
  guestMs: { init_start: 800, mounts: 810, root_mounted: 900, agent_started: 1000 },
  chunks: { disk: { tier0Chunks: 1, tier1Chunks: 2, tier2Chunks: 7, zeroChunks: 3, profileChunks: 4 }, remote: { requests: 5, bytes: 1090614, retries: 1 } },
};

describe('the --timings waterfall', () => {
  it('puts host and guest phases on one axis: the guest clock starts at the end of vmm_started', () => {
    const rows = waterfallRows(RECORD);
    expect(rows.map((r) => `${r.where}:${r.name}@${r.startMs}+${r.ms}`)).toEqual([
      'host:resolve_and_backend@0+200', 'host:artifacts@200+0', 'host:vmm_started@200+150',
      'guest:kernel@350+800', 'guest:mounts@1150+10', 'guest:root_mounted@1160+90', 'guest:agent_started@1250+100',
      'host:agent_ready@350+1600', 'host:exec@1950+80', 'host:teardown@2030+70',
    ]);
  });

  it('renders a fixed record exactly (snapshot)', () => {
    expect(renderWaterfall(RECORD, 30)).toBe([
      'phase                       start      ms  0                        2100 ms',
      'host  resolve_and_backend     0.0     200  |===                           |',
      'host  artifacts               200     0.0  |  =                           |',
      'host  vmm_started             200     150  |  ==                          |',
      'guest   kernel                350     800  |     ###########              |',
      'guest   mounts               1150      10  |                #             |',
      'guest   root_mounted         1160      90  |                #             |',
      'guest   agent_started        1250     100  |                 #            |',
      'host  agent_ready             350    1600  |     =======================  |',
      'host  exec                   1950      80  |                           =  |',
      'host  teardown               2030      70  |                             =|',
      'accel tcg; host phases =, guest phases # (the guest\'s clock starts with its kernel)',
      'chunks: memory 1, host disk 2, fetched 7, zero 3 (4 from the boot profile)',
      'fetched: 1.0 MiB in 5 requests, 1 retried',
      '',
    ].join('\n'));
  });

  it('a record with no guest marks and no chunks still renders every host phase', () => {
    const text = renderWaterfall({ accel: 'kvm', hostMs: { backend_up: 30, vmm_started: 20, agent_ready: 300 }, guestMs: {} }, 20);
    expect(text.split('\n').filter((l) => l.startsWith('host'))).toHaveLength(3);
    expect(text).not.toContain('chunks:');
  });
});
