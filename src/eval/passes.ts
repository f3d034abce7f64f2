/**
 * Windows in passes: a pass runs every block once over all of its windows (a streamed
 * model reads its weights once per pass), so passes are as long as the decoder's
 * activation budget allows (`passTokens`), and never shorter than one window.
 */
export const passesOf = <W extends { readonly ids: Int32Array }>(windows: readonly W[], passTokens: number): W[][] => {
  const passes: W[][] = [];
  let current: W[] = [];
  let tokens = 0;
  for (const w of windows) {
    if (current.length > 0 && tokens + w.ids.length > passTokens) {
      passes.push(current);
      current = [];
      tokens = 0;
    }
    current.push(w);
    tokens += w.ids.length;
  }
  if (current.length > 0) passes.push(current);
  return passes;
};
