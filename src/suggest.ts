/**
 * "Did you mean": the closest of some words to a misspelt one, as a suffix for a one-line error
 * (as in `mcq: unknown option '--prot' (did you mean --port?)`). Commander does the same
 * for options, but does not export it.
 */

/** Edits (insert, delete, replace, swap two neighbours) that turn a into b. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/** " (did you mean check?)", or "" when no word is close: at most a third of the word's letters differ. */
export function suggest(word: string, words: string[]): string {
  let best: string | null = null;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const candidate of words) {
    const n = distance(word, candidate);
    if (n < bestDistance) [best, bestDistance] = [candidate, n];
  }
  return best === null ? "" : ` (did you mean ${best}?)`;
}
