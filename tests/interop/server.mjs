// A real OAuth 2.0 authorization server (panva's oidc-provider) for bearerd's interop tests.
//
//   node server.mjs CONFIG.json        (or BEARERD_INTEROP_CONFIG=CONFIG.json node server.mjs)
//
// It listens on 127.0.0.1 with an ephemeral port and prints exactly one line to stdout once it
// accepts connections:
//
//   {"issuer":"http://127.0.0.1:PORT","token_endpoint":"http://127.0.0.1:PORT/token", ...}
//
// Everything else (oidc-provider's notices included) goes to stderr. It exits on SIGTERM/SIGINT
// and when its standard input reaches end-of-file, so a test process that dies (and with it the
// write end of the pipe) never leaves a node process behind. Set BEARERD_INTEROP_IGNORE_STDIN=1
// to run it by hand with stdin closed.
//
// CONFIG is either a JSON array of clients, or an object (every key but `clients` optional):
//
// {
//   "clients": [
//     { "client_id": "a", "client_secret": "s", "token_endpoint_auth_method": "client_secret_basic",
//       "scope": "tasks:read",          // optional allow-list; a request for more is invalid_scope
//       "ttl": 60,                      // optional: this client's token lifetime in seconds
//       "jwks": { "keys": [ ... ] },    // private_key_jwt: the client's public keys
//       "tls_client_auth_subject_dn": "CN=bearerd-client"   // tls_client_auth (needs "tls")
//       /* any other RFC 7591 client metadata oidc-provider knows */ }
//   ],
//   "ttl": 300,                         // access token lifetime in seconds (default 300)
//   "resource_scope": "tasks:read tasks:write",  // scopes every resource server accepts
//   "resources": null,                  // null: any absolute URI is a resource; else a list of the
//                                       // only accepted ones (others: invalid_target)
//   "default_resource": "https://default.example.com",  // used when a request names no resource
//                                       // (and no `audience`); null: such requests get an opaque
//                                       // token carrying only the configured scopes
//   "json_body": false,                 // true: also accept an application/json token request
//                                       // (Auth0 / Camunda style); oidc-provider alone refuses it
//   "tls": { "cert": "server.pem", "key": "server.key", "ca": "client-ca.pem" },
//                                       // optional: serve https (issuer https://127.0.0.1:PORT)
//                                       // and ask for a client certificate (tls_client_auth and
//                                       // certificate-bound tokens); paths are PEM files
//   "http2": false,                     // with "tls": offer HTTP/2 by ALPN (HTTP/1.1 still works)
//   "mtls_alias": false,                // with "tls": publish mtls_endpoint_aliases.token_endpoint
//                                       // (RFC 8705 §5) = ISSUER/mtls/token, a second path to the
//                                       // token endpoint whose requests are counted apart
//   "extra_auth_methods": [],           // also offer these client authentication methods:
//                                       // "client_secret_jwt", "none" (off by default, so that
//                                       // discovery lists only the usual three)
//   "token_exchange": {                 // optional: the RFC 8693 grant, see below
//     "issuer": "https://kubernetes.default.svc",    // the subject token's required `iss`
//     "audience": "sts.example.com",    // the subject token's required `aud` (one of)
//     "jwks": { "keys": [ ... ] },      // the public keys subject (and actor) tokens are signed by
//     "subject_token_types": ["urn:ietf:params:oauth:token-type:jwt"]   // accepted (default)
//   }
// }
//
// The token exchange grant (urn:ietf:params:oauth:grant-type:token-exchange, for clients whose
// grant_types list it) is oidc-provider's registerGrantType with the handler below: the client
// authenticates as for any grant (or as a public client with "none"); subject_token and
// subject_token_type are required (invalid_request); the type must be accepted (invalid_request);
// the token's signature (jose, against "jwks"), `iss`, `aud`, `exp` and `nbf` (5 s leeway) must
// verify (invalid_grant); an actor_token needs an actor_token_type and is verified the same way;
// a requested_token_type other than access_token is invalid_request. It issues a JWT access token
// whose `sub` is the subject token's (`act.sub` the actor's), with `issued_token_type`
// urn:ietf:params:oauth:token-type:access_token and the resource/audience as for other grants.
//
// An `audience` form parameter (Auth0 / Camunda style) is honoured like a `resource`: the token's
// `aud` becomes its value. An explicit RFC 8707 `resource` wins over it.
//
// Test-only endpoints, next to oidc-provider's own:
//   GET  /__test/stats   -> {"token_requests":N,"faults_served":N,"issued":{"client":N},"errors":{"client":N},
//                            "http_versions":{"1.1":N,"2.0":N},   (of the token requests)
//                            "mtls_alias_requests":N,             (of those, made to the alias)
//                            "assertions":[{"client","jti","exp","ok"}],     (every client_assertion
//                                          and subject_token received, in order, with the outcome)
//                            "subject_tokens":[{"client","jti","sub","ok"}]}
//   POST /__test/fail    <- {"count":1,"status":503,"body":{...}|"text","headers":{...},"delay_ms":0}
//                           the next `count` token requests get that response instead

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';

