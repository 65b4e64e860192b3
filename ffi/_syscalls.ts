/**
 * System call numbers that libc has no wrapper for, per architecture. Only
 * `userfaultfd(2)` is needed: everything else goes through libc's own wrappers.
 * x86_64 has its own table; aarch64 uses the generic one (as riscv64 does).
 *
 * @module
 */

const USERFAULTFD: Partial<Record<typeof Deno.build.arch, bigint>> = {
  x86_64: 323n,
  aarch64: 282n,
};

/**
 * The `userfaultfd(2)` syscall number on this machine, or a clear error on an
 * architecture we have not checked.
 */
export function sysUserfaultfd(): bigint {
  const nr = USERFAULTFD[Deno.build.arch];
  if (nr === undefined) {
    throw new Error(
      `uffd supports Linux on x86_64 and aarch64; this is ${Deno.build.os}/${Deno.build.arch}`,
    );
  }
  return nr;
}
