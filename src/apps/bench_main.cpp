// triad-bench: benchmarks of triad's parts, one subcommand each.
//   triad-bench checkpoint [--dir DIR] [--model NAME] [--repeat N] [--keep]
//       write and read a checkpoint of a GPT-2-sized model (parameters + AdamW m and v, the
//       tensor names and shapes of DESIGN.md §3) with the ZeRO-1 partition over the ranks of
//       the job, beside a plain sequential write + read of the same byte count by rank 0.
//   triad-bench attention [--B N] [--T N] [--NH N] [--hd 64|128] [--kernel auto|mma|wgmma|tma]
//   [--backward auto|deterministic|atomic|ordered] [--repeat N]
//       the fused bf16 causal flash attention (src/kernels/cuda/flash_attention.cu) on GPU 0:
//       forward and forward + backward, CUDA-event times (median), TFLOP/s. CUDA builds only.
//   triad-bench kernels [--backend cpu|cuda] [--precision fp32|bf16] [--B N] [--T N] ...
//       every op of a GPT-2 training step through the Backend interface (bench_kernels.h):
//       time, TFLOP/s or GB/s, and the fraction of the matmul / copy ceilings measured in the
//       same run; their sum as a bound on the step time.
//   triad-bench fim --data GLOB --tokens "P, M, S[, PAD]" [--granularity character|token] ...
//       fill-in-the-middle's rearrangement of training sequences as the loader reads them, beside
//       the plain reading (bench_fim.h).
//   triad-bench schedule [--pp N] [--m N] [--v N] [--t-wgt W] [--timeline]
//       the pipeline schedules (gpipe, 1f1b, interleaved, zb-h1, zb-v) simulated with t_bwd =
//       2·t_fwd (zb-h1: W half of it): bubble against theory, peak live micro-batches per stage,
//       optionally a timeline. No MPI needed.
// Every error: one line "triad-bench: error: ..." on stderr and exit code 1.
#include <fcntl.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench_fim.h"
#include "bench_kernels.h"
#include "triad/core/error.h"
#include "triad/io/checkpoint.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/model/attention_mask.h"
#include "triad/model/gpt.h"
#include "triad/model/gpt_shape.h"
#include "triad/parallel/comm.h"
#include "triad/parallel/pipeline_schedule.h"
#include "triad/train/app_main.h"
#include "triad/train/positional_arguments.h"

#ifdef TRIAD_HAVE_CUDA
#include <cuda_runtime.h>

#include <random>

#include "../kernels/cuda/flash_attention.cuh"
#include "triad/kernels/cuda_backend.h"
#endif

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

constexpr const char* kProg = "triad-bench";

constexpr const char* kUsage =
    "usage: triad-bench COMMAND [OPTIONS]\n"
    "Benchmarks of triad's parts (run under mpirun for several ranks where a command says so).\n"
    "\n"
    "commands:\n"
    "  checkpoint [--dir DIR] [--model NAME] [--repeat N] [--keep]\n"
    "                  write and read a checkpoint (parameters + AdamW m, v) of a GPT-2 model\n"
    "                  with every rank owning its ZeRO-1 slice, next to a plain sequential\n"
    "                  write + read of the same bytes by rank 0; reports GB/s\n"
    "  attention [--B N] [--T N] [--NH N] [--hd 64|128] [--kernel auto|mma|wgmma|tma]\n"
    "            [--backward auto|deterministic|atomic|ordered] [--repeat N]\n"
    "                  the fused bf16 causal flash attention on GPU 0 (CUDA builds only)\n"
    "  kernels [--backend cpu|cuda] [--precision fp32|bf16] [--B N] [--T N] [--C N] [--NH N]\n"
    "          [--V N] [--layers N] [--repeat N]\n"
    "                  every op of a GPT-2 training step: time, TFLOP/s or GB/s, fraction of\n"
    "                  the matmul and copy ceilings measured in the same run\n"
    "  fim --data GLOB --tokens \"P, M, S[, PAD]\" [--granularity character|token] [--split ID]\n"
    "      [--rate R] [--seq-len N] [--sequences N] [--dump FILE]\n"
    "                  fill-in-the-middle's rearrangement as the loader reads training\n"
    "                  sequences, beside the plain reading; M tokens/s\n"
    "  schedule [--pp N] [--m N] [--v N] [--t-wgt W] [--timeline]\n"
    "                  simulate the pipeline schedules gpipe, 1f1b, interleaved, zb-h1, zb-v:\n"
    "                  bubble against theory, peak live micro-batches per stage\n"
    "\n"
    "'triad-bench COMMAND --help' lists a command's options.\n";

// Parses args into vm; prints help (rank 0) and returns false on --help.
bool parse(MPI_Comm world, const char* command, const std::vector<std::string>& args,
           po::options_description& desc, po::variables_map& vm) {
  desc.add_options()("help,h", "show this help");
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
    triad::reject_positional_arguments(
        parsed, command,
        std::string("every option starts with --; see 'triad-bench ") + command + " --help'");
    po::store(parsed, vm);
    if (vm.count("help")) {
      if (triad::rank_in(world) == 0) {
        std::cout << "usage: triad-bench " << command << " [OPTIONS]\n" << desc;
      }
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    triad::fail(command, ": ", e.what(), " (see 'triad-bench ", command, " --help')");
  }
  return true;
}

