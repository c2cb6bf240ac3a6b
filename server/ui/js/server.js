// The server's state: the bar at the top (revision, compact revision, DB size, alarms, members)
// and the Server tab (status, members, alarms, compaction).

import * as api from './api.js';
import { b64, formatBytes, leaseHex } from './bytes.js';
import { fill, h } from './dom.js';
import { probeKey } from './session.js';
import { confirmEdit, facts, runEdit } from './ui.js';

const POLL_MS = 5000;

export class ServerView {
  constructor(element, bar) {
    this.element = element;
    this.bar = bar;
    this.status = null;
    this.members = [];
    this.alarms = [];
    this.errors = [];
    this.readableFrom = 0; // the oldest revision a read can ask for (see compactRevision)
    this.timer = null;
    this.compactInput = h('input', { id: 'compact-rev', type: 'number', min: '1' });
    this.physical = h('input', { id: 'compact-physical', type: 'checkbox' });
    api.events.addEventListener('revision', () => this.renderBar());
  }

  start() {
    this.poll();
    this.timer = setInterval(() => {
      if (!document.hidden) this.poll();
    }, POLL_MS);
  }

  async poll() {
    const [status, members, alarms] = await Promise.allSettled([api.status(), api.members(), api.alarms()]);
    this.errors = [status, members, alarms].filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    if (status.status === 'fulfilled') this.status = status.value;
    if (members.status === 'fulfilled') this.members = members.value.members || [];
    if (alarms.status === 'fulfilled') this.alarms = alarms.value.alarms || [];
    try {
      this.readableFrom = await this.compactRevision();
    } catch (err) {
      this.errors.push(err.message);
    }
    this.renderBar();
    // not while the user is typing in the tab's form (it would lose the focus)
    const active = document.activeElement;
    if (!(active && this.element.contains(active) && active.matches('input, select, textarea'))) this.render();
  }

  /** etcd's API does not tell the compact revision; it is the oldest revision a range may ask
   * for (older ones fail with "compacted"), found by bisection and then checked with one read
   * (the compact revision only grows). 0 when nothing is known; 1 reads as "never compacted". */
  async compactRevision() {
    const key = probeKey();
    if (key === undefined) return 0;
    const readable = async (rev) => {
      try {
        await api.range({ key: b64(key), revision: String(rev), count_only: true });
        return true;
      } catch (err) {
        if (api.isCompacted(err)) return false;
        throw err;
      }
    };
    const known = this.readableFrom || 1;
    if (await readable(known)) return known;
    let lo = known + 1; // unreadable below lo ...
    let hi = api.revision(); // ... readable at hi
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (await readable(mid)) hi = mid;
      else lo = mid + 1;
    }
    return hi;
  }

  get compacted() {
    return this.readableFrom > 1 ? this.readableFrom : 0;
  }

  renderBar() {
    const st = this.status;
    const item = (id, label, value, cls = '') => h('span', { class: `stat ${cls}`, id }, h('span', { class: 'label' }, label), ' ', value);
    const alarms = this.alarms.length ? this.alarms.map((a) => a.alarm || 'NONE').join(', ') : 'none';
    fill(this.bar,
      item('stat-revision', 'revision', String(api.revision())),
      item('stat-compact', 'compacted', String(this.compacted)),
      item('stat-db', 'DB', st ? `${formatBytes(st.dbSize || 0)} (${formatBytes(st.dbSizeInUse || 0)} in use)` : '…'),
      item('stat-alarms', 'alarms', alarms, this.alarms.length ? 'alarm' : ''),
      item('stat-members', 'members', String(this.members.length || '…')));
  }

  render() {
    const st = this.status || {};
    const hex = (id) => (id ? leaseHex(id) : '');
    if (!this.compactInput.value) this.compactInput.value = String(api.revision());
    fill(this.element,
      this.errors.map((e) => h('p', { class: 'error' }, e)),
      h('section', { class: 'card' }, h('h3', {}, 'Status'), facts([
        ['version', st.version || ''],
        ['member', hex(st.header && st.header.member_id)],
        ['leader', hex(st.leader)],
        ['raft term', st.raftTerm || ''],
        ['raft index', st.raftIndex || ''],
        ['revision', String(api.revision())],
        ['compact revision', String(this.compacted)],
        ['DB size', formatBytes(st.dbSize || 0)],
        ['DB size in use', formatBytes(st.dbSizeInUse || 0)],
      ])),
      h('section', { class: 'card' }, h('h3', {}, 'Alarms'),
        this.alarms.length
          ? h('ul', { id: 'alarms' }, this.alarms.map((a) => h('li', { class: 'alarm' }, `${a.alarm} on member ${hex(a.memberID)}`)))
          : h('p', { class: 'note', id: 'alarms' }, 'No alarm is raised.')),
      h('section', { class: 'card' }, h('h3', {}, 'Compaction'),
        h('p', { class: 'note' }, 'Compacting drops every version older than the revision: reads and watches from before it fail.'),
        h('form', { class: 'toolbar', onsubmit: (ev) => {
          ev.preventDefault();
          this.compact();
        } },
        h('label', { class: 'inline' }, 'revision ', this.compactInput),
        h('label', { class: 'inline' }, this.physical, ' physical (wait until it is done)'),
        h('button', { class: 'danger', id: 'compact' }, 'Compact…'))),
      h('section', { class: 'card wide' }, h('h3', {}, 'Members'),
        h('table', { class: 'grid', id: 'members' },
          h('thead', {}, h('tr', {}, ['name', 'ID', 'peer URLs', 'client URLs', 'learner'].map((t) => h('th', {}, t)))),
          h('tbody', {}, this.members.map((m) => h('tr', {},
            h('td', {}, m.name || '(unstarted)'), h('td', { class: 'mono' }, hex(m.ID)),
            h('td', {}, (m.peerURLs || []).join(', ')), h('td', {}, (m.clientURLs || []).join(', ')),
            h('td', {}, m.isLearner ? 'yes' : 'no')))))));
  }

  async compact() {
    const rev = Number(this.compactInput.value);
    const ok = await confirmEdit({
      title: 'Compact the key history?',
      body: facts([['up to revision', String(rev)], ['current revision', String(api.revision())], ['physical', this.physical.checked ? 'yes' : 'no']]),
      action: 'Compact',
      danger: true,
    });
    if (!ok) return;
    await runEdit(`Compact at revision ${rev}`, () => api.compact({ revision: String(rev), physical: this.physical.checked }),
      () => `Compacted: versions older than revision ${rev} are gone`);
    this.poll();
  }
}
