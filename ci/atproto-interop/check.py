"""Checks one com.atproto.sync.subscribeRepos firehose with a third-party client.

The client is MarshalX's Python atproto SDK (PyPI `atproto`, pinned in requirements.txt):
its FirehoseSubscribeReposClient reads the frames, its parse_subscribe_repos_message turns each
into the lexicon's model (pydantic, strict types), CAR.from_bytes reads `blocks`, and its record
models decode the records. Nothing here decodes CBOR by hand.

    check.py --name NAME --url ws://HOST:PORT --expected DIR/expected.jsonl
             [--connected-file PATH] [--dense-seq] [--timeout S]

It subscribes with cursor=0, and passes (exit 0) once expected.jsonl (written by pds.mjs) ends
with its "done" line and every commit listed there has arrived exactly once, decodable, with the
same commit CID and ops, plus a short grace period for late duplicates. It fails (exit 1) on the
first connection error (no reconnects: the client's reconnect would replay from cursor 0), on
any frame that does not decode, and at --timeout with the list of what is missing.

Checked on every #commit (on top of what the client itself checks):
  - the model parses (the client's lexicon model: seq int, repo, rev, commit CID, blocks bytes,
    ops, blobs list, rebase and tooBig bools, time string; since and prevData optional);
  - blocks is a CAR whose first root is the commit CID and which holds the commit block;
  - every block's CID but the commit block's is sha256 of the block re-encoded by the client's
    own DAG-CBOR encoder (libipld), i.e. the hash is right and the block is canonical
    DAG-CBOR: the client's CAR reader does not check hashes itself. The commit block is left
    out because the round trip cannot reproduce it: libipld decodes a link (tag 42) and a
    byte string alike to bytes, and its encoder writes any bytes that parse as a CID as a
    link, which the commit's 64 random signature bytes do about once in 1,100 commits.
    sync-check.mjs (@atproto/sync) checks the commit blocks of the commits with ops;
  - the commit block names the same did and rev, version 3, and has data and sig;
  - each create/update op has a cid whose block is in the CAR and decodes with the client's
    record model for its collection; a delete has no cid;
  - per repo, rev strictly increases, since is the previous rev seen and prevData the previous
    commit's data (when both commits are in the stream);
  - it matches the commit the PDS reported for (repo, rev): same commit CID, same ops, same text.
#sync: the model parses and its CAR's root is a commit block for the same did and rev.
seq: strictly increasing across all seq-bearing frames; with --dense-seq exactly 1, 2, 3, ...
Also a failure, though the stock client would carry on: a text message, a header without op
(both skipped silently by the client), a message type the client has no model for; an error
frame or undecodable CBOR (which stop the stock client). An #info is printed as a note.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import typing as t

import libipld
from atproto import CAR, CID, FirehoseSubscribeReposClient, models, parse_subscribe_repos_message
from atproto_client.models.record_registry import resolve_record_type
from atproto_client.models.utils import get_or_create
from websockets.exceptions import ConnectionClosedOK

DAG_CBOR = 0x71
SHA2_256 = 0x12
GRACE_S = 0.5
MAX_PROBLEMS_SHOWN = 15


def cid_str(value: t.Any) -> t.Optional[str]:
    """A CID as a string: from the client's CID, or from the bytes libipld decodes a link to."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return str(CID.decode(value))
    return str(value)


