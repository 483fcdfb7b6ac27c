// Documents from JSON Lines files (`triad-tokenize shards --jsonl`): one JSON object per line,
// the document being the string value of one of its fields (e.g. "text", as in FineWeb's and
// most Hugging Face datasets' JSONL exports).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace triad {

// The value of `field` in each non-blank line of text (lines end at "\n", a "\r" before it
// dropped), decoded to UTF-8 (\uXXXX escapes and surrogate pairs included), in order. A field
// given twice in a line takes its last value, as Python's json module does. Throws triad::Error
// naming `where`, the line and the problem for a line that is not one strict JSON object (RFC
// 8259: no trailing commas, comments or raw control characters in strings; nesting at most 512
// deep), a lone surrogate escape, or a missing or non-string field.
std::vector<std::string> json_lines_documents(std::string_view text, std::string_view field,
                                              const std::string& where);

}  // namespace triad
