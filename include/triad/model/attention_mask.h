// Document masks for packed sequences (data.document_mask): a pretraining corpus packs its
// documents back to back, each starting with a delimiter token (GPT-2's <|endoftext|>, Llama 3's
// <|begin_of_text|>), and a sequence of T tokens cut from that stream spans several of them.
// With the mask each token attends to the earlier tokens of its own document only, as if each
// document were a sequence of its own (Llama 3's pretraining; Megatron's reset_attention_mask);
// positions keep counting across the boundary.
#pragma once

#include <cstdint>

namespace triad {

// Backend::attention_forward's key_begin [B,T] for B sequences of T input tokens (tokens [B,T]):
// the first key of query t of sequence b is the last position p <= t of that sequence holding
// document_token (none: -1; tokens is then not read and may be null), or 0 when none does (the
// sequence began inside a document); with window > 0 (sliding-window attention) at least
// t − window + 1.
void document_key_begin(int32_t* key_begin, const int32_t* tokens, int B, int T,
                        int32_t document_token, int window = 0);

}  // namespace triad
