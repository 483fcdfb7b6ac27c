#include "triad/data/loader.h"

#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "triad/core/error.h"
#include "triad/core/rng.h"
#include "triad/data/token_shard.h"

namespace triad {
namespace {

// The files map_file has mapped, for the SIGBUS handler to name the one a fault is in: a fixed
// table, since a handler may only read memory. An entry is filled under a lock and published by
// its base; unmap_file clears it. Files beyond the table's slots are mapped all the same (a
// fault in one gets the message without its name).
struct MappedFile {
  std::atomic<const char*> base{nullptr};
  size_t bytes = 0;
  char name[480] = {};  // "token shard PATH", cut to fit
};
constexpr size_t kMappedSlots = 4096;
MappedFile mapped_files[kMappedSlots];
std::mutex mapped_files_lock;

void write_err(const char* text) {
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, text, std::strlen(text));
}

// A mapped file cut short while mapped (a shard rewritten or truncated during the run) makes
// the read of its lost pages a SIGBUS, which would end the process with no word of why: this
// names the file the faulting address is in and the likely cause, then exits 1 (MPI's launcher
// ends the other ranks). Only write(2), strlen, atomic loads and _exit(2): what a signal handler
// may call. (Installed once a shard is mapped.)
extern "C" void on_mapped_file_bus_error(int, siginfo_t* info, void*) {
  write_err(
      "triad: error: bus error (SIGBUS): a memory-mapped file was cut short while it was "
      "read");
  const char* at = info != nullptr ? static_cast<const char*>(info->si_addr) : nullptr;
  for (const MappedFile& f : mapped_files) {
    const char* base = f.base.load(std::memory_order_acquire);
    if (base != nullptr && at >= base && at < base + f.bytes) {
      write_err(": ");
      write_err(f.name);
      write_err(" (truncated or rewritten during the run?)\n");
      _exit(1);
    }
  }
  write_err(
      " (a token shard or loss mask truncated or rewritten during the run? shared memory "
      "full?)\n");
  _exit(1);
}

// A read-only map of the whole file `path`, `bytes` long (its reader has checked the size);
// `what` names the file's kind in errors.
void* map_file(const std::string& path, size_t bytes, const char* what) {
  static const bool handled = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_mapped_file_bus_error;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return ::sigaction(SIGBUS, &sa, nullptr) == 0;
  }();
  (void)handled;
  const int fd = ::open(path.c_str(), O_RDONLY);
  TRIAD_CHECK(fd >= 0, what, " ", path, ": cannot open (", std::strerror(errno), ")");
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  TRIAD_CHECK(map != MAP_FAILED, what, " ", path, ": cannot map (", std::strerror(map_errno), ")");
  const std::lock_guard lock(mapped_files_lock);
  for (MappedFile& f : mapped_files) {
    if (f.base.load(std::memory_order_relaxed) != nullptr) continue;
    f.bytes = bytes;
    std::snprintf(f.name, sizeof f.name, "%s %s", what, path.c_str());
    f.base.store(static_cast<const char*>(map), std::memory_order_release);
    break;
  }
  return map;
}

// Unmaps what map_file mapped, and forgets its name.
void unmap_file(void* map, size_t bytes) {
  {
    const std::lock_guard lock(mapped_files_lock);
    for (MappedFile& f : mapped_files)
      if (f.base.load(std::memory_order_relaxed) == map) f.base.store(nullptr);
  }
  ::munmap(map, bytes);
}

}  // namespace

// A read-only memory map of one validated shard: large corpora are paged in on demand
// instead of read up front. Its tokens are uint16 or uint32 (token_bytes), by its header.
struct SequenceSource::Shard {
  std::string path;
  int64_t n_tokens = 0;
  int token_bytes = 2;
  void* map = nullptr;
  size_t map_bytes = 0;
  const char* tokens = nullptr;
  std::string mask_path;  // empty: no mask, every target counts
  void* mask_map = nullptr;
  size_t mask_bytes = 0;
  const uint8_t* mask = nullptr;

