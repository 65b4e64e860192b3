/**
 * The entry point of a `LiveSnapshot`'s two Workers (`node:worker_threads`
 * Workers, started from a `data:` bootstrap like a `FaultHandler`'s): the fault
 * handler (`_faults.ts`), which sleeps in `poll()` and serves each fault at
 * once, and the copier (`_copier.ts`), which saves the rest in the
 * background. Two threads, so that a write never waits behind the copier. They
 * share the page states (`_pages.ts`): each page is claimed by
 * compare-and-swap, saved once, and unprotected only after it is saved. Internal.
 *
 * Failure handling is the point of this file: whatever goes wrong in either
 * Worker — a kernel call fails, a page cannot be read, an uncaught error, an
 * exit — it first closes its reference to the userfaultfd (the fault handler's
 * close, once the copier has closed its copy too, removes every protection and
 * wakes every thread blocked in a fault, the main isolate included), tells the
 * other Worker, and only then reports.
 *
 * @module
 */

import process from "node:process";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { serializeError } from "../handler/_protocol.ts";
import { CopierLoop } from "./_copier.ts";
import { Aborted, closeTarget, CopierFailed, FaultsLoop } from "./_faults.ts";
import { COPIER_STATE, SNAP_CTRL, SNAP_STATE, type SnapshotMessage, type SnapshotWorkerData } from "./_protocol.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";

const post = (message: SnapshotMessage) => parentPort!.postMessage(message);

function serialized(error: unknown): ReturnType<typeof serializeError> {
  try {
    return serializeError(error);
  } catch {
    return { name: "Error", message: String(error) };
  }
}

/** Reports anything thrown, and a Worker that ends itself, through `fail`. */
function onAnyFailure(fail: (error: unknown) => void, ended: () => boolean): void {
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    fail(e.error);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    fail(e.reason);
  });
  process.on("exit", (code: number) => {
    if (!ended()) fail(new Error(`the snapshot's Worker exited (code ${code}) before the snapshot was complete`));
  });
}

/** The fault handler's Worker. */
function faults(data: SnapshotWorkerData): void {
  const control = new Int32Array(data.control);
  let loop: FaultsLoop | undefined;
  let ended = false;

  function fail(error: unknown): void {
    if (ended) return;
    ended = true;
    // Before anything is reported: the main isolate itself may be blocked in a fault. A watch's lent
    // userfaultfd stays open (this Worker's reference is a duplicate): every page is let through instead.
    try {
      if (data.lent !== null) loop?.releaseLent();
    } catch { /* failing already */ }
    if (data.lent === null) closeTarget(Userfaultfd.adopt(data.uffd), data.base, data.pages);
    else Userfaultfd.adopt(data.uffd).close();
    const state = error instanceof Aborted || error instanceof CopierFailed ? SNAP_STATE.ABORTED : SNAP_STATE.FAILED;
    Atomics.store(control, SNAP_CTRL.STATE, state);
    Atomics.notify(control, SNAP_CTRL.STATE);
    Atomics.notify(control, SNAP_CTRL.DELIVERED); // a copier waiting for the consumer
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
    try {
      loop?.discard();
      loop?.close();
    } catch { /* already failing */ }
    // A copier failure is reported by the copier, with its cause.
    post(state === SNAP_STATE.ABORTED ? { type: "aborted" } : { type: "failed", error: serialized(error) });
  }

  onAnyFailure(fail, () => ended);
  try {
    loop = new FaultsLoop(data);
    const dataPages = loop.setup();
    Atomics.store(control, SNAP_CTRL.STATE, SNAP_STATE.RUNNING);
    Atomics.notify(control, SNAP_CTRL.STATE);
    post({ type: "protected", dataPages });
    const file = loop.run();
    loop.close();
    ended = true;
    Atomics.store(control, SNAP_CTRL.STATE, SNAP_STATE.DONE);
    Atomics.notify(control, SNAP_CTRL.STATE);
    Atomics.notify(control, SNAP_CTRL.PUBLISHED);
    post(file ? { type: "done", file } : { type: "done" });
    if (data.lent !== null) {
      // The watch's faults until the main side takes its userfaultfd back (it answered "done" with RETURNED).
      try {
        loop.serveLent();
      } catch {
        loop.releaseLent(); // nobody left waiting; every page counted written
        Userfaultfd.adopt(data.uffd).close();
      }
      post({ type: "returned" });
    }
  } catch (e) {
    fail(e);
  }
}

/** The copier's Worker. */
function copier(data: SnapshotWorkerData): void {
  const loop = new CopierLoop(data);
  let ended = false;

  function fail(error: unknown): void {
    if (ended) return;
    ended = true;
    loop.end(COPIER_STATE.FAILED); // closes its userfaultfd and wakes the fault handler, which gives up too
    post({ type: "failed", error: serialized(error) });
  }

  onAnyFailure(fail, () => ended);
  try {
    loop.run();
    ended = true;
    loop.end(COPIER_STATE.DONE);
    post({ type: "done" });
  } catch (e) {
    fail(e);
  }
}

// Imported anywhere else (a documentation run, a bundler's analysis), this module does nothing.
if (!isMainThread && workerData !== null && typeof workerData === "object" && "role" in workerData) {
  const data = workerData as SnapshotWorkerData;
  if (data.role === "faults") faults(data);
  else copier(data);
}
