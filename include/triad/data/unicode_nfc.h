// Unicode Normalization Form C: canonical decomposition, canonical ordering of combining marks,
// then canonical composition (UAX #15), with Unicode 16.0's data (src/data/nfc_tables.cpp). It is
// what Hugging Face's tokenizers apply before pre-tokenizing for a tokenizer whose normalizer is
// NFC (Qwen2's), so a tokenizer description with `normalizer nfc` encodes nfc(text).
//
// Bytes that are not part of well-formed UTF-8 pass through unchanged; they compose with nothing
// and block composition across them. ASCII text is returned as it is, at the speed of a copy.
#pragma once

#include <string>
#include <string_view>

namespace triad {

// Appends the NFC form of text to out.
void append_nfc(std::string_view text, std::string& out);
inline std::string nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  append_nfc(text, out);
  return out;
}

}  // namespace triad
