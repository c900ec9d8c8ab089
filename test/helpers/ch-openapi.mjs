/**
 * Cloud Hypervisor's API description, read and enforced for tests: the OpenAPI document CH ships
 * (vendor/cloud-hypervisor/cloud-hypervisor.yaml) parsed with `yaml`, request bodies validated
 * against its schemas with Ajv (OpenAPI 3.0's integer formats as range checks, `nullable`), then
 * `payload.fw_cfg_config` against CH's serde struct (absent from the YAML) and a subset of CH's
 * own ValidationError checks. Used by the FAKE Cloud Hypervisor (fake-cloud-hypervisor.mjs) and by
 * test/cloud-hypervisor.test.ts, so both check with the same code.
 *
 * Two guards keep a pass meaningful. The YAML may use only what the vendored copy uses (no
 * anchors, aliases, tags or flow mappings: a refreshed copy that does is looked at, not trusted),
 * and a schema may use only the keywords listed in KNOWN (OpenAPI 3.0's schema objects are not
 * quite JSON Schema: a keyword whose meaning differs must not be half-checked in silence).
 * `strict`: a property an object schema does not list (and no additionalProperties allows) is an
 * error. OpenAPI allows it and CH ignores it; for our own bodies it is always a mistake.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { isMap, parseDocument, visit } from 'yaml';

const HERE = dirname(fileURLToPath(import.meta.url));
/** The spec: $CH_OPENAPI_PATH, else the copy vendored in this repository (vendor/cloud-hypervisor/). */
export const CH_OPENAPI_PATH = process.env.CH_OPENAPI_PATH ?? join(HERE, '..', '..', 'vendor', 'cloud-hypervisor', 'cloud-hypervisor.yaml');

