// Token counts for pacing and for refusing inputs over a model's limit. OpenAI's embedding models
// use cl100k_base, whose ranks ship inside js-tiktoken (nothing is downloaded). For any other
// model the count is an estimate that errs high: one token per 3 bytes of UTF-8.
import { getEncoding, type Tiktoken } from 'js-tiktoken';

let cl100k: Tiktoken | undefined;

export function usesCl100k(model: string): boolean {
  return /^text-embedding-(3-small|3-large|ada-002)$/.test(model);
}

export function countTokens(text: string, model: string): number {
  if (usesCl100k(model)) {
    cl100k ??= getEncoding('cl100k_base');
    return cl100k.encode(text).length;
  }
  return estimateTokens(text);
}

/** An upper-bound estimate for models without a known tokenizer. */
export function estimateTokens(text: string): number {
  return Math.max(1, Math.ceil(Buffer.byteLength(text, 'utf8') / 3));
}
