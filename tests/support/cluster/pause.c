/*
 * The pod sandbox ("pause") process of the test cluster's pause image, built by
 * tests/support/cluster/build-images.sh with `gcc -static`. It holds the pod's namespaces open:
 * as PID 1 of a shared PID namespace it reaps every orphan, and it exits 0 on SIGTERM or
 * SIGINT (containerd stops a sandbox with SIGTERM, then SIGKILL).
 *
 *   pause          wait for a signal
 *   pause -v       print the version and exit
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAUSE_VERSION "pingmesh-pause 1"

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts(PAUSE_VERSION);
        return 0;
    }
    if (getpid() != 1) {
        fputs("pause: warning: not PID 1\n", stderr);
    }
    /* Block the signals and take them synchronously: no handler races with the wait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
        perror("pause: sigprocmask");
        return 1;
    }
    for (;;) {
        int sig = 0;
        int rc = sigwait(&set, &sig);
        if (rc != 0) {
            if (rc == EINTR) continue;
            fprintf(stderr, "pause: sigwait: %s\n", strerror(rc));
            return 1;
        }
        if (sig == SIGCHLD) {
            /* Reap every child that has exited; WNOHANG keeps the loop bounded. */
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
            continue;
        }
        fprintf(stderr, "pause: shutting down, got signal %d\n", sig);
        return 0;
    }
}
