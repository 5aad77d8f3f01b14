// A real authorization server for the tests: npm's oidc-provider, with
// small login and consent pages of its own (no external assets, no
// JavaScript), configured by the Go test (oidc_test.go: startOIDCProvider).
//
// Configuration: JSON in the environment variable OIDC_CONFIG (or a file
// named by the first argument):
//
//   port               required: where to listen, on host (default 127.0.0.1)
//   issuer             default http://<host>:<port>
//   clients            oidc-provider client metadata (client_id, client_secret,
//                      redirect_uris, grant_types, token_endpoint_auth_method, ...)
//   users              { login: password }: who may sign in; absent: any
//                      login with any non-empty password
//   issueRefreshToken  true: offline access whenever the client may use the
//                      refresh_token grant: a refresh token, and tokens that
//                      outlive the provider session (default: oidc-provider's
//                      rule, offline_access with prompt consent)
//   features           merged over { devInteractions: off, revocation: on,
//                      introspection: on } (dPoP, pushedAuthorizationRequests...);
//                      as JSON has no Buffer or function, dPoP.nonceSecret may
//                      be given as 64 hex characters and dPoP.requireNonce as
//                      a boolean
//   resourceServers    { indicator: { scope, accessTokenFormat, audience,
//                      accessTokenTTL } }: the resource servers (RFC 8707
//                      resource indicators) tokens are issued for, the first
//                      one by default; accessTokenFormat "jwt" makes access
//                      tokens JWTs (RFC 9068) signed with the keys of
//                      jwks_uri, with cnf.jkt when DPoP-bound (default
//                      "opaque": check them by introspection)
//   authResponseIss    "omit": authorization responses without iss (RFC
//                      9207; oidc-provider always sends it); any other string:
//                      sent as iss instead of the issuer (a mix-up)
//   configuration      anything else, merged into oidc-provider's configuration
//                      (ttl, pkce, scopes, claims, ...)
//
// Besides the provider's own endpoints (see /.well-known/openid-configuration)
// it serves /interaction/<uid> (the login and consent pages) and, for the
// tests, GET /_test/events: how many times each provider event was emitted
// (authorization.success, grant.success, grant.revoked, ...), and the logins
// and consents as lists.
//
// It prints one line, {"listening": "<issuer>"}, when it is ready.

import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const raw = process.argv[2] ? readFileSync(process.argv[2], 'utf8') : process.env.OIDC_CONFIG;
if (!raw) {
  console.error('oidc test server: set OIDC_CONFIG (JSON) or name a config file');
  process.exit(2);
}
const cfg = JSON.parse(raw);
if (!cfg.port) {
  console.error('oidc test server: the configuration needs a port');
  process.exit(2);
}
const host = cfg.host || '127.0.0.1';
const issuer = cfg.issuer || `http://${host}:${cfg.port}`;

const configuration = {
  clients: cfg.clients || [],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id, name: id }) }),
  claims: { openid: ['sub'], profile: ['name'] },
  ...(cfg.configuration || {}),
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    ...((cfg.configuration || {}).features || {}),
    ...(cfg.features || {}),
  },
};
// What JSON cannot say: the DPoP nonce secret is a 32-byte Buffer, and
// requireNonce a function.
const dPoP = configuration.features.dPoP;
if (dPoP && typeof dPoP.nonceSecret === 'string') {
  dPoP.nonceSecret = Buffer.from(dPoP.nonceSecret, 'hex');
}
if (dPoP && typeof dPoP.requireNonce === 'boolean') {
  const required = dPoP.requireNonce;
  dPoP.requireNonce = () => required;
}
if (cfg.resourceServers) {
  const servers = cfg.resourceServers;
  const first = Object.keys(servers)[0];
  configuration.features.resourceIndicators = {
    enabled: true,
    defaultResource: async (ctx, client, oneOf) => oneOf || first,
    useGrantedResource: async () => true,
    getResourceServerInfo: async (ctx, indicator) => {
      const rs = Object.hasOwn(servers, indicator) && servers[indicator];
      if (!rs) throw new errors.InvalidTarget();
      return {
        scope: rs.scope || '',
        audience: rs.audience || indicator,
        accessTokenFormat: rs.accessTokenFormat || 'opaque',
        ...(rs.accessTokenTTL ? { accessTokenTTL: rs.accessTokenTTL } : {}),
      };
    },
  };
}
if (cfg.issueRefreshToken) {
  // Offline access whatever the scope and prompt: a refresh token, and
  // tokens that outlive the person's session at the provider (signing in
  // as someone else in the same browser does not end them).
  configuration.issueRefreshToken = async (ctx, client) => client.grantTypeAllowed('refresh_token');
  configuration.expiresWithSession = async () => false;
}

const provider = new Provider(issuer, configuration);

