// Multiple-choice evaluation (HellaSwag and the like, data/choice_file.h), scored the way llm.c
// and nanoGPT score it: each ending follows the shared context, and the model's cross-entropy
// over the ending's tokens measures it. The chosen ending is the one of least mean loss per
// token (llm.c's HellaSwag accuracy), of least summed loss (lm-eval-harness's "acc"), or of
// least summed loss per character of the ending's text (lm-eval-harness's "acc_norm", the
// number published for HellaSwag, ARC, PIQA; when the examples carry ending_chars). Ties go to
// the first.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "triad/data/choice_file.h"

namespace triad {

class Gpt;
class Tokenizer;

struct ChoiceScore {
  int64_t examples = 0;
  int64_t correct = 0;           // least mean loss per token
  int64_t correct_by_sum = 0;    // least summed loss
  int64_t correct_by_chars = 0;  // least summed loss per character (examples with ending_chars)
  double ending_loss_sum = 0;    // over examples and endings: each ending's mean token loss
  int64_t endings = 0;
};

// Refuses (one error naming `where` and the example) an example whose longest ending leaves no
// room for a context token within seq_len; longer contexts lose their first tokens instead.
// Sets every example's ending_chars to lm-eval-harness's length of the ending: the Unicode
// characters of its text (`tokenizer` decodes the tokens; the bytes other than UTF-8
// continuation bytes are counted, the characters of valid UTF-8), less one space at its start. The
// files put a space before each ending (llm.c's and lm-eval's rendering, context + " " + ending)
// and lm-eval counts the ending without it. At least 1. Returns false, setting nothing, when a
// token is not one of the tokenizer's ids (a file made with another vocabulary).
bool count_ending_chars(std::vector<ChoiceExample>& examples, const Tokenizer& tokenizer);

void check_choices_fit(const std::vector<ChoiceExample>& examples, int seq_len,
                       const std::string& where);

// Scores examples first, first + stride, ... on `model` (collective over its tensor- and
// pipeline-parallel groups, which must pass the same arguments; the counts on every rank).
// Drops the model's cache of keys and values. Two ways, the same scores up to rounding:
//  - batched: rows of context + ending of several examples (the model's batch of them) in one
//    forward pass, every position through the classifier, as llm.c does: more arithmetic, in
//    fewer and larger products (the faster here, also on a CPU: docs/performance.md);
//  - cached: an example's context runs through the model once, its endings after it through the
//    cache of keys and values (Gpt::sequence_losses), one at a time: the least arithmetic, in
//    small products.
// progress, if given, is called before each forward pass (the trainer's hang watchdog).
enum class ChoiceMode { cached, batched };
ChoiceScore score_choices(Gpt& model, const std::vector<ChoiceExample>& examples, size_t first,
                          size_t stride, ChoiceMode mode = ChoiceMode::batched,
                          const std::function<void()>& progress = {});

// The forward passes score_choices(model, examples, first, stride, mode) makes, known from the
// examples alone: under ZeRO-3 the weight gathers of a forward pass are collective over the
// data-parallel ranks, so a rank with fewer passes than another joins the rest of its gathers
// (Gpt::join_forward_gathers) without a reduction first.
int64_t choice_forward_passes(const Gpt& model, const std::vector<ChoiceExample>& examples,
                              size_t first, size_t stride, ChoiceMode mode);

}  // namespace triad
