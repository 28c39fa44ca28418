// A rebuild's progress as one plain line, as `pgregen rebuild` (off a terminal) and the demo print it.
import type { Progress } from '../rebuild.ts';

/** 12,345 */
export const count = (n: number) => n.toLocaleString('en-US');

/** 42s, 3m07s, 2h05m; '-' when unknown. */
export function duration(s: number | null): string {
  if (s === null) return '-';
  const t = Math.ceil(s);
  const pad = (n: number) => String(n).padStart(2, '0');
  return t < 60 ? `${t}s` : t < 3600 ? `${Math.floor(t / 60)}m${pad(t % 60)}s` : `${Math.floor(t / 3600)}h${pad(Math.floor(t % 3600 / 60))}m`;
}

/** rebuild: 120/300 items (40.0%), 55.2 items/s, eta 3s, failed 0 */
export function progressLine(p: Progress): string {
  const percent = p.total === 0 ? 100 : 100 * p.done / p.total;
  return `rebuild: ${count(p.done)}/${count(p.total)} items (${percent.toFixed(1)}%), ${p.rate.toFixed(1)} items/s, ` +
    `eta ${duration(p.etaSeconds)}, failed ${count(p.failed)}${p.note ? `: ${p.note}` : ''}`;
}
