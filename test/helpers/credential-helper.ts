/**
 * A `docker-credential-<name>` program for tests that speaks docker-credential-helpers' real
 * protocol: run as `docker-credential-<name> get`, it reads the server URL from stdin, records it,
 * and prints the answer the test set (`{"ServerURL","Username","Secret"}`), or "credentials not
 * found in native keychain" with exit status 1 when none is set, as the real helpers do. It can
 * also be made to fail (exit 2 with a message) or to hang, to test timeouts.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './images.js';

export interface CredentialHelper {
  /** directory holding `docker-credential-<name>`: put it first on PATH */
  binDir: string;
  /** answer `get` with these credentials from now on (undefined: "credentials not found") */
  answer(creds: { Username: string; Secret: string } | undefined): void;
  /** make `get` exit 2 with a message, or never answer */
  misbehave(how: 'fail' | 'hang' | undefined): void;
  /** server URLs it was asked about, in order */
  asked(): string[];
  remove(): void;
}

export function makeCredentialHelper(name = 'test'): CredentialHelper {
  const dir = tempDir('slipway-credhelper-');
  const binDir = join(dir, 'bin');
  mkdirSync(binDir);
  const script = join(binDir, `docker-credential-${name}`);
  writeFileSync(script, `#!/bin/sh
# docker-credential-helpers protocol: "<program> get" with the server URL on stdin
[ "$1" = get ] || { echo "unsupported action: $1" >&2; exit 1; }
IFS= read -r server
printf '%s\\n' "$server" >> '${dir}/asked'
[ -f '${dir}/hang' ] && exec sleep 30
[ -f '${dir}/fail' ] && { echo "error getting credentials - err: exit status 1, out: keychain locked" >&2; exit 2; }
if [ -f '${dir}/answer.json' ]; then cat '${dir}/answer.json'; else echo "credentials not found in native keychain"; exit 1; fi
`);
  chmodSync(script, 0o755);
  return {
    binDir,
    answer(creds) {
      if (creds) writeFileSync(join(dir, 'answer.json'), JSON.stringify({ ServerURL: '', ...creds }));
      else rmSync(join(dir, 'answer.json'), { force: true });
    },
    misbehave(how) {
      rmSync(join(dir, 'fail'), { force: true });
      rmSync(join(dir, 'hang'), { force: true });
      if (how) writeFileSync(join(dir, how), '');
    },
    asked: () => (existsSync(join(dir, 'asked')) ? readFileSync(join(dir, 'asked'), 'utf8').split('\n').filter((l) => l !== '') : []),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
