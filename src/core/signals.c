/* signals.c - record SIGTERM / SIGUSR1 for a graceful stop. */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include "core/signals.h"

static volatile sig_atomic_t pending = 0;

static void on_signal(int sig) { pending = sig; }

static void set_action(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

void kv_signals_install(void)
{
    set_action(on_signal);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}

void kv_signals_default(void)
{
    set_action(SIG_DFL);
    if (pending) raise(pending);
}

int kv_signal_pending(void) { return pending; }
void kv_signal_raise(int sig) { pending = sig; }
