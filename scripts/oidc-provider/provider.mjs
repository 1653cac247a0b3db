// Loopback OpenID Connect provider for OperatorNext's sign-in tests: oidc-provider
// with non-interactive login (login_hint names the email), mandatory S256 PKCE,
// and /test/ control endpoints to rotate keys and spoil the next id_token.
// See README.md.
import { createHash, generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import { CompactSign, calculateJwkThumbprint } from 'jose';
import Provider, { interactionPolicy } from 'oidc-provider';
// A deep import, because oidc-provider gives every Provider a fresh in-memory
// store unless the adapter is passed in; built this way, all Providers share
// the module's store and sessions, codes and grants survive a key rotation.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const port = Number(process.env.OIDC_PORT || 9780);
const issuer = `http://127.0.0.1:${port}`;
const defaultRedirect = 'http://127.0.0.1:8080/v1/auth/oidc/local/callback';
// The rest of their metadata comes from clientDefaults below.
const clients = JSON.parse(process.env.OIDC_CLIENTS || JSON.stringify([
  { client_id: 'operator', client_secret: 'operator-secret', redirect_uris: [defaultRedirect] },
  { client_id: 'other', client_secret: 'other-secret', redirect_uris: [defaultRedirect] },
]));

// ------------------------------------------------------------------ keys

async function newKey(alg) {
  const { privateKey } = alg === 'EdDSA'
    ? generateKeyPairSync('ed25519')
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint(jwk);
  return { kid, alg, privateKey, jwk: { ...jwk, kid, alg, use: 'sig' } };
}

// rsaKeys[0] signs (RS256 is every client's id_token alg unless it asks for
// EdDSA); the others are still published. `retired` is never published: at
// first a key that never was, after a retire_old the last signing key.
const rsaKeys = [await newKey('RS256')];
const edKey = await newKey('EdDSA');
let retired = await newKey('RS256');
const published = () => [rsaKeys[0], edKey, ...rsaKeys.slice(1)];

// -------------------------------------------------------------- accounts

// Any email is an account; its sub is the hex SHA-256 of the email as given.
const subFor = (email) => createHash('sha256').update(email).digest('hex');
const emails = new Map(); // sub -> email, filled at login

function findAccount(ctx, sub) {
  const email = emails.get(sub);
  if (email === undefined) return undefined;
  return {
    accountId: sub,
    claims: () => ({
      sub,
      email,
      email_verified: !email.startsWith('unverified'),
      name: email.split('@')[0],
    }),
  };
}

// The default policy keeps whoever is signed in; a test that signs in as
// another user with the same cookie jar must get that user instead.
function interactionPolicyWithLoginHint() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check(
    'login_hint_other_account',
    'login_hint names another account than the signed-in one',
    ({ oidc }) => Boolean(oidc.params.login_hint && oidc.session.accountId
      && oidc.session.accountId !== subFor(oidc.params.login_hint)),
  ));
  return policy;
}

// ------------------------------------------------------------- provider

function configuration() {
  return {
    adapter: (model) => new MemoryAdapter(model),
    clients,
    clientDefaults: {
      // RFC 8252 §7.3: for native clients oidc-provider accepts a registered
      // http://127.0.0.1/... (or localhost, [::1]) redirect URI on any port,
      // which is what tests starting the API on a random port need.
      application_type: 'native',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
      token_endpoint_auth_method: 'client_secret_post',
    },
    responseTypes: ['code'],
    pkce: { required: () => true }, // oidc-provider 9 only knows S256
    scopes: ['openid', 'email', 'profile'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    // Put the scopes' claims in the id_token too, as Google does, not only
    // behind the userinfo endpoint.
    conformIdTokenClaims: false,
    // By default only an offline_access scope gets a refresh token.
    issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
    findAccount,
    // Cookies are not kept apart by port: the API under test on another
    // 127.0.0.1 port shares the client's jar, so no generic names like _session.
    cookies: { names: { session: 'oidc_session', interaction: 'oidc_interaction', resume: 'oidc_resume' } },
    features: { devInteractions: { enabled: false } },
    interactions: { policy: interactionPolicyWithLoginHint() },
    jwks: { keys: published().map((key) => key.jwk) },
    // Test clients read errors; plain JSON beats the default HTML page.
    renderError: (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 300,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
  };
}

// ------------------------------------------------------ interaction route

// Completes login and consent without any page: a client following redirects
// with a cookie jar goes straight from /auth to the redirect URI.
async function autoInteraction(ctx, next) {
  if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { login_hint: email, client_id: clientId, scope } = details.params;
  const accountId = email ? subFor(email) : details.session?.accountId;
  let result;
  if (!accountId) {
    result = { error: 'login_required', error_description: 'login_hint must name the email to sign in as' };
  } else {
    if (email) emails.set(accountId, email);
    if (details.session && details.session.accountId !== accountId) {
      // Signing in as someone else: drop the old session here, or oidc-provider
      // answers with a logout confirmation form.
      await (await provider.Session.findByUid(details.session.uid))?.destroy();
      delete details.session;
      await details.save(details.exp - Math.floor(Date.now() / 1000));
    }
    const grant = new provider.Grant({ accountId, clientId });
    grant.addOIDCScope(scope);
    result = { login: { accountId }, consent: { grantId: await grant.save() } };
  }
  ctx.status = 303;
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result));
}