// authResponseIss: rewrite the iss of authorization responses (redirects to
// a client's redirect_uri) to test a client's RFC 9207 check.
if (cfg.authResponseIss) {
  provider.use(async (ctx, next) => {
    await next();
    const location = ctx.status >= 300 && ctx.status < 400 && ctx.response.get('Location');
    if (!location || !ctx.oidc?.client) return;
    const u = URL.parse(location);
    if (!u || !u.searchParams.has('iss') || !ctx.oidc.client.redirectUris.includes(`${u.origin}${u.pathname}`)) return;
    if (cfg.authResponseIss === 'omit') {
      u.searchParams.delete('iss');
    } else {
      u.searchParams.set('iss', cfg.authResponseIss);
    }
    ctx.redirect(u.href);
  });
}

// Every event the provider emits, counted (and the errors logged).
const counts = {};
const logins = [];
const consents = [];
const emit = provider.emit.bind(provider);
provider.emit = (name, ...args) => {
  counts[name] = (counts[name] || 0) + 1;
  return emit(name, ...args);
};
for (const ev of ['server_error', 'authorization.error', 'grant.error', 'revocation.error', 'introspection.error']) {
  provider.on(ev, (ctx, err) => console.error(`oidc test server: ${ev}: ${err && (err.stack || err.message)} ${err && err.error_description || ''}`));
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

function page(res, status, title, body) {
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
    'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:",
  });
  res.end(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:30rem;margin:2rem auto;padding:0 1rem}label{display:block;margin-top:1rem}input{width:100%;box-sizing:border-box;padding:.4rem}button{margin-top:1rem;padding:.5rem 1rem}</style>
</head>
<body><main><h1>${esc(title)}</h1>
${body}
</main></body></html>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 1 << 16) throw new Error('body too large');
  }
  return new URLSearchParams(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    return page(res, 400, 'Wrong interaction', '<p>This sign-in is not the one in progress.</p>');
  }
  const { prompt, params, session } = details;
  const client = await provider.Client.find(params.client_id);
  const clientName = client?.clientName || params.client_id;

  if (req.method === 'GET') {
    if (prompt.name === 'login') {
      return page(res, 200, 'Sign in to the test provider', `
<p>${esc(clientName)} wants to use your account.</p>
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">Login</label><input id="login" name="login" required autofocus value="${esc(params.login_hint || '')}">
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`);
    }
    if (prompt.name === 'consent') {
      const scopes = [...new Set(String(params.scope || '').split(' ').filter(Boolean))];
      return page(res, 200, 'Allow access?', `
<p>Signed in as <strong id="account">${esc(session.accountId)}</strong>.</p>
<p>${esc(clientName)} asks for: <span id="scopes">${esc(scopes.join(' '))}</span></p>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button type="submit" id="allow">Allow</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit" id="deny">Deny</button></form>`);
    }
    return page(res, 501, 'Not implemented', `<p>prompt ${esc(prompt.name)}</p>`);
  }

  if (req.method !== 'POST') {
    res.writeHead(405, { Allow: 'GET, POST' });
    return res.end();
  }
  const form = await readForm(req);
  switch (action) {
    case 'login': {
      const login = form.get('login') || '';
      const password = form.get('password') || '';
      const ok = cfg.users ? Object.hasOwn(cfg.users, login) && cfg.users[login] === password : login !== '' && password !== '';
      if (!ok) {
        return page(res, 200, 'Sign in to the test provider', `<p role="alert" id="error">Wrong login or password.</p>
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">Login</label><input id="login" name="login" required value="${esc(login)}">
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>`);
      }
      logins.push(login);
      return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    }
    case 'confirm': {
      const { details: missing } = prompt;
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      if (missing.missingResourceScopes) {
        for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
          grant.addResourceScope(indicator, scope.join(' '));
        }
      }
      const grantId = await grant.save();
      consents.push(session.accountId);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    case 'abort':
      return provider.interactionFinished(req, res,
        { error: 'access_denied', error_description: 'End-User aborted interaction' },
        { mergeWithLastSubmission: false });
    default:
      return page(res, 404, 'Not found', '');
  }
}

const handle = provider.callback();
const server = createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname === '/_test/events' && req.method === 'GET') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ counts, logins, consents }));
    }
    const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/);
    if (m) {
      return await interaction(req, res, m[1], m[2]);
    }
  } catch (err) {
    console.error(`oidc test server: ${req.method} ${url.pathname}: ${err.stack || err}`);
    if (!res.headersSent) {
      return page(res, 500, 'Error', `<p>${esc(err.message)}</p>`);
    }
    return res.end();
  }
  return handle(req, res);
});

server.listen(cfg.port, host, () => {
  console.log(JSON.stringify({ listening: issuer }));
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.closeAllConnections(); server.close(() => process.exit(0)); });
}
