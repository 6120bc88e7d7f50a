// Errors users can act on: every failure is an anyk::Error whose message names the bad value
// and, where we know it, a `hint:` with the fix. Library calls go through the check macros.
// The source location of a check travels beside the message (Error::where()), never inside
// it: `anyk` prints it only under --debug or ANYK_DEBUG=1 (docs/cli.md).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace anyk {

// The exit status of `anyk` (docs/cli.md): 0 success, 1 a run-time failure, 2 a usage error.
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

struct Error : std::runtime_error {
  explicit Error(const std::string& msg, int exit_code = kExitFailure, std::string where = {})
      : std::runtime_error(msg), exit_code_(exit_code), where_(std::move(where)) {}
  int exit_code() const { return exit_code_; }
  // "file:line" of the check that threw, or "" when unknown.
  const std::string& where() const { return where_; }

 private:
  int exit_code_;
  std::string where_;
};

// The command line itself is wrong (an unknown option, a value out of range, options that
// exclude each other): exit status 2 instead of 1.
struct UsageError : Error {
  explicit UsageError(const std::string& msg, std::string where = {}) : Error(msg, kExitUsage, std::move(where)) {}
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
  throw Error(msg, kExitFailure, std::string(file) + ":" + std::to_string(line));
}

[[noreturn]] inline void usage_fail_at(const char* file, int line, const std::string& msg) {
  throw UsageError(msg, std::string(file) + ":" + std::to_string(line));
}

// Runs f; any anyk::Error it throws becomes a UsageError (same message and location): for
// validation code that only ever looks at option values.
template <class F> void as_usage_error(F&& f) {
  try {
    f();
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what(), e.where());
  }
}

}  // namespace anyk

// ANYK_CHECK(cond, "message " << value << " hint: ...") throws anyk::Error (exit status 1) with
// file:line beside the message.
#define ANYK_CHECK(cond, msg)                                  \
  do {                                                         \
    if (!(cond)) {                                             \
      std::ostringstream anyk_os_;                             \
      anyk_os_ << msg;                                         \
      ::anyk::fail_at(__FILE__, __LINE__, anyk_os_.str());     \
    }                                                          \
  } while (0)

#define ANYK_FAIL(msg) ANYK_CHECK(false, msg)

// The same for a wrong command line: throws anyk::UsageError (exit status 2).
#define ANYK_USAGE_CHECK(cond, msg)                              \
  do {                                                           \
    if (!(cond)) {                                               \
      std::ostringstream anyk_os_;                               \
      anyk_os_ << msg;                                           \
      ::anyk::usage_fail_at(__FILE__, __LINE__, anyk_os_.str()); \
    }                                                            \
  } while (0)

#define ANYK_USAGE_FAIL(msg) ANYK_USAGE_CHECK(false, msg)
