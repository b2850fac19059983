// The /feed page: log in, manage the watch list, show history then live pushes.
import { FeedSocket, storedToken, storeToken } from "/static/chainfeed-client.js";

const EXPLORERS = {
  ETH_MAINNET: "https://etherscan.io",
  ETH_SEPOLIA: "https://sepolia.etherscan.io",
  ETH_HOLESKY: "https://holesky.etherscan.io",
  MATIC_MAINNET: "https://polygonscan.com",
  POLYGON_MAINNET: "https://polygonscan.com",
  MATIC_AMOY: "https://amoy.polygonscan.com",
  ARB_MAINNET: "https://arbiscan.io",
  ARBITRUM_MAINNET: "https://arbiscan.io",
  OPT_MAINNET: "https://optimistic.etherscan.io",
  OPTIMISM_MAINNET: "https://optimistic.etherscan.io",
  BASE_MAINNET: "https://basescan.org",
  BASE_SEPOLIA: "https://sepolia.basescan.org",
};

const $ = (selector) => document.querySelector(selector);
let socket = null;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  return node;
}

function short(address) {
  return typeof address === "string" && address.length > 12 ? `${address.slice(0, 6)}…${address.slice(-4)}` : address || "—";
}

export function explorerUrl(network, hash) {
  const base = EXPLORERS[shown(network).toUpperCase().replace(/-/g, "_")] || EXPLORERS.ETH_MAINNET;
  return `${base}/tx/${hash}`;
}

