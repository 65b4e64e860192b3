/**
 * The `uffd` command-line tool: what this kernel's userfaultfd offers and how it
 * behaves. Run it with `deno run -A jsr:@uffd/uffd/cli [command]`, or
 * `deno task demo` in a checkout.
 *
 * Exit codes: 0 success, 1 runtime failure, 2 usage error, 3 refused by the
 * kernel or by permissions (the message says what to change).
 *
 * @example
 * ```ts
 * import { main } from "@uffd/uffd/cli";
 * const code = await main(["features", "--json"]);
 * console.log(code); // 0
 * ```
 *
 * @module
 */

import { EXIT, red, UsageError } from "./cli/_output.ts";

interface Command {
  summary: string;
  usage: string;
  /** What `uffd <command> --help` prints after the usage line. */
  details: string;
  load: () => Promise<{ run(args: string[]): number | Promise<number> }>;
}

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: "a short guided run: features, then a live write watch and a live snapshot of running wasm",
    usage: "uffd demo [--json] [--backend NAME] [--decline NAME,...]",
    details: "Prints what this kernel offers, then watches a shared WebAssembly.Memory that a wasm module in a\n" +
      "Worker keeps writing to: every 150 ms one WriteWatch.collect() (WP_ASYNC + PAGEMAP_SCAN), printed as a\n" +
      "page heat map and checked against the writer's own log. Then LiveSnapshot.take() copies that memory\n" +
      "while the writer goes on, and the copy is checked to be, byte for byte, the memory at one instant\n" +
      "between take() being called and returning. A few seconds.\n" +
      "--backend NAME   use this write-watch backend (async, sync, soft-dirty; default: the best available)\n" +
      "--decline NAME   let automatic selection skip this backend, or make the watch and the snapshot do\n" +
      "                 without this userfaultfd feature (e.g. WP_UNPOPULATED); repeatable, or comma-separated\n" +
      "Exits 0 when every step ran (or this kernel lacks what one needs: it says so), 1 when a check failed,\n" +
      "3 when the permissions (the snapshot's Workers need --allow-read of the package) or a forced backend\n" +
      "refuse it.",
    load: () => import("./cli/_demo.ts"),
  },
  features: {
    summary: "what this kernel offers, measured: features, ioctls, access, PAGEMAP_SCAN, huge pages, traits",
    usage: "uffd features [--json] [--profile]",
    details: "Each UFFD_FEATURE_* (bit, release, supported here); each way of creating a userfaultfd, tried\n" +
      "(syscall, /dev/userfaultfd, UFFD_USER_MODE_ONLY) with the sysctl and CAP_SYS_PTRACE; the ioctls a\n" +
      "missing/wp/minor registration allows on anonymous, memfd and hugetlb memory; PAGEMAP_SCAN and the\n" +
      "categories it accepts; soft-dirty; transparent huge pages and hugetlb pools; and the kernel profile:\n" +
      "the traits that change what the library does here (does a read fault map the shared zero page, what\n" +
      "MADV_POPULATE_READ and UFFDIO_ZEROPAGE map, which PAGEMAP_SCAN answers hold), each with its effect.\n" +
      "--profile   print only the kernel profile (with --json: the profile alone)\n" +
      "Exits 3 when this process cannot create a userfaultfd (and says what to change).",
    load: () => import("./cli/_features.ts"),
  },
  semantics: {
    summary: "which writes a write-protect tracker sees: page states x modes, measured",
    usage: "uffd semantics [--json] [--compare OTHER.json] [--from SAVED.json]",
    details: "For anonymous and memfd memory, 8 scenarios (populated, unpopulated, zeropage, zapped,\n" +
      "read-after-protect, mprotect-roundtrip, unprotected, mremap-moved) and 4 modes (sync,\n" +
      "sync+unpopulated, async, async+unpopulated): did one write fault, and is the page reported written\n" +
      "before and after it (PAGEMAP_SCAN, or the pagemap's uffd-wp bit before Linux 6.7). Each cell runs on\n" +
      "its own mapping and userfaultfd.\n" +
      "--compare FILE   print this kernel's matrix beside another's (saved with --json), marking the cells\n" +
      "                 that differ (reading the file needs --allow-read)\n" +
      "--from FILE      use a saved matrix instead of measuring (e.g. --from a.json --compare b.json)\n" +
      "Exits 1 when a cell could not run, 2 for a file that is not a saved matrix, 3 when no userfaultfd\n" +
      "can be created.",
    load: () => import("./cli/_semantics.ts"),
  },
  migrate: {
    summary: "live migration: a running wasm writer moved to a second process over TCP, rounds and downtime",
    usage:
      "uffd migrate --demo [--mode precopy|postcopy|hybrid] [--bandwidth RATE] [--downtime MS] [--memory MIB] [--json]",
    details: "Starts a wasm writer in a Worker of this process (it fills three quarters of a shared\n" +
      "WebAssembly.Memory, then keeps stamping its globals and a moving hot spot), starts a second process, and\n" +
      "moves the writer there while it runs: Migration.send here, Migration.receive there, over loopback TCP.\n" +
      "Prints each pre-copy round (pages, zero pages, bytes, time, bandwidth, pages dirtied meanwhile, dirty\n" +
      "rate), the downtime, the bytes, the post-copy's requests and stream; the writer then runs on in the\n" +
      "second process, and its memory is checked, byte for byte, against an undisturbed run replayed from\n" +
      "both processes' logs.\n" +
      "--mode M         precopy (default), postcopy or hybrid (a few pre-copy rounds, then post-copy)\n" +
      "--bandwidth R    limit the page stream: 100mbit, 1gbit, 50MiB/s, or bytes per second\n" +
      "--downtime MS    the pause pre-copy aims for (default 20)\n" +
      "--memory MIB     the writer's memory (default 64; a multiple of 4)\n" +
      "--destination    (internal) be the demo's second process\n" +
      "Exits 0 when the migration ran and the check held, 1 when not, 3 when the permissions refuse it\n" +
      "(the second process needs --allow-run, the Workers --allow-read of the package).",
    load: () => import("./cli/_migrate.ts"),
  },
  pagemap: {
    summary: "a process's mappings with present/swapped/file/zero/huge page counts and residency",
    usage: "uffd pagemap <pid|self> [--range A-B] [--json]",
    details: "One line per mapping of /proc/<pid>/maps, counted with one PAGEMAP_SCAN walk per mapping.\n" +
      "--range A-B   only this address range (hex, with or without 0x, as /proc/<pid>/maps prints it)\n" +
      "Exits 1 when the process does not exist, 3 when its memory map may not be read (and says why).",
    load: () => import("./cli/_pagemap.ts"),
  },
};

