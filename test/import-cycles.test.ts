/**
 * No import cycles in src/, checked with dpdm (type-only imports included: a cycle of types is
 * still two modules that cannot be understood apart), and none between src/'s folders either.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers/temp-dirs.js';

interface DpdmOutput {
  tree: Record<string, { id: string | null }[] | null>;
  circulars: string[][];
}

/**
 * Cycles known and owned elsewhere, each with its reason; the test fails when one is gone (so the
 * entry is removed) as well as when a new one appears.
 */
const KNOWN_CYCLES: Record<string, string> = {};

const work = tempDir('slipway-dpdm-');
afterAll(() => rmSync(work, { recursive: true, force: true }));

function analyse(): DpdmOutput {
  const out = join(work, 'dpdm.json');
  const root = new URL('..', import.meta.url).pathname;
  execFileSync(join(root, 'node_modules', '.bin', 'dpdm'), ['--no-tree', '--no-warning', '--no-circular', '--no-progress', '-o', out, 'src/**/*.ts'], { cwd: root, stdio: 'ignore' });
  return JSON.parse(readFileSync(out, 'utf8')) as DpdmOutput;
}

describe('imports in src/', () => {
  const result = analyse();

  it('form no cycle between modules', () => {
    const cycles = result.circulars.map((c) => c.join(' -> '));
    expect(cycles.filter((c) => !(c in KNOWN_CYCLES))).toEqual([]);
    expect(Object.keys(KNOWN_CYCLES).filter((c) => !cycles.includes(c))).toEqual([]);
  });

  it('form no cycle between folders', () => {
    const folder = (file: string): string => file.split('/').slice(0, -1).join('/');
    const edges = new Map<string, Set<string>>();
    for (const [file, deps] of Object.entries(result.tree)) {
      for (const dep of deps ?? []) {
        if (!dep.id?.startsWith('src/') || folder(dep.id) === folder(file)) continue;
        // a folder and its subfolders are one part (src/oci and src/oci/registry)
        const [a, b] = [folder(file), folder(dep.id)];
        if (a.startsWith(`${b}/`) || b.startsWith(`${a}/`)) continue;
        if (!edges.has(a)) edges.set(a, new Set());
        edges.get(a)?.add(b);
      }
    }
    const both = [...edges].flatMap(([a, targets]) => [...targets].filter((b) => a < b && edges.get(b)?.has(a)).map((b) => `${a} <-> ${b}`));
    expect(both).toEqual([]);
  });
});
