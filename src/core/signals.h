/* signals.h - graceful stop on SIGTERM / SIGUSR1 (e.g. Slurm's --signal).
 *
 * The handler only records the signal; the replay polls it at start-up,
 * during the resume's rebuild scan and at batch boundaries, agrees on it
 * across ranks and stops (after writing a checkpoint when anything ran).
 * main.c installs the handler before MPI_Init, so a signal that reaches a
 * rank while MPI or the trace checks are still starting up is recorded,
 * not fatal.  The flag is the one process-wide state kvstream keeps, as a
 * signal handler cannot reach anything else. */
#ifndef KVSTREAM_SIGNALS_H
#define KVSTREAM_SIGNALS_H

/* Record SIGTERM and SIGUSR1 from now on, and unblock them: a stop sent
 * while they were blocked (a mask inherited from the launcher) is
 * delivered here.  Keeps a signal already recorded. */
void kv_signals_install(void);
/* For commands that do not poll: back to the default action (terminate);
 * a signal recorded meanwhile is raised again, so it still ends the process. */
void kv_signals_default(void);
/* the signal received since install (0: none) */
int kv_signal_pending(void);
/* test hook: behave as if `sig` had arrived */
void kv_signal_raise(int sig);

#endif
