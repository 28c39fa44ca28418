// How much to ask of the embedding endpoint at once, learned from how it answers (issue 14, item 1).
// Endpoints differ by orders of magnitude: OpenAI answers 512 inputs in a second, a self-hosted
// model on a CPU may take a minute and serve one request at a time. Fixed settings either waste the
// fast one or time out on the slow one forever (each timed-out request sent again unchanged).
//
// Like TCP's congestion control, two limits, the inputs per request and the requests in flight:
// - they start small (32 inputs, 1 request) and double after each answer that came back fast (in
//   under a quarter of the request timeout), up to REGEN_MAX_INPUTS_PER_REQUEST and
//   REGEN_CONCURRENCY: the slow start, a handful of requests on a fast endpoint;
// - a timeout, or an answer that took more than half the timeout, halves both (the request that
//   timed out is split in two before it is sent again, see provider.ts); from then on a fast answer
//   grows them additively, by one request in flight per round of answers and an eighth of the
//   ceiling in inputs;
// - the inputs per request never exceed what the measured time per input fits into a quarter of
//   the timeout.
// The pacer (pacer.ts) still keeps the provider's rate limits; this only keeps requests answerable.
// REGEN_ADAPTIVE=false keeps both limits at their ceilings (hand-tuned settings).

export interface AdaptiveOptions {
  /** The ceilings: REGEN_MAX_INPUTS_PER_REQUEST and REGEN_CONCURRENCY. */
  maxInputs: number;
  maxConcurrency: number;
  /** REGEN_REQUEST_TIMEOUT_MS: a request's own limit. */
  timeoutMs: number;
  /** False (REGEN_ADAPTIVE=false): the limits stay at the ceilings; a timed-out request is still split. */
  adapt?: boolean;
}

export interface AdaptiveState {
  inputs: number;
  concurrency: number;
  inFlight: number;
  /** Measured seconds per input (moving average), undefined before the first answer. */
  secondsPerInput: number | undefined;
  slowStart: boolean;
}

const START_INPUTS = 32;

export class Adaptive {
  #inputs: number;
  #concurrency = 1;
  #inFlight = 0;
  #successes = 0;
  #slowStart = true;
  #secondsPerInput: number | undefined;
  readonly #waiting: Array<() => void> = [];
  readonly #o: AdaptiveOptions;

  constructor(options: AdaptiveOptions) {
    this.#o = options;
    const fixed = options.adapt === false;
    this.#inputs = fixed ? options.maxInputs : Math.min(options.maxInputs, START_INPUTS);
    this.#concurrency = fixed ? options.maxConcurrency : 1;
  }

  /** The inputs a new request may carry now. */
  get inputs(): number {
    if (this.#o.adapt === false) return this.#inputs;
    const fit = this.#secondsPerInput ? Math.floor((0.25 * this.#o.timeoutMs) / 1000 / this.#secondsPerInput) : Infinity;
    return Math.max(1, Math.min(this.#inputs, fit));
  }

  state(): AdaptiveState {
    return { inputs: this.inputs, concurrency: this.#concurrency, inFlight: this.#inFlight, secondsPerInput: this.#secondsPerInput,
      slowStart: this.#slowStart };
  }

  /** Waits for a request slot (at most `concurrency` in flight); call the returned function once the request ended. */
  async slot(signal?: AbortSignal): Promise<() => void> {
    while (this.#inFlight >= this.#concurrency) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => { this.#waiting.splice(this.#waiting.indexOf(go), 1); reject(signal!.reason); };
        const go = () => { signal?.removeEventListener('abort', onAbort); resolve(); };
        this.#waiting.push(go);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
    this.#inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inFlight--;
      this.#wake();
    };
  }

  /** An answer: `inputs` embedded in `seconds` (from when the request was sent). */
  answered(inputs: number, seconds: number): void {
    if (this.#o.adapt === false) return;
    const perInput = seconds / Math.max(1, inputs);
    this.#secondsPerInput = this.#secondsPerInput === undefined ? perInput : 0.7 * this.#secondsPerInput + 0.3 * perInput;
    const timeout = this.#o.timeoutMs / 1000;
    if (seconds > 0.5 * timeout) return this.#decrease();
    if (seconds > 0.25 * timeout) return;   // fine as it is
    if (this.#slowStart) {
      this.#inputs = Math.min(this.#o.maxInputs, this.#inputs * 2);
      this.#concurrency = Math.min(this.#o.maxConcurrency, this.#concurrency * 2);
    } else {
      this.#inputs = Math.min(this.#o.maxInputs, this.#inputs + Math.max(1, Math.ceil(this.#o.maxInputs / 8)));
      if (++this.#successes >= this.#concurrency) {   // one more in flight per round of answers
        this.#successes = 0;
        this.#concurrency = Math.min(this.#o.maxConcurrency, this.#concurrency + 1);
      }
    }
    this.#wake();
  }

  /** A request timed out: it is split before it is sent again. */
  timedOut(): void {
    if (this.#o.adapt !== false) this.#decrease();
  }

  #decrease(): void {
    this.#slowStart = false;
    this.#successes = 0;
    this.#inputs = Math.max(1, Math.floor(Math.min(this.#inputs, this.inputs) / 2));
    this.#concurrency = Math.max(1, Math.floor(this.#concurrency / 2));
  }

  #wake(): void {
    // every waiter looks again; those that find no free slot wait again
    for (const go of this.#waiting.splice(0)) go();
  }
}
