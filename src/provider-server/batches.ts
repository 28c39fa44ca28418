// OpenAI's Batch API for the local server, for /v1/embeddings (issue 14, item 2): files
// (POST /v1/files, multipart, purpose "batch"; GET /v1/files/{id}; GET /v1/files/{id}/content) and
// batches (POST /v1/batches; GET /v1/batches, one page, newest first; GET /v1/batches/{id};
// POST /v1/batches/{id}/cancel), with OpenAI's
// objects, statuses and line formats. A batch goes validating → in_progress → finalizing →
// completed, its lines embedded one after another after the sync endpoint's checks; a line that
// fails them, or that the `lineFails` fault picks, goes to the error file with its status and body.
// A batch not done by its expires_at (completion_window, or `expireAfterMs` for tests) is expired:
// the lines done are in its output file, the others in its error file as batch_expired. Nothing is
// persisted: a server restart forgets every file and batch.
import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import { ApiError, parseRequest, type EmbeddingRequest } from './request.ts';

export interface BatchOptions {
  /** Seconds before a batch expires (default: its completion window, 24 h). */
  expireAfterMs?: number;
  /** Time spent on each line, on top of its embedding (default 0). */
  msPerLine?: number;
  /** A line this picks fails with 500 (a fault, by custom_id). */
  lineFails?: (customId: string) => boolean;
}

export interface BatchStats {
  /** Inputs embedded through batches (and lines answered), apart from the sync endpoint's counts. */
  inputs: number;
  tokens: number;
  lines: number;
  batches: number;
}

type Status = 'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';

interface FileObject { id: string; object: 'file'; bytes: number; created_at: number; filename: string; purpose: string; content: string }

interface BatchObject {
  id: string; object: 'batch'; endpoint: string; errors: null | { object: 'list'; data: Array<{ code: string; message: string; param: string | null; line: number | null }> };
  input_file_id: string; completion_window: string; status: Status; output_file_id: string | null; error_file_id: string | null;
  created_at: number; in_progress_at: number | null; expires_at: number; finalizing_at: number | null; completed_at: number | null;
  failed_at: number | null; expired_at: number | null; cancelling_at: number | null; cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number }; metadata: Record<string, string> | null;
}

const now = () => Math.floor(Date.now() / 1000);
const id = (prefix: string) => `${prefix}${randomUUID().replaceAll('-', '').slice(0, 24)}`;

export class BatchApi {
  readonly stats: BatchStats = { inputs: 0, tokens: 0, lines: 0, batches: 0 };
  readonly #files = new Map<string, FileObject>();
  readonly #batches = new Map<string, BatchObject>();
  readonly #deadlines = new Map<string, number>();   // batch id → ms since the epoch
  readonly #embed: (request: EmbeddingRequest) => Promise<unknown>;
  readonly #defaultDimensions: number;
  #options: BatchOptions;
  #closed = false;

  /** `embed` answers one request as the sync endpoint would (its JSON body). */
  constructor(embed: (request: EmbeddingRequest) => Promise<unknown>, defaultDimensions: number, options: BatchOptions = {}) {
    this.#embed = embed;
    this.#defaultDimensions = defaultDimensions;
    this.#options = options;
  }

  setOptions(options: BatchOptions): void {
    this.#options = { ...options };
  }

  close(): void {
    this.#closed = true;
  }

