/**
 * {@linkcode Userfaultfd}: one userfaultfd as an object. It is created through the
 * syscall (falling back to `/dev/userfaultfd`, then to `UFFD_USER_MODE_ONLY` when
 * that is what lets an unprivileged process in), negotiates features with the
 * `UFFDIO_API` handshake, and offers every `UFFDIO_*` operation on typed ranges.
 * Ranges are validated before any system call; failures are `UffdError`s with the
 * errno name, the operation, the arguments and a hint.
 *
 * @example
 * ```ts
 * import { Feature, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize);
 * using uffd = Userfaultfd.open({ features: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
 * uffd.register(mem, { wp: true });
 * uffd.writeProtect(mem);
 * mem.bytes[5 * Region.pageSize] = 1; // resolved by the kernel: WP_ASYNC
 * ```
 *
 * @module
 */

import { diagnoseAccess, explainAccess, kernelRelease } from "./access.ts";
import { ERRNO, failure, invalid, UffdError, uffdioHint } from "./errors.ts";
import { unmappedParts } from "./maps.ts";
import { eventStream } from "./_event_stream.ts";
import type { EventsOptions, UffdEvent } from "./events.ts";
import * as libc from "../ffi/_libc.ts";
import { decodeUffdMsg, SIZEOF_UFFD_MSG, type UffdMsg } from "../ffi/_structs.ts";
import { sysUserfaultfd } from "../ffi/_syscalls.ts";
import * as ops from "../ffi/_uffd_ioctls.ts";
import { O_CLOEXEC, O_NONBLOCK, O_RDWR } from "../ffi/linux.ts";
import { notifyClosed } from "./_on_close.ts";
import { pageRange, type Range, toAddress } from "./range.ts";
import { describe, optionsBag } from "./_validate.ts";
import {
  type Feature,
  FEATURES,
  type Ioctl,
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
  UFFD_FEATURE_EVENT_FORK,
  UFFD_FEATURE_MOVE,
  UFFD_FEATURE_THREAD_ID,
  UFFD_PAGEFAULT_FLAG_MINOR,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFD_USER_MODE_ONLY,
  UFFDIO_CONTINUE_MODE_DONTWAKE,
  UFFDIO_CONTINUE_MODE_WP,
  UFFDIO_COPY_MODE_DONTWAKE,
  UFFDIO_COPY_MODE_WP,
  UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
  UFFDIO_MOVE_MODE_DONTWAKE,
  UFFDIO_POISON_MODE_DONTWAKE,
  UFFDIO_REGISTER_MODE_MINOR,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE_MODE_DONTWAKE,
} from "../ffi/uapi.ts";
import { featureNames, ioctlNames } from "./names.ts";

/** How a userfaultfd was created. */
export type Origin = "syscall" | "device" | "user-mode-only";

/** Options of {@linkcode Userfaultfd.open}. */
export interface OpenOptions {
  /** Features wanted when the kernel has them; check `uffd.features` for what was granted. */
  features?: Iterable<Feature>;
  /** Features that must be granted: `open` fails with a clear error otherwise. */
  require?: Iterable<Feature>;
  /** Features to treat as unsupported even if the kernel has them (to exercise fallbacks). */
  decline?: Iterable<Feature>;
  /** `O_NONBLOCK` (default `true`): `readEvents()` never blocks and `poll` works. */
  nonblocking?: boolean;
  /** `O_CLOEXEC` (default `true`). */
  closeOnExec?: boolean;
  /**
   * `UFFD_USER_MODE_ONLY`: `"auto"` (default) uses it only when nothing else lets this
   * process in; `true` always; `false` never. With it, faults the kernel takes on the
   * process's behalf (a `read(2)` into registered memory) fail with EFAULT instead.
   */
  userModeOnly?: boolean | "auto";
  /** Where to create it: the syscall, `/dev/userfaultfd`, or whichever works (default). */
  via?: "auto" | "syscall" | "device";
}

