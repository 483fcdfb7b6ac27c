#include "triad/train/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/data/fim.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"  // kMaxCheckpointStep
#include "triad/model/gpt.h"
#include "triad/train/run_plan.h"

namespace triad {

namespace {
// "none" → -1, else a token id < vocab_size (key: the config key, what: the token's role).
int32_t parse_token_id(const std::string& text, int vocab_size, const char* key, const char* what) {
  if (text == "none") return -1;
  int64_t v = -1;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  TRIAD_CHECK(!text.empty() && r.ec == std::errc() && r.ptr == text.data() + text.size() && v >= 0,
              "config: ", key, " must be none or the token id ", what, " (got '", text, "')");
  TRIAD_CHECK(v < vocab_size, "config: ", key, " ", v,
              " is not a token of the vocabulary (model.vocab_size ", vocab_size, ")");
  return int32_t(v);
}
}  // namespace

void resolve_token_names(Config& c) {
  std::unique_ptr<Tokenizer> tokenizer;  // read once, where a key names a token
  for (auto [value, key] : {std::pair{&c.data.document_mask, "data.document_mask"},
                            std::pair{&c.data.eod_mask_loss, "data.eod_mask_loss"}}) {
    const std::string& v = *value;
    if (v == "none" || v.empty() || std::isdigit(static_cast<unsigned char>(v[0])) || v[0] == '-')
      continue;  // an id (or a bad value, which validate() names)
    TRIAD_CHECK(!trim_blanks(c.data.vocab).empty(), "config: ", key, ": '", v,
                "' is neither a token id nor, without data.vocab, a special token's name (set "
                "data.vocab to the data's tokenizer, which names it)");
    if (!tokenizer) {
      std::error_code ec;  // (opening a named pipe waits for a writer)
      TRIAD_CHECK(!std::filesystem::exists(c.data.vocab, ec) ||
                      std::filesystem::is_regular_file(c.data.vocab, ec),
                  "config: ", key, " resolves its name '", v, "' with data.vocab, and data.vocab ",
                  c.data.vocab, " is not a regular file");
      std::ifstream probe(c.data.vocab);
      TRIAD_CHECK(probe.is_open(), "config: ", key, " resolves its name '", v,
                  "' with data.vocab, and data.vocab ", c.data.vocab,
                  " cannot be opened (missing or unreadable)");
      tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(c.data.vocab));
    }
    const int32_t id = tokenizer->special_id(v);
    TRIAD_CHECK(id >= 0, "config: ", key, ": '", v,
                "' is neither a token id nor a special token of data.vocab ", c.data.vocab);
    *value = std::to_string(id);
  }
}

int32_t parse_document_mask(const std::string& text, int vocab_size) {
  return parse_token_id(text, vocab_size, "data.document_mask", "that starts a document");
}

int32_t parse_eod_mask_loss(const std::string& text, int vocab_size) {
  return parse_token_id(text, vocab_size, "data.eod_mask_loss", "that ends a document");
}

