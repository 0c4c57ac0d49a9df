// Starts an in-memory PLC directory and Bluesky's reference PDS on loopback (@atproto/dev-env,
// pinned in package-lock.json), makes accounts and writes, and records every commit the PDS
// made, as the PDS itself reported it, so that a firehose client can be checked against it.
//
//   node pds.mjs --work DIR --pds-port N --plc-port N [--accounts N]
//
// Files it writes in DIR (all JSON, one object a line where .jsonl):
//   pds.json        {"pdsPort", "plcPort", "pdsUrl"}, once both services listen
//   expected.jsonl  {"kind":"account", did, handle}
//                   {"kind":"commit", did, rev, cid, phase, ops:[{action, path, cid, text?}]}
//                   {"kind":"done", accounts, posts, commits}  (last line: the list is complete)
//   pds-data/       the PDS's sqlite databases and blob store
// Phase "backfill" (accounts, first posts, profiles) is written straight away; phase "live"
// (more posts, likes, follows, an update, a delete, a three-write applyWrites) waits until
// the file DIR/go exists, which run.sh makes once every firehose reader is connected, so each
// reader sees both a replay from cursor 0 and live events. It then stays up until SIGTERM/SIGINT.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { TestNetworkNoAppView } from '@atproto/dev-env'

const { values: args } = parseArgs({
  options: {
    work: { type: 'string' },
    'pds-port': { type: 'string' },
    'plc-port': { type: 'string' },
    accounts: { type: 'string', default: '3' },
    'go-timeout-ms': { type: 'string', default: '30000' },
  },
})
if (!args.work || !args['pds-port'] || !args['plc-port']) {
  console.error('usage: node pds.mjs --work DIR --pds-port N --plc-port N [--accounts N]')
  process.exit(2)
}
const work = args.work
const pdsPort = Number(args['pds-port'])
const plcPort = Number(args['plc-port'])
const accountCount = Number(args.accounts)
const expectedFile = path.join(work, 'expected.jsonl')
const goFile = path.join(work, 'go')
const dataDir = path.join(work, 'pds-data')
fs.mkdirSync(path.join(dataDir, 'blobs'), { recursive: true })
fs.writeFileSync(expectedFile, '')

const record = (obj) => fs.appendFileSync(expectedFile, JSON.stringify(obj) + '\n')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

let net
let stopping = false
const stop = async (code) => {
  if (stopping) return
  stopping = true
  try {
    if (net) await net.close()
  } catch (err) {
    console.error('pds.mjs: closing the network failed:', err?.message ?? err)
  }
  process.exit(code)
}
process.on('SIGTERM', () => stop(0))
process.on('SIGINT', () => stop(0))

const counts = { accounts: 0, posts: 0, commits: 0 }

// One commit as the PDS reported it in the write's response: `commit: {cid, rev}`.
const commitOf = (did, phase, commit, ops) => {
  if (!commit?.cid || !commit?.rev) {
    throw new Error(`the PDS's response for a write to ${did} has no commit {cid, rev}`)
  }
  counts.commits += 1
  record({ kind: 'commit', did, rev: commit.rev, cid: commit.cid, phase, ops })
}
const atPath = (uri) => {
  // at://did/collection/rkey -> collection/rkey
  const parts = uri.replace('at://', '').split('/')
  return `${parts[1]}/${parts[2]}`
}