const DEFAULT_COMMAND = "demo";

function help(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`);
  return [
    "uffd — Linux userfaultfd and PAGEMAP_SCAN for Deno",
    "",
    "usage: uffd [command] [options]      (default command: " + DEFAULT_COMMAND + ")",
    "",
    "commands:",
    ...lines,
    "",
    "every command takes --help and --json (one JSON document on stdout); NO_COLOR turns colors off",
    "exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 refused by the kernel or permissions",
  ].join("\n");
}

function commandHelp(command: Command): string {
  return `usage: ${command.usage}\n\n${command.summary}\n\n${command.details}`;
}

/** The errnos that mean "this kernel or these permissions do not allow it" (exit 3). */
const REFUSED = new Set(["EPERM", "EACCES", "ENOSYS", "ENOTTY", "ESRCH", "EOPNOTSUPP"]);

/**
 * Runs the CLI with `args` and returns its exit code (it does not exit).
 *
 * @example
 * ```ts
 * import { main } from "@uffd/uffd/cli";
 * Deno.exitCode = await main(["--help"]);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === "--help" || first === "-h" || (first === "help" && rest.length === 0)) {
    console.log(help());
    return EXIT.ok;
  }
  if (first === "help") {
    const command = COMMANDS[rest[0]!];
    if (!command || rest.length > 1) {
      console.error(`uffd: no help for "${rest.join(" ")}" (commands: ${Object.keys(COMMANDS).join(", ")})`);
      return EXIT.usage;
    }
    console.log(commandHelp(command));
    return EXIT.ok;
  }
  const name = first === undefined || first.startsWith("-") ? DEFAULT_COMMAND : first;
  const commandArgs = first === undefined || first.startsWith("-") ? args : rest;
  const command = COMMANDS[name];
  if (!command) {
    console.error(`uffd: unknown command "${name}" (commands: ${Object.keys(COMMANDS).join(", ")}; see uffd --help)`);
    return EXIT.usage;
  }
  if (commandArgs.includes("--help") || commandArgs.includes("-h")) {
    console.log(commandHelp(command));
    return EXIT.ok;
  }
  try {
    return await (await command.load()).run(commandArgs);
  } catch (e) {
    if (
      e instanceof UsageError || (e instanceof TypeError && "code" in e && String(e.code).startsWith("ERR_PARSE_ARGS"))
    ) {
      console.error(`uffd ${name}: ${oneLine(e.message)} (usage: ${command.usage})`);
      return EXIT.usage;
    }
    if (isUffdError(e)) {
      console.error(red(`uffd ${name}: ${e.message}`));
      return REFUSED.has(e.code) ? EXIT.refused : EXIT.failure;
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      console.error(red(`uffd ${name}: ${e.message} (run with --allow-ffi, or -A)`));
      return EXIT.refused;
    }
    console.error(red(`uffd ${name}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`));
    return EXIT.failure;
  }
}

/**
 * A `UffdError`, told by its name: this module does not import the library (which
 * opens libc, and `--help` must run without `--allow-ffi`); a command loads it.
 */
function isUffdError(e: unknown): e is Error & { code: string } {
  return e instanceof Error && e.name === "UffdError" && typeof (e as { code?: unknown }).code === "string";
}

/** parseArgs messages can span lines; a usage error is one line. */
function oneLine(text: string): string {
  return text.replace(/\. To specify a positional argument.*$/s, "").replace(/\s*\n\s*/g, " ");
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
