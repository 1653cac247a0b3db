# Everyday verbs; each delegates to ./dev, which also works without `just`.

# Build and run `operator serve` on the embedded defaults.
run *args:
    ./dev serve {{args}}

# Start or install the test services, then run every test.
test *args:
    ./dev test {{args}}

# Start or install PostgreSQL, Redis, Chromium and the S3 server.
services:
    ./dev services

# Run a benchmark in release mode: `just bench queue [--quick]`, `just bench browser`, `just bench agent`.
bench *args:
    ./dev bench {{args}}

# Agent tasks against a real small model (llama.cpp's server, built from source; not in CI).
agent-smoke:
    scripts/agent-smoke.sh

# rustfmt check and clippy with warnings as errors.
lint:
    ./dev lint

# Format the code.
fmt:
    ./dev fmt