// oidc-provider prints its notices with console.info (stdout); stdout is reserved for the ready line.
console.info = console.error;
console.log = console.error;

// Each step of the start-up, timed, on stderr: a start that never prints its ready line (seen a
// few times on a loaded machine, never reproduced alone) then says in the test's output where
// it stopped.
const started = process.hrtime.bigint();
function startupStep(name) {
  const ms = Number((process.hrtime.bigint() - started) / 1000000n);
  process.stderr.write(`bearerd-interop: start +${ms} ms: ${name}\n`);
}
startupStep('node running');

const { default: Provider, errors } = await import('oidc-provider');
// jose is oidc-provider's own JOSE library (a dependency it pins), used for the token exchange.
const jose = await import('jose');
startupStep('modules loaded');

function fail(message) {
  process.stderr.write(`bearerd-interop: ${message}\n`);
  process.exit(2);
}

const configPath = process.argv[2] || process.env.BEARERD_INTEROP_CONFIG;
if (!configPath) {
  fail('usage: node server.mjs CONFIG.json (or set BEARERD_INTEROP_CONFIG)');
}

let config;
try {
  config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
} catch (err) {
  fail(`cannot read config ${configPath}: ${err.message}`);
}
if (Array.isArray(config)) {
  config = { clients: config };
}
if (!config || typeof config !== 'object' || !Array.isArray(config.clients)) {
  fail('config must be an array of clients or an object with a "clients" array');
}

const ttl = config.ttl ?? 300;
if (!Number.isSafeInteger(ttl) || ttl <= 0) {
  fail('"ttl" must be a positive integer (seconds)');
}
const resourceScope = config.resource_scope ?? 'tasks:read tasks:write';
const allowedResources = Array.isArray(config.resources) ? new Set(config.resources) : null;
const defaultResource = config.default_resource === undefined
  ? 'https://default.example.com'
  : config.default_resource;
const AUDIENCE_URN = 'urn:bearerd-interop:audience:';
const extraAuthMethods = config.extra_auth_methods ?? [];
for (const method of extraAuthMethods) {
  if (!['client_secret_jwt', 'none'].includes(method)) {
    fail(`"extra_auth_methods": ${JSON.stringify(method)} is not client_secret_jwt or none`);
  }
}
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const exchange = config.token_exchange ?? null;
// The claims a token exchange adds to the token it issues (`act`), by token.
const exchangeClaims = new WeakMap();
if (exchange && (typeof exchange.issuer !== 'string' || !exchange.audience || !exchange.jwks)) {
  fail('"token_exchange" needs "issuer", "audience" and "jwks"');
}

// Per-client settings that are ours, not RFC 7591 metadata: stripped before oidc-provider sees them.
const clientTtl = new Map();
const clients = config.clients.map((c) => {
  const { ttl: t, ...metadata } = c;
  if (t !== undefined) {
    if (!Number.isSafeInteger(t) || t <= 0) {
      fail(`client ${c.client_id}: "ttl" must be a positive integer (seconds)`);
    }
    clientTtl.set(c.client_id, t);
  }
  return {
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    ...metadata,
  };
});

// Every scope a client may be restricted to must be a "static" scope of the provider.
const scopes = new Set(['openid', 'offline_access', ...resourceScope.split(' ').filter(Boolean)]);
for (const c of clients) {
  for (const s of (c.scope || '').split(' ').filter(Boolean)) scopes.add(s);
}

const tls = config.tls
  ? {
    cert: fs.readFileSync(config.tls.cert),
    key: fs.readFileSync(config.tls.key),
    ...(config.tls.ca ? { ca: fs.readFileSync(config.tls.ca) } : {}),
    requestCert: true,
    // The handshake succeeds with any (or no) certificate; oidc-provider decides per client.
    rejectUnauthorized: false,
  }
  : null;

// --- test-only bookkeeping -----------------------------------------------------------------------

