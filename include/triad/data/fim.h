// Fill-in-the-middle (data.fim_rate; Bavarian et al. 2022, Megatron's GPTFIMDataset, SantaCoder
// and StarCoder's training): a training sequence's text rearranged so that the model learns to
// write a middle from the prefix and suffix around it, at token granularity. A pure function of
// the run's seed and the sequence's index in its dataset (no random state), so every grid reads
// the same sequences and a resumed run continues exactly.
//
// The window of sequence k (its T + 1 tokens, each with the mask byte saying whether it counts
// as a target) is cut into fragments at every `split` token (which stay in place between them;
// none: the whole window is one fragment). The j-th non-empty fragment (0-based; length L) draws
// with h(d) = mix(mix(mix(mix(seed) ^ k) ^ j) ^ d) and u(d) = (h(d) >> 11) · 2^−53:
//   u(0) < rate: rearranged, else kept;
//   cuts a = h(2) mod (L + 1), b = h(3) mod (L + 1), sorted (a ≤ b): prefix [0, a), middle
//   [a, b), suffix [b, L);
//   u(1) < spm_rate: SPM   <prefix_tok> <suffix_tok> suffix <middle_tok> prefix middle
//   else:            PSM   <prefix_tok> prefix <suffix_tok> suffix <middle_tok> middle
// (mix: SplitMix64's finaliser, as the hidden dropout's). Tokens keep their mask bytes; the
// three sentinels count. The rearranged window, 3 tokens longer per rearranged fragment, is
// cut back to its first T + 1 tokens.
//
// Character granularity (`characters`, data.fim_granularity = character; Megatron's,
// SantaCoder's and StarCoder's FIM): the fragment's tokens are decoded with the tokenizer into
// units, each character of their text (a UTF-8 character: a byte that is not a continuation
// byte 10xxxxxx starts one, as does the text's first byte) and each special token or id past
// the tokenizer's vocabulary (kept whole); the cuts a, b are drawn as above over the C units
// (mod C + 1), and each of prefix, middle and suffix becomes tokens again: the text of its
// consecutive characters encoded anew (as a continuation: no SentencePiece space in front), its
// whole tokens as they were (SPM's prefix and middle too, each on its own). A fragment (or part,
// below) with a token whose mask byte is 0 is kept as it is (its mask cannot follow the text
// into new tokens); a rearranged one's tokens and sentinels all count. A window that comes out
// shorter than T + 1 ends in `pad` tokens, which do not count.
//
// Megatron's two levels (`fragment_split` >= 0, data.fim_fragment_split; e.g. the file separator
// of repository-level documents): a fragment that holds the fragment_split token is rearranged,
// where u(0) < rate, part by part: its parts, cut at that token (which stays in place), the s-th
// non-empty one (0-based) each with the draws of h_s(d) = mix(mix(fkey ^ (4 + s)) ^ d), where
// fkey = mix(mix(mix(seed) ^ k) ^ j), at the rate fragment_rate; a fragment without it as above.
// `no_prefix` (data.fim_no_prefix, non-empty): a fragment without parts, or a part, whose text
// (decoded with the tokenizer) starts with it is kept as it is (Megatron's: a fragment with
// parts is not itself checked).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace triad {

class Tokenizer;

struct FimSpec {
  double rate = 0, spm_rate = 0;
  int32_t prefix = -1, middle = -1, suffix = -1;  // the sentinel token ids
  int32_t split = -1;                             // the fragments' separator; -1: none
  uint64_t seed = 0;
  bool characters = false;  // character granularity: the tokenizer below, and the padding id
  int32_t pad = -1;
  int32_t fragment_split = -1;  // the parts' separator within a fragment; -1: none
  double fragment_rate = 0;
  std::string no_prefix = {};  // (with the tokenizer)
  // Character granularity and no_prefix: the data's tokenizer (not owned; it outlives the
  // sequences' readers).
  const Tokenizer* tokenizer = nullptr;
  // data.fim_tokens, fim_split or fim_fragment_split name special tokens (StarCoder's
  // "<fim_prefix>, ..."): the ids above are the data tokenizer's for them once parse_fim had it,
  // -1 before.
  bool named = false;
  bool needs_tokenizer() const { return on() && (characters || !no_prefix.empty() || named); }
  bool on() const { return rate > 0; }
};

// Rearranges the window of sequence `index` (tokens and counts of equal length) in place.
void fill_in_the_middle(const FimSpec& f, int64_t index, std::vector<int32_t>& tokens,
                        std::vector<uint8_t>& counts);

}  // namespace triad
