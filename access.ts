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
    /** Its permission bits, e.g. `"0600"`. */
    readonly mode: string | undefined;
    /** Its owner's uid. */
    readonly uid: number | undefined;
    /** This process can open it read-write (by the permission bits). */
    readonly accessible: boolean | undefined;
  };
}

function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

/**
 * Reads what decides whether this process may create a userfaultfd.
 *
 * @example
 * ```ts
 * import { diagnoseAccess, explainAccess } from "@uffd/uffd";
 * console.log(explainAccess(diagnoseAccess()));
 * ```
 */
export function diagnoseAccess(): AccessDiagnosis {
  const sysctl = readText("/proc/sys/vm/unprivileged_userfaultfd");
  const status = readText("/proc/self/status") ?? "";
  const capEff = /^CapEff:\s*([0-9a-f]+)/m.exec(status);
  const seccomp = /^Seccomp:\s*(\d+)/m.exec(status);
  let uid: number | undefined;
  try {
    uid = Deno.uid() ?? undefined;
  } catch { /* no permission */ }
  let device: AccessDiagnosis["device"] = { exists: false, mode: undefined, uid: undefined, accessible: undefined };
  try {
    const st = Deno.statSync("/dev/userfaultfd");
    const mode = (st.mode ?? 0) & 0o777;
    const gid = Deno.gid();
    const accessible = uid === 0 ||
      (st.uid === uid && (mode & 0o600) === 0o600) ||
      (st.gid === gid && (mode & 0o060) === 0o060) ||
      (mode & 0o006) === 0o006;
    device = { exists: true, mode: `0${mode.toString(8)}`, uid: st.uid ?? undefined, accessible };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      device = { exists: true, mode: undefined, uid: undefined, accessible: undefined };
    }
  }
  return {
    unprivilegedSysctl: sysctl === undefined ? undefined : Number(sysctl.trim()),
    capSysPtrace: capEff ? ((BigInt(`0x${capEff[1]}`) >> CAP_SYS_PTRACE) & 1n) === 1n : undefined,
    uid,
    seccomp: seccomp ? Number(seccomp[1]) : undefined,
    device,
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
  const parts: string[] = [];
  if (a.capSysPtrace) parts.push("this process has CAP_SYS_PTRACE, so the userfaultfd syscall is allowed");
  else if (a.unprivilegedSysctl === 1) parts.push("vm.unprivileged_userfaultfd=1 allows unprivileged userfaultfds");
  else {
    parts.push(
      `vm.unprivileged_userfaultfd=${a.unprivilegedSysctl ?? "?"} and no CAP_SYS_PTRACE: only user-mode faults ` +
        "can be handled (UFFD_USER_MODE_ONLY); for full use run as root, grant CAP_SYS_PTRACE, " +
        "or set sysctl vm.unprivileged_userfaultfd=1",
    );
  }
  if (a.device.exists) {
    parts.push(
      a.device.accessible
        ? `/dev/userfaultfd (mode ${a.device.mode}) is usable by this user`
        : `/dev/userfaultfd (mode ${a.device.mode ?? "?"}, owner uid ${a.device.uid ?? "?"}) is not writable by ` +
          "this user: add the user to its group or chmod it",
    );
  } else parts.push("/dev/userfaultfd does not exist (Linux 6.1+)");
  if (a.seccomp === 2) parts.push("a seccomp filter is active and may refuse userfaultfd(2)");
  if (a.seccomp === 1) parts.push("seccomp strict mode refuses userfaultfd(2)");
  return parts.join("; ");
}
