// The key tree: keys split at "/" into directories, listed a page at a time with range requests
// (keys_only + limit), each directory's key count from count_only ranges batched in one Txn.
// A directory with a hundred thousand keys costs one page of keys, never all of them.

import * as api from './api.js';
import { b64, displayKey, prefixEnd, unb64 } from './bytes.js';
import { fill, h } from './dom.js';
import { intersect } from './session.js';

export const PAGE = 100; // entries a directory shows before "more"
const COUNTS_PER_TXN = 64; // count_only ranges per Txn (etcd's default --max-txn-ops is 128)
const REFRESH_MS = 250; // changes seen by the watch are applied at most this often
const SEP = '/';

const rangeEnd = (hi) => b64(hi === null ? '\0' : hi);
const formatCount = (n) => Number(n).toLocaleString('en-US');

function commonPrefix(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return a.slice(0, i);
}

/** A directory: the keys in [lo, hi) that start with `prefix`, shown by their next segment. */
class DirNode {
  constructor(parent, prefix, lo, hi, label) {
    this.parent = parent;
    this.prefix = prefix;
    this.lo = lo;
    this.hi = hi;
    this.label = label;
    this.depth = parent ? parent.depth + 1 : 0;
    this.entries = []; // [{kind: 'dir', seg, node} | {kind: 'key', seg, key}]
    this.count = null; // keys under this directory
    this.expanded = false;
    this.loaded = false;
    this.cursor = null; // where the next page starts
    this.more = false;
    this.error = null;
    this.userCollapsed = false;
    this.busy = null;
    this.again = false;
    this.li = null;
    this.single = hi === lo + '\0'; // a readable single key: shown as that key only
  }

  contains(key) {
    return key.startsWith(this.prefix) && key >= this.lo && (this.hi === null || key < this.hi);
  }

  /** The range of a child directory, inside this one's bounds. */
  childBounds(prefix) {
    return intersect({ lo: this.lo, hi: this.hi }, prefix, prefixEnd(prefix));
  }

  attached() {
    for (let node = this; node.parent; node = node.parent) {
      if (!node.parent.entries.some((e) => e.node === node)) return false;
    }
    return true;
  }
}

export class KeyTree {
  /** onKey(key) when a key is chosen, onDir(node) when a directory is. */
  constructor(element, { onKey, onDir }) {
    this.element = element;
    this.onKey = onKey;
    this.onDir = onDir;
    this.roots = [];
    this.selected = null; // the chosen key or directory prefix
    this.dirty = new Set();
    this.timer = null;
  }

  /** Shows the readable `scopes` below `prefix` ('' for all). */
  show(scopes, prefix) {
    const lo = prefix || '\0';
    const hi = prefix ? prefixEnd(prefix) : null;
    this.roots = [];
    for (const scope of scopes) {
      const r = intersect(scope, lo, hi);
      if (r) this.roots.push(this.rootNode(r, prefix));
    }
    if (!this.roots.length) {
      fill(this.element, h('li', { class: 'note' }, prefix ? 'No readable keys with this prefix.' : 'No readable keys.'));
      return Promise.resolve();
    }
    fill(this.element, this.roots.map((root) => this.renderDir(root)));
    return Promise.all(this.roots.map((root) => this.expand(root)));
  }

  /** The readable ranges the tree shows (what its watch must cover). */
  ranges() {
    return this.roots.map((r) => ({ lo: r.lo, hi: r.hi }));
  }

  rootNode(r, filter) {
    let prefix;
    let label;
    if (r.hi !== null && r.hi === prefixEnd(r.lo)) {
      prefix = r.lo;
      label = displayKey(prefix);
    } else if (r.hi === r.lo + '\0') {
      prefix = r.lo;
      label = displayKey(r.lo);
    } else {
      prefix = commonPrefix(r.lo, r.hi === null ? '' : r.hi);
      if (prefix.length < filter.length) prefix = filter;
      label = filter === '' && r.lo === '\0' && r.hi === null
        ? 'all keys'
        : `${displayKey(r.lo)} … ${r.hi === null ? 'end' : displayKey(r.hi)}`;
    }
    return new DirNode(null, prefix, r.lo, r.hi, label || '(all keys)');
  }

  // -- listing ------------------------------------------------------------------------------

