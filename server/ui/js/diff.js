// A line diff (Myers' O(ND) algorithm) between two versions of a value.

const MAX_EDITS = 2000; // past this many changed lines the diff is shown as all removed, all added

const splitLines = (text) => (text === '' ? [] : text.split('\n'));

/** [{op: ' ' | '-' | '+', line}] turning `before` into `after`. */
export function diffLines(before, after) {
  const a = splitLines(before);
  const b = splitLines(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const same = (lines) => lines.map((line) => ({ op: ' ', line }));
  return [...same(a.slice(0, start)), ...middle(a.slice(start, endA), b.slice(start, endB)), ...same(a.slice(endA))];
}

function middle(a, b) {
  const removed = a.map((line) => ({ op: '-', line }));
  const added = b.map((line) => ({ op: '+', line }));
  if (a.length === 0 || b.length === 0) return [...removed, ...added];
  const trace = shortestEdit(a, b);
  return trace === null ? [...removed, ...added] : backtrack(a, b, trace);
}

/** trace[d][k + d]: the furthest x on diagonal k after d - 1 edits (Myers' V, per round). */
function shortestEdit(a, b) {
  const n = a.length;
  const m = b.length;
  const max = Math.min(n + m, MAX_EDITS);
  const offset = max + 1;
  const v = new Int32Array(2 * max + 3);
  const trace = [];
  for (let d = 0; d <= max; d++) {
    trace.push(v.slice(offset - d, offset + d + 1));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) return trace;
    }
  }
  return null;
}

function backtrack(a, b, trace) {
  const out = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d >= 0; d--) {
    const v = trace[d];
    const at = (k) => v[k + d];
    const k = x - y;
    const prevK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const prevX = d === 0 ? 0 : at(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      out.push({ op: ' ', line: a[x - 1] });
      x--;
      y--;
    }
    if (d > 0) {
      if (x === prevX) out.push({ op: '+', line: b[prevY] });
      else out.push({ op: '-', line: a[prevX] });
    }
    x = prevX;
    y = prevY;
  }
  return out.reverse();
}
