// A bag-of-words embedding without a model: each word (and, more weakly, each pair of neighbouring
// words) is feature-hashed into one signed bucket, then the vector is L2-normalised. Texts that share
// words point the same way, so search tests and benchmarks get meaningful neighbours; identical texts
// give identical vectors. Words are hashed while scanning, with no substrings or regexes on the hot
// path, because benchmarks embed hundreds of thousands of texts through it.

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

const WORD_WEIGHT = 1;
const BIGRAM_WEIGHT = 0.5;
// Frequent function words would make every pair of English texts look alike; they still count, a little.
const STOP_WEIGHT = 0.2;
const STOP_WORDS = new Set(
  ('a an and are as at be but by for from has have in into is it its of on or that the their this to was were ' +
   'will with you your we our i not no do does').split(' ').map(wordHash));

/** murmur3's finaliser: FNV-1a alone leaves the low bits, which pick the bucket, poorly mixed. */
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function wordHash(word: string): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < word.length; i++) h = Math.imul(h ^ word.charCodeAt(i), FNV_PRIME);
  return mix(h);
}

// 0 = not classified yet, 1 = part of a word, 2 = separator. Filled lazily for code units above ASCII.
const WORD_CHAR = new Uint8Array(65536);
for (let c = 0; c < 128; c++) WORD_CHAR[c] = (c >= 48 && c <= 57) || (c >= 97 && c <= 122) ? 1 : 2;
for (let c = 0xd800; c <= 0xdfff; c++) WORD_CHAR[c] = 1; // surrogate halves: astral letters and emoji stay whole

function isWordChar(c: number): boolean {
  let kind = WORD_CHAR[c]!;
  if (kind === 0) WORD_CHAR[c] = kind = /[\p{L}\p{N}\p{M}]/u.test(String.fromCharCode(c)) ? 1 : 2;
  return kind === 1;
}

function addFeature(vector: Float32Array, hash: number, weight: number): void {
  // one bit of the hash chooses the sign, so unrelated features cancel out on average instead of piling up
  vector[(hash >>> 1) % vector.length]! += hash & 1 ? weight : -weight;
}

function embedOne(text: string, dimensions: number): Float32Array {
  const vector = new Float32Array(dimensions);
  const lower = text.toLowerCase();
  let h = FNV_OFFSET;
  let inWord = false;
  let previous = 0;
  let previousWeight = 0;
  for (let i = 0; i <= lower.length; i++) {
    const c = i < lower.length ? lower.charCodeAt(i) : 32;
    if (isWordChar(c)) {
      h = Math.imul(h ^ c, FNV_PRIME);
      inWord = true;
      continue;
    }
    if (!inWord) continue;
    const word = mix(h);
    const weight = STOP_WORDS.has(word) ? STOP_WEIGHT : WORD_WEIGHT;
    addFeature(vector, word, weight);
    if (previousWeight) addFeature(vector, mix(Math.imul(previous, 0x9e3779b1) ^ word), BIGRAM_WEIGHT * Math.min(weight, previousWeight));
    previous = word;
    previousWeight = weight;
    h = FNV_OFFSET;
    inWord = false;
  }
  let norm = 0;
  for (let i = 0; i < dimensions; i++) norm += vector[i]! * vector[i]!;
  if (norm === 0) return vector.fill(1 / Math.sqrt(dimensions)); // no words: one fixed unit vector
  const scale = 1 / Math.sqrt(norm);
  for (let i = 0; i < dimensions; i++) vector[i]! *= scale;
  return vector;
}

/** Deterministic, unit-length, word-overlap-sensitive vectors of `dimensions` floats, one per text. */
export function hashedEmbedding(texts: string[], dimensions: number): Float32Array[] {
  return texts.map((text) => embedOne(text, dimensions));
}
