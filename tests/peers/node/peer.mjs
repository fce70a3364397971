// A Node peer of the auth service, set up as docs/cutover.md tells a Node team: the issuer URL and
// the audience, nothing else (no JWKS URL, no algorithms, no token type).
//
// Input: ISSUER and AUDIENCE in the environment; on stdin, JSON with the tokens a user's app and an
// operator would hand over: {access_token, refresh_token, staff_access_token, client_id,
// client_secret}. Output: one JSON object on stdout, what each stock library answered; the pytest
// side (tests/peers/test_node_peer.py) judges it. Anything thrown ends the run non-zero.

import { once } from "node:events";
import { text } from "node:stream/consumers";

import express from "express";
import { auth, requiredScopes } from "express-oauth2-jwt-bearer";
import * as jose from "jose";
import * as client from "openid-client";

const issuer = process.env.ISSUER;
const audience = process.env.AUDIENCE;
const given = JSON.parse(await text(process.stdin));
const seen = {};

// openid-client refuses plain http unless told; a deployment's issuer is https and needs no option.
const insecure = new URL(issuer).protocol === "http:" ? { execute: [client.allowInsecureRequests] } : {};

// (c) openid-client: discovery from the issuer alone, the credential as client_secret_basic.
const config = await client.discovery(
  new URL(issuer),
  given.client_id,
  undefined,
  client.ClientSecretBasic(given.client_secret),
  insecure,
);
const metadata = config.serverMetadata();
seen.discovered = {
  issuer: metadata.issuer,
  jwks_uri: metadata.jwks_uri,
  introspection_endpoint: metadata.introspection_endpoint,
  token_endpoint: metadata.token_endpoint,
};
const introspected = await client.tokenIntrospection(config, given.access_token);
seen.introspect_live = { active: introspected.active, sub: introspected.sub, scope: introspected.scope };
// A genuine token of this issuer for another audience: the credential's own, by client credentials.
const serviceToken = (await client.clientCredentialsGrant(config)).access_token;

// jose, on the discovered JWKS, as the cut-over guide's "jose / openid-client" row has it.
const keys = jose.createRemoteJWKSet(new URL(metadata.jwks_uri));
const joseVerdict = async (token) => {
  try {
    const { payload } = await jose.jwtVerify(token, keys, { issuer: metadata.issuer, audience, typ: "at+jwt" });
    return { ok: true, sub: payload.sub };
  } catch (error) {
    return { ok: false, error: `${error.code ?? error.name}: ${error.message}` };
  }
};
seen.jose = {
  access: await joseVerdict(given.access_token),
  refresh: await joseVerdict(given.refresh_token),
  other_audience: await joseVerdict(serviceToken),
};

// (a), (b) express-oauth2-jwt-bearer with only issuerBaseURL and audience.
const checkJwt = auth({ issuerBaseURL: issuer, audience });
const app = express();
app.get("/cycle-logs", checkJwt, (req, res) => res.json({ sub: req.auth.payload.sub }));
app.get("/own-profile", checkJwt, requiredScopes("account"), (req, res) => res.json({ sub: req.auth.payload.sub }));
app.get("/panel", checkJwt, requiredScopes("panel"), (req, res) => res.json({ sub: req.auth.payload.sub }));
// The RFC 9068 profile in full (typ, iat, sub, client_id, jti required): one more option.
app.get("/strict", auth({ issuerBaseURL: issuer, audience, strict: true }), (req, res) => res.json({}));
app.use((error, req, res, next) => {
  res.status(error.status ?? 500).set(error.headers ?? {}).json({ error: error.code, message: error.message });
});
const server = app.listen(0, "127.0.0.1");
await once(server, "listening");
const here = `http://127.0.0.1:${server.address().port}`;

const call = async (path, token) => {
  const answer = await fetch(here + path, { headers: { Authorization: `Bearer ${token}` } });
  return { status: answer.status, body: await answer.json() };
};
const claims = jose.decodeJwt(given.access_token);
const unsigned = new jose.UnsecuredJWT(claims).encode(); // alg: none, the genuine claims
seen.express = {
  access: await call("/cycle-logs", given.access_token),
  refresh: await call("/cycle-logs", given.refresh_token),
  other_audience: await call("/cycle-logs", serviceToken),
  alg_none: await call("/cycle-logs", unsigned),
  alg_none_header: jose.decodeProtectedHeader(unsigned),
  strict_access: await call("/strict", given.access_token),
  scope_account: await call("/own-profile", given.access_token),
  scope_panel_as_user: await call("/panel", given.access_token),
  scope_panel_as_support: await call("/panel", given.staff_access_token),
};
server.close();

// (c) continued: the user signs out in their app; introspection sees it at once.
const logout = await fetch(`${issuer}/api/auth/logout`, {
  method: "POST",
  headers: { Authorization: `Bearer ${given.access_token}` },
});
seen.logout_status = logout.status;
const afterLogout = await client.tokenIntrospection(config, given.access_token);
seen.introspect_logged_out = { active: afterLogout.active };

process.stdout.write(JSON.stringify(seen));
