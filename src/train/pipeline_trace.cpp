#include "triad/train/pipeline_trace.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "triad/core/error.h"

namespace triad {
namespace {

constexpr int kFields = 5;  // kind, micro-batch, chunk, start ms, end ms

const char* kind_letter(ActionKind k) {
  return k == ActionKind::Forward ? "F" : k == ActionKind::BackwardWeight ? "W" : "B";
}

double bubble_of(const std::vector<std::vector<ComputeInterval>>& stages, double makespan) {
  double busy = 0;
  for (const auto& s : stages)
    for (const auto& c : s) busy += c.end - c.start;
  return makespan > 0 ? 1.0 - busy / (double(stages.size()) * makespan) : 0.0;
}

}  // namespace

PipelineTrace gather_pipeline_trace(Comm& pp, const std::vector<ComputeInterval>& mine,
                                    const PipelineSchedule& schedule, int m, int v, int step) {
  const int P = pp.size();
  TRIAD_CHECK(int(schedule.size()) == P, "pipeline trace: the schedule has ", schedule.size(),
              " stages, the pipeline group ", P);
  // Every rank sends the same number of records: the most compute actions of any stage.
  size_t most = 0;
  for (const auto& actions : schedule)
    most = std::max(most, size_t(std::count_if(actions.begin(), actions.end(), [](const Action& a) {
                      return is_compute(a.kind);
                    })));
  TRIAD_CHECK(mine.size() <= most, "pipeline trace: ", mine.size(), " actions recorded, at most ",
              most, " expected");
  std::vector<float> send(most * kFields, -1.0f), all(size_t(P) * most * kFields);
  for (size_t i = 0; i < mine.size(); ++i) {
    float* r = send.data() + i * kFields;
    r[0] = float(int(mine[i].kind));
    r[1] = float(mine[i].microbatch);
    r[2] = float(mine[i].chunk);
    r[3] = float(mine[i].start * 1e3);
    r[4] = float(mine[i].end * 1e3);
  }
  pp.all_gather(send.data(), all.data(), send.size());

  PipelineTrace t;
  t.step = step;
  t.measured.resize(size_t(P));
  ChunkTimes times;  // each chunk's mean action times
  for (int s = 0; s < P; ++s) {
    // [chunk][forwards, backwards, weight passes]
    std::vector<std::array<int, 3>> n(size_t(v), {0, 0, 0});
    std::vector<std::array<double, 3>> sum(size_t(v), {0, 0, 0});
    for (size_t i = 0; i < most; ++i) {
      const float* r = all.data() + (size_t(s) * most + i) * kFields;
      if (r[0] < 0) continue;
      const ComputeInterval c{ActionKind(int(r[0])), int(r[1]), int(r[2]), r[3] * 1e-3,
                              r[4] * 1e-3};
      t.measured[size_t(s)].push_back(c);
      t.measured_seconds = std::max(t.measured_seconds, c.end);
      const int k = c.kind == ActionKind::Forward ? 0 : c.kind == ActionKind::Backward ? 1 : 2;
      TRIAD_CHECK(c.chunk >= 0 && c.chunk < v, "pipeline trace: chunk ", c.chunk, " of ", v);
      ++n[size_t(c.chunk)][size_t(k)];
      sum[size_t(c.chunk)][size_t(k)] += c.end - c.start;
    }
    times.fwd.emplace_back();
    times.bwd.emplace_back();
    times.wgt.emplace_back();
    for (int c = 0; c < v; ++c) {
      auto mean = [&](int k) {
        const size_t i = size_t(c), j = size_t(k);
        return n[i][j] > 0 ? sum[i][j] / n[i][j] : 0.0;
      };
      times.fwd.back().push_back(mean(0));
      times.wgt.back().push_back(mean(2));
      times.bwd.back().push_back(mean(1) + mean(2));
    }
  }
  t.measured_bubble = bubble_of(t.measured, t.measured_seconds);
  t.simulated = simulate(schedule, P, m, v, times);
  return t;
}

void write_pipeline_trace_csv(const PipelineTrace& trace, const std::string& path) {
  std::ofstream f(path, std::ios::trunc);
  TRIAD_CHECK(bool(f), "pipeline trace: cannot write ", path);
  f << "source,stage,kind,microbatch,chunk,start_ms,end_ms\n" << std::fixed << std::setprecision(3);
  auto rows = [&](const char* source, const std::vector<std::vector<ComputeInterval>>& stages) {
    for (size_t s = 0; s < stages.size(); ++s)
      for (const ComputeInterval& c : stages[s])
        f << source << ',' << s << ',' << kind_letter(c.kind) << ',' << c.microbatch << ','
          << c.chunk << ',' << c.start * 1e3 << ',' << c.end * 1e3 << '\n';
  };
  rows("measured", trace.measured);
  rows("simulated", trace.simulated.timeline);
  TRIAD_CHECK(bool(f.flush()), "pipeline trace: writing ", path, " failed");
}

void write_planned_timeline_csv(const SimResult& flops, double tflops, const std::string& path) {
  TRIAD_CHECK(tflops > 0,
              "--plan-timeline needs --plan-tflops > 0 (the rate that turns the "
              "plan's FLOPs into time)");
  PipelineTrace t;
  t.simulated = flops;
  const double seconds_per_flop = 1.0 / (tflops * 1e12);
  for (auto& stage : t.simulated.timeline)
    for (auto& c : stage) {
      c.start *= seconds_per_flop;
      c.end *= seconds_per_flop;
    }
  write_pipeline_trace_csv(t, path);
}

std::string describe_pipeline_trace(const PipelineTrace& trace, const std::string& path) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << "pipeline trace of step " << trace.step << " ("
     << path << "): measured " << trace.measured_seconds * 1e3 << " ms, idle "
     << trace.measured_bubble * 100 << "%; the schedule simulated with these action times "
     << trace.simulated.makespan * 1e3 << " ms, idle " << trace.simulated.bubble * 100 << "%";
  return os.str();
}

}  // namespace triad
