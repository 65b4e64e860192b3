/**
 * Running the CLI as a user does: a subprocess, its stdout, stderr and exit code.
 * Optionally as another user (`setpriv`), or on a pseudo-terminal (`script`).
 *
 * @module
 */

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** What a CLI run produced. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const decode = (b: Uint8Array) => new TextDecoder().decode(b);

/** Options of {@linkcode runCli}. */
export interface RunOptions {
  /** Run as `nobody:nogroup` through `setpriv` (the caller must be root). */
  asNobody?: boolean;
  /** Extra environment; `NO_COLOR=1` is set unless `color` is true. */
  env?: Record<string, string>;
  /** Leave `NO_COLOR` unset. */
  color?: boolean;
}

/** Runs `deno run -A cli.ts ...args` and collects its output. */
export async function runCli(args: string[], options: RunOptions = {}): Promise<CliResult> {
  const deno = [Deno.execPath(), "run", "--allow-all", "--no-prompt", CLI, ...args];
  const argv = options.asNobody ? ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", ...deno] : deno;
  const env = Deno.env.toObject();
  delete env.NO_COLOR;
  if (!options.color) env.NO_COLOR = "1";
  const out = await new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env: { ...env, ...options.env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/** Runs the CLI with its stdout and stderr on a pseudo-terminal (`script`); returns what the terminal showed. */
export async function runCliOnTerminal(args: string[], options: { color?: boolean } = {}): Promise<CliResult> {
  const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
  const command = [Deno.execPath(), "run", "--allow-all", "--no-prompt", CLI, ...args].map(quote).join(" ");
  const env = Deno.env.toObject();
  delete env.NO_COLOR;
  if (!options.color) env.NO_COLOR = "1";
  const out = await new Deno.Command("script", {
    args: ["-qec", command, "/dev/null"],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/** Whether a program is on PATH. */
export function onPath(program: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${program}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** `true` when a line looks like part of a JavaScript stack trace. */
export function hasStackTrace(text: string): boolean {
  return /^\s+at .+:\d+:\d+\)?$/m.test(text);
}
