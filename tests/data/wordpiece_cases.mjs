// wordpiece_cases.mjs - writes wordpiece_cases.json: hard inputs for the BERT
// tokenizer (src/wordpiece.c) with the ids an independent implementation gives
// over bert-base-uncased-vocab.txt, for tests/unit/test_wordpiece.c.
//
// The independent implementation is tokenizers.js, the JavaScript port of
// Hugging Face tokenizers (npm @huggingface/tokenizers 0.2.0). Where it departs
// from the Rust library (which every sentence-transformers install runs), the
// case lists `byHand` ids derived from the Rust rules instead, with the reason;
// the script prints each disagreement when the file is regenerated.
//
// Rerun (node >= 18), from the repository root:
//   mkdir -p /tmp/tokjs && (cd /tmp/tokjs && npm install @huggingface/tokenizers@0.2.0)
//   NODE_PATH=/tmp/tokjs/node_modules node tests/data/wordpiece_cases.mjs
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(join(process.env.NODE_PATH || "/tmp/tokjs/node_modules", "x.js"));
const { Tokenizer } = require("@huggingface/tokenizers");
const here = dirname(fileURLToPath(import.meta.url));

const lines = readFileSync(join(here, "bert-base-uncased-vocab.txt"), "utf8").split("\n");
if (lines[lines.length - 1] === "") lines.pop();
const vocab = {};
lines.forEach((t, i) => { vocab[t] = i; });
const special = (content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false,
                                    normalized: false, special: true });
// The tokenizer.json bert-base-uncased ships, rebuilt around the vocabulary.
const tokenizerJson = {
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: [special("[PAD]", 0), special("[UNK]", 100), special("[CLS]", 101),
                 special("[SEP]", 102), special("[MASK]", 103)],
  normalizer: { type: "BertNormalizer", clean_text: true, handle_chinese_chars: true,
                strip_accents: null, lowercase: true },
  pre_tokenizer: { type: "BertPreTokenizer" },
  post_processor: {
    type: "TemplateProcessing",
    single: [{ SpecialToken: { id: "[CLS]", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } },
             { SpecialToken: { id: "[SEP]", type_id: 0 } }],
    pair: [],
    special_tokens: {
      "[CLS]": { id: "[CLS]", ids: [101], tokens: ["[CLS]"] },
      "[SEP]": { id: "[SEP]", ids: [102], tokens: ["[SEP]"] },
    },
  },
  decoder: { type: "WordPiece", prefix: "##", cleanup: true },
  model: { type: "WordPiece", unk_token: "[UNK]", continuing_subword_prefix: "##",
           max_input_chars_per_word: 100, vocab },
};
const tok = new Tokenizer(tokenizerJson, { do_lower_case: true, model_max_length: 512 });

const ids = (...tokens) => tokens.map((t) => {
  if (!(t in vocab)) throw new Error(`not in vocab: ${t}`);
  return vocab[t];
});

