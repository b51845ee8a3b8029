// Atomicity check for a DynamoDB stand-in: in each round, 12 concurrent
// conditional UpdateItems race on one item; exactly one may win. Two races:
//   version: ConditionExpression v = :expected, SET v = v + :one
//   lease:   attribute_not_exists(lease) OR lease_until < :now, SET lease, lease_until
// Every loser must see the winner's write in its ConditionalCheckFailed Item
// (ReturnValuesOnConditionCheckFailure=ALL_OLD), and the item must end with v = 1.
// Exits 1 on any round with more or fewer than one winner.
//
//   node dev/dynalite/atomicity.js http://127.0.0.1:PORT [rounds=200] [writers=12]
'use strict'
const http = require('http')

const endpoint = new URL(process.argv[2] || 'http://127.0.0.1:4567')
const rounds = Number(process.argv[3] || 200)
const writers = Number(process.argv[4] || 12)
const agent = new http.Agent({ keepAlive: true, maxSockets: writers })
const table = `atomicity-${process.pid}-${Date.now()}`

// The stand-ins check that a request is signed, not the signature.
function call (op, body) {
  const payload = JSON.stringify(body)
  const date = new Date().toISOString().replace(/[-:]|\.\d{3}/g, '')
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: endpoint.hostname, port: endpoint.port, path: '/', method: 'POST', agent,
      headers: {
        'Content-Type': 'application/x-amz-json-1.0',
        'Content-Length': Buffer.byteLength(payload),
        'X-Amz-Target': `DynamoDB_20120810.${op}`,
        'X-Amz-Date': date,
        Authorization: `AWS4-HMAC-SHA256 Credential=test/${date.slice(0, 8)}/us-east-1/dynamodb/aws4_request, ` +
          'SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00',
      },
    }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        resolve({ status: res.statusCode, body: text ? JSON.parse(text) : {} })
      })
    })
    req.on('error', reject)
    req.end(payload)
  })
}

async function ok (op, body) {
  const r = await call(op, body)
  if (r.status !== 200) throw new Error(`${op}: ${r.status} ${JSON.stringify(r.body)}`)
  return r.body
}

const isCcf = (r) => r.status === 400 && String(r.body.__type).endsWith('ConditionalCheckFailedException')

async function race (kind, round) {
  const pk = { S: `${kind}-${round}` }
  await ok('PutItem', { TableName: table, Item: { pk, v: { N: '0' } } })
  const now = Date.now()
  const results = await Promise.all(Array.from({ length: writers }, (_, w) => call('UpdateItem', kind === 'version' ? {
    TableName: table, Key: { pk },
    ConditionExpression: '#v = :expected',
    UpdateExpression: 'SET #v = #v + :one, #w = :w',
    ExpressionAttributeNames: { '#v': 'v', '#w': 'writer' },
    ExpressionAttributeValues: { ':expected': { N: '0' }, ':one': { N: '1' }, ':w': { N: String(w) } },
    ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
  } : {
    TableName: table, Key: { pk },
    ConditionExpression: 'attribute_not_exists(#lease) OR #until < :now',
    UpdateExpression: 'SET #lease = :me, #until = :until, #v = #v + :one',
    ExpressionAttributeNames: { '#lease': 'lease', '#until': 'lease_until', '#v': 'v' },
    ExpressionAttributeValues: { ':now': { N: String(now) }, ':until': { N: String(now + 60000) },
      ':me': { S: `writer-${w}` }, ':one': { N: '1' } },
    ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
  })))
  const wins = results.filter((r) => r.status === 200).length
  const other = results.filter((r) => r.status !== 200 && !isCcf(r))
  if (other.length) throw new Error(`unexpected answer: ${JSON.stringify(other[0])}`)
  const final = (await ok('GetItem', { TableName: table, Key: { pk }, ConsistentRead: true })).Item
  const losersSawWinner = results.filter(isCcf).every((r) => r.body.Item && r.body.Item.v && r.body.Item.v.N === '1')
  return { wins, v: final.v.N, losersSawWinner }
}

async function main () {
  await ok('CreateTable', {
    TableName: table, BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [ { AttributeName: 'pk', AttributeType: 'S' } ],
    KeySchema: [ { AttributeName: 'pk', KeyType: 'HASH' } ],
  })
  for (let i = 0; i < 50; i++) {
    const d = await ok('DescribeTable', { TableName: table })
    if (d.Table.TableStatus === 'ACTIVE') break
    await new Promise((r) => setTimeout(r, 100))
  }
  let failed = 0
  for (const kind of [ 'version', 'lease' ]) {
    let multi = 0, none = 0, badFinal = 0, noItem = 0
    const t = process.hrtime.bigint()
    for (let round = 0; round < rounds; round++) {
      const r = await race(kind, round)
      if (r.wins > 1) multi++
      if (r.wins === 0) none++
      if (r.v !== '1') badFinal++
      if (!r.losersSawWinner) noItem++
    }
    const ms = Number(process.hrtime.bigint() - t) / 1e6
    console.log(`${kind}: rounds=${rounds} writers=${writers} more_than_one_won=${multi} none_won=${none} ` +
      `final_v_not_1=${badFinal} loser_without_winner_item=${noItem} ` +
      `ms_per_update=${(ms / (rounds * (writers + 2))).toFixed(2)}`)
    failed += multi + none + badFinal + noItem
  }
  await call('DeleteTable', { TableName: table })
  agent.destroy()
  console.log(failed ? 'FAILED' : 'ok: exactly one winner in every round')
  process.exit(failed ? 1 : 0)
}

main().catch((e) => { console.error(e); process.exit(1) })
