/**
 * Callbacks that run when a `Userfaultfd` is closed on this thread. A thread
 * blocked in `poll()` on a userfaultfd holds a reference to it, so closing the
 * fd neither wakes that poll nor releases the userfaultfd: whoever polls
 * (`events()`, a `FaultHandler`) registers a callback here that wakes it through
 * its eventfd. Internal: not exported from `mod.ts`.
 *
 * @module
 */

const listeners = new WeakMap<object, Set<() => void>>();

/** Runs `listener` once when `uffd` is closed on this thread; returns a function that unregisters it. */
export function onClose(uffd: object, listener: () => void): () => void {
  let set = listeners.get(uffd);
  if (!set) listeners.set(uffd, set = new Set());
  set.add(listener);
  return () => set.delete(listener);
}

/** Called by `Userfaultfd.close()` after the fd is closed: runs and forgets the listeners. */
export function notifyClosed(uffd: object): void {
  const set = listeners.get(uffd);
  if (!set) return;
  listeners.delete(uffd);
  for (const listener of set) {
    try {
      listener();
    } catch { /* a waker must not stop the others */ }
  }
}