// [name, text] or [name, text, byHand ids (with [CLS]/[SEP]), why the port is wrong]
const cases = [
  ["empty", ""],
  ["ascii_sentence", "The quick brown fox jumps over the lazy dog."],
  ["uppercase", "HELLO World"],
  ["subwords", "unaffable tokenization embeddings"],
  ["punctuation_run", "wait...what?!"],
  ["ascii_symbols_are_punct", "a$b+c<d=e>f^g`h|i~j"],
  ["apostrophes", "don't can't it's"],
  ["hyphen_and_slash", "state-of-the-art and/or"],
  ["numbers", "3.14159 1,000,000 2024-01-02"],
  ["email_url", "mail me@example.com or https://example.org/a?b=c"],
  ["tabs_newlines", "one\ttwo\nthree\r\nfour"],
  ["many_spaces", "   leading   and   trailing   "],
  ["vertical_tab_joins", "foo\u000bbar"],
  ["form_feed_joins", "foo\u000cbar"],
  ["nel_joins", "foo\u0085bar"],
  ["nbsp_splits", "foo\u00a0bar"],
  ["ideographic_space", "foo\u3000bar"],
  ["en_space_and_thin", "a\u2002b\u2009c"],
  ["line_separator", "a\u2028b\u2029c"],
  ["nul_removed", "ab\u0000cd"],
  ["replacement_char_removed", "ab\ufffdcd"],
  ["zero_width_space_removed", "zero\u200bwidth"],
  ["zwj_removed", "a\u200db"],
  ["bom_removed", "\ufeffbom"],
  ["soft_hyphen_removed", "co\u00adoperate"],
  ["bidi_marks_removed", "\u202aleft\u202c \u200fright"],
  ["private_use_removed", "x\ue000y\uf8ffz"],
  ["c1_control_removed", "a\u0080b\u009fc"],
  ["accents_stripped", "café naïve résumé"],
  ["decomposed_accents", "cafe\u0301 nai\u0308ve"],
  ["crème_brûlée_caps", "CRÈME BRÛLÉE"],
  ["german", "Straße Ärger Öl Übermut"],
  ["dotted_capital_i", "İstanbul"],
  ["dotless_i", "ıi"],
  ["greek", "ΑΒΓ αβγ Ωmega Σίσυφος"],
  // The port lowercases whole strings (JavaScript's toLowerCase, which maps a word-final
  // capital sigma to ς); the library maps each character alone (Rust's char::to_lowercase),
  // so Σ is always σ: ο ##δ ##ο ##σ.
  ["final_sigma", "ΟΔΟΣ", ids("[CLS]", "ο", "##δ", "##ο", "##σ", "[SEP]"),
   "the library lowercases per character: a final capital sigma becomes σ, not ς"],
  ["cyrillic", "Привет, мир!"],
  ["arabic", "مرحبا بالعالم"],
  ["hebrew_points", "שָׁלוֹם"],
  ["devanagari", "नमस्ते दुनिया"],
  ["thai", "สวัสดีครับ"],
  ["hangul", "안녕하세요 세계"],
  ["japanese_kana", "こんにちは カタカナ"],
  ["chinese", "你好，世界。"],
  ["chinese_mixed", "我爱NLP和机器学习"],
  ["cjk_ext_a", "\u3400\u4dbf"],
  ["cjk_compat", "\uf900\ufa6d"],
  ["fullwidth_ascii", "ＡＢＣ１２３！"],
  ["ligature_fi", "ﬁnance"],
  ["roman_numeral", "Ⅻ"],
  ["superscript", "x² + y³"],
  ["kelvin_angstrom", "\u212a \u212b"],
  ["emoji", "I love 🍕 and 😀!"],
  ["emoji_zwj_sequence", "family 👨‍👩‍👧 done"],
  ["flags", "🇫🇷🇩🇪"],
  ["math_symbols", "∑ x ≤ ∞ ± √2"],
  ["currency", "€100 £5 ¥20 $3"],
  ["unicode_punct", "«quoted» “smart” ‘single’ — dash… ¿qué? ¡sí!"],
  ["connector_punct", "snake_case ‿ tie"],
  ["brackets", "(a) [b] {c} 【d】 「e」"],
  ["special_tokens_literal", "[CLS] hello [SEP] world [MASK]"],
  ["special_tokens_glued", "a[MASK]b[UNK]c"],
  ["special_tokens_lowercase_not_special", "[mask] [cls]"],
  ["special_token_partial", "[MAS K] [SEP"],
  ["long_word_is_unk", "a".repeat(101)],
  ["long_word_at_limit", "a".repeat(100)],
  ["long_word_unicode", "é".repeat(101)],
  ["unknown_char_word_is_unk", "abc\u2603def"],
  ["combining_only", "\u0301\u0302"],
  ["repeated_punct", "!!!???"],
  ["mixed_case_subword", "JavaScript TypeScript WebAssembly"],
  ["contractions_unicode_apostrophe", "don’t"],
  ["numbers_with_units", "5kg 10km/h 3.5GHz"],
  ["hashtag_mention", "#hashtag @mention"],
  ["html", "<p class=\"x\">Hi&amp;bye</p>"],
  ["json_like", "{\"key\": [1, 2, 3]}"],
  ["code", "for (int i = 0; i < n; i++) { x += a[i]; }"],
  ["dashes", "a–b—c‐d"],
  ["ellipsis_char", "wait… what"],
  ["tilde_circumflex_letters", "ñ ã õ ê ô"],
  ["vietnamese", "Tiếng Việt có dấu"],
  ["latin_extended", "Łódź Ørsted Þór"],
  ["ascii_control_removed", "a\u0001b\u001fc\u007fd"],
  ["unit_separators_not_whitespace", "a\u001cb"],
  // The port treats the astral ideographs (Extension B, U+20000 up) as two UTF-16 halves
  // and does not space them out; the library spaces each one (is_chinese_char covers
  // 0x20000..=0x2A6DF), and none is in the vocabulary: [UNK] each, "x" alone.
  ["astral_cjk_ext_b", "x\u{20000}\u{2A6D6}y",
   ids("[CLS]", "x", "[UNK]", "[UNK]", "y", "[SEP]"),
   "astral ideographs are CJK per the library (0x20000..=0x2A6DF): spaced, each [UNK]"],
  ["astral_cjk_ext_c", "中\u{2A700}文",
   ids("[CLS]", "中", "[UNK]", "文", "[SEP]"),
   "U+2A700 is in the library's 0x2A700..=0x2B73F range: spaced, [UNK]"],
  // U+2B820 is Extension E but the library's table starts that range at U+2B920: not
  // spaced, so it glues to the letters around it and the word is [UNK] as a whole.
  ["astral_cjk_gap_not_spaced", "a\u{2B820}b",
   ids("[CLS]", "[UNK]", "[SEP]"),
   "U+2B820 is outside the library's CJK table (Extension E starts at 0x2B920 there)"],
  ["astral_compat_supplement", "a\u{2F800}b",
   ids("[CLS]", "a", "[UNK]", "b", "[SEP]"),
   "U+2F800 is in 0x2F800..=0x2FA1F (CJK compatibility supplement): spaced"],
  // Unassigned code points (Cn) are not "control" in the library (is_other is Cc, Cf, Co):
  // they stay and make their word [UNK].
  ["unassigned_bmp", "ab\u0378cd",
   ids("[CLS]", "[UNK]", "[SEP]"),
   "U+0378 is unassigned (Cn): kept by clean_text, the word is [UNK]"],
  ["unassigned_astral", "hello \u{E0080} world",
   ids("[CLS]", "hello", "[UNK]", "world", "[SEP]"),
   "U+E0080 is unassigned (Cn): kept, alone it is [UNK]"],
  ["noncharacter", "a\ufdd0 b",
   ids("[CLS]", "[UNK]", "b", "[SEP]"),
   "U+FDD0 is a noncharacter (Cn): kept, its word is [UNK]"],
  ["astral_private_use_removed", "a\u{F0000}b", null, null],
  ["cjk_in_word", "abc中def"],
  ["mixed_scripts", "Hello世界Привет"],
];

const out = [];
let disagreements = 0;
for (const [name, text, byHand, why] of cases) {
  const js = tok.encode(text).ids;
  if (byHand) {
    if (JSON.stringify(js) === JSON.stringify(byHand)) {
      out.push({ name, text, ids: js, source: `tokenizers.js 0.2.0, agrees with the rules: ${why}` });
    } else {
      disagreements++;
      console.log(`${name}: port ${JSON.stringify(js)}, by hand ${JSON.stringify(byHand)}`);
      out.push({ name, text, ids: byHand, source: `by hand: ${why}`, port_ids: js });
    }
  } else {
    out.push({ name, text, ids: js, source: "tokenizers.js 0.2.0" });
  }
}
writeFileSync(join(here, "wordpiece_cases.json"), JSON.stringify(out, null, 1) + "\n");
console.log(`${out.length} cases, ${disagreements} derived by hand`);
