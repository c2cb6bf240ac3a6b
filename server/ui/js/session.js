// Who the console acts as, and which key ranges that user may read.  A scope is a range of keys
// {lo, hi} (binary strings, hi null: no end) the tree may list and watch.

import * as api from './api.js';
import { unb64 } from './bytes.js';

const EVERYTHING = Object.freeze({ lo: '\0', hi: null });

export const session = {
  authEnabled: false,
  user: null,
  scopes: [EVERYTHING], // what the user may read, merged and sorted
  fullAccess: true,
};

/** Whether the server wants a user: true when auth is on. */
export async function loginRequired() {
  try {
    const status = await api.authStatus();
    session.authEnabled = Boolean(status.enabled);
    return false; // answered without a token: auth is off
  } catch (err) {
    if (api.isAuthRequired(err) || err.code === api.GRPC.PERMISSION_DENIED) {
      session.authEnabled = true;
      return true;
    }
    throw err;
  }
}

/** Authenticates; the password is not kept, only the token (in api.js's memory). */
export async function login(name, password) {
  const { token } = await api.authenticate(name, password);
  api.setToken(token);
  session.user = name;
  try {
    session.scopes = await readableScopes(name);
  } catch (err) {
    api.setToken(null);
    session.user = null;
    throw err;
  }
  session.fullAccess = session.scopes.length === 1 && session.scopes[0] === EVERYTHING;
}

/** A permission's range as etcd reads it: no range_end is one key, "\0" is every key from key on. */
function permRange(perm) {
  const lo = unb64(perm.key);
  const end = unb64(perm.range_end);
  if (end === '') return { lo, hi: lo + '\0' };
  if (end === '\0') return { lo, hi: null };
  return { lo, hi: end };
}

const READS = new Set([undefined, 'READ', 'READWRITE', 0, 2]);

async function readableScopes(name) {
  const user = await api.userGet(name);
  const roles = user.roles || [];
  if (roles.includes('root')) return [EVERYTHING];
  const ranges = [];
  for (const role of roles) {
    const answer = await api.roleGet(role);
    for (const perm of answer.perm || []) {
      if (READS.has(perm.permType)) ranges.push(permRange(perm));
    }
  }
  return merge(ranges);
}

/** Sorted, overlapping or touching ranges joined. */
function merge(ranges) {
  const sorted = ranges.filter((r) => r.hi === null || r.lo < r.hi)
    .sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
  const out = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && (last.hi === null || r.lo <= last.hi)) {
      if (last.hi !== null && (r.hi === null || r.hi > last.hi)) last.hi = r.hi;
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

/** The part of [lo, hi) inside `scope`, or null when they do not meet. */
export function intersect(scope, lo, hi) {
  const from = lo > scope.lo ? lo : scope.lo;
  let to = scope.hi;
  if (hi !== null && (to === null || hi < to)) to = hi;
  return to !== null && from >= to ? null : { lo: from, hi: to };
}

/** A key the user may read, to probe revisions with (see server.js). */
export const probeKey = () => (session.scopes.length ? session.scopes[0].lo : undefined);
