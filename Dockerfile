# mailwarden container image: Node.js 24 slim runtime, non-root, tini for signals,
# HEALTHCHECK on /healthz. Config and rules are mounted as volumes:
#   docker run -v /etc/mailwarden:/etc/mailwarden -p 25:2525 mailwarden serve -c /etc/mailwarden/mailwarden.yaml
FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM node:24-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY rules ./rules
RUN mkdir -p /var/lib/mailwarden/maildir /var/spool/mailwarden && chown -R node:node /var/lib/mailwarden /var/spool/mailwarden
USER node
ENV NODE_ENV=production
VOLUME ["/etc/mailwarden", "/var/lib/mailwarden"]
# Unprivileged ports; map 25/587/465 to them with the container runtime.
EXPOSE 2525 2587 2465 9465
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD node -e "fetch('http://127.0.0.1:9465/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/bin/mailwarden.js"]
CMD ["serve"]
