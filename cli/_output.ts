/**
 * Terminal output for the CLI: colors that honour `NO_COLOR` and a non-terminal
 * stdout, plain tables, and the exit codes every command shares.
 *
 * @module
 */

/** Exit codes: success, runtime failure, usage error, refused by the kernel or permissions. */
export const EXIT = { ok: 0, failure: 1, usage: 2, refused: 3 } as const;

/** A command-line mistake: exits 2 with one line of help. */
export class UsageError extends Error {
  /** The command the mistake was made in, for the help line. */
  readonly command: string | undefined;
  /** Builds a usage error for `command`. */
  constructor(message: string, command?: string) {
    super(message);
    this.name = "UsageError";
    this.command = command;
  }
}

const useColor = (() => {
  try {
    return !Deno.env.get("NO_COLOR") && Deno.stdout.isTerminal();
  } catch {
    return false;
  }
})();

function paint(code: number): (text: string) => string {
  return (text) => useColor ? `\x1b[${code}m${text}\x1b[0m` : text;
}

/** Bold text (plain when colors are off). */
export const bold: (text: string) => string = paint(1);
/** Dim text. */
export const dim: (text: string) => string = paint(2);
/** Green text. */
export const green: (text: string) => string = paint(32);
/** Red text. */
export const red: (text: string) => string = paint(31);
/** Yellow text. */
export const yellow: (text: string) => string = paint(33);
/** Cyan text. */
export const cyan: (text: string) => string = paint(36);

/** The visible width of a string (ANSI escapes removed). */
export function width(text: string): number {
  // deno-lint-ignore no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, "").length;
}

/** Formats rows as columns separated by two spaces; the first row is a header. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => widths[i] = Math.max(widths[i] ?? 0, width(cell)));
  return rows.map((row, r) => {
    const line = row.map((cell, i) => i === row.length - 1 ? cell : cell + " ".repeat(widths[i]! - width(cell)))
      .join("  ");
    return r === 0 ? bold(line) : line;
  }).join("\n");
}

/** Writes one JSON document to stdout (bigints as decimal strings). */
export function printJson(value: unknown): void {
  console.log(JSON.stringify(value, (_k, v) => typeof v === "bigint" ? v.toString() : v, 2));
}

const progressOn = (() => {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
})();
let progressShown = false;

/** Shows a one-line progress message on stderr, only when stderr is a terminal. */
export function progress(text: string): void {
  if (!progressOn) return;
  Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${text}`));
  progressShown = true;
}

/** Clears the progress line, if one is shown. */
export function progressDone(): void {
  if (!progressShown) return;
  Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
  progressShown = false;
}

/** A byte count in binary units: `512 B`, `4 KiB`, `1.5 GiB`. */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = unit === 0 || Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 1 : 0);
  return `${text} ${units[unit]}`;
}
