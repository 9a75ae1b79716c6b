// Regenerates bert_chars.txt: what the HuggingFace `tokenizers` library (npm tokenizers@0.23.2)
// does to every code point, for test_charbpe's CharClassesMatchLibrary.
//   npm install --prefix /tmp/hf tokenizers@0.23.2
//   NODE_PATH=/tmp/hf/node_modules node gen_bert_chars.js > bert_chars.txt
// Each line: FIRST LAST NORM PRE (hex code points, inclusive; surrogates never appear), for
// every run of code points that behave alike; code points not listed are kept unchanged and
// not split. NORM: what BertNormalizer(clean_text, handle_chinese_chars, no accents stripping,
// no lowercase) + Lowercase does to the char between two letters: D deleted, W a plain space,
// C spaces put around it, K kept, L+d / L-d lowercased to cp+d, M:x+y lowercased to several.
// PRE: how BertPreTokenizer treats the char between two letters: P its own word, S a separator
// (dropped), N part of the word.
const T = require('tokenizers');
const norm = T.sequenceNormalizer([
  T.bertNormalizer({cleanText: true, handleChineseChars: true, stripAccents: false, lowercase: false}),
  T.lowercase()]);
const pre = T.bertPreTokenizer();
const rows = [];
let run = null;
const flush = () => { if (run && !(run.n === 'K' && run.p === 'N')) rows.push(run); run = null; };
for (let cp = 0; cp <= 0x10FFFF; cp++) {
  if (cp >= 0xD800 && cp <= 0xDFFF) { flush(); continue; }
  const c = String.fromCodePoint(cp);
  const s = norm.normalizeString('a' + c + 'b');
  let n;
  if (s === 'ab') n = 'D';
  else if (s === 'a b') n = 'W';
  else if (s === 'a ' + c + ' b') n = 'C';
  else if (s === 'a' + c + 'b') n = 'K';
  else {
    const mid = Array.from(s.slice(1, -1)).map(x => x.codePointAt(0));
    if (mid.length === 1) { const d = mid[0] - cp; n = 'L' + (d >= 0 ? '+' : '') + d; }
    else n = 'M:' + mid.map(x => x.toString(16)).join('+');
  }
  const w = pre.preTokenizeString('x' + c + 'y').map(t => t[0]);
  const p = (w.length === 3 && w[1] === c) ? 'P' : (w.length === 2 ? 'S' : (w.length === 1 ? 'N' : '?'));
  if (run && run.n === n && run.p === p && run.last === cp - 1 && !n.startsWith('M')) { run.last = cp; continue; }
  flush();
  run = {first: cp, last: cp, n, p};
}
flush();
const hex = x => x.toString(16).toUpperCase().padStart(4, '0');
process.stdout.write('# tokenizers 0.23.2: BertNormalizer+Lowercase and BertPreTokenizer per code point (gen_bert_chars.js)\n');
for (const r of rows) process.stdout.write(`${hex(r.first)} ${hex(r.last)} ${r.n} ${r.p}\n`);