const stats = {
  token_requests: 0,
  faults_served: 0,
  issued: {},
  errors: {},
  http_versions: {},
  mtls_alias_requests: 0,
  assertions: [],
  subject_tokens: [],
};
const faults = [];

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, value, headers = {}) {
  const body = typeof value === 'string' ? value : JSON.stringify(value);
  res.writeHead(status, {
    'content-type': typeof value === 'string' ? 'text/plain' : 'application/json',
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

// --- listen first: the issuer must carry the real port -------------------------------------------

let callback = null;
if (config.http2 && !tls) {
  fail('"http2" needs "tls" (browsers and bearerd speak HTTP/2 only over TLS)');
}
if (config.mtls_alias && !tls) {
  fail('"mtls_alias" needs "tls"');
}
const MTLS_ALIAS_PATH = '/mtls/token';
let server;
if (tls && config.http2) {
  server = http2.createSecureServer({ ...tls, allowHTTP1: true }, (req, res) => handle(req, res));
} else if (tls) {
  server = https.createServer(tls, (req, res) => handle(req, res));
} else {
  server = http.createServer((req, res) => handle(req, res));
}

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
startupStep(`listening on port ${port}`);
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

async function resourceServerInfo(ctx, resource, client) {
  const audience = resource.startsWith(AUDIENCE_URN)
    ? decodeURIComponent(resource.slice(AUDIENCE_URN.length))
    : resource;
  if (allowedResources && !allowedResources.has(audience)) {
    throw new errors.InvalidTarget();
  }
  return {
    scope: resourceScope,
    audience,
    accessTokenFormat: 'jwt',
    accessTokenTTL: clientTtl.get(client?.clientId) ?? ttl,
    jwt: { sign: { alg: 'RS256' } },
  };
}

// The provider's signing key: a fixed RSA key made for these tests (test-only, signs nothing
// but this server's test tokens). It was generated at each start, and on a loaded machine
// `generateKeyPairSync` sometimes did not return within a minute (the start-up steps above
// showed it stopping there).
const signingKey = JSON.parse(
  fs.readFileSync(new URL('./signing-key.jwk.json', import.meta.url), 'utf8'),
);
startupStep('signing key read');

const provider = new Provider(issuer, {
  clients,
  ...(config.mtls_alias
    ? { discovery: { mtls_endpoint_aliases: { token_endpoint: `${issuer}${MTLS_ALIAS_PATH}` } } }
    : {}),
  jwks: { keys: [{ ...signingKey, kid: 'interop-rs256', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: [...scopes],
  clientAuthMethods: [
    'client_secret_basic',
    'client_secret_post',
    'private_key_jwt',
    ...(tls ? ['tls_client_auth'] : []),
    ...extraAuthMethods,
  ],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Called when the request has no `resource`: an `audience` parameter stands in for it, else
      // the configured default (so that plain requests still get a JWT).
      async defaultResource(ctx, client, oneOf) {
        if (oneOf) return oneOf;
        const audience = ctx.oidc.body?.audience;
        if (typeof audience === 'string' && audience) {
          return URL.canParse(audience) && !audience.includes('#')
            ? audience
            : `${AUDIENCE_URN}${encodeURIComponent(audience)}`;
        }
        return defaultResource ?? undefined;
      },
      getResourceServerInfo: resourceServerInfo,
    },
    mTLS: {
      enabled: !!tls,
      tlsClientAuth: !!tls,
      certificateBoundAccessTokens: !!tls,
      getCertificate(ctx) {
        const peer = ctx.socket.getPeerCertificate?.();
        return peer?.raw ? new crypto.X509Certificate(peer.raw) : undefined;
      },
      certificateAuthorized(ctx) {
        return ctx.socket.authorized === true;
      },
      certificateSubjectMatches(ctx, property, expected) {
        const peer = ctx.socket.getPeerCertificate?.();
        if (!peer?.raw) return false;
        const cert = new crypto.X509Certificate(peer.raw);
        switch (property) {
          case 'tls_client_auth_subject_dn':
            return sameDn(cert.subject, expected);
          case 'tls_client_auth_san_dns':
            return sans(cert).includes(`DNS:${expected}`);
          case 'tls_client_auth_san_uri':
            return sans(cert).includes(`URI:${expected}`);
          case 'tls_client_auth_san_ip':
            return sans(cert).includes(`IP Address:${expected}`);
          case 'tls_client_auth_san_email':
            return sans(cert).includes(`email:${expected}`);
          default:
            return false;
        }
      },
    },
  },
  // oidc-provider sets a token's extra claims from here when it is saved.
  extraTokenClaims: async (ctx, token) => exchangeClaims.get(token),
  ttl: {
    // Without a resource server (default_resource: null) the lifetime comes from here.
    ClientCredentials: (ctx, token, client) => token.resourceServer?.accessTokenTTL
      ?? clientTtl.get(client?.clientId) ?? ttl,
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? ttl,
  },
});

// Node prints a subject as "C=..\nO=..\nCN=.."; RFC 4514 strings list the same RDNs reversed and
// comma-separated. Compare them as multisets of TYPE=value.
function rdns(dn, separator) {
  return dn.split(separator).map((s) => s.trim()).filter(Boolean).map((rdn) => {
    const i = rdn.indexOf('=');
    return `${rdn.slice(0, i).trim().toUpperCase()}=${rdn.slice(i + 1).trim().replace(/\\(.)/g, '$1')}`;
  }).sort();
}
function sameDn(certSubject, expected) {
  const a = rdns(certSubject, '\n');
  const b = rdns(expected, /(?<!\\),/);
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
function sans(cert) {
  return (cert.subjectAltName || '').split(',').map((s) => s.trim());
}

// --- the RFC 8693 token exchange grant -----------------------------------------------------------

if (exchange) {
  const keys = jose.createLocalJWKSet(exchange.jwks);
  const subjectTypes = new Set(exchange.subject_token_types ?? ['urn:ietf:params:oauth:token-type:jwt']);
  const verify = async (token, what) => {
    try {
      const { payload } = await jose.jwtVerify(token, keys, {
        issuer: exchange.issuer,
        audience: exchange.audience,
        clockTolerance: 5,
        requiredClaims: ['exp', 'sub'],
      });
      return payload;
    } catch (cause) {
      throw new errors.InvalidGrant({ detail: `${what}: ${cause.code ?? ''} ${cause.message}`, cause });
    }
  };
  const exchangeHandler = async (ctx) => {
    const { params, client } = ctx.oidc;
    for (const name of ['subject_token', 'subject_token_type']) {
      if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }
    if (!subjectTypes.has(params.subject_token_type)) {
      throw new errors.InvalidRequest(`unsupported subject_token_type ${params.subject_token_type}`);
    }
    if (params.actor_token && !params.actor_token_type) {
      throw new errors.InvalidRequest("'actor_token_type' is required with 'actor_token'");
    }
    if (!params.actor_token && params.actor_token_type) {
      throw new errors.InvalidRequest("'actor_token_type' without 'actor_token'");
    }
    if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`unsupported requested_token_type ${params.requested_token_type}`);
    }
    const subject = await verify(params.subject_token, 'subject_token');
    const actor = params.actor_token ? await verify(params.actor_token, 'actor_token') : null;

    const allowed = new Set((client.scope || resourceScope).split(' ').filter(Boolean));
    const requested = (params.scope || '').split(' ').filter(Boolean);
    for (const s of requested) {
      if (!allowed.has(s)) throw new errors.InvalidScope('requested scope is not allowed', s);
    }
    const resource = params.resource || params.audience || defaultResource;
    if (Array.isArray(resource)) throw new errors.InvalidTarget('only one resource or audience');
    if (!resource) throw new errors.InvalidTarget('a resource or audience is required');
    const identifier = URL.canParse(resource) ? resource : `${AUDIENCE_URN}${encodeURIComponent(resource)}`;
    const info = await resourceServerInfo(ctx, identifier, client);

    const token = new provider.AccessToken({
      client,
      accountId: String(subject.sub),
      gty: 'token_exchange',
      scope: requested.join(' ') || undefined,
    });
    if (actor) exchangeClaims.set(token, { act: { sub: actor.sub } });
    token.resourceServer = new provider.ResourceServer(identifier, info);
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: token.tokenType,
      expires_in: token.expiration,
      ...(token.scope ? { scope: token.scope } : {}),
    };
  };
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    exchangeHandler,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
      'requested_token_type', 'audience', 'resource', 'scope'],
    ['audience', 'resource'],
  );
}

