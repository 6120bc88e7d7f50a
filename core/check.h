// Errors users can act on: every failure is an anyk::Error whose message names the bad value
// and, where we know it, a `hint:` with the fix. Library calls go through the check macros.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace anyk {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An error every rank of the job knows about (they agreed to stop): this rank prints it and the
// command exits non-zero without aborting the job.
struct AgreedError : Error {
  using Error::Error;
};

// An error already reported by another rank of the same job: the command exits non-zero
// without printing (and without aborting the job: every rank agreed to stop).
struct ReportedError : Error {
  using Error::Error;
};

[[noreturn]] inline void fail_at(const char* file, int line, const std::string& msg) {
  std::ostringstream os;
  os << msg << " [" << file << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace anyk

// ANYK_CHECK(cond, "message " << value << " hint: ...") throws anyk::Error with file:line.
#define ANYK_CHECK(cond, msg)                                  \
  do {                                                         \
    if (!(cond)) {                                             \
      std::ostringstream anyk_os_;                             \
      anyk_os_ << msg;                                         \
      ::anyk::fail_at(__FILE__, __LINE__, anyk_os_.str());     \
    }                                                          \
  } while (0)

#define ANYK_FAIL(msg) ANYK_CHECK(false, msg)
