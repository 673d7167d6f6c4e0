# syntax=docker/dockerfile:1
#
# The dropship image: the GitHub Action (action.yml pulls it prebuilt from ghcr.io) and
# a way to run the CLI anywhere Docker runs.
#
#   docker build -t dropship .
#   docker buildx build --target binary --output type=local,dest=dist .   # just the binary
#
# The binary is static (musl): the client uploads this same file to the servers as the
# agent, so it must run on any x86_64 Linux, whatever its libc.

# ---- builder: a static x86_64 binary ------------------------------------------------
FROM rust:1.95-bookworm AS builder

# musl-gcc for the C parts (libssh2 and the vendored OpenSSL, zstd, ring); perl and make,
# which OpenSSL's build needs, are in the rust image already.
# Debian package versions are not pinned (DL3008): bookworm's point releases replace
# them, and a pin would break the build on the next one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# The cache mounts keep the crates.io downloads and the compiled dependencies between
# local builds; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/dropship /usr/local/bin/dropship \
    && /usr/local/bin/dropship --version

# ---- binary: only the file, for `--output type=local` (the release attaches it) -------
FROM scratch AS binary
COPY --from=builder /usr/local/bin/dropship /dropship

# ---- runtime: what the Action runs ---------------------------------------------------
# Node.js (LTS, with corepack for pnpm and yarn) runs the user's `build` input, e.g.
# `npm run build` -> `next build`. Match the runner's `actions/setup-node` version to this
# major when `npm ci` runs on the runner.
FROM node:24-bookworm-slim AS runtime

# git: the release id falls back to `git rev-parse HEAD`, and builds often call git.
# safe.directory: GitHub mounts the workspace (owned by the runner's user) into this
# container, which runs as root; git refuses such a repository without it.
# ca-certificates: HTTPS from the user's build (npm, fetches in `next build`).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && corepack enable \
    && git config --system --add safe.directory '*'

ENV COREPACK_ENABLE_DOWNLOAD_PROMPT=0 \
    NEXT_TELEMETRY_DISABLED=1

COPY --from=builder /usr/local/bin/dropship /usr/local/bin/dropship

# Runs as root and sets no WORKDIR, as GitHub's Dockerfile rules for actions require:
# the runner mounts the workspace at /github/workspace and makes it the working
# directory; a USER would lose access to it.
ENTRYPOINT ["/usr/local/bin/dropship"]