// oidc-provider validates static clients lazily (on first use): validate them now, so that a bad
// test config fails at startup with the reason instead of as a puzzling invalid_client later.
for (const { client_id: id } of clients) {
  try {
    if (!(await provider.Client.find(String(id)))) throw new Error('not found');
  } catch (err) {
    fail(`client ${JSON.stringify(id)}: ${err.message}${err.error_description ? `: ${err.error_description}` : ''}`);
  }
}

// The claims of a JWT the server received, unverified: for the test's bookkeeping only.
function peek(jwt) {
  try {
    return jose.decodeJwt(jwt);
  } catch {
    return {};
  }
}

// What the token request carried: every client assertion and subject token, with the outcome.
function record(ctx, id, ok) {
  const params = ctx.oidc?.params ?? {};
  if (typeof params.client_assertion === 'string') {
    const { jti = null, exp = null } = peek(params.client_assertion);
    stats.assertions.push({ client: id, jti, exp, ok });
  }
  if (typeof params.subject_token === 'string') {
    const { jti = null, sub = null } = peek(params.subject_token);
    stats.subject_tokens.push({ client: id, jti, sub, ok });
  }
}

provider.on('grant.success', (ctx) => {
  const id = ctx.oidc.client?.clientId ?? '?';
  stats.issued[id] = (stats.issued[id] || 0) + 1;
  record(ctx, id, true);
});
provider.on('grant.error', (ctx, err) => {
  const id = ctx.oidc.client?.clientId ?? ctx.oidc.params?.client_id ?? '?';
  stats.errors[id] = (stats.errors[id] || 0) + 1;
  record(ctx, id, false);
  const detail = [err.error_description, err.error_detail].filter(Boolean).join('; ');
  process.stderr.write(`bearerd-interop: token error for ${id}: ${err.message}${detail ? ` (${detail})` : ''}\n`);
});
provider.on('server_error', (ctx, err) => {
  process.stderr.write(`bearerd-interop: server_error: ${err.stack || err}\n`);
});

