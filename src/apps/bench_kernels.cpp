// triad-bench kernels (see bench_kernels.h).
//
// Work counted per op, N = B·T tokens, E = bytes per activation (2 in bf16, 4 in fp32):
//   products: 2·N·IC·OC forward, 4·N·IC·OC backward (input and weight gradients);
//   causal attention: 2·B·T²·C forward (half of 4·B·NH·T²·hd), 2.5× that backward; with a
//   sliding window W, 4·B·C·Σ_t min(t + 1, W) forward (the products the window keeps);
//   memory-bound ops: the bytes they must read and write at least (inputs once, outputs once).
#include "bench_kernels.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <type_traits>

#include "triad/core/bf16.h"
#include "triad/core/timer.h"
#include "triad/kernels/peak_flops.h"
#include "triad/model/attention_mask.h"
#include "triad/model/gpt.h"

namespace triad {

double attention_key_count(int T, int window) {
  if (window <= 0 || window >= T) return double(T) * T / 2.0;  // the causal count used so far
  return double(window) * (window + 1) / 2.0 + double(T - window) * window;
}

namespace {

// Device buffers of one element type, random-filled, freed together.
template <class A>
class Buffers {
 public:
  explicit Buffers(Backend& be) : be_(be) {}
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;
  ~Buffers() {
    for (A* p : owned_) {
      if constexpr (std::is_same_v<A, float>) {
        be_.free(p);
      } else {
        be_.free_bf16(p);
      }
    }
  }
  // n elements, filled with values in [-scale, scale], or [0, scale] if `positive` (a repeated
  // random tile: timings do not depend on the values, only on their being ordinary numbers).
  A* make(size_t n, float scale = 1.0f, bool positive = false) {
    A* p = nullptr;
    if constexpr (std::is_same_v<A, float>) {
      p = be_.alloc(n);
    } else {
      p = be_.alloc_bf16(n);
    }
    owned_.push_back(p);
    fill(p, n, positive ? 0.0f : -scale, scale);
    return p;
  }

 private:
  void fill(A* p, size_t n, float lo, float hi) {
    constexpr size_t kTile = size_t(1) << 20;  // floats per host copy
    std::mt19937 rng(uint32_t(owned_.size()));
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> tile(kTile);
    if constexpr (std::is_same_v<A, float>) {
      for (float& x : tile) x = dist(rng);
      for (size_t at = 0; at < n; at += kTile)
        be_.copy_from_host(p + at, tile.data(), std::min(kTile, n - at));
    } else {
      // Pairs of bf16 values travel as float words; an odd last element stays zero.
      std::vector<bf16_t> pairs(2 * kTile);
      for (bf16_t& x : pairs) x = to_bf16(dist(rng));
      std::memcpy(tile.data(), pairs.data(), kTile * sizeof(float));
      float* words = reinterpret_cast<float*>(p);
      const size_t nw = n / 2;
      for (size_t at = 0; at < nw; at += kTile)
        be_.copy_from_host(words + at, tile.data(), std::min(kTile, nw - at));
    }
  }