async function api(path, options = {}) {
  const token = storedToken();
  const headers = { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && path !== "/api/auth/login") {
    logout("Your session has ended. Please log in again.");
    throw new Error("unauthorized");
  }
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function setStatus(status) {
  const box = $("#status");
  box.dataset.state = status.state;
  const text =
    status.state === "connected" ? "Connected"
    : status.state === "reconnecting" ? `Reconnecting in ${status.inSeconds}s`
    : status.reason ? `Disconnected (${status.reason})` : "Disconnected";
  $("#status-text").textContent = text;
}

// Text for a field that may be missing: never "undefined", "null" or "NaN" on the page.
function shown(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  const text = String(value).trim();
  return ["undefined", "null", "nan"].includes(text.toLowerCase()) ? "" : text;
}

// An NFT id as Alchemy sends it ("0x1"), shown as a decimal number ("#1").
function tokenLabel(tokenId) {
  const text = shown(tokenId);
  if (!text) return "";
  try {
    return `#${BigInt(text).toString()}`;
  } catch {
    return `#${text}`;
  }
}

export const REORG_LABEL = "removed by re-org";
const UPDATE_TYPE = "transaction_updated";
// The frame each row was drawn from, so an update can redraw it with the new state.
const rowFrames = new WeakMap();

function renderItem(frame, { fresh }) {
  const tx = frame.payload || {};
  const direction = shown(tx.direction) || (tx.to && tx.address && tx.to === tx.address ? "in" : "out");
  const amount = shown(tx.value) || tokenLabel(tx.token_id);
  const what = `${amount} ${shown(tx.asset)}`.trim() || shown(tx.category) || "transfer";
  const counterparty = shown(tx.counterparty) || shown(direction === "in" ? tx.from : tx.to);
  const hash = shown(tx.hash);
  const when = new Date(frame.created_at);
  const meta = [
    shown(tx.network),
    shown(tx.block_num) ? `block ${shown(tx.block_num)}` : "",
    frame.created_at && !isNaN(when) ? when.toLocaleString() : "",
    shown(tx.address) ? `watching ${short(tx.address)}` : "",
    frame.type !== "new_transaction" ? shown(frame.type) : "",
  ].filter(Boolean);
  const item = el(
    "li",
    { class: `${fresh ? "new" : ""} ${tx.removed === true ? "removed" : ""}`.trim(), dataset: { id: String(frame.id) } },
    el("span", { class: `direction ${direction}` }, direction),
    el("span", { class: "main" },
      el("span", { class: "amount" }, what),
      " ", direction === "in" ? "from " : "to ",
      el("code", { title: counterparty }, short(counterparty))),
    hash
      ? el("a", { href: explorerUrl(tx.network, hash), target: "_blank", rel: "noopener" }, "view tx ↗")
      : el("span", {}, ""),
    el("span", { class: "meta" }, meta.join(" · ")),
  );
  if (tx.removed === true) item.append(el("span", { class: "reorg-label" }, REORG_LABEL));
  rowFrames.set(item, frame);
  return item;
}

function addToFeed(frame, { fresh, append = false }) {
  const feed = $("#feed");
  if (feed.querySelector(`li[data-id="${frame.id}"]`)) return;
  $("#feed-empty").hidden = true;
  const item = renderItem(frame, { fresh });
  if (append) {
    feed.append(item);
    return;
  }
  // Keep newest first even when a resumed batch arrives oldest first.
  const after = [...feed.children].find((li) => Number(li.dataset.id) < frame.id);
  feed.insertBefore(item, after || null);
}

// A re-org changed item `ref` (removed, included again, or moved to another block): redraw its
// row with the new state. No row of its own; an item not on the page is left alone.
function applyUpdate(frame, { fresh }) {
  if (typeof frame.ref !== "number") return;
  const row = $("#feed").querySelector(`li[data-id="${frame.ref}"]`);
  const original = row && rowFrames.get(row);
  if (!original) return;
  const payload = { ...(original.payload || {}), ...(frame.payload || {}) };
  row.replaceWith(renderItem({ ...original, payload }, { fresh }));
}

// A live frame: an update redraws the row it names; any other type is a row of its own.
function showFrame(frame, { fresh }) {
  if (frame.type === UPDATE_TYPE) applyUpdate(frame, { fresh });
  else addToFeed(frame, { fresh });
}

async function loadWatchlist() {
  const list = $("#addresses");
  list.replaceChildren();
  for (const entry of await api("/api/addresses")) {
    const remove = el("button", { type: "button", "aria-label": `stop watching ${entry.address}` }, "Remove");
    remove.addEventListener("click", async () => {
      await api(`/api/addresses/${entry.address}`, { method: "DELETE" });
      await loadWatchlist();
    });
    list.append(el("li", { dataset: { address: entry.address } },
      el("span", {}, entry.label ? el("strong", {}, entry.label) : "", " ", el("code", {}, short(entry.address))), remove));
  }
}

async function loadHistory() {
  const page = await api("/api/feed?limit=50");
  $("#feed").replaceChildren();
  // The items already show their current state: the updates in history need no drawing.
  for (const frame of page.items) if (frame.type !== UPDATE_TYPE) addToFeed(frame, { fresh: false, append: true });
  $("#feed-empty").hidden = $("#feed").children.length > 0;
  const newest = page.items.find((item) => typeof item.seq === "number");
  return newest ? { lastId: newest.id, lastSeq: newest.seq } : { lastId: 0, lastSeq: 0 };
}

async function showApp() {
  let me;
  try {
    me = await api("/api/me");
  } catch {
    return;
  }
  $("#auth").hidden = true;
  $("#app").hidden = false;
  $("#whoami").hidden = false;
  $("#username").textContent = me.username;
  await loadWatchlist();
  const { lastId, lastSeq } = await loadHistory();
  if (socket) socket.stop();
  socket = new FeedSocket({
    lastId,
    lastSeq,
    onItem: (frame) => showFrame(frame, { fresh: true }),
    onStatus: setStatus,
    onAuthFailure: (reason) => logout(reason === "token expired" ? "Your session expired. Please log in again." : ""),
  });
  window.chainfeedSocket = socket; // for debugging in the console
  socket.start();
}

function showLogin(message = "") {
  $("#app").hidden = true;
  $("#whoami").hidden = true;
  $("#auth").hidden = false;
  $("#auth-error").textContent = message;
}

function logout(message = "") {
  if (socket) {
    socket.stopped = true;
    socket.stop();
  }
  socket = null;
  storeToken(null);
  showLogin(message);
}

$("#auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const action = event.submitter?.value === "register" ? "register" : "login";
  try {
    const body = await api(`/api/auth/${action}`, {
      method: "POST",
      body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
    });
    storeToken(body.access_token);
    $("#auth-error").textContent = "";
    await showApp();
  } catch (error) {
    $("#auth-error").textContent = error.message;
  }
});

$("#add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api("/api/addresses", {
      method: "POST",
      body: JSON.stringify({ address: form.get("address"), label: form.get("label") || null }),
    });
    event.target.reset();
    $("#add-error").textContent = "";
    await loadWatchlist();
  } catch (error) {
    $("#add-error").textContent = error.message;
  }
});

$("#logout").addEventListener("click", () => logout());

if (storedToken()) showApp();
else showLogin();