const main = async () => {
  net = await TestNetworkNoAppView.create({
    plc: { port: plcPort },
    pds: {
      port: pdsPort,
      hostname: 'localhost',
      dataDirectory: dataDir,
      blobstoreDiskLocation: path.join(dataDir, 'blobs'),
    },
  })
  fs.writeFileSync(
    path.join(work, 'pds.json'),
    JSON.stringify({ pdsPort: net.pds.port, plcPort: net.plc.port, pdsUrl: net.pds.url }) + '\n',
  )

  // ---- phase "backfill": accounts, two posts and a profile each
  const users = []
  for (let i = 0; i < accountCount; i++) {
    const handle = `user${i}.test`
    const agent = net.pds.getClient()
    const res = await agent.createAccount({
      email: `user${i}@example.com`,
      handle,
      password: `password-${i}`,
    })
    const did = res.data.did
    counts.accounts += 1
    record({ kind: 'account', did, handle })
    // The repo's first commit (no ops) is sequenced by the account creation; the response
    // does not carry it, so ask the PDS for its latest commit before anything else is written.
    const latest = await agent.com.atproto.sync.getLatestCommit({ did })
    commitOf(did, 'backfill', latest.data, [])
    users.push({ did, handle, agent, posts: [] })
  }
  const post = async (u, phase, text) => {
    const rec = { $type: 'app.bsky.feed.post', text, createdAt: new Date().toISOString() }
    const res = await u.agent.com.atproto.repo.createRecord({
      repo: u.did,
      collection: 'app.bsky.feed.post',
      record: rec,
    })
    counts.posts += 1
    u.posts.push(res.data)
    commitOf(u.did, phase, res.data.commit, [
      { action: 'create', path: atPath(res.data.uri), cid: res.data.cid, text },
    ])
    return res.data
  }
  for (const u of users) {
    await post(u, 'backfill', `hello from ${u.handle}`)
    await post(u, 'backfill', `second post from ${u.handle}`)
    const res = await u.agent.com.atproto.repo.putRecord({
      repo: u.did,
      collection: 'app.bsky.actor.profile',
      rkey: 'self',
      record: { $type: 'app.bsky.actor.profile', displayName: `User ${u.handle}` },
    })
    commitOf(u.did, 'backfill', res.data.commit, [
      { action: 'create', path: 'app.bsky.actor.profile/self', cid: res.data.cid },
    ])
  }
  record({ kind: 'phase', phase: 'backfill', ...counts })

  // ---- wait for run.sh to say every reader is connected
  const deadline = Date.now() + Number(args['go-timeout-ms'])
  while (!fs.existsSync(goFile)) {
    if (Date.now() > deadline) throw new Error(`no ${goFile} within ${args['go-timeout-ms']} ms`)
    await sleep(50)
  }

  // ---- phase "live"
  for (const [i, u] of users.entries()) {
    const other = users[(i + 1) % users.length]
    await post(u, 'live', `live post from ${u.handle}`)
    const like = await u.agent.com.atproto.repo.createRecord({
      repo: u.did,
      collection: 'app.bsky.feed.like',
      record: {
        $type: 'app.bsky.feed.like',
        subject: { uri: other.posts[0].uri, cid: other.posts[0].cid },
        createdAt: new Date().toISOString(),
      },
    })
    commitOf(u.did, 'live', like.data.commit, [
      { action: 'create', path: atPath(like.data.uri), cid: like.data.cid },
    ])
    const follow = await u.agent.com.atproto.repo.createRecord({
      repo: u.did,
      collection: 'app.bsky.graph.follow',
      record: { $type: 'app.bsky.graph.follow', subject: other.did, createdAt: new Date().toISOString() },
    })
    commitOf(u.did, 'live', follow.data.commit, [
      { action: 'create', path: atPath(follow.data.uri), cid: follow.data.cid },
    ])
    // an update
    const prof = await u.agent.com.atproto.repo.putRecord({
      repo: u.did,
      collection: 'app.bsky.actor.profile',
      rkey: 'self',
      record: { $type: 'app.bsky.actor.profile', displayName: `User ${u.handle} (renamed)` },
    })
    commitOf(u.did, 'live', prof.data.commit, [
      { action: 'update', path: 'app.bsky.actor.profile/self', cid: prof.data.cid },
    ])
    // a delete
    const gone = u.posts[1]
    const del = await u.agent.com.atproto.repo.deleteRecord({
      repo: u.did,
      collection: 'app.bsky.feed.post',
      rkey: gone.uri.split('/').pop(),
    })
    commitOf(u.did, 'live', del.data.commit, [{ action: 'delete', path: atPath(gone.uri), cid: null }])
    // three creates in one commit
    const texts = [1, 2, 3].map((n) => `batch post ${n} from ${u.handle}`)
    const batch = await u.agent.com.atproto.repo.applyWrites({
      repo: u.did,
      writes: texts.map((text) => ({
        $type: 'com.atproto.repo.applyWrites#create',
        collection: 'app.bsky.feed.post',
        value: { $type: 'app.bsky.feed.post', text, createdAt: new Date().toISOString() },
      })),
    })
    counts.posts += texts.length
    commitOf(
      u.did,
      'live',
      batch.data.commit,
      batch.data.results.map((r, k) => ({ action: 'create', path: atPath(r.uri), cid: r.cid, text: texts[k] })),
    )
  }
  record({ kind: 'done', ...counts })
  console.log(`pds.mjs: ${counts.accounts} accounts, ${counts.posts} posts, ${counts.commits} commits written`)
}

main().catch((err) => {
  console.error('pds.mjs failed:', err?.stack ?? err)
  record({ kind: 'failed', error: String(err?.message ?? err) })
  stop(1)
})
