// /healthz (the process runs), /readyz (connected and taking work) and /metrics for the sidecar.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { PgregenError } from '../errors.ts';

export interface HealthServer {
  port: number;
  close(): Promise<void>;
}

export async function startHealthServer(port: number, registry: Registry, ready: () => Promise<boolean>): Promise<HealthServer> {
  const server = http.createServer(async (req, res) => {
    try {
      if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      } else if (req.url === '/readyz') {
        const ok = await ready();
        res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ok ? 'ready' : 'not ready' }));
      } else if (req.url === '/metrics') {
        res.writeHead(200, { 'content-type': registry.contentType }).end(await registry.metrics());
      } else {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found: try /healthz, /readyz or /metrics"}');
      }
    } catch (err) {
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (err as Error).message }));
    }
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, resolve)).catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'EADDRINUSE'
      ? new PgregenError(`cannot serve /healthz, /readyz and /metrics: port ${port} (REGEN_PORT) is already in use`,
        'stop the process that holds it (another worker?), or set REGEN_PORT to a free port (0 picks one)')
      : new PgregenError(`cannot serve /healthz, /readyz and /metrics on port ${port} (REGEN_PORT): ${err.message}`,
        'set REGEN_PORT to a port this process may listen on (0 picks a free one)');
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
