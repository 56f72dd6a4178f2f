// SMS segment counter: mirrors sms_gateway/encoding.py count_segments.
// GSM-7 (160 septets, 153 per part when concatenated; extension-table
// characters count two septets and never split) or UCS-2 (70 UTF-16 units,
// 67 per part; a surrogate pair counts two units and never splits).

const BASIC =
  "@£$¥èéùìòÇ\nØø\rÅå" +
  "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ" +
  " !\"#¤%&'()*+,-./" +
  "0123456789:;<=>?" +
  "¡ABCDEFGHIJKLMNO" +
  "PQRSTUVWXYZÄÖÑÜ§" +
  "¿abcdefghijklmno" +
  "pqrstuvwxyzäöñüà";
const EXTENSION = "\f^{}\\[~]|€";
const BASIC_SET = new Set([...BASIC].filter((ch) => ch !== "\x1b"));
const EXT_SET = new Set([...EXTENSION]);

export const GSM7_SINGLE = 160;
export const GSM7_MULTI = 153;
export const UCS2_SINGLE = 70;
export const UCS2_MULTI = 67;

function gsmSeptets(ch) {
  if (BASIC_SET.has(ch)) return 1;
  if (EXT_SET.has(ch)) return 2;
  return null;
}

export function chooseCoding(text) {
  for (const ch of text) {
    if (gsmSeptets(ch) === null) return "ucs2";
  }
  return "gsm7";
}

function units(ch, coding) {
  if (coding === "ucs2") return ch.codePointAt(0) > 0xffff ? 2 : 1;
  return gsmSeptets(ch);
}

export function countSegments(text) {
  const coding = chooseCoding(text);
  const single = coding === "gsm7" ? GSM7_SINGLE : UCS2_SINGLE;
  const multi = coding === "gsm7" ? GSM7_MULTI : UCS2_MULTI;
  let total = 0;
  for (const ch of text) total += units(ch, coding);
  if (total <= single) {
    return { coding, parts: total ? 1 : 0, units: total, unitsPerPart: single,
             remainingInPart: single - total };
  }
  let parts = 0;
  let used = 0;
  for (const ch of text) {
    const n = units(ch, coding);
    if (parts === 0 || used + n > multi) {
      parts += 1;
      used = 0;
    }
    used += n;
  }
  return { coding, parts, units: total, unitsPerPart: multi, remainingInPart: multi - used };
}