class Check:
    def __init__(self, name: str, expected_path: str, dense_seq: bool) -> None:
        self.name = name
        self.expected_path = expected_path
        self.dense_seq = dense_seq
        self.lock = threading.Lock()
        self.problems: t.List[str] = []
        self.notes: t.List[str] = []
        self.frames = 0
        self.by_type: t.Dict[str, int] = {}
        self.seqs: t.List[int] = []
        # (repo, rev) -> summary of the #commit as received
        self.commits: t.Dict[t.Tuple[str, str], dict] = {}
        self.last_commit: t.Dict[str, dict] = {}  # repo -> {rev, data}
        self.expected: t.Dict[t.Tuple[str, str], dict] = {}
        self.accounts: t.Dict[str, str] = {}
        self.done: t.Optional[dict] = None
        self.producer_failed: t.Optional[str] = None
        self._expected_offset = 0

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    # ---- expected.jsonl, as pds.mjs appends to it
    def read_expected(self) -> None:
        try:
            with open(self.expected_path, 'rb') as f:
                f.seek(self._expected_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b'\n')
        if end < 0:
            return
        self._expected_offset += end + 1
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            kind = row.get('kind')
            if kind == 'commit':
                self.expected[(row['did'], row['rev'])] = row
            elif kind == 'account':
                self.accounts[row['did']] = row['handle']
            elif kind == 'done':
                self.done = row
            elif kind == 'failed':
                self.producer_failed = row.get('error', '?')

    # ---- frames
    def on_frame(self, frame: t.Any) -> None:
        with self.lock:
            self.frames += 1
            index = self.frames
            self.by_type[str(frame.type)] = self.by_type.get(str(frame.type), 0) + 1
        where = f'frame {index} ({frame.type})'
        try:
            message = parse_subscribe_repos_message(frame)
        except KeyError:
            self.problem(f'{where}: a message type the client does not know: {frame.type!r}')
            return
        except Exception as e:  # noqa: BLE001 - the client's model rejected it
            self.problem(f'{where}: the client cannot parse it: {type(e).__name__}: {str(e)[:300]}')
            return
        seq = getattr(message, 'seq', None)
        if seq is not None:
            with self.lock:
                self.seqs.append(seq)
            where = f'{where} seq {seq}'
        try:
            if isinstance(message, models.ComAtprotoSyncSubscribeRepos.Commit):
                self.on_commit(where, message)
            elif isinstance(message, models.ComAtprotoSyncSubscribeRepos.Sync):
                self.on_sync(where, message)
            elif isinstance(message, models.ComAtprotoSyncSubscribeRepos.Info):
                with self.lock:
                    self.notes.append(f'{where}: #info {message.name}: {message.message}')
        except Exception as e:  # noqa: BLE001
            self.problem(f'{where}: {type(e).__name__}: {e}')

    def read_car(self, where: str, blocks: t.Union[str, bytes], commit: t.Optional[CID]) -> t.Optional[CAR]:
        """The CAR in `blocks`, each block but `commit` checked against its CID (see the module docs)."""
        if not isinstance(blocks, bytes):
            self.problem(f'{where}: blocks is a {type(blocks).__name__}, not bytes')
            return None
        try:
            car = CAR.from_bytes(blocks)
        except Exception as e:  # noqa: BLE001
            self.problem(f'{where}: blocks is not a CAR the client can read: {e}')
            return None
        commit = commit if commit is not None else car.root
        for cid, block in car.blocks.items():
            if cid == commit:
                continue
            if cid.codec != DAG_CBOR or cid.hash.code != SHA2_256:
                self.problem(f'{where}: block {cid} is not dag-cbor/sha2-256')
                continue
            digest = hashlib.sha256(libipld.encode_dag_cbor(block)).digest()
            if digest != cid.hash.digest:
                self.problem(
                    f'{where}: block {cid} does not hash to its CID (or is not canonical DAG-CBOR): '
                    f'{str(block)[:300]}'
                )
        return car

    def commit_block(self, where: str, car: CAR, cid: CID, did: str, rev: str) -> t.Optional[dict]:
        if car.root != cid:
            self.problem(f'{where}: the CAR root {car.root} is not the commit {cid}')
        block = car.blocks.get(cid)
        if block is None:
            self.problem(f'{where}: the CAR does not hold the commit block {cid}')
            return None
        if block.get('did') != did or block.get('rev') != rev or block.get('version') != 3:
            self.problem(
                f'{where}: the commit block says did={block.get("did")} rev={block.get("rev")} '
                f'version={block.get("version")}, the frame did={did} rev={rev}'
            )
        if not block.get('data') or not block.get('sig'):
            self.problem(f'{where}: the commit block has no data or no sig')
        return block

    def on_commit(self, where: str, m: t.Any) -> None:
        key = (m.repo, m.rev)
        where = f'{where} {m.repo} rev {m.rev}'
        ops = [{'action': op.action, 'path': op.path, 'cid': cid_str(op.cid)} for op in m.ops]
        texts: t.Dict[str, str] = {}
        data = None
        car = self.read_car(where, m.blocks, m.commit)
        if car is not None:
            block = self.commit_block(where, car, m.commit, m.repo, m.rev)
            data = cid_str(block.get('data')) if block else None
            for op in m.ops:
                if op.action in ('create', 'update'):
                    if op.cid is None:
                        self.problem(f'{where}: {op.action} {op.path} has no cid')
                        continue
                    rec = car.blocks.get(op.cid)
                    if rec is None:
                        self.problem(f'{where}: {op.action} {op.path}: record block {op.cid} not in the CAR')
                        continue
                    collection = op.path.split('/')[0]
                    model = resolve_record_type(collection)
                    if model is None:
                        self.problem(f'{where}: {op.path}: the client has no model for {collection}')
                        continue
                    try:
                        record = get_or_create(rec, model, strict=True)
                    except Exception as e:  # noqa: BLE001
                        self.problem(f'{where}: {op.path}: the record does not decode as {collection}: {e}')
                        continue
                    if hasattr(record, 'text'):
                        texts[op.path] = record.text
                elif op.action == 'delete':
                    if op.cid is not None:
                        self.problem(f'{where}: delete {op.path} has a cid')
                else:
                    self.problem(f'{where}: unknown op action {op.action!r}')
        with self.lock:
            prev = self.last_commit.get(m.repo)
            if key in self.commits:
                self.problems.append(f'{where}: this commit arrived twice')
            self.commits[key] = {
                'cid': cid_str(m.commit),
                'ops': ops,
                'texts': texts,
                'since': m.since,
                'prevData': cid_str(m.prev_data),
                'where': where,
            }
            if prev is not None:
                if not m.rev > prev['rev']:
                    self.problems.append(f'{where}: rev does not increase (previous {prev["rev"]})')
                if m.since != prev['rev']:
                    self.problems.append(f'{where}: since is {m.since}, the previous commit was rev {prev["rev"]}')
                if prev['data'] is not None and cid_str(m.prev_data) != prev['data']:
                    self.problems.append(
                        f'{where}: prevData is {cid_str(m.prev_data)}, the previous commit data was {prev["data"]}'
                    )
            self.last_commit[m.repo] = {'rev': m.rev, 'data': data}

    def on_sync(self, where: str, m: t.Any) -> None:
        where = f'{where} {m.did} rev {m.rev}'
        car = self.read_car(where, m.blocks, None)
        if car is not None:
            self.commit_block(where, car, car.root, m.did, m.rev)

    # ---- completion and verdict
    def complete(self) -> bool:
        with self.lock:
            return self.done is not None and all(k in self.commits for k in self.expected)

    def verdict(self) -> t.List[str]:
        """Problems found once the stream is over (or has timed out)."""
        with self.lock:
            problems = list(self.problems)
            missing = [k for k in self.expected if k not in self.commits]
            for k in missing:
                row = self.expected[k]
                problems.append(
                    f'missing: the {row["phase"]} commit {row["cid"]} of {k[0]} rev {k[1]} '
                    f'({len(row["ops"])} ops) never arrived'
                )
            for k, got in self.commits.items():
                row = self.expected.get(k)
                if row is None:
                    if self.done is not None:
                        problems.append(f'{got["where"]}: a commit the PDS did not report')
                    continue
                if got['cid'] != row['cid']:
                    problems.append(f'{got["where"]}: commit CID {got["cid"]}, the PDS reported {row["cid"]}')
                want_ops = [{'action': o['action'], 'path': o['path'], 'cid': o['cid']} for o in row['ops']]
                if got['ops'] != want_ops:
                    problems.append(f'{got["where"]}: ops {got["ops"]}, the PDS wrote {want_ops}')
                for o in row['ops']:
                    if 'text' in o and got['texts'].get(o['path']) != o['text']:
                        problems.append(
                            f'{got["where"]}: {o["path"]} text {got["texts"].get(o["path"])!r}, written {o["text"]!r}'
                        )
            seqs = list(self.seqs)
        for a, b in zip(seqs, seqs[1:]):
            if b <= a:
                problems.append(f'seq goes from {a} to {b}: not strictly increasing')
                break
        if self.dense_seq and seqs and seqs != list(range(1, len(seqs) + 1)):
            gap = next((i for i, s in enumerate(seqs) if s != i + 1), None)
            problems.append(
                f'seq is not 1, 2, 3, ...: position {gap + 1} has {seqs[gap]} '
                f'(first {seqs[0]}, last {seqs[-1]}, {len(seqs)} seq-bearing frames)'
            )
        return problems


