// What every step of the demo is handed, and the little they share.
import type pg from 'pg';
import type { SearchContext } from '../search.ts';
import type { EmbeddingServer } from '../provider-server.ts';
import type { Corpus } from './corpus.ts';

export interface DemoContext {
  /** The schema owner's connection. */
  db: pg.Client;
  /** Searches as the application role. */
  app: SearchContext;
  server: EmbeddingServer;
  corpus: Corpus;
  short: boolean;
  /** True on the demo's own throwaway cluster, where the whole store may be truncated. */
  throwaway: boolean;
  stop: AbortSignal;
  say: (line?: string) => void;
}

/** The question every tenant asks (the tenants' parental leave policies differ). */
export const QUESTION = 'How many weeks of paid parental leave do I get?';

export function heading(ctx: DemoContext, text: string): void {
  ctx.say();
  ctx.say(text);
  ctx.say('='.repeat(text.length));
}

