// The items of a comma-separated config value (parallel.stage_layers, data.train with
// data.train_weights, eval.sets): n commas give n + 1 items, each without its surrounding spaces
// and tabs, empty where two commas meet or at either end ("" is one empty item). Callers say
// what an empty or malformed item means for their key.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace triad {

// s without its leading and trailing spaces and tabs.
inline std::string trim_blanks(std::string s) {
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);
  return s;
}

inline std::vector<std::string> split_comma_list(const std::string& text) {
  std::vector<std::string> items;
  size_t at = 0;
  while (true) {
    const size_t end = std::min(text.find(',', at), text.size());
    items.push_back(trim_blanks(text.substr(at, end - at)));
    if (end == text.size()) return items;
    at = end + 1;
  }
}

}  // namespace triad
