/** `work`, or the error `late()` makes once `ms` have passed, whichever comes first (the timer is cleared either way). */
export function within<T>(work: Promise<T>, ms: number, late: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const fail = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(late()), ms)));
  return Promise.race([work, fail]).finally(() => clearTimeout(timer));
}
