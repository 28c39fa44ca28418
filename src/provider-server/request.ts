// What POST /v1/embeddings accepts, checked the way OpenAI checks it, and its error body shape.
// Any violation fails the whole request with 400, as OpenAI does; messages follow OpenAI's wording.
import { countTokens } from '../tokens.ts';

const MAX_INPUTS = 2048;
const MAX_INPUT_TOKENS = 8192;
const MAX_REQUEST_TOKENS = 300_000;
const API_REFERENCE = 'Please check the API reference: https://platform.openai.com/docs/api-reference.';

export class ApiError extends Error {
  status: number;
  body: { error: { message: string; type: string; param: string | null; code: string | null } };
  headers: Record<string, string>;

  constructor(status: number, message: string, type = 'invalid_request_error', param: string | null = null,
              code: string | null = null, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.body = { error: { message, type, param, code } };
    this.headers = headers;
  }
}

export interface EmbeddingRequest {
  model: string;
  inputs: string[];              // token arrays as their JSON text
  tokens: number[];
  dimensions: number;
  encoding: 'float' | 'base64';
}

export const invalidInput = (path: string, why = '') => new ApiError(400, `'${path}' is invalid.${why} ${API_REFERENCE}`);

/** The inputs of `body.input` in OpenAI's accepted forms: a string, strings, one token array, token arrays. */
function readInputs(input: unknown): { inputs: string[]; tokenArrays: boolean; single: boolean } {
  const isTokenArray = (v: unknown): v is number[] =>
    Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t) && t >= 0);
  if (typeof input === 'string') return { inputs: [input], tokenArrays: false, single: true };
  if (!Array.isArray(input) || input.length === 0) throw invalidInput('$.input');
  if (input.length > MAX_INPUTS) throw invalidInput('$.input', ` At most ${MAX_INPUTS} inputs per request, got ${input.length}.`);
  if (isTokenArray(input)) return { inputs: [JSON.stringify(input)], tokenArrays: true, single: true };
  if (input.every((v) => typeof v === 'string')) return { inputs: input, tokenArrays: false, single: false };
  const bad = input.findIndex((v) => !isTokenArray(v));
  if (bad >= 0) throw invalidInput(`$.input[${bad}]`);
  return { inputs: input.map((v) => JSON.stringify(v)), tokenArrays: true, single: false };
}

export function parseRequest(body: unknown, defaultDimensions: number): EmbeddingRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'The request body must be a JSON object.');
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '') throw new ApiError(400, 'you must provide a model parameter', 'invalid_request_error', 'model');
  if (b.input === undefined) throw new ApiError(400, "'input' is a required property");
  const { inputs, tokenArrays, single } = readInputs(b.input);
  const empty = inputs.indexOf('');
  if (empty >= 0) throw invalidInput(single ? '$.input' : `$.input[${empty}]`);
  const model = b.model;
  const tokens = inputs.map((text) => (tokenArrays ? (JSON.parse(text) as number[]).length : countTokens(text, model)));
  const total = tokens.reduce((a, t) => a + t, 0);
  const longest = Math.max(...tokens);
  if (longest > MAX_INPUT_TOKENS) {
    throw new ApiError(400, `This model's maximum context length is ${MAX_INPUT_TOKENS} tokens, however you requested ${longest} tokens ` +
      `(${longest} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.`);
  }
  // Real OpenAI types this one by its code rather than as invalid_request_error.
  if (total > MAX_REQUEST_TOKENS) {
    throw new ApiError(400, `Requested ${total} tokens, max ${MAX_REQUEST_TOKENS} tokens per request`, 'max_tokens_per_request', null, 'max_tokens_per_request');
  }
  let dimensions = defaultDimensions;
  if (b.dimensions !== undefined && b.dimensions !== null) {
    if (model === 'text-embedding-ada-002') throw new ApiError(400, 'This model does not support specifying dimensions.', 'invalid_request_error', 'dimensions');
    if (!Number.isInteger(b.dimensions) || (b.dimensions as number) < 1 || (b.dimensions as number) > 65_536) {
      throw new ApiError(400, `Invalid value for 'dimensions': ${JSON.stringify(b.dimensions)}. Expected a positive integer.`, 'invalid_request_error', 'dimensions');
    }
    dimensions = b.dimensions as number;
  }
  const encoding = b.encoding_format ?? 'float';  // the API's default; the SDK asks for base64 unless told
  if (encoding !== 'float' && encoding !== 'base64') {
    throw new ApiError(400, `Invalid value for 'encoding_format': ${JSON.stringify(encoding)}. Supported values are: 'float' and 'base64'.`,
      'invalid_request_error', 'encoding_format');
  }
  return { model, inputs, tokens, dimensions, encoding };
}
