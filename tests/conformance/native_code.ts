/**
 * Forked children that run no JavaScript, and `tgkill`, as a few bytes of x86_64
 * machine code called through an `UnsafeFnPointer` (the approach of
 * `tests/native_fork.ts`: a child forked from a Deno isolate cannot run
 * JavaScript — V8's heap is `MADV_DONTFORK` — and glibc's `fork()` deadlocks with
 * `EVENT_FORK` and a JavaScript handler). The fork is the raw system call; the
 * parent gets the child's pid, or `-errno`.
 *
 * - `forkPauser()`: the child sleeps in `pause()` until killed — a live process
 *   whose pagemap the parent reads (`/proc/<pid>/pagemap`).
 * - `forkReader(address, count, stride)`: the child reads one byte at each of
 *   `count` addresses `stride` apart (each may fault, or raise SIGBUS) and exits
 *   with their XOR as its status.
 * - `tgkill(pid, tid, signal)`: a signal to one thread.
 *
 * Assembled with `as` and checked with `objdump -d` (source in the comments).
 *
 * @module
 */

import { PROT_EXEC, PROT_READ, Region } from "../../mod.ts";

// pauser: mov eax, 57 (fork); syscall; test eax, eax; jnz parent
//   child: mov eax, 34 (pause); syscall; jmp child
//   parent: ret
const PAUSER = [
  0xb8,
  0x39,
  0,
  0,
  0,
  0x0f,
  0x05,
  0x85,
  0xc0,
  0x75,
  0x09,
  0xb8,
  0x22,
  0,
  0,
  0,
  0x0f,
  0x05,
  0xeb,
  0xf7,
  0xc3,
];

// reader(rdi = address, rsi = count, rdx = stride): mov eax, 57; syscall; test eax, eax; jnz parent
//   xor ecx, ecx
//   loop: test rsi, rsi; jz done; movzx eax, byte [rdi]; xor ecx, eax; add rdi, rdx; dec rsi; jmp loop
//   done: mov edi, ecx; mov eax, 231 (exit_group); syscall
//   parent: ret
const READER = [
  0xb8,
  0x39,
  0,
  0,
  0,
  0x0f,
  0x05,
  0x85,
  0xc0,
  0x75,
  0x1d,
  0x31,
  0xc9,
  0x48,
  0x85,
  0xf6,
  0x74,
  0x0d,
  0x0f,
  0xb6,
  0x07,
  0x31,
  0xc1,
  0x48,
  0x01,
  0xd7,
  0x48,
  0xff,
  0xce,
  0xeb,
  0xee,
  0x89,
  0xcf,
  0xb8,
  0xe7,
  0,
  0,
  0,
  0x0f,
  0x05,
  0xc3,
];

// tgkill(rdi = tgid, rsi = tid, rdx = signal): mov eax, 234; syscall; ret
const TGKILL = [0xb8, 0xea, 0, 0, 0, 0x0f, 0x05, 0xc3];

let code: Region | undefined;

/** The address of the machine code at `offset` (mapped executable on first use). */
function entry(offset: number): bigint {
  if (!code) {
    code = Region.map(Region.pageSize);
    code.bytes.set(PAUSER, 0);
    code.bytes.set(READER, 64);
    code.bytes.set(TGKILL, 128);
    code.protect(PROT_READ | PROT_EXEC);
  }
  return code.address + BigInt(offset);
}

/** `true` where the machine code runs (x86_64). */
export const nativeCodeAvailable: boolean = Deno.build.arch === "x86_64";

/** Forks a child that sleeps in `pause()` until killed; returns its pid or `-errno`. */
export function forkPauser(): number {
  const fn = new Deno.UnsafeFnPointer(Deno.UnsafePointer.create(entry(0))!, { parameters: [], result: "i32" } as const);
  return fn.call();
}

/** Forks a child that reads `count` bytes `stride` apart from `address` and exits with their XOR. */
export function forkReader(address: bigint, count: number, stride: number): number {
  const fn = new Deno.UnsafeFnPointer(
    Deno.UnsafePointer.create(entry(64))!,
    { parameters: ["u64", "u64", "u64"], result: "i32" } as const,
  );
  return fn.call(address, BigInt(count), BigInt(stride));
}

/** `tgkill(pid, tid, signal)`: 0 or `-errno`. */
export function tgkill(pid: number, tid: number, signal: number): number {
  const fn = new Deno.UnsafeFnPointer(
    Deno.UnsafePointer.create(entry(128))!,
    { parameters: ["i64", "i64", "i64"], result: "i32" } as const,
  );
  return fn.call(BigInt(pid), BigInt(tid), BigInt(signal));
}

/** The parts of a `waitpid` status. */
export function waitStatus(status: number): { exited: boolean; code: number; signal: number } {
  const signal = status & 0x7f;
  return { exited: signal === 0, code: (status >> 8) & 0xff, signal: signal === 0x7f ? 0 : signal };
}