// ---- checkpoint ---------------------------------------------------------------------------------

struct ModelSize {
  const char* name;
  int64_t n_layer, n_head, n_embd, seq_len, vocab_size;
};

constexpr ModelSize kModels[] = {
    {"gpt2-124m", 12, 12, 768, 1024, 50257},
    {"gpt2-350m", 24, 16, 1024, 1024, 50257},
    {"gpt2-tiny", 2, 4, 64, 256, 50257},  // for a quick check of the command
};

struct Param {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;  // in the flat parameter buffer
};

// The parameters of DESIGN.md §3 in one flat buffer, laid out as the model lays them out.
std::vector<Param> gpt_params(const ModelSize& m, int64_t padded_vocab) {
  const triad::GptShape shape{int(m.n_layer), int(m.n_head),     int(m.n_embd),
                              int(m.seq_len), int(m.vocab_size), int(padded_vocab)};
  std::vector<Param> p;
  for (const auto& s : triad::gpt_parameter_layout(shape))
    p.push_back(Param{s.name, s.shape, int64_t(s.offset), int64_t(s.numel)});
  return p;
}

// Deterministic pseudo-random value of element i of group g (any rank computes the same).
inline float value_at(uint64_t g, uint64_t i) {
  uint64_t x = (g << 58) ^ i;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(static_cast<int32_t>(x >> 32)) * 0x1p-33f;
}

// TensorRefs of one group for a rank holding the elements [lo, hi) of the flat buffer at
// base[0 ..] (whole = true: every tensor in full, base = the whole buffer).
std::vector<triad::TensorRef> refs(const std::vector<Param>& params, float* base, int64_t lo,
                                   int64_t hi, bool whole, int64_t vocab) {
  std::vector<triad::TensorRef> r;
  for (const Param& p : params) {
    triad::TensorRef t;
    t.name = p.name;
    t.shape = p.shape;
    if (p.name == "wte/weight") t.valid_rows = vocab;
    if (whole) {
      t.data = base + p.offset;
    } else {
      const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + p.numel);
      if (a < b) {
        t.begin = a - p.offset;
        t.end = b - p.offset;
        t.data = base + (a - lo);
      } else {
        t.begin = t.end = 0;
        t.data = base;
      }
    }
    r.push_back(std::move(t));
  }
  return r;
}

// Tries to drop the page cache (needs root and a writable /proc/sys); true on success.
bool drop_caches() {
  ::sync();
  const int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "3\n", 2) == 2;
  ::close(fd);
  return ok;
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TRIAD_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  TRIAD_CHECK(rc == 0, "cannot fsync ", path, ": ", std::strerror(err));
}

// Rank 0 alone: writes `bytes` to path in 64 MiB write(2) calls, fsync, close. Seconds.
double plain_write(const std::string& path, uint64_t bytes) {
  std::vector<char> buf(size_t{64} << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 131 + (i >> 12));
  const double t0 = MPI_Wtime();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TRIAD_CHECK(fd >= 0, "cannot create ", path, ": ", std::strerror(errno));
  uint64_t done = 0;
  while (done < bytes) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), bytes - done));
    const ssize_t w = ::write(fd, buf.data(), n);
    if (w < 0 && errno == EINTR) continue;
    TRIAD_CHECK(w > 0, "cannot write ", path, ": ", std::strerror(errno));
    done += static_cast<uint64_t>(w);
  }
  TRIAD_CHECK(::fsync(fd) == 0, "cannot fsync ", path, ": ", std::strerror(errno));
  TRIAD_CHECK(::close(fd) == 0, "cannot close ", path, ": ", std::strerror(errno));
  return MPI_Wtime() - t0;
}

