// The console's entry point: asks for a user when auth is on, then runs the four tabs.

import * as api from './api.js';
import { parseKey } from './bytes.js';
import { $, fill, h } from './dom.js';
import { KeyView } from './keyview.js';
import { LeasesView } from './leases.js';
import { ServerView } from './server.js';
import { login, loginRequired, session } from './session.js';
import { KeyTree } from './tree.js';
import { notify } from './ui.js';
import { WatchStream } from './watch.js';
import { WatchFeed } from './watchfeed.js';

const TABS = ['keys', 'leases', 'watch', 'server'];

class ConsoleApp {
  constructor() {
    this.keyView = new KeyView($('#detail'), {
      openLease: (hex) => this.openLease(hex),
      watchPrefix: (prefix) => this.watchPrefix(prefix),
      selectInTree: (key) => this.tree.select(key),
    });
    this.tree = new KeyTree($('#tree'), {
      onKey: (key) => this.keyView.show(key),
      onDir: (node) => this.keyView.showDir(node),
    });
    this.leases = new LeasesView($('#tab-leases'), { openKey: (key) => this.openKey(key) });
    this.feed = new WatchFeed($('#tab-watch'), { openKey: (key) => this.openKey(key) });
    this.server = new ServerView($('#tab-server'), $('#stats'));
    this.treeWatch = null;
    this.prefix = '';
    this.tab = null;
  }

  start() {
    for (const button of document.querySelectorAll('nav.tabs button')) {
      button.addEventListener('click', () => this.showTab(button.dataset.tab));
    }
    window.addEventListener('hashchange', () => this.showTab(location.hash.slice(1)));
    $('#prefix-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.prefix = parseKey($('#prefix').value);
      this.showTree();
    });
    $('#new-key-button').addEventListener('click', () => this.keyView.newKey(this.prefix));
    this.renderUser();
    this.server.start();
    this.showTree();
    this.showTab(TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'keys');
  }

  /** Lists the tree again and watches what it shows, so it follows every change. */
  showTree() {
    if (this.treeWatch) this.treeWatch.stop();
    this.tree.show(session.scopes, this.prefix);
    const ranges = this.tree.ranges();
    if (!ranges.length) return;
    this.treeWatch = new WatchStream(ranges, {
      onEvents: (events) => {
        for (const ev of events) {
          const key = atob(ev.kv.key);
          this.tree.changed(key);
          this.keyView.changed(key);
        }
      },
      onCanceled: (msg) => {
        // reconnected after a compaction passed the revision it resumes from: list everything again
        if (msg.compact_revision) this.showTree();
      },
      onState: (state) => {
        $('#tree-state').textContent = state === 'watching' ? 'live' : state;
        $('#tree-state').className = state === 'watching' ? 'live' : 'note';
      },
    }).start();
  }

  showTab(name) {
    if (!TABS.includes(name) || name === this.tab) return;
    this.tab = name;
    for (const tab of TABS) {
      $(`#tab-${tab}`).hidden = tab !== name;
      $(`nav.tabs button[data-tab="${tab}"]`).setAttribute('aria-selected', String(tab === name));
    }
    if (name === 'leases') this.leases.activate();
    else this.leases.deactivate();
    if (location.hash.slice(1) !== name) history.replaceState(null, '', `#${name}`);
  }

  openKey(key) {
    this.showTab('keys');
    this.tree.select(key);
    this.keyView.show(key);
  }

  openLease(hex) {
    this.showTab('leases');
    this.leases.show(hex);
  }

  watchPrefix(prefix) {
    this.showTab('watch');
    this.feed.watchPrefix(prefix);
  }

  renderUser() {
    const user = $('#user');
    if (!session.authEnabled) {
      fill(user, h('span', { class: 'note' }, 'auth off'));
      return;
    }
    fill(user, h('span', {}, 'user ', h('strong', { id: 'user-name' }, session.user)),
      session.fullAccess ? null : h('span', { class: 'note', title: 'only the keys this user may read are shown' }, ' (limited)'),
      ' ', h('button', { class: 'link', id: 'logout', onclick: logout }, 'log out'));
  }
}

/** Forgets the token: the page is loaded afresh, with nothing kept. */
function logout() {
  api.setToken(null);
  location.reload();
}

/** The login dialog; resolves once a user is logged in.  The password is read once from the
 * form, sent to Authenticate and cleared; only the token is kept (in memory). */
function askLogin(reason) {
  const dialog = $('#login');
  const form = $('#login-form');
  fill($('#login-reason'), reason || '');
  $('#login-error').textContent = '';
  return new Promise((resolve) => {
    const submit = async (ev) => {
      ev.preventDefault();
      const name = $('#login-user').value;
      const password = $('#login-password');
      const secret = password.value;
      password.value = '';
      $('#login-error').textContent = '';
      try {
        await login(name, secret);
      } catch (err) {
        $('#login-error').textContent = err.message;
        password.focus();
        return;
      }
      form.removeEventListener('submit', submit);
      dialog.close();
      resolve();
    };
    form.addEventListener('submit', submit);
    dialog.showModal();
    ($('#login-user').value ? $('#login-password') : $('#login-user')).focus();
  });
}

async function boot() {
  $('#login').addEventListener('cancel', (ev) => ev.preventDefault()); // no way around the login
  let needLogin;
  try {
    needLogin = await loginRequired();
  } catch (err) {
    fill($('#detail'), h('p', { class: 'error' }, `The server does not answer: ${err.message}`));
    return;
  }
  if (needLogin) await askLogin('Authentication is enabled on this server: log in as an etcd user.');
  const app = new ConsoleApp();
  let relogging = false;
  api.events.addEventListener('authrequired', async (ev) => {
    if (relogging) return;
    relogging = true;
    session.authEnabled = true; // it may have been turned on while the page was open
    await askLogin(`The server asks for a login again (${ev.detail}).`);
    relogging = false;
    app.renderUser();
    app.showTree();
    app.server.poll();
    notify(`Logged in again as ${session.user}.`);
  });
  app.start();
  document.body.dataset.ready = 'true';
}

boot();
