/* signals.h - graceful stop on SIGTERM / SIGUSR1 (e.g. Slurm's --signal).
 *
 * The handler only records the signal; the replay loop polls it at batch
 * boundaries, agrees on it across ranks and stops after writing a
 * checkpoint.  The flag is the one process-wide state kvstream keeps, as a
 * signal handler cannot reach anything else. */
#ifndef KVSTREAM_SIGNALS_H
#define KVSTREAM_SIGNALS_H

void kv_signals_install(void);
/* the signal received since install (0: none) */
int kv_signal_pending(void);
/* test hook: behave as if `sig` had arrived */
void kv_signal_raise(int sig);

#endif
