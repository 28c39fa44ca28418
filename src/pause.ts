// A sleep that an AbortSignal cuts short: the polling loops (rebuild progress, gap --watch, the demo)
// wait with it, so Ctrl-C ends them at once.

/** Resolves after `ms`, or at once when `stop` fires. */
export function pause(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (stop.aborted) return resolve();
    const timer = setTimeout(done, ms);
    stop.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(timer);
      stop.removeEventListener('abort', done);
      resolve();
    }
  });
}
