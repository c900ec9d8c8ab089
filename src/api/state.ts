/**
 * The daemon's state: one SQLite database (WAL) in the state directory, one row per VM. A row is
 * written before anything is started for a VM and updated as it boots, so a restarted daemon
 * knows every process an earlier one left running and adopts (or cleans up) each of them.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentEndpoint } from '../vmm/driver.js';

export type VmStatus = 'booting' | 'running' | 'stopping';

export interface VmRecord {
  id: string;
  image: string;
  /** the manifest digest the image resolved to */
  digest: string | null;
  status: VmStatus;
  createdAt: number;
  cpus: number;
  memoryMiB: number;
  vmm: 'qemu' | 'cloud-hypervisor';
  workDir: string;
  vmmPid: number | null;
  backendPid: number | null;
  accel: 'kvm' | 'tcg' | null;
  agent: AgentEndpoint | null;
  /** boot phase timings, ms */
  timings: Record<string, number>;
  /** the environment every command in the VM gets (exec's own env is laid over it) */
  env: Record<string, string>;
}

interface Row {
  id: string;
  image: string;
  digest: string | null;
  status: VmStatus;
  created_at: number;
  cpus: number;
  memory_mib: number;
  vmm: 'qemu' | 'cloud-hypervisor';
  work_dir: string;
  vmm_pid: number | null;
  backend_pid: number | null;
  accel: 'kvm' | 'tcg' | null;
  agent: string | null;
  timings: string;
  env: string;
}

function fromRow(r: Row): VmRecord {
  return {
    id: r.id, image: r.image, digest: r.digest, status: r.status, createdAt: r.created_at, cpus: r.cpus, memoryMiB: r.memory_mib, vmm: r.vmm,
    workDir: r.work_dir, vmmPid: r.vmm_pid, backendPid: r.backend_pid, accel: r.accel, agent: r.agent ? (JSON.parse(r.agent) as AgentEndpoint) : null,
    timings: JSON.parse(r.timings) as Record<string, number>, env: JSON.parse(r.env) as Record<string, string>,
  };
}

export class StateStore {
  private readonly db: Database.Database;
  /** statements by their SQL, prepared once (an update's SQL depends on the columns it sets) */
  private readonly statements = new Map<string, Database.Statement>();

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.db = new Database(join(dir, 'state.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.exec(`CREATE TABLE IF NOT EXISTS vms (
      id TEXT PRIMARY KEY, image TEXT NOT NULL, digest TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
      cpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, vmm TEXT NOT NULL, work_dir TEXT NOT NULL,
      vmm_pid INTEGER, backend_pid INTEGER, accel TEXT, agent TEXT, timings TEXT NOT NULL DEFAULT '{}', env TEXT NOT NULL DEFAULT '{}')`);
  }

  private statement(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  insert(r: VmRecord): void {
    this.statement(`INSERT INTO vms (id, image, digest, status, created_at, cpus, memory_mib, vmm, work_dir, vmm_pid, backend_pid, accel, agent, timings, env)
      VALUES (@id, @image, @digest, @status, @createdAt, @cpus, @memoryMiB, @vmm, @workDir, @vmmPid, @backendPid, @accel, @agent, @timings, @env)`)
      .run({ ...r, agent: r.agent ? JSON.stringify(r.agent) : null, timings: JSON.stringify(r.timings), env: JSON.stringify(r.env) });
  }

  update(id: string, patch: Partial<Omit<VmRecord, 'id'>>): void {
    const cols: Record<string, string> = { image: 'image', digest: 'digest', status: 'status', vmmPid: 'vmm_pid', backendPid: 'backend_pid', accel: 'accel', agent: 'agent', timings: 'timings', cpus: 'cpus', memoryMiB: 'memory_mib', vmm: 'vmm' };
    const sets: string[] = [];
    const values: Record<string, unknown> = { id };
    for (const [k, v] of Object.entries(patch)) {
      const col = cols[k];
      if (!col) continue;
      sets.push(`${col} = @${k}`);
      values[k] = k === 'agent' || k === 'timings' ? (v === null ? null : JSON.stringify(v)) : v;
    }
    if (sets.length > 0) this.statement(`UPDATE vms SET ${sets.join(', ')} WHERE id = @id`).run(values);
  }

  get(id: string): VmRecord | undefined {
    const r = this.statement('SELECT * FROM vms WHERE id = ?').get(id) as Row | undefined;
    return r ? fromRow(r) : undefined;
  }

  all(): VmRecord[] {
    return (this.statement('SELECT * FROM vms ORDER BY created_at').all() as Row[]).map(fromRow);
  }

  delete(id: string): void {
    this.statement('DELETE FROM vms WHERE id = ?').run(id);
  }

  close(): void {
    this.db.close();
  }
}
