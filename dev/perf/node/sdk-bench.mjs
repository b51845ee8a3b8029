// Node side of the side-by-side refresh benchmark: HighLevel's official Node
// SDK (@gohighlevel/api-client, pinned in package.json) refreshing OAuth
// tokens against dev/ghl-sim.
//
//   node sdk-bench.mjs --sim http://127.0.0.1:PORT [--refreshes N] [--concurrency C]
//                      [--client-id X] [--client-secret Y] [--user-type Location|Company]
//
// Prints two JSON lines on stdout:
//   {"event":"ready","ready_ms":..,"script_start_ms":..,"peak_rss_mib":..}
//       once the SDK is loaded and the client built (ms since process start)
//   {"event":"done","refreshes":N,"failures":F,"wall_s":..,"cpu_ms_per_refresh":..,
//    "peak_rss_mib":..,"peak_rss_mib_before_refreshes":..,"sdk_version":".."}
//       after N refreshes with at most C in flight; wall and CPU (user+system
//       of this process) cover the refresh loop only, not the seeding.
// Every grant is seeded fresh in the simulator and refreshed once through the
// SDK's ghl.oauth.refreshToken (grant_type=refresh_token).
// Exits non-zero if any refresh failed. Never prints a token.

const t0 = performance.now(); // ms since process start (performance.timeOrigin)

// A dynamic import, not a static one: static imports would run before t0.
const { createRequire } = await import('node:module');
const require = createRequire(import.meta.url);

function usage(msg) {
  if (msg) process.stderr.write(`sdk-bench: ${msg}\n`);
  process.stderr.write(
    'usage: node sdk-bench.mjs --sim URL [--refreshes N] [--concurrency C]\n' +
      '       [--client-id X] [--client-secret Y] [--user-type Location|Company]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    sim: null,
    refreshes: 2000,
    concurrency: 8,
    clientId: 'sim-client-id',
    clientSecret: 'sim-client-secret',
    userType: 'Location',
  };
  const names = {
    '--sim': 'sim',
    '--refreshes': 'refreshes',
    '--concurrency': 'concurrency',
    '--client-id': 'clientId',
    '--client-secret': 'clientSecret',
    '--user-type': 'userType',
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (a === '-h' || a === '--help') usage();
    const k = names[a];
    if (!k) usage(`unknown argument ${JSON.stringify(a)}`);
    if (v === undefined) {
      if (i + 1 >= argv.length) usage(`${a} expects a value`);
      v = argv[++i];
    }
    o[k] = v;
  }
  if (!o.sim) usage('--sim is required');
  o.sim = o.sim.replace(/\/+$/, '');
  for (const k of ['refreshes', 'concurrency']) {
    const n = Number(o[k]);
    if (!Number.isInteger(n) || n < 1) usage(`--${k} expects a positive integer`);
    o[k] = n;
  }
  if (o.userType !== 'Location' && o.userType !== 'Company') {
    usage('--user-type must be Location or Company');
  }
  return o;
}

const opts = parseArgs(process.argv.slice(2));

// ---- require and construct, the way an app would ---------------------------
const sdk = require('@gohighlevel/api-client');
const { HighLevel } = sdk;
const ghl = new HighLevel({
  clientId: opts.clientId,
  clientSecret: opts.clientSecret,
  // Failures are reported below without the SDK's own error logging.
  logLevel: 'none',
});
// The SDK has no base-URL option or environment variable: every service
// shares one axios instance created with baseURL = HighLevel.BASE_URL
// (private static, https://services.leadconnectorhq.com). Its public
// getHttpClient() ("for advanced usage") returns that instance; axios merges
// instance defaults into every request, so this points all SDK calls,
// including ghl.oauth, at the simulator without touching the SDK.
ghl.getHttpClient().defaults.baseURL = opts.sim;
const readyMs = performance.now();
const sdkVersion = require('@gohighlevel/api-client/package.json').version;
// script_start_ms: when this file began to run (node's own start-up before
// it); ready_ms - script_start_ms is the SDK's require-and-construct.
process.stdout.write(
  `${JSON.stringify({
    event: 'ready',
    ready_ms: round(readyMs, 3),
    script_start_ms: round(t0, 3),
    peak_rss_mib: maxRssMib(),
  })}\n`,
);

