/** Captured stdout/stderr for calling the CLI's `main()` in-process: `main(argv, captureIO())`. */
import { Writable } from 'node:stream';
import type { CommandIO } from '../../src/cli/args.js';

/** A writable that keeps everything written to it, as text. */
export class Capture extends Writable {
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