  /** Up to `want` entries of `node` from `cursor` on: one range per run of leaves, and a jump
   * past each directory (to the end of its prefix), so its keys are not read. */
  async list(node, cursor, want) {
    const entries = [];
    let batch = Math.min(want, PAGE);
    while (entries.length < want && cursor !== null) {
      const limit = Math.min(want - entries.length, batch);
      const answer = await api.range({ key: b64(cursor), range_end: rangeEnd(node.hi), keys_only: true, limit: String(limit) });
      const kvs = answer.kvs || [];
      const before = entries.length;
      let i = 0;
      for (; i < kvs.length && entries.length < want && cursor !== null; i++) {
        const key = unb64(kvs[i].key);
        if (key < cursor) continue; // inside a directory already listed
        const rest = key.slice(node.prefix.length);
        const cut = rest.indexOf(SEP);
        if (cut < 0) {
          entries.push({ kind: 'key', seg: rest, key });
          cursor = key + '\0';
          continue;
        }
        const seg = rest.slice(0, cut + 1);
        entries.push({ kind: 'dir', seg, prefix: node.prefix + seg });
        const next = prefixEnd(node.prefix + seg);
        cursor = next === null || (node.hi !== null && next >= node.hi) ? null : next;
      }
      const unseen = kvs.slice(i).some((kv) => unb64(kv.key) >= (cursor ?? '\uffff'));
      if (!answer.more && !unseen) cursor = null; // every key up to the end was seen
      // a page spent inside one directory: ask for fewer keys before the next jump
      batch = entries.length - before <= 1 && kvs.length > 1 ? Math.max(4, batch >> 2) : Math.min(PAGE, batch * 2);
      if (!kvs.length) cursor = null;
    }
    return { entries, cursor };
  }

  /** Key counts of `node` itself and of the directories among `entries`, in Txns of count_only ranges. */
  async countInto(node, entries) {
    const dirs = entries.filter((e) => e.kind === 'dir');
    const ranges = [{ lo: node.lo, hi: node.hi }, ...dirs.map((d) => d.node)];
    const counts = [];
    for (let i = 0; i < ranges.length; i += COUNTS_PER_TXN) {
      const ops = ranges.slice(i, i + COUNTS_PER_TXN).map((r) => ({
        request_range: { key: b64(r.lo), range_end: rangeEnd(r.hi), count_only: true },
      }));
      const answer = await api.txn({ success: ops });
      for (const op of answer.responses || []) counts.push(Number(op.response_range.count || 0));
    }
    node.count = counts[0];
    dirs.forEach((d, i) => {
      d.node.count = counts[i + 1];
    });
  }

  /** Entries as listed, with the directory nodes already shown kept (and their state). */
  adopt(node, listed) {
    const known = new Map(node.entries.filter((e) => e.kind === 'dir').map((e) => [e.seg, e.node]));
    return listed.map((e) => {
      if (e.kind !== 'dir') return e;
      const bounds = node.childBounds(e.prefix);
      const child = known.get(e.seg) || new DirNode(node, e.prefix, bounds.lo, bounds.hi, displayKey(e.seg));
      return { kind: 'dir', seg: e.seg, node: child };
    });
  }

  /** (Re)loads the entries `node` shows (at least a page), their counts, and redraws it. */
  reload(node) {
    if (node.busy) {
      node.again = true;
      return node.busy;
    }
    node.busy = (async () => {
      do {
        node.again = false;
        await this.fetch(node);
      } while (node.again);
    })().finally(() => {
      node.busy = null;
    });
    return node.busy;
  }

  async fetch(node) {
    const want = Math.max(PAGE, node.entries.length);
    try {
      const { entries, cursor } = await this.list(node, node.lo, want);
      const adopted = this.adopt(node, entries);
      await this.countInto(node, adopted);
      node.entries = adopted;
      node.cursor = cursor;
      node.more = cursor !== null;
      node.error = null;
    } catch (err) {
      node.error = err.message;
    }
    node.loaded = true;
    this.redraw(node);
    const only = node.entries.length === 1 ? node.entries[0] : null;
    if (only && only.kind === 'dir' && !only.node.userCollapsed && !only.node.expanded) await this.expand(only.node);
  }

  async loadMore(node) {
    try {
      const { entries, cursor } = await this.list(node, node.cursor, PAGE);
      const adopted = this.adopt(node, entries);
      await this.countInto(node, adopted);
      node.entries = node.entries.concat(adopted);
      node.cursor = cursor;
      node.more = cursor !== null;
    } catch (err) {
      node.error = err.message;
    }
    this.redraw(node);
  }

  async expand(node) {
    node.expanded = true;
    node.userCollapsed = false;
    if (node.loaded) this.redraw(node);
    else await this.reload(node);
  }

  collapse(node) {
    node.expanded = false;
    node.userCollapsed = true;
    this.redraw(node);
  }

  // -- live changes -------------------------------------------------------------------------