function maxRssMib() {
  return round(process.resourceUsage().maxRSS / 1024, 2);
}

function round(x, d) {
  const m = 10 ** d;
  return Math.round(x * m) / m;
}

// ---- seed (not measured) -----------------------------------------------------
// Plain node:http (which axios already loaded) so seeding adds no client
// library of its own to the process.
const http = require('node:http');

function postJson(url, body) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': data.length },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) {
            reject(new Error(`POST ${url} answered ${res.statusCode}`));
            return;
          }
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error(`POST ${url} answered invalid JSON`));
          }
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

async function seed(n) {
  const run = `${process.pid}-${Date.now().toString(36)}`;
  const grants = [];
  for (let i = 0; i < n; i++) {
    grants.push(
      opts.userType === 'Location'
        ? { userType: 'Location', companyId: `bench-co-${run}`, locationId: `bench-loc-${run}-${i}` }
        : { userType: 'Company', companyId: `bench-co-${run}-${i}` },
    );
  }
  const out = [];
  const batch = 500;
  for (let i = 0; i < grants.length; i += batch) {
    const answer = await postJson(`${opts.sim}/_sim/seed`, grants.slice(i, i + batch));
    if (!Array.isArray(answer) || answer.length !== Math.min(batch, grants.length - i)) {
      throw new Error('/_sim/seed answered an unexpected shape');
    }
    for (const g of answer) {
      if (typeof g.refresh_token !== 'string' || !g.refresh_token) {
        throw new Error('/_sim/seed answered a grant without refresh_token');
      }
      out.push(g.refresh_token);
    }
  }
  return out;
}

// ---- refresh (measured) --------------------------------------------------------
function describeError(e) {
  // Status and the simulator's message only: never the request (it carries
  // the refresh token and client secret) nor a response body with tokens.
  const status = e?.statusCode ?? e?.response?.status;
  const msg = typeof e?.message === 'string' ? e.message.slice(0, 160) : String(e).slice(0, 160);
  return `${e?.name ?? 'Error'}${status ? ` ${status}` : ''}: ${msg}`;
}

async function main() {
  const tokens = await seed(opts.refreshes);
  const seededRssMib = maxRssMib();

  let next = 0;
  let failures = 0;
  let reported = 0;
  const fail = (i, why) => {
    failures++;
    if (reported++ < 5) process.stderr.write(`sdk-bench: refresh ${i} failed: ${why}\n`);
  };
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= tokens.length) return;
      const presented = tokens[i];
      try {
        const r = await ghl.oauth.refreshToken(
          presented,
          opts.clientId,
          opts.clientSecret,
          'refresh_token',
          opts.userType,
        );
        if (!r || typeof r.refresh_token !== 'string' || !r.refresh_token) {
          fail(i, 'answer carries no refresh_token');
        } else if (r.refresh_token === presented) {
          fail(i, 'answer carries the presented refresh_token, not a new one');
        } else if (typeof r.access_token !== 'string' || !r.access_token) {
          fail(i, 'answer carries no access_token');
        }
      } catch (e) {
        fail(i, describeError(e));
      }
    }
  }

  const cpu0 = process.cpuUsage();
  const w0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, tokens.length) }, worker));
  const wallMs = performance.now() - w0;
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000;

  const done = {
    event: 'done',
    refreshes: tokens.length,
    failures,
    wall_s: round(wallMs / 1000, 4),
    cpu_ms_per_refresh: round(cpuMs / tokens.length, 4),
    peak_rss_mib: maxRssMib(),
    peak_rss_mib_before_refreshes: seededRssMib,
    sdk_version: sdkVersion,
  };
  process.stdout.write(`${JSON.stringify(done)}\n`);
  process.exitCode = failures > 0 ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`sdk-bench: ${describeError(e)}\n`);
  process.exitCode = 1;
});
