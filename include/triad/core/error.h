// Errors: every failure a user can cause (bad config, shard, checkpoint, command line) is a
// triad::Error with a message that names the input and the problem. The apps catch it,
// print it once and exit non-zero on every rank. Internal invariants use the same macro.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace triad {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Throws triad::Error built from the streamed arguments.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat(args...));
}

}  // namespace triad

// TRIAD_CHECK(cond, parts...): throws triad::Error("parts...") when cond is false.
#define TRIAD_CHECK(cond, ...)               \
  do {                                       \
    if (!(cond)) ::triad::fail(__VA_ARGS__); \
  } while (0)

// TRIAD_ASSERT(cond): an internal invariant; reports file:line, never a user error.
#define TRIAD_ASSERT(cond)                                                                         \
  do {                                                                                             \
    if (!(cond)) ::triad::fail("internal error: ", #cond, " failed at ", __FILE__, ":", __LINE__); \
  } while (0)
