// A watch stream over the gateway: one POST /v3/watch carrying one create_request per range,
// answered by a line per WatchResponse.  When the stream breaks (server restart, network) it is
// opened again from the revision after the last one seen, so no event is lost or repeated.

import * as api from './api.js';
import { b64 } from './bytes.js';

const RETRY_MS = 2000;

export class WatchStream {
  /**
   * ranges: [{lo, hi}] (binary strings; hi null: every key from lo on; hi === lo + '\0': one key)
   * handlers: onEvents(events, header, rangeIndex), onCanceled(response, rangeIndex),
   *           onState(text) ('watching', 'reconnecting: ...', 'stopped')
   */
  constructor(ranges, handlers, { startRevision = 0, prevKv = false } = {}) {
    this.ranges = ranges;
    this.handlers = handlers;
    this.nextRevision = startRevision; // 0: from now on
    this.prevKv = prevKv;
    this.controller = null;
    this.stopped = false;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.state('stopped');
  }

  state(text) {
    if (this.handlers.onState) this.handlers.onState(text);
  }

  createRequests() {
    return this.ranges.map((r) => {
      const req = { key: b64(r.lo), range_end: b64(r.hi === null ? '\0' : r.hi) };
      if (r.hi === r.lo + '\0') delete req.range_end;
      if (this.nextRevision > 0) req.start_revision = String(this.nextRevision);
      if (this.prevKv) req.prev_kv = true;
      return { create_request: req };
    });
  }

  async open() {
    const controller = new AbortController();
    this.controller = controller;
    const ids = new Map(); // watch_id -> index of the range, in the order the creates are answered
    try {
      await api.stream('../v3/watch', this.createRequests(), (msg) => this.receive(msg, ids), { signal: controller.signal });
      if (!this.stopped && controller === this.controller) this.retry('the stream ended');
    } catch (err) {
      if (controller !== this.controller || this.stopped || err.name === 'AbortError') return;
      if (api.isAuthRequired(err)) {
        this.state(`stopped: ${err.message}`);
        return;
      }
      this.retry(err.message);
    }
  }

  receive(msg, ids) {
    const id = msg.watch_id || '0';
    if (msg.created) {
      ids.set(id, ids.size);
      if (this.nextRevision === 0) this.nextRevision = Number(msg.header.revision) + 1;
      if (ids.size === this.ranges.length) this.state('watching');
    }
    const index = ids.get(id) ?? 0;
    if (msg.events && msg.events.length) {
      const last = msg.events[msg.events.length - 1];
      this.nextRevision = Math.max(this.nextRevision, Number(last.kv.mod_revision) + 1);
      this.handlers.onEvents(msg.events, msg.header, index);
    }
    if (msg.canceled && this.handlers.onCanceled) this.handlers.onCanceled(msg, index);
  }

  retry(reason) {
    this.state(`reconnecting: ${reason}`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (!this.stopped) this.open();
    }, RETRY_MS);
  }
}
