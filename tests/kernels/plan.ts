/**
 * The per-boot `/plan.sh` that the guest's `/init` sources: environment for
 * the chrooted commands, the THP mode to set, and `uffd_plan`, which calls
 * `uffd_run <label> <timeout> <command>` once per test file or command.
 *
 * @module
 */

import { shQuote } from "./host.ts";

/** One thing to run in the guest. */
export interface PlanItem {
  /** `test`: a Deno test file; `cmd`: a shell command line. */
  kind: "test" | "cmd";
  /** The test file (relative to the repo root) or the command line. */
  label: string;
  /** Seconds before the watchdog dumps stacks and kills it. */
  timeout: number;
}

/** How the guest runs things. */
export interface PlanOptions {
  /** The repo root (same path in the guest: the host's / is shared). */
  repo: string;
  /** The Deno binary (an ELF, not a shim). */
  deno: string;
  /** Extra arguments for `deno test` (before the file). */
  denoArgs: readonly string[];
  /** THP mode to write to `/sys/kernel/mm/transparent_hugepage/enabled`, or undefined to keep the kernel's. */
  thp?: string;
  /** `DENO_DIR` in the guest (a host path seen through the writable overlay, or a tmpfs path). */
  denoDir?: string;
}

/** The shell command line that `item` runs as, chrooted, from the repo root. */
export function commandOf(item: PlanItem, opts: PlanOptions): string {
  const cd = `cd ${shQuote(opts.repo)} && `;
  if (item.kind === "cmd") return cd + item.label;
  const args = ["test", "--allow-all", "--no-prompt", "--no-check", ...opts.denoArgs, item.label];
  return cd + "exec " + [opts.deno, ...args].map(shQuote).join(" ");
}

/** The text of `/plan.sh`. */
export function planScript(items: readonly PlanItem[], opts: PlanOptions): string {
  const denoBin = opts.deno.replace(/\/[^/]*$/, "") || "/";
  const lines = [
    "# Written by tests/kernels/plan.ts for one boot.",
    `UFFD_THP=${shQuote(opts.thp ?? "")}`,
    `UFFD_REPO=${shQuote(opts.repo)}`,
    `export PATH=${shQuote(denoBin)}:"$PATH"`,
    // Everything runs about 10x slower under TCG: the tests' deadlines (tests/helpers.ts) stretch with it.
    "export UFFD_TEST_DEADLINE_SCALE=10",
    ...(opts.denoDir ? [`export DENO_DIR=${shQuote(opts.denoDir)}`] : []),
    "uffd_plan() {",
    ...items.map((it) =>
      `  uffd_run ${shQuote(it.label)} ${Math.max(1, Math.round(it.timeout))} ${shQuote(commandOf(it, opts))}`
    ),
    "}",
    "",
  ];
  return lines.join("\n");
}