  /** Handles the request if its path is the Batch API's; false otherwise. Errors are thrown as ApiError. */
  async route(method: string, path: string, req: http.IncomingMessage): Promise<{ status: number; body: unknown; raw?: string } | undefined> {
    const parts = path.split('/').filter(Boolean);   // v1, files|batches, id?, content|cancel?
    if (parts[0] !== 'v1' || (parts[1] !== 'files' && parts[1] !== 'batches')) return undefined;
    if (parts[1] === 'files') {
      if (method === 'POST' && parts.length === 2) return { status: 200, body: strip(await this.#upload(req)) };
      const file = this.#files.get(parts[2] ?? '');
      if (!file) throw new ApiError(404, `No such File object: ${parts[2] ?? ''}`, 'invalid_request_error', 'id');
      if (method === 'GET' && parts.length === 3) return { status: 200, body: strip(file) };
      if (method === 'GET' && parts[3] === 'content' && parts.length === 4) return { status: 200, body: null, raw: file.content };
    } else {
      if (method === 'POST' && parts.length === 2) return { status: 200, body: this.#create(await json(req)) };
      if (method === 'GET' && parts.length === 2) {
        // newest first, as OpenAI lists them; one page
        const data = [...this.#batches.values()].reverse().map((b) => this.#check(b));
        return { status: 200, body: { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: false } };
      }
      const batch = this.#batches.get(parts[2] ?? '');
      if (!batch) throw new ApiError(404, `No batch found with id '${parts[2] ?? ''}'.`, 'invalid_request_error', null, 'batch_not_found');
      if (method === 'GET' && parts.length === 3) return { status: 200, body: this.#check(batch) };
      if (method === 'POST' && parts[3] === 'cancel' && parts.length === 4) return { status: 200, body: this.#cancel(batch) };
    }
    throw new ApiError(404, `Invalid URL (${method} ${path})`);
  }

  async #upload(req: http.IncomingMessage): Promise<FileObject> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    let form: FormData;
    try {
      form = await new Request('http://localhost/', { method: 'POST', headers: { 'content-type': req.headers['content-type'] ?? '' },
        body: Buffer.concat(chunks) }).formData();
    } catch {
      throw new ApiError(400, 'The file upload must be multipart/form-data with the fields file and purpose.');
    }
    const purpose = form.get('purpose');
    const file = form.get('file');
    if (typeof purpose !== 'string' || !['batch', 'fine-tune', 'assistants', 'vision', 'user_data', 'evals'].includes(purpose)) {
      throw new ApiError(400, `'${String(purpose)}' is not one of ['fine-tune', 'assistants', 'batch', 'user_data', 'evals', 'vision'] - 'purpose'`,
        'invalid_request_error', 'purpose');
    }
    if (file === null || typeof file === 'string') throw new ApiError(400, "'file' is a required property", 'invalid_request_error', 'file');
    const content = await file.text();
    const object: FileObject = { id: id('file-'), object: 'file', bytes: Buffer.byteLength(content), created_at: now(),
      filename: file.name || 'upload.jsonl', purpose, content };
    this.#files.set(object.id, object);
    return object;
  }

  #create(body: Record<string, unknown>): BatchObject {
    const file = this.#files.get(String(body.input_file_id ?? ''));
    if (!file) throw new ApiError(400, `No such File object: ${String(body.input_file_id)}`, 'invalid_request_error', 'input_file_id');
    if (body.endpoint !== '/v1/embeddings') {
      throw new ApiError(400, `Invalid value for 'endpoint': this server batches '/v1/embeddings' only, not ${JSON.stringify(body.endpoint)}.`,
        'invalid_request_error', 'endpoint');
    }
    if (body.completion_window !== '24h') {
      throw new ApiError(400, `Invalid value for 'completion_window': expected '24h', got ${JSON.stringify(body.completion_window)}.`,
        'invalid_request_error', 'completion_window');
    }
    const created = now();
    const expiresMs = Date.now() + (this.#options.expireAfterMs ?? 24 * 3600_000);
    const batch: BatchObject = {
      id: id('batch_'), object: 'batch', endpoint: '/v1/embeddings', errors: null, input_file_id: file.id, completion_window: '24h',
      status: 'validating', output_file_id: null, error_file_id: null, created_at: created, in_progress_at: null,
      expires_at: Math.floor(expiresMs / 1000), finalizing_at: null, completed_at: null, failed_at: null, expired_at: null,
      cancelling_at: null, cancelled_at: null, request_counts: { total: 0, completed: 0, failed: 0 },
      metadata: (body.metadata as Record<string, string> | undefined) ?? null,
    };
    this.#batches.set(batch.id, batch);
    this.#deadlines.set(batch.id, expiresMs);
    this.stats.batches++;
    void this.#run(batch, file.content);
    return { ...batch };
  }

  #check(batch: BatchObject): BatchObject {
    return { ...batch, request_counts: { ...batch.request_counts } };
  }

  #cancel(batch: BatchObject): BatchObject {
    if (['validating', 'in_progress', 'finalizing'].includes(batch.status)) {
      batch.status = 'cancelling';
      batch.cancelling_at = now();
    }
    return this.#check(batch);
  }

  async #run(batch: BatchObject, content: string): Promise<void> {
    await new Promise((r) => setTimeout(r, 20));
    // validation: every line a JSON object with custom_id, method POST, the batch's url and a body
    const lines = content.split('\n').filter((l) => l.trim() !== '');
    const parsed: Array<{ customId: string; body: unknown }> = [];
    const problems: Array<{ code: string; message: string; param: string | null; line: number | null }> = [];
    const seen = new Set<string>();
    lines.forEach((text, i) => {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(text) as Record<string, unknown>;
      } catch {
        problems.push({ code: 'invalid_json_line', message: 'This line is not parseable as valid JSON.', param: null, line: i + 1 });
        return;
      }
      const customId = line.custom_id;
      if (typeof customId !== 'string' || customId === '') {
        problems.push({ code: 'missing_required_parameter', message: 'Missing required parameter: custom_id.', param: 'custom_id', line: i + 1 });
      } else if (seen.has(customId)) {
        problems.push({ code: 'duplicate_custom_id', message: 'The custom_id for this request is a duplicate of another request.', param: 'custom_id', line: i + 1 });
      } else if (line.method !== 'POST' || line.url !== batch.endpoint) {
        problems.push({ code: 'mismatched_endpoint', message: `The url of this request does not match the batch's endpoint ${batch.endpoint}.`,
          param: 'url', line: i + 1 });
      } else {
        seen.add(customId);
        parsed.push({ customId, body: line.body });
      }
    });
    if (problems.length > 0 || parsed.length === 0) {
      batch.status = 'failed';
      batch.failed_at = now();
      batch.errors = { object: 'list', data: problems.length ? problems
        : [{ code: 'empty_file', message: 'The input file has no requests.', param: null, line: null }] };
      return;
    }
    batch.status = 'in_progress';
    batch.in_progress_at = now();
    batch.request_counts.total = parsed.length;
    const output: string[] = [];
    const errors: string[] = [];
    let next = 0;
    for (; next < parsed.length; next++) {
      if (this.#closed || (batch.status as Status) === 'cancelling' || Date.now() >= this.#deadlines.get(batch.id)!) break;
      const { customId, body } = parsed[next]!;
      const requestId = id('req_');
      try {
        if (this.#options.lineFails?.(customId)) throw new ApiError(500, 'The server had an error while processing your request. Sorry about that!', 'server_error');
        const request = parseRequest(body, this.#defaultDimensions);
        if (this.#options.msPerLine) await new Promise((r) => setTimeout(r, this.#options.msPerLine));
        const answer = await this.#embed(request);
        output.push(JSON.stringify({ id: id('batch_req_'), custom_id: customId, response: { status_code: 200, request_id: requestId, body: answer }, error: null }));
        batch.request_counts.completed++;
        this.stats.inputs += request.inputs.length;
        this.stats.tokens += request.tokens.reduce((a, t) => a + t, 0);
        this.stats.lines++;
      } catch (err) {
        const error = err instanceof ApiError ? err : new ApiError(500, `The server had an error processing your request: ${(err as Error).message}`, 'server_error');
        errors.push(JSON.stringify({ id: id('batch_req_'), custom_id: customId, response: { status_code: error.status, request_id: requestId, body: error.body }, error: null }));
        batch.request_counts.failed++;
      }
    }
    const finished = next >= parsed.length;
    if (!finished && (batch.status as Status) !== 'cancelling') {
      for (const { customId } of parsed.slice(next)) {
        errors.push(JSON.stringify({ id: id('batch_req_'), custom_id: customId, response: null,
          error: { code: 'batch_expired', message: 'This request could not be executed before the completion window expired.' } }));
      }
    }
    if (finished) {
      batch.status = 'finalizing';
      batch.finalizing_at = now();
    }
    const save = (text: string[], name: string) => {
      if (text.length === 0) return null;
      const file: FileObject = { id: id('file-'), object: 'file', bytes: 0, created_at: now(), filename: name, purpose: 'batch_output', content: `${text.join('\n')}\n` };
      file.bytes = Buffer.byteLength(file.content);
      this.#files.set(file.id, file);
      return file.id;
    };
    batch.output_file_id = save(output, `${batch.id}_output.jsonl`);
    batch.error_file_id = save(errors, `${batch.id}_error.jsonl`);
    if (finished) {
      batch.status = 'completed';
      batch.completed_at = now();
    } else if ((batch.status as Status) === 'cancelling') {
      batch.status = 'cancelled';
      batch.cancelled_at = now();
    } else {
      batch.status = 'expired';
      batch.expired_at = now();
    }
  }
}

/** The file object as the API shows it (without its content). */
function strip(file: FileObject): Omit<FileObject, 'content'> {
  const { content: _content, ...shown } = file;
  return shown;
}

async function json(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (typeof body === 'object' && body !== null && !Array.isArray(body)) return body as Record<string, unknown>;
  } catch { /* below */ }
  throw new ApiError(400, 'We could not parse the JSON body of your request.');
}
