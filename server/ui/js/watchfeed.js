// The Watch tab: a live feed of the events on a key or prefix (a /v3/watch stream), newest first.

import { displayKey, parseKey, prefixEnd, unb64, utf8 } from './bytes.js';
import { fill, h } from './dom.js';
import { WatchStream } from './watch.js';

const KEPT = 500; // events kept in the feed

export class WatchFeed {
  /** links: openKey(key) */
  constructor(element, links) {
    this.element = element;
    this.links = links;
    this.stream = null;
    this.seen = 0;
    this.build();
  }

  build() {
    this.keyInput = h('input', { id: 'watch-key', placeholder: 'key or prefix (empty: every key)', spellcheck: false });
    this.prefixBox = h('input', { id: 'watch-prefix', type: 'checkbox', checked: true });
    this.revInput = h('input', { id: 'watch-rev', type: 'number', min: '1', placeholder: 'now' });
    this.prevBox = h('input', { id: 'watch-prev', type: 'checkbox' });
    this.state = h('span', { id: 'watch-state', class: 'note' }, 'not watching');
    this.rows = h('tbody', {});
    fill(this.element,
      h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        this.start();
      } },
      this.keyInput,
      h('label', { class: 'inline' }, this.prefixBox, ' prefix'),
      h('label', { class: 'inline' }, 'from revision ', this.revInput),
      h('label', { class: 'inline' }, this.prevBox, ' previous values'),
      h('button', { class: 'primary', id: 'watch-start' }, 'Watch'),
      h('button', { type: 'button', id: 'watch-stop', onclick: () => this.stop() }, 'Stop'),
      h('button', { type: 'button', onclick: () => this.clear() }, 'Clear')),
      h('p', {}, this.state),
      h('table', { class: 'grid', id: 'feed' },
        h('thead', {}, h('tr', {}, ['revision', 'event', 'key', 'value', 'version', 'time'].map((t) => h('th', {}, t)))),
        this.rows));
  }

  /** Watches `prefix` (from the Keys tab). */
  watchPrefix(prefix) {
    this.keyInput.value = displayKey(prefix);
    this.prefixBox.checked = true;
    this.revInput.value = '';
    this.start();
  }

  start() {
    this.stop();
    const lo = parseKey(this.keyInput.value);
    const isPrefix = this.prefixBox.checked;
    let range;
    if (lo === '') range = isPrefix ? { lo: '\0', hi: null } : null;
    else range = { lo, hi: isPrefix ? prefixEnd(lo) : lo + '\0' };
    if (!range) {
      this.state.textContent = 'Give a key, or tick "prefix" to watch every key.';
      return;
    }
    const what = lo === '' ? 'every key' : `${isPrefix ? 'prefix' : 'key'} ${displayKey(lo)}`;
    const from = Number(this.revInput.value) || 0;
    this.seen = 0;
    this.stream = new WatchStream([range], {
      onEvents: (events) => this.add(events),
      onCanceled: (msg) => {
        const why = msg.compact_revision ? `revision ${from} is compacted (compact revision ${msg.compact_revision})` : msg.cancel_reason || 'canceled by the server';
        this.stream.stop();
        this.state.textContent = `stopped: ${why}`;
      },
      onState: (state) => {
        this.state.textContent = state === 'watching' ? `watching ${what}, ${this.seen} events` : `${what}: ${state}`;
        this.what = what;
      },
    }, { startRevision: from, prevKv: this.prevBox.checked }).start();
  }

  stop() {
    if (this.stream) this.stream.stop();
    this.stream = null;
  }

  clear() {
    this.rows.replaceChildren();
    this.seen = 0;
  }

  add(events) {
    const time = new Date().toLocaleTimeString();
    const rows = document.createDocumentFragment();
    for (const ev of events) {
      const kv = ev.kv;
      const key = unb64(kv.key);
      const type = ev.type === 'DELETE' ? 'DELETE' : 'PUT';
      const value = type === 'PUT' ? short(unb64(kv.value))
        : ev.prev_kv ? `was: ${short(unb64(ev.prev_kv.value))}` : '';
      rows.prepend(h('tr', { class: type.toLowerCase(), dataset: { key: displayKey(key) } },
        h('td', {}, kv.mod_revision),
        h('td', {}, h('span', { class: `badge ${type.toLowerCase()}` }, type)),
        h('td', {}, h('button', { class: 'link key-link', onclick: () => this.links.openKey(key) }, displayKey(key))),
        h('td', { class: 'preview' }, value),
        h('td', {}, type === 'PUT' ? kv.version : ''),
        h('td', { class: 'note' }, time)));
      this.seen++;
    }
    this.rows.prepend(rows); // newest first
    while (this.rows.children.length > KEPT) this.rows.lastChild.remove();
    if (this.what) this.state.textContent = `watching ${this.what}, ${this.seen} events`;
  }
}

function short(bin) {
  const text = utf8(bin);
  const shown = text === null ? `${bin.length} bytes of binary` : text.replace(/\s+/g, ' ');
  return shown.length > 100 ? shown.slice(0, 100) + '…' : shown;
}
