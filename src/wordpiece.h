/*
 * wordpiece.h - the BERT tokenizer of Hugging Face's tokenizers library:
 * added (special) tokens split out first, then BertNormalizer, BertPreTokenizer,
 * WordPiece, and the "[CLS] $A [SEP]" post-processor.
 *
 * Loaded from a tokenizer.json (only those component types; any other
 * normalizer, pre-tokenizer, model or post-processor is refused by name) or
 * from a vocab.txt with bert-base-uncased's defaults (clean_text,
 * handle_chinese_chars, lowercase, accents stripped, "##", "[UNK]", 100
 * characters a word, [PAD] [UNK] [CLS] [SEP] [MASK] as added tokens), as
 * changed by do_lower_case, strip_accents and tokenize_chinese_chars in a
 * tokenizer_config.json beside it.
 *
 * The rules follow the Rust implementation, which differs from Google's
 * original and from the JavaScript port in places (see wordpiece.c):
 * categories, NFD and lowercase mappings come from utf8proc. Pure: no I/O
 * except in wordpiece_load; a loaded tokenizer is immutable and may be used by
 * several threads at once.
 */
#ifndef AKOSHA_WORDPIECE_H
#define AKOSHA_WORDPIECE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wordpiece;

/*
 * Load DIR/tokenizer.json, or DIR/vocab.txt (and DIR/tokenizer_config.json
 * if present) when there is no tokenizer.json.
 * Returns 0 with *out set (free with wordpiece_free), or -1 with *cause set
 * (caller frees) naming the file and the problem.
 */
int wordpiece_load(const char *dir, struct wordpiece **out, char **cause)
    __attribute__((warn_unused_result));

/* The same from the contents of a tokenizer.json held in memory. */
int wordpiece_from_json(const char *buf, size_t len, struct wordpiece **out, char **cause)
    __attribute__((warn_unused_result));

/* The same from the contents of a vocab.txt (one token a line, id = line number - 1). */
int wordpiece_from_vocab(const char *buf, size_t len, struct wordpiece **out, char **cause)
    __attribute__((warn_unused_result));

void wordpiece_free(struct wordpiece *wp);

/* One more than the largest token id: the embedding table needs this many rows. */
size_t wordpiece_vocab_size(const struct wordpiece *wp);

/* Tokens the post-processor adds around a text ([CLS] and [SEP]: 2). */
size_t wordpiece_special_count(const struct wordpiece *wp);

/*
 * Token ids of text[0..len) (UTF-8; invalid bytes count as U+FFFD) with the
 * special tokens around it, truncated as the library truncates to max_ids
 * tokens: the text's first max_ids - specials tokens are kept. Writes
 * ids[0..n) and returns n, or 0 when max_ids is below the special count.
 */
size_t wordpiece_encode(const struct wordpiece *wp, const char *text, size_t len, int32_t *ids,
                        size_t max_ids);

#endif