  Shard(const std::string& p, LossMask loss_mask) : path(p) {
    const ShardHeader h = read_token_shard_header(p);  // validates magic, version and size
    n_tokens = h.count;
    token_bytes = h.token_bytes;
    map_bytes = kShardHeaderInts * 4 + size_t(n_tokens) * size_t(token_bytes);
    map = map_file(p, map_bytes, "token shard");
    tokens = static_cast<const char*>(map) + kShardHeaderInts * 4;
    if (loss_mask == LossMask::none) return;
    try {
      map_mask(loss_mask);
    } catch (...) {  // the destructor does not run for a constructor that throws
      unmap_file(map, map_bytes);
      throw;
    }
  }
  void map_mask(LossMask loss_mask) {
    const std::string mp = loss_mask_path(path);
    std::error_code ec;
    if (!std::filesystem::exists(mp, ec)) {
      TRIAD_CHECK(loss_mask != LossMask::require, "loss mask ", mp,
                  ": missing (data.loss_mask = require needs one beside every shard)");
      return;
    }
    const int64_t count = read_loss_mask_count(mp);  // validates header and size
    TRIAD_CHECK(count == n_tokens, "loss mask ", mp, ": ", count, " values for the ", n_tokens,
                " tokens of ", path, "; not this shard's mask");
    mask_path = mp;
    mask_bytes = kShardHeaderInts * 4 + size_t(count);
    mask_map = map_file(mp, mask_bytes, "loss mask");
    mask = static_cast<const uint8_t*>(mask_map) + kShardHeaderInts * 4;
  }
  // Whether token i counts as a target; a value other than 0 or 1 is refused.
  bool counts(int64_t i) const {
    if (mask == nullptr) return true;
    const uint8_t m = mask[i];
    if (m > 1) fail("loss mask ", mask_path, ": value ", int(m), " at position ", i, " (0 or 1)");
    return m == 1;
  }
  uint32_t at(int64_t i) const {  // the header keeps the tokens 4-byte aligned
    return token_bytes == 2 ? reinterpret_cast<const uint16_t*>(tokens)[i]
                            : reinterpret_cast<const uint32_t*>(tokens)[i];
  }
  ~Shard() {
    if (map) unmap_file(map, map_bytes);  // map_file never leaves MAP_FAILED
    if (mask_map) unmap_file(mask_map, mask_bytes);
  }
};

LossMask parse_loss_mask(const std::string& value) {
  if (value == "auto") return LossMask::auto_;
  if (value == "require") return LossMask::require;
  if (value == "none") return LossMask::none;
  fail("config: data.loss_mask = '", value, "' is not auto, require or none");
}

std::vector<std::string> match_shards(const std::string& pattern, const std::string& key) {
  TRIAD_CHECK(!pattern.empty(), "config: ", key, " is empty; set it to a glob of token shards");
  std::vector<std::string> files;
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  // (A blend's key names its glob already; one glob with commas is a blend without weights.)
  const bool names_glob = key.find(" (") != std::string::npos;
  TRIAD_CHECK(!files.empty(), "config: ", key, names_glob ? "" : " = '" + pattern + "'",
              " matches no files",
              key == "data.train" && pattern.find(',') != std::string::npos
                  ? " (several datasets, separated by commas, need data.train_weights)"
                  : "");
  std::sort(files.begin(), files.end());  // lexicographic order (DESIGN.md §4)
  return files;
}

SequenceSource::SequenceSource(const std::string& pattern, const std::string& key, int seq_len,
                               int vocab_size, LossMask mask, int32_t eod)
    : key_(key), seq_len_(seq_len), vocab_size_(vocab_size), eod_(eod) {
  files_ = match_shards(pattern, key);
  for (const auto& f : files_) {
    shards_.push_back(std::make_unique<Shard>(f, mask));
    masked_ += shards_.back()->mask != nullptr ? 1 : 0;
    first_.push_back(total_);
    const int64_t n = shards_.back()->n_tokens;
    total_ += n > 0 ? (n - 1) / seq_len : 0;
  }
  TRIAD_CHECK(total_ > 0, "config: ", key, " = '", pattern, "': its ", files_.size(),
              " shard(s) hold no complete sequence of seq_len ", seq_len, " + 1 tokens");
}

SequenceSource::~SequenceSource() = default;

const SequenceSource::Shard& SequenceSource::shard_of(int64_t index, int64_t& start) const {
  TRIAD_ASSERT(index >= 0 && index < total_);
  const size_t j =
      size_t(std::upper_bound(first_.begin(), first_.end(), index) - first_.begin() - 1);
  start = (index - first_[j]) * seq_len_;
  return *shards_[j];
}

