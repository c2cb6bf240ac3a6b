// The detail pane of the Keys tab: one key (metadata, value, revision history, diff between two
// versions, edit and delete), a directory (count, new key, delete the prefix), or the new-key form.

import * as api from './api.js';
import { b64, displayKey, fromText, leaseFromHex, leaseHex, parseKey, prefixEnd, unb64, utf8 } from './bytes.js';
import { diffLines } from './diff.js';
import { $, fill, h } from './dom.js';
import { confirmEdit, facts, runEdit } from './ui.js';
import { bestMode, comparable, modeSwitch, present } from './value.js';

const HISTORY_PAGE = 10; // older versions fetched per click (one range at a revision each)
const CONTEXT_LINES = 3; // unchanged lines kept around each change in a diff

export class KeyView {
  /** links: openLease(idHex), watchPrefix(prefix), selectInTree(key) */
  constructor(element, links) {
    this.element = element;
    this.links = links;
    this.key = null;
    this.kv = null;
    this.mode = null;
    this.versions = [];
    this.historyEnd = null; // 'created' | 'compacted' | null (more may be fetched)
    this.editing = false;
    this.diffPair = null; // [from index, to index] into versions
    this.generation = 0; // counts show() calls, so only the latest one draws
  }

  // -- a key ----------------------------------------------------------------------------------

  async show(key) {
    const same = key === this.key;
    this.key = key;
    this.editing = false;
    if (!same) {
      this.mode = null;
      this.diffPair = null;
    }
    const shown = ++this.generation; // a later show() (another key, a change) wins
    let kv = null;
    const versions = [];
    let end = null;
    try {
      const answer = await api.range({ key: b64(key) });
      kv = answer.kvs ? answer.kvs[0] : null;
      if (kv) {
        versions.push(kv);
        end = await olderVersions(key, versions, HISTORY_PAGE);
      }
    } catch (err) {
      if (shown === this.generation) this.message(displayKey(key), err.message, true);
      return;
    }
    if (shown !== this.generation) return;
    this.kv = kv;
    this.versions = versions;
    this.historyEnd = end;
    if (kv) this.render();
    else this.renderMissing();
  }

  /** A change the watch saw: the key shown is read again (unless it is being edited). */
  changed(key) {
    if (key === this.key && !this.editing) this.show(key);
  }

  message(title, text, error = false) {
    fill(this.element, h('h2', { class: 'title' }, title), h('p', { class: error ? 'error' : 'note' }, text));
  }

  renderMissing() {
    const key = this.key;
    fill(this.element,
      h('h2', { class: 'title' }, displayKey(key)),
      h('p', { class: 'note' }, 'This key does not exist (now).'),
      h('div', { class: 'actions' }, h('button', { onclick: () => this.newKey(key) }, 'Create it…')));
  }

  render() {
    const kv = this.kv;
    const value = unb64(kv.value);
    const mode = this.mode || bestMode(value);
    const lease = kv.lease && kv.lease !== '0' ? leaseHex(kv.lease) : null;
    fill(this.element,
      h('div', { class: 'title-row' },
        h('h2', { class: 'title', id: 'key-title' }, displayKey(this.key)),
        h('div', { class: 'actions' },
          h('button', { id: 'key-edit', onclick: () => this.edit() }, 'Edit…'),
          h('button', { id: 'key-delete', class: 'danger', onclick: () => this.remove() }, 'Delete…'))),
      facts([
        ['created at', `revision ${kv.create_revision}`],
        ['modified at', `revision ${kv.mod_revision}`],
        ['version', kv.version],
        ['size', `${value.length} bytes`],
        ['lease', lease ? h('button', { class: 'link', onclick: () => this.links.openLease(lease) }, lease) : 'none'],
      ]),
      h('section', { class: 'value-box', id: 'value-box' }, this.renderValue(value, mode)),
      this.renderHistory());
  }

