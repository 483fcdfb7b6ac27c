// Internal: the /model attributes of a checkpoint (DESIGN.md §5), the ModelShape a file
// describes. Reading validates every attribute against the bounds a config has (a file is read
// without a config where triad-generate samples from it, and its counts size every allocation)
// and fills in, for an attribute that files from before it lack, the value those files meant.
#pragma once

#include <hdf5.h>

#include "triad/io/checkpoint.h"

namespace triad::io {

// Writes m as attributes of the group `model` (an attribute at its default is often omitted).
void write_model_attributes(hid_t model, const ModelShape& m);

// The ModelShape the attributes of group `model` describe; throws triad::Error naming the first
// missing or invalid attribute.
ModelShape read_model_attributes(hid_t model);

// The int64 attribute `name` of loc (called `where` in the error); throws when it is missing.
int64_t require_int64_attr(hid_t loc, const std::string& where, const std::string& name);

}  // namespace triad::io
