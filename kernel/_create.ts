/**
 * Creating a userfaultfd (as userfaultfd-rs keeps `builder.rs` apart from the
 * type it builds): the `userfaultfd(2)` syscall, then `/dev/userfaultfd`
 * (`USERFAULTFD_IOC_NEW`, Linux 6.1), then the syscall with `UFFD_USER_MODE_ONLY`
 * when that is what lets an unprivileged process in; then the `UFFDIO_API`
 * handshake, which goes on without `EVENT_FORK` when that was only wished for and
 * the process lacks `CAP_SYS_PTRACE`. When no way works, the error says which of
 * them failed how, and what to change (`explainAccess`). Internal: `Userfaultfd.open`
 * and `Userfaultfd.supported` use it.
 *
 * @example
 * ```ts
 * import { create } from "./_create.ts";
 * import { O_CLOEXEC } from "../ffi/linux.ts";
 * import { close } from "../ffi/_libc.ts";
 * const { fd, origin } = create(O_CLOEXEC, {});
 * console.log(origin); // "syscall" as root
 * close(fd);
 * ```
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { sysUserfaultfd } from "../ffi/_syscalls.ts";
import * as ops from "../ffi/_uffd_ioctls.ts";
import { O_CLOEXEC, O_RDWR } from "../ffi/linux.ts";
import { type Feature, FEATURES, UFFD_FEATURE_EVENT_FORK, UFFD_USER_MODE_ONLY } from "../ffi/uapi.ts";
import { diagnoseAccess, explainAccess } from "./access.ts";
import { ERRNO, failure, invalid, UffdError, uffdioHint } from "./errors.ts";
import { featureNames } from "./names.ts";

/** How a userfaultfd was created. */
export type Origin = "syscall" | "device" | "user-mode-only";

/** Where and how to create a userfaultfd (the part of `Userfaultfd.open`'s options that decides it). */
export interface CreateOptions {
  /** `UFFD_USER_MODE_ONLY`: `"auto"` (default) only when nothing else works; `true` always; `false` never. */
  userModeOnly?: boolean | "auto";
  /** The syscall, `/dev/userfaultfd`, or whichever works (default). */
  via?: "auto" | "syscall" | "device";
}

/** A userfaultfd that completed its `UFFDIO_API` handshake. */
export interface Handshaken {
  /** The file descriptor. */
  readonly fd: number;
  /** How it was created. */
  readonly origin: Origin;
  /** The features granted (`UFFD_FEATURE_*`). */
  readonly features: bigint;
  /** The ioctls it allows (a bit per `_UFFDIO_*` number). */
  readonly ioctls: bigint;
}

/** The mask of a list of feature names, refusing names the kernel does not define. */
export function namedFeatures(names: Iterable<Feature> | undefined, option: string): bigint {
  if (names === undefined) return 0n;
  if (typeof names !== "object" || names === null || !(Symbol.iterator in names)) {
    throw new TypeError(`Userfaultfd.open: ${option} must be a list of feature names`);
  }
  let mask = 0n;
  for (const name of names) {
    const info = FEATURES.find((f) => f.name === name);
    if (!info) {
      throw invalid("UFFDIO_API", `unknown feature ${JSON.stringify(name)} in ${option}`, {
        known: FEATURES.map((f) => f.name).join("|"),
      });
    }
    mask |= info.mask;
  }
  return mask;
}

/** Creates a userfaultfd fd, trying the ways `options` allow in order. */
export function create(flags: number, options: CreateOptions): { fd: number; origin: Origin } {
  const via = options.via ?? "auto";
  const umo = options.userModeOnly ?? "auto";
  const nr = sysUserfaultfd();
  const failures: string[] = [];
  let firstErrno = 0;
  const note = (what: string, rc: number) => {
    firstErrno ||= -rc;
    failures.push(`${what}: ${failure(what, rc).code}`);
  };
  if (via !== "device" && umo !== true) {
    const fd = libc.userfaultfd(nr, flags);
    if (fd >= 0) return { fd, origin: "syscall" };
    note("userfaultfd()", fd);
  }
  if (via !== "syscall" && umo !== true) {
    const dev = libc.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
      const fd = ops.userfaultfdIocNew(dev, flags);
      libc.close(dev);
      if (fd >= 0) return { fd, origin: "device" };
      note("USERFAULTFD_IOC_NEW", fd);
    } else note("open(/dev/userfaultfd)", dev);
  }
  if (via !== "device" && umo !== false) {
    const fd = libc.userfaultfd(nr, flags | UFFD_USER_MODE_ONLY);
    if (fd >= 0) return { fd, origin: "user-mode-only" };
    note("userfaultfd(UFFD_USER_MODE_ONLY)", fd);
  }
  throw new UffdError({
    errno: firstErrno || ERRNO.EPERM,
    operation: "userfaultfd",
    detail: `no way to create a userfaultfd worked (${failures.join(", ")})`,
    hint: explainAccess(diagnoseAccess()),
  });
}

/**
 * Creates a userfaultfd and asks for `request` in the `UFFDIO_API` handshake.
 * `EVENT_FORK` (which needs `CAP_SYS_PTRACE`) is dropped when it is refused and
 * not in `required`.
 */
export function handshake(flags: number, options: CreateOptions, request: bigint, required: bigint): Handshaken {
  for (;;) {
    const { fd, origin } = create(flags, options);
    const { rc, api } = ops.uffdioApi(fd, request);
    if (rc >= 0) return { fd, origin, features: request, ioctls: api.ioctls };
    libc.close(fd);
    // EVENT_FORK needs CAP_SYS_PTRACE; when it was only wished for, go on without it.
    if (rc === -ERRNO.EPERM && (request & UFFD_FEATURE_EVENT_FORK) && !(required & UFFD_FEATURE_EVENT_FORK)) {
      request &= ~UFFD_FEATURE_EVENT_FORK;
      continue;
    }
    const features = featureNames(request).join("|") || "none";
    throw failure("UFFDIO_API", rc, { features }, uffdioHint("UFFDIO_API", rc));
  }
}

/** What a fresh userfaultfd reports with no features asked for, on a throw-away fd. */
export function probe(flags: number): Handshaken {
  const { fd, origin } = create(flags, {});
  try {
    const { rc, api } = ops.uffdioApi(fd, 0n);
    if (rc < 0) throw failure("UFFDIO_API", rc, { features: 0n }, uffdioHint("UFFDIO_API", rc));
    return { fd: -1, origin, features: api.features, ioctls: api.ioctls };
  } finally {
    libc.close(fd);
  }
}