FimSpec parse_fim(const DataConfig& d, int vocab_size, uint64_t seed, const Tokenizer* tokenizer) {
  TRIAD_CHECK(std::isfinite(d.fim_rate) && d.fim_rate >= 0 && d.fim_rate <= 1,
              "config: data.fim_rate must be in [0, 1] (0: off; got ", d.fim_rate, ")");
  TRIAD_CHECK(std::isfinite(d.fim_spm_rate) && d.fim_spm_rate >= 0 && d.fim_spm_rate <= 1,
              "config: data.fim_spm_rate must be in [0, 1] (got ", d.fim_spm_rate, ")");
  FimSpec f;
  f.rate = d.fim_rate;
  f.spm_rate = d.fim_spm_rate;
  f.seed = seed;
  // A token of data.fim_*: none (-1), an id, or the text of one of data.vocab's special tokens
  // ("<fim_prefix>", "<|endoftext|>"): its id with the tokenizer, kUnresolved without.
  constexpr int32_t kUnresolved = -2;
  auto token_of = [&](const std::string& item, const char* key, const char* what) -> int32_t {
    if (item == "none" || item.empty() || std::isdigit(static_cast<unsigned char>(item[0])) ||
        item[0] == '-')
      return parse_token_id(item, vocab_size, key, what);
    TRIAD_CHECK(!trim_blanks(d.vocab).empty(), "config: ", key, ": '", item,
                "' is neither a token id nor, without data.vocab, a special token's name (set "
                "data.vocab to the data's tokenizer, which names it)");
    f.named = true;
    if (tokenizer == nullptr) return kUnresolved;
    const int32_t id = tokenizer->special_id(item);
    TRIAD_CHECK(id >= 0, "config: ", key, ": '", item, "' is not a special token of data.vocab ",
                d.vocab);
    TRIAD_CHECK(id < vocab_size, "config: ", key, ": '", item, "' is token ", id,
                " of data.vocab, not one of the model's ", vocab_size);
    return id;
  };
  f.split = token_of(d.fim_split, "data.fim_split", "the fragments are cut at");
  TRIAD_CHECK(d.fim_granularity == "token" || d.fim_granularity == "character",
              "config: data.fim_granularity must be token or character (got '", d.fim_granularity,
              "')");
  f.characters = d.fim_granularity == "character";
  f.fragment_split =
      token_of(d.fim_fragment_split, "data.fim_fragment_split", "the parts are cut at");
  f.no_prefix = d.fim_no_prefix;
  if (d.fim_rate == 0) {
    TRIAD_CHECK(trim_blanks(d.fim_tokens).empty() && d.fim_split == "none" &&
                    d.fim_spm_rate == DataConfig{}.fim_spm_rate && !f.characters &&
                    d.fim_fragment_split == "none" &&
                    d.fim_fragment_rate == DataConfig{}.fim_fragment_rate && f.no_prefix.empty(),
                "config: data.fim_tokens, data.fim_split, data.fim_spm_rate, "
                "data.fim_granularity, data.fim_fragment_split, data.fim_fragment_rate and "
                "data.fim_no_prefix need data.fim_rate > 0");
    return f;
  }
  if (f.fragment_split != -1) {
    TRIAD_CHECK(
        std::isfinite(d.fim_fragment_rate) && d.fim_fragment_rate >= 0 && d.fim_fragment_rate <= 1,
        "config: data.fim_fragment_rate must be in [0, 1] with data.fim_fragment_split "
        "(got ",
        d.fim_fragment_rate, ")");
    TRIAD_CHECK(f.fragment_split != f.split || f.split == kUnresolved,
                "config: data.fim_fragment_split must differ from data.fim_split");
    f.fragment_rate = d.fim_fragment_rate;
  } else {
    TRIAD_CHECK(d.fim_fragment_rate == DataConfig{}.fim_fragment_rate,
                "config: data.fim_fragment_rate needs data.fim_fragment_split");
  }
  const std::vector<std::string> ids = split_comma_list(d.fim_tokens);
  const size_t want = f.characters ? 4 : 3;
  TRIAD_CHECK(ids.size() == want, "config: data.fim_tokens must be the ",
              f.characters ? "four token ids \"PREFIX, MIDDLE, SUFFIX, PAD\" (sentinels, then the "
                             "padding: data.fim_granularity = character; "
                           : "three sentinel token ids \"PREFIX, MIDDLE, SUFFIX\" (",
              "e.g. StarCoder's 1, 2, 3", f.characters ? ", 4" : "", "; got '", d.fim_tokens, "')");
  int32_t v[4] = {-1, -1, -1, -1};
  for (size_t i = 0; i < want; ++i) {
    TRIAD_CHECK(ids[i] != "none", "config: data.fim_tokens: '", d.fim_tokens, "' must name ", want,
                " token ids");
    v[i] = token_of(ids[i], "data.fim_tokens", i < 3 ? "of a sentinel" : "of the padding");
  }
  if (f.named && tokenizer == nullptr) {  // the ids once the tokenizer has them
    f.prefix = f.middle = f.suffix = f.pad = f.split = f.fragment_split = -1;
    return f;
  }
  bool distinct = true;
  for (size_t i = 0; i < want; ++i) {
    distinct = distinct && v[i] != f.split && v[i] != f.fragment_split;
    for (size_t j = 0; j < i; ++j) distinct = distinct && v[i] != v[j];
  }
  TRIAD_CHECK(distinct, "config: data.fim_tokens '", d.fim_tokens, "' must be ",
              f.characters ? "four" : "three",
              " distinct token ids, none of them data.fim_split or data.fim_fragment_split");
  // A sentinel that starts documents would cut every rearranged one in parts, and one whose next
  // token's loss is masked would hide the first token after every sentinel.
  for (const auto& [value, key] : {std::pair{&d.document_mask, "data.document_mask"},
                                   std::pair{&d.eod_mask_loss, "data.eod_mask_loss"}}) {
    int64_t id = -1;
    const auto r = std::from_chars(value->data(), value->data() + value->size(), id);
    if (r.ec != std::errc() || r.ptr != value->data() + value->size()) continue;  // none
    for (size_t i = 0; i < 3; ++i)
      TRIAD_CHECK(v[i] != id, "config: data.fim_tokens '", d.fim_tokens, "': its ",
                  i == 0   ? "PREFIX"
                  : i == 1 ? "MIDDLE"
                           : "SUFFIX",
                  " sentinel ", v[i], " is ", key,
                  " too; the sentinels must be tokens of their own");
  }
  f.prefix = v[0];
  f.middle = v[1];
  f.suffix = v[2];
  f.pad = v[3];
  return f;
}

