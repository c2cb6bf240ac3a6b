// The Leases tab: every lease with its TTL counting down and its keys; grant and revoke.
// Lease IDs are shown in hex, as etcdctl prints them.

import * as api from './api.js';
import { displayKey, leaseFromHex, leaseHex, unb64 } from './bytes.js';
import { fill, h } from './dom.js';
import { confirmEdit, facts, runEdit } from './ui.js';

const SHOWN = 100; // leases whose details are fetched (a TimeToLive each) per page
const POLL_MS = 3000;
const TICK_MS = 250;

export class LeasesView {
  /** links: openKey(key) */
  constructor(element, links) {
    this.element = element;
    this.links = links;
    this.leases = [];
    this.total = 0;
    this.shown = SHOWN;
    this.timers = [];
    this.busy = false;
    this.again = false;
    this.expiredSeen = false;
    this.highlight = null;
    this.error = null;
    this.build();
  }

  build() {
    const ttl = h('input', { id: 'grant-ttl', type: 'number', min: '1', value: '60' });
    const id = h('input', { id: 'grant-id', placeholder: 'chosen by the server' });
    this.list = h('div', { id: 'lease-list' });
    fill(this.element,
      h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        this.grant(ttl.value, id.value);
      } },
      h('label', { class: 'inline' }, 'TTL (s) ', ttl),
      h('label', { class: 'inline' }, 'ID (hex) ', id),
      h('button', { class: 'primary', id: 'grant' }, 'Grant lease…')),
      this.list);
  }

  activate() {
    this.deactivate();
    this.refresh();
    this.timers = [setInterval(() => this.refresh(), POLL_MS), setInterval(() => this.tick(), TICK_MS)];
  }

  deactivate() {
    this.timers.forEach(clearInterval);
    this.timers = [];
  }

  async refresh() {
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    this.again = false;
    try {
      const answer = await api.leaseLeases();
      const ids = (answer.leases || []).map((l) => l.ID)
        .sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
      this.total = ids.length;
      const details = await Promise.all(ids.slice(0, this.shown).map((id) => this.timeToLive(id)));
      this.leases = details.filter((d) => d.ttl >= 0 || d.error);
      this.error = null;
    } catch (err) {
      this.error = err.message;
    } finally {
      this.busy = false;
    }
    this.expiredSeen = false;
    this.render();
    if (this.again) this.refresh();
  }

  async timeToLive(id) {
    const base = { id, at: performance.now() };
    try {
      const r = await api.leaseTimeToLive({ ID: id, keys: true });
      return { ...base, ttl: Number(r.TTL), granted: Number(r.grantedTTL), keys: (r.keys || []).map(unb64) };
    } catch (err) {
      if (err.code !== api.GRPC.PERMISSION_DENIED) return { ...base, ttl: -1, error: err.message };
    }
    try { // some of its keys are not readable by this user: the lease without them
      const r = await api.leaseTimeToLive({ ID: id });
      return { ...base, ttl: Number(r.TTL), granted: Number(r.grantedTTL), keys: null };
    } catch (err) {
      return { ...base, ttl: -1, error: err.message };
    }
  }

  remaining(lease) {
    return Math.max(0, lease.ttl - (performance.now() - lease.at) / 1000);
  }

  /** Redraws the countdowns; a lease at zero makes the list be read again (the server revokes it). */
  tick() {
    for (const lease of this.leases) {
      const cell = lease.cell;
      if (!cell) continue;
      const left = this.remaining(lease);
      cell.firstChild.textContent = `${Math.ceil(left)}s`;
      cell.lastChild.firstChild.style.width = `${lease.granted ? (100 * left) / lease.granted : 0}%`;
      if (left <= 0 && !this.expiredSeen) {
        this.expiredSeen = true;
        setTimeout(() => this.refresh(), 600);
      }
    }
  }

  render() {
    const rows = this.leases.map((lease) => {
      const hex = leaseHex(lease.id);
      lease.cell = h('td', { class: 'ttl' }, h('span', {}, ''), h('div', { class: 'bar' }, h('div', {})));
      const keys = lease.keys === null ? h('span', { class: 'note' }, 'not readable by this user')
        : lease.keys.length ? lease.keys.map((k) => h('button', { class: 'link key-link', onclick: () => this.links.openKey(k) }, displayKey(k)))
          : h('span', { class: 'note' }, 'none');
      return h('tr', { dataset: { lease: hex }, class: hex === this.highlight ? 'flash' : '' },
        h('td', { class: 'mono' }, hex),
        h('td', {}, lease.error ? h('span', { class: 'error' }, lease.error) : `${lease.granted}s`),
        lease.cell,
        h('td', { class: 'keys' }, keys),
        h('td', {}, h('button', { class: 'danger small', onclick: () => this.revoke(lease) }, 'Revoke…')));
    });
    const more = this.total > this.leases.length && this.shown < this.total
      ? h('button', { class: 'link', onclick: () => { this.shown += SHOWN; this.refresh(); } }, `show ${SHOWN} more`) : null;
    fill(this.list,
      this.error ? h('p', { class: 'error' }, this.error) : null,
      h('p', { class: 'note' }, `${this.total} lease${this.total === 1 ? '' : 's'}`),
      this.leases.length ? h('table', { class: 'grid', id: 'leases' },
        h('thead', {}, h('tr', {}, ['ID', 'granted', 'remaining', 'keys', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, rows)) : null,
      more);
    this.tick();
  }

  show(hex) {
    this.highlight = hex;
    this.render();
  }

  async grant(ttlText, idText) {
    const ttl = Number(ttlText);
    let id = null;
    try {
      if (!Number.isInteger(ttl) || ttl <= 0) throw new Error('The TTL is a whole number of seconds.');
      id = idText.trim() ? leaseFromHex(idText) : null;
    } catch (err) {
      this.list.prepend(h('p', { class: 'error' }, err.message));
      return;
    }
    const ok = await confirmEdit({
      title: 'Grant a lease?',
      body: facts([['TTL', `${ttl} s`], ['ID', id ? leaseHex(id) : 'chosen by the server']]),
      action: 'Grant',
    });
    if (!ok) return;
    const req = { TTL: String(ttl) };
    if (id) req.ID = id;
    const answer = await runEdit('Grant lease', () => api.leaseGrant(req));
    if (answer) this.show(leaseHex(answer.ID));
    this.refresh();
  }

  async revoke(lease) {
    const hex = leaseHex(lease.id);
    const keys = lease.keys === null ? 'its keys (not readable by this user)'
      : lease.keys.length ? lease.keys.map(displayKey).join(', ') : 'none';
    const ok = await confirmEdit({
      title: 'Revoke this lease?',
      body: facts([['lease', hex], ['keys deleted with it', keys]]),
      action: 'Revoke',
      danger: true,
    });
    if (!ok) return;
    await runEdit(`Revoke lease ${hex}`, () => api.leaseRevoke({ ID: lease.id }));
    this.refresh();
  }
}
