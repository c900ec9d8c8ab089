/** Types for ch-openapi.mjs: Cloud Hypervisor's API description, read and enforced for tests. */

/** A parsed OpenAPI document: the parts the validator reads. */
export interface ChApiSpec {
  openapi: string;
  paths: Record<string, unknown>;
  components: { schemas: Record<string, Record<string, unknown>> };
}

export const CH_OPENAPI_PATH: string;
/** YAML 1.1 without anchors, aliases, tags or flow mappings (what cloud-hypervisor.yaml uses). */
export function parseYaml(text: string): unknown;
export function loadChApiSpec(path?: string): ChApiSpec;
export function resolveRef(doc: ChApiSpec, ref: string): Record<string, unknown>;
/** Errors of `value` against `schema` (an object, or a name in components.schemas); empty when valid. */
export function validateSchema(doc: ChApiSpec, schema: string | Record<string, unknown>, value: unknown, opts?: { strict?: boolean }): string[];
export function validateFwCfgConfig(v: unknown, path?: string): string[];
export function chSemanticErrors(c: unknown): string[];
export function validateVmConfigBody(doc: ChApiSpec, body: unknown, opts?: { fwCfgFeature?: boolean; strict?: boolean }): string[];
/** Errors of one request's body against its endpoint's requestBody in the document (strict unless told); empty when valid. */
export function validateRequestBody(doc: ChApiSpec, method: string, endpoint: string, body: unknown, opts?: { fwCfgFeature?: boolean; strict?: boolean }): string[];
