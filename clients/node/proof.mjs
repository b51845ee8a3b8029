// Drives a real @aws-sdk/client-lambda through the TokenClient against the
// endpoint the Rust test serves (dev/testkit/tests/clients.rs runs this), and
// prints one JSON line of what it got: fingerprints, never tokens.
import { createHash } from "node:crypto";
import { LambdaClient } from "@aws-sdk/client-lambda";
import { TokenClient } from "./index.mjs";

const env = (k) => process.env[k] ?? (() => { throw new Error(`${k} is not set`); })();
const fp = (t) => createHash("sha256").update(t.token.expose()).digest("hex").slice(0, 12);

const lambda = new LambdaClient({
  endpoint: env("MINT_ENDPOINT"), region: "us-east-1",
  credentials: { accessKeyId: "test", secretAccessKey: "test" },
});
const client = new TokenClient(lambda, env("MINT_FUNCTION"), { caller: env("CALLER") });
const [loc, co, missing] = [env("LOCATION_ID"), env("COMPANY_ID"), env("MISSING_ID")];

const burst = await Promise.all(Array.from({ length: 20 }, () => client.locationToken(loc, { companyId: co })));
const company = await client.companyToken(co);
const companyAgain = await client.companyToken(co);
const installed = await client.installedLocations(co);
const error = await client.locationToken(missing).then(() => null, (e) => e);
console.log(JSON.stringify({
  location: {
    fps: [...new Set(burst.map(fp))], userType: burst[0].userType,
    locationId: burst[0].locationId, companyId: burst[0].companyId,
  },
  company: { fp: fp(company), again: fp(companyAgain), userType: company.userType, companyId: company.companyId },
  installed: { count: installed.count, ids: installed.locations.map((l) => l.locationId) },
  error: error && { errorType: error.errorType, retryable: error.isRetryable() },
}));