namespace {
// A comma-separated list of integers >= 1 (blanks around them allowed) into v; false where an
// item is not one or their number is outside [least, most].
bool positive_integers(const std::string& text, size_t least, size_t most,
                       std::vector<int64_t>& v) {
  const std::vector<std::string> items = split_comma_list(text);
  if (items.size() < least || items.size() > most) return false;
  v.assign(items.size(), 0);
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string& item = items[i];
    const auto p = std::from_chars(item.data(), item.data() + item.size(), v[i]);
    if (item.empty() || p.ec != std::errc() || p.ptr != item.data() + item.size() || v[i] < 1)
      return false;
  }
  return true;
}
}  // namespace

BatchRampup parse_batch_rampup(const std::string& text, int batch_size) {
  BatchRampup r;
  if (trim_blanks(text).empty()) return r;
  const std::string key = "config: train.batch_rampup";
  std::vector<int64_t> v;
  const bool ok = positive_integers(text, 3, 3, v);
  TRIAD_CHECK(ok, key,
              " must be empty or \"START, INCREMENT, SEQUENCES\", three integers >= 1 (got '", text,
              "')");
  TRIAD_CHECK(v[0] < batch_size, key, " '", text, "' starts at ", v[0],
              " sequences, which must be below train.batch_size (", batch_size, ")");
  TRIAD_CHECK((batch_size - v[0]) % v[1] == 0, key, " '", text, "': train.batch_size (", batch_size,
              ") − START (", v[0], ") must be a multiple of INCREMENT (", v[1], ")");
  r.start = int(v[0]);
  r.increment = int(v[1]);
  r.sequences = v[2];
  return r;
}

namespace {
// What a window warmup grows to: the model's window, or the whole context without one.
int64_t warmup_target(const ModelConfig& m) {
  return m.sliding_window > 0 ? m.sliding_window : m.seq_len;
}
}  // namespace

