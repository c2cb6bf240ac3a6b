// The console's only way to the server: etcd's /v3 JSON gateway (grpc-gateway's JSON: base64
// bytes, int64 as strings, errors as {"error","code","message"}).  The auth token lives in this
// module's memory only: nothing is written to storage or cookies, a reload forgets it.

let token = null;

/** Fires 'revision' (detail: the highest revision seen in a response header) and
 * 'authrequired' (detail: the server's message) when a call needs a (new) login. */
export const events = new EventTarget();
let highestRevision = 0;

export class ApiError extends Error {
  constructor(httpStatus, code, message) {
    super(message);
    this.httpStatus = httpStatus;
    this.code = code; // the gRPC status code
  }
}

export const GRPC = { PERMISSION_DENIED: 7, UNAVAILABLE: 14 }; // the status codes the console tells apart

// etcd's texts for a request without a usable user (rpctypes: ErrUserEmpty, ErrInvalidAuthToken, ...)
const AUTH_REQUIRED = ['etcdserver: user name is empty', 'etcdserver: invalid auth token',
  'etcdserver: authentication failed, invalid user ID or password'];

export const isAuthRequired = (err) => err instanceof ApiError && AUTH_REQUIRED.includes(err.message);
export const isCompacted = (err) => err instanceof ApiError && err.message.includes('required revision has been compacted');

export function setToken(value) {
  token = value;
}

export const revision = () => highestRevision;

function noteHeader(header) {
  const rev = header && header.revision ? Number(header.revision) : 0;
  if (rev > highestRevision) {
    highestRevision = rev;
    events.dispatchEvent(new CustomEvent('revision', { detail: rev }));
  }
}

function requestInit(body, signal) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = token;
  return { method: 'POST', headers, body, signal, cache: 'no-store', credentials: 'omit' };
}

function errorOf(status, text) {
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: a plain-text error */
  }
  const err = data && typeof data === 'object' && (data.message || data.error)
    ? new ApiError(status, data.code ?? 2, data.message || data.error)
    : new ApiError(status, 2, text.trim() || `HTTP ${status}`);
  if (isAuthRequired(err)) events.dispatchEvent(new CustomEvent('authrequired', { detail: err.message }));
  return err;
}

async function send(path, body, signal) {
  try {
    return await fetch(path, requestInit(body, signal));
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, GRPC.UNAVAILABLE, `cannot reach the server (${err.message})`);
  }
}

/** One unary call: POST `path` with `body` (an object) and the parsed answer. */
export async function call(path, body = {}, { signal } = {}) {
  const resp = await send(path, JSON.stringify(body), signal);
  const text = await resp.text();
  if (!resp.ok) throw errorOf(resp.status, text);
  const data = JSON.parse(text);
  noteHeader(data.header);
  return data;
}

/** A streaming call (watch, keep-alive): every request in `messages` is sent at once, in one
 * body; `onMessage` gets each {"result": ...} as it arrives.  Resolves when the stream ends,
 * rejects with the stream's error; `signal` aborts it. */
export async function stream(path, messages, onMessage, { signal } = {}) {
  const resp = await send(path, messages.map((m) => JSON.stringify(m)).join('\n'), signal);
  if (!resp.ok) throw errorOf(resp.status, await resp.text());
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  const take = (line) => {
    if (!line.trim()) return;
    const data = JSON.parse(line);
    if (data.error) {
      const e = data.error;
      throw errorOf(e.http_code || 500, JSON.stringify({ code: e.grpc_code, message: e.message }));
    }
    noteHeader(data.result && data.result.header);
    onMessage(data.result);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      take(line);
    }
  }
  take(buffered); // a stream error comes last, without a newline
}

// -- the calls the console makes, in etcd's names ------------------------------------------------
// Paths are relative to the page (/ui/), so a proxy that mounts etcdlite under a sub-path works too.

export const range = (req, opts) => call('../v3/kv/range', req, opts);
export const put = (req) => call('../v3/kv/put', req);
export const deleteRange = (req) => call('../v3/kv/deleterange', req);
export const txn = (req) => call('../v3/kv/txn', req);
export const compact = (req) => call('../v3/kv/compaction', req);
export const leaseGrant = (req) => call('../v3/lease/grant', req);
export const leaseRevoke = (req) => call('../v3/lease/revoke', req);
export const leaseTimeToLive = (req) => call('../v3/lease/timetolive', req);
export const leaseLeases = () => call('../v3/lease/leases', {});
export const status = () => call('../v3/maintenance/status', {});
export const alarms = () => call('../v3/maintenance/alarm', { action: 'GET' });
export const members = () => call('../v3/cluster/member/list', {});
export const authStatus = () => call('../v3/auth/status', {});
export const authenticate = (name, password) => call('../v3/auth/authenticate', { name, password });
export const userGet = (name) => call('../v3/auth/user/get', { name });
export const roleGet = (role) => call('../v3/auth/role/get', { role });