/** Parse YAML (1.1, as PyYAML and CH's own tooling read it); refuses duplicate keys, anchors, aliases, tags and flow mappings. */
export function parseYaml(text) {
  const doc = parseDocument(text, { version: '1.1', uniqueKeys: true });
  const [first] = doc.errors;
  if (first) throw new Error(first.code === 'DUPLICATE_KEY' ? `yaml: duplicate key: ${first.message}` : `yaml: ${first.message}`);
  visit(doc, {
    Alias(_key, node) {
      throw new Error(`yaml: unsupported alias *${node.source}`);
    },
    Node(_key, node) {
      if (node.anchor) throw new Error(`yaml: unsupported anchor &${node.anchor}`);
      if (node.tag && !node.tag.startsWith('tag:yaml.org,2002:')) throw new Error(`yaml: unsupported tag ${node.tag}`);
      if (isMap(node) && node.flow) throw new Error('yaml: unsupported flow mapping {...}');
    },
  });
  return doc.toJS();
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

const KNOWN = new Set(['type', 'format', 'properties', 'required', 'items', 'enum', '$ref', 'additionalProperties', 'minimum', 'maximum', 'minLength', 'default', 'description', 'deprecated', 'example', 'nullable']);
/** OpenAPI 3.0's integer formats, as the ranges they promise. */
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

/** Every keyword of a schema (and of the schemas inside it) is one of KNOWN; integer formats are ones INT_RANGES has. */
function checkKeywords(schema, path) {
  if (typeOf(schema) !== 'object') return;
  for (const k of Object.keys(schema)) if (!KNOWN.has(k)) throw new Error(`schema at ${path}: unsupported keyword ${k}`);
  if (schema.format !== undefined && schema.type === 'integer' && !INT_RANGES[schema.format]) throw new Error(`schema at ${path}: unsupported integer format ${schema.format}`);
  if (schema.$ref !== undefined && !/^#\/components\/schemas\//.test(schema.$ref)) throw new Error(`unsupported $ref ${schema.$ref}`);
  for (const [name, sub] of Object.entries(schema.properties ?? {})) checkKeywords(sub, `${path}.${name}`);
  checkKeywords(schema.items, `${path}[]`);
  checkKeywords(schema.additionalProperties, `${path}.*`);
}

/** A copy of `schema` in which every object schema that does not say otherwise allows no other property. */
function closed(schema) {
  if (Array.isArray(schema)) return schema.map(closed);
  if (typeOf(schema) !== 'object') return schema;
  const out = Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, k === 'enum' || k === 'example' || k === 'default' ? v : closed(v)]));
  if (isObjectSchema(out) && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

function isObjectSchema(s) {
  return s.type === 'object' || (s.properties !== undefined && typeOf(s.properties) === 'object' && s.$ref === undefined);
}

const validators = new WeakMap();
/** An Ajv instance holding the document's schemas under `ch` (and, closed, under `ch-strict`). */
function ajvFor(doc) {
  let ajv = validators.get(doc);
  if (ajv) return ajv;
  for (const [name, s] of Object.entries(doc.components.schemas)) checkKeywords(s, `#/components/schemas/${name}`);
  ajv = new Ajv({ allErrors: true, verbose: true, strict: false });
  for (const [format, [lo, hi]] of Object.entries(INT_RANGES)) ajv.addFormat(format, { type: 'number', validate: (n) => Number.isInteger(n) && n >= lo && n <= hi });
  ajv.addSchema({ $id: 'ch', components: { schemas: doc.components.schemas } });
  ajv.addSchema({ $id: 'ch-strict', components: { schemas: closed(doc.components.schemas) } });
  validators.set(doc, ajv);
  return ajv;
}

/** `$.a.b[0]` for Ajv's `/a/b/0`. */
function jsonPath(base, instancePath) {
  return instancePath.split('/').slice(1).reduce((p, seg) => (/^\d+$/.test(seg) ? `${p}[${seg}]` : `${p}.${seg.replace(/~1/g, '/').replace(/~0/g, '~')}`), base);
}

/** One Ajv error as the line a person reads. */
function describe(e, base, strict) {
  const path = jsonPath(base, e.instancePath);
  const v = e.data;
  switch (e.keyword) {
    case 'required': return `${path}: missing required property ${e.params.missingProperty}`;
    case 'type': return `${path}: expected ${e.params.type}, got ${typeOf(v) === 'number' && e.params.type === 'integer' ? `non-integer ${v}` : typeOf(v)}`;
    case 'enum': return `${path}: ${JSON.stringify(v)} is not one of ${JSON.stringify(e.params.allowedValues)}`;
    case 'format': return `${path}: ${v} is out of range for ${e.params.format}`;
    case 'minimum': return `${path}: ${v} is less than the minimum ${e.params.limit}`;
    case 'maximum': return `${path}: ${v} is more than the maximum ${e.params.limit}`;
    case 'minLength': return `${path}: shorter than ${e.params.limit}`;
    case 'additionalProperties': return `${path}: property ${e.params.additionalProperty} ${strict ? 'is not in the schema' : 'is not allowed'}`;
    default: return `${path}: ${e.message}`;
  }
}

/** Validate `value` against `schema` (an object, or a schema name in components.schemas); returns the errors. */
export function validateSchema(doc, schema, value, opts = {}) {
  const strict = opts.strict === true;
  const ajv = ajvFor(doc);
  const base = strict ? 'ch-strict' : 'ch';
  let validate;
  if (typeof schema === 'string') {
    resolveRef(doc, `#/components/schemas/${schema}`);
    validate = ajv.getSchema(`${base}#/components/schemas/${schema}`);
  } else {
    checkKeywords(schema, opts.path ?? '$');
    const own = JSON.parse(JSON.stringify(strict ? closed(schema) : schema).replace(/"#\/components\/schemas\//g, `"${base}#/components/schemas/`));
    validate = ajv.compile(own);
  }
  if (validate(value)) return [];
  // an integer that is not one reports its type; the format's range says nothing more
  const errors = validate.errors.filter((e, k, all) => !(e.keyword === 'format' && all.some((o) => o.keyword === 'type' && o.instancePath === e.instancePath)));
  return [...new Set(errors.map((e) => describe(e, opts.path ?? '$', strict)))];
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


/**
 * Errors of one request's body against what the document says of its endpoint: no body where it
 * has no requestBody, a body where it is required, else the body against the requestBody's JSON
 * schema (strict unless `strict: false`); vm.create bodies go through validateVmConfigBody.
 */
export function validateRequestBody(doc, method, endpoint, body, opts = {}) {
  const op = doc.paths?.[`/${endpoint}`]?.[String(method).toLowerCase()];
  const what = `${method} /${endpoint}`;
  if (!op) return [`${what}: not in the OpenAPI document`];
  const rb = op.requestBody;
  if (body === undefined) return rb?.required ? [`${what}: a request body is required`] : [];
  if (!rb) return [`${what}: takes no request body`];
  const schema = rb.content?.['application/json']?.schema;
  if (!schema) return [`${what}: the document gives no application/json schema for its body`];
  if (endpoint === 'vm.create') return validateVmConfigBody(doc, body, opts);
  const m = typeof schema.$ref === 'string' ? /^#\/components\/schemas\/([A-Za-z0-9_.-]+)$/.exec(schema.$ref) : null;
  return validateSchema(doc, m ? m[1] : schema, body, { strict: opts.strict !== false });
}