WindowWarmup parse_window_warmup(const std::string& text, const ModelConfig& m) {
  WindowWarmup w;
  if (trim_blanks(text).empty()) return w;
  const std::string key = "config: train.window_warmup";
  std::vector<int64_t> v;
  TRIAD_CHECK(positive_integers(text, 2, 3, v) && v[0] <= (int64_t(1) << 30) &&
                  (v.size() < 3 || v[2] <= (int64_t(1) << 30)),
              key, " must be empty or \"START, STEPS[, MULTIPLE]\", integers >= 1 (got '", text,
              "')");
  const int64_t target = warmup_target(m);
  const char* grows_to = m.sliding_window > 0 ? "model.sliding_window (" : "model.seq_len (";
  TRIAD_CHECK((v[0] < target), key, " '", text, "' starts at a window of ", v[0],
              " tokens, which must be below the one it grows to: ", grows_to, target, ")");
  w.start = int(v[0]);
  w.steps = v[1];
  if (v.size() == 3) w.multiple = int(v[2]);
  // The windows are multiples of MULTIPLE: a START between them would be rounded up, and the
  // first window would not be START (or, at a MULTIPLE at or above W, there would be no warmup).
  TRIAD_CHECK(w.start % w.multiple == 0, key, " '", text, "': START (", w.start,
              ") must be a multiple of MULTIPLE (", w.multiple,
              v.size() == 3 ? "" : ", the default: the flash kernels' tile",
              "), the windows' granularity");
  return w;
}

int window_at(const WindowWarmup& w, const ModelConfig& m, int64_t step) {
  if (!w.on() || step >= w.steps) return m.sliding_window;
  const int64_t target = warmup_target(m);
  // 0 <= step < steps: the product in 128 bits cannot overflow.
  int64_t now =
      w.start + int64_t(__int128(target - w.start) * std::max<int64_t>(step, 0) / w.steps);
  now = (now + w.multiple - 1) / w.multiple * w.multiple;
  return now < target ? int(now) : m.sliding_window;
}

int batch_size_at(const BatchRampup& ramp, int batch_size, int64_t consumed) {
  if (!ramp.on() || consumed >= ramp.sequences) return batch_size;
  const int64_t n = (batch_size - ramp.start) / ramp.increment;
  // 0 <= consumed < sequences: the quotient is below n; the product in 128 bits cannot overflow.
  return ramp.start + ramp.increment * int(__int128(consumed) * n / ramp.sequences);
}

int64_t sequences_after_steps(const BatchRampup& ramp, int batch_size, int64_t consumed,
                              int64_t steps) {
  for (; steps > 0 && ramp.on() && consumed < ramp.sequences; --steps)
    consumed += batch_size_at(ramp, batch_size, consumed);
  return consumed + std::max<int64_t>(steps, 0) * batch_size;  // the rest at the full batch
}

ScheduleClock::ScheduleClock(const TrainConfig& t)
    : by_sequences_(t.lr_by == "sequences"),
      ramp_(parse_batch_rampup(t.batch_rampup, t.batch_size)),
      batch_size_(t.batch_size),
      total_(by_sequences_ ? double(sequences_after_steps(ramp_, t.batch_size, 0, t.steps))
                           : double(t.steps)),
      warmup_(by_sequences_ ? double(t.warmup_sequences) : double(t.warmup_steps)) {}

SchedulePoint ScheduleClock::at(int64_t step, int64_t consumed) const {
  if (!by_sequences_) return {double(step), 1.0, total_, warmup_};
  return {double(consumed), double(batch_size_at(ramp_, batch_size_, consumed)), total_, warmup_};
}

