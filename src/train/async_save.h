// checkpoint.async's save under way (Trainer::State::AsyncSave), for the files that start, wait
// for and end one.
#pragma once

#include <atomic>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "trainer_state.h"

namespace triad {

// checkpoint.async: a save under way. The thread writes `groups`, whose tensors point into
// `copy` (this rank's part of every tensor, copied there when the save began), then publishes the
// file (rank 0) and meets the other ranks' writers on save_comm.
struct Trainer::State::AsyncSave {
  std::string path;
  std::vector<std::vector<float>> copy;
  std::vector<TensorGroup> groups;
  CheckpointState state;
  Timer timer;
  double seconds = 0;  // the write's, from the copy to the writers' meeting
  std::exception_ptr error;
  std::atomic<bool> done{false};
  std::thread thread;
};

}  // namespace triad