class Client(FirehoseSubscribeReposClient):
    """The SDK's client, with its silent paths made loud.

    As shipped, the client skips a frame it cannot decode without a word, and reconnects (with
    the same cursor) after any connection error; both would hide exactly what this check is for.
    """

    def __init__(self, check: Check, connected_file: t.Optional[str], **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.connected_file = connected_file
        self.connections = 0
        self.stop_requested = False
        self.connection_error: t.Optional[str] = None

    def _get_client(self) -> t.Any:
        client = super()._get_client()  # the handshake is done when this returns
        self.connections += 1
        if self.connected_file:
            with open(self.connected_file, 'w') as f:
                f.write('connected\n')
        return client

    def _decode_frame(self, raw_frame: t.Union[str, bytes]) -> t.Any:
        if isinstance(raw_frame, str):
            self.check.problem(f'a text websocket message (the client skips these): {raw_frame[:200]!r}')
        return super()._decode_frame(raw_frame)

    def _handle_frame_decoding_error(self, exception: Exception) -> None:
        self.check.problem(
            f'frame after {self.check.frames} good ones does not decode '
            f'(the stock client would skip it silently or stop): {type(exception).__name__}: {exception}'
        )

    def _handle_websocket_error_or_stop(self, exception: Exception) -> bool:
        if not (self.stop_requested and isinstance(exception, ConnectionClosedOK)):
            self.connection_error = f'{type(exception).__name__}: {exception}'
        return True  # never reconnect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--name', required=True)
    ap.add_argument('--url', required=True, help='ws://host:port (the client adds /xrpc/com.atproto.sync.subscribeRepos)')
    ap.add_argument('--expected', required=True)
    ap.add_argument('--connected-file')
    ap.add_argument('--dense-seq', action='store_true')
    ap.add_argument('--timeout', type=float, default=30.0)
    args = ap.parse_args()

    check = Check(args.name, args.expected, args.dense_seq)
    client = Client(
        check,
        args.connected_file,
        params={'cursor': 0},
        base_uri=args.url.rstrip('/') + '/xrpc',
        recv_timeout=args.timeout,
    )
    started = time.monotonic()
    thread = threading.Thread(target=client.start, args=(check.on_frame,), daemon=True)
    thread.start()

    outcome = 'timeout'
    complete_at = None
    while True:
        check.read_expected()
        if check.producer_failed is not None:
            outcome = 'producer failed'
            break
        if not thread.is_alive():
            outcome = 'disconnected'
            break
        if check.complete():
            complete_at = complete_at or time.monotonic()
            if time.monotonic() - complete_at >= GRACE_S:
                outcome = 'complete'
                break
        if time.monotonic() - started > args.timeout:
            break
        time.sleep(0.05)
    client.stop_requested = True
    client.stop()
    thread.join(2)
    check.read_expected()
    elapsed = time.monotonic() - started

    problems = check.verdict()
    if outcome == 'timeout':
        problems.insert(0, f'timed out after {args.timeout:.0f} s')
    elif outcome == 'producer failed':
        problems.insert(0, f'pds.mjs failed: {check.producer_failed}')
    elif outcome == 'disconnected':
        if client.connections == 0:
            problems.insert(0, f'could not subscribe to {client._websocket_uri}: {client.connection_error}')
        else:
            problems.insert(0, f'the connection ended before every commit arrived: {client.connection_error}')
    if client.connections > 1:
        problems.append(f'{client.connections} connections (expected one)')

    seqs = check.seqs
    types = ', '.join(f'{n} {k}' for k, n in sorted(check.by_type.items()))
    seq_range = f'seq {seqs[0]}..{seqs[-1]}' if seqs else 'no seq'
    posts = check.done['posts'] if check.done else '?'
    status = 'OK' if not problems else 'FAIL'
    print(
        f'{args.name}: {status}: {len(check.accounts)} accounts, {posts} posts, '
        f'{sum(1 for k in check.expected if k in check.commits)}/{len(check.expected)} commits seen, '
        f'decoded ({check.frames} frames: {types or "none"}; {seq_range}) in {elapsed:.1f} s'
    )
    for note in check.notes:
        print(f'{args.name}:   note: {note}')
    for p in problems[:MAX_PROBLEMS_SHOWN]:
        print(f'{args.name}:   {p}')
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f'{args.name}:   ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems')
    sys.stdout.flush()
    return 0 if not problems else 1


if __name__ == '__main__':
    # A stuck websocket thread must not keep the process alive.
    code = main()
    os._exit(code)
