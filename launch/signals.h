// Stop requests from the batch system: SIGUSR1 (Slurm's `--signal=USR1@N` warning before a time
// limit or preemption), SIGTERM (scancel, preemption, `mpirun` forwarding Ctrl-C/TERM) and
// SIGINT (Ctrl-C on a single process; a second Ctrl-C terminates at once) and SIGHUP (the
// terminal or ssh session of a single process closed; handled exactly like SIGTERM).
//
// How the trainer uses it: call install_stop_handlers() once, as early as possible (a SIGUSR1 that
// arrives before it is installed kills the process: that is SIGUSR1's default action) and after
// MPI_Init, so our handlers replace any the MPI library installed for these two signals. The
// handler only records the signal number; nothing else happens inside it. After each optimizer step every rank reads
// stop_signal() and the ranks agree with one all-reduce (max), because the signal may reach the
// ranks at different moments (or only some of them). If the result is non-zero, every rank stops
// after the same step, the run writes a checkpoint, prints
//   anyk: caught SIGUSR1 at step N: checkpoint written to DIR; exiting
// and exits 0 (optionally asking Slurm to requeue the job first, ANYK_REQUEUE_ON_SIGNAL=1).
// A second signal during the checkpoint does not interrupt it: the flag is just set again.
#pragma once

namespace anyk::launch {

// Installs the SIGUSR1, SIGTERM, SIGINT and SIGHUP handlers (sigaction, SA_RESTART, all four masked while
// the handler runs). Idempotent; a signal already recorded is kept.
void install_stop_handlers();

// The number of the last stop signal received (SIGUSR1, SIGTERM, SIGINT or SIGHUP), or 0 if none.
int stop_signal();

// "SIGUSR1", "SIGTERM", "SIGINT", "SIGHUP", "none" (0) or "signal", for the log line.
const char* stop_signal_name(int sig);

// Clears the recorded signal (for tests).
void reset_stop_signal();

}  // namespace anyk::launch