// Rank 0 alone: reads path to the end in 64 MiB read(2) calls. Seconds.
double plain_read(const std::string& path, uint64_t bytes) {
  std::vector<char> buf(size_t{64} << 20);
  const double t0 = MPI_Wtime();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TRIAD_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  uint64_t done = 0;
  while (true) {
    const ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    TRIAD_CHECK(r >= 0, "cannot read ", path, ": ", std::strerror(errno));
    if (r == 0) break;
    done += static_cast<uint64_t>(r);
  }
  ::close(fd);
  TRIAD_CHECK(done == bytes, "read ", done, " bytes of ", path, ", expected ", bytes);
  return MPI_Wtime() - t0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int cmd_checkpoint(MPI_Comm world, const std::vector<std::string>& args) {
  po::options_description desc("checkpoint options");
  std::string dir, model_name;
  int repeat = 3;
  desc.add_options()("dir", po::value(&dir)->default_value("."),
                     "directory for the files (the file system to measure)")(
      "model", po::value(&model_name)->default_value("gpt2-124m"),
      "gpt2-124m, gpt2-350m or gpt2-tiny")("repeat", po::value(&repeat)->default_value(3),
                                           "measurements of each kind (median)")(
      "keep", "keep the files (default: delete them at the end)");
  po::variables_map vm;
  if (!parse(world, "checkpoint", args, desc, vm)) return 0;
  TRIAD_CHECK(repeat >= 1, "checkpoint: --repeat must be at least 1");
  const ModelSize* model = nullptr;
  for (const ModelSize& m : kModels) {
    if (model_name == m.name) model = &m;
  }
  TRIAD_CHECK(model != nullptr, "checkpoint: unknown --model '", model_name,
              "' (gpt2-124m, gpt2-350m or gpt2-tiny)");
  std::error_code ec;
  TRIAD_CHECK(fs::is_directory(dir, ec), "checkpoint: --dir ", dir, " is not a directory");

  const int rank = triad::rank_in(world), size = triad::size_of(world);
  const int64_t padded_vocab = triad::padded_vocab_size(int(model->vocab_size), 1);
  const std::vector<Param> params = gpt_params(*model, padded_vocab);
  const int64_t n_params = params.back().offset + params.back().numel;
  // ZeRO-1: the flat buffer, padded to a multiple of the rank count, split evenly.
  const int64_t shard = (n_params + size - 1) / size;
  const int64_t lo = std::min<int64_t>(n_params, int64_t(rank) * shard);
  const int64_t hi = std::min<int64_t>(n_params, lo + shard);
  const std::vector<std::string> group_names = {"model", "optimizer/m", "optimizer/v"};
  const uint64_t bytes = uint64_t(n_params) * group_names.size() * sizeof(float);

  // Each rank's slice of every group, filled deterministically.
  std::vector<std::vector<float>> slices(group_names.size(),
                                         std::vector<float>(std::max<int64_t>(hi - lo, 1)));
  for (size_t g = 0; g < slices.size(); ++g) {
    float* s = slices[g].data();
#pragma omp parallel for schedule(static)
    for (int64_t i = lo; i < hi; ++i) s[i - lo] = value_at(g, uint64_t(i));
  }
  auto sliced_groups = [&](std::vector<std::vector<float>>& bufs) {
    std::vector<triad::TensorGroup> gs;
    for (size_t g = 0; g < group_names.size(); ++g) {
      gs.push_back(
          {group_names[g], refs(params, bufs[g].data(), lo, hi, false, model->vocab_size)});
    }
    return gs;
  };
  const std::vector<triad::TensorGroup> save_groups = sliced_groups(slices);

  triad::CheckpointState state;
  state.step = 1000;
  state.config = std::string("[model]\nn_layer = ") + std::to_string(model->n_layer) + "\n";
  state.grid = "dp=" + std::to_string(size) + " pp=1 tp=1";
  state.model = {model->n_layer, model->n_head,     model->n_embd,
                 model->seq_len, model->vocab_size, padded_vocab};

  const std::string base =
      (fs::path(dir) / ("triad_bench_ckpt_np" + std::to_string(size))).string();
  const std::string ckpt = base + ".h5", plain = base + ".plain";
  // The bench writes and deletes these two files: never files it did not make.
  for (const std::string& f : {ckpt, plain}) {
    std::error_code ec;
    TRIAD_CHECK(!fs::exists(f, ec), "checkpoint: --dir ", dir, " already holds ", f,
                ", which the bench would overwrite and delete: remove it or give another --dir");
  }
  double t;
  std::vector<double> w_ckpt, w_save, w_plain, r_ckpt, r_plain, r_resume, w_ratio, r_ratio;
  int dropped = 1;
  auto drop = [&] {
    int ok = 0;
    if (rank == 0) ok = drop_caches() ? 1 : 0;
    MPI_Bcast(&ok, 1, MPI_INT, 0, world);
    dropped = dropped && ok;
  };

  if (rank == 0) {
    std::printf(
        "triad-bench checkpoint: %s, %lld parameters (wte padded to %lld rows), "
        "%d rank(s), %.3f GB of tensor data per checkpoint, %s\n",
        model->name, static_cast<long long>(n_params), static_cast<long long>(padded_vocab), size,
        double(bytes) / 1e9, ckpt.c_str());
    std::fflush(stdout);
  }
  bool verified = true;
  for (int it = 0; it < repeat; ++it) {
    // Plain write by rank 0 (+ fsync); the checkpoint write by all (+ fsync by every rank:
    // on a local file system the first flushes everything, the rest cost nothing).
    MPI_Barrier(world);
    t = 0;
    if (rank == 0) t = plain_write(plain, bytes);
    MPI_Bcast(&t, 1, MPI_DOUBLE, 0, world);
    w_plain.push_back(t);

    MPI_Barrier(world);
    double t0 = MPI_Wtime();
    triad::save_checkpoint(world, ckpt, state, save_groups);
    MPI_Barrier(world);
    w_save.push_back(MPI_Wtime() - t0);
    fsync_path(ckpt);
    MPI_Barrier(world);
    w_ckpt.push_back(MPI_Wtime() - t0);
    w_ratio.push_back(w_plain.back() / w_ckpt.back());

    // Reads after dropping the page cache where possible.
    drop();
    MPI_Barrier(world);
    t = 0;
    if (rank == 0) t = plain_read(plain, bytes);
    MPI_Bcast(&t, 1, MPI_DOUBLE, 0, world);
    r_plain.push_back(t);

    // The ZeRO-1 read: every rank its slice of every group.
    std::vector<std::vector<float>> back(group_names.size(),
                                         std::vector<float>(std::max<int64_t>(hi - lo, 1)));
    std::vector<triad::TensorGroup> load_groups = sliced_groups(back);
    drop();
    MPI_Barrier(world);
    t0 = MPI_Wtime();
    triad::load_checkpoint_tensors(world, ckpt, load_groups);
    MPI_Barrier(world);
    r_ckpt.push_back(MPI_Wtime() - t0);
    r_ratio.push_back(r_plain.back() / r_ckpt.back());
    // Bit-exact, except the padded wte rows (zero-filled on load).
    const int64_t wte_valid = model->vocab_size * model->n_embd;
    for (size_t g = 0; g < back.size(); ++g) {
      for (int64_t i = lo; i < hi; ++i) {
        const float want = i >= wte_valid && i < params[0].numel ? 0.0f : slices[g][i - lo];
        if (std::memcmp(&back[g][i - lo], &want, sizeof(float)) != 0) {
          verified = false;
          break;
        }
      }
    }
    back.clear();

    // The trainer's resume: full parameters on every rank, the optimizer state in slices.
    {
      std::vector<float> full(static_cast<size_t>(n_params));
      std::vector<std::vector<float>> opt(2, std::vector<float>(std::max<int64_t>(hi - lo, 1)));
      std::vector<triad::TensorGroup> gs = {
          {"model", refs(params, full.data(), 0, n_params, true, model->vocab_size)},
          {"optimizer/m", refs(params, opt[0].data(), lo, hi, false, model->vocab_size)},
          {"optimizer/v", refs(params, opt[1].data(), lo, hi, false, model->vocab_size)}};
      drop();
      MPI_Barrier(world);
      t0 = MPI_Wtime();
      triad::load_checkpoint_tensors(world, ckpt, gs);
      MPI_Barrier(world);
      r_resume.push_back(MPI_Wtime() - t0);
    }
    if (rank == 0) {
      std::printf(
          "  run %d: write %.2f s (save %.2f s + fsync; plain %.2f s), read %.2f s "
          "(plain %.2f s), resume read %.2f s\n",
          it + 1, w_ckpt.back(), w_save.back(), w_plain.back(), r_ckpt.back(), r_plain.back(),
          r_resume.back());
      std::fflush(stdout);
    }
  }
  int ok = verified ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, world);
  TRIAD_CHECK(ok == 1, "checkpoint: the data read back differ from the data written");

  if (rank == 0 && !vm.count("keep")) {
    fs::remove(ckpt, ec);
    fs::remove(plain, ec);
  }
  if (rank == 0) {
    const double gb = double(bytes) / 1e9;
    const double wc = median(w_ckpt), ws = median(w_save), wp = median(w_plain),
                 rc = median(r_ckpt), rp = median(r_plain), rr = median(r_resume),
                 wr = median(w_ratio), rq = median(r_ratio);
    // Ratios: medians of each run's ratio (the runs pair a checkpoint and a plain transfer made
    // back to back, which cancels slow drifts of a shared disk).
    std::printf(
        "  median of %d: write %.2f GB/s (save call alone %.2f GB/s; plain %.2f GB/s, "
        "ratio %.2f), read %.2f GB/s (plain %.2f GB/s, ratio %.2f), resume read %.2f s; "
        "reads %s; data verified\n",
        repeat, gb / wc, gb / ws, gb / wp, wr, gb / rc, gb / rp, rq, rr,
        dropped ? "after dropping the page cache"
                : "from the page cache (drop_caches "
                  "not permitted)");
    // One line for scripts.
    std::printf(
        "RESULT model=%s ranks=%d bytes=%llu write_s=%.4f save_s=%.4f "
        "plain_write_s=%.4f write_ratio=%.4f read_s=%.4f plain_read_s=%.4f "
        "read_ratio=%.4f resume_read_s=%.4f cache=%s\n",
        model->name, size, static_cast<unsigned long long>(bytes), wc, ws, wp, wr, rc, rp, rq, rr,
        dropped ? "dropped" : "cached");
    std::fflush(stdout);
  }
  return 0;
}

