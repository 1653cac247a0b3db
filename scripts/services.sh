#!/usr/bin/env bash
# Make sure every backing service the OperatorNext test suite needs is
# installed and running: PostgreSQL, Redis, Chromium and an S3-compatible
# server (s3s-fs), the Python library tests check webhook signatures with
# (standardwebhooks) and a loopback OpenID Connect provider for the sign-in
# tests (oidc-provider, scripts/oidc-provider). Idempotent: when everything
# is already up it only checks.
#
#   scripts/services.sh [all|postgres|redis|chromium|s3|python|oidc]...   (default: all)
#   eval "$(scripts/services.sh env)"    # print only the test env exports
#
# May also be sourced (`source scripts/services.sh all`): the checks then run
# in a child bash so `set -e`/`exit` cannot kill the caller, and the test env
# is exported into the caller afterwards. Pass the target explicitly when
# sourcing; a bare `source` would see the caller's own positional arguments.
#
# Overrides: TEST_DATABASE_URL / TEST_REDIS_URL /
# TEST_S3_ENDPOINT point at services someone else runs; we then only
# check them and never install or start anything for that service.
# TEST_S3_PORT (9100) and TEST_S3_DIR (/tmp/operator-s3)
# move the local s3s-fs; TEST_OIDC_PORT (9780) moves the OpenID provider.

SVC_DEFAULT_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
SVC_DEFAULT_REDIS_URL=redis://127.0.0.1:6379
SVC_S3_PORT=${TEST_S3_PORT:-9100}
SVC_S3_DIR=${TEST_S3_DIR:-/tmp/operator-s3}
SVC_S3_BUCKET=${TEST_S3_BUCKET:-operator-test}
SVC_S3_ACCESS_KEY=${TEST_S3_ACCESS_KEY:-operator-test}
SVC_S3_SECRET_KEY=${TEST_S3_SECRET_KEY:-operator-test-secret}
# Newer s3s-fs releases need a newer rustc than the 1.95 this project pins.
SVC_S3S_FS_VERSION=0.14.1
SVC_OIDC_PORT=${TEST_OIDC_PORT:-9780}
SVC_LOG_DIR=${TMPDIR:-/tmp}
SVC_APT_UPDATED=0

svc_say() { printf '%-9s %s\n' "$1:" "$2"; }
svc_die() { printf 'services.sh: %s: %s\n' "$1" "$2" >&2; exit 1; }
svc_is_root() { [[ $(id -u) -eq 0 ]]; }
# Never echo a password from an override URL into logs.
svc_redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }
svc_tail() { tail -n "${2:-15}" "$1" 2>/dev/null | sed 's/^/    /'; }

