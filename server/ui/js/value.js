// A value shown as text, JSON (pretty) or hex, and the text two values are compared by.

import { hexDump, utf8 } from './bytes.js';
import { h } from './dom.js';

const MODES = ['text', 'json', 'hex'];
const SHOWN_BYTES = { text: 256 * 1024, json: 256 * 1024, hex: 64 * 1024 };

function parseJson(text) {
  if (text === null || !/^\s*[[{"\d\-tfn]/.test(text)) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The mode a value is best read in: JSON if it parses as an object or array, text if it is
 * UTF-8 without control characters, hex otherwise. */
export function bestMode(bin) {
  const text = utf8(bin);
  if (text === null) return 'hex';
  const json = parseJson(text);
  if (json !== undefined && typeof json === 'object' && json !== null) return 'json';
  // eslint-disable-next-line no-control-regex
  return /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/.test(text) ? 'hex' : 'text';
}

/** The value in `mode`: {text, note} (a note says why it is not shown as asked, or cut short). */
export function present(bin, mode, whole = false) {
  const limit = whole ? Infinity : SHOWN_BYTES[mode];
  const cut = bin.length > limit ? `showing the first ${limit} of ${bin.length} bytes` : '';
  if (mode === 'hex') return { text: hexDump(bin, limit), note: cut };
  const text = utf8(bin);
  if (text === null) return { text: hexDump(bin, SHOWN_BYTES.hex), note: 'not valid UTF-8: shown as hex' };
  if (mode === 'json') {
    const json = parseJson(text);
    if (json === undefined) return { text: cutText(text, limit), note: 'not valid JSON: shown as text' };
    return { text: cutText(JSON.stringify(json, null, 2), limit), note: cut };
  }
  return { text: cutText(text, limit), note: cut };
}

const cutText = (text, limit) => (text.length > limit ? text.slice(0, limit) : text);

/** What two versions are compared by: pretty JSON when both parse, else text, else hex. */
export function comparable(bin, otherBin) {
  const a = utf8(bin);
  const b = utf8(otherBin);
  if (a === null || b === null) return hexDump(bin);
  const ja = parseJson(a);
  const jb = parseJson(b);
  if (ja !== undefined && jb !== undefined) return JSON.stringify(ja, null, 2);
  return a;
}

/** A segmented control choosing the mode. */
export function modeSwitch(current, onChange) {
  return h('div', { class: 'segmented', role: 'radiogroup', 'aria-label': 'show value as' },
    MODES.map((mode) => h('button', {
      class: mode === current ? 'on' : '',
      role: 'radio',
      'aria-checked': String(mode === current),
      dataset: { mode },
      onclick: () => onChange(mode),
    }, mode === 'json' ? 'JSON' : mode[0].toUpperCase() + mode.slice(1))));
}