// ---- attention ----------------------------------------------------------------------------------

int cmd_attention(MPI_Comm world, const std::vector<std::string>& args) {
  po::options_description desc("attention options");
  int B = 16, T = 1024, NH = 12, hd = 64, repeat = 20, window = 0;
  double dropout = 0.0;
  std::string kernel_name = "auto", backward_name = "auto";
  desc.add_options()("B", po::value(&B)->default_value(16), "batch size")(
      "dropout", po::value(&dropout)->default_value(0.0),
      "attention dropout probability (train.attention_dropout's masks, formed in the kernels; 0: "
      "none)")("window", po::value(&window)->default_value(0),
               "sliding window: each query attends to its last N keys (0: causal over all)")(
      "T", po::value(&T)->default_value(1024), "sequence length")(
      "NH", po::value(&NH)->default_value(12), "heads")("hd", po::value(&hd)->default_value(64),
                                                        "head dimension (64, 128 or 192)")(
      "repeat", po::value(&repeat)->default_value(20), "timed runs of each kind (median)")(
      "kernel", po::value(&kernel_name)->default_value("auto"),
      "flash kernel: auto (wgmma where it runs, else mma), mma, wgmma or tma (wgmma with bulk "
      "tensor copies)")(
      "backward", po::value(&backward_name)->default_value("auto"),
      "flash backward: auto (TRIAD_FLASH_BACKWARD, else deterministic), deterministic (dQ in its "
      "own kernel), atomic (dQ added with fp32 atomics) or ordered (dQ added in key-block "
      "order)");
  po::variables_map vm;
  if (!parse(world, "attention", args, desc, vm)) return 0;
  TRIAD_CHECK(kernel_name == "auto" || kernel_name == "mma" || kernel_name == "wgmma" ||
                  kernel_name == "tma",
              "attention: --kernel must be auto, mma, wgmma or tma (got '", kernel_name, "')");
  TRIAD_CHECK(backward_name == "auto" || backward_name == "deterministic" ||
                  backward_name == "atomic" || backward_name == "ordered",
              "attention: --backward must be auto, deterministic, atomic or ordered (got '",
              backward_name, "')");
#ifdef TRIAD_HAVE_CUDA
  TRIAD_CHECK(B >= 1 && T >= 1 && NH >= 1, "attention: --B, --T and --NH must be at least 1");
  TRIAD_CHECK(triad::cuda_flash_head_dim(hd), "attention: --hd must be 64, 128 or 192");
  TRIAD_CHECK(repeat >= 1, "attention: --repeat must be at least 1");
  TRIAD_CHECK(window >= 0, "attention: --window must be >= 0 (0: none)");
  TRIAD_CHECK(dropout >= 0.0 && dropout < 1.0, "attention: --dropout must be in [0, 1)");
  TRIAD_CHECK(triad::cuda_device_available(), "attention: ", triad::cuda_device_description());
  if (triad::rank_in(world) != 0) return 0;
  namespace tc = triad::cuda;
  TRIAD_CUDA_CHECK(cudaSetDevice(0));
  const tc::FlashKernel kernel =
      tc::flash_kernel_for_device(kernel_name == "mma"     ? tc::FlashKernel::mma
                                  : kernel_name == "wgmma" ? tc::FlashKernel::wgmma
                                  : kernel_name == "tma"   ? tc::FlashKernel::tma
                                                           : tc::FlashKernel::automatic);
  const tc::FlashBackward backward =
      tc::flash_backward_mode(backward_name == "deterministic" ? tc::FlashBackward::deterministic
                              : backward_name == "atomic"      ? tc::FlashBackward::atomic
                              : backward_name == "ordered"     ? tc::FlashBackward::ordered
                                                               : tc::FlashBackward::automatic);
  const int C = NH * hd;
  const size_t n_qkv = size_t(B) * T * 3 * C, n_out = size_t(B) * T * C;
  std::vector<uint16_t> h_qkv(n_qkv), h_dout(n_out);
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (uint16_t& x : h_qkv) x = tc::float_to_bf16_bits(dist(rng));
  for (uint16_t& x : h_dout) x = tc::float_to_bf16_bits(dist(rng));
  tc::bf16 *qkv = nullptr, *out = nullptr, *dout = nullptr, *dqkv = nullptr;
  float *lse = nullptr, *ws = nullptr;
  TRIAD_CUDA_CHECK(cudaMalloc(&qkv, n_qkv * 2));
  TRIAD_CUDA_CHECK(cudaMalloc(&dqkv, n_qkv * 2));
  TRIAD_CUDA_CHECK(cudaMalloc(&out, n_out * 2));
  TRIAD_CUDA_CHECK(cudaMalloc(&dout, n_out * 2));
  TRIAD_CUDA_CHECK(cudaMalloc(&lse, size_t(B) * NH * T * sizeof(float)));
  TRIAD_CUDA_CHECK(
      cudaMalloc(&ws, tc::flash_attention_workspace_floats(B, T, C, NH, backward) * sizeof(float)));
  TRIAD_CUDA_CHECK(cudaMemcpy(qkv, h_qkv.data(), n_qkv * 2, cudaMemcpyHostToDevice));
  TRIAD_CUDA_CHECK(cudaMemcpy(dout, h_dout.data(), n_out * 2, cudaMemcpyHostToDevice));
  int32_t* key_begin = nullptr;  // the window's mask (flash_attention.cuh), or none
  if (window > 0 && window < T) {
    std::vector<int32_t> h(size_t(B) * T);
    triad::document_key_begin(h.data(), nullptr, B, T, -1, window);
    TRIAD_CUDA_CHECK(cudaMalloc(&key_begin, h.size() * sizeof(int32_t)));
    TRIAD_CUDA_CHECK(
        cudaMemcpy(key_begin, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  int32_t* drop_keys = nullptr;  // the dropout's row keys [B, T] (dropout_mask.h), or none
  triad::AttentionDropMask drop{};
  if (dropout > 0.0) {
    std::vector<int32_t> h(2 * size_t(B) * T);
    triad::dropout_row_key_words(h.data(), 1, 0, B, T);
    TRIAD_CUDA_CHECK(cudaMalloc(&drop_keys, h.size() * sizeof(int32_t)));
    TRIAD_CUDA_CHECK(
        cudaMemcpy(drop_keys, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    drop = triad::AttentionDropout{drop_keys, float(dropout), 0, 0, 0}.mask(NH);
  }
  cudaStream_t s = nullptr;
  TRIAD_CUDA_CHECK(cudaStreamCreate(&s));
  cudaEvent_t e0, e1;
  TRIAD_CUDA_CHECK(cudaEventCreate(&e0));
  TRIAD_CUDA_CHECK(cudaEventCreate(&e1));
  auto fwd = [&] {
    tc::flash_attention_forward(out, lse, qkv, B, T, C, NH, key_begin, s, kernel, {}, NH, 0.0f,
                                0.0f, drop);
  };
  auto fwd_bwd = [&] {
    fwd();
    tc::flash_attention_backward(dqkv, dout, qkv, out, lse, ws, B, T, C, NH, key_begin, s, false,
                                 kernel, backward, {}, NH, 0.0f, 0.0f, drop);
  };
  auto time_ms = [&](auto&& f) {
    for (int w = 0; w < 3; ++w) f();  // warm-up
    std::vector<double> ms;
    for (int r = 0; r < repeat; ++r) {
      TRIAD_CUDA_CHECK(cudaEventRecord(e0, s));
      f();
      TRIAD_CUDA_CHECK(cudaEventRecord(e1, s));
      TRIAD_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0.0f;
      TRIAD_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    return median(ms);
  };
  const double f_ms = time_ms(fwd), fb_ms = time_ms(fwd_bwd);
  // Causal FLOPs: forward 4·B·NH·T²·hd / 2 (two products over half the T×T scores), or over the
  // keys a window keeps; the backward counts as 2.5 forwards (its five products), whatever the
  // kernels recompute.
  const double fwd_flops = 4.0 * B * NH * hd * triad::attention_key_count(T, window);
  const double fb_flops = fwd_flops * 3.5;
  std::printf(
      "triad-bench attention: %s; %s kernel, %s backward, B=%d T=%d NH=%d hd=%d, bf16, causal%s%s, "
      "median of %d\n"
      "  forward            %.4f ms  %.1f TFLOP/s\n"
      "  forward + backward %.4f ms  %.1f TFLOP/s\n",
      triad::cuda_device_description().c_str(), tc::flash_kernel_name(kernel),
      tc::flash_backward_name(backward), B, T, NH, hd,
      window > 0 && window < T ? (", window " + std::to_string(window)).c_str() : "",
      dropout > 0.0 ? (", dropout " + std::to_string(dropout)).c_str() : "", repeat, f_ms,
      fwd_flops / (f_ms * 1e-3) / 1e12, fb_ms, fb_flops / (fb_ms * 1e-3) / 1e12);
  std::printf(
      "RESULT kernel=%s backward=%s B=%d T=%d NH=%d hd=%d window=%d dropout=%g fwd_ms=%.4f "
      "fwd_bwd_ms=%.4f fwd_tflops=%.2f fwd_bwd_tflops=%.2f\n",
      tc::flash_kernel_name(kernel), tc::flash_backward_name(backward), B, T, NH, hd, window,
      dropout, f_ms, fb_ms, fwd_flops / (f_ms * 1e-3) / 1e12, fb_flops / (fb_ms * 1e-3) / 1e12);
  std::fflush(stdout);
  TRIAD_CUDA_CHECK(cudaEventDestroy(e0));
  TRIAD_CUDA_CHECK(cudaEventDestroy(e1));
  TRIAD_CUDA_CHECK(cudaStreamDestroy(s));
  for (void* p : {static_cast<void*>(qkv), static_cast<void*>(dqkv), static_cast<void*>(out),
                  static_cast<void*>(dout), static_cast<void*>(lse), static_cast<void*>(ws),
                  static_cast<void*>(key_begin), static_cast<void*>(drop_keys)})
    TRIAD_CUDA_CHECK(cudaFree(p));
  return 0;
#else
  (void)dropout;
  triad::fail("attention: this triad-bench was built without CUDA");
#endif
}

// ---- schedule -----------------------------------------------------------------------------------

// One row per stage; one cell (2 characters) per t_fwd / v of time: the micro-batch in base 36
// after F / B for chunk 0, f / b for chunk 1, G / C for chunk 2, W for a weight pass; ".." idle.
void print_timeline(const triad::SimResult& r, int v, double t_fwd) {
  const double cell = t_fwd / v;
  const char* fwd = "FfG";
  const char* bwd = "BbC";
  const char* wgt = "WwV";
  const char* digits = "0123456789abcdefghijklmnopqrstuvwxyz";
  const int n_cells = int(r.makespan / cell + 0.5);
  for (size_t s = 0; s < r.timeline.size(); ++s) {
    std::string row(size_t(2 * n_cells), '.');
    for (const triad::ComputeInterval& c : r.timeline[s]) {
      const char* letters = c.kind == triad::ActionKind::Forward          ? fwd
                            : c.kind == triad::ActionKind::BackwardWeight ? wgt
                                                                          : bwd;
      for (int k = int(c.start / cell + 0.5); k < int(c.end / cell + 0.5) && k < n_cells; ++k) {
        row[2 * k] = letters[c.chunk % 3];
        row[2 * k + 1] = digits[c.microbatch % 36];
      }
    }
    std::printf("    stage %zu |%s|\n", s, row.c_str());
  }
}

int cmd_schedule(MPI_Comm world, const std::vector<std::string>& args) {
  po::options_description desc("schedule options");
  int pp = 4, m = 8, v = 2;
  double t_fwd = 1.0, t_bwd = 2.0, t_wgt = -1.0;
  desc.add_options()("pp", po::value(&pp)->default_value(4), "pipeline stages")(
      "m", po::value(&m)->default_value(8), "micro-batches per step")(
      "v", po::value(&v)->default_value(2), "virtual stages per rank for interleaved and zb-h1")(
      "t-fwd", po::value(&t_fwd)->default_value(1.0), "forward time of one stage")(
      "t-bwd", po::value(&t_bwd)->default_value(2.0), "backward time of one stage")(
      "t-wgt", po::value(&t_wgt)->default_value(-1.0),
      "of it, zb-h1's weight pass (default: half; a CPU measured B 42% longer than W)")(
      "timeline", "print each schedule's timeline per stage");
  po::variables_map vm;
  if (!parse(world, "schedule", args, desc, vm)) return 0;
  TRIAD_CHECK(pp >= 1 && m >= 1 && v >= 1, "schedule: --pp, --m and --v must be at least 1");
  // The simulation steps through every action of every stage: a million keeps it within seconds.
  TRIAD_CHECK(int64_t(pp) * m * v <= 1000000, "schedule: --pp · --m · --v (", int64_t(pp) * m * v,
              ") must be at most 1000000, the actions the simulation steps through");
  TRIAD_CHECK(t_fwd > 0 && t_bwd > 0 && t_fwd <= 1e9 && t_bwd <= 1e9,
              "schedule: --t-fwd and --t-bwd must be numbers in (0, 1e9]");
  TRIAD_CHECK(vm["t-wgt"].defaulted() || t_wgt >= 0, "schedule: --t-wgt must be >= 0 (got ", t_wgt,
              ")");
  if (vm["t-wgt"].defaulted()) t_wgt = t_bwd / 2;
  TRIAD_CHECK(t_wgt <= t_bwd, "schedule: --t-wgt (", t_wgt, ") must not exceed --t-bwd (", t_bwd,
              ")");
  if (triad::rank_in(world) != 0) return 0;
  std::printf(
      "triad-bench schedule: pp=%d m=%d v=%d, t_fwd=%g t_bwd=%g (zb-h1: W %g of it) per stage (a "
      "chunk: 1/v of it)\n"
      "  bubble = idle / (idle + busy) over all stages; theory (pp-1)/(m+pp-1), interleaved "
      "(pp-1)/(v*m+pp-1),\n  zb-h1 (pp-1)/(3m+pp-1), with v > 1 (pp-1)/(3vm+pp-1) for m >= 2pp, "
      "zb-v (v = 2) a bound (pp-1)/(6m+pp-1)\n  (theory for t_bwd = 2 t_fwd, t_W = t_bwd/2)\n"
      "  %-12s %2s %9s %10s %8s %9s  %s\n",
      pp, m, v, t_fwd, t_bwd, t_wgt, "schedule", "v", "makespan", "sim bubble", "theory",
      "sim/theo", "peak live (micro-batch, chunk) pairs per stage");
  struct Run {
    triad::ScheduleKind kind;
    int v;
    triad::SimResult r;
  };
  std::vector<Run> runs;
  // zb-h1 with one chunk per rank, and (v > 1) splitting the interleaved order.
  std::vector<std::pair<triad::ScheduleKind, int>> kinds = {{triad::ScheduleKind::GPipe, 1},
                                                            {triad::ScheduleKind::OneFOneB, 1},
                                                            {triad::ScheduleKind::Interleaved, v},
                                                            {triad::ScheduleKind::ZeroBubble, 1}};
  if (v > 1) kinds.emplace_back(triad::ScheduleKind::ZeroBubble, v);
  kinds.emplace_back(triad::ScheduleKind::ZeroBubbleV, 2);  // two chunks per rank, as a V
  for (const auto& [kind, kv] : kinds) {
    const char* name = triad::schedule_kind_name(kind);
    triad::PipelineSchedule s;
    try {
      s = triad::make_schedule(kind, pp, m, kv);
    } catch (const triad::Error& e) {
      std::printf("  %-12s %2d  n/a: %s\n", name, kv, e.what());
      continue;
    }
    triad::check_schedule(s, pp, m, kv);
    const std::vector<double> f(size_t(pp), t_fwd), b(size_t(pp), t_bwd), w(size_t(pp), t_wgt);
    const triad::SimResult r = triad::simulate(s, pp, m, kv, f, b, 0, w);
    const double theory = triad::theoretical_bubble(kind, pp, m, kv);
    std::string peaks;
    for (int p : r.peak_live) {
      if (!peaks.empty()) peaks += ' ';
      peaks += std::to_string(p);
    }
    std::printf("  %-12s %2d %9.3f %10.4f %8.4f %9.4f  %s\n", name, kv, r.makespan, r.bubble,
                theory, theory > 0 ? r.bubble / theory : 1.0, peaks.c_str());
    std::printf("RESULT schedule=%s pp=%d m=%d v=%d makespan=%.6f bubble=%.6f theory=%.6f\n", name,
                pp, m, kv, r.makespan, r.bubble, theory);
    runs.push_back({kind, kv, r});
  }
  if (vm.count("timeline")) {
    for (const Run& run : runs) {
      std::printf(
          "  %s (v=%d): F/B chunk 0, f/b chunk 1, G/C chunk 2, weight passes W/w/V, then the "
          "micro-batch\n",
          triad::schedule_kind_name(run.kind), run.v);
      print_timeline(run.r, run.v, t_fwd);
    }
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

// ---- kernels -------------------------------------------------------------------------------

int cmd_kernels(MPI_Comm world, const std::vector<std::string>& args) {
  po::options_description desc("kernels options");
  std::string backend = "cuda", precision = "auto";
  triad::KernelBenchShape sh;
  int repeat = 0;
  desc.add_options()("backend", po::value(&backend)->default_value("cuda"), "cpu or cuda")(
      "precision", po::value(&precision)->default_value("auto"),
      "fp32, bf16, or auto (bf16 on cuda, fp32 on cpu)")("B", po::value(&sh.B)->default_value(0),
                                                         "batch (0: 16 on cuda, 2 on cpu)")(
      "T", po::value(&sh.T)->default_value(0), "sequence length (0: 1024 on cuda, 128 on cpu)")(
      "C", po::value(&sh.C)->default_value(768), "width")(
      "NH", po::value(&sh.NH)->default_value(12), "heads")(
      "V", po::value(&sh.V)->default_value(50257), "vocabulary")(
      "window", po::value(&sh.window)->default_value(0),
      "sliding window of the attention ops: each query's last N keys (0: causal over all)")(
      "layers", po::value(&sh.layers)->default_value(12),
      "layers (for the step sum and the "
      "optimizer's parameter count)")("repeat", po::value(&repeat)->default_value(0),
                                      "calls per timed round (0: 20 cuda, 2 cpu)");
  po::variables_map vm;
  if (!parse(world, "kernels", args, desc, vm)) return 0;
  TRIAD_CHECK(backend == "cpu" || backend == "cuda",
              "kernels: --backend must be cpu or cuda (got '", backend, "')");
  TRIAD_CHECK(precision == "auto" || precision == "fp32" || precision == "bf16",
              "kernels: --precision must be fp32, bf16 or auto (got '", precision, "')");
  const bool cuda = backend == "cuda";
  if (sh.B == 0) sh.B = cuda ? 16 : 2;
  if (sh.T == 0) sh.T = cuda ? 1024 : 128;
  if (repeat == 0) repeat = cuda ? 20 : 2;
  TRIAD_CHECK(sh.B >= 1 && sh.T >= 1 && sh.C >= 2 && sh.NH >= 1 && sh.V >= 1 && sh.layers >= 1 &&
                  repeat >= 1,
              "kernels: --B, --T, --NH, --V, --layers and --repeat must be at least 1, --C 2");
  // (The models' own bounds: past them the padded vocabulary and the sizes overflowed an int.)
  TRIAD_CHECK(sh.T <= triad::kMaxSeqLen && sh.C <= triad::kMaxWidth && sh.NH <= triad::kMaxHeads &&
                  sh.V <= triad::kMaxVocab && sh.layers <= triad::kMaxLayers,
              "kernels: --T, --C, --NH, --V and --layers must be at most a model's (",
              triad::kMaxSeqLen, ", ", triad::kMaxWidth, ", ", triad::kMaxHeads, ", ",
              triad::kMaxVocab, ", ", triad::kMaxLayers, ")");
  TRIAD_CHECK(sh.window >= 0, "kernels: --window must be >= 0 (0: none)");
  TRIAD_CHECK(sh.C % sh.NH == 0 && sh.C % 2 == 0, "kernels: --C (", sh.C,
              ") must be even and divisible by --NH (", sh.NH, ")");
  const bool bf16 = precision == "bf16" || (precision == "auto" && cuda);
  TRIAD_CHECK(!cuda || triad::cuda_device_available(),
              "kernels: --backend cuda: ", triad::cuda_device_description(),
              "; --backend cpu times the cpu backend");
  auto be = cuda ? triad::make_cuda_backend(0) : triad::make_cpu_backend();
  const triad::KernelBench r = triad::run_kernel_bench(*be, sh, bf16, repeat);
  if (triad::rank_in(world) == 0) {
    std::ostringstream title;
    title << "triad-bench kernels: backend " << be->name() << " " << (bf16 ? "bf16" : "fp32")
          << ", B=" << sh.B << " T=" << sh.T << " C=" << sh.C << " NH=" << sh.NH << " V=" << sh.V
          << " layers=" << sh.layers
          << (sh.window > 0 && sh.window < sh.T ? ", window " + std::to_string(sh.window) : "")
          << ", best of 3 rounds of " << repeat << " calls; "
          << (cuda ? triad::cuda_device_description() : "cpu");
    if (cuda && bf16 && sh.C / sh.NH % 64 == 0 && sh.C / sh.NH <= 128)
      title << ", flash attention " << triad::cuda_flash_kernel();
    std::cout << triad::format_kernel_bench(r, title.str()) << std::flush;
  }
  return 0;
}

int main(int argc, char** argv) {
  return triad::run_main(argc, argv, kProg, [&](MPI_Comm world) {
    TRIAD_CHECK(
        argc >= 2,
        "no command given: checkpoint, attention, kernels, fim or schedule (see 'triad-bench "
        "--help')");
    const std::string command = argv[1];
    const std::vector<std::string> args(argv + 2, argv + argc);
    if (command == "--help" || command == "-h" || command == "help") {
      if (triad::rank_in(world) == 0) std::cout << kUsage;
      return 0;
    }
    if (command == "checkpoint") return cmd_checkpoint(world, args);
    if (command == "attention") return cmd_attention(world, args);
    if (command == "schedule") return cmd_schedule(world, args);
    if (command == "kernels") return cmd_kernels(world, args);
    if (command == "fim") return triad::bench_fim(args);
    triad::fail(
        "unknown command '", command,
        "': expected checkpoint, attention, kernels, fim or schedule (see 'triad-bench --help')");
  });
}