/** Which of the userfaultfd modes to register a range for. */
export interface RegisterOptions {
  /** Faults on pages that are not there (`UFFDIO_REGISTER_MODE_MISSING`). */
  missing?: boolean;
  /** Writes to write-protected pages (`UFFDIO_REGISTER_MODE_WP`). */
  wp?: boolean;
  /** Faults on pages in the page cache that are not mapped (shmem, hugetlbfs). */
  minor?: boolean;
}

/** Whether to wake the threads waiting on the range. */
export interface WakeOptions {
  /** Do not wake waiting threads (follow with `wake()`). */
  dontWake?: boolean;
}

/** What this kernel offers, probed on a throw-away userfaultfd. */
export interface Support {
  /** Every known feature the kernel reports. */
  readonly features: ReadonlySet<Feature>;
  /** The raw `uffdio_api.features` the kernel reported (may hold bits this library does not name). */
  readonly featureMask: bigint;
  /** The ioctls a fresh userfaultfd allows. */
  readonly ioctls: ReadonlySet<Ioctl>;
  /** How the probe's userfaultfd was created. */
  readonly origin: Origin;
}

/** What a {@linkcode Userfaultfd} shares with a handler on another thread (see `share()`). */
export interface SharedUserfaultfd {
  /** The file descriptor (process-wide). */
  readonly fd: number;
  /** The negotiated feature mask. */
  readonly featureMask: bigint;
  /** Whether the fd is `O_NONBLOCK`. */
  readonly nonblocking: boolean;
  /** How it was created. */
  readonly origin: Origin;
  /** One `Int32`: 0 while open, 1 once closed by any side. */
  readonly state: SharedArrayBuffer;
}

interface Registration {
  start: bigint;
  end: bigint;
  mode: bigint;
}

const MESSAGES_PER_READ = 64;
let supportCache: Support | undefined;

function describeMode(mode: bigint): string {
  const names = [];
  if (mode & UFFDIO_REGISTER_MODE_MISSING) names.push("missing");
  if (mode & UFFDIO_REGISTER_MODE_WP) names.push("wp");
  if (mode & UFFDIO_REGISTER_MODE_MINOR) names.push("minor");
  return names.join("+");
}

/** A failed `UFFDIO_*` call as a `UffdError`, with the hint for its errno. */
function kernelError(operation: string, rc: number, args: Record<string, unknown>): UffdError {
  return failure(operation, rc, args, uffdioHint(operation, rc));
}

