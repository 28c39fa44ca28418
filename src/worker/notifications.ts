// What wakes the worker before its next poll: SQL notifies channel regen_versions when a version is
// created and regen_work when jobs are enqueued (sql/0025_notify.sql). One session connection
// LISTENs; after a drop it reconnects, with a growing pause. A notification only wakes the worker,
// which then reads what there is to do from the tables as it would at its poll, so a notification
// missed while reconnecting (or through a pooler in transaction mode, where LISTEN cannot work)
// costs the polling delay and nothing else.
import pg from 'pg';

/** Sleeps of the fetch loops that a notification cuts short. */
export class Wakeup {
  readonly #sleepers = new Set<() => void>();

  /** Resolves after `ms`, on wake(), or when `signal` aborts, whichever comes first. */
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      const sleepers = this.#sleepers;
      function done() {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        sleepers.delete(done);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
      sleepers.add(done);
    });
  }

  /** Ends every sleep. */
  wake(): void {
    for (const done of [...this.#sleepers]) done();
  }

  /** Ends one sleep, the longest-running (no-op when nobody sleeps). */
  wakeOne(): void {
    const [first] = this.#sleepers;
    first?.();
  }
}

export interface ListenOptions {
  connectionString: string;
  /** Channel name → what to do on a notification. */
  channels: Record<string, () => void>;
  /** Called once each time the connection is (re)established, after LISTEN: catch up on what was missed. */
  onListening?(): void;
  onError(err: Error, what: string): void;
}

export interface Listener {
  close(): Promise<void>;
}

/** Keeps one LISTEN connection open until close(). */
export function listen(o: ListenOptions): Listener {
  let closed = false;
  let client: pg.Client | undefined;    // listening
  let attempt: pg.Client | undefined;   // the latest connection made: events of older ones are ignored
  let retry: NodeJS.Timeout | undefined;
  let failures = 0;
  const connect = async () => {
    if (closed) return;
    const c = new pg.Client({ connectionString: o.connectionString, application_name: 'pgregen worker (listen)' });
    attempt = c;
    c.on('notification', (n) => o.channels[n.channel]?.());
    c.on('error', (err) => { o.onError(err, 'the notification connection failed; reconnecting'); lost(c); });
    c.on('end', () => lost(c));
    try {
      await c.connect();
      for (const channel of Object.keys(o.channels)) await c.query(`listen ${pg.escapeIdentifier(channel)}`);
      if (closed) { await c.end(); return; }
      client = c;
      failures = 0;
      o.onListening?.();
    } catch (err) {
      o.onError(err as Error, 'listening for notifications failed; the worker polls meanwhile');
      lost(c);
    }
  };
  const lost = (c: pg.Client) => {
    if (c !== attempt) return;
    attempt = undefined;
    if (client === c) client = undefined;
    c.removeAllListeners('end');
    c.end().catch(() => {});
    if (closed) return;
    failures++;
    retry = setTimeout(() => { retry = undefined; void connect(); }, Math.min(30_000, 500 * 2 ** Math.min(failures, 6)));
    retry.unref();
  };
  void connect();
  return {
    async close() {
      closed = true;
      clearTimeout(retry);
      const c = client;
      client = undefined;
      if (c) { c.removeAllListeners('end'); await c.end().catch(() => {}); }
    },
  };
}