  renderValue(value, mode, whole = false) {
    const shown = present(value, mode, whole);
    return [
      h('div', { class: 'box-head' }, h('h3', {}, 'Value'), modeSwitch(mode, (m) => {
        this.mode = m;
        fill($('#value-box'), this.renderValue(value, m));
      })),
      shown.note ? h('p', { class: 'note' }, shown.note,
        shown.note.startsWith('showing') ? h('button', { class: 'link', onclick: () => fill($('#value-box'), this.renderValue(value, mode, true)) }, ' show all') : null) : null,
      h('pre', { class: `value ${mode}`, id: 'value' }, shown.text),
    ];
  }

  // -- history and diff ------------------------------------------------------------------------

  renderHistory() {
    const versions = this.versions;
    const rows = versions.map((kv, i) => h('tr', { class: this.diffPair && this.diffPair.includes(i) ? 'picked' : '' },
      h('td', {}, kv.version),
      h('td', {}, kv.mod_revision),
      h('td', {}, `${unb64(kv.value).length} B`),
      h('td', { class: 'preview' }, preview(kv)),
      h('td', {}, i + 1 < versions.length ? h('button', { class: 'link', onclick: () => this.pickDiff(i + 1, i) }, 'diff with previous') : '')));
    const end = {
      created: `Version 1 was created at revision ${this.versions[versions.length - 1].create_revision}.`,
      compacted: 'Older versions were compacted away.',
    }[this.historyEnd];
    return h('section', { class: 'history', id: 'history' },
      h('div', { class: 'box-head' }, h('h3', {}, 'History')),
      h('table', {}, h('thead', {}, h('tr', {}, ['version', 'revision', 'size', 'value', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, rows)),
      end ? h('p', { class: 'note' }, end)
        : h('button', { class: 'link', id: 'history-older', onclick: () => this.older() }, `load ${HISTORY_PAGE} older versions`),
      versions.length > 1 ? this.renderDiffBox() : null);
  }

  async older() {
    const shown = this.generation;
    const versions = this.versions.slice();
    let end;
    try {
      end = await olderVersions(this.key, versions, HISTORY_PAGE);
    } catch (err) {
      $('#history').append(h('p', { class: 'error' }, err.message));
      return;
    }
    if (shown !== this.generation) return;
    this.versions = versions;
    this.historyEnd = end;
    $('#history').replaceWith(this.renderHistory());
  }

  pickDiff(from, to) {
    this.diffPair = [from, to];
    $('#history').replaceWith(this.renderHistory());
  }

  renderDiffBox() {
    const versions = this.versions;
    const [from, to] = this.diffPair || [1, 0];
    const option = (kv, i, chosen) => h('option', { value: String(i), selected: i === chosen },
      `version ${kv.version} (revision ${kv.mod_revision})${i === 0 ? ', current' : ''}`);
    const fromSel = h('select', { id: 'diff-from', onchange: () => this.pickDiff(Number(fromSel.value), Number(toSel.value)) },
      versions.map((kv, i) => option(kv, i, from)));
    const toSel = h('select', { id: 'diff-to', onchange: () => this.pickDiff(Number(fromSel.value), Number(toSel.value)) },
      versions.map((kv, i) => option(kv, i, to)));
    const a = unb64(versions[from].value);
    const b = unb64(versions[to].value);
    return h('div', { class: 'diff-box' },
      h('div', { class: 'box-head' }, h('h3', {}, 'Diff'), h('label', {}, 'from ', fromSel), h('label', {}, 'to ', toSel)),
      renderDiff(comparable(a, b), comparable(b, a)));
  }

  // -- edits ----------------------------------------------------------------------------------

  edit() {
    const kv = this.kv;
    const old = unb64(kv.value);
    const text = utf8(old);
    if (text === null) {
      $('#value-box').append(h('p', { class: 'error' }, 'This value is not UTF-8 text; it cannot be edited here.'));
      return;
    }
    this.editing = true;
    const area = h('textarea', { id: 'edit-value', rows: '12', spellcheck: false, value: text });
    const lease = h('input', { id: 'edit-lease', placeholder: 'none', value: kv.lease && kv.lease !== '0' ? leaseHex(kv.lease) : '' });
    fill($('#value-box'),
      h('div', { class: 'box-head' }, h('h3', {}, 'New value')),
      area,
      h('label', { class: 'inline' }, 'lease (hex) ', lease),
      h('div', { class: 'actions' },
        h('button', { id: 'edit-save', class: 'primary', onclick: () => this.save(old, area.value, lease.value) }, 'Save…'),
        h('button', { id: 'edit-cancel', onclick: () => this.show(this.key) }, 'Cancel')));
    area.focus();
  }

  async save(old, text, leaseText) {
    let lease;
    try {
      lease = leaseText.trim() ? leaseFromHex(leaseText) : null;
    } catch (err) {
      $('#value-box').append(h('p', { class: 'error' }, err.message));
      return;
    }
    const value = fromText(text);
    const key = this.key;
    const seen = this.kv.mod_revision;
    const ok = await confirmEdit({
      title: 'Put this key?',
      body: [facts([['key', displayKey(key)], ['size', `${value.length} bytes`], ['lease', lease ? leaseHex(lease) : 'none']]),
        renderDiff(comparable(old, value), comparable(value, old))],
      action: 'Put',
    });
    if (!ok) return;
    const put = { key: b64(key), value: b64(value) };
    if (lease) put.lease = lease;
    // only over the version the diff was made from: a change made meanwhile is not overwritten
    const unchanged = { key: b64(key), target: 'MOD', result: 'EQUAL', mod_revision: seen };
    const done = await runEdit(`Put ${displayKey(key)}`, async () => {
      const answer = await api.txn({ compare: [unchanged], success: [{ request_put: put }] });
      if (!answer.succeeded) throw new Error(`the key changed after revision ${seen}; nothing was written (look again, then edit)`);
      return answer;
    });
    if (done) this.show(key);
  }

  async remove() {
    const key = this.key;
    const ok = await confirmEdit({
      title: 'Delete this key?',
      body: facts([['key', displayKey(key)], ['version', this.kv.version], ['modified at', `revision ${this.kv.mod_revision}`]]),
      action: 'Delete',
      danger: true,
    });
    if (!ok) return;
    if (await runEdit(`Delete ${displayKey(key)}`, () => api.deleteRange({ key: b64(key) }))) this.show(key);
  }

  // -- a directory and new keys ---------------------------------------------------------------

  showDir(node) {
    this.key = null;
    this.editing = false;
    this.generation++;
    const prefix = node.prefix;
    fill(this.element,
      h('div', { class: 'title-row' }, h('h2', { class: 'title' }, displayKey(prefix) || node.label)),
      facts([['keys', node.count === null ? '…' : Number(node.count).toLocaleString('en-US')],
        ['range', `${displayKey(node.lo)} … ${node.hi === null ? 'end' : displayKey(node.hi)}`]]),
      h('div', { class: 'actions' },
        h('button', { onclick: () => this.newKey(prefix) }, 'New key here…'),
        h('button', { onclick: () => this.links.watchPrefix(prefix) }, 'Watch this prefix'),
        prefix ? h('button', { class: 'danger', id: 'delete-prefix', onclick: () => this.removePrefix(node) }, 'Delete these keys…') : null));
  }

  async removePrefix(node) {
    const prefix = node.prefix;
    const ok = await confirmEdit({
      title: 'Delete every key with this prefix?',
      body: facts([['prefix', displayKey(prefix)], ['keys', node.count === null ? 'unknown' : String(node.count)]]),
      action: `Delete ${node.count ?? ''} keys`,
      danger: true,
    });
    if (!ok) return;
    const end = prefixEnd(prefix);
    await runEdit(`Delete prefix ${displayKey(prefix)}`, () => api.deleteRange({ key: b64(prefix), range_end: b64(end === null ? '\0' : end) }));
  }

  newKey(prefix) {
    this.key = null;
    this.editing = true;
    this.generation++;
    const keyInput = h('input', { id: 'new-key', value: displayKey(prefix), spellcheck: false });
    const area = h('textarea', { id: 'new-value', rows: '10', spellcheck: false });
    const lease = h('input', { id: 'new-lease', placeholder: 'none' });
    const error = h('p', { class: 'error' });
    fill(this.element,
      h('h2', { class: 'title' }, 'New key'),
      h('label', { class: 'stack' }, 'key (\\xNN for any byte)', keyInput),
      h('label', { class: 'stack' }, 'value', area),
      h('label', { class: 'inline' }, 'lease (hex) ', lease),
      error,
      h('div', { class: 'actions' }, h('button', { class: 'primary', id: 'new-save', onclick: () => this.create(keyInput.value, area.value, lease.value, error) }, 'Put…')));
    keyInput.focus();
  }

  async create(keyText, text, leaseText, error) {
    const key = parseKey(keyText);
    if (!key) {
      error.textContent = 'A key is needed.';
      return;
    }
    let lease = null;
    try {
      lease = leaseText.trim() ? leaseFromHex(leaseText) : null;
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    const value = fromText(text);
    const ok = await confirmEdit({
      title: 'Put this key?',
      body: facts([['key', displayKey(key)], ['value', preview({ value: b64(value) })], ['size', `${value.length} bytes`], ['lease', lease ? leaseHex(lease) : 'none']]),
      action: 'Put',
    });
    if (!ok) return;
    const req = { key: b64(key), value: b64(value) };
    if (lease) req.lease = lease;
    if (await runEdit(`Put ${displayKey(key)}`, () => api.put(req))) {
      this.links.selectInTree(key);
      this.show(key);
    }
  }
}

/** Appends up to `n` older versions of `key` to `versions` (newest first), each read with a range
 * at the revision before the oldest one known; says why it stopped: 'created' (version 1 reached),
 * 'compacted' (older revisions are gone) or null (there may be more). */
async function olderVersions(key, versions, n) {
  let oldest = versions[versions.length - 1];
  for (let i = 0; i < n; i++) {
    const rev = Number(oldest.mod_revision) - 1;
    if (rev < Number(oldest.create_revision)) return 'created';
    let answer;
    try {
      answer = await api.range({ key: b64(key), revision: String(rev) });
    } catch (err) {
      if (api.isCompacted(err)) return 'compacted';
      throw err;
    }
    const kv = answer.kvs ? answer.kvs[0] : null;
    if (!kv) return 'created';
    versions.push(kv);
    oldest = kv;
  }
  return Number(oldest.version) === 1 ? 'created' : null;
}

function preview(kv) {
  const value = unb64(kv.value);
  const text = utf8(value);
  const shown = text === null ? `${value.length} bytes of binary` : text.replace(/\s+/g, ' ');
  return shown.length > 80 ? shown.slice(0, 80) + '…' : shown;
}

/** A diff as lines marked "-", "+" and " ", long unchanged runs folded. */
export function renderDiff(before, after) {
  const lines = diffLines(before, after);
  if (!lines.some((l) => l.op !== ' ')) return h('p', { class: 'note diff-same' }, 'The two versions are the same.');
  const pre = h('pre', { class: 'diff' });
  let i = 0;
  while (i < lines.length) {
    let j = i;
    while (j < lines.length && lines[j].op === ' ') j++;
    const run = j - i;
    const keepHead = i === 0 ? 0 : CONTEXT_LINES;
    const keepTail = j === lines.length ? 0 : CONTEXT_LINES;
    if (run > keepHead + keepTail + 1) {
      for (let k = i; k < i + keepHead; k++) pre.append(diffLine(lines[k]));
      pre.append(h('span', { class: 'fold' }, `  … ${run - keepHead - keepTail} unchanged lines …\n`));
      for (let k = j - keepTail; k < j; k++) pre.append(diffLine(lines[k]));
    } else {
      for (let k = i; k < j; k++) pre.append(diffLine(lines[k]));
    }
    while (j < lines.length && lines[j].op !== ' ') pre.append(diffLine(lines[j++]));
    i = j;
  }
  return pre;
}

const diffLine = ({ op, line }) => h('span', { class: { '+': 'add', '-': 'del', ' ': 'same' }[op] }, `${op} ${line}\n`);