/** The mask of a list of feature names, refusing names the kernel does not define. */
function namedFeatures(names: Iterable<Feature> | undefined, option: string): bigint {
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
function create(flags: number, options: OpenOptions): { fd: number; origin: Origin } {
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
 * A userfaultfd: register ranges, resolve faults, write-protect, read events.
 * Disposable: `using uffd = Userfaultfd.open()` closes it at the end of the scope,
 * which unregisters every range and wakes every thread blocked in a fault on it.
 *
 * @example
 * ```ts
 * import { Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * const allowed = uffd.register(mem, { missing: true });
 * console.log([...allowed]); // ["WAKE", "COPY", "ZEROPAGE", ...]
 * uffd.zeropage(mem.pages(0, 4)); // resolve all four pages before anyone touches them
 * ```
 */
export class Userfaultfd implements Disposable {
  /** The file descriptor. */
  readonly fd: number;
  /** The features negotiated for this fd. */
  readonly features: ReadonlySet<Feature>;
  /** The negotiated features as a `UFFD_FEATURE_*` mask. */
  readonly featureMask: bigint;
  /** The ioctls the fd allows (from `UFFDIO_API`). */
  readonly ioctls: ReadonlySet<Ioctl>;
  /** Whether the fd is `O_NONBLOCK`. */
  readonly nonblocking: boolean;
  /** How the fd was created. */
  readonly origin: Origin;

  readonly #state: Int32Array;
  readonly #messages = new Uint8Array(MESSAGES_PER_READ * SIZEOF_UFFD_MSG);
  readonly #registrations: Registration[] = [];

  private constructor(
    fd: number,
    mask: bigint,
    ioctls: bigint,
    nonblocking: boolean,
    origin: Origin,
    state: Int32Array,
  ) {
    this.fd = fd;
    this.featureMask = mask;
    this.features = new Set(featureNames(mask));
    this.ioctls = new Set(ioctlNames(ioctls));
    this.nonblocking = nonblocking;
    this.origin = origin;
    this.#state = state;
  }

  /**
   * What this kernel offers: the `UFFDIO_API` handshake with no features on a
   * throw-away userfaultfd, cached for the process.
   *
   * @example
   * ```ts
   * import { Userfaultfd } from "@uffd/uffd";
   * const support = Userfaultfd.supported();
   * console.log(support.features.has("WP_ASYNC"), support.featureMask.toString(16));
   * ```
   */
  static supported(): Support {
    if (supportCache) return supportCache;
    const { fd, origin } = create(O_CLOEXEC | O_NONBLOCK, {});
    try {
      const { rc, api } = ops.uffdioApi(fd, 0n);
      if (rc < 0) throw kernelError("UFFDIO_API", rc, { features: 0n });
      supportCache = Object.freeze({
        features: new Set(featureNames(api.features)),
        featureMask: api.features,
        ioctls: new Set(ioctlNames(api.ioctls)),
        origin,
      });
      return supportCache;
    } finally {
      libc.close(fd);
    }
  }

  /**
   * Creates a userfaultfd and negotiates features: those in `require` must be
   * granted, those in `features` are granted when the kernel has them.
   *
   * @example
   * ```ts
   * import { Feature, Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open({ require: [Feature.PAGEFAULT_FLAG_WP], features: [Feature.THREAD_ID] });
   * console.log(uffd.features.has(Feature.THREAD_ID));
   * ```
   */
  static open(options?: OpenOptions): Userfaultfd {
    options = optionsBag(options, "Userfaultfd.open");
    if (options.via !== undefined && !["auto", "syscall", "device"].includes(options.via)) {
      throw invalid("Userfaultfd.open", 'via must be "auto", "syscall" or "device"', { via: String(options.via) });
    }
    const umo = options.userModeOnly;
    if (umo !== undefined && umo !== true && umo !== false && umo !== "auto") {
      throw new TypeError(`Userfaultfd.open: userModeOnly must be true, false or "auto", not ${describe(umo)}`);
    }
    const declined = namedFeatures(options.decline, "decline");
    const wanted = namedFeatures(options.features, "features");
    const required = namedFeatures(options.require, "require");
    const available = Userfaultfd.supported().featureMask & ~declined;
    const missing = required & ~available;
    if (missing !== 0n) {
      const names = featureNames(missing);
      const needs = names.map((n) => `${n} (Linux ${FEATURES.find((f) => f.name === n)!.since}+)`).join(", ");
      throw new UffdError({
        errno: ERRNO.EINVAL,
        operation: "UFFDIO_API",
        detail: `required feature${names.length > 1 ? "s" : ""} not available: ${needs}`,
        hint: (missing & declined) !== 0n
          ? "declined by the caller's options"
          : `this kernel (${kernelRelease()}) does not offer ${names.length > 1 ? "them" : "it"}`,
        args: { required: names.join("|") },
        beforeSyscall: true,
      });
    }
    const nonblocking = options.nonblocking ?? true;
    const flags = (options.closeOnExec ?? true ? O_CLOEXEC : 0) | (nonblocking ? O_NONBLOCK : 0);
    let request = (wanted & available) | required;
    for (;;) {
      const { fd, origin } = create(flags, options);
      const { rc, api } = ops.uffdioApi(fd, request);
      if (rc >= 0) {
        return new Userfaultfd(fd, request, api.ioctls, nonblocking, origin, new Int32Array(new SharedArrayBuffer(4)));
      }
      libc.close(fd);
      // EVENT_FORK needs CAP_SYS_PTRACE; when it was only wished for, go on without it.
      if (rc === -ERRNO.EPERM && (request & UFFD_FEATURE_EVENT_FORK) && !(required & UFFD_FEATURE_EVENT_FORK)) {
        request &= ~UFFD_FEATURE_EVENT_FORK;
        continue;
      }
      throw kernelError("UFFDIO_API", rc, { features: featureNames(request).join("|") || "none" });
    }
  }

  /**
   * Wraps a userfaultfd created elsewhere that has completed its `UFFDIO_API`
   * handshake (the child's fd of a fork event, or one shared by another thread
   * with {@linkcode share}). The object owns the fd from then on.
   */
  static adopt(shared: SharedUserfaultfd): Userfaultfd;
  /** Wraps a handshaken userfaultfd fd with the given features. */
  static adopt(fd: number, featureMask: bigint, nonblocking?: boolean): Userfaultfd;
  static adopt(from: SharedUserfaultfd | number, featureMask = 0n, nonblocking = true): Userfaultfd {
    if (typeof from === "number") {
      if (!Number.isInteger(from) || from < 0) {
        throw invalid("Userfaultfd.adopt", "fd must be a non-negative integer", { fd: from }, ERRNO.EBADF);
      }
      if (typeof featureMask !== "bigint") {
        throw new TypeError(`Userfaultfd.adopt: featureMask must be a bigint, not ${describe(featureMask)}`);
      }
      return new Userfaultfd(from, featureMask, 0n, nonblocking, "syscall", new Int32Array(new SharedArrayBuffer(4)));
    }
    if (
      from === null || typeof from !== "object" || !Number.isInteger(from.fd) || from.fd < 0 ||
      typeof from.featureMask !== "bigint" || !(from.state instanceof SharedArrayBuffer) || from.state.byteLength < 4
    ) {
      throw new TypeError("Userfaultfd.adopt: expected an fd number or what share() returns");
    }
    return new Userfaultfd(
      from.fd,
      from.featureMask,
      0n,
      from.nonblocking,
      from.origin,
      new Int32Array(from.state),
    );
  }

  /**
   * What another thread needs to use this userfaultfd: the fd, its features, and a
   * shared closed-flag, so that whichever side closes it first closes it once and
   * the other side sees it closed. Pass it to a Worker and call `adopt` there.
   */
  share(): SharedUserfaultfd {
    this.#check("share");
    return {
      fd: this.fd,
      featureMask: this.featureMask,
      nonblocking: this.nonblocking,
      origin: this.origin,
      state: this.#state.buffer as SharedArrayBuffer,
    };
  }

  /** `true` once closed, by this object or by a thread it was shared with. */
  get closed(): boolean {
    return Atomics.load(this.#state, 0) !== 0;
  }

  /**
   * Registers a range for missing, write-protect and/or minor faults and returns the
   * ioctls the kernel allows on it. A range that overlaps one this object already
   * registered is refused (unregister it first).
   */
  register(range: Range, options: RegisterOptions): ReadonlySet<Ioctl> {
    const operation = "UFFDIO_REGISTER";
    this.#check(operation);
    const { start, len } = pageRange(range, operation);
    if (options === null || typeof options !== "object") {
      throw new TypeError(`${operation}: options must be an object like { wp: true }`);
    }
    const mode = (options.missing ? UFFDIO_REGISTER_MODE_MISSING : 0n) |
      (options.wp ? UFFDIO_REGISTER_MODE_WP : 0n) |
      (options.minor ? UFFDIO_REGISTER_MODE_MINOR : 0n);
    if (mode === 0n) throw invalid(operation, "choose at least one of missing, wp, minor", { start, len });
    this.#refuseOverlap(start, start + len, operation);
    // The kernel registers a range with holes as long as one mapping meets it; a range
    // that runs past its mapping is almost always a mistake that can reach memory the
    // caller does not own, so refuse holes here.
    const holes = unmappedParts(start, start + len);
    if (holes && holes.length > 0) {
      const h = holes[0]!;
      throw invalid(
        operation,
        `part of the range is not mapped: [0x${h.start.toString(16)}, 0x${h.end.toString(16)})` +
          (holes.length > 1 ? ` and ${holes.length - 1} more` : ""),
        { start, len },
        ERRNO.ENOMEM,
      );
    }
    const { rc, ioctls } = ops.uffdioRegister(this.fd, start, len, mode);
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: describeMode(mode) });
    this.#registrations.push({ start, end: start + len, mode });
    return new Set(ioctlNames(ioctls));
  }

  /** Unregisters a range; pending faults in it are woken and retried without userfaultfd. */
  unregister(range: Range): void {
    const operation = "UFFDIO_UNREGISTER";
    this.#check(operation);
    const { start, len } = pageRange(range, operation);
    const rc = ops.uffdioUnregister(this.fd, start, len);
    if (rc < 0) throw kernelError(operation, rc, { start, len });
    this.#forget(start, start + len);
  }

  /** The ranges this object has registered, as far as it knows (events and unregister update it). */
  get registrations(): readonly { start: bigint; end: bigint; mode: string }[] {
    return this.#registrations.map((r) => ({ start: r.start, end: r.end, mode: describeMode(r.mode) }));
  }

  /**
   * Write-protects a range registered with `{ wp: true }` (`UFFDIO_WRITEPROTECT_MODE_WP`).
   * Protecting never wakes anyone, so `dontWake` changes nothing here.
   */
  writeProtect(range: Range, options?: WakeOptions): void {
    const operation = "UFFDIO_WRITEPROTECT";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(range, operation);
    const rc = ops.uffdioWriteprotect(this.fd, start, len, UFFDIO_WRITEPROTECT_MODE_WP);
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: "wp" });
  }

  /** Removes write protection and wakes the threads waiting on the range (unless `dontWake`). */
  unprotect(range: Range, options?: WakeOptions): void {
    const operation = "UFFDIO_WRITEPROTECT";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(range, operation);
    const mode = options.dontWake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0n;
    const rc = ops.uffdioWriteprotect(this.fd, start, len, mode);
    if (rc < 0) throw kernelError(operation, rc, { start, len, mode: options.dontWake ? "dontwake" : "0" });
  }

  /**
   * Resolves missing faults by copying `source` into `destination` (`UFFDIO_COPY`).
   * `source` is bytes (at least `destination.length` of them) or an address in
   * this process. Returns the bytes copied, which may be fewer than asked when the
   * kernel stopped early; a kernel error is thrown, never returned as a count.
   *
   * @example
   * ```ts
   * import { Region, Userfaultfd } from "@uffd/uffd";
   * using mem = Region.map(Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * const page = new Uint8Array(Region.pageSize).fill(0x5a);
   * console.log(uffd.copy(mem, page), mem.bytes[0]); // 4096 90
   * ```
   */
  copy(destination: Range, source: Uint8Array | bigint, options?: WakeOptions & { wp?: boolean }): number {
    const operation = "UFFDIO_COPY";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(destination, operation);
    const src = this.#source(source, len, operation);
    const mode = (options.dontWake ? UFFDIO_COPY_MODE_DONTWAKE : 0n) | (options.wp ? UFFDIO_COPY_MODE_WP : 0n);
    const done = ops.uffdioCopy(this.fd, start, src, len, mode);
    if (done < 0) throw kernelError(operation, done, { dst: start, src, len });
    return done;
  }

  /** Maps the zero page over a missing range (`UFFDIO_ZEROPAGE`); returns bytes mapped. */
  zeropage(range: Range, options?: WakeOptions): number {
    const operation = "UFFDIO_ZEROPAGE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(range, operation);
    const done = ops.uffdioZeropage(this.fd, start, len, options.dontWake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0n);
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Resolves minor faults by mapping the pages already in the page cache
   * (`UFFDIO_CONTINUE`); `wp` maps them write-protected. Returns bytes mapped.
   */
  continue(range: Range, options?: WakeOptions & { wp?: boolean }): number {
    const operation = "UFFDIO_CONTINUE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(range, operation);
    const mode = (options.dontWake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0n) |
      (options.wp ? UFFDIO_CONTINUE_MODE_WP : 0n);
    const done = ops.uffdioContinue(this.fd, start, len, mode);
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Poisons missing pages (`UFFDIO_POISON`, Linux 6.6): a later access raises
   * SIGBUS in user space, or EFAULT/EIO from a system call. Returns bytes poisoned.
   */
  poison(range: Range, options?: WakeOptions): number {
    const operation = "UFFDIO_POISON";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(range, operation);
    const done = ops.uffdioPoison(this.fd, start, len, options.dontWake ? UFFDIO_POISON_MODE_DONTWAKE : 0n);
    if (done < 0) throw kernelError(operation, done, { start, len });
    return done;
  }

  /**
   * Moves pages from `source` (an address, or a `Range` whose start is used) into the
   * missing range `destination` without copying (`UFFDIO_MOVE`, needs the `MOVE`
   * feature). Returns bytes moved.
   */
  move(
    destination: Range,
    source: bigint | Range,
    options?: WakeOptions & { allowSrcHoles?: boolean },
  ): number {
    const operation = "UFFDIO_MOVE";
    this.#check(operation);
    options = optionsBag(options, operation);
    const { start, len } = pageRange(destination, operation);
    const src = typeof source === "bigint" ? source : pageRange(source, operation).start;
    const srcChecked = pageRange({ address: src, length: len }, operation).start;
    if ((this.featureMask & UFFD_FEATURE_MOVE) === 0n) {
      throw invalid(operation, "this userfaultfd was opened without the MOVE feature", { dst: start, src, len });
    }
    const mode = (options.dontWake ? UFFDIO_MOVE_MODE_DONTWAKE : 0n) |
      (options.allowSrcHoles ? UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES : 0n);
    const done = ops.uffdioMove(this.fd, start, srcChecked, len, mode);
    if (done < 0) throw kernelError(operation, done, { dst: start, src: srcChecked, len });
    return done;
  }

  /** Wakes the threads waiting on a range (after `dontWake` resolutions). */
  wake(range: Range): void {
    const operation = "UFFDIO_WAKE";
    this.#check(operation);
    const { start, len } = pageRange(range, operation);
    const rc = ops.uffdioWake(this.fd, start, len);
    if (rc < 0) throw kernelError(operation, rc, { start, len });
  }

  /**
   * Reads every queued message, many per `read(2)`, and returns them as typed
   * events (an empty array when none is queued). On a blocking fd this waits for
   * the first message. Unmap and remap events update `registrations`.
   *
   * @example
   * ```ts
   * import { Userfaultfd } from "@uffd/uffd";
   * using uffd = Userfaultfd.open();
   * console.log(uffd.readEvents()); // []
   * ```
   */
  readEvents(): UffdEvent[] {
    const operation = "read";
    this.#check(operation);
    const events: UffdEvent[] = [];
    const buf = this.#messages;
    const threadIds = (this.featureMask & UFFD_FEATURE_THREAD_ID) !== 0n;
    for (;;) {
      const got = ops.readMessages(this.fd, buf);
      if (got < 0) {
        if (got === -ERRNO.EAGAIN) break;
        throw kernelError(operation, got, { fd: this.fd });
      }
      for (let offset = 0; offset + SIZEOF_UFFD_MSG <= got; offset += SIZEOF_UFFD_MSG) {
        const event = toEvent(decodeUffdMsg(buf, offset), threadIds, (fd) => Userfaultfd.adopt(fd, this.featureMask));
        this.#track(event);
        events.push(event);
      }
      if (got < buf.byteLength || !this.nonblocking) break;
    }
    return events;
  }

  /**
   * The events of this userfaultfd as an `AsyncIterable` of batches: every message
   * queued at a wake-up is read (many per `read(2)`) and yielded as one array of
   * typed events. It waits with `poll()` on one of Deno's blocking-pool threads
   * (at most one at a time), so the main isolate keeps running: use it to serve
   * faults raised by other threads — `nonblocking` FFI calls, Workers, native code
   * — never by the main isolate itself (that needs a `FaultHandler`). The
   * iteration ends, without an error, when `signal` aborts or the userfaultfd is
   * closed. Needs a non-blocking fd (the default of `open`).
   *
   * @example
   * ```ts
   * import { Region, Userfaultfd } from "@uffd/uffd";
   * const libc = Deno.dlopen("libc.so.6", {
   *   memset: { parameters: ["pointer", "i32", "usize"], result: "pointer", nonblocking: true },
   * });
   * using mem = Region.map(4 * Region.pageSize);
   * using uffd = Userfaultfd.open();
   * uffd.register(mem, { missing: true });
   * // memset runs on a blocking-pool thread, which blocks in each missing fault
   * const writing = libc.symbols.memset(Deno.UnsafePointer.create(mem.address), 7, BigInt(mem.length));
   * const stop = new AbortController();
   * let served = 0;
   * for await (const batch of uffd.events({ signal: stop.signal })) {
   *   for (const event of batch) {
   *     if (event.type !== "pagefault") continue;
   *     uffd.zeropage({ address: event.address, length: Region.pageSize });
   *     if (++served === 4) stop.abort();
   *   }
   * }
   * await writing;
   * libc.close();
   * console.log(served, mem.bytes[3 * Region.pageSize]); // 4 7
   * ```
   */
  events(options: EventsOptions = {}): AsyncIterableIterator<UffdEvent[]> {
    return eventStream(this, options);
  }

  /**
   * Closes the fd: the kernel unregisters every range, clears write protection and
   * wakes every thread blocked in a fault here. Harmless to call twice, or after a
   * thread this fd was shared with closed it. An `events()` stream or a
   * `FaultHandler` waiting on it is woken and ends.
   */
  close(): void {
    if (Atomics.compareExchange(this.#state, 0, 0, 1) !== 0) return;
    this.#registrations.length = 0;
    libc.close(this.fd);
    notifyClosed(this);
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #check(operation: string): void {
    if (Atomics.load(this.#state, 0) !== 0) {
      throw invalid(operation, "the userfaultfd is closed", { fd: this.fd }, ERRNO.EBADF);
    }
  }

  #source(source: Uint8Array | bigint, len: bigint, operation: string): bigint {
    if (typeof source === "bigint") return toAddress(source, operation, "src");
    if (!(source instanceof Uint8Array)) {
      throw new TypeError(`${operation}: source must be a Uint8Array or a bigint address`);
    }
    if (BigInt(source.byteLength) < len) {
      throw invalid(operation, `source has ${source.byteLength} bytes; the destination needs ${len}`, { len });
    }
    return libc.addressOf(source);
  }

  #refuseOverlap(start: bigint, end: bigint, operation: string): void {
    const clash = this.#registrations.find((r) => r.start < end && start < r.end);
    if (!clash) return;
    // Only the part that overlaps matters: the rest of an old registration may be gone while this part is not,
    // or the other way round (a MAP_FIXED mapping over part of it).
    const overlapStart = clash.start > start ? clash.start : start;
    const overlapEnd = clash.end < end ? clash.end : end;
    if (!stillRegistered(overlapStart, overlapEnd)) {
      // The mapping there went away (munmap, or a new mapping over it, without EVENT_UNMAP): forget that part.
      this.#forget(overlapStart, overlapEnd);
      return this.#refuseOverlap(start, end, operation);
    }
    throw invalid(
      operation,
      `overlaps [0x${clash.start.toString(16)}, 0x${clash.end.toString(16)}) already registered ` +
        `(${describeMode(clash.mode)}) on this userfaultfd; unregister it first`,
      { start, len: end - start },
      ERRNO.EBUSY,
    );
  }

  #forget(start: bigint, end: bigint): void {
    const kept: Registration[] = [];
    for (const r of this.#registrations) {
      if (r.end <= start || r.start >= end) kept.push(r);
      else {
        if (r.start < start) kept.push({ start: r.start, end: start, mode: r.mode });
        if (r.end > end) kept.push({ start: end, end: r.end, mode: r.mode });
      }
    }
    this.#registrations.splice(0, this.#registrations.length, ...kept);
  }

  #track(event: UffdEvent): void {
    if (event.type === "unmap") this.#forget(event.start, event.end);
    else if (event.type === "remap") {
      const moved = this.#registrations.filter((r) => r.start < event.from + event.length && event.from < r.end);
      this.#forget(event.from, event.from + event.length);
      for (const r of moved) {
        const s = r.start > event.from ? r.start : event.from;
        const e = r.end < event.from + event.length ? r.end : event.from + event.length;
        this.#registrations.push({ start: s - event.from + event.to, end: e - event.from + event.to, mode: r.mode });
      }
    }
  }
}

