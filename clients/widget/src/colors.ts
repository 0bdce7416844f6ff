// Text colour on the tenant's primary colour: their secondary colour when it reads well
// there (WCAG AA, 4.5:1), else black or white, whichever contrasts more.

function luminance(hex: string): number | undefined {
  const m = /^#?([0-9a-f]{6})$/i.exec(hex.trim());
  if (!m) return undefined;
  const n = parseInt(m[1], 16);
  const ch = [(n >> 16) & 255, (n >> 8) & 255, n & 255].map((v) => {
    const c = v / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
}

/** WCAG contrast ratio of two #RRGGBB colours (1 when either is unreadable). */
export function contrast(a: string, b: string): number {
  const la = luminance(a);
  const lb = luminance(b);
  if (la === undefined || lb === undefined) return 1;
  const [hi, lo] = la > lb ? [la, lb] : [lb, la];
  return (hi + 0.05) / (lo + 0.05);
}

/** The text colour for `primary`. */
export function onPrimary(primary: string, secondary?: string): string {
  if (secondary && contrast(primary, secondary) >= 4.5) return secondary;
  return contrast(primary, "#000000") >= contrast(primary, "#ffffff") ? "#000000" : "#ffffff";
}