callback = provider.callback();
const tokenPath = new URL(provider.urlFor('token')).pathname;

async function handle(req, res) {
  try {
    let path = req.url.split('?')[0];
    if (config.mtls_alias && path === MTLS_ALIAS_PATH && req.method === 'POST') {
      // The alias is the token endpoint under another path: count it, then serve it as that.
      stats.mtls_alias_requests += 1;
      req.url = tokenPath + req.url.slice(path.length);
      path = tokenPath;
    }

    if (path === '/__test/stats' && req.method === 'GET') {
      return sendJson(res, 200, stats);
    }
    if (path === '/__test/fail' && req.method === 'POST') {
      const spec = JSON.parse((await readBody(req)) || '{}');
      const count = spec.count ?? 1;
      for (let i = 0; i < count; i += 1) faults.push(spec);
      return sendJson(res, 200, { queued: faults.length });
    }

    if (path === tokenPath && req.method === 'POST') {
      stats.token_requests += 1;
      stats.http_versions[req.httpVersion] = (stats.http_versions[req.httpVersion] || 0) + 1;

      const fault = faults.shift();
      if (fault) {
        stats.faults_served += 1;
        await readBody(req);
        if (fault.delay_ms) await new Promise((r) => setTimeout(r, fault.delay_ms));
        return sendJson(res, fault.status ?? 503, fault.body ?? { error: 'temporarily_unavailable' }, fault.headers);
      }

      if (config.json_body && /^application\/json\b/i.test(req.headers['content-type'] || '')) {
        // Re-present a JSON body as the form body oidc-provider understands (it then reads
        // req.body instead of the already consumed stream).
        let json;
        try {
          json = JSON.parse(await readBody(req));
        } catch {
          return sendJson(res, 400, { error: 'invalid_request', error_description: 'malformed JSON body' });
        }
        const form = new URLSearchParams();
        for (const [k, v] of Object.entries(json ?? {})) {
          for (const item of Array.isArray(v) ? v : [v]) {
            if (item !== null && item !== undefined) form.append(k, String(item));
          }
        }
        req.headers['content-type'] = 'application/x-www-form-urlencoded';
        req.body = form.toString();
      }
    }

    return callback(req, res);
  } catch (err) {
    process.stderr.write(`bearerd-interop: ${err.stack || err}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  }
}

// --- lifecycle -----------------------------------------------------------------------------------

let stopping = false;
function stop(reason) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`bearerd-interop: stopping (${reason})\n`);
  server.close();
  server.closeAllConnections?.();
  // Don't wait for anything else (keep-alive sockets, timers): exit now.
  setImmediate(() => process.exit(0));
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (process.env.BEARERD_INTEROP_IGNORE_STDIN !== '1') {
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('close', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

startupStep('provider ready');
process.stdout.write(`${JSON.stringify({
  issuer,
  token_endpoint: provider.urlFor('token'),
  jwks_uri: provider.urlFor('jwks'),
  discovery: `${issuer}/.well-known/openid-configuration`,
  stats: `${issuer}/__test/stats`,
  fail: `${issuer}/__test/fail`,
})}\n`);
