// The local server's Batch API for embeddings (src/provider-server/batches.ts), through the real
// `openai` client: files up and down, a batch through its statuses to its output and error files,
// a line that fails alone, an expiry with partial output, a file that fails validation, a cancel.
import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';

let server: EmbeddingServer;
let client: OpenAI;
beforeAll(async () => {
  server = await startEmbeddingServer({ dimensions: 8 });
  client = new OpenAI({ apiKey: 'test-key', baseURL: server.url, maxRetries: 0 });
});
afterAll(async () => { await server.close(); });
beforeEach(() => server.setBatchOptions({}));

const line = (customId: string, input: unknown, url = '/v1/embeddings') =>
  JSON.stringify({ custom_id: customId, method: 'POST', url, body: { model: 'text-embedding-3-small', input, encoding_format: 'float' } });

async function submit(lines: string[]): Promise<OpenAI.Batches.Batch> {
  const file = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n')), 'requests.jsonl'), purpose: 'batch' });
  expect(file).toMatchObject({ object: 'file', purpose: 'batch', filename: 'requests.jsonl' });
  return client.batches.create({ input_file_id: file.id, endpoint: '/v1/embeddings', completion_window: '24h' });
}

async function settled(id: string): Promise<OpenAI.Batches.Batch> {
  for (let i = 0; i < 200; i++) {
    const batch = await client.batches.retrieve(id);
    if (['completed', 'failed', 'expired', 'cancelled'].includes(batch.status)) return batch;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`batch ${id} did not settle`);
}

const jsonl = async (fileId: string | null | undefined) =>
  fileId ? (await (await client.files.content(fileId)).text()).trim().split('\n').map((l) => JSON.parse(l)) : [];

describe('the Batch API of the local server', () => {
  it('embeds a file of requests into an output file; a line that fails goes to the error file alone', async () => {
    const before = server.batchStats.inputs;
    const created = await submit([line('a', ['first text', 'second text']), line('bad', ''), line('b', 'third text')]);
    expect(created).toMatchObject({ object: 'batch', status: 'validating', endpoint: '/v1/embeddings', completion_window: '24h' });
    const batch = await settled(created.id);
    expect(batch).toMatchObject({ status: 'completed', request_counts: { total: 3, completed: 2, failed: 1 } });
    expect(batch.completed_at).toBeGreaterThanOrEqual(batch.created_at);
    const output = await jsonl(batch.output_file_id);
    expect(output.map((o) => [o.custom_id, o.response.status_code, o.response.body.data.length])).toEqual([['a', 200, 2], ['b', 200, 1]]);
    // the same vectors as the sync endpoint gives
    const sync = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['first text', 'second text'], encoding_format: 'float' });
    expect(output[0].response.body.data[1].embedding).toEqual(sync.data[1]!.embedding);
    const errors = await jsonl(batch.error_file_id);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ custom_id: 'bad', response: { status_code: 400 }, error: null });
    expect(server.batchStats.inputs - before).toBe(3);
  });

  it('expires a batch not done by its expires_at: the lines done are in the output, the rest batch_expired', async () => {
    server.setBatchOptions({ expireAfterMs: 250, msPerLine: 100 });
    const batch = await settled((await submit(['1', '2', '3', '4', '5', '6'].map((n) => line(`r${n}`, `text ${n}`)))).id);
    expect(batch.status).toBe('expired');
    expect(batch.expired_at).not.toBeNull();
    const [output, errors] = [await jsonl(batch.output_file_id), await jsonl(batch.error_file_id)];
    expect(output.length).toBeGreaterThanOrEqual(1);
    expect(output.length).toBeLessThan(6);
    expect(output.length + errors.length).toBe(6);
    expect(errors.every((e) => e.error?.code === 'batch_expired' && e.response === null)).toBe(true);
    expect(batch.request_counts).toMatchObject({ total: 6, completed: output.length });
  });

  it('fails a file with a line that does not call the batch\'s endpoint, naming the line; embeds nothing', async () => {
    const before = server.batchStats.inputs;
    const batch = await settled((await submit([line('ok', 'text'), line('wrong', 'text', '/v1/chat/completions')])).id);
    expect(batch.status).toBe('failed');
    expect(batch.errors?.data).toEqual([expect.objectContaining({ code: 'mismatched_endpoint', line: 2 })]);
    expect(server.batchStats.inputs).toBe(before);
  });

  it('cancels a batch in progress; a line fault fails its line with 500', async () => {
    server.setBatchOptions({ msPerLine: 100, lineFails: (id) => id === 'r1' });
    const created = await submit(['1', '2', '3', '4', '5', '6', '7', '8'].map((n) => line(`r${n}`, `text ${n}`)));
    await new Promise((r) => setTimeout(r, 250));
    expect((await client.batches.cancel(created.id)).status).toMatch(/^(cancelling|cancelled)$/);
    const batch = await settled(created.id);
    expect(batch.status).toBe('cancelled');
    expect(batch.request_counts!.completed).toBeLessThan(7);
    const errors = await jsonl(batch.error_file_id);
    expect(errors[0]).toMatchObject({ custom_id: 'r1', response: { status_code: 500 } });
  });

  it('lists its batches, newest first, with their metadata', async () => {
    const a = await client.batches.create({ input_file_id: (await submit([line('x', 'text')])).input_file_id, endpoint: '/v1/embeddings',
      completion_window: '24h', metadata: { pgregen_batch: 'abc' } });
    const listed = [];
    for await (const b of client.batches.list({ limit: 100 })) listed.push(b);
    expect(listed[0]).toMatchObject({ id: a.id, metadata: { pgregen_batch: 'abc' } });
    expect(listed.length).toBeGreaterThanOrEqual(2);
  });

  it('answers 404 for a batch or file it does not have', async () => {
    await expect(client.batches.retrieve('batch_nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.files.retrieve('file-nope')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});
