#include "triad/train/positional_arguments.h"

#include "triad/core/error.h"

namespace triad {

void reject_positional_arguments(const boost::program_options::parsed_options& parsed,
                                 const std::string& where, const std::string& hint) {
  for (const auto& option : parsed.options) {
    // A word that is no option's value: a position among such words and, where no positional
    // option takes it, no name.
    if (option.position_key >= 0 && option.string_key.empty() && !option.original_tokens.empty())
      fail(where, ": unexpected argument '", option.original_tokens.front(), "' (", hint, ")");
  }
}

}  // namespace triad
