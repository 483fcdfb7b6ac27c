// triad::Error is header-only; this file gives the core library a translation unit.
#include "triad/core/error.h"
