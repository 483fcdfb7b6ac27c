// Words on a command line that are not options. Boost.Program_options drops them silently where
// a parser has no positional options (`triad-train run.ini` would train on the defaults); the
// executables refuse them instead.
#pragma once

#include <boost/program_options/parsers.hpp>
#include <string>

namespace triad {

// Fails with "<where>: unexpected argument '<word>' (<hint>)" for the first word of parsed that
// is no option's name or value.
void reject_positional_arguments(const boost::program_options::parsed_options& parsed,
                                 const std::string& where, const std::string& hint);

}  // namespace triad
