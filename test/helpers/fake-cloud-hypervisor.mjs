#!/usr/bin/env node
/**
 * FAKE Cloud Hypervisor: a test stand-in, NOT Cloud Hypervisor. Cloud Hypervisor cannot run on the
 * machines these tests run on (no binary, no usable KVM), so this Node script plays its part for
 * src/vmm/cloud-hypervisor.ts: started as `<fake> --api-socket path=<sock>`, it serves the REST
 * API that CH serves there (vmm.ping, vm.create, vm.boot, vm.info, vm.shutdown, vmm.shutdown) and,
 * once "booted", the host side of CH's hybrid vsock. No guest runs: "booting" starts a real
 * slipway-agent on the host (`--listen-unix`), and a hybrid-vsock `CONNECT 1024` is answered
 * `OK 1073741824` and proxied to it, so the driver and AgentClient talk to a real agent.
 *
 * Everything it accepts is checked the way CH would, as far as a test can: vm.create bodies are
 * validated against the OpenAPI description CH ships (vendor/cloud-hypervisor/
 * cloud-hypervisor.yaml, components.schemas.VmConfig), strictly (a property the schema does not
 * name is refused, where CH would silently ignore it: that catches misspelt fields), then
 * `payload.fw_cfg_config` against CH's serde struct, then a subset of CH's ValidationError checks.
 *
 * The module also exports the YAML loader and schema validator, so the tests use the same ones.
 *
 * Environment (set by the test's wrapper script):
 *   FAKE_CH_FEATURES       comma-separated vmm.ping features (default "kvm")
 *   FAKE_CH_AGENT          the slipway-agent binary to start at vm.boot (none: no guest answers)
 *   FAKE_CH_LOG            append one JSON line per request and event here
 *   FAKE_CH_REJECT         an endpoint (e.g. "vm.boot") to answer 500 with a fake error body
 *   FAKE_CH_API_DELAY_MS   wait this long before serving the API socket
 *   FAKE_CH_EXIT_AT_START  exit at once with this code, after a message on stderr
 *   FAKE_CH_GUEST          what the "guest" does once booted: `panic` (a panic line on the serial
 *                          console, and the VM stays Running, as CH reboots a panicking guest) or
 *                          `poweroff` (state Shutdown, then the process exits 0, as CH does)
 */
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
/** The spec: $CH_OPENAPI_PATH, else the copy vendored in this repository (vendor/cloud-hypervisor/). */
export const CH_OPENAPI_PATH = process.env.CH_OPENAPI_PATH ?? join(HERE, '..', '..', 'vendor', 'cloud-hypervisor', 'cloud-hypervisor.yaml');
export const FAKE_VERSION = 'v0.0.0-fake';
/** What a real CH answers after `OK `: the host-side port it assigned. */
export const FAKE_HOST_PORT = 1073741824;

// ---------------------------------------------------------------------------------------------
// A YAML parser for the subset cloud-hypervisor.yaml uses: block mappings and sequences (items
// may open a mapping: `- url: x`), `#` comments, plain multi-line scalars, '…' and "…" scalars,
// `|` and `>` block scalars, one-line flow sequences `[a, "b"]`, booleans, integers and decimals.
// Anything else (anchors, tags, flow mappings, documents) is refused, not guessed at.
// ---------------------------------------------------------------------------------------------

const KEY_RE = /^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s"'#\[\]{}&*!|>%@`,-][^#]*?|-[^\s#][^#]*?)\s*:(?:\s+(.*))?$/;

function stripComment(s) {
  // a comment starts at ' #' outside quotes
  let quote = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = '';
    } else if (c === '"' || c === "'") {
      if (i === 0 || /\s|\[|,/.test(s[i - 1] ?? '')) quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(s[i - 1] ?? ''))) {
      return s.slice(0, i).trimEnd();
    }
  }
  return s.trimEnd();
}

function unquote(s, where) {
  if (s.startsWith('"')) {
    if (!s.endsWith('"') || s.length < 2) throw new Error(`yaml ${where}: unterminated "string": ${s}`);
    return JSON.parse(s);
  }
  if (s.startsWith("'")) {
    if (!s.endsWith("'") || s.length < 2) throw new Error(`yaml ${where}: unterminated 'string': ${s}`);
    return s.slice(1, -1).replace(/''/g, "'");
  }
  return s;
}

