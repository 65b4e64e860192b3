/**
 * How a userfaultfd can be created on this machine, and why not when it cannot:
 * `vm.unprivileged_userfaultfd`, `CAP_SYS_PTRACE`, `/dev/userfaultfd` and its
 * permissions, seccomp. The error of a refused `Userfaultfd.open()` carries this
 * diagnosis as its hint, and the CLI's `features` command prints it.
 *
 * @example
 * ```ts
 * import { diagnoseAccess } from "@uffd/uffd";
 * const access = diagnoseAccess();
 * console.log(access.unprivilegedSysctl, access.capSysPtrace, access.device.exists);
 * ```
 *
 * @module
 */

import { ERRNO } from "./errors.ts";
import { close, open, readTextFile } from "../ffi/_libc.ts";
import { O_CLOEXEC, O_RDWR } from "../ffi/linux.ts";

const CAP_SYS_PTRACE = 19n;

/** What the machine says about creating userfaultfds. `undefined` where it could not be read. */
export interface AccessDiagnosis {
  /** `vm.unprivileged_userfaultfd` (0: only privileged users may handle kernel-mode faults). */
  readonly unprivilegedSysctl: number | undefined;
  /** The process has `CAP_SYS_PTRACE` in its effective set (root usually does). */
  readonly capSysPtrace: boolean | undefined;
  /** The effective user id. */
  readonly uid: number | undefined;
  /** `Seccomp:` of `/proc/self/status`: 0 none, 1 strict, 2 filter. */
  readonly seccomp: number | undefined;
  /** `/dev/userfaultfd` (Linux 6.1+). */
  readonly device: {
    /** The device node exists. */
    readonly exists: boolean;
    /** Its permission bits, e.g. `"0600"` (only when Deno may stat it: `--allow-all`). */
    readonly mode: string | undefined;
    /** Its owner's uid (only when Deno may stat it). */
    readonly uid: number | undefined;
    /** This process can open it read-write: measured by opening it. */
    readonly accessible: boolean | undefined;
  };
}

/**
 * The text of a `/proc` or `/sys` file, read through libc, or `undefined` when it
 * cannot be read. Deno's own file APIs refuse those paths without `--allow-all`;
 * this needs only the `--allow-ffi` the library needs anyway.
 *
 * @param path An absolute path, e.g. `"/proc/meminfo"`.
 * @returns The whole text, or `undefined` (no such file, no permission, …).
 *
 * @example
 * ```ts
 * import { readProcFile } from "@uffd/uffd";
 * console.log(readProcFile("/proc/self/comm")?.trim()); // "deno"
 * ```
 */
export function readProcFile(path: string): string | undefined {
  if (typeof path !== "string") throw new TypeError(`readProcFile: path must be a string, not ${typeof path}`);
  const text = readTextFile(path);
  return typeof text === "string" ? text : undefined;
}

/**
 * The running kernel's release (`uname -r`), from `/proc/sys/kernel/osrelease`;
 * `"unknown"` when it cannot be read.
 *
 * @example
 * ```ts
 * import { kernelRelease } from "@uffd/uffd";
 * console.log(kernelRelease()); // e.g. "6.18.0"
 * ```
 */
export function kernelRelease(): string {
  return readProcFile("/proc/sys/kernel/osrelease")?.trim() || "unknown";
}

/**
 * Reads what decides whether this process may create a userfaultfd.
 *
 * @returns What the machine says; `undefined` fields could not be read.
 *
 * @example
 * ```ts
 * import { diagnoseAccess, explainAccess } from "@uffd/uffd";
 * console.log(explainAccess(diagnoseAccess()));
 * ```
 */
export function diagnoseAccess(): AccessDiagnosis {
  const sysctl = readProcFile("/proc/sys/vm/unprivileged_userfaultfd");
  const status = readProcFile("/proc/self/status") ?? "";
  const capEff = /^CapEff:\s*([0-9a-f]+)/m.exec(status);
  const seccomp = /^Seccomp:\s*(\d+)/m.exec(status);
  // Uid: real effective saved fs
  const uid = /^Uid:\s*\d+\s+(\d+)/m.exec(status);
  // Opening the device is the only true answer (modes, groups and ACLs all count).
  const fd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (fd >= 0) close(fd);
  let mode: string | undefined;
  let owner: number | undefined;
  try {
    const st = Deno.statSync("/dev/userfaultfd");
    mode = `0${((st.mode ?? 0) & 0o777).toString(8)}`;
    owner = st.uid ?? undefined;
  } catch { /* Deno may stat /dev only with --allow-all */ }
  return {
    unprivilegedSysctl: sysctl === undefined ? undefined : Number(sysctl.trim()),
    capSysPtrace: capEff ? ((BigInt(`0x${capEff[1]}`) >> CAP_SYS_PTRACE) & 1n) === 1n : undefined,
    uid: uid ? Number(uid[1]) : undefined,
    seccomp: seccomp ? Number(seccomp[1]) : undefined,
    device: {
      exists: fd !== -ERRNO.ENOENT && fd !== -ERRNO.ENXIO && fd !== -ERRNO.ENODEV,
      mode,
      uid: owner,
      accessible: fd >= 0 ? true : fd === -ERRNO.EACCES || fd === -ERRNO.EPERM ? false : undefined,
    },
  };
}

/**
 * Says in words what lets this process in, or what to change when nothing does.
 *
 * @example
 * ```ts
 * import { diagnoseAccess, explainAccess } from "@uffd/uffd";
 * console.log(explainAccess(diagnoseAccess()));
 * ```
 */
export function explainAccess(a: AccessDiagnosis): string {
  if (a === null || typeof a !== "object" || a.device === null || typeof a.device !== "object") {
    throw new TypeError("explainAccess: expected what diagnoseAccess() returns");
  }
  const parts: string[] = [];
  if (a.capSysPtrace) parts.push("this process has CAP_SYS_PTRACE, so the userfaultfd syscall is allowed");
  else if (a.unprivilegedSysctl === 1) parts.push("vm.unprivileged_userfaultfd=1 allows unprivileged userfaultfds");
  else {
    const sysctl = a.unprivilegedSysctl === undefined
      ? "vm.unprivileged_userfaultfd could not be read"
      : `vm.unprivileged_userfaultfd=${a.unprivilegedSysctl}`;
    const cap = a.capSysPtrace === undefined ? "CAP_SYS_PTRACE unknown" : "no CAP_SYS_PTRACE";
    parts.push(
      `${sysctl} and ${cap}: only user-mode faults can be handled (UFFD_USER_MODE_ONLY); for full use run as ` +
        "root, grant CAP_SYS_PTRACE, or set sysctl vm.unprivileged_userfaultfd=1",
    );
  }
  const details = [
    a.device.mode === undefined ? undefined : `mode ${a.device.mode}`,
    a.device.uid === undefined ? undefined : `owner uid ${a.device.uid}`,
  ].filter((d) => d !== undefined).join(", ");
  const device = details ? `/dev/userfaultfd (${details})` : "/dev/userfaultfd";
  if (!a.device.exists) parts.push("/dev/userfaultfd does not exist (Linux 6.1+)");
  else if (a.device.accessible === true) parts.push(`${device} is usable by this user`);
  else if (a.device.accessible === false) {
    parts.push(`${device} cannot be opened by this user: add the user to its group or chmod it`);
  } else parts.push(`${device} could not be checked`);
  if (a.seccomp === 2) parts.push("a seccomp filter is active and may refuse userfaultfd(2)");
  if (a.seccomp === 1) parts.push("seccomp strict mode refuses userfaultfd(2)");
  return parts.join("; ");
}
