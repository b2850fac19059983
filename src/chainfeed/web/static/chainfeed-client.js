// ChainFeed WebSocket client: a small, framework-free module other frontends can reuse.
//
// Semantics (the seed's useWebSocket):
// - the token lives in localStorage under "auth_token" (or is supplied by getToken);
// - after a drop it reconnects 3 s later with jitter and a growing back-off, showing a countdown;
// - every (re)connect resumes with since=<last item received> (since=0 when the feed was empty),
//   so nothing committed while away, or between the history request and the socket, is missed;
// - the server sends a user's items in feed order (seq); a repeat is dropped, and a gap (a seq
//   further than the next) is a reason to resume from the last item received: a second line of
//   defence behind the server's own gap fill;
// - frames are also deduplicated by id (delivery is at least once);
// - close code 4401 (missing/invalid/expired token) stops reconnecting and calls onAuthFailure;
// - 4429 (this tab was the oldest of too many) stops too, so two tabs never evict each other forever.

export const TOKEN_KEY = "auth_token";
const BASE_DELAY_S = 3;
const MAX_DELAY_S = 60;
const JITTER = 0.25;
const SEEN_LIMIT = 2000;

export function storedToken() {
  return window.localStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  if (token) window.localStorage.setItem(TOKEN_KEY, token);
  else window.localStorage.removeItem(TOKEN_KEY);
}

/** Delay before reconnect attempt n (0-based): 3 s, 6 s, 12 s ... capped, with +-25% jitter. */
export function reconnectDelay(attempt, random = Math.random) {
  const base = Math.min(MAX_DELAY_S, BASE_DELAY_S * 2 ** attempt);
  return base * (1 - JITTER + 2 * JITTER * random());
}

export class FeedSocket {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket endpoint (default: /ws on this host)
   * @param {() => string|null} [options.getToken]
   * @param {number} [options.lastId] resume after this feed item id (0: from the start)
   * @param {number|null} [options.lastSeq] that item's seq, if known
   * @param {(frame: object) => void} [options.onItem] a new feed item (never twice for one id)
   * @param {(status: {state: string, inSeconds?: number, reason?: string}) => void} [options.onStatus]
   * @param {(reason: string) => void} [options.onAuthFailure]
   */
  constructor(options = {}) {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    this.url = options.url || `${scheme}//${window.location.host}/ws`;
    this.getToken = options.getToken || storedToken;
    this.lastId = options.lastId || 0;
    this.lastSeq = options.lastSeq ?? null;
    this.resuming = false;
    this.onItem = options.onItem || (() => {});
    this.onStatus = options.onStatus || (() => {});
    this.onAuthFailure = options.onAuthFailure || (() => {});
    this.seen = new Set();
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.socket) this.socket.close(1000, "client stop");
    this.socket = null;
    this.onStatus({ state: "disconnected" });
  }

  connect() {
    clearInterval(this.timer);
    const token = this.getToken();
    if (!token) {
      this.stopped = true;
      this.onAuthFailure("missing token");
      return;
    }
    // Always a position: since=0 for an empty feed, so nothing committed meanwhile is missed.
    const query = new URLSearchParams({ token, since: String(this.lastId) });
    const socket = new WebSocket(`${this.url}?${query}`);
    this.resuming = true; // the server replays after lastId, then says "resumed"
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.onStatus({ state: "connected" });
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      if (event.code === 4401) {
        this.stopped = true;
        this.onStatus({ state: "disconnected", reason: event.reason || "unauthorized" });
        this.onAuthFailure(event.reason || "invalid token");
        return;
      }
      if (event.code === 4400) {
        // Our cursor names no item of ours (a restored server): start over from the beginning.
        this.lastId = 0;
        this.lastSeq = null;
      }
      if (event.code === 4429) {
        this.stopped = true;
        this.onStatus({ state: "disconnected", reason: "too many open tabs" });
        return;
      }
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    let remaining = Math.round(reconnectDelay(this.attempt));
    this.attempt += 1;
    this.onStatus({ state: "reconnecting", inSeconds: remaining });
    this.timer = setInterval(() => {
      remaining -= 1;
      if (remaining <= 0) {
        clearInterval(this.timer);
        if (!this.stopped) this.connect();
      } else {
        this.onStatus({ state: "reconnecting", inSeconds: remaining });
      }
    }, 1000);
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not ours to understand
    }
    if (frame.type === "ping") {
      this.send({ type: "pong" });
      return;
    }
    if (frame.type === "resumed") {
      this.resuming = false;
      if (typeof frame.seq === "number") this.lastSeq = frame.seq;
      return;
    }
    if (typeof frame.id !== "number" || !("payload" in frame)) return; // pong and unknown types
    if (typeof frame.seq === "number" && this.lastSeq !== null) {
      if (frame.seq <= this.lastSeq) return; // a repeat
      if (frame.seq > this.lastSeq + 1) {
        // Something before it is missing: ask again from the last item we have, once per gap.
        if (!this.resuming) {
          this.resuming = true;
          this.send({ type: "resume", since: this.lastId });
        }
        return;
      }
    }
    if (typeof frame.seq === "number") this.lastSeq = frame.seq;
    this.lastId = frame.id;
    if (this.seen.has(frame.id)) return;
    this.seen.add(frame.id);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value);
    this.onItem(frame);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }
}