# Retry "$@" every 0.1 s for up to $1 seconds.
svc_wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Probe ports with bash's /dev/tcp so a fresh machine needs no curl/nc.
svc_tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# True if something answers HTTP on 127.0.0.1:$1 (any status code counts).
svc_http_answers() {
  local line
  line=$(
    exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'HEAD / HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 line <&3 && printf '%s' "$line"
  ) || return 1
  [[ $line == HTTP/* ]]
}

# True if GET http://127.0.0.1:$1$2 answers 2xx.
svc_http_ok() {
  local line
  line=$(
    exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
    IFS= read -r -t 2 line <&3 && printf '%s' "$line"
  ) || return 1
  [[ $line =~ ^HTTP/[0-9.]+\ 2[0-9][0-9] ]]
}

# TCP reachability of scheme://[user[:pass]@]host[:port]/..., for overrides
# whose client tool (psql, redis-cli, python3) is not installed.
svc_url_reachable() { # url default_port
  local re='^[a-z]+://([^@/]*@)?([^:/?]+)(:([0-9]+))?'
  [[ $1 =~ $re ]] && svc_tcp_open "${BASH_REMATCH[2]}" "${BASH_REMATCH[4]:-$2}"
}

# apt-get install for service $1; refuses (with the exact command) when not
# root, and runs `apt-get update` at most once per script run.
svc_apt_install() {
  local svc=$1; shift
  if ! svc_is_root; then
    svc_die "$svc" "not installed; as root run: apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $*"
  fi
  local log=$SVC_LOG_DIR/operator-services-apt.log
  if ((SVC_APT_UPDATED == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 ||
      { svc_tail "$log" >&2; svc_die "$svc" "apt-get update failed (log: $log)"; }
    SVC_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1 ||
    { svc_tail "$log" >&2; return 1; }
}

# ---------------------------------------------------------------- postgres

svc_pg_select1() { # $1 url; prints psql's error on failure
  local out
  out=$(PGCONNECT_TIMEOUT=5 psql "$1" -wqtAX -c 'select 1' 2>&1) && [[ $out == 1 ]] ||
    { printf '%s' "$out"; return 1; }
}

svc_postgres() {
  local url=${TEST_DATABASE_URL:-} err
  if [[ -n $url ]]; then
    # Someone else's database: reachability only, never install/start.
    if command -v psql >/dev/null; then
      err=$(svc_pg_select1 "$url") ||
        svc_die postgres "TEST_DATABASE_URL=$(svc_redact "$url") is not usable: $err"
      svc_say postgres "TEST_DATABASE_URL reachable (select 1 ok)"
    else
      svc_url_reachable "$url" 5432 ||
        svc_die postgres "TEST_DATABASE_URL=$(svc_redact "$url") is not reachable"
      svc_say postgres "TEST_DATABASE_URL port open (psql not installed, tcp check only)"
    fi
    return
  fi

  local state=running fresh=0 version
  if ! { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }; then
    # pg_isready alone may come from a client-only install; a server install
    # is what leaves a cluster config under /etc/postgresql.
    if ! command -v pg_isready >/dev/null || [[ -z $(ls /etc/postgresql 2>/dev/null) ]]; then
      svc_apt_install postgres postgresql || svc_die postgres "apt-get install postgresql failed"
      fresh=1 state=installed
    fi
    # The package's own service start is a no-op without systemd (or denied
    # by policy-rc.d in containers), so start the cluster directly.
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
      version=$(ls /etc/postgresql 2>/dev/null | head -1 || true)
      [[ -n $version ]] || svc_die postgres "no cluster under /etc/postgresql"
      svc_is_root || svc_die postgres "down; as root run: pg_ctlcluster --skip-systemctl-redirect $version main start"
      local log=$SVC_LOG_DIR/operator-services-postgres.log
      pg_ctlcluster --skip-systemctl-redirect "$version" main start >"$log" 2>&1 ||
        { svc_tail "$log" >&2; svc_die postgres "pg_ctlcluster $version main start failed"; }
      svc_wait_for 10 pg_isready -q -h 127.0.0.1 -p 5432 ||
        svc_die postgres "started cluster $version/main but 127.0.0.1:5432 is not accepting connections"
      [[ $state == installed ]] && state="installed, started" || state="was down, started"
    fi
  fi
  if ((fresh)); then
    # Debian's default pg_hba wants a password over TCP; give the test URL one.
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null ||
      svc_die postgres "could not set the postgres role's password"
  fi
  err=$(svc_pg_select1 "$SVC_DEFAULT_DATABASE_URL") ||
    svc_die postgres "$SVC_DEFAULT_DATABASE_URL is not usable: $err"
  svc_say postgres "$state on 127.0.0.1:5432 (select 1 ok)"
}

# ------------------------------------------------------------------- redis

svc_redis_ping() { [[ $(redis-cli "$@" ping 2>/dev/null) == PONG ]]; }

svc_redis() {
  local url=${TEST_REDIS_URL:-}
  if [[ -n $url ]]; then
    if command -v redis-cli >/dev/null; then
      svc_redis_ping -u "$url" || svc_die redis "TEST_REDIS_URL=$(svc_redact "$url") does not answer PING"
      svc_say redis "TEST_REDIS_URL reachable (PONG)"
    else
      svc_url_reachable "$url" 6379 ||
        svc_die redis "TEST_REDIS_URL=$(svc_redact "$url") is not reachable"
      svc_say redis "TEST_REDIS_URL port open (redis-cli not installed, tcp check only)"
    fi
    return
  fi

  local ping=(-h 127.0.0.1 -p 6379) state=running
  if command -v redis-cli >/dev/null && svc_redis_ping "${ping[@]}"; then
    svc_say redis "$state on 127.0.0.1:6379 (PONG)"
    return
  fi
  if ! command -v redis-server >/dev/null; then
    svc_apt_install redis redis-server || svc_die redis "apt-get install redis-server failed"
    state=installed
  fi
  # With systemd the package starts it itself; without, we must.
  if ! svc_redis_ping "${ping[@]}"; then
    local dir=/var/lib/redis logdir=/var/log/redis
    if ! svc_is_root; then # system dirs belong to root/redis
      dir=$SVC_LOG_DIR/operator-redis logdir=$SVC_LOG_DIR/operator-redis
    fi
    mkdir -p "$dir" "$logdir"
    # No persistence: test data is disposable and snapshots only cost time.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir "$dir" --logfile "$logdir/ci.log" ||
      svc_die redis "redis-server failed to start (log: $logdir/ci.log)"
    # --daemonize returns before the child has bound the port.
    svc_wait_for 5 svc_redis_ping "${ping[@]}" ||
      { svc_tail "$logdir/ci.log" >&2; svc_die redis "started redis-server but 127.0.0.1:6379 does not answer PING"; }
    [[ $state == installed ]] && state="installed, started" || state="was down, started"
  fi
  svc_say redis "$state on 127.0.0.1:6379 (PONG)"
}

# ---------------------------------------------------------------- chromium

svc_chrome_path() { # CHROME_PATH wins when it points at something runnable
  if [[ -n ${CHROME_PATH:-} && -x $CHROME_PATH ]]; then
    printf '%s\n' "$CHROME_PATH"
  else
    command -v chromium || echo /usr/bin/chromium
  fi
}

svc_chromium() {
  local chrome="" state=found version
  if [[ -n ${CHROME_PATH:-} ]]; then
    if [[ -x $CHROME_PATH ]]; then
      chrome=$CHROME_PATH state="CHROME_PATH"
    else
      printf 'services.sh: chromium: CHROME_PATH=%s is not executable; ignoring it\n' "$CHROME_PATH" >&2
    fi
  fi
  if [[ -z $chrome ]]; then
    if ! command -v chromium >/dev/null; then
      # fonts-liberation is only nice to have (sane metrics for screenshots).
      svc_apt_install chromium chromium fonts-liberation ||
        svc_apt_install chromium chromium || svc_die chromium "apt-get install chromium failed"
      state=installed
    fi
    chrome=$(command -v chromium) || svc_die chromium "chromium not on PATH after install"
  fi
  # Debian's launcher prints shell noise from /etc/chromium.d on stderr.
  version=$("$chrome" --version 2>/dev/null) && [[ -n $version ]] ||
    svc_die chromium "'$chrome --version' failed: $("$chrome" --version 2>&1 | tail -n 3)"
  svc_say chromium "$state $chrome ($version)"
}

# ---------------------------------------------------------------------- s3

# Signed PutObject/GetObject/DeleteObject round trip plus a request signed
# with a wrong secret, which must be refused. Stdlib-only SigV4 so a fresh
# machine needs no boto3.
svc_s3_verify() { # endpoint bucket access_key secret_key
  python3 - "$@" <<'PY'
import datetime, hashlib, hmac, sys, urllib.error, urllib.parse, urllib.request

endpoint, bucket, access_key, secret_key = sys.argv[1:5]
region, key = "us-east-1", "healthcheck"
base = urllib.parse.urlsplit(endpoint)
path = f"{base.path.rstrip('/')}/{bucket}/{key}"
# Ignore http_proxy & co: they must never see requests to a local server.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def call(method, secret, body=b""):
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day, payload_hash = amz_date[:8], hashlib.sha256(body).hexdigest()
    headers = {"host": base.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{h}:{headers[h]}" for h in sorted(headers)),
                           "", signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={sig}")
    req = urllib.request.Request(f"{base.scheme}://{base.netloc}{path}", method=method,
                                 data=body if method == "PUT" else None, headers=headers)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

body = f"operator-next healthcheck {datetime.datetime.now().isoformat()}".encode()
status, out = call("PUT", secret_key, body)
if status != 200:
    sys.exit(f"signed PUT {path} -> {status}: {out[:300]!r}")
status, out = call("GET", secret_key)
if status != 200 or out != body:
    sys.exit(f"signed GET {path} -> {status}, body {'matches' if out == body else 'differs'}")
bad, _ = call("GET", secret_key + "-wrong")
# Leave the bucket empty: tests may list it.
call("DELETE", secret_key)
if bad != 403:
    sys.exit(f"GET signed with a wrong secret -> {bad}, expected 403 (auth not enforced?)")
print("signed PUT/GET ok, wrong secret -> 403")
PY
}

# Done waiting once it answers, or once it has died (no point waiting 10 s).
svc_s3_up() { svc_http_answers "$1" || ! kill -0 "$2" 2>/dev/null; }

svc_s3_install() {
  command -v cargo >/dev/null ||
    svc_die s3 "s3s-fs is not installed and cargo is missing; install Rust (rustup) first"
  # rustc needs a C toolchain to link; a bare Rust install may lack one.
  if ! command -v cc >/dev/null; then
    svc_apt_install s3 gcc libc6-dev || svc_die s3 "apt-get install gcc libc6-dev failed"
  fi
  local log=$SVC_LOG_DIR/operator-s3s-fs-install.log
  svc_say s3 "s3s-fs not installed; cargo install s3s-fs $SVC_S3S_FS_VERSION (several minutes; log: $log)"
  # From / so the project's toolchain file/.cargo config don't apply, and
  # without CARGO_TARGET_DIR so we never wait on the project's build lock.
  (cd / && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    cargo install s3s-fs --version "$SVC_S3S_FS_VERSION" --features binary --locked) >"$log" 2>&1 ||
    { svc_tail "$log" 20 >&2; svc_die s3 "cargo install s3s-fs $SVC_S3S_FS_VERSION failed (log: $log)"; }
  command -v s3s-fs >/dev/null || svc_die s3 "cargo install succeeded but s3s-fs is not on PATH"
}

svc_s3() {
  local endpoint=${TEST_S3_ENDPOINT:-} result
  if [[ -n $endpoint ]]; then
    # Someone else's S3: verify only, never install/start.
    if ! command -v python3 >/dev/null; then
      svc_url_reachable "$endpoint" 80 ||
        svc_die s3 "TEST_S3_ENDPOINT=$endpoint is not reachable"
      svc_say s3 "TEST_S3_ENDPOINT port open (no python3: signed requests not verified)"
      return
    fi
    result=$(svc_s3_verify "$endpoint" "$SVC_S3_BUCKET" "$SVC_S3_ACCESS_KEY" "$SVC_S3_SECRET_KEY" 2>&1) ||
      svc_die s3 "TEST_S3_ENDPOINT=$endpoint: $(tail -n 1 <<<"$result")"
    svc_say s3 "TEST_S3_ENDPOINT $endpoint: $result"
    return
  fi

  local port=$SVC_S3_PORT dir=$SVC_S3_DIR state=running pid=""
  # s3s-fs serves one bucket per top-level directory of its root.
  mkdir -p "$dir/$SVC_S3_BUCKET"
  dir=$(cd "$dir" && pwd) # absolute: the server runs from /
  if ! svc_http_answers "$port"; then
    command -v s3s-fs >/dev/null || { svc_s3_install; state=installed; }
    # setsid+nohup: the server must outlive this script and its terminal. It runs
    # from / because s3s-fs resolves every object path against its working directory:
    # started from a checkout that is later deleted, it answers 500 to everything.
    (cd / && exec setsid nohup s3s-fs --host 127.0.0.1 --port "$port" \
      --access-key "$SVC_S3_ACCESS_KEY" --secret-key "$SVC_S3_SECRET_KEY" "$dir" \
      >"$dir.log" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$dir.pid"
    svc_wait_for 10 svc_s3_up "$port" "$pid"
    if ! svc_http_answers "$port"; then
      svc_tail "$dir.log" >&2
      kill -0 "$pid" 2>/dev/null &&
        svc_die s3 "s3s-fs (pid $pid) did not answer HTTP on 127.0.0.1:$port within 10 s (log: $dir.log)"
      svc_die s3 "s3s-fs exited right after start (log: $dir.log)"
    fi
    [[ $state == installed ]] && state="installed, started" || state="was down, started"
  fi
  [[ -n $pid ]] || pid=$(cat "$dir.pid" 2>/dev/null || echo "?")
  if command -v python3 >/dev/null; then
    result=$(svc_s3_verify "http://127.0.0.1:$port" "$SVC_S3_BUCKET" "$SVC_S3_ACCESS_KEY" "$SVC_S3_SECRET_KEY" 2>&1) ||
      svc_die s3 "server on 127.0.0.1:$port (pid file: $dir.pid) failed verification: $(tail -n 1 <<<"$result") (a stale server with other credentials? kill it and re-run)"
  else
    result="python3 missing: signed requests not verified"
  fi
  svc_say s3 "s3s-fs $state on 127.0.0.1:$port (pid $pid, bucket $SVC_S3_BUCKET); $result"
}

# ------------------------------------------------------------------ python

# The Standard Webhooks reference library, which a test verifies our
# signatures with, in a directory of its own (TEST_PYTHONPATH): no virtualenv
# package needed, and nothing installed into a system Python.
SVC_PY_DIR=${TEST_PYTHON_DIR:-${TMPDIR:-/tmp}/operator-python}
SVC_STANDARDWEBHOOKS=standardwebhooks==1.3.0

svc_python_ready() { PYTHONPATH=$SVC_PY_DIR python3 -c 'import standardwebhooks' 2>/dev/null; }

svc_python() {
  local state=present
  if ! command -v python3 >/dev/null; then
    svc_apt_install python python3 python3-pip || svc_die python "apt-get install python3 python3-pip failed"
  fi
  if ! svc_python_ready; then
    local log=$SVC_LOG_DIR/operator-python-pip.log
    python3 -m pip install --quiet --disable-pip-version-check --target "$SVC_PY_DIR" \
      "$SVC_STANDARDWEBHOOKS" >"$log" 2>&1 ||
      { svc_tail "$log" >&2; svc_die python "pip install $SVC_STANDARDWEBHOOKS failed (log: $log)"; }
    svc_python_ready || svc_die python "standardwebhooks installed in $SVC_PY_DIR but does not import"
    state=installed
  fi
  svc_say python "$SVC_STANDARDWEBHOOKS $state in $SVC_PY_DIR"
}

# -------------------------------------------------------------------- oidc

svc_oidc_discovery() { svc_http_ok "$1" /.well-known/openid-configuration; }

# Done waiting once discovery answers, or once the server has died.
svc_oidc_up() { svc_oidc_discovery "$1" || ! kill -0 "$2" 2>/dev/null; }

svc_oidc() {
  local port=$SVC_OIDC_PORT state=running pid="" dir
  local log=$SVC_LOG_DIR/operator-oidc.log pidfile=$SVC_LOG_DIR/operator-oidc.pid
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/oidc-provider" && pwd) ||
    svc_die oidc "scripts/oidc-provider is missing"
  if ! svc_oidc_discovery "$port"; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      svc_apt_install oidc nodejs npm || svc_die oidc "apt-get install nodejs npm failed"
      state=installed
    fi
    # Feature test rather than a version number: these are what oidc-provider 9
    # needs that Debian bookworm's Node.js 18 lacks.
    node -e 'process.exit(URL.parse && require("node:crypto").hash ? 0 : 1)' ||
      svc_die oidc "$(node --version) is too old for oidc-provider 9; install Node.js 20.18 or newer"
    # npm writes node_modules/.package-lock.json on every install, so it dates
    # the tree that is there.
    if [[ ! -e $dir/node_modules/.package-lock.json ||
      $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
      local npm_log=$SVC_LOG_DIR/operator-oidc-npm.log
      (cd "$dir" && npm ci --no-audit --no-fund) >"$npm_log" 2>&1 ||
        { svc_tail "$npm_log" >&2; svc_die oidc "npm ci in $dir failed (log: $npm_log)"; }
    fi
    # setsid+nohup: the server must outlive this script and its terminal.
    (cd "$dir" && OIDC_PORT=$port exec setsid nohup node provider.mjs \
      >"$log" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$pidfile"
    svc_wait_for 10 svc_oidc_up "$port" "$pid"
    if ! svc_oidc_discovery "$port"; then
      svc_tail "$log" >&2
      kill -0 "$pid" 2>/dev/null &&
        svc_die oidc "node provider.mjs (pid $pid) did not serve discovery on 127.0.0.1:$port within 10 s (log: $log)"
      svc_die oidc "node provider.mjs exited right after start (log: $log)"
    fi
    [[ $state == installed ]] && state="installed, started" || state="was down, started"
  fi
  [[ -n $pid ]] || pid=$(cat "$pidfile" 2>/dev/null || echo "?")
  svc_say oidc "oidc-provider $state on http://127.0.0.1:$port (pid $pid, log: $log)"
}

# --------------------------------------------------------------------- env

svc_env() {
  local name value
  for name in TEST_DATABASE_URL TEST_REDIS_URL TEST_S3_ENDPOINT \
    TEST_S3_BUCKET TEST_S3_ACCESS_KEY TEST_S3_SECRET_KEY CHROME_PATH TEST_PYTHONPATH \
    TEST_OIDC_ISSUER; do
    case $name in
      TEST_DATABASE_URL) value=${TEST_DATABASE_URL:-$SVC_DEFAULT_DATABASE_URL} ;;
      TEST_REDIS_URL) value=${TEST_REDIS_URL:-$SVC_DEFAULT_REDIS_URL} ;;
      TEST_S3_ENDPOINT) value=${TEST_S3_ENDPOINT:-http://127.0.0.1:$SVC_S3_PORT} ;;
      TEST_S3_BUCKET) value=$SVC_S3_BUCKET ;;
      TEST_S3_ACCESS_KEY) value=$SVC_S3_ACCESS_KEY ;;
      TEST_S3_SECRET_KEY) value=$SVC_S3_SECRET_KEY ;;
      CHROME_PATH) value=$(svc_chrome_path) ;;
      TEST_PYTHONPATH) value=$SVC_PY_DIR ;;
      TEST_OIDC_ISSUER) value=http://127.0.0.1:$SVC_OIDC_PORT ;;
    esac
    printf 'export %s=%q\n' "$name" "$value"
  done
}

svc_main() {
  # cargo install puts binaries here, and a fresh login may not have it on PATH.
  local cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
  [[ :$PATH: == *":$cargo_bin:"* ]] || PATH=$cargo_bin:$PATH

  (($# > 0)) || set -- all
  local target
  for target in "$@"; do
    case $target in
      all) svc_postgres; svc_redis; svc_chromium; svc_s3; svc_python; svc_oidc ;;
      postgres | redis | chromium | s3 | python | oidc) "svc_$target" ;;
      env) svc_env ;;
      *) printf 'usage: %s [all|postgres|redis|chromium|s3|python|oidc|env]...\n' "${0##*/}" >&2; exit 2 ;;
    esac
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  svc_main "$@"
else
  # Sourced: run the checks as a child process so neither `set -e` nor `exit`
  # leaks into the caller (a subshell in `|| return` would also silently
  # disable set -e), then export the test env into the caller.
  if [[ $* != env ]]; then bash "${BASH_SOURCE[0]}" "$@" || return; fi
  eval "$(svc_env)"
fi