  /** A key changed (seen by the watch): the directories shown on its path are listed again. */
  changed(key) {
    for (const root of this.roots) {
      let node = root.contains(key) ? root : null;
      while (node) {
        if (!node.expanded) {
          node.loaded = node.loaded && node === root; // listed again when opened
          if (node === root) this.dirty.add(node);
          break;
        }
        this.dirty.add(node);
        const entry = node.entries.find((e) => e.kind === 'dir' && e.node.contains(key));
        node = entry ? entry.node : null;
      }
    }
    if (this.dirty.size && !this.timer) this.timer = setTimeout(() => this.flush(), REFRESH_MS);
  }

  async flush() {
    const nodes = [...this.dirty].sort((a, b) => a.depth - b.depth);
    this.dirty.clear();
    for (const node of nodes) {
      if (node.attached() && this.roots.includes(rootOf(node))) await this.reload(node);
    }
    this.timer = null;
    if (this.dirty.size) this.timer = setTimeout(() => this.flush(), REFRESH_MS);
  }

  // -- drawing ------------------------------------------------------------------------------

  select(target) {
    this.selected = target;
    for (const row of this.element.querySelectorAll('.row.selected')) row.classList.remove('selected');
    for (const row of this.element.querySelectorAll('.row')) {
      if (row._target === target) row.classList.add('selected');
    }
  }

  redraw(node) {
    const old = node.li;
    if (old) old.replaceWith(this.renderDir(node));
  }

  renderDir(node) {
    if (node.single) return this.renderSingle(node);
    const caret = h('span', { class: 'caret', 'aria-hidden': 'true' }, node.expanded ? '▾' : '▸');
    const count = node.count === null ? null : h('span', { class: 'count', title: 'keys under this prefix' }, formatCount(node.count));
    const row = h('div', {
      class: 'row dir' + (this.selected === node.prefix ? ' selected' : ''),
      role: 'treeitem',
      'aria-expanded': String(node.expanded),
      tabindex: '0',
      title: displayKey(node.prefix) || node.label,
      dataset: { prefix: displayKey(node.prefix) },
      style: { paddingLeft: `${0.4 + node.depth * 1.1}rem` },
      onclick: () => this.clickDir(node),
      onkeydown: (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          this.clickDir(node);
        }
      },
    }, caret, h('span', { class: 'name' }, node.label), count);
    row._target = node.prefix;
    const li = h('li', { class: 'dir' }, row);
    if (node.expanded) li.append(this.renderEntries(node));
    node.li = li;
    return li;
  }

  renderEntries(node) {
    const ul = h('ul', { role: 'group' });
    if (!node.loaded) ul.append(h('li', { class: 'note' }, 'loading…'));
    for (const entry of node.entries) {
      ul.append(entry.kind === 'dir' ? this.renderDir(entry.node) : this.renderKey(node, entry));
    }
    if (node.loaded && !node.entries.length && !node.error) ul.append(h('li', { class: 'note' }, 'no keys'));
    if (node.error) ul.append(h('li', { class: 'note error' }, node.error));
    if (node.more) {
      ul.append(h('li', { class: 'more', style: { paddingLeft: `${1.5 + node.depth * 1.1}rem` } },
        h('button', { class: 'link', onclick: () => this.loadMore(node) }, `show ${PAGE} more`),
        h('span', { class: 'note' }, ` (${formatCount(node.entries.length)} shown)`)));
    }
    return ul;
  }

  /** A root that is one key: its row when it exists, no directory around it. */
  renderSingle(node) {
    const entry = node.entries[0];
    const li = entry ? this.renderKey(node, entry, displayKey(entry.key))
      : h('li', { class: 'note' }, node.loaded ? `${node.label} (no such key)` : node.label);
    node.li = li;
    return li;
  }

  renderKey(node, entry, label = null) {
    const name = label || (entry.seg === '' ? h('em', {}, displayKey(entry.key)) : displayKey(entry.seg));
    const row = h('div', {
      class: 'row key' + (this.selected === entry.key ? ' selected' : ''),
      role: 'treeitem',
      tabindex: '0',
      title: displayKey(entry.key),
      dataset: { key: displayKey(entry.key) },
      style: { paddingLeft: `${1.5 + node.depth * 1.1}rem` },
      onclick: () => this.clickKey(entry.key),
      onkeydown: (ev) => {
        if (ev.key === 'Enter') this.clickKey(entry.key);
      },
    }, h('span', { class: 'name' }, name));
    row._target = entry.key;
    return h('li', { class: 'key' }, row);
  }

  clickDir(node) {
    this.select(node.prefix);
    if (node.expanded) this.collapse(node);
    else this.expand(node);
    this.onDir(node);
  }

  clickKey(key) {
    this.select(key);
    this.onKey(key);
  }
}

function rootOf(node) {
  let n = node;
  while (n.parent) n = n.parent;
  return n;
}
