/**
 * The error type of the library. A failing system call becomes a
 * {@linkcode UffdError} that carries the errno name (`EINVAL`, `EPERM`, …), the
 * operation (`UFFDIO_REGISTER`, `mmap`, …), the arguments it was given and a
 * hint for the common causes. Input that is refused before any system call
 * (an unaligned address, a zero length, a closed fd) gets the same type, with
 * the errno the kernel would have returned and `beforeSyscall` set.
 *
 * @example
 * ```ts
 * import { Region, UffdError, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(Region.pageSize);
 * using uffd = Userfaultfd.open();
 * try {
 *   uffd.register({ address: mem.address + 1n, length: Region.pageSize }, { missing: true });
 * } catch (e) {
 *   if (e instanceof UffdError) console.log(e.code, e.operation); // EINVAL UFFDIO_REGISTER
 * }
 * ```
 *
 * @module
 */

/**
 * Linux errno numbers by name (asm-generic/errno-base.h and errno.h; the same on
 * x86_64 and aarch64). Typed by its keys: `ERRNO.EINVL` does not compile.
 *
 * @example
 * ```ts
 * import { ERRNO } from "@uffd/uffd";
 * console.log(ERRNO.EAGAIN); // 11
 * ```
 */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENOSYS: 38,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETUNREACH: 101,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTUNREACH: 113,
  EINPROGRESS: 115,
  EHWPOISON: 133,
} satisfies Record<string, number>;
Object.freeze(ERRNO);

/** The name of an errno the library knows (`"EINVAL"`, `"EPERM"`, …): a key of {@linkcode ERRNO}. */
export type ErrnoName = keyof typeof ERRNO;

const NAMES: Record<number, ErrnoName> = Object.fromEntries(
  Object.entries(ERRNO).map(([name, n]) => [n, name as ErrnoName]),
);

const DESCRIPTIONS: Record<ErrnoName, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EINTR: "Interrupted system call",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  EBADF: "Bad file descriptor",
  ECHILD: "No child processes",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  ENFILE: "Too many open files in system",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  ESPIPE: "Illegal seek",
  EROFS: "Read-only file system",
  EPIPE: "Broken pipe",
  ERANGE: "Numerical result out of range",
  EDEADLK: "Resource deadlock avoided",
  ENOSYS: "Function not implemented",
  EOVERFLOW: "Value too large for defined data type",
  EOPNOTSUPP: "Operation not supported",
  EADDRINUSE: "Address already in use",
  EADDRNOTAVAIL: "Cannot assign requested address",
  ENETUNREACH: "Network is unreachable",
  ECONNABORTED: "Software caused connection abort",
  ECONNRESET: "Connection reset by peer",
  ENOTCONN: "Transport endpoint is not connected",
  ETIMEDOUT: "Connection timed out",
  ECONNREFUSED: "Connection refused",
  EHOSTUNREACH: "No route to host",
  EINPROGRESS: "Operation now in progress",
  EHWPOISON: "Memory page has hardware error",
};

/**
 * The symbolic name of an errno number, or `E<number>` when it has none here.
 *
 * @param errno A positive errno number.
 * @returns Its name (`"EINVAL"`), or `E<number>`.
 *
 * @example
 * ```ts
 * import { errnoName } from "@uffd/uffd";
 * console.log(errnoName(22)); // "EINVAL"
 * ```
 */
export function errnoName(errno: number): string {
  if (typeof errno !== "number") throw new TypeError(`errnoName: errno must be a number, not ${typeof errno}`);
  return NAMES[errno] ?? `E${errno}`;
}

/** What a {@linkcode UffdError} is built from. */
export interface UffdErrorInit {
  /** The errno number (positive). */
  errno: number;
  /** The operation that failed: a syscall, an ioctl (`UFFDIO_COPY`) or a library call. */
  operation: string;
  /** The arguments that were passed, for the message and for programs. */
  args?: Record<string, unknown>;
  /** What usually causes this and what to change. */
  hint?: string;
  /** What went wrong, in place of the errno's generic description. */
  detail?: string;
  /** `true` when the library refused the input before making the system call. */
  beforeSyscall?: boolean;
  /** The error that caused this one. */
  cause?: unknown;
}