void SequenceSource::window(int64_t index, std::vector<int32_t>& tokens,
                            std::vector<uint8_t>& counts) const {
  int64_t start = 0;
  const Shard& s = shard_of(index, start);
  tokens.resize(size_t(seq_len_) + 1);
  counts.resize(size_t(seq_len_) + 1);
  for (int i = 0; i <= seq_len_; ++i) {
    const uint32_t t = s.at(start + i);
    if (t >= uint32_t(vocab_size_))
      fail("token shard ", s.path, ": token id ", t, " at position ", start + i,
           " is >= model.vocab_size (", vocab_size_, ")");
    tokens[size_t(i)] = int32_t(t);
    counts[size_t(i)] = s.counts(start + i) ? 1 : 0;
  }
  fill_in_the_middle(fim_, index, tokens, counts);
}

bool SequenceSource::target_counts(const std::vector<int32_t>& tokens,
                                   const std::vector<uint8_t>& counts, size_t i) const {
  return counts[i + 1] && (eod_ < 0 || tokens[i] != eod_);
}

void SequenceSource::read(int64_t index, int32_t* inputs, int32_t* targets) const {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> counts;
  window(index, tokens, counts);
  for (int i = 0; i < seq_len_; ++i) {
    inputs[i] = tokens[size_t(i)];
    targets[i] = target_counts(tokens, counts, size_t(i)) ? tokens[size_t(i) + 1] : kMaskedTarget;
  }
}

int SequenceSource::counted_targets(int64_t index) const {
  int64_t start = 0;
  const Shard& s = shard_of(index, start);
  if (s.mask == nullptr && eod_ < 0 && !pads()) return seq_len_;  // FIM's sentinels count too
  std::vector<int32_t> tokens;
  std::vector<uint8_t> counts;
  window(index, tokens, counts);
  int n = 0;
  for (int i = 0; i < seq_len_; ++i) n += target_counts(tokens, counts, size_t(i)) ? 1 : 0;
  return n;
}

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  // Fisher-Yates with a stream seeded by (seed, epoch): the order of an epoch depends on nothing
  // but these two numbers.
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) perm[size_t(k)] = k;
  Rng rng(seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch) + 1);
  for (int64_t k = n - 1; k > 0; --k) std::swap(perm[size_t(k)], perm[rng.below(uint64_t(k + 1))]);
  return perm;
}

DataLoader::DataLoader(const SequenceSource& source, bool shuffle, uint64_t seed)
    : source_(source), shuffle_(shuffle), seed_(seed) {}

int64_t DataLoader::sequence_at(int64_t position) {
  const int64_t n = source_.num_sequences();
  const int64_t epoch = position / n, i = position % n;
  if (!shuffle_) return i;
  if (epoch != perm_epoch_) {
    perm_ = epoch_permutation(n, seed_, epoch);
    perm_epoch_ = epoch;
  }
  return perm_[size_t(i)];
}

void DataLoader::fill(int64_t position, int count, int32_t* inputs, int32_t* targets) {
  const size_t T = size_t(source_.seq_len());
  for (int b = 0; b < count; ++b) {
    const int64_t index = sequence_at(position + b);
    int32_t* in = inputs + size_t(b) * T;
    int32_t* tg = targets + size_t(b) * T;
    const auto kept = read_.find(index);
    if (kept != read_.end()) {
      std::copy_n(kept->second.data(), T, in);
      std::copy_n(kept->second.data() + T, T, tg);
      read_.erase(kept);
    } else {
      source_.read(index, in, tg);
    }
  }
}

int64_t DataLoader::counted_targets(int64_t position, int count) {
  int64_t n = 0;
  if (!source_.counting_encodes()) {
    for (int b = 0; b < count; ++b) n += source_.counted_targets(sequence_at(position + b));
    return n;
  }
  // Counting reads each window whole (its text encoded anew): keep it for fill().
  const size_t T = size_t(source_.seq_len());
  const size_t most = std::max(size_t(count), kKeptBytes / (2 * T * sizeof(int32_t)));
  if (read_.size() + size_t(count) > most) read_.clear();
  for (int b = 0; b < count; ++b) {
    const int64_t index = sequence_at(position + b);
    std::vector<int32_t>& seq = read_[index];
    if (seq.empty()) {
      seq.resize(2 * T);
      source_.read(index, seq.data(), seq.data() + T);
    }
    for (size_t i = 0; i < T; ++i) n += seq[T + i] != kMaskedTarget ? 1 : 0;
  }
  return n;
}

}  // namespace triad
