// k6 load test of ChainFeed's live feed: VUS virtual users, each holding a WebSocket to /ws.
//
// Auth: setup() logs in once (POST /api/auth/login as USERNAME / PASSWORD, default the demo user
// that `chainfeed dev` creates) and every VU shares that token; or TOKENS (comma-separated) or
// TOKENS_FILE (one token per line) give tokens, VU n using token n modulo their count. One login
// only: the login endpoint is rate limited (429) and hashes passwords with scrypt.
//
// Per-user cap: the server keeps at most CHAINFEED_WS_MAX_PER_USER (default 5) connections per user
// and closes the oldest with 4429 beyond it. With one shared token and VUS above the cap, start the
// server with CHAINFEED_WS_MAX_PER_USER raised, or give tokens of several users (`ws_evicted`
// counts 4429 closes).
//
// Each VU connects, checks every frame (JSON, a string `type`; a feed push also a numeric `id`,
// see ../shared/SPEC.md), sends {"type":"ping"} every PING_EVERY s and checks a {"type":"pong"}
// comes back, and closes after SESSION s; the next iteration reconnects with ?since=<last id seen>,
// as the page does, so a push in between is replayed (`ws_duplicate_frames` counts repeats).
//
// Custom metrics:
//   ws_publish_to_receive_ms  Trend: now minus payload.published_at_ms (or payload.published_at, ISO),
//                             for frames whose payload carries a publish timestamp (bench/connections.py's
//                             items do; so can a hand XADD: payload '{"published_at_ms": 1764260000000}')
//   ws_item_age_ms            Trend: now minus the frame's created_at (the feed item's commit in PostgreSQL):
//                             commit -> outbox relay -> stream -> fan-out -> this client
//   ws_ping_rtt_ms            Trend: application ping -> pong
//   ws_feed_frames, ws_duplicate_frames, ws_pongs, ws_evicted, ws_unexpected_closes  Counters
//
// Env: BASE_URL (default http://127.0.0.1:8000), VUS (10), DURATION (1m), SESSION (30, s per
// connection), PING_EVERY (10, s), USERNAME, PASSWORD, TOKENS, TOKENS_FILE.
//
//   uv run --with k6 k6 run bench/websocket-load-test.js
//   VUS=50 DURATION=2m uv run --with k6 k6 run bench/websocket-load-test.js
//
// Clocks: both latency Trends compare this machine's clock with the server's; run on the same host
// (or NTP-synced hosts) for them to mean anything.

import http from 'k6/http';
import ws from 'k6/ws';
import { check, fail } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const WS_URL = BASE_URL.replace(/^http/, 'ws') + '/ws';
const VUS = parseInt(__ENV.VUS || '10', 10);
const SESSION_S = parseFloat(__ENV.SESSION || '30');
const PING_EVERY_S = parseFloat(__ENV.PING_EVERY || '10');

// Tokens given up front (read in the init context: open() is only allowed there).
const GIVEN_TOKENS = (__ENV.TOKENS_FILE ? open(__ENV.TOKENS_FILE) : __ENV.TOKENS || '')
  .split(/[\s,]+/)
  .filter((t) => t.length > 0);

