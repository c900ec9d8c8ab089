/**
 * The OpenAPI 3.1 document served at /openapi.json. Request schemas come from the zod schemas
 * the routes validate with, so the document cannot drift from what the daemon accepts.
 */
import { CreateVmBody, ExecBody, PrefetchBody, SnapshotBody, z } from './schemas.js';

const json = (schema: unknown) => ({ 'application/json': { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const errors = {
  '400': { description: 'a malformed request: the message names the field', content: json(ref('Error')) },
  '401': { description: 'TCP without the bearer token', content: json(ref('Error')) },
  '413': { description: 'the body is over the limit', content: json(ref('Error')) },
  '500': { description: 'the operation failed', content: json(ref('Error')) },
};

function schemaOf(s: z.ZodType): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(s) as Record<string, unknown>;
  return rest;
}

export function openApiDocument(version: string): Record<string, unknown> {
  const idParam = { name: 'id', in: 'path', required: true, schema: { type: 'string', pattern: '^[0-9a-f]{12}$' } };
  return {
    openapi: '3.1.0',
    info: { title: 'slipway daemon', version, description: 'Boot microVMs from OCI disks, run commands in them, snapshot their disks into registries. docs/api.md explains it.' },
    servers: [{ url: 'http://localhost', description: 'the Unix socket (no token) or TCP (Authorization: Bearer <token>)' }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'required on TCP; the Unix socket (mode 0600) needs none' } },
      schemas: {
        CreateVm: schemaOf(CreateVmBody),
        Exec: schemaOf(ExecBody),
        Snapshot: schemaOf(SnapshotBody),
        Prefetch: schemaOf(PrefetchBody),
        Vm: {
          type: 'object',
          properties: {
            id: { type: 'string' }, image: { type: 'string' }, digest: { type: ['string', 'null'] }, status: { enum: ['booting', 'running', 'stopping'] },
            createdAt: { type: 'string', format: 'date-time' }, cpus: { type: 'integer' }, memoryMiB: { type: 'integer' }, vmm: { enum: ['qemu', 'cloud-hypervisor'] },
            accel: { enum: ['kvm', 'tcg', null] }, timings: { type: 'object', additionalProperties: { type: 'number' }, description: 'boot phases in ms: backend_up, vmm_started, agent_ready' },
            guestTimings: { type: 'object', additionalProperties: { type: 'number' }, description: 'the guest\'s marks from slipway-init, ms since its kernel started: init_start, root_mounted, agent_started, ...' },
            restore: {
              type: 'object', description: 'a memory snapshot restore (create answer only): how its RAM was loaded by its first exec',
              properties: { memoryLoading: { enum: ['lazy', 'eager'] }, workingSetChunks: { type: 'integer' }, ramChunksFetched: { type: 'integer' }, ramChunkBytes: { type: 'integer' }, ramChunksTouched: { type: 'integer' } },
            },
          },
        },
        SnapshotResult: {
          type: 'object',
          properties: {
            ref: { type: 'string' }, digest: { type: 'string' }, base: { type: 'string' }, dirtyChunks: { type: 'integer' }, newChunks: { type: 'integer' }, uploadedBytes: { type: 'integer' },
            timings: { type: 'object', properties: { quiesceMs: { type: 'number' }, stageMs: { type: 'number' }, pushMs: { type: 'number' }, totalMs: { type: 'number' } } },
          },
        },
        ExecLine: {
          description: 'one NDJSON line of POST /v1/vms/{id}/exec: output (text when it is UTF-8, else base64), then the exit or an error',
          oneOf: [
            { type: 'object', properties: { stream: { enum: ['stdout', 'stderr'] }, text: { type: 'string' } }, required: ['stream', 'text'] },
            { type: 'object', properties: { stream: { enum: ['stdout', 'stderr'] }, base64: { type: 'string' } }, required: ['stream', 'base64'] },
            { type: 'object', properties: { exit: { type: 'object', properties: { exitCode: { type: 'integer' }, signal: { type: 'integer' }, timedOut: { type: 'boolean' } } } }, required: ['exit'] },
            ref('Error'),
          ],
        },
        Error: {
          type: 'object',
          properties: { error: { type: 'object', properties: { code: { type: 'string', description: 'stable, listed in docs/errors.md' }, message: { type: 'string' }, field: { type: 'string' } }, required: ['code', 'message'] } },
          required: ['error'],
        },
      },
    },
    security: [{ bearer: [] }],
    paths: {
      '/v1/vms': {
        post: {
          summary: 'Boot a VM from an image; answers when its agent is ready', requestBody: { required: true, content: json(ref('CreateVm')) },
          responses: { '201': { description: 'the VM, with its boot timings', content: json(ref('Vm')) }, '404': { description: 'the image does not exist', content: json(ref('Error')) }, '429': { description: 'over the VM or boot-queue limit', content: json(ref('Error')) }, ...errors },
        },
        get: { summary: 'List VMs', responses: { '200': { description: 'the VMs', content: json({ type: 'object', properties: { vms: { type: 'array', items: ref('Vm') } } }) } } },
      },
      '/v1/vms/{id}': {
        parameters: [idParam],
        get: { summary: 'One VM', responses: { '200': { description: 'the VM', content: json(ref('Vm')) }, '404': { description: 'no such VM', content: json(ref('Error')) } } },
        delete: { summary: 'Stop a VM and remove everything it had', responses: { '204': { description: 'gone' }, '404': { description: 'no such VM', content: json(ref('Error')) }, '409': { description: 'busy (booting or snapshotting)', content: json(ref('Error')) } } },
      },
      '/v1/vms/{id}/exec': {
        parameters: [idParam],
        post: {
          summary: 'Run a command; output streams as NDJSON, the last line is the exit', requestBody: { required: true, content: json(ref('Exec')) },
          responses: { '200': { description: 'NDJSON lines', content: { 'application/x-ndjson': { schema: ref('ExecLine') } } }, '404': { description: 'no such VM', content: json(ref('Error')) }, ...errors },
        },
      },
      '/v1/vms/{id}/snapshot': {
        parameters: [idParam],
        post: {
          summary: 'Push the VM disk as a delta of its image; the VM keeps running', requestBody: { required: true, content: json(ref('Snapshot')) },
          responses: { '201': { description: 'pushed', content: json(ref('SnapshotResult')) }, '409': { description: 'another snapshot is running', content: json(ref('Error')) }, ...errors },
        },
      },
      '/v1/images/prefetch': {
        post: { summary: 'Fetch a whole disk into the host cache', requestBody: { required: true, content: json(ref('Prefetch')) }, responses: { '200': { description: 'done', content: json({ type: 'object' }) }, ...errors } },
      },
      '/v1/cache': { get: { summary: 'Cache tiers and counters', responses: { '200': { description: 'statistics', content: json({ type: 'object' }) } } } },
      '/v1/health': { get: { summary: 'Liveness, version and VM counts', responses: { '200': { description: 'ok', content: json({ type: 'object' }) } } } },
      '/metrics': { get: { summary: 'Prometheus metrics', responses: { '200': { description: 'text exposition format 0.0.4', content: { 'text/plain': { schema: { type: 'string' } } } } } } },
      '/openapi.json': { get: { summary: 'This document', responses: { '200': { description: 'OpenAPI 3.1', content: json({ type: 'object' }) } } } },
    },
  };
}
