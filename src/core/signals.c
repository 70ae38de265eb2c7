/* signals.c - record SIGTERM / SIGUSR1 for a graceful stop. */
#include <signal.h>
#include <string.h>
#include "core/signals.h"

static volatile sig_atomic_t pending = 0;

static void on_signal(int sig) { pending = sig; }

void kv_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

int kv_signal_pending(void) { return pending; }
void kv_signal_raise(int sig) { pending = sig; }