/**
 * A system call or a kernel-bound operation that failed, with the errno name, the
 * operation, the arguments and a hint.
 *
 * @example
 * ```ts
 * import { UffdError } from "@uffd/uffd";
 * const e = new UffdError({ errno: 17, operation: "UFFDIO_COPY", hint: "the page is already present" });
 * console.log(e.code, e.message); // EEXIST UFFDIO_COPY: EEXIST (File exists) — the page is already present
 * ```
 */
export class UffdError extends Error {
  /** The errno name, e.g. `EINVAL`. */
  readonly code: string;
  /** The errno number. */
  readonly errno: number;
  /** The operation that failed. */
  readonly operation: string;
  /** The arguments the operation was given. */
  readonly args: Readonly<Record<string, unknown>>;
  /** What usually causes this error and what to change, if known. */
  readonly hint: string | undefined;
  /** `true` when the library refused the input before any system call. */
  readonly beforeSyscall: boolean;

  /** Builds an error from its parts; the message is composed from them. */
  constructor(init: UffdErrorInit) {
    if (init === null || typeof init !== "object") {
      throw new TypeError("UffdError: expected { errno, operation, … }");
    }
    if (!Number.isInteger(init.errno) || init.errno <= 0) {
      throw new TypeError(`UffdError: errno must be a positive integer, not ${String(init.errno)}`);
    }
    if (typeof init.operation !== "string") {
      throw new TypeError(`UffdError: operation must be a string, not ${typeof init.operation}`);
    }
    const code = errnoName(init.errno);
    const what = init.detail === undefined
      ? `${code} (${DESCRIPTIONS[code as ErrnoName] ?? "unknown error"})`
      : `${code}: ${init.detail}`;
    const args = init.args && Object.keys(init.args).length > 0 ? ` ${formatArgs(init.args)}` : "";
    const hint = init.hint ? ` — ${init.hint}` : "";
    super(`${init.operation}${args}: ${what}${hint}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "UffdError";
    this.code = code;
    this.errno = init.errno;
    this.operation = init.operation;
    this.args = Object.freeze({ ...init.args });
    this.hint = init.hint;
    this.beforeSyscall = init.beforeSyscall ?? false;
  }
}

/** `{ start: 0x7f00…, len: 4096 }`: bigints as hex addresses, everything else as is. */
function formatArgs(args: Record<string, unknown>): string {
  const parts = Object.entries(args).map(([k, v]) => {
    if (typeof v === "bigint") return `${k}: 0x${v.toString(16)}`;
    if (typeof v === "string") return `${k}: ${JSON.stringify(v)}`;
    return `${k}: ${String(v)}`;
  });
  return `{ ${parts.join(", ")} }`;
}

/**
 * An input the library refuses before any system call: a `UffdError` with the errno
 * the kernel would have given and `beforeSyscall` set.
 *
 * @example
 * ```ts
 * import { invalid } from "./errors.ts";
 * const e = invalid("UFFDIO_REGISTER", "length must be a multiple of the page size (4096)", { length: 10 });
 * console.log(e.code, e.beforeSyscall); // EINVAL true
 * ```
 */
export function invalid(
  operation: string,
  detail: string,
  args?: Record<string, unknown>,
  errno: number = ERRNO.EINVAL,
): UffdError {
  return new UffdError({ errno, operation, detail, args, beforeSyscall: true });
}

/**
 * The one conversion of a failed call into an error: `rc` is what `ffi/` returns
 * on failure, the negative errno (a number, or a bigint for calls that return
 * addresses), and the result is the `UffdError` to throw.
 *
 * @param operation The system call or ioctl that failed (`"mmap"`, `"UFFDIO_COPY"`).
 * @param rc The failed call's result: `-errno`.
 * @param args The arguments it was given, for the message.
 * @param hint What usually causes this and what to change.
 * @param detail What went wrong, in place of the errno's generic description.
 * @returns A `UffdError` with `errno` = `-rc`.
 *
 * @example
 * ```ts
 * import { failure } from "./errors.ts";
 * console.log(failure("mmap", -12, { length: 4096n }).message); // mmap { length: 0x1000 }: ENOMEM (Cannot allocate memory)
 * ```
 */
export function failure(
  operation: string,
  rc: number | bigint,
  args?: Record<string, unknown>,
  hint?: string,
  detail?: string,
): UffdError {
  return new UffdError({ errno: -Number(rc), operation, args, hint, detail });
}

/** Why a `UFFDIO_*` ioctl usually fails with this errno, and what to change, by ioctl and errno name. */
const HINTS: Readonly<Record<string, Partial<Record<ErrnoName, string>>>> = {
  UFFDIO_API: {
    EINVAL: "UFFDIO_API runs once per userfaultfd, with features this kernel supports (see Userfaultfd.supported())",
    EPERM: "EVENT_FORK needs CAP_SYS_PTRACE",
  },
  UFFDIO_REGISTER: {
    EINVAL: "the range must lie in mappings that support the mode: minor needs shmem or hugetlbfs, " +
      "hugetlb ranges must be huge-page aligned, and write-protect needs Linux 5.7+",
    EBUSY: "another userfaultfd has already registered part of this range",
    EPERM: "the mapping can never be writable (a read-only file mapping)",
    ENOMEM: "part of the range is not mapped",
  },
  UFFDIO_WRITEPROTECT: {
    ENOENT: "the range is not registered for write-protect: register it with { wp: true }",
    EAGAIN: "the address space is changing: read pending events (remove/remap/unmap/fork), then retry",
  },
  UFFDIO_COPY: {
    EEXIST: "the page is already mapped (another thread or fault filled it)",
    ENOENT: "the range is not registered for missing faults, or its mapping went away",
    EAGAIN: "the address space is changing: read pending events (remove/remap/unmap/fork), then retry",
    ESRCH: "the process that registered the range has exited",
  },
  UFFDIO_ZEROPAGE: {
    EEXIST: "the page is already mapped (another thread or fault filled it)",
    ENOENT: "the range is not registered for missing faults, or its mapping went away",
    EAGAIN: "the address space is changing: read pending events (remove/remap/unmap/fork), then retry",
    EINVAL: "zeropage works on anonymous and shmem ranges registered for missing faults (not hugetlb)",
  },
  UFFDIO_CONTINUE: {
    EINVAL: "the range must be registered for minor faults (shmem or hugetlbfs); the wp mode needs Linux 6.4+ " +
      "(kernelProfile().userfaultfd.continueWp)",
    EFAULT: "there is no page in the page cache at this offset: write it through another mapping first",
    EEXIST: "the page is already mapped",
    ENOENT: "the range is not registered for minor faults",
    EAGAIN: "the address space is changing: read pending events, then retry",
  },
  UFFDIO_POISON: {
    EEXIST: "the page is already mapped",
    ENOENT: "the range is not registered for missing faults",
    EAGAIN: "the address space is changing: read pending events (remove/remap/unmap/fork), then retry",
  },
  UFFDIO_MOVE: {
    EINVAL: "move needs private anonymous memory on both sides, page-aligned and registered for missing faults",
    EBUSY: "a source page is shared (after fork) or pinned: copy it instead",
    ENOENT: "the source range has holes: pass { allowSrcHoles: true }",
    EEXIST: "the destination page is already mapped",
    EAGAIN: "the address space is changing: read pending events, then retry",
  },
  UFFDIO_WAKE: {},
  UFFDIO_UNREGISTER: { EINVAL: "the range must lie inside mappings" },
};

/**
 * The hint for a failed `UFFDIO_*` ioctl, if the table has one for its errno.
 *
 * @param operation The ioctl (`"UFFDIO_REGISTER"`, …).
 * @param rc Its result: `-errno`.
 */
export function uffdioHint(operation: string, rc: number): string | undefined {
  return HINTS[operation]?.[errnoName(-rc) as ErrnoName];
}