// ------------------------------------------------------- spoiled id_token

const b64json = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const unb64json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString());
const spoilers = new Set(['aud', 'exp_offset_seconds', 'iss', 'nonce', 'tamper', 'sign_with', 'alg']);
let nextSpoil = null; // one-shot, set by POST /test/next-id-token

async function spoil(idToken, how) {
  const [headerPart, payloadPart] = idToken.split('.');
  const header = unb64json(headerPart);
  const claims = unb64json(payloadPart);
  for (const name of ['aud', 'iss', 'nonce']) {
    if (name in how) claims[name] = how[name];
  }
  if ('exp_offset_seconds' in how) {
    // Move iat along so the token looks issued that long ago, not as if exp < iat.
    const shift = Math.floor(Date.now() / 1000) + how.exp_offset_seconds - claims.exp;
    claims.exp += shift;
    claims.iat += shift;
  }
  let token;
  if (how.alg === 'none') {
    token = `${b64json({ alg: 'none', typ: header.typ })}.${b64json(claims)}.`;
  } else {
    const key = how.sign_with === 'retired' ? retired : published().find((k) => k.kid === header.kid);
    token = await new CompactSign(Buffer.from(JSON.stringify(claims)))
      .setProtectedHeader({ ...header, alg: key.alg, kid: key.kid })
      .sign(key.privateKey);
  }
  if (how.tamper) {
    const [h, , signature] = token.split('.');
    token = `${h}.${b64json({ ...claims, email: 'mallory@evil.test' })}.${signature}`;
  }
  return token;
}

async function spoilNextIdToken(ctx, next) {
  await next();
  if (nextSpoil && ctx.oidc?.route === 'token' && typeof ctx.body?.id_token === 'string') {
    const how = nextSpoil;
    nextSpoil = null;
    ctx.body = { ...ctx.body, id_token: await spoil(ctx.body.id_token, how) };
  }
}

// ------------------------------------------------------ control endpoints

async function jsonBody(ctx) {
  let text = '';
  for await (const chunk of ctx.req) text += chunk;
  return text.trim() ? JSON.parse(text) : {};
}

const control = {
  'GET /test/health': (ctx) => { ctx.body = { ok: true }; },
  'POST /test/rotate-keys': async (ctx) => {
    const { retire_old: retireOld } = await jsonBody(ctx);
    const previous = rsaKeys[0];
    rsaKeys.unshift(await newKey('RS256'));
    if (retireOld) {
      retired = previous;
      rsaKeys.length = 1;
    }
    // oidc-provider reads its keys only when built; a new Provider over the
    // shared store is how it takes the new set.
    rebuild();
    ctx.body = { kids: published().map((k) => k.kid), signing_kid: rsaKeys[0].kid };
  },
  'POST /test/next-id-token': async (ctx) => {
    const how = await jsonBody(ctx);
    const unknown = Object.keys(how).filter((name) => !spoilers.has(name));
    if (unknown.length || ('sign_with' in how && how.sign_with !== 'retired')
      || ('alg' in how && how.alg !== 'none')) {
      ctx.status = 400;
      ctx.body = { error: `unsupported: ${JSON.stringify(how)}; known: ${[...spoilers].join(', ')}` };
      return;
    }
    nextSpoil = how;
    ctx.status = 204;
  },
};

function controlRoutes(ctx, next) {
  const route = control[`${ctx.method} ${ctx.path}`];
  return route ? route(ctx) : next();
}

function logRequest(ctx, next) {
  ctx.res.once('finish', () => console.log(`${ctx.method} ${ctx.path} ${ctx.res.statusCode}`));
  return next();
}

// ----------------------------------------------------------------- server

let provider;
let handle;
function rebuild() {
  provider = new Provider(issuer, configuration());
  for (const middleware of [logRequest, controlRoutes, autoInteraction, spoilNextIdToken]) {
    provider.use(middleware);
  }
  handle = provider.callback();
}

rebuild();
const server = createServer((req, res) => handle(req, res));
server.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    console.log(`${signal}: shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
