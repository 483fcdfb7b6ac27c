// The checkpoint directory (DESIGN.md §5): ckpt/step_XXXXXXXX.h5, ckpt/latest and (checkpoint.best)
// ckpt/best.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <utility>

#include "collective.h"
#include "triad/io/checkpoint.h"
#include "triad/io/set_aside_path.h"
#include "triad/parallel/comm.h"

namespace triad {
namespace {

namespace fs = std::filesystem;

constexpr int kDigits = 8;
constexpr const char* kPrefix = "step_";
constexpr const char* kSuffix = ".h5";

// The step of a name "step_XXXXXXXX.h5" (exactly 8 digits), else nullopt.
std::optional<int64_t> parse_checkpoint_name(const std::string& name) {
  const std::string prefix = kPrefix, suffix = kSuffix;
  if (name.size() != prefix.size() + kDigits + suffix.size()) return std::nullopt;
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return std::nullopt;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < prefix.size() + kDigits; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::string trim(const std::string& s) {
  const auto space = [](unsigned char c) { return std::isspace(c) != 0; };
  auto b = std::find_if_not(s.begin(), s.end(), space);
  auto e = std::find_if_not(s.rbegin(), s.rend(), space).base();
  return b < e ? std::string(b, e) : std::string();
}

// The content of dir/`name` (latest, best), trimmed; nullopt when there is no such file.
std::optional<std::string> read_pointer(const fs::path& dir, const char* name = "latest") {
  const fs::path p = dir / name;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return std::nullopt;
  std::ifstream in(p);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return trim(ss.str());
}

// Empty string when `path` is a loadable checkpoint, else the reason.
std::string check_loadable(const std::string& path) {
  try {
    read_checkpoint_state(MPI_COMM_SELF, path);
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

// dir/name holding `text`: written to a temporary file, then renamed over the old one.
void write_pointer(const fs::path& d, const std::string& name, const std::string& text) {
  const fs::path target = d / name, tmp = d / (name + ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    TRIAD_CHECK(out.good(), "checkpoint directory ", d.string(), ": cannot write ", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    const std::string why = ec.message();  // (before remove() sets ec again)
    fs::remove(tmp, ec);
    fail("checkpoint directory ", d.string(), ": cannot rename ", tmp.string(), " to ",
         target.string(), ": ", why);
  }
}

// What `decide` returns on rank 0, on every rank of comm. Rank 0 alone looks at the directory
// (a node whose file system shows a rename late must not decide otherwise); an error it throws
// reaches every rank (io::collective_phase).
std::string decided_by_rank0(MPI_Comm comm, const std::function<std::string()>& decide) {
  const int rank = rank_in(comm);
  std::string text;
  io::collective_phase(comm, [&] {
    if (rank == 0) text = decide();
  });
  int len = static_cast<int>(text.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, comm);
  text.resize(len);
  if (len > 0) MPI_Bcast(text.data(), len, MPI_CHAR, 0, comm);
  return text;
}

}  // namespace

void publish_best(const std::string& dir, const std::string& file_name, double val_loss) {
  TRIAD_CHECK(parse_checkpoint_name(file_name).has_value(), "internal error: ", file_name,
              " is not a checkpoint name");
  char loss[64];
  std::snprintf(loss, sizeof loss, "%.17g", val_loss);
  write_pointer(fs::path(dir), "best", file_name + "\n" + loss + "\n");
}

std::optional<std::pair<std::string, double>> read_best(const std::string& dir) {
  const std::optional<std::string> text = read_pointer(fs::path(dir), "best");
  if (!text || text->empty()) return std::nullopt;
  std::istringstream in(*text);
  std::string name, loss_text, extra;
  std::getline(in, name);
  std::getline(in, loss_text);
  std::getline(in, extra);
  name = trim(name);
  loss_text = trim(loss_text);
  char* end = nullptr;
  const double loss = loss_text.empty() ? 0.0 : std::strtod(loss_text.c_str(), &end);
  TRIAD_CHECK(parse_checkpoint_name(name) && !loss_text.empty() && end != nullptr && *end == '\0' &&
                  std::isfinite(loss) && trim(extra).empty() && in.peek() == EOF,
              "checkpoint directory ", dir, ": ", (fs::path(dir) / "best").string(),
              " is not a checkpoint name (step_XXXXXXXX.h5) and a finite validation loss on two "
              "lines");
  return std::make_pair(name, loss);
}

std::string checkpoint_file_name(int64_t step) {
  TRIAD_CHECK(step >= 0 && step <= kMaxCheckpointStep, "checkpoint step ", step,
              " does not fit the 8-digit file name step_XXXXXXXX.h5");
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08lld%s", kPrefix, static_cast<long long>(step), kSuffix);
  return buf;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) return {};
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    const std::optional<int64_t> step = parse_checkpoint_name(name);
    std::error_code ec2;
    if (step && it->is_regular_file(ec2)) found.emplace_back(*step, name);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> names;
  names.reserve(found.size());
  for (auto& f : found) names.push_back(std::move(f.second));
  return names;
}

void publish_checkpoint(const std::string& dir, const std::string& file_name, int keep,
                        int64_t keep_every, const std::string& protect) {
  const fs::path d(dir);
  std::error_code ec;
  TRIAD_CHECK(fs::is_regular_file(d / file_name, ec), "checkpoint directory ", dir,
              ": cannot publish ", file_name, ", which does not exist there");

  write_pointer(d, "latest", file_name + "\n");

  if (keep <= 0) return;
  std::vector<std::string> all = list_checkpoints(dir);
  if (keep_every > 0)  // milestones stay, outside the count
    std::erase_if(all, [&](const std::string& name) {
      const auto step = parse_checkpoint_name(name);
      return step && *step > 0 && *step % keep_every == 0;
    });
  if (!protect.empty()) std::erase(all, protect);  // checkpoint.best's: outside the count too
  size_t remaining = all.size();
  for (const std::string& name : all) {  // oldest first
    if (remaining <= static_cast<size_t>(keep)) break;
    if (name == file_name) continue;
    fs::remove(d / name, ec);
    TRIAD_CHECK(!ec, "checkpoint directory ", dir, ": cannot delete old checkpoint ", name, ": ",
                ec.message());
    --remaining;
  }
}

std::string find_resume_checkpoint(MPI_Comm comm, const std::string& dir) {
  // Rank 0 decides (validating each candidate on its own) and tells the others.
  return decided_by_rank0(comm, [&]() -> std::string {
    const fs::path d(dir);
    std::string tried, failure;
    std::optional<std::string> latest = read_pointer(d);
    if (latest && latest->empty()) latest.reset();
    // triad writes a checkpoint's bare name there; a path (a hand edit) would resume from a file
    // outside the directory, whose own checkpoints of the same step would then be set aside.
    if (latest && !parse_checkpoint_name(*latest)) {
      std::cerr << "warning: " << (d / "latest").string() << " holds '" << *latest
                << "', not a checkpoint's name in the directory; ignored\n";
      latest.reset();
    }
    std::error_code ec;
    if (latest && !fs::exists(d / *latest, ec)) {
      // (checkpoints deleted by hand, the pointer left: no checkpoint, unless others remain)
      std::cerr << "warning: " << (d / "latest").string() << " names " << *latest
                << ", which does not exist; looking for an older checkpoint\n";
      tried = *latest;
    } else if (latest) {
      const std::string path = (d / *latest).string();
      const std::string why = check_loadable(path);
      if (why.empty()) return path;
      tried = *latest;
      failure = why;
      std::cerr << "warning: " << (d / "latest").string() << " names " << *latest
                << ", which cannot be loaded (" << why << "); looking for an older checkpoint\n";
    }
    std::vector<std::string> names = list_checkpoints(dir);
    for (auto it = names.rbegin(); it != names.rend(); ++it) {
      if (*it == tried) continue;
      const std::string path = (d / *it).string();
      const std::string why = check_loadable(path);
      if (why.empty()) return path;
      std::cerr << "warning: skipping damaged checkpoint: " << why << "\n";
      failure = why;
    }
    // Checkpoints that none loads are not taken for no checkpoint: the run would start anew and
    // set them aside, and a cause that passes (a full disk, where Open MPI cannot open a file;
    // storage that is down) would cost the run its history.
    TRIAD_CHECK(failure.empty(), "--resume auto: checkpoint directory ", dir,
                " holds checkpoints, and none can be loaded (the last tried: ", failure,
                "); nothing was moved. Free or repair what fails, or start anew with --resume "
                "none (which sets them aside, kept whole)");
    return "";
  });
}

std::string set_aside_other_history(MPI_Comm comm, const std::string& dir, int64_t step,
                                    const std::string& resumed) {
  return decided_by_rank0(comm, [&]() -> std::string {
    const fs::path d(dir);
    std::error_code ec;
    std::vector<std::string> move;
    for (const std::string& name : list_checkpoints(dir)) {
      const int64_t s = *parse_checkpoint_name(name);
      if (s > step || (s == step && (resumed.empty() || !fs::equivalent(d / name, resumed, ec))))
        move.push_back(name);
    }
    if (move.empty()) return "";
    const fs::path aside = first_free_numbered_path((d / "superseded_").string());
    fs::create_directory(aside, ec);
    TRIAD_CHECK(!ec, "checkpoint directory ", dir, ": cannot create ", aside.string(),
                " to set another history's checkpoints aside: ", ec.message());
    for (const std::string& name : move) {
      fs::rename(d / name, aside / name, ec);
      TRIAD_CHECK(!ec, "checkpoint directory ", dir, ": cannot move ", name, " to ", aside.string(),
                  ": ", ec.message());
    }
    // Their latest: the one published (the newest may be damaged or unpublished), else the newest.
    const std::optional<std::string> latest = read_pointer(d);
    const auto moved = [&](const std::optional<std::string>& name) {
      return name && std::find(move.begin(), move.end(), *name) != move.end();
    };
    write_pointer(aside, "latest", (moved(latest) ? *latest : move.back()) + "\n");
    // checkpoint.best's ckpt/best goes with the checkpoint it names (this run starts its own).
    if (const std::optional<std::string> best = read_pointer(d, "best"); best) {
      if (moved(trim(best->substr(0, best->find('\n'))))) {
        fs::rename(d / "best", aside / "best", ec);
        TRIAD_CHECK(!ec, "checkpoint directory ", dir, ": cannot move best to ", aside.string(),
                    ": ", ec.message());
      }
    }
    const std::vector<std::string> left = list_checkpoints(dir);
    if (left.empty()) {
      fs::remove(d / "latest", ec);
      TRIAD_CHECK(!ec, "checkpoint directory ", dir, ": cannot remove ", (d / "latest").string(),
                  ", which names a checkpoint set aside: ", ec.message());
    } else {
      write_pointer(d, "latest", left.back() + "\n");
    }
    std::ostringstream os;
    os << "checkpoint directory " << dir << ": " << move.size()
       << (move.size() == 1 ? " checkpoint" : " checkpoints") << " of another history ("
       << move.front() << (move.size() > 1 ? " to " + move.back() : std::string())
       << ") set aside in " << aside.string() << " (kept whole, never overwritten): "
       << (step >= 0         ? "this run goes on from step " + std::to_string(step)
           : resumed.empty() ? std::string("this run starts anew")
                             : "this run starts its own history from " + resumed);
    return os.str();
  });
}

}  // namespace triad
