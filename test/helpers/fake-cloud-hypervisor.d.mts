/** Types for fake-cloud-hypervisor.mjs (a test stand-in, NOT Cloud Hypervisor; see that file). */

/** A parsed OpenAPI document: the parts the validator reads. */
export interface ChApiSpec {
  openapi: string;
  paths: Record<string, unknown>;
  components: { schemas: Record<string, Record<string, unknown>> };
}

export const CH_OPENAPI_PATH: string;
export const FAKE_VERSION: string;
/** what a real CH answers after `OK ` on a hybrid-vsock CONNECT: the host-side port it assigned */
export const FAKE_HOST_PORT: number;
/** The YAML subset cloud-hypervisor.yaml uses (block mappings and sequences, scalars). */
export function parseYaml(text: string): unknown;
export function loadChApiSpec(path?: string): ChApiSpec;
export function resolveRef(doc: ChApiSpec, ref: string): Record<string, unknown>;
/** Errors of `value` against `schema` (an object, or a name in components.schemas); empty when valid. */
export function validateSchema(doc: ChApiSpec, schema: string | Record<string, unknown>, value: unknown, opts?: { strict?: boolean }): string[];
export function validateFwCfgConfig(v: unknown, path?: string): string[];
export function chSemanticErrors(c: unknown): string[];
export function validateVmConfigBody(doc: ChApiSpec, body: unknown, opts?: { fwCfgFeature?: boolean; strict?: boolean }): string[];
