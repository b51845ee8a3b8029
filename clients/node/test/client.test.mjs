import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { TokenClient, TokenError } from "../index.mjs";

// A stand-in for LambdaClient: records each InvokeCommand's input, answers after `delayMs`.
function fakeLambda(reply, delayMs = 0) {
  const sent = [];
  let n = 0;
  return {
    sent,
    async send(cmd) {
      const input = cmd.input;
      const request = JSON.parse(Buffer.from(input.Payload).toString());
      sent.push({ request, clientContext: input.ClientContext, functionName: input.FunctionName });
      await new Promise((r) => setTimeout(r, delayMs));
      return reply(request, n++);
    },
  };
}

const ok = (body) => ({ StatusCode: 200, Payload: new TextEncoder().encode(JSON.stringify(body)) });
const tokenReply = (expiresIn) => (req, n) => ok({
  accessToken: `tok-${n}`, tokenType: "Bearer", expiresAt: "2026-11-23T08:00:00Z", expiresIn,
  companyId: req.companyId ?? "co", locationId: req.locationId ?? null,
  userType: req.action === "companyToken" ? "Company" : "Location", source: "minted",
});

test("a burst makes one invoke and the cache serves the rest", async () => {
  const lambda = fakeLambda(tokenReply(86_399), 50);
  const c = new TokenClient(lambda, "mint");
  const tokens = await Promise.all(Array.from({ length: 20 }, () => c.locationToken("loc-1")));
  assert.equal(lambda.sent.length, 1);
  assert.ok(tokens.every((t) => t.token.expose() === "tok-0"));
  assert.equal((await c.locationToken("loc-1")).token.expose(), "tok-0");
  assert.equal(lambda.sent.length, 1, "served from the cache");
  const company = await c.companyToken("loc-1");
  assert.equal(company.userType, "Company");
  assert.equal(lambda.sent.length, 2, "another kind is another key");
});

test("a token with no more than minValidity left is fetched again", async () => {
  let lambda = fakeLambda(tokenReply(300));
  let c = new TokenClient(lambda, "mint", { minValiditySeconds: 300 });
  await c.locationToken("l");
  await c.locationToken("l");
  assert.equal(lambda.sent.length, 2);
  lambda = fakeLambda(tokenReply(302));
  c = new TokenClient(lambda, "mint", { minValiditySeconds: 300 });
  await c.locationToken("l");
  await c.locationToken("l");
  assert.equal(lambda.sent.length, 1, "2 s of margin: cached");
  c.forget("Location", "l");
  await c.locationToken("l");
  assert.equal(lambda.sent.length, 2);
});

test("a burst shares one error, typed, and errors are not cached", async () => {
  const lambda = fakeLambda(() => ({
    StatusCode: 200, FunctionError: "Unhandled",
    Payload: new TextEncoder().encode(JSON.stringify({
      errorType: "RateLimited", errorMessage: "HighLevel rate limit reached; retry after 3 s" })),
  }), 50);
  const c = new TokenClient(lambda, "mint");
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => c.locationToken("l")));
  assert.equal(lambda.sent.length, 1);
  for (const r of results) {
    assert.equal(r.status, "rejected");
    assert.ok(r.reason instanceof TokenError);
    assert.equal(r.reason.errorType, "RateLimited");
    assert.equal(r.reason.isRetryable(), true);
    assert.equal(r.reason.retryAfterSeconds, 3);
  }
  await assert.rejects(c.locationToken("l"));
  assert.equal(lambda.sent.length, 2);
  const notFound = fakeLambda(() => ({ FunctionError: "Unhandled",
    Payload: new TextEncoder().encode('{"errorType":"InstallNotFound","errorMessage":"no install"}') }));
  const e = await new TokenClient(notFound, "mint").companyToken("c").catch((x) => x);
  assert.equal(e.errorType, "InstallNotFound");
  assert.equal(e.isRetryable(), false);
});

test("requests carry the mint's shapes and the caller", async () => {
  const lambda = fakeLambda((req, n) => req.action === "listInstalledLocations"
    ? ok({ companyId: "co", count: 1, complete: true, locations: [{ locationId: "l1" }] })
    : tokenReply(86_399)(req, n));
  const c = new TokenClient(lambda, "arn:mint", { caller: "billing", minValiditySeconds: 60 });
  await c.locationToken("l1");
  await c.locationToken("l2", { companyId: "co" });
  await c.companyToken("co");
  assert.equal((await c.installedLocations("co")).locations[0].locationId, "l1");
  assert.deepEqual(lambda.sent.map((s) => s.request), [
    { locationId: "l1", minValiditySeconds: 960 },
    { locationId: "l2", companyId: "co", minValiditySeconds: 960 },
    { action: "companyToken", companyId: "co", minValiditySeconds: 960 },
    { action: "listInstalledLocations", companyId: "co" },
  ]);
  for (const s of lambda.sent) {
    assert.equal(s.functionName, "arn:mint");
    assert.deepEqual(JSON.parse(Buffer.from(s.clientContext, "base64")), { custom: { caller: "billing" } });
  }
});

test("the token never prints", async () => {
  const c = new TokenClient(fakeLambda(tokenReply(86_399)), "mint");
  const t = await c.locationToken("l");
  for (const shown of [inspect(t), JSON.stringify(t), `${t.token}`, inspect(t.token)]) {
    assert.ok(!shown.includes("tok-0"), shown);
  }
  assert.equal(t.authorization(), "Bearer tok-0");
  const bad = fakeLambda(() => ok({ accessToken: "tok-leak", expiresIn: "tok-leak2" }));
  const e = await new TokenClient(bad, "mint").locationToken("l").catch((x) => x);
  assert.equal(e.errorType, "BadResponse");
  assert.ok(!e.message.includes("tok-leak"));
});
