# syntax=docker/dockerfile:1
#
# The dropship image: the GitHub Action (action.yml pulls it prebuilt from ghcr.io) and
# a way to run the CLI anywhere Docker runs.
#
#   docker build -t dropship .
#   docker buildx build --target binary --output type=local,dest=dist .   # just the binary
#
# The binaries are static: the client (musl) and the agents it uploads to servers,
# `dropship-agent-x86_64` (musl) and `dropship-agent-aarch64` (glibc, crt-static),
# which must run on any Linux of their CPU, whatever its libc. The client picks the
# one for the server's `uname -m` from beside itself (README "### ARM servers").

# ---- builder: static x86_64 binaries and the aarch64 agent ---------------------------
FROM rust:1.95-bookworm AS builder

# musl-gcc for the C parts (libssh2 and the vendored OpenSSL, zstd, ring); the aarch64
# cross gcc and glibc for the aarch64 agent. perl and make, which OpenSSL's build needs,
# are in the rust image already.
# Debian package versions are not pinned (DL3008): bookworm's point releases replace
# them, and a pin would break the build on the next one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-gnu

ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

WORKDIR /src
COPY . .

# The cache mounts keep the crates.io downloads and the compiled dependencies between
# local builds; the binaries are copied out of the cached target directory. The aarch64
# agent is built alone (`cargo rustc --bin`): `crt-static` for it only, and without the
# `aws` feature (the agent never calls AWS; the SDK is most of the build).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cargo rustc --release --locked --target aarch64-unknown-linux-gnu --bin dropship-agent \
       --no-default-features -- -C target-feature=+crt-static \
    && cp target/x86_64-unknown-linux-musl/release/dropship /usr/local/bin/dropship \
    && cp target/x86_64-unknown-linux-musl/release/dropship-agent /usr/local/bin/dropship-agent-x86_64 \
    && cp target/aarch64-unknown-linux-gnu/release/dropship-agent /usr/local/bin/dropship-agent-aarch64 \
    && /usr/local/bin/dropship --version \
    && /usr/local/bin/dropship-agent-x86_64 --version

# ---- binary: only the files, for `--output type=local` (the release attaches them) ----
FROM scratch AS binary
COPY --from=builder /usr/local/bin/dropship /usr/local/bin/dropship-agent-x86_64 /usr/local/bin/dropship-agent-aarch64 /

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

COPY --from=builder /usr/local/bin/dropship /usr/local/bin/dropship-agent-x86_64 /usr/local/bin/dropship-agent-aarch64 /usr/local/bin/

# Runs as root and sets no WORKDIR, as GitHub's Dockerfile rules for actions require:
# the runner mounts the workspace at /github/workspace and makes it the working
# directory; a USER would lose access to it.
ENTRYPOINT ["/usr/local/bin/dropship"]