/**
 * Turns a decoded `uffd_msg` into a typed event. `adopt` wraps a fork event's fd
 * into a `Userfaultfd`; `threadIds` says whether `THREAD_ID` was negotiated.
 */
function toEvent(msg: UffdMsg, threadIds: boolean, adopt: (fd: number) => Userfaultfd): UffdEvent {
  if ("raw" in msg) return { type: "unknown", code: msg.event, raw: msg.raw };
  switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
      return {
        type: "pagefault",
        address: msg.address,
        flags: msg.flags,
        write: (msg.flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0n,
        wp: (msg.flags & UFFD_PAGEFAULT_FLAG_WP) !== 0n,
        minor: (msg.flags & UFFD_PAGEFAULT_FLAG_MINOR) !== 0n,
        threadId: threadIds ? msg.ptid : undefined,
      };
    case UFFD_EVENT_FORK:
      return { type: "fork", uffd: adopt(msg.ufd) };
    case UFFD_EVENT_REMAP:
      return { type: "remap", from: msg.from, to: msg.to, length: msg.len };
    case UFFD_EVENT_REMOVE:
      return { type: "remove", start: msg.start, end: msg.end };
    case UFFD_EVENT_UNMAP:
      return { type: "unmap", start: msg.start, end: msg.end };
  }
  throw new Error("unreachable");
}

/**
 * Whether `/proc/self/smaps` still shows a userfaultfd registration (`um`, `uw` or
 * `ui` in VmFlags) somewhere in `[start, end)`. Used only when our own record of
 * registrations disagrees with a new one, to tell a real overlap from a mapping
 * that was unmapped behind our back. Unreadable smaps counts as registered.
 */
function stillRegistered(start: bigint, end: bigint): boolean {
  const smaps = libc.readTextFile("/proc/self/smaps");
  if (typeof smaps !== "string") return true;
  let inside = false;
  for (const line of smaps.split("\n")) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (header) {
      const s = BigInt(`0x${header[1]}`);
      const e = BigInt(`0x${header[2]}`);
      inside = s < end && start < e;
    } else if (inside && line.startsWith("VmFlags:")) {
      if (/ (um|uw|ui)\b/.test(line)) return true;
    }
  }
  return false;
}
