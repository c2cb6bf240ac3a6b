// etcd keys and values are bytes; the console keeps them as "binary strings" (one char per byte,
// what atob gives), so comparing two of them is comparing bytes, as etcd orders keys.

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

export const b64 = (bin) => btoa(bin);
export const unb64 = (text) => (text ? atob(text) : '');

/** The UTF-8 bytes of a JS string, as a binary string. */
export function fromText(text) {
  const bytes = encoder.encode(text);
  let out = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return out;
}

function toBytes(bin) {
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

/** The text a binary string holds as UTF-8, or null when it is not valid UTF-8. */
export function utf8(bin) {
  try {
    return strictDecoder.decode(toBytes(bin));
  } catch {
    return null;
  }
}

/** The end of the range of keys starting with `prefix` (etcd's GetPrefixRangeEnd); null: no end. */
export function prefixEnd(prefix) {
  let i = prefix.length - 1;
  while (i >= 0 && prefix.charCodeAt(i) === 0xff) i--;
  if (i < 0) return null;
  return prefix.slice(0, i) + String.fromCharCode(prefix.charCodeAt(i) + 1);
}

const hex2 = (n) => n.toString(16).padStart(2, '0');

/** A key as a person reads it: UTF-8 text, control characters and invalid bytes as \xNN. */
export function displayKey(bin) {
  const text = utf8(bin);
  if (text !== null) {
    // eslint-disable-next-line no-control-regex
    return text.replace(/[\x00-\x1f\x7f]/g, (c) => '\\x' + hex2(c.charCodeAt(0)));
  }
  let out = '';
  for (let i = 0; i < bin.length; i++) {
    const c = bin.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f ? bin[i] : '\\x' + hex2(c);
  }
  return out;
}

/** Reads a key typed by a person: text, with \xNN escapes for any byte. */
export function parseKey(text) {
  let out = '';
  let last = 0;
  for (const m of text.matchAll(/\\x([0-9a-fA-F]{2})/g)) {
    out += fromText(text.slice(last, m.index)) + String.fromCharCode(parseInt(m[1], 16));
    last = m.index + m[0].length;
  }
  return out + fromText(text.slice(last));
}

/** hexdump -C: offset, 16 bytes, their printable characters. */
export function hexDump(bin, maxBytes = Infinity) {
  const lines = [];
  const end = Math.min(bin.length, maxBytes);
  for (let off = 0; off < end; off += 16) {
    const row = bin.slice(off, Math.min(off + 16, end));
    let hex = '';
    let ascii = '';
    for (let i = 0; i < 16; i++) {
      if (i === 8) hex += ' ';
      if (i < row.length) {
        const c = row.charCodeAt(i);
        hex += hex2(c) + ' ';
        ascii += c >= 0x20 && c < 0x7f ? row[i] : '.';
      } else {
        hex += '   ';
      }
    }
    lines.push(`${off.toString(16).padStart(8, '0')}  ${hex} |${ascii}|`);
  }
  return lines.join('\n');
}

export function formatBytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** A lease ID as etcdctl prints it (hex), from the gateway's decimal int64 string. */
export const leaseHex = (id) => BigInt(id).toString(16);

/** A lease ID typed as hex (etcdctl's form) or as 0x-prefixed hex, to the gateway's decimal. */
export function leaseFromHex(text) {
  const clean = text.trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{1,16}$/.test(clean)) throw new Error(`"${text}" is not a lease ID (hex, as etcdctl prints it)`);
  return BigInt('0x' + clean).toString();
}
