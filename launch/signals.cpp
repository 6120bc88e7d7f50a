// SIGUSR1 / SIGTERM / SIGINT / SIGHUP -> a flag the trainer polls between steps. The handler is async-signal-safe:
// it only stores the signal number in a lock-free std::atomic<int> (also a valid
// volatile sig_atomic_t replacement: is_always_lock_free is checked at compile time).
#include "launch/signals.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

namespace anyk::launch {

namespace {

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal flag must be lock-free");

extern "C" void anyk_on_stop_signal(int sig) { g_stop_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

void install_stop_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = anyk_on_stop_signal;
  sa.sa_flags = SA_RESTART;  // blocking calls (MPI progress, file I/O) resume after the handler
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGUSR1);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGHUP);
  // SIGHUP (the terminal or the ssh session closed) is a stop like SIGTERM: its default action
  // would end a single-process run at once, losing every step since the last save.
  for (int sig : {SIGUSR1, SIGTERM, SIGINT, SIGHUP}) {
    // A second Ctrl-C is the way out of a save the user does not want to wait for: SIGINT's
    // handler runs once, then the default action (terminate) is back.
    sa.sa_flags = SA_RESTART | (sig == SIGINT ? SA_RESETHAND : 0);
    if (sigaction(sig, &sa, nullptr) != 0)
      std::fprintf(stderr, "anyk: warning: cannot install a handler for signal %d: %s\n", sig, std::strerror(errno));
  }
}

int stop_signal() { return g_stop_signal.load(std::memory_order_relaxed); }

void reset_stop_signal() { g_stop_signal.store(0, std::memory_order_relaxed); }

const char* stop_signal_name(int sig) {
  switch (sig) {
    case SIGUSR1: return "SIGUSR1";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case 0: return "none";
    default: return "signal";
  }
}

}  // namespace anyk::launch