  Backend& be_;
  std::vector<A*> owned_;
};

// Best of three rounds of `repeat` calls (after one warm-up), seconds per call.
double time_op(Backend& be, int repeat, const std::function<void()>& op) {
  op();
  be.synchronize();
  double best = 1e300;
  for (int round = 0; round < 3; ++round) {
    Timer t;
    for (int i = 0; i < repeat; ++i) op();
    be.synchronize();
    best = std::min(best, t.seconds() / repeat);
  }
  return best;
}

double copy_bandwidth(Backend& be, bool on_cpu) {
  const size_t n = on_cpu ? (size_t(1) << 24) : (size_t(1) << 28);  // 64 MiB / 1 GiB
  float* a = be.alloc(n);
  float* b = be.alloc(n);
  const double s = time_op(be, on_cpu ? 3 : 10, [&] { be.copy(b, a, n); });
  be.free(a);
  be.free(b);
  return 2.0 * double(n) * sizeof(float) / s;  // read + write
}

template <class A>
std::vector<KernelRate> run_ops(Backend& be, const KernelBenchShape& sh, int repeat) {
  const int B = sh.B, T = sh.T, C = sh.C, NH = sh.NH, V = sh.V;
  const int Vp = padded_vocab_size(V, 1);
  const size_t N = size_t(B) * size_t(T);
  const double E = sizeof(A), n = double(N), c = double(C);
  size_t P = 0;
  for (const auto& s : gpt_parameter_layout(GptShape{sh.layers, NH, C, T, V, Vp})) P += s.numel;

  Buffers<A> act(be);
  Buffers<float> f32(be);
  std::vector<int32_t> host_tokens(N);
  std::mt19937 rng(7);
  for (auto& t : host_tokens) t = int32_t(rng() % uint32_t(V));
  int32_t* tokens = be.alloc_ints(N);
  be.copy_ints_from_host(tokens, host_tokens.data(), N);

  const float w = 0.02f;  // GPT-2's initial weight scale
  A *wte = act.make(size_t(Vp) * C, w), *wpe = act.make(size_t(T) * C, w);
  A *x = act.make(N * C), *res = act.make(N * C), *sum = act.make(N * C), *ln = act.make(N * C);
  A *lnw = act.make(C), *lnb = act.make(C, w);
  A *qkv = act.make(N * 3 * C), *w_qkv = act.make(size_t(3) * C * C, w), *b_qkv = act.make(3 * C);
  A *att_out = act.make(N * C), *w_ao = act.make(size_t(C) * C, w), *b_c = act.make(C, w);
  A *pre = act.make(N * 4 * C), *hid = act.make(N * 4 * C), *w_fc = act.make(size_t(4) * C * C, w);
  A *b_fc = act.make(4 * C, w), *w_proj = act.make(size_t(4) * C * C, w);
  A *logits = act.make(N * size_t(Vp)), *dqkv = act.make(N * 3 * C), *dhid = act.make(N * 4 * C);
  A *dx = act.make(N * C), *scratch_hid = act.make(N * 4 * C);
  float *mean = f32.make(N), *rstd = f32.make(N, 2.0f, true), *losses = f32.make(N);
  float *dW = f32.make(std::max(size_t(4) * C * C, size_t(Vp) * C)), *db = f32.make(4 * C);
  float *dwpe = f32.make(size_t(T) * C), *dlnw = f32.make(C), *dlnb = f32.make(C);
  float *p = f32.make(P, w), *g = f32.make(P, 1e-3f), *m = f32.make(P, 1e-3f);
  float* v = f32.make(P, 1e-6f, true);  // second moments are not negative
  // fp32 attention keeps the probabilities [B,NH,T,T]; bf16 only the log-sum-exp [B,NH,T].
  float *att = nullptr, *scratch = nullptr, *lse = nullptr;
  if constexpr (std::is_same_v<A, float>) {
    att = f32.make(size_t(B) * NH * T * T);
    scratch = f32.make(size_t(B) * NH * T * T);
  } else {
    lse = f32.make(size_t(B) * NH * T);
  }
  bf16_t* copy = nullptr;
  if constexpr (!std::is_same_v<A, float>) copy = act.make(P);

  std::vector<KernelRate> rows;
  const auto dims = [](std::initializer_list<long long> d) {
    std::string s;
    for (long long x : d) {
      if (!s.empty()) s += 'x';
      s += std::to_string(x);
    }
    return s;
  };
  const auto add = [&](const char* name, const std::string& shape, double work, bool flops,
                       const std::function<void()>& op, bool in_step = true) {
    rows.push_back({name, shape, time_op(be, repeat, op), work, flops, in_step});
  };
  const auto mm = [&](const char* name, A* out, const A* in, const A* wt, const A* bias, int IC,
                      int OC) {
    add(name, dims({(long long)N, IC, OC}), 2.0 * n * IC * OC, true,
        [&, out, in, wt, bias, IC, OC] { be.matmul_forward(out, in, wt, bias, int(N), IC, OC); });
  };
  // With the bias gradient (db holds 4C) unless with_bias is false (the bias-free classifier).
  const auto mm_back = [&](const char* name, A* din, const A* dout, const A* in, const A* wt,
                           int IC, int OC, bool with_bias = true, bool in_step = true) {
    float* dbias = with_bias ? db : nullptr;
    add(
        name, dims({(long long)N, IC, OC}), 4.0 * n * IC * OC, true,
        [&, din, dout, in, wt, IC, OC, dbias] {
          be.matmul_backward(din, dW, dbias, dout, in, wt, int(N), IC, OC, GradMode::overwrite);
        },
        in_step);
  };
  const double attn_fwd = 4.0 * B * c * attention_key_count(T, sh.window);
  // The window's attention mask (Backend::attention_forward's key_begin), or none.
  int32_t* key_begin = nullptr;
  if (sh.window > 0 && sh.window < T) {
    std::vector<int32_t> host(N);
    document_key_begin(host.data(), nullptr, B, T, -1, sh.window);
    key_begin = be.alloc_ints(N);
    be.copy_ints_from_host(key_begin, host.data(), N);
  }
  struct FreeInts {
    Backend& be;
    int32_t* p;
    ~FreeInts() {
      if (p) be.free_ints(p);
    }
  } free_key_begin{be, key_begin};
  // The attention as the model calls it (fp32 keeps the probabilities in att, bf16 the
  // log-sum-exp in lse), without sinks (nullptr) or with (model.attn_sinks: their gradient too).
  A* sinks = act.make(size_t(NH), 1.0f);
  float* dsinks = f32.make(size_t(NH));
  const auto attention_forward = [&](const A* z) -> std::function<void()> {
    float* stats = std::is_same_v<A, float> ? att : lse;
    return [&, z, stats] {
      be.attention_forward(att_out, stats, qkv, B, T, C, NH, NH, key_begin, {}, 0.0f, 0.0f, {}, z);
    };
  };
  const auto attention_backward = [&](const A* z, float* dz) -> std::function<void()> {
    return [&, z, dz] {
      if constexpr (std::is_same_v<A, float>)
        be.attention_backward(dqkv, scratch, dx, qkv, att, B, T, C, NH, NH, GradMode::overwrite,
                              key_begin, {}, 0.0f, 0.0f, {}, z, dz);
      else
        be.attention_backward(dqkv, dx, qkv, att_out, lse, B, T, C, NH, NH, GradMode::overwrite,
                              key_begin, {}, 0.0f, 0.0f, {}, z, dz);
    };
  };

  // ---- forward ----
  add("encoder_forward", dims({B, T, C}), (2.0 * n + T) * c * E, false,
      [&] { be.encoder_forward(x, tokens, wte, wpe, B, T, C); });
  add("layernorm_forward", dims({(long long)N, C}), 2.0 * n * c * E + 8.0 * n, false,
      [&] { be.layernorm_forward(ln, mean, rstd, x, lnw, lnb, int(N), C); });
  mm("matmul_forward qkv", qkv, ln, w_qkv, b_qkv, C, 3 * C);
  add("attention_forward", dims({B, NH, T, C / NH}), attn_fwd, true, attention_forward(nullptr));
  mm("matmul_forward attn proj", res, att_out, w_ao, b_c, C, C);
  add("residual_layernorm_fwd", dims({(long long)N, C}), 4.0 * n * c * E + 8.0 * n, false,
      [&] { be.residual_layernorm_forward(sum, ln, mean, rstd, x, res, lnw, lnb, int(N), C); });
  add("matmul_gelu_forward fc", dims({(long long)N, C, 4 * C}), 2.0 * n * c * 4 * c, true,
      [&] { be.matmul_gelu_forward(pre, hid, ln, w_fc, b_fc, int(N), C, 4 * C); });
  mm("matmul_forward fc proj", res, hid, w_proj, b_c, 4 * C, C);
  mm("matmul_forward lm head", logits, ln, wte, nullptr, C, Vp);
  add("crossentropy_fwd_bwd", dims({(long long)N, Vp}), 2.0 * n * Vp * E + 8.0 * n, false, [&] {
    be.crossentropy_forward_backward(logits, losses, nullptr, tokens, int(N), V, Vp,
                                     1.0f / float(N));
  });
  // ---- backward ----
  mm_back("matmul_backward lm head", dx, logits, ln, wte, C, Vp, /*with_bias=*/false);
  // c_proj's backward through the GELU (the model's call: gelu' applied as dhid is written).
  add("matmul_backward_gelu fc proj", dims({(long long)N, 4 * C, C}), 4.0 * n * 4 * c * c, true,
      [&] {
        be.matmul_backward_gelu(dhid, scratch_hid, dW, db, res, hid, pre, w_proj, int(N), 4 * C, C,
                                GradMode::overwrite);
      });
  mm_back("matmul_backward fc", dx, dhid, ln, w_fc, C, 4 * C);
  add("layernorm_backward", dims({(long long)N, C}), 3.0 * n * c * E + 8.0 * n, false,
      [&] { be.layernorm_backward(dx, dlnw, dlnb, res, x, lnw, mean, rstd, int(N), C); });
  mm_back("matmul_backward attn proj", dx, res, att_out, w_ao, C, C);
  add("attention_backward", dims({B, NH, T, C / NH}), 2.5 * attn_fwd, true,
      attention_backward(nullptr, nullptr));
  mm_back("matmul_backward qkv", dx, dqkv, ln, w_qkv, C, 3 * C);
  add("encoder_backward", dims({B, T, C}), n * c * (E + 8.0) + 8.0 * T * c, false,
      [&] { be.encoder_backward(dW, dwpe, dx, tokens, B, T, C); });
  // ---- optimizer, over all P parameters ----
  add("sum_squares (grad norm)", dims({(long long)P}), 4.0 * double(P), false,
      [&] { (void)be.sum_squares(g, P); });
  add(copy ? "adamw_update + bf16 copy" : "adamw_update", dims({(long long)P}),
      (28.0 + (copy ? 2.0 : 0.0)) * double(P), false,
      [&] { be.adamw_update(p, g, m, v, P, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 0.5f, copy); });
  // For comparison, not in the step: the separate kernels that the fused ops above replace (on
  // the GPU, where cuBLASLt takes the epilogues): the GELU gradient as its own pass, a bias
  // gradient as column sums, and the qkv backward without its bias gradient.
  add(
      "gelu_backward", dims({(long long)N, 4 * C}), 3.0 * n * 4 * c * E, false,
      [&] { be.gelu_backward(dhid, pre, dhid, N * 4 * C, GradMode::overwrite); }, false);
  add(
      "bias_backward qkv", dims({(long long)N, 3 * C}), 3.0 * n * c * E, false,
      [&] { be.bias_backward(db, dqkv, int(N), 3 * C); }, false);
  mm_back("matmul_backward qkv no bias", dx, dqkv, ln, w_qkv, C, 3 * C, false, false);
  // Attention with sinks (model.attn_sinks), beside the rows without: on the GPU the bf16 flash
  // kernels plus the sinks' correction and gradient passes, the fp32 path in its softmax.
  add("attention_forward sinks", dims({B, NH, T, C / NH}), attn_fwd, true, attention_forward(sinks),
      false);
  add("attention_backward sinks", dims({B, NH, T, C / NH}), 2.5 * attn_fwd, true,
      attention_backward(sinks, dsinks), false);
  if constexpr (!std::is_same_v<A, float>) {
    // run.fp8's products of the FFN's first layer as the model runs them (each operand's absmax,
    // then the casts and the FP8 product with fp32 sums), beside the bf16 rows above; against
    // the bf16 matmul ceiling, so FP8 tensor cores (twice bf16's rate) can pass 100%. On the CPU
    // an emulation (extra passes, then the fp32 product).
    float* amax = f32.make(3);
    add(
        "matmul_forward_fp8 fc", dims({(long long)N, C, 4 * C}), 2.0 * n * c * 4 * c, true,
        [&] {
          be.absmax(amax, ln, N * C);
          be.absmax(amax + 1, w_fc, size_t(4) * C * C);
          be.matmul_forward_fp8(pre, ln, w_fc, b_fc, int(N), C, 4 * C, amax);
        },
        false);
    add(
        "matmul_backward_fp8 fc", dims({(long long)N, C, 4 * C}), 4.0 * n * c * 4 * c, true,
        [&] {
          be.absmax(amax, ln, N * C);
          be.absmax(amax + 1, w_fc, size_t(4) * C * C);
          be.absmax(amax + 2, dhid, N * 4 * C);
          be.matmul_backward_fp8(dx, dW, db, dhid, ln, w_fc, int(N), C, 4 * C, amax,
                                 GradMode::overwrite);
        },
        false);
  }
  be.free_ints(tokens);
  return rows;
}

}  // namespace

KernelBench run_kernel_bench(Backend& be, const KernelBenchShape& shape, bool bf16, int repeat) {
  KernelBench r;
  const bool on_cpu = std::string(be.name()) == "cpu";
  r.matmul_ceiling = measure_peak_flops(be, bf16);
  r.copy_ceiling = copy_bandwidth(be, on_cpu);
  r.rows = bf16 ? run_ops<bf16_t>(be, shape, repeat) : run_ops<float>(be, shape, repeat);
  // How often each op runs in a step: per layer two LayerNorms (the first fused with the
  // residual add except in layer 0, counted fused throughout) and their backward passes.
  for (const auto& k : r.rows) {
    if (!k.in_step) continue;
    double times = shape.layers;
    if (k.name == "residual_layernorm_fwd" || k.name == "layernorm_backward") times *= 2;
    if (k.name == "layernorm_forward") times = 1;  // ln_f
    if (k.name.find("encoder") == 0 || k.name.find("lm head") != std::string::npos ||
        k.name.find("crossentropy") == 0 || k.name.find("sum_squares") == 0 ||
        k.name.find("adamw") == 0)
      times = 1;
    r.step_seconds += times * k.seconds;
  }
  r.step_tokens = double(shape.B) * double(shape.T);
  return r;
}

std::string format_kernel_bench(const KernelBench& r, const std::string& title) {
  std::ostringstream os;
  char line[256];
  os << title << "\n";
  std::snprintf(line, sizeof line,
                "ceilings measured in this run: matmul %.1f TFLOP/s (large square product), "
                "copy %.1f GB/s (read + write)\n",
                r.matmul_ceiling / 1e12, r.copy_ceiling / 1e9);
  os << line;
  std::snprintf(line, sizeof line, "%-28s %-20s %10s %14s %10s\n", "op", "shape", "ms", "rate",
                "of ceiling");
  os << line;
  bool compared = false;
  for (const auto& k : r.rows) {
    if (!k.in_step && !compared) {
      os << "for comparison, not in the step (the separate kernels of fused ops):\n";
      compared = true;
    }
    const double rate = k.work / k.seconds;
    const double frac = rate / (k.flops ? r.matmul_ceiling : r.copy_ceiling);
    std::snprintf(line, sizeof line, "%-28s %-20s %10.3f %9.1f %-4s %9.0f%%\n", k.name.c_str(),
                  k.shape.c_str(), k.seconds * 1e3, k.flops ? rate / 1e12 : rate / 1e9,
                  k.flops ? "TF/s" : "GB/s", frac * 100);
    os << line;
  }
  std::snprintf(line, sizeof line,
                "sum of one step's ops: %.2f ms, at most %.0f tokens/s (no residual adds, no "
                "communication)\n",
                r.step_seconds * 1e3, r.step_tokens / r.step_seconds);
  os << line;
  for (const auto& k : r.rows) {
    const double rate = k.work / k.seconds;
    std::string id = k.name;
    std::replace(id.begin(), id.end(), ' ', '_');
    std::snprintf(line, sizeof line, "KERNEL name=%s ms=%.6g rate=%.6g unit=%s of_ceiling=%.4g\n",
                  id.c_str(), k.seconds * 1e3, k.flops ? rate / 1e12 : rate / 1e9,
                  k.flops ? "TFLOP/s" : "GB/s",
                  rate / (k.flops ? r.matmul_ceiling : r.copy_ceiling));
    os << line;
  }
  return os.str();
}

}  // namespace triad
