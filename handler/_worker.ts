/**
 * The entry point of a `FaultHandler`'s Worker: builds the {@linkcode FaultLoop},
 * reports `ready`, runs the loop and reports how it ended. Whatever fails, it
 * closes the userfaultfd first — waking every thread blocked in a fault — and only
 * then reports. Internal: `docs/fault-handler.md`, "Failure".
 *
 * @module
 */

import process from "node:process";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { FaultLoop } from "./_fault_loop.ts";
import {
  CTRL,
  type HandlerWorkerData,
  PAYLOAD_BYTES,
  type SerializedError,
  serializeError,
  STATE,
  type WorkerMessage,
} from "./_protocol.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";

/** Thrown by `process.exit()` in a policy: unwinds the policy; the failure is already reported. */
class WorkerExit extends Error {
  constructor() {
    super("process.exit() in the fault handler's Worker");
  }
}

/** Runs the handler in this Worker. */
async function serve(data: HandlerWorkerData): Promise<void> {
  const control = new Int32Array(data.control);
  const post = (message: WorkerMessage) => parentPort!.postMessage(message);
  let loop: FaultLoop | undefined;
  let failed = false;
  let finished = false;

  function fail(error: unknown): void {
    if (failed) return;
    failed = true;
    loop?.abort();
    // Close before reporting: the main isolate itself may be blocked in a fault.
    Userfaultfd.adopt(data.uffd).close();
    Userfaultfd.adopt(data.own).close();
    let serialized: SerializedError;
    try {
      serialized = serializeError(error);
    } catch {
      serialized = { name: "Error", message: String(error) };
    }
    // The error also goes into the payload, for a main side waiting synchronously (startSync).
    const bytes = new TextEncoder().encode(JSON.stringify(serialized));
    if (bytes.length <= PAYLOAD_BYTES) {
      new Uint8Array(data.payload).set(bytes);
      Atomics.store(control, CTRL.LENGTH, bytes.length);
      Atomics.store(control, CTRL.STATUS, 1);
    }
    Atomics.store(control, CTRL.STATE, STATE.FAILED);
    Atomics.notify(control, CTRL.RESPONSE);
    Atomics.notify(control, CTRL.STATE);
    post({ type: "failed", error: serialized });
  }

  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    fail(e.error);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    fail(e.reason);
  });
  // A policy that ends the Worker itself: close first, while this thread still runs. While
  // serving, process.exit() and close() do not end the Worker themselves — the main side
  // terminates it once the failure is reported: a node Worker that ends itself in Deno
  // 2.9.6 leaves its event loop's fds and its thread behind; a terminated idle one does not.
  process.on("exit", (code: number) => {
    if (!finished) fail(new Error(`the Worker exited (process.exit(${code})) while serving faults`));
  });
  const exit = process.exit.bind(process);
  process.exit = ((code?: number) => {
    if (finished) return exit(code);
    fail(new Error(`the Worker exited (process.exit(${code ?? ""})) while serving faults`));
    throw new WorkerExit();
  }) as typeof process.exit;
  const scope = globalThis as unknown as { close?: () => void };
  const closeWorker = scope.close;
  if (typeof closeWorker === "function") {
    scope.close = () => {
      if (!finished) fail(new Error("the Worker was closed (close()) while serving faults"));
      else closeWorker.call(globalThis);
    };
  }

  try {
    loop = await FaultLoop.create(data, post);
    Atomics.store(control, CTRL.STATE, STATE.RUNNING);
    Atomics.notify(control, CTRL.STATE);
    post({ type: "ready" });
    const reason = await loop.run();
    finished = true;
    loop.close();
    if (!failed) {
      Atomics.store(control, CTRL.STATE, STATE.STOPPED);
      Atomics.notify(control, CTRL.RESPONSE);
      Atomics.notify(control, CTRL.STATE);
      post({ type: "stopped", reason });
    }
  } catch (e) {
    finished = true;
    fail(e);
    try {
      loop?.close();
    } catch { /* already failing */ }
  }
}

// Imported anywhere else (a documentation run, a bundler's analysis), this module does nothing.
if (!isMainThread && workerData !== null && typeof workerData === "object" && "control" in workerData) {
  // Not awaited at the top level: in Deno 2.9.6 a Worker terminated while its module's
  // top-level await is pending (a policy whose promise never settles, stop() gives up)
  // leaves its event loop's fds behind. A timer keeps the Worker alive while it serves.
  const keepAlive = setInterval(() => {}, 1 << 30);
  serve(workerData as HandlerWorkerData).finally(() => clearInterval(keepAlive));
}