function plainScalar(s) {
  if (s === 'true' || s === 'True') return true;
  if (s === 'false' || s === 'False') return false;
  if (s === 'null' || s === '~' || s === '') return null;
  if (/^[-+]?\d+$/.test(s)) return Number(s);
  if (/^[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) return Number(s);
  return s;
}

function inlineScalar(s, where) {
  if (/^[&*!%@`]/.test(s) || s.startsWith('{')) throw new Error(`yaml ${where}: unsupported syntax: ${s}`);
  if (s.startsWith('[')) {
    if (!s.endsWith(']')) throw new Error(`yaml ${where}: multi-line flow sequences are not supported: ${s}`);
    const body = s.slice(1, -1).trim();
    if (body === '') return [];
    const parts = [];
    let cur = '';
    let quote = '';
    for (const c of body) {
      if (quote) {
        cur += c;
        if (c === quote) quote = '';
      } else if (c === '"' || c === "'") {
        quote = c;
        cur += c;
      } else if (c === '[' || c === '{') {
        throw new Error(`yaml ${where}: nested flow collections are not supported: ${s}`);
      } else if (c === ',') {
        parts.push(cur.trim());
        cur = '';
      } else cur += c;
    }
    parts.push(cur.trim());
    return parts.map((p) => (p.startsWith('"') || p.startsWith("'") ? unquote(p, where) : plainScalar(p)));
  }
  if (s.startsWith('"') || s.startsWith("'")) return unquote(s, where);
  return plainScalar(s);
}

export function parseYaml(text) {
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  let i = 0;
  const indentOf = (l) => l.length - l.trimStart().length;
  const skippable = (l) => {
    const t = l.trim();
    return t === '' || t.startsWith('#');
  };
  const peek = () => {
    while (i < lines.length && skippable(lines[i])) i++;
    return i < lines.length ? lines[i] : undefined;
  };
  const where = () => `line ${i + 1}`;
  const isSeqItem = (content) => content === '-' || content.startsWith('- ');

  function parseBlock(indent) {
    const line = peek();
    if (line === undefined) return null;
    if (line.includes('\t') && /^\s*\t/.test(line)) throw new Error(`yaml ${where()}: tab indentation`);
    return isSeqItem(line.slice(indentOf(line))) ? parseSequence(indentOf(line)) : parseMapping(indentOf(line) < indent ? indent : indentOf(line));
  }

  // the value after `key:` (rest: the text after the colon, '' when none) of an entry at `indent`
  function valueAfter(rest, indent) {
    const r = stripComment(rest ?? '');
    if (r === '') {
      const next = peek();
      if (next === undefined) return null;
      const ind = indentOf(next);
      const content = stripComment(next.slice(ind));
      if (ind > indent && !isSeqItem(content) && !KEY_RE.test(content)) {
        // a plain scalar that starts on the next line
        i++;
        return valueAfter(content, indent);
      }
      if (ind > indent) return parseBlock(ind);
      if (ind === indent && isSeqItem(next.slice(ind))) return parseSequence(ind);
      return null;
    }
    if (/^[|>][-+]?$/.test(r)) return blockScalar(r, indent);
    let value = inlineScalar(r, where());
    // a plain scalar continues on more-indented lines (folded with spaces; a blank line is a newline)
    if (typeof value === 'string' && !r.startsWith('"') && !r.startsWith("'") && !r.startsWith('[')) {
      let text = r;
      let j = i;
      let pendingBlank = 0;
      while (j < lines.length) {
        const l = lines[j];
        if (l.trim() === '') {
          pendingBlank++;
          j++;
          continue;
        }
        if (indentOf(l) <= indent || l.trim().startsWith('#')) break;
        text += pendingBlank > 0 ? '\n'.repeat(pendingBlank) : ' ';
        text += stripComment(l.trim());
        pendingBlank = 0;
        j++;
        i = j;
      }
      if (text !== r) value = text;
    }
    return value;
  }

  function blockScalar(indicator, indent) {
    const out = [];
    let blockIndent = -1;
    while (i < lines.length) {
      const l = lines[i];
      if (l.trim() === '') {
        out.push('');
        i++;
        continue;
      }
      const ind = indentOf(l);
      if (ind <= indent) break;
      if (blockIndent < 0) blockIndent = ind;
      if (ind < blockIndent) break;
      out.push(l.slice(blockIndent));
      i++;
    }
    while (out.length > 0 && out[out.length - 1] === '') out.pop();
    let text;
    if (indicator.startsWith('|')) text = out.join('\n');
    else {
      text = '';
      out.forEach((l, k) => {
        if (k === 0) text = l;
        else if (l === '') text += '\n';
        else text += text.endsWith('\n') || /^\s/.test(l) ? l : ` ${l}`;
      });
    }
    return indicator.endsWith('-') ? text : `${text}\n`;
  }

  function parseMapping(indent) {
    const obj = {};
    for (;;) {
      const line = peek();
      if (line === undefined) break;
      const ind = indentOf(line);
      if (ind < indent) break;
      if (ind > indent) throw new Error(`yaml ${where()}: unexpected indentation: ${line.trim()}`);
      const content = line.slice(ind);
      if (isSeqItem(content)) break;
      const m = KEY_RE.exec(content);
      if (!m) throw new Error(`yaml ${where()}: expected "key: value": ${content}`);
      const key = String(unquote(m[1] ?? '', where()));
      if (Object.prototype.hasOwnProperty.call(obj, key)) throw new Error(`yaml ${where()}: duplicate key ${key}`);
      i++;
      obj[key] = valueAfter(m[2], indent);
    }
    return obj;
  }

  function parseSequence(indent) {
    const arr = [];
    for (;;) {
      const line = peek();
      if (line === undefined) break;
      const ind = indentOf(line);
      if (ind !== indent || !isSeqItem(line.slice(ind))) {
        if (ind > indent) throw new Error(`yaml ${where()}: unexpected indentation: ${line.trim()}`);
        break;
      }
      const item = line.slice(ind + 1).replace(/^ +/, '');
      const itemIndent = ind + (line.slice(ind + 1).length - item.length) + 1;
      if (stripComment(item) === '') {
        i++;
        const next = peek();
        arr.push(next !== undefined && indentOf(next) > indent ? parseBlock(indentOf(next)) : null);
      } else if (KEY_RE.test(stripComment(item)) && !item.startsWith('"') && !item.startsWith("'") && !item.startsWith('[')) {
        // `- key: value` opens a mapping whose keys sit at the item's column
        lines[i] = ' '.repeat(itemIndent) + item;
        arr.push(parseMapping(itemIndent));
      } else if (isSeqItem(item)) {
        throw new Error(`yaml ${where()}: nested inline sequences are not supported`);
      } else {
        i++;
        arr.push(valueAfter(item, indent));
      }
    }
    return arr;
  }

  const first = peek();
  if (first === undefined) return null;
  if (/^(---|%|\.\.\.)/.test(first)) throw new Error('yaml: document markers and directives are not supported');
  const doc = parseBlock(0);
  if (peek() !== undefined) throw new Error(`yaml ${where()}: unexpected content: ${lines[i]}`);
  return doc;
}

let specCache;
/** The OpenAPI description CH ships, parsed (cached per process). */
export function loadChApiSpec(path = CH_OPENAPI_PATH) {
  if (specCache && specCache.path === path) return specCache.doc;
  const doc = parseYaml(readFileSync(path, 'utf8'));
  if (!doc || typeof doc !== 'object' || !doc.components || !doc.components.schemas) throw new Error(`${path}: no components.schemas`);
  specCache = { path, doc };
  return doc;
}

// ---------------------------------------------------------------------------------------------
// A JSON-schema validator for the subset of OpenAPI 3.0 schemas the CH spec uses: type, format
// (int8..int64, uint8..uint64 ranges), properties, required, items, enum, $ref to
// #/components/schemas/*, additionalProperties, minimum, maximum, minLength. Annotations (default,
// description, deprecated, example) are ignored; any other keyword is an error, so a newer spec
// that uses one cannot be half-checked in silence.
// `strict`: a property an object schema does not list (and no additionalProperties allows) is an
// error. OpenAPI allows it and CH ignores it; for our own bodies it is always a mistake.
// ---------------------------------------------------------------------------------------------

const KNOWN = new Set(['type', 'format', 'properties', 'required', 'items', 'enum', '$ref', 'additionalProperties', 'minimum', 'maximum', 'minLength', 'default', 'description', 'deprecated', 'example', 'nullable']);
const INT_RANGES = {
  int8: [-128, 127],
  int16: [-32768, 32767],
  int32: [-2147483648, 2147483647],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  uint8: [0, 255],
  uint16: [0, 65535],
  uint32: [0, 4294967295],
  uint64: [0, Number.MAX_SAFE_INTEGER],
};

function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

export function resolveRef(doc, ref) {
  const m = /^#\/components\/schemas\/([A-Za-z0-9_.-]+)$/.exec(ref);
  if (!m) throw new Error(`unsupported $ref ${ref}`);
  const s = doc.components.schemas[m[1]];
  if (!s) throw new Error(`$ref ${ref} names no schema`);
  return s;
}

/** Validate `value` against `schema` (an object, or a schema name in components.schemas); returns the errors. */
export function validateSchema(doc, schema, value, opts = {}) {
  const errors = [];
  const strict = opts.strict === true;
  const root = typeof schema === 'string' ? resolveRef(doc, `#/components/schemas/${schema}`) : schema;
  const visit = (s, v, path) => {
    for (const k of Object.keys(s)) if (!KNOWN.has(k)) throw new Error(`schema at ${path}: unsupported keyword ${k}`);
    if (s.$ref) {
      visit(resolveRef(doc, s.$ref), v, path);
      return;
    }
    if (v === null && s.nullable === true) return;
    if (s.type !== undefined) {
      const t = typeOf(v);
      const ok =
        s.type === 'integer' ? t === 'number' && Number.isInteger(v)
        : s.type === 'number' ? t === 'number' && Number.isFinite(v)
        : s.type === t;
      if (!ok) {
        errors.push(`${path}: expected ${s.type}, got ${t === 'number' && s.type === 'integer' ? `non-integer ${v}` : t}`);
        return;
      }
    }
    if (s.enum !== undefined && !s.enum.some((e) => e === v)) errors.push(`${path}: ${JSON.stringify(v)} is not one of ${JSON.stringify(s.enum)}`);
    if (typeof v === 'number') {
      if (s.format !== undefined && (s.type === 'integer' || s.type === undefined)) {
        const range = INT_RANGES[s.format];
        if (!range) throw new Error(`schema at ${path}: unsupported integer format ${s.format}`);
        if (v < range[0] || v > range[1]) errors.push(`${path}: ${v} is out of range for ${s.format}`);
      }
      if (s.minimum !== undefined && v < s.minimum) errors.push(`${path}: ${v} is less than the minimum ${s.minimum}`);
      if (s.maximum !== undefined && v > s.maximum) errors.push(`${path}: ${v} is more than the maximum ${s.maximum}`);
    }
    if (typeof v === 'string' && s.minLength !== undefined && v.length < s.minLength) errors.push(`${path}: shorter than ${s.minLength}`);
    if (Array.isArray(v) && s.items !== undefined) v.forEach((item, k) => visit(s.items, item, `${path}[${k}]`));
    if (typeOf(v) === 'object' && (s.type === 'object' || s.properties !== undefined || s.additionalProperties !== undefined)) {
      for (const r of s.required ?? []) if (!(r in v)) errors.push(`${path}: missing required property ${r}`);
      const props = s.properties ?? {};
      for (const [k, item] of Object.entries(v)) {
        if (Object.prototype.hasOwnProperty.call(props, k)) visit(props[k], item, `${path}.${k}`);
        else if (s.additionalProperties === false) errors.push(`${path}: property ${k} is not allowed`);
        else if (s.additionalProperties !== undefined && s.additionalProperties !== true) visit(s.additionalProperties, item, `${path}.${k}`);
        else if (strict && s.additionalProperties === undefined) errors.push(`${path}: property ${k} is not in the schema`);
      }
    }
  };
  visit(root, value, opts.path ?? '$');
  return errors;
}

/**
 * `payload.fw_cfg_config` against CH's serde struct (vmm/src/vm_config.rs, cargo feature fw_cfg):
 *   FwCfgConfig { e820: bool, kernel: bool, cmdline: bool, initramfs: bool, acpi_tables: bool,
 *                 items: Option<FwCfgItemList> }
 *   FwCfgItemList { #[serde(default)] item_list: Vec<FwCfgItem> }
 *   FwCfgItem { #[serde(default)] name: String, #[serde(default)] file: PathBuf
 *               (newer: file: Option<PathBuf>, string: Option<String>, exactly one of them) }
 * The booleans are required here: older versions have no #[serde(default)] on the struct (a
 * missing one fails to deserialize), newer ones default a missing one to true.
 */
export function validateFwCfgConfig(v, path = '$.payload.fw_cfg_config') {
  const errors = [];
  if (typeOf(v) !== 'object') return [`${path}: expected object, got ${typeOf(v)}`];
  for (const k of ['e820', 'kernel', 'cmdline', 'initramfs', 'acpi_tables']) {
    if (!(k in v)) errors.push(`${path}: missing ${k} (a bool, required by older CH versions)`);
    else if (typeof v[k] !== 'boolean') errors.push(`${path}.${k}: expected boolean, got ${typeOf(v[k])}`);
  }
  for (const k of Object.keys(v)) if (!['e820', 'kernel', 'cmdline', 'initramfs', 'acpi_tables', 'items'].includes(k)) errors.push(`${path}: unknown field ${k}`);
  if (v.items !== undefined && v.items !== null) {
    if (typeOf(v.items) !== 'object') errors.push(`${path}.items: expected an object { item_list: [...] }, got ${typeOf(v.items)}`);
    else {
      for (const k of Object.keys(v.items)) if (k !== 'item_list') errors.push(`${path}.items: unknown field ${k}`);
      const list = v.items.item_list;
      if (list !== undefined && !Array.isArray(list)) errors.push(`${path}.items.item_list: expected array, got ${typeOf(list)}`);
      (Array.isArray(list) ? list : []).forEach((item, k) => {
        const p = `${path}.items.item_list[${k}]`;
        if (typeOf(item) !== 'object') {
          errors.push(`${p}: expected object`);
          return;
        }
        for (const f of Object.keys(item)) if (!['name', 'file', 'string'].includes(f)) errors.push(`${p}: unknown field ${f}`);
        if (typeof item.name !== 'string' || item.name === '') errors.push(`${p}.name: expected a non-empty string`);
        else if (item.name.length > 55) errors.push(`${p}.name: fw_cfg file names are at most 55 bytes`);
        const hasFile = typeof item.file === 'string' && item.file !== '';
        const hasString = typeof item.string === 'string';
        if (hasFile === hasString) errors.push(`${p}: exactly one of file or string is required`);
      });
    }
  }
  return errors;
}

/** Some of CH's own ValidationError checks (vmm/src/config.rs), applied after the schema. */
export function chSemanticErrors(c) {
  const errors = [];
  const payload = c.payload ?? {};
  if (payload.firmware && payload.kernel) errors.push('FirmwarePlusOtherPayloads: Specifying a kernel is not supported when a firmware is provided');
  if (!payload.firmware && !payload.kernel && !payload.igvm) errors.push('MissingBootitem: No bootitem provided: neither firmware nor kernel');
  if (c.cpus && c.cpus.max_vcpus < c.cpus.boot_vcpus) errors.push('CpusMaxLowerThanBoot: Max CPUs lower than boot CPUs');
  const memShared = c.memory?.shared === true || c.memory?.hugepages === true;
  if (c.memory?.hugepage_size !== undefined && c.memory?.hugepages !== true) errors.push('HugePageSizeWithoutHugePages');
  (c.disks ?? []).forEach((d, k) => {
    if (d.path && d.vhost_socket) errors.push(`disks[${k}]: DiskSocketAndPath: Disk path and vhost socket both provided`);
    if (d.vhost_user && !d.vhost_socket) errors.push(`disks[${k}]: VhostUserMissingSocket: No socket provided when using vhost-user`);
    if (d.vhost_user && !memShared) errors.push(`disks[${k}]: VhostUserRequiresSharedMemory: Using vhost-user requires using shared memory or huge pages`);
    if (!d.vhost_user && !d.path) errors.push(`disks[${k}]: a disk needs a path (or vhost_user with vhost_socket)`);
  });
  (c.net ?? []).forEach((n, k) => {
    if (n.vhost_user && !n.vhost_socket) errors.push(`net[${k}]: VhostUserMissingSocket`);
    if (n.vhost_user && !memShared) errors.push(`net[${k}]: VhostUserRequiresSharedMemory`);
    if (n.num_queues !== undefined && n.num_queues < 2) errors.push(`net[${k}]: VnetQueueLowerThan2`);
  });
  for (const name of ['serial', 'console']) {
    const s = c[name];
    if (s?.mode === 'File' && !s.file) errors.push(`${name}: ConsoleFileMissing: Path missing when using file console mode`);
    if (s?.mode === 'Socket' && !s.socket) errors.push(`${name}: ConsoleSocketPathMissing: Path missing when using socket console mode`);
  }
  // CH's defaults are serial Null and console Tty, so two absent/Tty settings would clash
  if ((c.serial?.mode ?? 'Null') === 'Tty' && (c.console?.mode ?? 'Tty') === 'Tty') errors.push('DoubleTtyMode: Console mode tty specified for both serial and virtio-console');
  return errors;
}

/**
 * Everything a vm.create body must pass: the OpenAPI VmConfig schema (strict) for the body minus
 * `payload.fw_cfg_config` (not in the YAML), that field against the serde struct, and CH's checks.
 * `fwCfgFeature`: whether this CH has the fw_cfg feature (without it CH would drop the field).
 */
export function validateVmConfigBody(doc, body, opts = {}) {
  if (typeOf(body) !== 'object') return [`$: expected object, got ${typeOf(body)}`];
  let schemaBody = body;
  let fwCfg;
  if (typeOf(body.payload) === 'object' && 'fw_cfg_config' in body.payload) {
    const { fw_cfg_config: f, ...rest } = body.payload;
    fwCfg = f;
    schemaBody = { ...body, payload: rest };
  }
  const errors = validateSchema(doc, 'VmConfig', schemaBody, { strict: opts.strict !== false });
  if (fwCfg !== undefined) {
    if (opts.fwCfgFeature === false) errors.push('$.payload.fw_cfg_config: this Cloud Hypervisor has no fw_cfg feature (a real one would silently ignore the field)');
    errors.push(...validateFwCfgConfig(fwCfg));
  }
  if (errors.length === 0) errors.push(...chSemanticErrors(body));
  return errors;
}

// ---------------------------------------------------------------------------------------------
// The fake VMM process
// ---------------------------------------------------------------------------------------------

function parseArgs(argv) {
  let apiSocket;
  for (let k = 0; k < argv.length; k++) {
    const a = argv[k];
    if (a === '--version' || a === '-V') {
      process.stdout.write(`cloud-hypervisor ${FAKE_VERSION} (FAKE: test/helpers/fake-cloud-hypervisor.mjs)\n`);
      process.exit(0);
    }
    let value;
    if (a === '--api-socket') value = argv[++k];
    else if (a.startsWith('--api-socket=')) value = a.slice('--api-socket='.length);
    else {
      process.stderr.write(`fake-cloud-hypervisor: unsupported argument ${JSON.stringify(a)} (the fake knows only --api-socket)\n`);
      process.exit(1);
    }
    if (value === undefined) {
      process.stderr.write('fake-cloud-hypervisor: --api-socket needs a value\n');
      process.exit(1);
    }
    // CH's syntax: path=<path>[,fd=<fd>], or a bare path
    const fields = Object.fromEntries(value.split(',').map((p) => (p.includes('=') ? [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)] : ['path', p])));
    apiSocket = fields.path;
  }
  if (!apiSocket) {
    process.stderr.write('fake-cloud-hypervisor: --api-socket path=<path> is required (the fake has no other way in)\n');
    process.exit(1);
  }
  return { apiSocket };
}

function main() {
  const env = process.env;
  const log = (entry) => {
    if (env.FAKE_CH_LOG) appendFileSync(env.FAKE_CH_LOG, `${JSON.stringify({ t: Date.now(), pid: process.pid, ...entry })}\n`);
  };
  process.stderr.write('fake-cloud-hypervisor: a FAKE Cloud Hypervisor for tests (no VM runs)\n');
  if (env.FAKE_CH_EXIT_AT_START) {
    process.stderr.write('fake-cloud-hypervisor: exiting at start as FAKE_CH_EXIT_AT_START asks\n');
    process.exit(Number(env.FAKE_CH_EXIT_AT_START));
  }
  const { apiSocket } = parseArgs(process.argv.slice(2));
  const features = (env.FAKE_CH_FEATURES ?? 'kvm').split(',').map((f) => f.trim()).filter(Boolean);
  const doc = loadChApiSpec();

  let state = 'None'; // None | Created | Running | Shutdown
  let config;
  let agent;
  let vsockServer;
  const connections = new Set();

  const stopGuest = () => {
    for (const c of connections) c.destroy();
    connections.clear();
    if (vsockServer) {
      vsockServer.close();
      if (config?.vsock?.socket) rmSync(config.vsock.socket, { force: true });
      vsockServer = undefined;
    }
    if (agent && agent.exitCode === null && agent.signalCode === null) agent.kill('SIGTERM');
    agent = undefined;
  };
  const exit = (code) => {
    stopGuest();
    rmSync(apiSocket, { force: true });
    log({ event: 'exit', code });
    process.exit(code);
  };
  process.on('SIGTERM', () => exit(0));
  process.on('SIGINT', () => exit(0));
  process.on('exit', () => {
    if (agent && agent.exitCode === null) agent.kill('SIGKILL');
  });

  const boot = () => {
    const payload = config.payload ?? {};
    for (const [what, p] of [['kernel', payload.kernel], ['initramfs', payload.initramfs], ['firmware', payload.firmware]]) {
      if (p && !existsSync(p)) return `Error booting VM: ${what} ${p}: No such file or directory (os error 2)`;
    }
    for (const item of payload.fw_cfg_config?.items?.item_list ?? []) {
      if (item.file && !existsSync(item.file)) return `Error booting VM: fw_cfg item ${item.name}: ${item.file}: No such file or directory (os error 2)`;
    }
    for (const d of config.disks ?? []) {
      if (d.path && !existsSync(d.path)) return `Error booting VM: disk ${d.path}: No such file or directory (os error 2)`;
    }
    if (config.serial?.mode === 'File') writeFileSync(config.serial.file, 'fake-cloud-hypervisor: this is a FAKE serial console; no guest kernel runs\n');
    const vsockPath = config.vsock?.socket;
    const agentSocket = join(dirname(apiSocket), 'fake-ch-guest-agent.sock');
    // a guest that panics or powers off while booting never starts its agent
    if (env.FAKE_CH_AGENT && !env.FAKE_CH_GUEST) {
      rmSync(agentSocket, { force: true });
      agent = spawn(env.FAKE_CH_AGENT, ['--listen-unix', agentSocket, '--no-vsock', '--no-serial', '--no-shutdown-signal'], { stdio: ['ignore', 'ignore', 'inherit'] });
      log({ event: 'agent', pid: agent.pid, socket: agentSocket });
    }
    if (vsockPath) {
      rmSync(vsockPath, { force: true });
      vsockServer = createNetServer((conn) => {
        connections.add(conn);
        conn.on('close', () => connections.delete(conn));
        conn.on('error', () => conn.destroy());
        let buf = Buffer.alloc(0);
        const onData = (chunk) => {
          buf = Buffer.concat([buf, chunk]);
          const nl = buf.indexOf(0x0a);
          if (nl < 0) {
            if (buf.length > 64) conn.destroy();
            return;
          }
          conn.removeListener('data', onData);
          conn.pause();
          const line = buf.subarray(0, nl).toString('latin1');
          const rest = buf.subarray(nl + 1);
          const m = /^CONNECT (\d+)$/.exec(line);
          log({ event: 'vsock', line });
          // CH closes the connection when the guest does not accept: no listener on the port
          if (!m || Number(m[1]) !== 1024 || !agent) {
            conn.destroy();
            return;
          }
          const up = connect(agentSocket);
          up.once('error', () => conn.destroy());
          up.once('connect', () => {
            connections.add(up);
            up.on('close', () => {
              connections.delete(up);
              conn.destroy();
            });
            conn.on('close', () => up.destroy());
            conn.write(`OK ${FAKE_HOST_PORT}\n`);
            if (rest.length > 0) up.write(rest);
            conn.pipe(up);
            up.pipe(conn);
            conn.resume();
          });
        };
        conn.on('data', onData);
      });
      vsockServer.listen(vsockPath);
    }
    return undefined;
  };

  const server = createHttpServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const endpoint = (req.url ?? '').replace(/^\/api\/v1\//, '');
      const answer = (status, body) => {
        log({ method: req.method, endpoint, status, ...(raw ? { body: safeJson(raw) } : {}), ...(status >= 400 ? { error: body } : {}) });
        const data = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
        res.writeHead(status, { 'Content-Length': Buffer.byteLength(data), ...(typeof body === 'object' ? { 'Content-Type': 'application/json' } : {}) });
        res.end(data);
        return status;
      };
      if (!(req.url ?? '').startsWith('/api/v1/')) return answer(404, `fake-cloud-hypervisor: unknown path ${req.url}`);
      // micro_http (CH's HTTP server) takes no chunked bodies: a request must carry its length
      if (req.headers['transfer-encoding']) return answer(400, `fake-cloud-hypervisor: Transfer-Encoding ${req.headers['transfer-encoding']} is not supported (send Content-Length)`);
      if (raw.length > 0 && req.headers['content-length'] === undefined) return answer(400, 'fake-cloud-hypervisor: a body without Content-Length');
      const routes = {
        'vmm.ping': 'GET', 'vm.info': 'GET', 'vm.create': 'PUT', 'vm.boot': 'PUT', 'vm.shutdown': 'PUT', 'vmm.shutdown': 'PUT', 'vm.delete': 'PUT',
      };
      const method = routes[endpoint];
      if (!method) return answer(400, `fake-cloud-hypervisor: unknown endpoint ${endpoint}`);
      if (req.method !== method) return answer(405, `fake-cloud-hypervisor: ${endpoint} takes ${method}, not ${req.method}`);
      if (env.FAKE_CH_REJECT === endpoint) return answer(500, `Error from API: fake failure of ${endpoint} (FAKE_CH_REJECT)`);
      switch (endpoint) {
        case 'vmm.ping':
          return answer(200, { build_version: `${FAKE_VERSION} FAKE test/helpers/fake-cloud-hypervisor.mjs`, version: FAKE_VERSION, pid: process.pid, features });
        case 'vm.info':
          if (state === 'None') return answer(404, 'VM is not created');
          return answer(200, { config, state });
        case 'vm.create': {
          if (state !== 'None') return answer(500, 'Error from API: The VM could not be created: VM is already created');
          let body;
          try {
            body = JSON.parse(raw);
          } catch (err) {
            return answer(400, `Error from API: invalid JSON: ${err.message}`);
          }
          const errors = validateVmConfigBody(doc, body, { fwCfgFeature: features.includes('fw_cfg') });
          if (errors.length > 0) return answer(400, `Error from API: The VM could not be created: ${errors.join('; ')}`);
          config = body;
          state = 'Created';
          return answer(204);
        }
        case 'vm.boot': {
          if (state === 'None') return answer(404, 'Error from API: The VM could not boot: VM is not created');
          if (state === 'Running') return answer(500, 'Error from API: The VM could not boot: VM is already running');
          const failure = boot();
          if (failure) return answer(500, failure);
          state = 'Running';
          if (env.FAKE_CH_GUEST === 'panic' && config.serial?.mode === 'File') {
            setTimeout(() => appendFileSync(config.serial.file, 'Kernel panic - not syncing: FAKE stand-in panic\n'), 50);
          } else if (env.FAKE_CH_GUEST === 'poweroff') {
            setTimeout(() => {
              stopGuest();
              state = 'Shutdown';
              log({ event: 'guest-poweroff' });
              setTimeout(() => exit(0), 300);
            }, 50);
          }
          return answer(204);
        }
        case 'vm.shutdown':
          if (state === 'None') return answer(404, 'Error from API: The VM could not shut down: VM is not created');
          if (state !== 'Running') return answer(405, 'Error from API: The VM could not shut down: VM is not running');
          stopGuest();
          state = 'Shutdown';
          return answer(204);
        case 'vm.delete':
          stopGuest();
          state = 'None';
          config = undefined;
          return answer(204);
        case 'vmm.shutdown':
          answer(204);
          res.on('finish', () => setImmediate(() => exit(0)));
          return 204;
        default:
          return answer(500, 'unreachable');
      }
    });
  });
  const listen = () => {
    rmSync(apiSocket, { force: true });
    server.listen(apiSocket, () => log({ event: 'listening', apiSocket, features }));
  };
  const delay = Number(env.FAKE_CH_API_DELAY_MS ?? 0);
  if (delay > 0) setTimeout(listen, delay);
  else listen();
}

function safeJson(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    statSync(CH_OPENAPI_PATH);
  } catch {
    process.stderr.write(`fake-cloud-hypervisor: the OpenAPI file ${CH_OPENAPI_PATH} is missing (set CH_OPENAPI_PATH)\n`);
    process.exit(1);
  }
  main();
}
