#!/usr/bin/env bash
# Smoke test of the loopback OpenID provider, the way a sign-in test uses it:
# start it through services.sh (twice: the second run must only check), sign
# in with code + PKCE through curl and a cookie jar, check and verify the
# id_token against the JWKS, then each /test/next-id-token spoiling and a key
# rotation. Needs curl and node; leaves the provider running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
services=$here/../services.sh
bash "$services" oidc
bash "$services" oidc
eval "$(bash "$services" env)"
issuer=$TEST_OIDC_ISSUER
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
# Nothing listens there: the flow stops at the redirect to it.
redirect_uri="http://127.0.0.1:$((20000 + RANDOM % 30000))/v1/auth/oidc/local/callback"
failures=0

die() { printf 'smoke: %s\n' "$*" >&2; exit 1; }
js() { (cd "$here" && node --input-type=module -e "$1" -- "${@:2}"); } # jose resolves from here

expect() { # label actual expected-substring
  if [[ $2 == *"$3"* ]]; then
    printf '  ok    %s: %s\n' "$1" "$2"
  else
    printf '  FAIL  %s: %s (expected %s)\n' "$1" "$2" "$3"
    failures=$((failures + 1))
  fi
}

# sign_in EMAIL [CLIENT SECRET]: the whole code flow; sets tokens (the token
# endpoint's JSON) and nonce.
sign_in() {
  local email=$1 client=${2:-operator} secret=${3:-operator-secret}
  local verifier challenge state location code got_state iss hops=0
  read -r verifier challenge state nonce < <(js '
    import { createHash, randomBytes } from "node:crypto";
    const verifier = randomBytes(32).toString("base64url");
    console.log(verifier, createHash("sha256").update(verifier).digest("base64url"),
      randomBytes(8).toString("hex"), randomBytes(8).toString("hex"));')
  printf 'sign in as %s (client %s), redirect_uri %s\n' "$email" "$client" "$redirect_uri"
  location=$(curl -sS -G -o /dev/null -b "$jar" -c "$jar" -w '%{redirect_url}' "$issuer/auth" \
    --data-urlencode "client_id=$client" --data-urlencode response_type=code \
    --data-urlencode "scope=openid email profile" --data-urlencode "redirect_uri=$redirect_uri" \
    --data-urlencode "state=$state" --data-urlencode "nonce=$nonce" \
    --data-urlencode "code_challenge=$challenge" --data-urlencode code_challenge_method=S256 \
    --data-urlencode "login_hint=$email")
  while [[ $location != "$redirect_uri"* ]]; do
    [[ -n $location ]] || die "the provider stopped redirecting before $redirect_uri"
    ((++hops <= 5)) || die "more than 5 redirects"
    printf '  -> %s\n' "${location#"$issuer"}"
    location=$(curl -sS -o /dev/null -b "$jar" -c "$jar" -w '%{redirect_url}' "$location")
  done
  printf '  -> %s\n' "$location"
  read -r code got_state iss < <(js '
    const q = new URL(process.argv[1]).searchParams;
    console.log(q.get("code"), q.get("state"), q.get("iss"));' "$location")
  [[ $got_state == "$state" && $iss == "$issuer" ]] || die "state/iss in $location"
  tokens=$(curl -sS "$issuer/token" -d grant_type=authorization_code --data-urlencode "code=$code" \
    --data-urlencode "redirect_uri=$redirect_uri" --data-urlencode "code_verifier=$verifier" \
    -d "client_id=$client" -d "client_secret=$secret")
}

field() { js 'console.log(JSON.parse(process.argv[1])[process.argv[2]] ?? "")' "$1" "$2"; }

# verify ID_TOKEN NONCE EMAIL: what a relying party checks (signature against
# the JWKS, iss, aud=operator, exp, nonce, email). Prints the claims and a
# verdict: "valid" or the jose error code.
verify() {
  js '
    import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from "jose";
    const [token, issuer, nonce, email] = process.argv.slice(1);
    const { alg, kid } = decodeProtectedHeader(token);
    const c = decodeJwt(token);
    const now = Math.floor(Date.now() / 1000);
    console.log(`    header alg=${alg} kid=${kid}; iss=${c.iss} aud=${c.aud} exp=now${c.exp - now >= 0 ? "+" : ""}${c.exp - now}`
      + ` nonce=${c.nonce} sub=${c.sub.slice(0, 12)}... email=${c.email} email_verified=${c.email_verified} name=${c.name}`);
    let verdict = "valid";
    try {
      const jwks = createRemoteJWKSet(new URL(`${issuer}/jwks`));
      const { payload } = await jwtVerify(token, jwks, { issuer, audience: "operator", algorithms: ["RS256", "EdDSA"] });
      if (payload.nonce !== nonce) verdict = "nonce mismatch";
      else if (payload.email !== email) verdict = "email mismatch";
    } catch (e) {
      verdict = `${e.code}: ${e.message}`;
    }
    console.log(verdict);' "$1" "$issuer" "$2" "$3"
}

verdict() { # verify, with the claims on stderr and only the verdict on stdout
  local out
  out=$(verify "$@")
  printf '%s\n' "${out%$'\n'*}" >&2
  printf '%s\n' "${out##*$'\n'}"
}

kids() { curl -sS "$issuer/jwks" | js 'let s = ""; for await (const c of process.stdin) s += c;
  console.log(JSON.parse(s).keys.map((k) => `${k.kid.slice(0, 8)}(${k.alg})`).join(" "));'; }

echo "== discovery"
discovery=$(curl -sS "$issuer/.well-known/openid-configuration")
expect "issuer" "$(field "$discovery" issuer)" "$issuer"
expect "code_challenge_methods_supported" "$(field "$discovery" code_challenge_methods_supported)" "S256"
expect "GET /test/health" "$(curl -sS -o /dev/null -w '%{http_code}' "$issuer/test/health")" 200

echo "== code flow without PKCE is refused"
location=$(curl -sS -G -o /dev/null -w '%{redirect_url}' "$issuer/auth" -d client_id=operator \
  -d response_type=code -d scope=openid --data-urlencode "redirect_uri=$redirect_uri" -d state=s \
  -d login_hint=alice@acme.test)
expect "redirect" "$location" "error=invalid_request"

echo "== code flow + PKCE"
sign_in alice@acme.test
expect "token_type" "$(field "$tokens" token_type)" Bearer
[[ -n $(field "$tokens" refresh_token) ]] && refresh=present || refresh=missing
expect "refresh_token" "$refresh" present
expect "verdict" "$(verdict "$(field "$tokens" id_token)" "$nonce" alice@acme.test)" valid
refreshed=$(curl -sS "$issuer/token" -d grant_type=refresh_token \
  --data-urlencode "refresh_token=$(field "$tokens" refresh_token)" -d client_id=operator -d client_secret=operator-secret)
expect "refresh grant gives an id_token" "$(verdict "$(field "$refreshed" id_token)" "$nonce" alice@acme.test)" valid

echo "== same cookie jar, another login_hint: another account"
sign_in unverified-bob@acme.test
expect "verdict" "$(verdict "$(field "$tokens" id_token)" "$nonce" unverified-bob@acme.test)" valid
expect "email_verified" "$(js 'import { decodeJwt } from "jose"; console.log(decodeJwt(process.argv[1]).email_verified)' "$(field "$tokens" id_token)")" false

echo "== /test/next-id-token spoils the next id_token, once"
spoil_case() { # body expected-verdict
  printf 'spoil %s\n' "$1"
  expect "POST /test/next-id-token" "$(curl -sS -o /dev/null -w '%{http_code}' "$issuer/test/next-id-token" \
    -H 'content-type: application/json' -d "$1")" 204
  sign_in alice@acme.test >/dev/null
  expect "verdict" "$(verdict "$(field "$tokens" id_token)" "$nonce" alice@acme.test)" "$2"
}
spoil_case '{"aud": "other"}' 'ERR_JWT_CLAIM_VALIDATION_FAILED: unexpected "aud"'
spoil_case '{"exp_offset_seconds": -600}' 'ERR_JWT_EXPIRED'
spoil_case '{"iss": "http://evil.test"}' 'ERR_JWT_CLAIM_VALIDATION_FAILED: unexpected "iss"'
spoil_case '{"nonce": "wrong"}' 'nonce mismatch'
spoil_case '{"tamper": true}' 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'
spoil_case '{"sign_with": "retired"}' 'ERR_JWKS_NO_MATCHING_KEY'
spoil_case '{"alg": "none"}' 'ERR_JOSE_ALG_NOT_ALLOWED'
echo "next sign-in is clean again"
sign_in alice@acme.test >/dev/null
expect "verdict" "$(verdict "$(field "$tokens" id_token)" "$nonce" alice@acme.test)" valid
expect "unknown spoiler" "$(curl -sS -w ' %{http_code}' "$issuer/test/next-id-token" -d '{"exp": 1}')" 400

echo "== key rotation"
before=$(kids)
printf '  jwks before: %s\n' "$before"
rotated=$(curl -sS -X POST "$issuer/test/rotate-keys")
printf '  rotate-keys: %s\n' "$rotated"
old_kid=${before%%(*}
new_kid=$(field "$rotated" signing_kid)
expect "jwks after rotate" "$(kids)" "${new_kid:0:8}(RS256)"
expect "old key still published" "$(kids)" "$old_kid(RS256)"
sign_in alice@acme.test >/dev/null
expect "signed with the new key" "$(verify "$(field "$tokens" id_token)" "$nonce" alice@acme.test | head -n 1)" "kid=$new_kid"
expect "verdict" "$(verdict "$(field "$tokens" id_token)" "$nonce" alice@acme.test)" valid
retired=$(curl -sS "$issuer/test/rotate-keys" -H 'content-type: application/json' -d '{"retire_old": true}')
printf '  rotate-keys {"retire_old": true}: %s\n' "$retired"
newest_kid=$(field "$retired" signing_kid)
after=$(kids)
expect "jwks after retire_old" "$after" "${newest_kid:0:8}(RS256)"
[[ $after != *"(RS256)"*"(RS256)"* ]] && one=one || one="more than one"
expect "RS256 keys published" "$one" one
sign_in alice@acme.test >/dev/null
expect "id_token with the newest key" "$(verdict "$(field "$tokens" id_token)" "$nonce" alice@acme.test)" valid
spoil_case '{"sign_with": "retired"}' 'ERR_JWKS_NO_MATCHING_KEY'
expect "retired = the previous signing key" "$(verify "$(field "$tokens" id_token)" "$nonce" alice@acme.test | head -n 1)" "kid=$new_kid"

echo
((failures == 0)) || die "$failures check(s) failed"
echo "smoke: all checks passed"