export const options = {
  scenarios: {
    feed: {
      executor: 'constant-vus',
      vus: VUS,
      duration: __ENV.DURATION || '1m',
      gracefulStop: `${Math.ceil(SESSION_S) + 10}s`,
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    ws_unexpected_closes: ['count<1'],
  },
};

const publishToReceive = new Trend('ws_publish_to_receive_ms', true);
const itemAge = new Trend('ws_item_age_ms', true);
const pingRtt = new Trend('ws_ping_rtt_ms', true);
const feedFrames = new Counter('ws_feed_frames');
const duplicateFrames = new Counter('ws_duplicate_frames');
const pongs = new Counter('ws_pongs');
const evicted = new Counter('ws_evicted');
const unexpectedCloses = new Counter('ws_unexpected_closes');

export function setup() {
  if (GIVEN_TOKENS.length > 0) {
    return { tokens: GIVEN_TOKENS };
  }
  const res = http.post(
    `${BASE_URL}/api/auth/login`,
    JSON.stringify({
      username: __ENV.USERNAME || 'demo',
      password: __ENV.PASSWORD || 'demo-password',
    }),
    { headers: { 'Content-Type': 'application/json' } },
  );
  if (res.status === 429) {
    fail(`login rate limited (429); retry after ${res.headers['Retry-After']} s or pass TOKENS`);
  }
  if (!check(res, { 'login is 200': (r) => r.status === 200 })) {
    fail(`login failed: ${res.status} ${res.body}`);
  }
  if (VUS > 5) {
    console.warn(
      `${VUS} VUs share one user: run the server with CHAINFEED_WS_MAX_PER_USER >= ${VUS} ` +
        'or the oldest connections are closed with 4429 (counted in ws_evicted)',
    );
  }
  return { tokens: [res.json('access_token')] };
}

// Milliseconds since the epoch from an ISO 8601 string; fractions beyond milliseconds are cut
// (PostgreSQL gives microseconds, which not every Date.parse accepts).
function isoMillis(text) {
  if (typeof text !== 'string') {
    return NaN;
  }
  return Date.parse(text.replace(/(\.\d{3})\d+/, '$1'));
}

// State that outlives one connection of a VU: the ids seen, for ?since= and duplicates.
const seen = new Set();
let lastId = null;

export default function (data) {
  const token = data.tokens[(__VU - 1) % data.tokens.length];
  const since = lastId === null ? '' : `&since=${lastId}`;
  const url = `${WS_URL}?token=${encodeURIComponent(token)}${since}`;
  let pingSentAt = null;
  let pingsUnanswered = 0;
  let closingOnPurpose = false;

  const res = ws.connect(url, {}, (socket) => {
    socket.on('open', () => {
      socket.setInterval(() => {
        if (pingSentAt !== null) {
          pingsUnanswered += 1; // the previous one got no pong within PING_EVERY
        }
        pingSentAt = Date.now();
        socket.send(JSON.stringify({ type: 'ping' }));
      }, PING_EVERY_S * 1000);
      socket.setTimeout(() => {
        closingOnPurpose = true;
        socket.close();
      }, SESSION_S * 1000);
    });

    socket.on('message', (text) => {
      let frame = null;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        frame = null;
      }
      const now = Date.now();
      check(frame, {
        'frame is JSON': (f) => f !== null && typeof f === 'object',
        'frame has a type': (f) => f !== null && typeof f.type === 'string',
      });
      if (frame === null || typeof frame.type !== 'string') {
        return;
      }
      if (frame.type === 'pong') {
        check(pingSentAt, { 'pong answers a ping': (sent) => sent !== null });
        if (pingSentAt !== null) {
          pingRtt.add(now - pingSentAt);
          pingSentAt = null;
        }
        pongs.add(1);
        return;
      }
      check(frame, { 'feed frame has a numeric id': (f) => Number.isInteger(f.id) });
      if (!Number.isInteger(frame.id)) {
        return;
      }
      feedFrames.add(1);
      if (seen.has(frame.id)) {
        duplicateFrames.add(1);
      }
      seen.add(frame.id);
      lastId = lastId === null ? frame.id : Math.max(lastId, frame.id);
      const payload = frame.payload || {};
      const published =
        typeof payload.published_at_ms === 'number' ? payload.published_at_ms : isoMillis(payload.published_at);
      if (Number.isFinite(published)) {
        publishToReceive.add(now - published);
      }
      const created = isoMillis(frame.created_at);
      if (Number.isFinite(created)) {
        itemAge.add(now - created);
      }
    });

    socket.on('close', (code) => {
      if (code === 4429) {
        evicted.add(1);
      } else if (!closingOnPurpose) {
        unexpectedCloses.add(1);
        console.warn(`VU ${__VU}: connection closed by the server with ${code}`);
      }
    });

    socket.on('error', (e) => {
      if (!closingOnPurpose) {
        console.warn(`VU ${__VU}: ${e.error()}`);
      }
    });
  });

  check(res, { 'handshake is 101': (r) => r && r.status === 101 });
  check(pingsUnanswered, { 'every ping got a pong': (n) => n === 0 });
}
