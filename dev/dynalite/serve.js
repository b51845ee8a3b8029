// dynalite (DynamoDB in Node, in memory) on 127.0.0.1:PORT, with the two
// things this project needs that dynalite 4.0.0 lacks:
//   - UpdateTimeToLive (schema::create_table sets the TTL attribute):
//     accepted and echoed; nothing expires here.
//   - ReturnValuesOnConditionCheckFailure=ALL_OLD on PutItem, UpdateItem and
//     DeleteItem (the lease and code claims read the holder from the failed
//     write): the stored item is returned in the error's Item, as DynamoDB does.
// GET /__stats: the service time per operation (see below).
// Conditional writes are atomic in dynalite: each takes a per-key lock
// around read, condition check and write (see atomicity.js).
//
//   node dev/dynalite/serve.js PORT
'use strict'
const { monitorEventLoopDelay } = require('perf_hooks')
const dynalite = require('dynalite')
const db = require('dynalite/db')

const port = Number(process.argv[2])
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node serve.js PORT')
  process.exit(2)
}

for (const action of [ 'putItem', 'updateItem', 'deleteItem' ]) {
  require(`dynalite/validations/${action}`).types.ReturnValuesOnConditionCheckFailure = {
    type: 'String',
    enum: [ 'ALL_OLD', 'NONE' ],
  }
}
const checkConditional = db.checkConditional
db.checkConditional = function (data, existing) {
  const err = checkConditional(data, existing)
  if (err && existing && data.ReturnValuesOnConditionCheckFailure === 'ALL_OLD') err.body.Item = existing
  return err
}

// The stand-in's own service time: per operation, from the request's whole
// body having arrived to the end of its answer (queueing in this one event
// loop included; the wait for the body, the client's and the network's, is
// counted apart as "(body wait)"), and the process's CPU time.
// GET /__stats answers it as JSON; GET /__stats?reset=1 also starts a new period.
const LOOP_RESOLUTION_MS = 5
const loopDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS })
loopDelay.enable()
let stats = newStats()
function newStats () {
  loopDelay.reset()
  return { since: Date.now(), cpu: process.cpuUsage(), ops: {} }
}
function record (op, ms) {
  const s = stats.ops[op] || (stats.ops[op] = { n: 0, total_ms: 0, max_ms: 0, hist: new Array(10000).fill(0) })
  s.n++
  s.total_ms += ms
  if (ms > s.max_ms) s.max_ms = ms
  s.hist[Math.min(9999, Math.floor(ms * 10))]++ // 0.1 ms buckets up to 1 s
}
function quantile (s, q) {
  let seen = 0
  for (let i = 0; i < s.hist.length; i++) {
    seen += s.hist[i]
    if (seen >= q * s.n) return (i + 1) / 10
  }
  return s.max_ms
}
function report () {
  const secs = (Date.now() - stats.since) / 1000
  const cpu = process.cpuUsage(stats.cpu)
  const cpuMs = (cpu.user + cpu.system) / 1000
  const ops = {}
  let n = 0
  for (const [ op, s ] of Object.entries(stats.ops)) {
    if (!op.startsWith('(')) n += s.n
    ops[op] = { n: s.n, mean_ms: +(s.total_ms / s.n).toFixed(3), p50_ms: quantile(s, 0.5),
      p99_ms: quantile(s, 0.99), max_ms: +s.max_ms.toFixed(3) }
  }
  // How late this one thread's event loop ran a 5 ms timer: the wait any
  // request had before dynalite could start on it.
  const late = (ns) => +Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS).toFixed(1)
  const lag = { p50_ms: late(loopDelay.percentile(50)), p99_ms: late(loopDelay.percentile(99)), max_ms: late(loopDelay.max) }
  return { seconds: +secs.toFixed(1), requests: n, cpu_ms: Math.round(cpuMs),
    cpu_share: +(cpuMs / 1000 / secs).toFixed(3), cpu_ms_per_request: n ? +(cpuMs / n).toFixed(3) : null,
    event_loop_lag: lag, ops }
}

const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 })
const handle = server.listeners('request')[0]
server.removeAllListeners('request')
server.on('request', (req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/__stats')) {
    const body = JSON.stringify(report())
    if (req.url.includes('reset=1')) stats = newStats()
    res.writeHead(200, { 'Content-Type': 'application/json' })
    return res.end(body)
  }
  const arrived = process.hrtime.bigint()
  let bodyAt = arrived
  const op = String(req.headers['x-amz-target'] || '').split('.')[1] || 'unknown'
  req.on('end', () => { bodyAt = process.hrtime.bigint() })
  res.on('finish', () => {
    record(op, Number(process.hrtime.bigint() - bodyAt) / 1e6)
    record('(body wait)', Number(bodyAt - arrived) / 1e6)
  })
  if (op !== 'UpdateTimeToLive') return handle(req, res)
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    let spec
    try {
      spec = JSON.parse(Buffer.concat(chunks).toString()).TimeToLiveSpecification
    }
    catch {
      spec = undefined
    }
    const body = JSON.stringify(spec ? { TimeToLiveSpecification: spec } : {
      __type: 'com.amazon.coral.validate#ValidationException',
      message: 'TimeToLiveSpecification is required',
    })
    res.writeHead(spec ? 200 : 400, {
      'Content-Type': 'application/x-amz-json-1.0',
      'Content-Length': Buffer.byteLength(body),
      'x-amzn-RequestId': require('crypto').randomUUID(),
    })
    res.end(body)
  })
})
// Keep-alive longer than the SDK's idle pool, so pooled connections are not
// closed under it (Node's default is 5 s).
server.keepAliveTimeout = 65000
server.headersTimeout = 66000
server.listen(port, '127.0.0.1', () => console.log(`dynalite on http://127.0.0.1:${port}`))
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
