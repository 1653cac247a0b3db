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

# rustfmt check and clippy with warnings as errors.
lint:
    ./dev lint

# Format the code.
fmt:
    ./dev fmt

# Benchmarks: `just bench browser` compares POST /v1/screenshot with a puppeteer-core
# baseline on the same Chromium (installs puppeteer-core into bench/ on first use).
bench target:
    if [ "{{target}}" = browser ] && [ ! -d bench/node_modules/puppeteer-core ]; then npm install --prefix bench --no-audit --no-fund; fi
    cargo bench --bench {{target}}
