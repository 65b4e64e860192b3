/**
 * A fork whose child runs no JavaScript, for the `EVENT_FORK` tests. Two facts
 * rule out `libc.fork()` from JavaScript there:
 *
 * - V8 maps its heap `MADV_DONTFORK`: a forked child has no heap, and crashes
 *   (SIGSEGV) as soon as it returns into JavaScript — even to call `_exit`.
 * - glibc's `fork()` holds its malloc locks across the system call, and with
 *   `EVENT_FORK` the system call waits until a handler has read the fork event: a
 *   handler that allocates (any JavaScript one) waits for those locks forever.
 *
 * So the child is 27 bytes of x86_64 machine code, called through an
 * `UnsafeFnPointer`: `fork` (raw system call), and in the child one byte store
 * `*address = value` (which may fault and wait to be resolved), then
 * `exit_group(*address ^ value)` — status 0 when the store landed. The parent
 * gets the child's pid (or `-errno`).
 *
 * @module
 */

import { Region } from "../mod.ts";
import { PROT_EXEC, PROT_READ } from "../ffi/linux.ts";

// mov eax, 57 (fork); syscall; test eax, eax; jnz parent
// mov [rdi], sil; movzx edi, byte [rdi]; xor edi, esi; mov eax, 231 (exit_group); syscall
// parent: ret
const X86_64 = [
  0xb8,
  0x39,
  0x00,
  0x00,
  0x00,
  0x0f,
  0x05,
  0x85,
  0xc0,
  0x75,
  0x0f,
  0x40,
  0x88,
  0x37,
  0x0f,
  0xb6,
  0x3f,
  0x31,
  0xf7,
  0xb8,
  0xe7,
  0x00,
  0x00,
  0x00,
  0x0f,
  0x05,
  0xc3,
];

/** A function that forks a child writing `value` at `address` and exiting; `undefined` off x86_64. */
export function nativeForkWriter(): ((address: bigint, value: number) => number) | undefined {
  if (Deno.build.arch !== "x86_64") return undefined;
  const code = Region.map(Region.pageSize);
  code.bytes.set(X86_64);
  code.protect(PROT_READ | PROT_EXEC);
  const fn = new Deno.UnsafeFnPointer(
    Deno.UnsafePointer.create(code.address)!,
    { parameters: ["u64", "i32"], result: "i32" } as const,
  );
  return (address, value) => fn.call(address, value);
}
