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

import { UffdError } from "./errors.ts";
import { EXIT, red, UsageError } from "./cli/output.ts";

interface Command {
  summary: string;
  usage: string;
  load: () => Promise<{ run(args: string[]): number | Promise<number> }>;
}

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: "a short guided run: the feature summary, then a live write watch",
    usage: "uffd demo [--json]",
    load: () => import("./cli/demo.ts"),
  },
  features: {
    summary: "what this kernel offers: userfaultfd features, ioctls per mode, access",
    usage: "uffd features [--json]",
    load: () => import("./cli/features.ts"),
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
    "every command takes --help and --json",
    "exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 refused by the kernel or permissions",
  ].join("\n");
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
  if (first === "--help" || first === "-h" || first === "help") {
    console.log(help());
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
    console.log(`usage: ${command.usage}\n\n${command.summary}`);
    return EXIT.ok;
  }
  try {
    return await (await command.load()).run(commandArgs);
  } catch (e) {
    if (
      e instanceof UsageError || (e instanceof TypeError && "code" in e && String(e.code).startsWith("ERR_PARSE_ARGS"))
    ) {
      console.error(`uffd ${name}: ${e.message} (usage: ${command.usage})`);
      return EXIT.usage;
    }
    if (e instanceof UffdError) {
      console.error(red(`uffd ${name}: ${e.message}`));
      return REFUSED.has(e.code) ? EXIT.refused : EXIT.failure;
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      console.error(red(`uffd ${name}: ${e.message} (run with --allow-ffi --allow-read, or -A)`));
      return EXIT.refused;
    }
    console.error(red(`uffd ${name}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`));
    return EXIT.failure;
  }
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
