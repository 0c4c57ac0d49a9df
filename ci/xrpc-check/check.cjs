// Calls a running relay's XRPC surface with the atproto client (@atproto/api, pinned in
// package-lock.json) and checks every answer: requestCrawl, listHosts page by page,
// getHostStatus (found and HostNotFound), _health, and an unknown method. The relay's
// address is the first argument; it must run on a fresh database.
'use strict';
const assert = require('node:assert/strict');
const { AtpAgent } = require('@atproto/api');

async function refusal(call) {
  try {
    await call();
  } catch (error) {
    return error;
  }
  assert.fail('the call was expected to fail');
}

async function main() {
  const service = process.argv[2];
  const agent = new AtpAgent({ service });
  const sync = agent.com.atproto.sync;
  const names = ['pds1.example.com', 'pds2.example.com', 'pds3.example.com', 'pds4.example.com', 'pds5.example.com'];
  for (const hostname of names) {
    const crawled = await sync.requestCrawl({ hostname });
    assert.equal(crawled.success, true, hostname);
  }
  const bad = await refusal(() => sync.requestCrawl({ hostname: '10.0.0.1' }));
  assert.equal(bad.error, 'InvalidRequest');

  const walked = [];
  let cursor;
  let pages = 0;
  do {
    const page = await sync.listHosts({ limit: 2, cursor });
    pages += 1;
    assert.ok(page.data.hosts.length <= 2);
    for (const host of page.data.hosts) {
      assert.ok(['active', 'idle', 'offline', 'throttled', 'banned'].includes(host.status), JSON.stringify(host));
      walked.push(host.hostname);
    }
    cursor = page.data.cursor;
  } while (cursor);
  assert.deepEqual(walked, names);
  assert.equal(pages, 3);
  const tooLarge = await refusal(() => sync.listHosts({ limit: 1001 }));
  assert.equal(tooLarge.error, 'InvalidRequest');

  const status = await sync.getHostStatus({ hostname: 'pds3.example.com' });
  assert.equal(status.data.hostname, 'pds3.example.com');
  assert.ok(typeof status.data.status === 'string');
  const missing = await refusal(() => sync.getHostStatus({ hostname: 'nowhere.example.com' }));
  assert.equal(missing.error, 'HostNotFound');
  assert.equal(missing.constructor.name, 'HostNotFoundError', 'the lexicon error class');

  const health = await fetch(`${service}/xrpc/_health`);
  assert.equal(health.status, 200);
  assert.deepEqual(Object.keys(await health.json()), ['version']);
  // Per-account state: nothing has been ingested here, so every account is unknown.
  const repos = await sync.listRepos({ limit: 10 });
  assert.deepEqual(repos.data, { repos: [] });
  const noRepo = await refusal(() => sync.getRepoStatus({ did: 'did:plc:abc' }));
  assert.equal(noRepo.error, 'RepoNotFound');
  const noCommit = await refusal(() => sync.getLatestCommit({ did: 'did:plc:abc' }));
  assert.equal(noCommit.error, 'RepoNotFound');
  assert.equal(noCommit.constructor.name, 'RepoNotFoundError', 'the lexicon error class');
  const unknown = await refusal(() => sync.getRepo({ did: 'did:plc:abc' }));
  assert.equal(unknown.error, 'MethodNotImplemented');
  console.log(`xrpc check: ${names.length} crawls, ${pages} listHosts pages, getHostStatus, listRepos, getRepoStatus, getLatestCommit, _health, unknown method: all as the lexicons say`);
}

main().catch((error) => {
  console.error('xrpc check failed:', error);
  process.exit(1);
});
