/**
 * applyRestoredIdentity (src/api/memory-snapshots.ts) against agents of both ages: one with
 * SET_HOSTNAME and SET_TIME (the daemon's restore tests run it in real guests), and one from
 * before them, which answers "unknown request type" and gets `hostname` and `date -s` run instead.
 * The agent here is an object with the client's three methods, recording what it was asked.
 */
import { describe, expect, it } from 'vitest';
import { applyRestoredIdentity } from '../src/api/memory-snapshots.js';
import { SlipwayError } from '../src/errors.js';
import type { AgentClient, ExecResult } from '../src/guest/agent-client.js';
import { createLogger } from '../src/util/log.js';
import { Capture } from './helpers/cli.js';

type IdentityAgent = Pick<AgentClient, 'setHostname' | 'setTime' | 'exec'>;

const unknownType = (type: number): SlipwayError => new SlipwayError('AGENT_ERROR', `guest agent: unknown request type ${type} (EINVAL)`, { context: { errno: 22, errnoName: 'EINVAL' } });
const exited = (exitCode: number, stderr = ''): ExecResult => ({ exitCode, signal: 0, stdout: Buffer.alloc(0), stderr: Buffer.from(stderr) });

function agentOf(old: boolean, execs: (argv: readonly string[]) => ExecResult | Promise<ExecResult>): IdentityAgent & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    setHostname: async (name: string) => {
      asked.push(`SET_HOSTNAME ${name}`);
      if (old) throw unknownType(10);
    },
    setTime: async () => {
      asked.push('SET_TIME');
      if (old) throw unknownType(11);
    },
    exec: async (argv: readonly string[]) => {
      asked.push(`exec ${argv.join(' ')}`);
      return execs(argv);
    },
  };
}

function logger(): { log: ReturnType<typeof createLogger>; out: Capture } {
  const out = new Capture();
  return { log: createLogger({ out, level: 'warn' }), out };
}

describe('a restored VM made its own', () => {
  it('asks a current agent for its host name and the time, and starts no process', async () => {
    const agent = agentOf(false, () => exited(0));
    const { log, out } = logger();
    await applyRestoredIdentity(agent, 'vm-0123456789ab', log);
    expect(agent.asked.sort()).toEqual(['SET_HOSTNAME vm-0123456789ab', 'SET_TIME']);
    expect(out.text).toBe('');
  });

  it('runs hostname and date -s @<now> in an agent older than those requests', async () => {
    const agent = agentOf(true, () => exited(0));
    const { log, out } = logger();
    const before = Math.floor(Date.now() / 1000);
    await applyRestoredIdentity(agent, 'vm-0123456789ab', log);
    const date = agent.asked.find((a) => a.startsWith('exec date'));
    expect(agent.asked).toContain('exec hostname vm-0123456789ab');
    expect(date).toMatch(/^exec date -s @\d+$/);
    expect(Number(date?.split('@')[1])).toBeGreaterThanOrEqual(before);
    expect(Number(date?.split('@')[1])).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
    expect(out.text).toBe('');
  });

  it('logs, and does not fail the restore, when the old agent\'s programs fail or are missing', async () => {
    const agent = agentOf(true, (argv) => {
      if (argv[0] === 'date') return exited(1, 'date: invalid date');
      throw new SlipwayError('COMMAND_NOT_FOUND', 'command not found in the guest: hostname');
    });
    const { log, out } = logger();
    await applyRestoredIdentity(agent, 'vm-0123456789ab', log);
    expect(out.text).toContain('and date failed');
    expect(out.text).toContain('date: invalid date');
    expect(out.text).toContain('and hostname failed');
  });

  it('fails the restore on any other error of the requests themselves', async () => {
    const agent = agentOf(false, () => exited(0));
    agent.setTime = async () => {
      throw new SlipwayError('AGENT_ERROR', 'guest agent: SET_TIME: clock_settime (EPERM)', { context: { errno: 1, errnoName: 'EPERM' } });
    };
    const { log } = logger();
    await expect(applyRestoredIdentity(agent, 'vm-0123456789ab', log)).rejects.toThrow(/EPERM/);
  });
});
