# The pgregen worker sidecar image:  docker build -t pgregen .
# Runs `pgregen worker`; configure it with environment variables (see README, "Worker configuration").
FROM node:24-slim

ENV NODE_ENV=production
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

COPY bin ./bin
COPY src ./src
COPY sql ./sql

USER node
EXPOSE 9464
# /healthz and /readyz on REGEN_PORT (9464); SIGTERM drains in-flight batches (REGEN_SHUTDOWN_TIMEOUT_MS)
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/pgregen.js"]
CMD ["worker"]
