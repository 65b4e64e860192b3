/**
 * Why a write-watch backend's userfaultfd features are not there for a span: no
 * userfaultfd at all, a feature the caller declined, or one this kernel lacks.
 * Internal: the `async` and `sync` backends start their `unavailable()` with it.
 *
 * @module
 */

import { kernelRelease } from "../kernel/access.ts";
import type { Feature } from "../ffi/uapi.ts";
import { Userfaultfd } from "../kernel/userfaultfd.ts";
import type { WatchedSpan } from "./_backend.ts";

/**
 * The reason `needed` cannot be had for `span` here, or `undefined` when every
 * feature is supported and none is declined. `since` names the Linux version that
 * brought them, for the message.
 *
 * @example
 * ```ts
 * import { missingFeatures } from "./_features.ts";
 * import { Feature } from "../ffi/uapi.ts";
 * const span = { address: 0n, pages: 1, shared: false, decline: [Feature.WP_ASYNC] };
 * console.log(missingFeatures(span, [Feature.WP_ASYNC], "Linux 6.7+")); // "WP_ASYNC declined by the caller's options"
 * ```
 */
export function missingFeatures(span: WatchedSpan, needed: readonly Feature[], since: string): string | undefined {
  let features: ReadonlySet<Feature>;
  try {
    features = Userfaultfd.supported().features;
  } catch (e) {
    return `no userfaultfd here: ${e instanceof Error ? e.message : String(e)}`;
  }
  // Each missing feature with its own reason: the caller's decline is not blamed for what the kernel lacks.
  const declined = needed.filter((f) => span.decline?.includes(f));
  const missing = needed.filter((f) => !features.has(f) && !declined.includes(f));
  const parts: string[] = [];
  if (declined.length > 0) parts.push(`${declined.join(", ")} declined by the caller's options`);
  if (missing.length > 0) {
    parts.push(`userfaultfd on this kernel (${kernelRelease()}) lacks ${missing.join(", ")} (${since})`);
  }
  return parts.length > 0 ? parts.join("; ") : undefined;
}
