/// <reference lib="deno.worker" />
/**
 * A test Worker that closes a userfaultfd shared with it (`uffd.share()`) after
 * `afterMs` — from a thread other than the main isolate, which may be blocked in
 * a fault on it. Answers `{ closed: true }`.
 *
 * @module
 */

import { type SharedUserfaultfd, Userfaultfd } from "../../mod.ts";

self.onmessage = (e: MessageEvent<{ shared: SharedUserfaultfd; afterMs: number }>) => {
  setTimeout(() => {
    Userfaultfd.adopt(e.data.shared).close();
    self.postMessage({ closed: true });
  }, e.data.afterMs);
};
