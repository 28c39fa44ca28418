# The pgregen worker sidecar image:  docker build -t pgregen .
# Runs `pgregen worker`; configure it with environment variables (see README, "Worker configuration").
# Two stages: the first compiles src/ to dist/ (as `npm pack` does); the second holds only the
# production dependencies, bin/, dist/ and sql/ — the files of the npm package.

FROM node:24-slim AS build
WORKDIR /build
COPY package.json package-lock.json ./
# no install scripts: the `node` devDependency would download a second Node.js the build does not need
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json && rm dist/.tsbuildinfo

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

COPY bin ./bin
COPY sql ./sql
COPY --from=build /build/dist ./dist

USER node
EXPOSE 9464
# /healthz and /readyz on REGEN_PORT (9464); SIGTERM drains in-flight batches (REGEN_SHUTDOWN_TIMEOUT_MS)
STOPSIGNAL SIGTERM
# A 2 MB young generation (instead of V8's default of up to 16 MB per semi-space) keeps the worker's
# peak RSS under 200 MB with 1,536-dimension batches at no measured cost in throughput
# (bench/RESULTS.md, section C). The benchmark runs the worker with the same flag.
# node runs the bin itself (no npm or npx in between), so SIGTERM reaches the worker.
ENTRYPOINT ["node", "--max-semi-space-size=2", "bin/pgregen.js"]
CMD ["worker"]
