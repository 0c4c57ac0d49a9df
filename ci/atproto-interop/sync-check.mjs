// A second reader of one subscribeRepos firehose: Bluesky's own consumer library,
// @atproto/sync's Firehose (the version @atproto/dev-env pins, in package-lock.json), as an
// AppView or feed generator would run it. check.py (the Python SDK) is the main check; this
// one adds what that client cannot see: the lexicon validation of Bluesky's TypeScript
// decoder, which needs CIDs as DAG-CBOR links (tag 42) where the lexicon says cid-link
// (the Python decoder turns a link and a plain byte string alike into bytes), and the
// authenticated path: each commit's signature checked against the repo's signing key from
// the PLC directory, and each op proven against the commit's MST (verifyProofs).
//
//   node sync-check.mjs --name NAME --service ws://HOST:PORT --plc http://localhost:PORT
//                       --expected DIR/expected.jsonl [--timeout S]
//
// It reads from cursor 0 and passes (exit 0) once expected.jsonl ends with its "done" line
// and every op of every commit listed there (commits without ops produce no event in this
// library) has arrived as an event with the same commit CID, rev, record CID and text, and
// nothing went to onError; it fails (exit 1) on the first subscription error (the library
// would reconnect after 3 s, from cursor 0 again), on any validation or parse error, and at
// --timeout with what is missing.
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import { IdResolver } from '@atproto/identity'
import { Firehose, MemoryRunner } from '@atproto/sync'

const { values: args } = parseArgs({
  options: {
    name: { type: 'string' },
    service: { type: 'string' },
    plc: { type: 'string' },
    expected: { type: 'string' },
    timeout: { type: 'string', default: '30' },
  },
})
if (!args.name || !args.service || !args.plc || !args.expected) {
  console.error('usage: node sync-check.mjs --name NAME --service ws://HOST:PORT --plc URL --expected FILE')
  process.exit(2)
}
const name = args.name
const started = Date.now()
const problems = []
const seen = new Map() // did rev path -> event summary
const counts = {}
let subscriptionError = null
let done = null
let producerFailed = null
let expected = new Map() // did rev path -> { cid, commit, action, text }

const readExpected = () => {
  let text
  try {
    text = fs.readFileSync(args.expected, 'utf8')
  } catch {
    return
  }
  const next = new Map()
  for (const line of text.split('\n')) {
    if (!line.endsWith('}')) continue
    const row = JSON.parse(line)
    if (row.kind === 'commit') {
      for (const op of row.ops) {
        next.set(`${row.did} ${row.rev} ${op.path}`, { ...op, commit: row.cid, phase: row.phase })
      }
    } else if (row.kind === 'done') {
      done = row
    } else if (row.kind === 'failed') {
      producerFailed = row.error
    }
  }
  expected = next
}

const describe = (err) => {
  let text = err?.message ?? String(err)
  let cause = err?.cause
  while (cause) {
    text += `: ${cause.message ?? String(cause)}`
    cause = cause.cause
  }
  return text.slice(0, 400)
}

const firehose = new Firehose({
  service: args.service,
  idResolver: new IdResolver({ plcUrl: args.plc, timeout: 3000 }),
  // The cursor through a runner: this version's plain `getCursor` option puts the function
  // itself, not its value, into the query string.
  runner: new MemoryRunner({ startCursor: 0 }),
  // Handles are *.test names with no DNS; the DID documents come from the PLC directory.
  unauthenticatedHandles: true,
  handleEvent: async (evt) => {
    counts[evt.event] = (counts[evt.event] ?? 0) + 1
    if (evt.event !== 'create' && evt.event !== 'update' && evt.event !== 'delete') return
    const path = `${evt.collection}/${evt.rkey}`
    const key = `${evt.did} ${evt.rev} ${path}`
    if (seen.has(key)) problems.push(`seq ${evt.seq} ${key}: arrived twice`)
    seen.set(key, {
      seq: evt.seq,
      action: evt.event,
      commit: evt.commit.toString(),
      cid: evt.event === 'delete' ? null : evt.cid.toString(),
      text: evt.record?.text,
    })
  },
  onError: (err) => {
    if (err?.constructor?.name === 'FirehoseSubscriptionError') {
      subscriptionError = describe(err)
    } else {
      problems.push(`${err?.constructor?.name ?? 'error'}: ${describe(err)}`)
    }
  },
})
firehose.start()

const finish = async (outcome) => {
  readExpected()
  const all = [...problems]
  if (outcome === 'timeout') all.unshift(`timed out after ${args.timeout} s`)
  if (outcome === 'producer failed') all.unshift(`pds.mjs failed: ${producerFailed}`)
  if (outcome === 'subscription') all.unshift(`the subscription failed: ${subscriptionError}`)
  let matched = 0
  for (const [key, want] of expected) {
    const got = seen.get(key)
    if (!got) {
      all.push(`missing: the ${want.phase} op ${want.action} ${key} (commit ${want.commit})`)
      continue
    }
    matched += 1
    if (got.commit !== want.commit) all.push(`${key}: commit ${got.commit}, the PDS reported ${want.commit}`)
    if (got.action !== want.action) all.push(`${key}: ${got.action}, the PDS wrote ${want.action}`)
    if (got.cid !== want.cid) all.push(`${key}: record ${got.cid}, the PDS wrote ${want.cid}`)
    if (want.text !== undefined && got.text !== want.text) {
      all.push(`${key}: text ${JSON.stringify(got.text)}, written ${JSON.stringify(want.text)}`)
    }
  }
  if (done) {
    for (const key of seen.keys()) if (!expected.has(key)) all.push(`${key}: an op the PDS did not report`)
  }
  const types = Object.entries(counts)
    .sort()
    .map(([k, n]) => `${n} ${k}`)
    .join(', ')
  const secs = ((Date.now() - started) / 1000).toFixed(1)
  console.log(
    `${name}: ${all.length ? 'FAIL' : 'OK'}: ${matched}/${expected.size} ops of the commits with ops seen, ` +
      `signatures and MST proofs verified (${types || 'no events'}) in ${secs} s`,
  )
  for (const p of all.slice(0, 15)) console.log(`${name}:   ${p}`)
  if (all.length > 15) console.log(`${name}:   ... and ${all.length - 15} more problems`)
  // destroy() waits for the subscription loop; do not let a stuck socket hold the verdict.
  await Promise.race([firehose.destroy(), new Promise((r) => setTimeout(r, 1000))])
  process.exit(all.length ? 1 : 0)
}

const deadline = started + Number(args.timeout) * 1000
let completeAt = null
const tick = () => {
  readExpected()
  if (producerFailed !== null) return finish('producer failed')
  if (subscriptionError !== null) return finish('subscription')
  const complete = done !== null && [...expected.keys()].every((k) => seen.has(k))
  if (complete) {
    completeAt ??= Date.now()
    if (Date.now() - completeAt >= 500) return finish('complete')
  }
  if (Date.now() > deadline) return finish('timeout')
  setTimeout(tick, 50)
}
tick()
