// Service time of a DynamoDB stand-in at idle: N sequential conditional
// UpdateItems (v = :expected, SET v = v + 1) on one item, one in flight.
// Prints the client's round trip and, from dynalite's GET /__stats
// (dev/dynalite/serve.js), the server's own time and CPU per request.
//
//   node dev/dynalite/probe.js http://127.0.0.1:PORT [n=2000]
'use strict'
const http = require('http')

const endpoint = new URL(process.argv[2] || 'http://127.0.0.1:4567')
const n = Number(process.argv[3] || 2000)
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
const table = `probe-${process.pid}-${Date.now()}`

function request (method, path, headers, payload) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: endpoint.hostname, port: endpoint.port, path, method, agent, headers }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString() || '{}') }))
    })
    req.on('error', reject)
    req.end(payload)
  })
}

async function call (op, body) {
  const payload = JSON.stringify(body)
  const date = new Date().toISOString().replace(/[-:]|\.\d{3}/g, '')
  const r = await request('POST', '/', {
    'Content-Type': 'application/x-amz-json-1.0',
    'Content-Length': Buffer.byteLength(payload),
    'X-Amz-Target': `DynamoDB_20120810.${op}`,
    'X-Amz-Date': date,
    Authorization: `AWS4-HMAC-SHA256 Credential=test/${date.slice(0, 8)}/us-east-1/dynamodb/aws4_request, ` +
      'SignedHeaders=host;x-amz-date;x-amz-target, Signature=00',
  }, payload)
  if (r.status !== 200) throw new Error(`${op}: ${r.status} ${JSON.stringify(r.body)}`)
  return r.body
}

async function main () {
  await call('CreateTable', {
    TableName: table, BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [ { AttributeName: 'pk', AttributeType: 'S' } ],
    KeySchema: [ { AttributeName: 'pk', KeyType: 'HASH' } ],
  })
  await new Promise((r) => setTimeout(r, 600))
  const pk = { S: 'probe' }
  await call('PutItem', { TableName: table, Item: { pk, v: { N: '0' }, pad: { S: 'x'.repeat(1500) } } })
  await request('GET', '/__stats?reset=1', {})
  const times = []
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint()
    await call('UpdateItem', {
      TableName: table, Key: { pk },
      ConditionExpression: '#v = :expected',
      UpdateExpression: 'SET #v = #v + :one',
      ExpressionAttributeNames: { '#v': 'v' },
      ExpressionAttributeValues: { ':expected': { N: String(i) }, ':one': { N: '1' } },
    })
    times.push(Number(process.hrtime.bigint() - t) / 1e6)
  }
  const server = (await request('GET', '/__stats', {})).body
  times.sort((a, b) => a - b)
  const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(3)
  console.log(`round_trip: n=${n} p50_ms=${q(0.5)} p99_ms=${q(0.99)} mean_ms=${(times.reduce((a, b) => a + b, 0) / n).toFixed(3)}`)
  if (server.ops) {
    const u = server.ops.UpdateItem
    console.log(`server: UpdateItem mean_ms=${u.mean_ms} p50_ms=${u.p50_ms} p99_ms=${u.p99_ms} cpu_ms_per_request=${server.cpu_ms_per_request}`)
  }
  await call('DeleteTable', { TableName: table })
  agent.destroy()
}

main().catch((e) => { console.error(e); process.exit(1) })
