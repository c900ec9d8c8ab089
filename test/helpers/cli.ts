/**
 * Captured stdout/stderr for calling the CLI's `main()` in-process.
 *
 * NOTE: this file was accidentally overwritten by another test-writing session and rebuilt from
 * how its callers use it (`main(argv, captureIO())`); its original author may want to check it.
 */
import { Writable } from 'node:stream';
import type { CommandIO } from '../../src/cli/disk-commands.js';

class Capture extends Writable {
  text = '';
  isTTY = false;
  override _write(chunk: Buffer | string, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.text += chunk.toString();
    done();
  }
}

export interface CapturedIO extends CommandIO {
  /** everything written to stdout so far */
  readonly out: string;
  /** everything written to stderr so far */
  readonly err: string;
}

export function captureIO(): CapturedIO {
  const stdout = new Capture();
  const stderr = new Capture();
  return {
    stdout: stdout as unknown as NodeJS.WriteStream,
    stderr: stderr as unknown as NodeJS.WriteStream,
    get out() {
      return stdout.text;
    },
    get err() {
      return stderr.text;
    },
  };
}
