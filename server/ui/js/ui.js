// Confirmation dialog and notices, shared by every view.

import { $, fill, h } from './dom.js';

/** Shows what an edit will do; resolves true only when the user confirms it. */
export function confirmEdit({ title, body, action, danger = false }) {
  const dialog = $('#confirm');
  fill($('#confirm-title'), title);
  fill($('#confirm-body'), body);
  const ok = $('#confirm-ok');
  ok.textContent = action;
  ok.classList.toggle('danger', danger);
  return new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener('close', done);
      resolve(dialog.returnValue === 'confirm');
    };
    dialog.returnValue = '';
    dialog.addEventListener('close', done);
    dialog.showModal();
    $('#confirm-cancel').focus();
  });
}

/** A notice in the corner: kind 'ok' or 'error'; errors stay until dismissed. */
export function notify(text, kind = 'ok') {
  const item = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, text),
    h('button', { class: 'link', 'aria-label': 'dismiss', onclick: () => item.remove() }, '×'));
  $('#toasts').append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 4000);
}

/** Runs an edit the user confirmed ("Put /a"), reporting its outcome (`done` words a success);
 * null when it failed. */
export async function runEdit(what, operation, done = null) {
  try {
    const result = await operation();
    const rev = result && result.header && result.header.revision;
    notify(done ? done(result) : rev ? `${what}: done, revision ${rev}` : `${what}: done`);
    return result;
  } catch (err) {
    notify(`${what} failed: ${err.message}`, 'error');
    return null;
  }
}

/** A labelled definition list from [label, value] pairs. */
export function facts(pairs, cls = 'facts') {
  return h('dl', { class: cls }, pairs.filter(Boolean).map(([label, value]) => [h('dt', {}, label), h('dd', {}, value)]));
}