int64_t steps_for_sequences(const BatchRampup& ramp, int batch_size, int64_t sequences) {
  // Step after step the batch is batch_size_at(consumed): constant between the counts where
  // consumed·n / sequences grows, so each batch's steps are counted at once (step by step, a ramp
  // over 10^12 sequences took minutes). Counting stops past train.steps' bound (validate refuses
  // that many steps).
  constexpr int64_t kPastBound = kMaxCheckpointStep + 1;
  int64_t consumed = 0, steps = 0;
  if (ramp.on()) {
    const int64_t n = (batch_size - ramp.start) / ramp.increment;
    while (consumed < sequences && consumed < ramp.sequences && steps < kPastBound) {
      const int64_t j = int64_t(__int128(consumed) * n / ramp.sequences);
      // the least count whose quotient is past j
      const int64_t grows =
          n > 0 ? int64_t((__int128(j + 1) * ramp.sequences + n - 1) / n) : ramp.sequences;
      const int64_t stop = std::min({grows, ramp.sequences, sequences});
      const int64_t b = batch_size_at(ramp, batch_size, consumed);
      const int64_t k = (stop - consumed + b - 1) / b;
      consumed += k * b;
      steps += k;
    }
  }
  if (consumed < sequences && steps < kPastBound)
    steps += (sequences - consumed - 1) / batch_size + 1;
  return steps;
}

void resolve_run_length(Config& c) {
  // validate() refuses what cannot be resolved (a batch below 1, negative sequences).
  if (c.train.sequences <= 0 || c.train.batch_size < 1) return;
  c.train.steps = steps_for_sequences(parse_batch_rampup(c.train.batch_rampup, c.train.batch_size),
                                      c.train.batch_size, c.train.sequences);
}

std::vector<int> ramp_batch_sizes(const BatchRampup& ramp, int batch_size) {
  std::vector<int> sizes;
  if (ramp.on())
    for (int b = ramp.start; b < batch_size; b += ramp.increment) sizes.push_back(b);
  sizes.push_back(batch_size);
  return sizes;
}

std::vector<double> parse_rope_factors(const std::string& text, const std::string& key, int pairs) {
  const std::vector<std::string> items = split_comma_list(text);
  std::vector<double> v;
  for (const std::string& item : items) {
    double x = 0;
    const auto p = std::from_chars(item.data(), item.data() + item.size(), x);
    TRIAD_CHECK(!item.empty() && p.ec == std::errc() && p.ptr == item.data() + item.size() &&
                    std::isfinite(x) && x > 0,
                "config: ", key, " must be comma-separated finite numbers > 0 (got '", item,
                "' in '", text, "')");
    v.push_back(x);
  }
  TRIAD_CHECK(v.size() == size_t(pairs), "config: ", key, " holds ", v.size(),
              " numbers but rope_scaling longrope needs one per rotated pair: ", pairs,
              " (rotary_dim / 2, or head_dim / 2)");
  return v;
}

std::vector<int> parse_stage_layers(const std::string& text, int pp, int n_layer) {
  const std::string key = "config: parallel.stage_layers";
  std::vector<int> counts;
  int64_t sum = 0;
  for (const std::string& item : split_comma_list(text)) {
    int v = -1;
    const auto r = std::from_chars(item.data(), item.data() + item.size(), v);
    TRIAD_CHECK(
        !item.empty() && r.ec == std::errc() && r.ptr == item.data() + item.size() && v >= 0, key,
        " must be empty, auto or parallel.pp comma-separated layer counts >= 0 (got '", text, "')");
    counts.push_back(v);
    sum += v;
  }
  TRIAD_CHECK(int(counts.size()) == pp, key, " '", text, "' gives ", counts.size(),
              " stages, parallel.pp is ", pp);
  TRIAD_CHECK(sum == n_layer, key, " '", text, "' holds ", sum, " layers, model.n_layer is ",
              n_layer);
  // The first stage holds the embeddings and the last the head even without layers; a stage in
  // between would hold nothing.
  for (int s = 1; s + 1 < pp; ++s)
    TRIAD_CHECK(counts[size_t(s)] > 0, key, " '", text, "' gives stage ", s,
                " no layers: only the first and the last stage may have none");
  return counts;
}

