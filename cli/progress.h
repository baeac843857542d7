// A progress bar on stderr for long operations (wipe, initialization). Silent unless stderr
// is a terminal, so logs and pipes never fill with carriage returns.
#pragma once

#include <string>

#include "keywarden/volume/luks.h"

namespace keywarden::cli {

// TerminalProgress returns a ProgressFn that draws "LABEL [####....]  42%  1.2/2.8 GiB  350 MiB/s"
// on stderr at most ten times a second, and ends the line when done == total. When stderr is
// not a TTY it returns a function that does nothing.
volume::ProgressFn TerminalProgress(std::string label);

}  // namespace keywarden::cli
