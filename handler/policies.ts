/**
 * How a {@linkcode FaultHandler} resolves faults: a policy. A policy runs inside
 * the handler's Worker; the main side only names it with a {@linkcode PolicySpec}
 * (a module URL, an export and cloneable options), built by the functions of
 * {@linkcode policies}:
 *
 * - `policies.unprotect({ chunk })`: write-protect faults → remove protection
 *   (from the page, or from the aligned chunk of pages around it) and record the
 *   pages as written, for `handler.collect()`.
 * - `policies.zerofill()`: missing faults → `UFFDIO_ZEROPAGE`.
 * - `policies.copyFrom(source)`: missing faults → `UFFDIO_COPY` from a file, bytes
 *   or another region, at the page's offset.
 * - `policies.continue()`: minor faults (shmem, hugetlbfs) → `UFFDIO_CONTINUE`.
 * - `policies.module(url, options)`: your own policy.
 *
 * A policy module exports a factory `(options, context) => FaultPolicy` (as its
 * default export, or under the name given to `policies.module`). The built-ins are
 * such factories too (`unprotectPolicy`, … in `builtin_policies.ts`, the Worker's
 * side), so a policy of your own can wrap one.
 *
 * @example A policy of your own: zero-fill, and count faults per thread
 * ```ts ignore
 * // count_threads.ts
 * import type { Fault, FaultPolicy, PolicyContext } from "@uffd/uffd";
 * export default function (_options: unknown, context: PolicyContext): FaultPolicy {
 *   const perThread = new Map<number, number>();
 *   return {
 *     fault(fault: Fault) {
 *       perThread.set(fault.threadId, (perThread.get(fault.threadId) ?? 0) + 1);
 *       context.zeropage(fault.page, context.pageSize);
 *     },
 *     control(op: string) {
 *       if (op === "perThread") return Object.fromEntries(perThread);
 *       throw new Error(`unknown operation ${op}`);
 *     },
 *   };
 * }
 * // main.ts
 * const handler = await FaultHandler.start(uffd, policies.module(new URL("./count_threads.ts", import.meta.url)));
 * console.log(handler.control("perThread"));
 * ```
 *
 * @module
 */

import { invalid } from "../kernel/errors.ts";
import { toAddress } from "../kernel/range.ts";
import { flag, optionsBag, positiveInteger } from "../kernel/_validate.ts";
import type { CopySourceSpec, MapPagesOptions, PolicySpec, UnprotectOptions } from "./fault_policy.ts";

/**
 * Where `policies.copyFrom` reads pages: a file (a path or `file:` URL), bytes (a
 * `Uint8Array`, copied once into shared memory unless it already is shared), or
 * memory in this process (a `Region`, or any `{ address, length }`). Tracked page
 * `i` is filled from offset `i * pageSize`; past the end of the source, pages are
 * zero-filled. Memory must stay mapped while the handler runs (a `UFFDIO_COPY` from
 * unmapped memory fails the handler with `EFAULT`), and must not be registered for
 * missing faults on the same userfaultfd: the handler would fault on its own source
 * and wait for itself (`FaultHandler.start` refuses both when it starts).
 */
export type CopySource = string | URL | Uint8Array | { readonly address: bigint; readonly length: number | bigint };

/**
 * The URL of the module holding the built-in policies' factories (`builtin_policies.ts`),
 * computed once: the specs name it, the handler recognizes it (a `copyFrom` spec is
 * checked before start) and its Worker imports it statically instead of by URL.
 */
export const BUILTIN_POLICIES: string = new URL("./builtin_policies.ts", import.meta.url).href;

function spec(name: string, exportName: string, options: unknown): PolicySpec {
  return Object.freeze({ name, module: BUILTIN_POLICIES, export: exportName, options });
}