std::vector<int> stage_layers(const Config& cfg) {
  std::string text = cfg.parallel.stage_layers;
  text.erase(0, text.find_first_not_of(" \t"));
  text.erase(text.find_last_not_of(" \t") + 1);
  const int pp = cfg.parallel.pp, L = cfg.model.n_layer;
  if (text.empty() || pp == 1) return {};
  if (text != "auto") return parse_stage_layers(text, pp, L);
  // Balance the compute per token: a layer costs 72·C² + 6·C·T FLOPs forward and backward (GPT-2),
  // plus 16·C² + 2·C·T where full recomputation reruns it (the first train.recompute_layers of a
  // stage, or all); the last stage adds the head, 6·Vp·C. The last stage gets k layers, the
  // others L − k spread as evenly as possible, at least one each, the extra ones on the stages
  // nearest the end (the first stages keep the most micro-batches in flight under 1F1B); k
  // minimizes the busiest stage, the largest such k on a tie. A mixture of experts' layers cost
  // their own (k experts, the router, shared experts), dense ones among them the dense MLP: each
  // stage is costed from the layers it gets. Multi-token prediction modules add to the last stage:
  // each its block, its eh_proj (6·2C² FLOPs) and the head once more.
  const double C = cfg.model.n_embd, T = cfg.model.seq_len;
  // 6 FLOPs per weight: (c_attn's outputs + A)·C in attention (4C² without grouped-query
  // attention; A = the attention's width, C unless model.head_dim), (c_fc's outputs + hidden
  // units)·C in the MLP (72·C² in all for GPT-2).
  const GptShape shape = gpt_shape(cfg);
  const double A = shape.attn_flops_width();
  const double attn = shape.attn_weights_per_token();
  const double head = 6.0 * cfg.padded_vocab_size() * C;
  const Recomputation recompute = activation_options(cfg).recompute;
  auto layer = [&](int l) { return 6 * (attn + shape.mlp_weights_per_token(l)) + 6 * A * T; };
  double last = head;
  for (int j = 0; j < shape.mtp_depth; ++j)
    last += head + layer(shape.mtp_layer(j)) + 6 * 2 * C * C;
  auto rerun = [&](int l) {  // gelu reruns an elementwise pass only
    return recompute.mode == Recompute::full ? Gpt::layer_recompute_flops_per_token(shape, l) : 0.0;
  };
  // Layers [first, first + n) as a stage: the first recompute.count(n) of them rerun.
  auto cost = [&](int first, int n) {
    double c = 0;
    for (int i = 0; i < n; ++i)
      c += layer(first + i) + (i < recompute.count(n) ? rerun(first + i) : 0);
    return c;
  };
  auto split_for = [&](int k) {
    std::vector<int> split(size_t(pp), (L - k) / (pp - 1));
    for (int s = 0; s < (L - k) % (pp - 1); ++s) ++split[size_t(pp - 2 - s)];
    split.back() = k;
    return split;
  };
  int best_k = 0;
  double best = 1e300;
  for (int k = 0; k <= L - (pp - 1); ++k) {
    const std::vector<int> split = split_for(k);
    double busiest = 0;
    for (int s = 0, first = 0; s < pp; first += split[size_t(s)], ++s)
      busiest = std::max(busiest, cost(first, split[size_t(s)]) + (s == pp - 1 ? last : 0.0));
    if (busiest <= best * (1 + 1e-12)) {
      best = busiest;
      best_k = k;
    }
  }
  return split_for(best_k);
}

bool Config::bf16() const {
  return run.precision == "bf16" || (run.precision == "auto" && run.backend == "cuda");
}

int Config::mlp_hidden_size() const {
  GptShape s;
  s.n_embd = model.n_embd;
  set_mlp(s, model.mlp);
  s.mlp_hidden = model.mlp_hidden;
  return s.hidden();
}

int Config::padded_vocab_size() const {
  return triad::padded_vocab_size(model.vocab_size, parallel.tp);
}

}  // namespace triad