function copySourceSpec(source: CopySource): CopySourceSpec {
  const operation = "policies.copyFrom";
  if (typeof source === "string") {
    if (source.length === 0) throw invalid(operation, "the source path is empty");
    return { kind: "file", path: source };
  }
  if (source instanceof URL) {
    if (source.protocol !== "file:") throw invalid(operation, "a URL source must be a file: URL", { url: source.href });
    return { kind: "file", path: decodeURIComponent(source.pathname) };
  }
  if (source instanceof Uint8Array) {
    // The Worker gets the SharedArrayBuffer itself, not the view: Deno clones a large view of one element by
    // element (64 MiB took about 20 s to reach the Worker), the buffer is shared at once.
    if (source.buffer instanceof SharedArrayBuffer) {
      return { kind: "bytes", buffer: source.buffer, offset: source.byteOffset, length: source.byteLength };
    }
    const shared = new SharedArrayBuffer(Math.max(source.byteLength, 1));
    new Uint8Array(shared).set(source);
    return { kind: "bytes", buffer: shared, offset: 0, length: source.byteLength };
  }
  if (source !== null && typeof source === "object" && typeof source.address === "bigint") {
    const address = toAddress(source.address, operation);
    const length = Number(source.length);
    if (!Number.isSafeInteger(length) || length < 0) throw invalid(operation, "bad source length", { length });
    if (address + BigInt(length) > 1n << 64n) {
      throw invalid(operation, "the source range overflows 2^64", { address, length });
    }
    return { kind: "memory", address, length };
  }
  throw new TypeError(`${operation}: source must be a path, a file: URL, a Uint8Array or a Region`);
}

/** The constructors of {@linkcode PolicySpec}s: one per built-in policy, and `module` for yours. */
export interface Policies {
  /** Write-protect faults → unprotect (a page or a chunk) and record the pages as written. */
  unprotect(options?: UnprotectOptions): PolicySpec;
  /** Missing faults → the zero page. */
  zerofill(): PolicySpec;
  /** Missing faults → a copy of the page at the same offset of `source`. */
  copyFrom(source: CopySource, options?: MapPagesOptions): PolicySpec;
  /** Minor faults → map the page-cache page (`UFFDIO_CONTINUE`). */
  continue(options?: MapPagesOptions): PolicySpec;
  /** Your own policy: the module at `url` exporting a {@linkcode PolicyFactory} (default export unless `exportName`). */
  module(url: string | URL, options?: unknown, exportName?: string): PolicySpec;
}

/**
 * The policies a {@linkcode FaultHandler} can run.
 *
 * @example
 * ```ts
 * import { policies } from "@uffd/uffd";
 * console.log(policies.unprotect({ chunk: 16 }).name, policies.zerofill().export); // unprotect zerofillPolicy
 * ```
 */
export const policies: Policies = Object.freeze({
  unprotect(options?: UnprotectOptions): PolicySpec {
    const operation = "policies.unprotect";
    const o = optionsBag(options, operation);
    const chunk = positiveInteger(o.chunk ?? 1, operation, "chunk");
    return spec("unprotect", "unprotectPolicy", {
      chunk,
      removedAsWritten: flag(o.removedAsWritten, operation, "removedAsWritten"),
    });
  },
  zerofill(): PolicySpec {
    return spec("zerofill", "zerofillPolicy", {});
  },
  copyFrom(source: CopySource, options?: MapPagesOptions): PolicySpec {
    const wp = flag(optionsBag(options, "policies.copyFrom").wp, "policies.copyFrom", "wp");
    return spec("copyFrom", "copyPolicy", { source: copySourceSpec(source), wp });
  },
  continue(options?: MapPagesOptions): PolicySpec {
    return spec("continue", "continuePolicy", {
      wp: flag(optionsBag(options, "policies.continue").wp, "policies.continue", "wp"),
    });
  },
  module(url: string | URL, options: unknown = {}, exportName = "default"): PolicySpec {
    if (typeof exportName !== "string") throw new TypeError("policies.module: exportName must be a string");
    let href: string;
    try {
      href = new URL(url).href;
    } catch {
      throw new TypeError(
        `policies.module: ${String(url)} is not an absolute URL (use new URL("./x.ts", import.meta.url))`,
      );
    }
    const name = href.startsWith("data:") ? "inline module" : href.slice(href.lastIndexOf("/") + 1);
    return Object.freeze({ name, module: href, export: exportName, options });
  },
});
